/**
 * What another local user can plant for root (issue 9, items 2, 3, 4 and
 * 8), with a real second user who owns the app's folder, its releases
 * folder, current.conf and the log file, and the real agent, the real
 * launch or the real CLI: a log file or a folder on its path swapped for a
 * symlink, a FIFO or a hard link as the log, a FIFO as current.conf,
 * current.conf linked to a root-only file, a build cache in the shared temp
 * folder; and the ownership of current.conf after a rollback. Every
 * root-only target must come out untouched and unowned, nothing planted may
 * run, and the agent must keep running and say what it refused.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { chmod, chown, lchown, link, mkdir, open, readdir, readFile, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { loadConfig, type AppConfig } from '../src/config.js';
import { get } from '../src/demo/demo.js';
import { makeApp, setCurrent, writeConfig, writeRelease, type DemoApp } from '../src/demo/layout.js';
import { buildDemoApp, demoAppSource } from '../src/demo/build.js';
import { RelinkError } from '../src/errors.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { appStateFile, journalFile } from '../src/stateDir.js';
import { hashFile } from '../src/current.js';
import { launch } from '../src/launch.js';
import { ProcessFinder } from '../src/proc.js';
import { rootOnly, openUp, testUser, type TestUser } from './accounts.js';
import { defer, RELINK, reapAppsAfter, ROOT, startAgent, tmpDir, waitFor, type LogLine } from './helpers.js';

const run = promisify(execFile);

interface Tree {
  readonly root: string;
  readonly app: DemoApp;
  readonly configFile: string;
  readonly stateDir: string;
  readonly cfg: AppConfig;
}

/**
 * The demo layout in a folder everybody may traverse (root's), with the
 * app's folder, its releases folder, the release files and current.conf
 * owned by `user`, and a config running the app as `user`.
 */
async function webTree(t: TestContext, user: TestUser, appExtra: Record<string, unknown> | ((app: DemoApp) => Record<string, unknown>) = {}): Promise<Tree> {
  const root = await tmpDir(t, 'relink-planted-');
  reapAppsAfter(t, path.join(root, 'web', 'release'));
  const app = await makeApp({ root, releases: ['1.0', '2.0'] });
  await openUp(app.releasesDir);
  await setCurrent(app, '1.0');
  for (const p of [app.dir, app.releasesDir, ...(await readdir(app.releasesDir)).map((n) => path.join(app.releasesDir, n))]) {
    await chown(p, user.uid, user.gid);
  }
  const configFile = await writeConfig(root, [app], { reconcileMs: 60_000 }, {
    user: user.name,
    allowRoot: false,
    supervise: { checkMs: 100, backoffMs: 100, maxBackoffMs: 400, stableMs: 60_000, maxRetries: 50 },
    ...(typeof appExtra === 'function' ? appExtra(app) : appExtra),
  });
  return { root, app, configFile, stateDir: path.join(root, 'state'), cfg: (await loadConfig(configFile)).apps[0]! };
}

/** A file only root may read or write, outside the app's folder. */
async function rootOnlyFile(dir: string, name: string, content: string): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const file = path.join(dir, name);
  await writeFile(file, content, { mode: 0o600 });
  await chmod(file, 0o600);
  return file;
}

async function assertUntouched(file: string, content: string): Promise<void> {
  const st = await stat(file);
  assert.equal(st.uid, 0, `${file} must still belong to root`);
  assert.equal(st.gid, 0, `${file} must still be in root's group`);
  assert.equal(st.mode & 0o7777, 0o600, `${file} keeps mode 0600`);
  assert.equal(st.nlink >= 1, true);
  assert.equal(await readFile(file, 'utf8'), content, `${file} must not be written`);
}

async function mkfifo(p: string): Promise<void> {
  await run('mkfifo', ['-m', '0644', p]);
}

/**
 * A writer blocked on opening `fifo` (the old agent's open of a FIFO log)
 * is released when somebody opens the other end; without this a failing
 * test would also hang the test process.
 */
function unblockFifoAfter(t: TestContext, fifo: string): void {
  defer(t, async () => {
    const h = await open(fifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK).catch(() => undefined);
    await h?.close();
    const w = await open(fifo, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK).catch(() => undefined);
    await w?.close();
  });
}

