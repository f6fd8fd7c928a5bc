/**
 * Running each app as its own user, with its own limits (issue 4), for real:
 * users made with useradd, the C demo app started through the real
 * prlimit/setpriv chain, /proc read back, the real agent and CLI. The
 * policy (root refused, what a non-root agent cannot grant) is also checked
 * against a described agent, since this suite runs as root.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { loadConfig, parseConfig, type AppConfig } from '../src/config.js';
import { get } from '../src/demo/demo.js';
import { freePort, makeApp, setCurrent, writeConfig, type DemoApp } from '../src/demo/layout.js';
import { RelinkError, RelinkErrors } from '../src/errors.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { launch, planLaunch, type AgentIdentity } from '../src/launch.js';
import { parseLimits, readLimits } from '../src/limits.js';
import { ProcessFinder, readProc } from '../src/proc.js';
import { openUp, rootOnly, testGroup, testUser, type TestUser } from './accounts.js';
import { alive, defer, reapAppsAfter, relinkCli, startAgent, tmpDir, waitFor } from './helpers.js';

interface Reply {
  readonly release: string;
  readonly pid: number;
  readonly generation: number;
}

interface Tree {
  readonly root: string;
  readonly app: DemoApp;
  readonly configFile: string;
  readonly cfg: AppConfig;
}

/**
 * The demo app's layout in a folder other users can traverse, links on 1.0,
 * a config with `appExtra` for the app. Apps under it are killed after the
 * test (registered first: after-hooks run in order, userdel comes later).
 */
async function tree(t: TestContext, appExtra: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<Tree> {
  const root = await tmpDir(t, 'relink-user-');
  reapAppsAfter(t, path.join(root, 'web', 'release'));
  const app = await makeApp({ root, releases: ['1.0', '2.0'] });
  await openUp(app.releasesDir);
  await symlink('release/app.1.0', path.join(app.dir, 'app.bin'));
  await symlink('release/cfg.1.0', path.join(app.dir, 'app.cfg'));
  const configFile = await writeConfig(root, [app], { reconcileMs: 60_000, ...extra }, appExtra);
  const cfg = (await loadConfig(configFile)).apps[0]!;
  return { root, app, configFile, cfg };
}

async function ask(app: DemoApp): Promise<Reply> {
  return JSON.parse(await get(app.url)) as Reply;
}

async function statusLine(pid: number, key: string): Promise<string> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const line = text.split('\n').find((l) => l.startsWith(`${key}:`));
  assert.ok(line !== undefined, `no ${key} in /proc/${pid}/status`);
  return line.slice(key.length + 1).trim();
}

async function environ(pid: number): Promise<Map<string, string>> {
  const raw = await readFile(`/proc/${pid}/environ`, 'utf8');
  return new Map(raw.split('\0').filter((e) => e.includes('=')).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
}

async function nth(stateDir: string, n: number): Promise<HistoryEntry> {
  return waitFor(`history entry #${n}`, async () => (await readHistory(stateDir, 'web'))[n - 1], { timeoutMs: 20_000 });
}

test('an app with "user" runs as that user, with its supplementary groups, environment, limits and no capabilities; same PID through the exec chain', async (t) => {
  if (!rootOnly(t)) return;
  const extraGroup = await testGroup(t);
  const user = await testUser(t, [extraGroup]);
  const { app, cfg } = await tree(t, { user: user.name, limits: { nofile: 4321, core: 0 } });

  const launched = await launch(cfg);
  const bin = path.join(app.releasesDir, 'app.1.0');
  const info = await waitFor('the app to exec into its release', async () => {
    const i = await readProc(launched.pid);
    return i?.exe === bin ? i : undefined;
  });
  // prlimit and setpriv replaced themselves: the PID spawned is the app's.
  const reply = await waitFor('the app to answer', () => ask(app));
  assert.equal(reply.pid, launched.pid);

  assert.equal(info.uid, user.uid);
  assert.equal(info.euid, user.uid);
  assert.equal((await statusLine(launched.pid, 'Gid')).split(/\s+/)[0], String(user.gid));
  // libuv's spawn({uid}) would have cleared these; setpriv --init-groups keeps them.
  const groups = (await statusLine(launched.pid, 'Groups')).split(/\s+/).map(Number);
  assert.ok(groups.includes(extraGroup.gid), `supplementary group ${extraGroup.gid} missing from ${groups.join(' ')}`);
  assert.equal(await statusLine(launched.pid, 'CapEff'), '0000000000000000');

  const env = await environ(launched.pid);
  assert.equal(env.get('USER'), user.name);
  assert.equal(env.get('LOGNAME'), user.name);

  const limits = await readLimits(launched.pid);
  assert.deepEqual(limits?.nofile, { soft: 4321, hard: 4321 });
  assert.deepEqual(limits?.core, { soft: 0, hard: 0 });

  // The app's log, created by the agent (root), belongs to the app's user.
  assert.equal((await stat(cfg.logFile)).uid, user.uid);

  // Discovery follows the owner: found for the app's user, foreign for anyone else's app.
  const mine = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, user: user.name }).discover();
  assert.equal(mine.main?.pid, launched.pid);
  const rootsView = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir }).discover();
  assert.equal(rootsView.main, undefined, 'a process of another user must never be taken for the app');
  assert.deepEqual(rootsView.foreign?.map((p) => p.pid), [launched.pid]);
  assert.equal(await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir }).verify(info), undefined);
});

