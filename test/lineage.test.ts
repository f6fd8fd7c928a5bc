/**
 * Identity by lineage and generations (issue 10), with the real agent and
 * real apps whose executable is not in the releases folder: a
 * `#!/usr/bin/python3` release (test/apps/pyapp.py) that re-executes itself
 * with its listening socket, one that re-executes in place, a `#!/bin/sh`
 * wrapper, a Node.js release, an app that daemonizes, two apps sharing a
 * releases folder, a re-pointed releases symlink, an old generation that
 * drains for 20 s, a successor left a zombie, and nginx whose master is
 * killed with its workers alive. Each ends with the right release serving,
 * one serving generation, and status and history saying so.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, rename, stat, symlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { writeFileAtomic } from '../src/atomicWrite.js';
import { freePort } from '../src/demo/layout.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { descendantsOf, readProc, readStat } from '../src/proc.js';
import { needProgram } from './accounts.js';
import { type AgentProc, alive, get, RELINK, reapMarkedAfter, relinkCli, ROOT, startAgent, tmpDir, waitFor } from './helpers.js';

const PYAPP = path.join(ROOT, 'test', 'apps', 'pyapp.py');

interface Reply {
  release: string;
  pid: number;
  message: string;
}


async function ask(port: number): Promise<Reply> {
  return JSON.parse((await get(`http://127.0.0.1:${port}/`)).body) as Reply;
}

/** Wait until the app on `port` answers from `release` (a file name such as "app.2.0"). */
async function servedBy(port: number, release: string): Promise<Reply> {
  return waitFor(`port ${port} to serve ${release}`, async () => {
    const r = await ask(port).catch(() => undefined);
    return r?.release === release ? r : undefined;
  }, { timeoutMs: 20_000 });
}

interface PyApp {
  readonly name: string;
  readonly dir: string;
  readonly releasesDir: string;
  readonly currentFile: string;
  readonly port: number;
}

type Kind = 'python' | 'wrapper' | 'node';

/** A release file of `kind`: the Python app itself, a shell wrapper that execs it, or a Node.js server. */
async function writeReleaseFile(file: string, kind: Kind): Promise<void> {
  if (kind === 'python') await copyFile(PYAPP, file);
  if (kind === 'wrapper') await writeFile(file, `#!/bin/sh\n# A wrapper release, as for gunicorn or puma: it execs the interpreter.\nexec /usr/bin/python3 ${PYAPP} --self "$0" "$@"\n`);
  if (kind === 'node') {
    await writeFile(file, `#!/usr/bin/env node
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const cfg = Object.fromEntries(fs.readFileSync(process.argv[3], 'utf8').split('\\n').filter((l) => l.includes('=')).map((l) => l.split('=')));
const release = path.basename(fs.realpathSync(process.argv[1]));
http.createServer((req, res) => {
  res.setHeader('Connection', 'close');
  res.end(req.url === '/healthz' ? 'ok\\n' : JSON.stringify({ release, pid: process.pid, message: cfg.message }));
}).listen(Number(cfg.port), '127.0.0.1');
`);
  }
  await chmod(file, 0o755);
}

/** An app folder with releases `rs` (cfg lines per release), its current.conf naming `start`. */
async function pyApp(root: string, name: string, rs: Record<string, string>, opts: { kind?: Kind; releasesDir?: string; port?: number } = {}): Promise<PyApp> {
  const dir = path.join(root, name);
  const releasesDir = opts.releasesDir ?? path.join(dir, 'release');
  const port = opts.port ?? (await freePort());
  await mkdir(releasesDir, { recursive: true });
  for (const [r, extra] of Object.entries(rs)) {
    await writeReleaseFile(path.join(releasesDir, `app.${r}`), opts.kind ?? 'python');
    await writeFile(path.join(releasesDir, `cfg.${r}`), `port=${port}\nmessage=hello from ${name} ${r}\n${extra}`);
  }
  await mkdir(dir, { recursive: true });
  return { name, dir, releasesDir, currentFile: path.join(releasesDir, opts.releasesDir === undefined ? 'current.conf' : `current-${name}.conf`), port };
}

async function setCurrent(app: PyApp, r: string): Promise<void> {
  await writeFileAtomic(app.currentFile, `${JSON.stringify({ 'bin.file': `app.${r}`, 'cfg.file': `cfg.${r}` })}\n`);
}

/** The agent's config for `apps`, each run from its links as `./app.bin -c app.cfg`. */
async function configFor(root: string, apps: readonly PyApp[], extra: (a: PyApp) => Record<string, unknown> = () => ({})): Promise<string> {
  const file = path.join(root, 'config.json');
  const allowRoot = process.getuid?.() === 0 ? { allowRoot: true } : {};
  await writeFile(file, JSON.stringify({
    stateDir: path.join(root, 'state'),
    reconcileMs: 1_000,
    apps: apps.map((a) => ({
      name: a.name,
      dir: a.dir,
      releasesDir: a.releasesDir,
      currentFile: a.currentFile,
      command: ['./app.bin', '-c', 'app.cfg'],
      ...allowRoot,
      reload: { timeoutMs: 5_000 },
      health: { url: `http://127.0.0.1:${a.port}/healthz`, settleMs: 300, deadlineMs: 5_000, intervalMs: 100 },
      supervise: { checkMs: 100, backoffMs: 100, maxBackoffMs: 400, stableMs: 3_000, maxRetries: 3 },
      ...extra(a),
    })),
  }, null, 2));
  return file;
}

function history(root: string, app: string): Promise<HistoryEntry[]> {
  return readHistory(path.join(root, 'state'), app);
}

async function nth(root: string, app: string, n: number): Promise<HistoryEntry> {
  return waitFor(`${app}: history entry #${n}`, async () => (await history(root, app))[n - 1], { timeoutMs: 30_000 });
}

interface StatusJson {
  apps: Array<{
    name: string;
    state: string;
    pid: number | null;
    since: string | null;
    generations: Array<{ gen: number; role: string; processes: Array<{ pid: number; main: boolean; startedAt: string; deleted: boolean }> }>;
  }>;
}