/** `p` settles within `ms`, or the test fails naming `what` (the old code hung there for good). */
async function within<T>(what: string, ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s: it blocks`)), ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

async function refusalOf(p: Promise<unknown>): Promise<RelinkError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof RelinkError, `expected a refusal, got ${String(err)}`);
  return err;
}

async function ask(app: DemoApp): Promise<{ pid: number; release: string }> {
  return JSON.parse(await get(app.url)) as { pid: number; release: string };
}

async function nth(stateDir: string, n: number): Promise<HistoryEntry> {
  return waitFor(`history entry #${n}`, async () => (await readHistory(stateDir, 'web'))[n - 1], { timeoutMs: 20_000 });
}

/** `relink ARGS` with a deadline: a CLI that hangs is killed and reported, not waited for. */
function relinkWithin(args: readonly string[], ms: number): Promise<{ code: number | null; stdout: string; stderr: string; killed: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(RELINK[0]!, [...RELINK.slice(1), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let killed = false;
    const timer = setTimeout(() => { killed = true; child.kill('SIGKILL'); }, ms);
    child.stdout.setEncoding('utf8').on('data', (c: string) => { stdout += c; });
    child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, killed });
    });
  });
}

const linkRule = (user: TestUser) => `must not be a symlink (a link in a folder ${user.name} can write is not followed as root)`;

test('app.log replaced by a symlink to a root-only file: the restarted app never gets it, the agent refuses naming the link and keeps running', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tr = await webTree(t, user);
  const agent = startAgent(t, tr.configFile);
  assert.equal((await nth(tr.stateDir, 1)).outcome, 'deployed');
  const before = await ask(tr.app);
  const secret = await rootOnlyFile(path.join(tr.root, 'etc'), 'shadow', 'root:$6$secret:19000:0:99999:7:::\n');

  // What the app's user can do in its own folder: swap the log for a link, kill its app.
  const log = path.join(tr.app.dir, 'app.log');
  await unlink(log);
  await symlink(secret, log);
  await lchown(log, user.uid, user.gid);
  process.kill(before.pid, 'SIGKILL');

  const refused = await agent.waitForLog('the restart refused because of the planted link',
    (l: LogLine) => l.code === 'UNSAFE_PATH' && String(l['err'] ?? l.msg).includes(`${log}: ${linkRule(user)} (found: symlink to ${secret})`));
  assert.ok(refused);
  await assertUntouched(secret, 'root:$6$secret:19000:0:99999:7:::\n');
  assert.equal(agent.child.exitCode, null, 'the agent keeps running');
  assert.ok((await readFile(journalFile(tr.stateDir, 'web'), 'utf8')).length > 0);
  await agent.stop();
  await assertUntouched(secret, 'root:$6$secret:19000:0:99999:7:::\n');
});

test('a folder on the log path swapped for a symlink to a root folder: nothing is created or chowned there', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tr = await webTree(t, user, { logFile: 'logs/app.log' });
  const etc = path.join(tr.root, 'etc');
  const victim = await rootOnlyFile(etc, 'app.log', 'root only\n');
  const logs = path.join(tr.app.dir, 'logs');
  await symlink(etc, logs);
  await lchown(logs, user.uid, user.gid);
  await symlink('release/app.1.0', path.join(tr.app.dir, 'app.bin'));
  await symlink('release/cfg.1.0', path.join(tr.app.dir, 'app.cfg'));

  const err = await refusalOf(launch(tr.cfg));
  assert.equal(err.code, 'UNSAFE_PATH', err.message);
  assert.equal(err.file, logs);
  assert.equal(err.message, `${logs}: ${linkRule(user)} (found: symlink to ${etc})`);
  await assertUntouched(victim, 'root only\n');
  assert.deepEqual(await readdir(etc), ['app.log']);
});