test('the real agent runs the app as its user through deploys and handoffs; status shows the user and the real limits, and warns when lower than configured', async (t) => {
  if (!rootOnly(t)) return;
  const { root, app, configFile } = await tree(t, {});
  const user = await testUser(t);
  await writeConfig(root, [app], { reconcileMs: 60_000 }, { user: user.name, allowRoot: false, limits: { nofile: 4096 }, health: { url: `${app.url}healthz`, settleMs: 200 } });
  await setCurrent(app, '1.0');
  const stateDir = path.join(root, 'state');
  startAgent(t, configFile);

  const first = await nth(stateDir, 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const v1 = await ask(app);
  assert.equal((await readProc(v1.pid))?.uid, user.uid);

  await setCurrent(app, '2.0');
  const second = await nth(stateDir, 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  assert.equal(second.action, 'signal');
  const v2 = await ask(app);
  assert.notEqual(v2.pid, v1.pid, 'the demo app re-executes itself on SIGHUP');
  // The successor was started by the app itself: user and limits are inherited.
  assert.equal((await readProc(v2.pid))?.uid, user.uid);
  assert.deepEqual((await readLimits(v2.pid))?.nofile, { soft: 4096, hard: 4096 });

  const st = await relinkCli(['status', '--config', configFile, '--json']);
  assert.equal(st.code, 0, st.stderr);
  const web = (JSON.parse(st.stdout) as { apps: Array<Record<string, unknown>> }).apps[0]!;
  assert.equal(web['pid'], v2.pid);
  assert.deepEqual(web['user'], { name: user.name, uid: user.uid });
  assert.deepEqual((web['limits'] as Record<string, unknown>)['nofile'], { soft: 4096, hard: 4096, configured: 4096 });
  assert.deepEqual(web['warnings'], []);
  const text = await relinkCli(['status', '--config', configFile]);
  assert.match(text.stdout, new RegExp(`user\\s+${user.name} \\(uid ${user.uid}\\)`));
  assert.match(text.stdout, /nofile\s+4096, configured 4096/);

  // The config now asks for more than the running app has: status says so.
  await writeConfig(root, [app], { reconcileMs: 60_000 }, { user: user.name, limits: { nofile: 8192 } });
  const low = await relinkCli(['status', '--config', configFile]);
  assert.match(low.stdout, new RegExp(`warning\\s+nofile of pid ${v2.pid} is 4096 \\(hard 4096\\), lower than the configured 8192`));
  const lowJson = JSON.parse((await relinkCli(['status', '--config', configFile, '--json'])).stdout) as { apps: Array<{ warnings: string[] }> };
  assert.equal(lowJson.apps[0]!.warnings.length, 1);
});

test('as root, an app with no "user" is refused unless "allowRoot": true, with the reason in the journal; nothing is started', async (t) => {
  if (!rootOnly(t)) return;
  const { root, app, configFile } = await tree(t, { allowRoot: false });
  await setCurrent(app, '1.0');
  const stateDir = path.join(root, 'state');
  const agent = startAgent(t, configFile);
  const entry = await nth(stateDir, 1);
  assert.equal(entry.outcome, 'failed');
  assert.equal(entry.code, 'ROOT_REFUSED');
  assert.match(entry.reason ?? '', /refusing to run the app as root \(no "user" set, and the agent runs as root\): set "user"/);
  const line = await agent.waitForLog('the failure log line', (l) => l['code'] === 'ROOT_REFUSED');
  assert.equal(line.level, 'error');
  assert.equal((await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir }).discover()).all.length, 0);

  // The same config with allowRoot: the planned command runs the app as is, no setpriv.
  const allowed = { ...(await loadConfig(configFile)).apps[0]!, allowRoot: true };
  const plan = await planLaunch(allowed, { uid: 0, gid: 0, caps: (1n << 41n) - 1n, limits: parseLimits(await readFile('/proc/self/limits', 'utf8')), nrOpen: 1_048_576 });
  assert.deepEqual([plan.file, ...plan.args], ['./app.bin', '-c', 'app.cfg']);
});