async function status(config: string, app: string): Promise<StatusJson['apps'][number]> {
  const r = await relinkCli(['status', '--config', config, '--app', app, '--json']);
  const parsed = JSON.parse(r.stdout) as StatusJson;
  return parsed.apps[0]!;
}

/** Exactly one serving generation, whose main is `pid`. */
async function assertServing(config: string, app: string, pid: number): Promise<StatusJson['apps'][number]> {
  const s = await status(config, app);
  assert.equal(s.state, 'running');
  assert.equal(s.pid, pid);
  const serving = s.generations.filter((g) => g.role === 'serving');
  assert.equal(serving.length, 1, JSON.stringify(s.generations));
  assert.ok(serving[0]!.processes.some((p) => p.pid === pid && p.main), JSON.stringify(serving));
  return s;
}

async function setup(t: TestContext, prefix: string): Promise<string> {
  if (!(await needProgram(t, '/usr/bin/python3', 'python3'))) throw new Error('unreachable');
  const root = await tmpDir(t, prefix);
  reapMarkedAfter(t, root);
  return root;
}

/**
 * An app of releases `rs` (cfg lines each) under a new agent, its first
 * release deployed and serving: the first reply, the agent, and what the
 * test needs to go on. `reload` is the app's reload block.
 */
async function firstDeployed(t: TestContext, prefix: string, name: string, rs: Record<string, string>, reload: Record<string, unknown> = { timeoutMs: 5_000 }): Promise<{ root: string; app: PyApp; config: string; agent: AgentProc; one: Reply }> {
  const root = await setup(t, prefix);
  const app = await pyApp(root, name, rs);
  await setCurrent(app, Object.keys(rs)[0]!);
  const config = await configFor(root, [app], () => ({ reload }));
  const agent = startAgent(t, config);
  const first = await nth(root, name, 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const one = await servedBy(app.port, `app.${Object.keys(rs)[0]!}`);
  return { root, app, config, agent, one };
}

test('a #!/usr/bin/python3 release that re-executes itself with its socket: started, deployed to a new PID, adopted by the next agent without a second copy', async (t) => {
  const root = await setup(t, 'relink-lineage-py-');
  const app = await pyApp(root, 'py', { '1.0': 'reload=fork\n', '2.0': 'reload=fork\n' });
  await setCurrent(app, '1.0');
  const config = await configFor(root, [app]);
  const agent = startAgent(t, config);
  const first = await nth(root, 'py', 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const one = await servedBy(app.port, 'app.1.0');
  assert.equal(first.pidAfter, one.pid);
  assert.match((await readProc(one.pid))!.exe, /python3/);

  await setCurrent(app, '2.0');
  const second = await nth(root, 'py', 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  const two = await servedBy(app.port, 'app.2.0');
  assert.notEqual(two.pid, one.pid);
  assert.equal(second.pidAfter, two.pid);
  await waitFor('the old process to exit', async () => !(await alive(one.pid)));
  const s = await assertServing(config, 'py', two.pid);
  // The process's own start time, not when an agent adopted it.
  assert.ok(s.since !== null && Math.abs(Date.parse(s.since) - Date.now()) < 60_000);

  // A new agent adopts it: no second copy, nothing journaled, the same process serves.
  assert.equal(await agent.stop(), 0);
  const next = startAgent(t, config);
  await next.waitForLog('adoption', (l) => l.msg === 'adopted running app' && l['appPid'] === two.pid);
  await setCurrent(app, '1.0');
  const third = await nth(root, 'py', 3);
  assert.equal(third.outcome, 'deployed', third.reason ?? '');
  assert.equal(third.pidBefore, two.pid, 'the adopted process was the one signalled');
  assert.equal(third.action, 'signal');
  const back = await servedBy(app.port, 'app.1.0');
  assert.equal((await history(root, 'py')).length, 3);
  await assertServing(config, 'py', back.pid);
});

test('a python release that re-executes in place (same PID, new stack) is a handoff to the new release', async (t) => {
  const { root, app, config, one } = await firstDeployed(t, 'relink-lineage-exec-', 'px', { '1.0': 'reload=exec\n', '2.0': 'reload=exec\n' });
  await setCurrent(app, '2.0');
  const second = await nth(root, 'px', 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  const two = await servedBy(app.port, 'app.2.0');
  assert.equal(two.pid, one.pid, 'same PID');
  await assertServing(config, 'px', one.pid);
});

test('"upgrade": a worker the old master forks just before the new master (no exec: the old image) is not taken for the new master; the exec\'d one is judged and serves, and the worker goes with its master', async (t) => {
  const rs = { '1.0': 'reload=upgrade\nlate_worker=1\n', '2.0': 'reload=upgrade\nlate_worker=1\n' };
  const { root, app, config, one } = await firstDeployed(t, 'relink-lineage-late-', 'lw', rs, { strategy: 'upgrade', signal: 'SIGHUP', timeoutMs: 5_000 });
  await setCurrent(app, '2.0');
  const second = await nth(root, 'lw', 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  const two = await servedBy(app.port, 'app.2.0');
  assert.equal(second.pidAfter, two.pid, 'the new master judged is the one that serves, not the worker forked before it');
  await waitFor('the old master to be stopped', async () => !(await alive(one.pid)));
  await assertServing(config, 'lw', two.pid);
  // And once more, from the new master.
  await setCurrent(app, '1.0');
  const third = await nth(root, 'lw', 3);
  assert.equal(third.outcome, 'deployed', third.reason ?? '');
  const back = await servedBy(app.port, 'app.1.0');
  assert.equal(third.pidAfter, back.pid);
  await assertServing(config, 'lw', back.pid);
});

test('"upgrade": an agent killed while a new master that fails its health check is judged; the next agent rolls back, and the next deploy\'s new master is its own generation (not the dead one\'s), one master serving', async (t) => {
  const rs = { '1.0': 'reload=upgrade\n', bad: 'reload=upgrade\nunhealthy=1\n', '2.0': 'reload=upgrade\n' };
  const { root, app, config, agent } = await firstDeployed(t, 'relink-lineage-killup-', 'ku', rs, { strategy: 'upgrade', signal: 'SIGHUP', timeoutMs: 5_000 });
  await setCurrent(app, 'bad');
  // The new master serves beside the old one while it is judged (its /healthz answers 503): the agent is killed then.
  await waitFor('the failing release to serve beside the old one', async () => ((await ask(app.port).catch(() => undefined))?.release === 'app.bad' ? true : undefined), { timeoutMs: 10_000 });
  await agent.stop('SIGKILL');
  startAgent(t, config);
  const recovered = await nth(root, 'ku', 2);
  assert.equal(recovered.outcome, 'rolled_back', recovered.reason ?? '');
  assert.match(recovered.trigger, /:recovered$/);
  await setCurrent(app, '2.0');
  const next = await nth(root, 'ku', 3);
  assert.equal(next.outcome, 'deployed', `${next.code ?? ''}: ${next.reason ?? ''}`);
  const two = await servedBy(app.port, 'app.2.0');
  assert.equal(next.pidAfter, two.pid);
  // One master: every answer from it.
  await waitFor('only the new release to answer', async () => {
    const replies = await Promise.all(Array.from({ length: 8 }, () => ask(app.port).catch(() => undefined)));
    return replies.every((r) => r?.release === 'app.2.0') ? true : undefined;
  }, { timeoutMs: 15_000 });
  await assertServing(config, 'ku', two.pid);
});

test('"upgrade": a worker the old master forks after the signal, serving the old release, is of the old generation: its answers do not pass an unhealthy new master', async (t) => {
  const rs = { '1.0': 'reload=upgrade\nlate_worker=serve\n', sick: 'reload=upgrade\nunhealthy=1\n' };
  const { root, app, one } = await firstDeployed(t, 'relink-lineage-lateserve-', 'ls', rs, { strategy: 'upgrade', signal: 'SIGHUP', timeoutMs: 5_000 });
  await setCurrent(app, 'sick');
  const e = await nth(root, 'ls', 2);
  assert.equal(e.outcome, 'rolled_back', `the sick release was ${e.outcome}: its old worker's answers were taken for it`);
  assert.equal(e.code, 'UNHEALTHY', e.reason ?? '');
  const back = await servedBy(app.port, 'app.1.0');
  assert.equal(back.pid === one.pid || (await readProc(back.pid))?.ppid === one.pid, true, 'the old master (or its worker) serves on');
});

test('"upgrade": workers the old master keeps forking after the signal (a low max_requests), each new to the lineage when it takes a probe, are of the old generation: their answers do not pass an unhealthy new master', async (t) => {
  const rs = { '1.0': 'reload=upgrade\nlate_worker=churn\n', sick: 'reload=upgrade\nunhealthy=1\n' };
  const { root, app } = await firstDeployed(t, 'relink-lineage-churn-', 'ch', rs, { strategy: 'upgrade', signal: 'SIGHUP', timeoutMs: 5_000 });
  await setCurrent(app, 'sick');
  const e = await nth(root, 'ch', 2);
  assert.equal(e.outcome, 'rolled_back', `the sick release was ${e.outcome}: a new worker of the old master was taken for it`);
  assert.equal(e.code, 'UNHEALTHY', e.reason ?? '');
});

test('a #!/bin/sh wrapper release that execs the interpreter: deployed, and restarted after a crash', async (t) => {
  const root = await setup(t, 'relink-lineage-sh-');
  const app = await pyApp(root, 'wrap', { '1.0': 'reload=fork\n', '2.0': 'reload=fork\n' }, { kind: 'wrapper' });
  await setCurrent(app, '1.0');
  const config = await configFor(root, [app]);
  const agent = startAgent(t, config);
  assert.equal((await nth(root, 'wrap', 1)).outcome, 'deployed');
  await servedBy(app.port, 'app.1.0');
  await setCurrent(app, '2.0');
  const second = await nth(root, 'wrap', 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  const two = await servedBy(app.port, 'app.2.0');

  process.kill(two.pid, 'SIGKILL');
  await agent.waitForLog('the restart', (l) => l.msg === 'app restarted', { timeoutMs: 20_000 });
  const again = await servedBy(app.port, 'app.2.0');
  assert.notEqual(again.pid, two.pid);
  await assertServing(config, 'wrap', again.pid);
});

test('a Node.js release: started, restarted after a crash, adopted by the next agent without a second copy', async (t) => {
  const root = await setup(t, 'relink-lineage-node-');
  const app = await pyApp(root, 'nd', { '1.0': '' }, { kind: 'node' });
  await setCurrent(app, '1.0');
  const config = await configFor(root, [app]);
  const agent = startAgent(t, config);
  assert.equal((await nth(root, 'nd', 1)).outcome, 'deployed');
  const one = await servedBy(app.port, 'app.1.0');
  assert.match((await readProc(one.pid))!.exe, /node/);
  process.kill(one.pid, 'SIGKILL');
  await agent.waitForLog('the restart', (l) => l.msg === 'app restarted', { timeoutMs: 20_000 });
  const two = await waitFor('a new node process', async () => {
    const r = await ask(app.port).catch(() => undefined);
    return r !== undefined && r.pid !== one.pid ? r : undefined;
  });
  assert.equal(await agent.stop(), 0);
  const next = startAgent(t, config);
  await next.waitForLog('adoption', (l) => l.msg === 'adopted running app' && l['appPid'] === two.pid);
  await assertServing(config, 'nd', two.pid);
  assert.equal((await history(root, 'nd')).length, 1, 'nothing started again');
});

test('an app that daemonizes (forks, the parent exits 0) is followed to the child, deployed, and reloaded there', async (t) => {
  const root = await setup(t, 'relink-lineage-daemon-');
  const app = await pyApp(root, 'dm', { '1.0': 'reload=fork\ndaemonize=1\n', '2.0': 'reload=fork\ndaemonize=1\n' });
  await setCurrent(app, '1.0');
  const config = await configFor(root, [app]);
  startAgent(t, config);
  const first = await nth(root, 'dm', 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const one = await servedBy(app.port, 'app.1.0');
  await assertServing(config, 'dm', one.pid);
  await setCurrent(app, '2.0');
  const second = await nth(root, 'dm', 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  assert.equal(second.pidBefore, one.pid, 'the daemon was the one signalled');
  const two = await servedBy(app.port, 'app.2.0');
  await assertServing(config, 'dm', two.pid);
});

test('an app that daemonizes a moment after it starts, restarted after a crash: the daemon it became is saved as the main, and the next agent adopts it', async (t) => {
  // Found by the fresh-user trial with nginx (daemon on): the restart was
  // recorded with the started process, the daemon followed in memory only;
  // an agent restarted later, finding neither alive in the state file (nginx
  // overwrites its marker), started a second nginx beside the first.
  const root = await setup(t, 'relink-lineage-daemonlate-');
  const app = await pyApp(root, 'dl', { '1.0': 'reload=fork\ndaemonize=1\ndaemonize_delay_ms=400\n' });
  await setCurrent(app, '1.0');
  const config = await configFor(root, [app]);
  const agent = startAgent(t, config);
  assert.equal((await nth(root, 'dl', 1)).outcome, 'deployed');
  const one = await servedBy(app.port, 'app.1.0');
  process.kill(one.pid, 'SIGKILL');
  await agent.waitForLog('the restart', (l) => l.msg === 'app restarted', { timeoutMs: 20_000 });
  const two = await waitFor('the daemon of the restart to serve', async () => {
    const r = await ask(app.port).catch(() => undefined);
    return r !== undefined && r.pid !== one.pid ? r : undefined;
  });
  const stateFile = path.join(root, 'state', 'apps', 'dl', 'state.json');
  await waitFor('the state file to name the daemon as the main', async () => {
    const st = JSON.parse(await readFile(stateFile, 'utf8')) as { pid: number | null; lineage: { members: Array<{ pid: number }> } };
    return st.pid === two.pid && st.lineage.members.some((m) => m.pid === two.pid) ? true : undefined;
  }, { timeoutMs: 10_000 });
  assert.equal(await agent.stop(), 0);
  const next = startAgent(t, config);
  await next.waitForLog('adoption', (l) => l.msg === 'adopted running app' && l['appPid'] === two.pid);
  await assertServing(config, 'dl', two.pid);
  assert.equal((await history(root, 'dl')).length, 1, 'nothing started again');
});

test('two apps sharing a releases folder never see or signal each other\'s processes', async (t) => {
  const root = await setup(t, 'relink-lineage-shared-');
  const shared = path.join(root, 'shared-releases');
  const portA = await freePort();
  const portB = await freePort();
  const a = await pyApp(root, 'a', {}, { releasesDir: shared, port: portA });
  const b = await pyApp(root, 'b', {}, { releasesDir: shared, port: portB });
  for (const [app, port] of [[a, portA], [b, portB]] as const) {
    for (const r of ['1.0', '2.0']) {
      await writeReleaseFile(path.join(shared, `app.${app.name}${r}`), 'python');
      await writeFile(path.join(shared, `cfg.${app.name}${r}`), `port=${port}\nreload=fork\nmessage=${app.name} ${r}\n`);
    }
    await writeFileAtomic(app.currentFile, JSON.stringify({ 'bin.file': `app.${app.name}1.0`, 'cfg.file': `cfg.${app.name}1.0` }));
  }
  const config = await configFor(root, [a, b]);
  startAgent(t, config);
  assert.equal((await nth(root, 'a', 1)).outcome, 'deployed');
  assert.equal((await nth(root, 'b', 1)).outcome, 'deployed');
  const a1 = await servedBy(portA, 'app.a1.0');
  const b1 = await servedBy(portB, 'app.b1.0');

  await writeFileAtomic(b.currentFile, JSON.stringify({ 'bin.file': 'app.b2.0', 'cfg.file': 'cfg.b2.0' }));
  const b2entry = await nth(root, 'b', 2);
  assert.equal(b2entry.outcome, 'deployed', b2entry.reason ?? '');
  assert.equal(b2entry.pidBefore, b1.pid);
  const b2 = await servedBy(portB, 'app.b2.0');
  assert.notEqual(b2.pid, a1.pid);
  // a was never signalled: the same process serves the same release.
  assert.deepEqual(await ask(portA), a1);
  await assertServing(config, 'a', a1.pid);
  await assertServing(config, 'b', b2.pid);
  assert.equal((await history(root, 'a')).length, 1);
});

test('a re-pointed releases symlink (release -> releases-B) never loses the running app', async (t) => {
  const root = await setup(t, 'relink-lineage-repoint-');
  const port = await freePort();
  const appDir = path.join(root, 'cap');
  const relA = path.join(appDir, 'releases-A');
  const relB = path.join(appDir, 'releases-B');
  for (const rel of [relA, relB]) {
    await mkdir(rel, { recursive: true });
    for (const r of ['1.0', '2.0']) {
      await writeReleaseFile(path.join(rel, `app.${r}`), 'python');
      await writeFile(path.join(rel, `cfg.${r}`), `port=${port}\nreload=fork\nmessage=${path.basename(rel)} ${r}\n`);
    }
  }
  const link = path.join(appDir, 'release');
  await symlink('releases-A', link);
  // current.conf outside the re-pointed folder: it is the app's, not a release's.
  const app: PyApp = { name: 'cap', dir: appDir, releasesDir: link, currentFile: path.join(link, 'current.conf'), port };
  await setCurrent(app, '1.0');
  const config = await configFor(root, [app]);
  const agent = startAgent(t, config);
  assert.equal((await nth(root, 'cap', 1)).outcome, 'deployed');
  const one = await servedBy(port, 'app.1.0');

  // The Capistrano habit: a new releases folder, the symlink swapped over it.
  await symlink('releases-B', `${link}.new`);
  await rename(`${link}.new`, link);
  await setCurrent(app, '2.0');
  const second = await waitFor('the deploy of 2.0', async () => (await history(root, 'cap')).find((e) => e.to.bin?.endsWith('app.2.0') === true), { timeoutMs: 30_000 });
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  assert.equal(second.pidBefore, one.pid, 'the app was still known: signalled, not started again');
  assert.equal(second.action, 'signal');
  const two = await servedBy(port, 'app.2.0');
  assert.equal(two.message, 'releases-B 2.0');
  assert.ok(!agent.lines.some((l) => l.msg === 'app process is gone'), 'the app was never taken for gone');
  await assertServing(config, 'cap', two.pid);
});

test('an old generation draining for 20 s never fails the handoff, is shown draining, and two deploys in a row both succeed', async (t) => {
  const root = await setup(t, 'relink-lineage-drain-');
  const app = await pyApp(root, 'dr', { '1.0': 'reload=fork\ndrain_ms=20000\n', '2.0': 'reload=fork\ndrain_ms=20000\n', '3.0': 'reload=fork\n' });
  await setCurrent(app, '1.0');
  // The drain outlives reload.timeoutMs (5 s) by far; the drain timeout is longer still.
  const config = await configFor(root, [app], () => ({ reload: { timeoutMs: 5_000, drainTimeoutMs: 60_000 } }));
  startAgent(t, config);
  assert.equal((await nth(root, 'dr', 1)).outcome, 'deployed');
  const one = await servedBy(app.port, 'app.1.0');

  await setCurrent(app, '2.0');
  const second = await nth(root, 'dr', 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  const two = await servedBy(app.port, 'app.2.0');
  assert.ok(await alive(one.pid), 'the old generation still drains');
  const s = await status(config, 'dr');
  const draining = s.generations.filter((g) => g.role === 'draining');
  assert.ok(draining.some((g) => g.processes.some((p) => p.pid === one.pid)), JSON.stringify(s.generations));
  const text = (await relinkCli(['status', '--config', config, '--app', 'dr'])).stdout;
  assert.match(text, new RegExp(`generation \\d+ +draining since \\S+: ${one.pid} started `));
  assert.match(text, new RegExp(`generation \\d+ +serving: ${two.pid} \\(main\\) started `));

  await setCurrent(app, '3.0');
  const third = await nth(root, 'dr', 3);
  assert.equal(third.outcome, 'deployed', third.reason ?? '');
  assert.equal(third.pidBefore, two.pid, 'the serving generation was signalled, not the draining one');
  const three = await servedBy(app.port, 'app.3.0');
  assert.deepEqual(JSON.parse(await readFile(app.currentFile, 'utf8')), { 'bin.file': 'app.3.0', 'cfg.file': 'cfg.3.0' });
  await assertServing(config, 'dr', three.pid);
  await waitFor('the draining generations to exit on their own', async () => !(await alive(one.pid)) && !(await alive(two.pid)), { timeoutMs: 40_000 });
});

test('an old generation past reload.drainTimeoutMs gets SIGTERM, logged', async (t) => {
  const { root, app, agent, one } = await firstDeployed(t, 'relink-lineage-drainkill-', 'dk', { '1.0': 'reload=fork\ndrain_ms=600000\n', '2.0': 'reload=fork\n' }, { timeoutMs: 5_000, drainTimeoutMs: 1_000 });
  await setCurrent(app, '2.0');
  assert.equal((await nth(root, 'dk', 2)).outcome, 'deployed');
  const line = await agent.waitForLog('the drain timeout', (l) => /still runs 1000 ms after the next one took over/.test(l.msg), { timeoutMs: 15_000 });
  assert.deepEqual(line['pids'], [one.pid]);
  await waitFor('the overdue generation to be gone', async () => !(await alive(one.pid)), { timeoutMs: 15_000 });
  await servedBy(app.port, 'app.2.0');
});

test('a successor that dies and is left a zombie fails the deploy at once, with a reason that names it', async (t) => {
  const { root, app, config, one } = await firstDeployed(t, 'relink-lineage-zombie-', 'zb', { '1.0': 'reload=fork\nreap=0\n', '2.0': 'reload=fork\nfail_start=1\n' }, { timeoutMs: 30_000 });
  await setCurrent(app, '2.0');
  const second = await nth(root, 'zb', 2);
  assert.equal(second.outcome, 'rolled_back', second.reason ?? '');
  assert.match(second.reason ?? '', /zombie/);
  const zombie = Number(/pid (\d+)/.exec(second.reason ?? '')?.[1]);
  assert.equal(readStat(zombie)?.state, 'Z', `the pid named is the zombie: ${second.reason ?? ''}`);
  assert.deepEqual(await ask(app.port), { ...one }, 'the old process still serves');
  await assertServing(config, 'zb', one.pid);
});

/** nginx (Debian's, behind a wrapper release: the binary lives outside the releases folder) with `workers` workers, under a config for the agent. */
async function nginxApp(t: TestContext, prefix: string, workers: number, reload: Record<string, unknown> = { mode: 'inplace' }): Promise<{ root: string; configFile: string; port: number } | undefined> {
  if (process.getuid?.() !== 0) {
    if (process.env['CI']) assert.fail('nginx workers switch user: CI runs as root');
    t.skip('nginx workers switch user: run as root');
    return undefined;
  }
  if (!(await needProgram(t, '/usr/sbin/nginx', 'nginx-light'))) return undefined;
  const root = await tmpDir(t, prefix);
  reapMarkedAfter(t, root);
  const dir = path.join(root, 'ngx');
  const releasesDir = path.join(dir, 'release');
  await mkdir(releasesDir, { recursive: true });
  const port = await freePort();
  const conf = (r: string): string => `daemon off;\nworker_processes ${workers};\npid nginx.pid;\nerror_log error.log warn;\nevents { worker_connections 64; }\nhttp {\n  access_log off;\n  client_body_temp_path body_temp;\n  server {\n    listen 127.0.0.1:${port};\n    location = /healthz { return 200 "ok\\n"; }\n    location / { default_type text/plain; return 200 "nginx ${r}\\n"; }\n  }\n}\n`;
  await writeFile(path.join(releasesDir, 'app.1.0'), '#!/bin/sh\nexec /usr/sbin/nginx "$@"\n');
  await chmod(path.join(releasesDir, 'app.1.0'), 0o755);
  await writeFile(path.join(releasesDir, 'cfg.1.0'), conf('1.0'));
  await writeFileAtomic(path.join(releasesDir, 'current.conf'), '{"bin.file": "app.1.0", "cfg.file": "cfg.1.0"}\n');
  const configFile = path.join(root, 'config.json');
  await writeFile(configFile, JSON.stringify({
    stateDir: path.join(root, 'state'),
    apps: [{
      name: 'ngx', dir, allowRoot: true,
      command: ['./app.bin', '-p', `${dir}/`, '-e', 'error.log', '-c', path.join(dir, 'app.cfg')],
      reload,
      health: { url: `http://127.0.0.1:${port}/healthz`, settleMs: 300 },
      supervise: { checkMs: 100, backoffMs: 100, maxBackoffMs: 400, stableMs: 3_000, maxRetries: 3 },
    }],
  }));
  return { root, configFile, port };
}

/** The serving generation's processes other than `main`, once there are `n` of them. */
async function workersOf(configFile: string, main: number, n: number): Promise<number[]> {
  return waitFor(`${n} workers in the serving generation`, async () => {
    const s = await status(configFile, 'ngx');
    const w = (s.generations.find((g) => g.role === 'serving')?.processes ?? []).filter((p) => p.pid !== main).map((p) => p.pid);
    return w.length === n ? w : undefined;
  }, { timeoutMs: 15_000 });
}

/** nginxApp under a new agent, its first release deployed and its `workers` workers known: the master's pid and theirs. */
async function nginxDeployed(t: TestContext, prefix: string, workers: number): Promise<{ configFile: string; port: number; agent: AgentProc; master: number; workers: number[] } | undefined> {
  const ngx = await nginxApp(t, prefix, workers);
  if (ngx === undefined) return undefined;
  const agent = startAgent(t, ngx.configFile);
  const first = await nth(ngx.root, 'ngx', 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const master = first.pidAfter!;
  return { configFile: ngx.configFile, port: ngx.port, agent, master, workers: await workersOf(ngx.configFile, master, workers) };
}

test('nginx whose master is killed with its workers alive: the workers are stopped and nginx is started again', async (t) => {
  const ngx = await nginxDeployed(t, 'relink-lineage-nginx-', 2);
  if (ngx === undefined) return;
  const { configFile, port, agent, master, workers } = ngx;

  process.kill(master, 'SIGKILL');
  await agent.waitForLog('the leftovers stopped', (l) => /main process died and left 2 of its processes running/.test(l.msg), { timeoutMs: 15_000 });
  await agent.waitForLog('the restart', (l) => l.msg === 'app restarted', { timeoutMs: 20_000 });
  for (const w of workers) assert.equal(await alive(w), false, `old worker ${w} was stopped`);
  const answer = await waitFor('nginx to serve again', async () => (await get(`http://127.0.0.1:${port}/`).catch(() => undefined))?.body);
  assert.equal(answer, 'nginx 1.0\n');
  const s = await status(configFile, 'ngx');
  assert.equal(s.state, 'running');
  assert.notEqual(s.pid, master);
  assert.equal(s.generations.filter((g) => g.role === 'serving').length, 1);
});

test('nginx whose master is killed just after it replaced a worker (one forked since the agent last looked, then re-parented): found by its session, stopped, and nginx starts again', async (t) => {
  // Found by a trial: the orphaned worker (running as nobody, its
  // environment overwritten) was unknown to the lineage, so it was taken
  // for another user's process and left holding the port; every restart
  // failed to bind, and an agent restarted later judged its start by the
  // orphan's answers, then marked the app fatal.
  const ngx = await nginxDeployed(t, 'relink-lineage-nginxorphan-', 1);
  if (ngx === undefined) return;
  const { configFile, port, agent, master, workers: [worker] } = ngx;
  process.kill(worker!, 'SIGKILL');
  const replacement = await waitFor('nginx to replace its worker', async () => {
    const kids = (descendantsOf(master) ?? []).filter((p) => p.ppid === master && p.pid !== worker);
    return kids.length === 1 ? kids[0]!.pid : undefined;
  });
  process.kill(master, 'SIGKILL');
  await agent.waitForLog('the orphan stopped', (l) => new RegExp(`main process died and left 1 of its processes running \\(${replacement}\\)`).test(l.msg), { timeoutMs: 15_000 });
  await waitFor('the orphaned worker to be gone', async () => ((await alive(replacement)) ? undefined : true), { timeoutMs: 15_000 });
  await waitFor('nginx to serve again from a new master', async () => {
    const st = await status(configFile, 'ngx');
    const body = (await get(`http://127.0.0.1:${port}/`).catch(() => undefined))?.body;
    return st.state === 'running' && st.pid !== null && st.pid !== master && body === 'nginx 1.0\n' ? true : undefined;
  }, { timeoutMs: 20_000 });
  assert.ok(!agent.lines.some((l) => /not as the app's user/.test(l.msg)), 'the worker was never taken for another user\'s process');
});

test('nginx in the foreground ("daemon off;") under "upgrade": it ignores SIGUSR2 while the agent, its parent, runs; the deploy is rolled back with HANDOFF_TIMEOUT naming that and the fix, and the master serves on', async (t) => {
  // Found by the fresh-user trial: the failure said '"inplace" fits an app
  // that reloads without a new process', which sent the operator the wrong way.
  const ngx = await nginxApp(t, 'relink-lineage-nginxfg-', 1, { strategy: 'upgrade', signal: 'SIGUSR2', timeoutMs: 2_000 });
  if (ngx === undefined) return;
  const agent = startAgent(t, ngx.configFile);
  const first = await nth(ngx.root, 'ngx', 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const releasesDir = path.join(ngx.root, 'ngx', 'release');
  await copyFile(path.join(releasesDir, 'app.1.0'), path.join(releasesDir, 'app.2.0'));
  await writeFileAtomic(path.join(releasesDir, 'current.conf'), '{"bin.file": "app.2.0", "cfg.file": "cfg.1.0"}\n');
  const second = await nth(ngx.root, 'ngx', 2);
  assert.equal(second.outcome, 'rolled_back', second.reason ?? '');
  assert.equal(second.code, 'HANDOFF_TIMEOUT');
  assert.match(second.reason ?? '', new RegExp(`no new master of the app started within 2000 ms of SIGUSR2 to pid ${first.pidAfter} \\(reload\\.strategy "upgrade"\\): pid ${first.pidAfter} is the agent's own child`));
  assert.match(second.reason ?? '', /"daemon on;"/);
  assert.doesNotMatch(second.reason ?? '', /"inplace" fits/);
  const s = await status(ngx.configFile, 'ngx');
  assert.equal(s.pid, first.pidAfter, 'the same master serves');
  assert.equal((await get(`http://127.0.0.1:${ngx.port}/`)).body, 'nginx 1.0\n');
  assert.equal(await agent.stop(), 0);
});

test('nginx with one worker, adopted by a new agent, master killed: the lone worker is a leftover, not followed as the main', async (t) => {
  const ngx = await nginxDeployed(t, 'relink-lineage-nginx1-', 1);
  if (ngx === undefined) return;
  const { configFile, port, agent, master, workers: [worker] } = ngx;
  // Known to the agent before it stops (its refresh after the verdict), then adopted.
  assert.equal(await agent.stop(), 0);
  const next = startAgent(t, configFile);
  await next.waitForLog('adoption', (l) => l.msg === 'adopted running app' && l['appPid'] === master);
  // The new agent is not the master's parent: how it died is unknown to it.
  process.kill(master, 'SIGKILL');
  await next.waitForLog('the leftover stopped', (l) => /main process died and left 1 of its processes running/.test(l.msg), { timeoutMs: 15_000 });
  assert.ok(!next.lines.some((l) => /followed as the main/.test(l.msg)), 'the worker was never followed as the main');
  // Started again: by the crash supervision, or by the first pass if the kill came during it.
  await waitFor('a new master', async () => {
    const st = await status(configFile, 'ngx');
    return st.state === 'running' && st.pid !== null && st.pid !== master ? true : undefined;
  }, { timeoutMs: 20_000 });
  assert.equal(await alive(worker!), false);
  await waitFor('nginx to serve again', async () => (await get(`http://127.0.0.1:${port}/`).catch(() => undefined))?.body === 'nginx 1.0\n' ? true : undefined);
  const s = await status(configFile, 'ngx');
  assert.notEqual(s.pid, master);
  assert.equal(s.generations.filter((g) => g.role === 'serving').length, 1);
});

test('as PID 1 (a container entrypoint) the agent refuses to start and says how to run it', async (t) => {
  if (process.getuid?.() !== 0) {
    if (process.env['CI']) assert.fail('a PID namespace needs root: CI runs as root');
    t.skip('a PID namespace needs root');
    return;
  }
  const root = await tmpDir(t, 'relink-lineage-pid1-');
  const config = await configFor(root, []);
  // unshare makes a PID namespace whose first process, the agent, is PID 1.
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn('unshare', ['--fork', '--pid', '--mount-proc', ...RELINK, 'agent', '--config', config], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, stderr }));
  });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /refusing to run as PID 1/);
  assert.match(r.stderr, /docker run --init/);
  assert.match(r.stderr, /tini/);
});

test('gunicorn (Debian) through a #!/bin/sh wrapper: master and workers known, an in-place reload makes new workers the new generation, adopted without a second copy', async (t) => {
  if (!(await needProgram(t, '/usr/bin/gunicorn', 'gunicorn'))) return;
  const root = await setup(t, 'relink-lineage-gunicorn-');
  const port = await freePort();
  const dir = path.join(root, 'gun');
  const releasesDir = path.join(dir, 'release');
  await mkdir(releasesDir, { recursive: true });
  await writeFile(path.join(releasesDir, 'app.1.0'), '#!/bin/sh\n# gunicorn, as a release: the wrapper execs it.\nexec /usr/bin/gunicorn "$@"\n');
  await chmod(path.join(releasesDir, 'app.1.0'), 0o755);
  for (const r of ['1.0', '2.0']) {
    await writeFile(path.join(releasesDir, `cfg.${r}`), [
      `bind = "127.0.0.1:${port}"`, 'workers = 2', `pythonpath = "${path.join(ROOT, 'test', 'apps')}"`,
      'wsgi_app = "wsgiapp:application"', `raw_env = ["RELEASE=${r}"]`, 'graceful_timeout = 5', '',
    ].join('\n'));
  }
  const app: PyApp = { name: 'gun', dir, releasesDir, currentFile: path.join(releasesDir, 'current.conf'), port };
  await writeFileAtomic(app.currentFile, JSON.stringify({ 'bin.file': 'app.1.0', 'cfg.file': 'cfg.1.0' }));
  // gunicorn reloads its config and replaces its workers on SIGHUP: in place.
  const config = await configFor(root, [app], () => ({ reload: { mode: 'inplace', timeoutMs: 5_000 } }));
  const agent = startAgent(t, config);
  const first = await nth(root, 'gun', 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const master = first.pidAfter!;
  const serving = async (): Promise<number[]> => (await status(config, 'gun')).generations.find((g) => g.role === 'serving')?.processes.map((p) => p.pid) ?? [];
  const oldWorkers = await waitFor('the master and its 2 workers in the serving generation', async () => {
    const pids = await serving();
    return pids.length === 3 && pids.includes(master) ? pids.filter((p) => p !== master) : undefined;
  }, { timeoutMs: 15_000 });

  await writeFileAtomic(app.currentFile, JSON.stringify({ 'bin.file': 'app.1.0', 'cfg.file': 'cfg.2.0' }));
  const second = await nth(root, 'gun', 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  assert.equal(second.pidAfter, master, 'the same master, reloaded in place');
  const reply = await waitFor('a worker of release 2.0', async () => {
    const r = JSON.parse((await get(`http://127.0.0.1:${port}/`)).body) as { release: string; pid: number; master: number };
    return r.release === '2.0' ? r : undefined;
  }, { timeoutMs: 15_000 });
  assert.equal(reply.master, master);
  assert.ok(!oldWorkers.includes(reply.pid), 'a new worker answers');
  await waitFor('the old workers to leave and the new ones to serve', async () => {
    const pids = await serving();
    return pids.length === 3 && pids.includes(reply.pid) && !oldWorkers.some((w) => pids.includes(w)) ? true : undefined;
  }, { timeoutMs: 20_000 });
  await assertServing(config, 'gun', master);

  assert.equal(await agent.stop(), 0);
  const next = startAgent(t, config);
  await next.waitForLog('adoption', (l) => l.msg === 'adopted running app' && l['appPid'] === master);
  assert.equal((await history(root, 'gun')).length, 2, 'nothing started again');
  await assertServing(config, 'gun', master);
});

test('a successor that never becomes ready (the old process still listening) is not taken for a handoff: HANDOFF_TIMEOUT, stopped, the old one serves', async (t) => {
  const { root, app, config, one } = await firstDeployed(t, 'relink-lineage-notready-', 'nr', { '1.0': 'reload=fork\n', '2.0': 'reload=fork\nready_delay_ms=600000\n' }, { timeoutMs: 3_000 });
  await setCurrent(app, '2.0');
  const second = await nth(root, 'nr', 2);
  assert.equal(second.outcome, 'rolled_back', second.reason ?? '');
  assert.equal(second.code, 'HANDOFF_TIMEOUT');
  assert.match(second.reason ?? '', /still listens on the socket it shares with its successor \(pid (\d+)\)/);
  assert.match(second.reason ?? '', / \(see \/\S+\/app\.log\)$/, 'the reason ends by naming the app\'s log file (the successor\'s output is there too)');
  const successor = Number(/its successor \(pid (\d+)\)/.exec(second.reason ?? '')?.[1]);
  await waitFor('the successor that never got ready to be stopped', async () => !(await alive(successor)));
  assert.deepEqual(await ask(app.port), one, 'the old process serves on');
  await assertServing(config, 'nr', one.pid);
});

test('a main killed with a helper child alive: the helper is not taken for the app; it is stopped and the app restarted', async (t) => {
  const { app, config, agent, one } = await firstDeployed(t, 'relink-lineage-helper-', 'hp', { '1.0': 'reload=fork\nhelper=1\n' });
  // The helper is known to the agent (the lineage refresh follows new children).
  const helper = await waitFor('the helper in the serving generation', async () => {
    const s = await status(config, 'hp');
    return s.generations.find((g) => g.role === 'serving')?.processes.find((p) => p.pid !== one.pid)?.pid;
  }, { timeoutMs: 15_000 });
  process.kill(one.pid, 'SIGKILL');
  await agent.waitForLog('the leftover stopped', (l) => /main process died and left 1 of its processes running/.test(l.msg), { timeoutMs: 15_000 });
  assert.ok(!agent.lines.some((l) => /followed as the main/.test(l.msg)), 'the helper was never followed as the main');
  await waitFor('the helper to be stopped', async () => !(await alive(helper)));
  const again = await waitFor('the app restarted', async () => {
    const r = await ask(app.port).catch(() => undefined);
    return r !== undefined && r.pid !== one.pid ? r : undefined;
  });
  await assertServing(config, 'hp', again.pid);
});

test('the agent killed between journaling a verdict and saving its state: the next one adopts the new generation, no second copy, no second verdict', async (t) => {
  const { root, app, config, agent } = await firstDeployed(t, 'relink-lineage-journalkill-', 'jk', { '1.0': 'reload=fork\n', '2.0': 'reload=fork\n' });
  const journal = path.join(root, 'state', 'apps', 'jk', 'history.jsonl');
  const size = (await stat(journal)).size;
  await setCurrent(app, '2.0');
  // The moment the verdict reaches the journal, before the state file is saved.
  await new Promise<void>((resolve, reject) => {
    const until = Date.now() + 30_000;
    const poll = (): void => {
      try {
        if (statSync(journal).size > size) {
          agent.child.kill('SIGKILL');
          resolve();
          return;
        }
      } catch (err) {
        reject(err as Error);
        return;
      }
      if (Date.now() > until) reject(new Error('the verdict never reached the journal'));
      else setImmediate(poll);
    };
    poll();
  });
  await agent.stop();
  const two = await servedBy(app.port, 'app.2.0');
  const next = startAgent(t, config);
  await next.waitForLog('adoption', (l) => l.msg === 'adopted running app' && l['appPid'] === two.pid);
  await assertServing(config, 'jk', two.pid);
  const entries = await history(root, 'jk');
  assert.equal(entries.length, 2, JSON.stringify(entries.map((e) => [e.outcome, e.trigger])));
  assert.equal(entries[1]!.outcome, 'deployed');
  assert.ok(!next.lines.some((l) => l.msg === 'app started' || l.msg === 'app restarted'), 'no second copy');
});

test('a script release whose #! interpreter is missing: the failed start names the interpreter, not the file', async (t) => {
  const root = await setup(t, 'relink-lineage-interp-');
  const app = await pyApp(root, 'ip', { '1.0': '' });
  await writeFile(path.join(app.releasesDir, 'app.1.0'), '#!/usr/bin/no-such-interpreter\nprint("never")\n');
  await setCurrent(app, '1.0');
  const config = await configFor(root, [app]);
  startAgent(t, config);
  const first = await nth(root, 'ip', 1);
  assert.equal(first.outcome, 'failed');
  assert.match(first.reason ?? '', /names the interpreter \/usr\/bin\/no-such-interpreter in its #! line, which does not exist/);
});