test('a FIFO as app.log is refused at once, never opened for writing', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tr = await webTree(t, user);
  await symlink('release/app.1.0', path.join(tr.app.dir, 'app.bin'));
  await symlink('release/cfg.1.0', path.join(tr.app.dir, 'app.cfg'));
  const log = path.join(tr.app.dir, 'app.log');
  await mkfifo(log);
  await chown(log, user.uid, user.gid);
  unblockFifoAfter(t, log);

  const err = await within('launch with a FIFO as app.log', 10_000, refusalOf(launch(tr.cfg)));
  assert.equal(err.code, 'UNSAFE_PATH', err.message);
  assert.equal(err.message, `${log}: must be a regular file (found: a FIFO)`);
  assert.equal((await stat(log)).uid, user.uid);
});

test('a hard link to a root-only file as app.log is neither written nor chowned', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tr = await webTree(t, user);
  await symlink('release/app.1.0', path.join(tr.app.dir, 'app.bin'));
  await symlink('release/cfg.1.0', path.join(tr.app.dir, 'app.cfg'));
  // With fs.protected_hardlinks=0 the app's user can make this link itself.
  const secret = await rootOnlyFile(path.join(tr.root, 'etc'), 'secret', 'root only\n');
  const log = path.join(tr.app.dir, 'app.log');
  await link(secret, log);

  const err = await refusalOf(launch(tr.cfg));
  assert.equal(err.code, 'UNSAFE_PATH', err.message);
  assert.equal(err.file, log);
  assert.match(err.message, /must have no other name/);
  assert.match(err.message, /found: 2 names, owned by root \(uid 0\)/);
  await assertUntouched(secret, 'root only\n');
});

test('a FIFO as current.conf is refused at once; a later good edit is applied; SIGTERM still stops the agent', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tr = await webTree(t, user);
  const agent = startAgent(t, tr.configFile);
  assert.equal((await nth(tr.stateDir, 1)).outcome, 'deployed');

  const fifo = path.join(tr.app.releasesDir, '.current.fifo');
  await mkfifo(fifo);
  await chown(fifo, user.uid, user.gid);
  await rename(fifo, tr.app.currentFile);
  unblockFifoAfter(t, tr.app.currentFile);
  // Refused like any bad current.conf: journaled (relink status and history show it), said once.
  await agent.waitForLog('the FIFO refused', (l) => l.outcome === 'refused' && l.code === 'CURRENT_UNREADABLE' && l['reason'] === `${tr.app.currentFile}: must be a regular file (found: a FIFO)`);
  assert.equal((await nth(tr.stateDir, 2)).code, 'CURRENT_UNREADABLE');

  await setCurrent(tr.app, '2.0');
  const second = await nth(tr.stateDir, 3);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  assert.equal((await ask(tr.app)).release, 'app.2.0');

  // The helper SIGKILLs a graceful stop that hangs: exit code 0 means SIGTERM alone did it.
  assert.equal(await agent.stop(), 0);
});

test('relink validate on a FIFO exits at once with the reason', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tr = await webTree(t, user);
  const fifo = path.join(tr.root, 'next.conf');
  await mkfifo(fifo);
  unblockFifoAfter(t, fifo);
  const r = await relinkWithin(['validate', '--config', tr.configFile, fifo], 20_000);
  assert.equal(r.killed, false, 'relink validate hung on the FIFO');
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`${fifo}: must be a regular file \\(found: a FIFO\\) \\[CURRENT_UNREADABLE\\]`));
});

test('relink releases and relink prune with a FIFO as current.conf answer at once', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tr = await webTree(t, user);
  await unlink(tr.app.currentFile);
  await mkfifo(tr.app.currentFile);
  unblockFifoAfter(t, tr.app.currentFile);
  for (const args of [['releases'], ['prune', '--dry-run']]) {
    const r = await relinkWithin([...args, '--config', tr.configFile], 20_000);
    assert.equal(r.killed, false, `relink ${args.join(' ')} hung on the FIFO`);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  }
});

