/**
 * Real system users and groups for the tests that switch users or check
 * ownership: created with useradd/groupadd, removed after the test. Needs
 * root: callers ask rootOnly(t) first.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { access, chmod, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';
import { readProc } from '../src/proc.js';
import { lookupGroup, lookupUser } from '../src/user.js';
import { defer, waitFor } from './helpers.js';

const run = promisify(execFile);

export const isRoot = (): boolean => process.getuid?.() === 0;
export const NOT_ROOT = 'needs root: creates users with useradd, starts processes as them, chowns files';

/**
 * Whether a root-only test can run: true as root. Elsewhere it is skipped
 * with the reason, except under CI (the CI environment variable), where a
 * root-only test that cannot run fails: CI runs as root, and a test that
 * passes by skipping proves nothing.
 */
export function rootOnly(t: TestContext): boolean {
  if (isRoot()) return true;
  if (process.env['CI']) assert.fail(`${NOT_ROOT}; CI must run the tests as root (uid is ${process.getuid?.()})`);
  t.skip(NOT_ROOT);
  return false;
}

/**
 * Whether a real third-party program the test needs is installed; as
 * rootOnly, skipped with the package to install outside CI, a failure in CI
 * (.ci/run installs it).
 */
export async function needProgram(t: TestContext, file: string, debianPackage: string): Promise<boolean> {
  if (await access(file, constants.X_OK).then(() => true, () => false)) return true;
  const why = `${file} is missing (apt-get install ${debianPackage})`;
  if (process.env['CI']) assert.fail(`${why}: .ci/run must install it`);
  t.skip(why);
  return false;
}

export interface TestUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

export interface TestGroup {
  readonly name: string;
  readonly gid: number;
}

/** A short unique name (useradd allows 32 characters). */
function uniqueName(prefix: string): string {
  return `${prefix}${process.pid % 100_000}${randomBytes(3).toString('hex')}`;
}

/**
 * useradd and friends lock /etc/passwd; test files running in parallel may
 * hold the lock for a moment ("cannot lock /etc/passwd"), so retry until a
 * deadline rather than fail.
 */
async function shadowTool(cmd: string, args: readonly string[]): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      await run(cmd, args);
      return;
    } catch (err) {
      const stderr = (err as { stderr?: string }).stderr ?? String(err);
      if (!/lock/i.test(stderr) || Date.now() > deadline) throw new Error(`${cmd} ${args.join(' ')}: ${stderr.trim()}`, { cause: err });
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A system group, deleted after the test. */
export async function testGroup(t: TestContext): Promise<TestGroup> {
  const name = uniqueName('rlkg');
  await shadowTool('groupadd', ['--system', name]);
  defer(t, () => shadowTool('groupdel', [name]));
  const g = await lookupGroup(name);
  if (g === undefined) throw new Error(`groupadd ${name} made no group`);
  return { name, gid: g.gid };
}

/** PIDs of the processes running as `uid` (real uid). */
async function processesOf(uid: number): Promise<number[]> {
  const pids = (await readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number);
  const infos = await Promise.all(pids.map((pid) => readProc(pid).catch(() => undefined)));
  return infos.filter((i) => i !== undefined && i.uid === uid).map((i) => i!.pid);
}

/**
 * A system user with its own group (and optionally in `groups` too), no
 * home, no shell; deleted after the test. userdel refuses a user that still
 * runs processes, so first every process of this fresh uid (only this test
 * started any) is killed by PID.
 */
export async function testUser(t: TestContext, groups: readonly TestGroup[] = []): Promise<TestUser> {
  return testUserNamed(t, uniqueName('rlku'), groups);
}

/** testUser with a name chosen beforehand (to name it in a config before it exists). */
export async function testUserNamed(t: TestContext, name: string, groups: readonly TestGroup[] = []): Promise<TestUser> {
  const extra = groups.length > 0 ? ['-G', groups.map((g) => g.name).join(',')] : [];
  await shadowTool('useradd', ['--system', '--no-create-home', '--user-group', '--shell', '/usr/sbin/nologin', ...extra, name]);
  const u = await lookupUser(name);
  if (u === undefined) throw new Error(`useradd ${name} made no user`);
  defer(t, async () => {
    for (const pid of await processesOf(u.uid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await waitFor(`the processes of ${name} to go`, async () => (await processesOf(u.uid)).length === 0);
    await shadowTool('userdel', [name]);
  });
  return { name, uid: u.uid, gid: u.gid };
}

/** Let other users through `dir` and every folder above it (mkdtemp makes 0700 folders). */
export async function openUp(dir: string, stopAt = '/tmp'): Promise<void> {
  for (let d = dir; d !== stopAt && d !== path.dirname(d); d = path.dirname(d)) await chmod(d, 0o755);
}