test('"user": "root" needs "allowRoot": true, and "group" needs "user", at config load', () => {
  const parse = (app: Record<string, unknown>): unknown => parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', ...app }] }), '/c.json');
  const refused = (app: Record<string, unknown>): RelinkErrors => {
    try {
      parse(app);
    } catch (err) {
      assert.ok(err instanceof RelinkErrors);
      return err;
    }
    return assert.fail('expected a refusal');
  };
  const root = refused({ user: 'root' });
  assert.equal(root.problems[0]!.key, 'apps[0].user');
  assert.match(root.message, /runs the app as root: set "allowRoot": true to mean it/);
  assert.equal(refused({ user: 0 }).problems[0]!.key, 'apps[0].user');
  assert.doesNotThrow(() => parse({ user: 'root', allowRoot: true }));
  assert.equal(refused({ group: 'www-data' }).problems[0]!.key, 'apps[0].group');
  assert.equal(refused({ user: 'bad user' }).problems[0]!.key, 'apps[0].user');
  assert.equal(refused({ limits: { nofile: 0 } }).problems[0]!.key, 'apps[0].limits.nofile');
  assert.equal(refused({ limits: { nofile: 'unlimited' } }).problems[0]!.key, 'apps[0].limits.nofile');
  assert.equal(refused({ limits: { stack: 1 } }).problems[0]!.key, 'apps[0].limits.stack');
  const ok = (parse({ user: 1000, group: 'www-data', limits: { nofile: 65536, nproc: 'unlimited' } }) as { apps: AppConfig[] }).apps[0]!;
  assert.equal(ok.user, '1000');
  assert.deepEqual({ ...ok.limits }, { nofile: 65536, nproc: 'unlimited', core: undefined });
});

/** An agent as described, for the policy a root test process cannot otherwise reach. */
function agentAs(uid: number, caps: bigint, nofileHard: number): AgentIdentity {
  const limits = parseLimits(`Limit Soft Limit Hard Limit Units
Max core file size        0                    unlimited            bytes
Max processes             1000                 1000                 processes
Max open files            ${nofileHard}                 ${nofileHard}                 files
`);
  return { uid, gid: uid, caps, limits, nrOpen: 1_048_576 };
}