test('current.conf linked to a root-only file: refused unread, its content nowhere in the journal, the logs or stderr', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tr = await webTree(t, user);
  const agent = startAgent(t, tr.configFile);
  assert.equal((await nth(tr.stateDir, 1)).outcome, 'deployed');
  const SECRET = 'TOPSECRET-4f1d';
  const secret = await rootOnlyFile(path.join(tr.root, 'etc'), 'shadow', `${SECRET}:$6$x:19000:0:99999:7:::\n`);

  // The app's user points its current.conf at a file only root may read.
  const planted = path.join(tr.app.releasesDir, '.current.link');
  await symlink(secret, planted);
  await lchown(planted, user.uid, user.gid);
  await rename(planted, tr.app.currentFile);
  const rule = `must be readable by the app's user ${user.name} (uid ${user.uid}), for whom the agent reads it`;
  await agent.waitForLog('the refusal', (l) => l.outcome === 'refused' && l.code === 'CURRENT_UNREADABLE' && String(l['reason']).startsWith(`${tr.app.currentFile}: ${rule}`));

  const v = await relinkWithin(['validate', '--config', tr.configFile], 20_000);
  assert.equal(v.code, 1, v.stdout + v.stderr);
  assert.ok(v.stderr.includes(`${tr.app.currentFile}: ${rule}`), v.stderr);
  assert.ok(v.stderr.includes('[CURRENT_UNREADABLE]'), v.stderr);

  // A later fix still deploys (the agent was not wedged by the refusal).
  await unlink(tr.app.currentFile);
  await setCurrent(tr.app, '2.0');
  assert.equal((await nth(tr.stateDir, 2)).code, 'CURRENT_UNREADABLE', 'the refusal is journaled, its text quoting nothing');
  assert.equal((await nth(tr.stateDir, 3)).outcome, 'deployed');
  await agent.stop();

  const seen = [
    JSON.stringify(agent.lines), agent.stderr.join('\n'), v.stdout, v.stderr,
    await readFile(journalFile(tr.stateDir, 'web'), 'utf8'),
    await readFile(appStateFile(tr.stateDir, 'web'), 'utf8'),
    await readFile(tr.cfg.logFile, 'utf8').catch(() => ''),
  ].join('\n');
  assert.ok(!seen.includes(SECRET), 'the root-only content leaked');
  await assertUntouched(secret, `${SECRET}:$6$x:19000:0:99999:7:::\n`);
});

test('after an automatic rollback current.conf keeps its owner (the app\'s user) and mode', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tr = await webTree(t, user, (app) => ({
    reload: { timeoutMs: 3_000 },
    health: { url: `${app.url}healthz`, settleMs: 200, deadlineMs: 1_500, intervalMs: 100, probeTimeoutMs: 500 },
  }));
  await writeRelease(tr.app.releasesDir, 'sick', await buildDemoApp(), `port=${tr.app.port}\nmode=reexec\nmessage=sick\nunhealthy=1\n`);
  for (const n of ['app.sick', 'cfg.sick']) await chown(path.join(tr.app.releasesDir, n), user.uid, user.gid);
  await chmod(tr.app.currentFile, 0o640);
  const agent = startAgent(t, tr.configFile);
  assert.equal((await nth(tr.stateDir, 1)).outcome, 'deployed');

  // The app's user deploys the sick release (write + chown as that user would own it, then mv).
  const tmp = path.join(tr.app.releasesDir, '.current.tmp');
  await writeFile(tmp, '{"bin.file": "app.sick", "cfg.file": "cfg.sick"}\n');
  await chown(tmp, user.uid, user.gid);
  await chmod(tmp, 0o640);
  await rename(tmp, tr.app.currentFile);
  const second = await nth(tr.stateDir, 2);
  assert.equal(second.outcome, 'rolled_back', second.reason ?? '');

  const back = await waitFor('current.conf to name 1.0 again', async () => {
    const text = await readFile(tr.app.currentFile, 'utf8');
    return text.includes('app.1.0') ? text : undefined;
  });
  assert.ok(back);
  const st = await stat(tr.app.currentFile);
  assert.equal(st.uid, user.uid, 'current.conf still belongs to the app\'s user');
  assert.equal(st.gid, user.gid);
  assert.equal(st.mode & 0o7777, 0o640);
  await agent.stop();
});