test('what an unprivileged agent cannot grant is refused before anything starts: another user, a limit above its own', async () => {
  const nobody = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', user: 'nobody', limits: { nofile: 4096 } }] }), '/c.json').apps[0]!;
  const code = async (app: AppConfig, agent: AgentIdentity): Promise<RelinkError> => {
    const err = await planLaunch(app, agent).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof RelinkError, `expected a refusal, got ${String(err)}`);
    return err;
  };
  const other = await code(nobody, agentAs(12_345, 0n, 65_536));
  assert.equal(other.code, 'USER_SWITCH_DENIED');
  assert.match(other.message, /cannot start the app as nobody \(uid 65534\).*the agent runs as uid 12345/);

  // Running as nobody itself: no switch needed, but 4096 is above its hard limit of 1024.
  const limit = await code(nobody, agentAs(65_534, 0n, 1024));
  assert.equal(limit.code, 'LIMIT_DENIED');
  assert.equal(limit.key, 'limits.nofile');
  assert.match(limit.message, /4096 is above the agent's own hard limit \(1024\), and the agent lacks CAP_SYS_RESOURCE/);
  // Root, but under a bounding set without CAP_SYS_RESOURCE: the capability is named, not "a privileged agent".
  const capless = await code(nobody, agentAs(0, ((1n << 41n) - 1n) & ~(1n << 24n), 1024));
  assert.equal(capless.code, 'LIMIT_DENIED');
  assert.match(capless.message, /lacks CAP_SYS_RESOURCE.*CapabilityBoundingSet= must keep CAP_SYS_RESOURCE/);
  assert.doesNotMatch(capless.message, /privileged agent/);

  // Within its hard limit, prlimit runs and no setpriv is needed.
  const plan = await planLaunch(nobody, agentAs(65_534, 0n, 65_536));
  assert.match(plan.file, /\/prlimit$/);
  assert.deepEqual(plan.args, ['--nofile=4096:4096', '--', './app.bin', '-c', 'app.cfg']);

  const huge = { ...nobody, limits: { ...nobody.limits, nofile: 2_000_000 } };
  assert.match((await code(huge, agentAs(0, (1n << 41n) - 1n, 65_536))).message, /above the kernel's fs\.nr_open \(1048576\)/);

  const unknown = { ...nobody, user: 'relink-no-such-user' };
  const u = await code(unknown, agentAs(0, (1n << 41n) - 1n, 65_536));
  assert.equal(u.code, 'USER_UNKNOWN');
  assert.match(u.message, /no such user "relink-no-such-user"/);
});

test('the agent never signals a process of another user, even one running the app\'s own binary', async (t) => {
  if (!rootOnly(t)) return;
  const { root, app, configFile } = await tree(t, {});
  const other: TestUser = await testUser(t);
  // Somebody else runs release 2.0 (on another port) as their own user.
  const port = await freePort();
  await writeFile(path.join(app.releasesDir, 'cfg.other'), `port=${port}\nmode=reexec\nmessage=not the app\n`);
  const foreign = spawn('setpriv', [`--reuid=${other.uid}`, `--regid=${other.gid}`, '--clear-groups', '--', path.join(app.releasesDir, 'app.2.0'), '-c', path.join(app.releasesDir, 'cfg.other')], { detached: true, stdio: 'ignore' });
  defer(t, () => { try { process.kill(foreign.pid!, 'SIGKILL'); } catch { /* gone */ } });
  const otherUrl = `http://127.0.0.1:${port}/`;
  const before = JSON.parse(await waitFor('the other user\'s copy to answer', () => get(otherUrl))) as Reply;
  const pinned = await readProc(before.pid);
  assert.equal(pinned?.uid, other.uid);

  await setCurrent(app, '1.0');
  const stateDir = path.join(root, 'state');
  startAgent(t, configFile);
  const first = await nth(stateDir, 1);
  // Not adopted: the agent started the app's own copy.
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  assert.equal(first.action, 'start');
  assert.notEqual(first.pidAfter, before.pid);
  await setCurrent(app, '2.0');
  const second = await nth(stateDir, 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  assert.equal(second.pidBefore, first.pidAfter);

  // The other copy never got SIGHUP: same process, never re-executed.
  const after = JSON.parse(await get(otherUrl)) as Reply;
  assert.equal(after.pid, before.pid);
  assert.equal(after.generation, before.generation);
  assert.equal((await readProc(before.pid))?.startTime, pinned?.startTime);
  assert.ok(await alive(before.pid));

  const st = JSON.parse((await relinkCli(['status', '--config', configFile, '--json'])).stdout) as { apps: Array<{ foreign: Array<{ pid: number }>; warnings: string[] }> };
  assert.deepEqual(st.apps[0]!.foreign.map((f) => f.pid), [before.pid]);
  assert.match(st.apps[0]!.warnings.join('\n'), new RegExp(`pid ${before.pid} runs .*app\\.2\\.0 as uid ${other.uid}, not as the app's user: left alone`));
});