test('a FIFO where a release file is hashed or where the PID file is read: refused or ignored at once, never blocking', async (t) => {
  const root = await tmpDir(t, 'relink-planted-');
  const fifo = path.join(root, 'app.2.0');
  await mkfifo(fifo);
  unblockFifoAfter(t, fifo);
  const err = await within('hashing a FIFO', 10_000, refusalOf(hashFile(fifo)));
  assert.equal(err.code, 'RELEASE_NOT_FILE');
  assert.equal(err.message, `${fifo}: must be a regular file (found: a FIFO)`);

  const pidFile = path.join(root, 'app.pid');
  await mkfifo(pidFile);
  unblockFifoAfter(t, pidFile);
  const finder = new ProcessFinder({ name: 'web', dir: root, releasesDir: root, pidFile, list: async () => [] });
  const found = await within('discovery with a FIFO as the PID file', 10_000, finder.discover());
  assert.equal(found.main, undefined);
});

test('a build cache planted by another user is never used; a fresh private build is', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  // The temp folder every local user shares, as /tmp is (sticky, world-writable).
  const cacheRoot = await tmpDir(t, 'relink-cache-');
  await chmod(cacheRoot, 0o1777);
  const saved = process.env['TMPDIR'];
  process.env['TMPDIR'] = cacheRoot;
  defer(t, () => {
    if (saved === undefined) delete process.env['TMPDIR'];
    else process.env['TMPDIR'] = saved;
  });
  // The predictable name another user can compute from the public source.
  const hash = createHash('sha256').update(await readFile(demoAppSource)).digest('hex').slice(0, 16);
  const planted = path.join(cacheRoot, `relink-demo-app-${hash}`);
  const marker = path.join(cacheRoot, 'ran');

  const plant = async (dirOwner: TestUser | undefined, dirMode: number, fileOwner: TestUser | undefined, fileMode: number) => {
    await rm(planted, { recursive: true, force: true });
    await mkdir(planted);
    await chmod(planted, dirMode);
    await writeFile(path.join(planted, 'app'), `#!/bin/sh\ntouch ${marker}\n`);
    await chmod(path.join(planted, 'app'), fileMode);
    if (fileOwner) await chown(path.join(planted, 'app'), fileOwner.uid, fileOwner.gid);
    if (dirOwner) await chown(planted, dirOwner.uid, dirOwner.gid);
  };
  // [what, plant it, whether the cache folder stays usable (ours alone: a bad file in it is replaced)]
  const cases: Array<[string, () => Promise<void>, boolean]> = [
    ['a folder of another user', () => plant(user, 0o755, user, 0o755), false],
    ['a folder others may write', () => plant(undefined, 0o777, undefined, 0o755), false],
    ['a file of another user', () => plant(undefined, 0o755, user, 0o755), true],
    ['a file others may write', () => plant(undefined, 0o755, undefined, 0o777), true],
    ['a symlink to another user\'s folder', async () => {
      await rm(planted, { recursive: true, force: true });
      const theirs = path.join(cacheRoot, 'theirs');
      await rm(theirs, { recursive: true, force: true });
      await mkdir(theirs);
      await writeFile(path.join(theirs, 'app'), `#!/bin/sh\ntouch ${marker}\n`, { mode: 0o755 });
      await chown(path.join(theirs, 'app'), user.uid, user.gid);
      await chown(theirs, user.uid, user.gid);
      await symlink(theirs, planted);
    }, false],
  ];
  for (const [what, setup, cacheUsable] of cases) {
    await setup();
    const built = await buildDemoApp();
    if (!cacheUsable) assert.ok(!built.startsWith(`${planted}/`), `${what}: the planted folder was used`);
    const head = (await readFile(built)).subarray(0, 4);
    assert.deepEqual([...head], [0x7f, 0x45, 0x4c, 0x46], `${what}: a freshly compiled ELF binary, not the planted script`);
    const st = await stat(built);
    assert.equal(st.uid, 0, `${what}: the build is the caller's`);
    assert.equal(st.mode & 0o022, 0, `${what}: nobody else may write the build`);
    const dirSt = await stat(path.dirname(built));
    assert.equal(dirSt.uid, 0, `${what}: the build's folder is the caller's`);
    assert.equal(dirSt.mode & (cacheUsable ? 0o022 : 0o077), 0, `${what}: nobody else may write the build's folder`);
    if (!cacheUsable) await rm(path.dirname(built), { recursive: true, force: true });
  }
  await assert.rejects(stat(marker), 'the planted file never ran');
});
