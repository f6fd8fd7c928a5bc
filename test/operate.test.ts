/**
 * relink stop | start | restart (issue 12, item 1) with the real agent and a
 * real app (test/apps/plainapp.py): a stop holds across agent restarts and
 * deploys, a start runs what the links name, a restart brings a changed env
 * to the app (status says "restart to apply" until then) and, under
 * "socket", refuses nothing.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, readlink, rename, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { readHistory } from '../src/history.js';
import { needProgram, openUp, testUser } from './accounts.js';
import { SocketHolder } from '../src/sockets.js';
import { defer, get, reapMarkedAfter, relinkCli, startAgent, tmpDir, waitFor } from './helpers.js';
import { assertNoErrors, configFor, load, makeApp, nth, PLAIN, servedBy, setCurrent, type App } from './plainapps.js';

interface StatusJson {
  apps: Array<{ name: string; state: string; pid: number | null; held: string | null; restartToApply: string[] }>;
}

async function status(config: string): Promise<StatusJson['apps'][number]> {
  const r = await relinkCli(['status', '--config', config, '--json']);
  return (JSON.parse(r.stdout) as StatusJson).apps[0]!;
}

/** Nothing answers on the app's port (its processes are gone). */
async function refused(app: App): Promise<boolean> {
  return get(`http://127.0.0.1:${app.port}/`).then(() => false, () => true);
}

test('relink stop --wait: the app is stopped and stays stopped across supervision, an agent restart and a deploy; relink start runs what the links name', async (t) => {
  const root = await tmpDir(t);
  const app = await makeApp(root, 'op', PLAIN, { '1': '', '2': '', x: 'fail_start=1\n' });
  reapMarkedAfter(t, app.dir);
  await setCurrent(app, '1');
  const config = await configFor(root, app, {});
  let agent = startAgent(t, config);
  assert.equal((await nth(root, app.name, 1)).outcome, 'deployed');
  const one = await servedBy(app.port, 'app.1');

  const stop = await relinkCli(['stop', app.name, '--config', config, '--wait']);
  assert.equal(stop.code, 0, stop.stderr);
  assert.match(stop.stdout, new RegExp(`op: stopped \\(pid ${one.pid}\\)`));
  assert.ok(await refused(app), 'nothing answers after relink stop');
  const e = (await readHistory(path.join(root, 'state'), app.name)).at(-1)!;
  assert.deepEqual([e.outcome, e.action, e.command], ['stopped', 'stop', 'stop']);
  assert.equal((await status(config)).state, 'stopped');
  assert.notEqual((await status(config)).held, null);
  assert.match((await relinkCli(['status', '--config', config])).stdout, /^ {2}last relink stop +\S+ \(.*\): stopped/m, 'a stop is not shown as a deploy');

  // Supervision (checkMs 100) would have restarted a crashed app within a
  // few checks: the agent's restart is the proof that it is left stopped on
  // purpose, since a new agent starts every app it finds down.
  assert.equal(await agent.stop(), 0);
  agent = startAgent(t, config);
  await agent.waitForLog('the held app left stopped', (l) => typeof l.msg === 'string' && l.msg.includes('stopped by relink stop'));
  assert.ok(await refused(app), 'still stopped after an agent restart');

  // A deploy while stopped: links switched, journaled, the app left stopped.
  await setCurrent(app, '2');
  const d = await nth(root, app.name, 3);
  assert.deepEqual([d.outcome, d.action], ['stopped', 'none'], d.reason ?? '');
  assert.equal(await readlink(path.join(app.dir, 'app.bin')), path.join(app.releasesDir, 'app.2'));
  assert.ok(await refused(app), 'a deploy leaves a stopped app stopped');
  const st = await status(config);
  assert.equal(st.state, 'stopped');

  const start = await relinkCli(['start', '--app', app.name, '--config', config, '--wait']);
  assert.equal(start.code, 0, start.stderr);
  assert.match(start.stdout, /op: started and healthy \(start/);
  await servedBy(app.port, 'app.2');
  assert.equal((await status(config)).held, null);

  // Started and healthy, 2 is the known-good release: a failed deploy goes back to it (it went back to 1, and rewrote current.conf so).
  await setCurrent(app, 'x');
  const back = await nth(root, app.name, 5);
  assert.equal(back.outcome, 'rolled_back', back.reason ?? '');
  assert.equal(back.rolledBackTo?.bin, path.join(app.releasesDir, 'app.2'));
  assert.match(await readFile(path.join(app.releasesDir, 'current.conf'), 'utf8'), /"app\.2"/);
  await servedBy(app.port, 'app.2');
  await agent.stop();
});

test('relink restart applies a changed env: status says "restart to apply: env.APP_COLOR" until then; under "socket" nothing is refused meanwhile', async (t) => {
  if (!(await needProgram(t, '/usr/bin/wrk', 'wrk'))) return;
  const root = await tmpDir(t);
  const app = await makeApp(root, 'col', PLAIN, { '1': '' });
  reapMarkedAfter(t, app.dir);
  await setCurrent(app, '1');
  const keys = (color: string): Record<string, unknown> => ({ env: { APP_COLOR: color }, sockets: [`127.0.0.1:${app.port}`], reload: { strategy: 'socket', timeoutMs: 5_000 } });
  const config = await configFor(root, app, keys('blue'));
  // The socket passed the systemd way (a socket unit's): it outlives the agent restart below.
  const systemd = new SocketHolder();
  defer(t, () => systemd.close());
  assert.deepEqual(await systemd.bind([{ address: `127.0.0.1:${app.port}` }]), []);
  const listen = { fds: [systemd.get(`127.0.0.1:${app.port}`)!.fd], names: [app.name] };
  let agent = startAgent(t, config, { listen });
  assert.equal((await nth(root, app.name, 1)).outcome, 'deployed');
  assert.equal((await servedBy(app.port, 'app.1') as { color?: string }).color, 'blue');
  assert.deepEqual((await status(config)).restartToApply, []);

  // The config changes (the agent restarted on it): the running generation keeps its env.
  await configFor(root, app, keys('green'));
  assert.equal(await agent.stop(), 0);
  agent = startAgent(t, config, { listen });
  await agent.waitForLog('adoption', (l) => l.msg === 'adopted running app');
  assert.deepEqual((await status(config)).restartToApply, ['env.APP_COLOR']);
  const human = await relinkCli(['status', '--config', config]);
  assert.match(human.stdout, /restart to apply\s+env\.APP_COLOR/);

  const wrk = load(t, app.port);
  const r = await relinkCli(['restart', app.name, '--config', config, '--wait']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /col: restarted and healthy \(replace/);
  const after = await waitFor('the green generation', async () => {
    const b = JSON.parse((await get(`http://127.0.0.1:${app.port}/`)).body) as { color: string; pid: number };
    return b.color === 'green' ? b : undefined;
  });
  assertNoErrors(await wrk.stop());
  const st = await status(config);
  assert.deepEqual(st.restartToApply, []);
  assert.equal(st.pid, after.pid);
  await agent.stop();
});

test('relink status with no agent running says a deploy, or its rollback, the last agent was carrying out is interrupted, until the next agent finishes it', async (t) => {
  const root = await tmpDir(t);
  // Release 2 answers its health check only after 6 s: a deploy to it, or a
  // rollback to it, is in flight meanwhile. Release 3 exits at start.
  const app = await makeApp(root, 'mid', PLAIN, { '1': '', '2': 'ready_delay_ms=6000', '3': 'fail_start=1' });
  reapMarkedAfter(t, app.dir);
  await setCurrent(app, '1');
  const config = await configFor(root, app, { reload: { strategy: 'restart', timeoutMs: 5_000 }, health: { url: `http://127.0.0.1:${app.port}/healthz`, settleMs: 200, deadlineMs: 20_000, intervalMs: 50 } });
  let agent = startAgent(t, config);
  assert.equal((await nth(root, app.name, 1)).outcome, 'deployed');
  await setCurrent(app, '2');
  await waitFor('the deploy of release 2 under way', async () => ((await status(config)).state === 'deploying' ? true : undefined));
  await agent.stop('SIGKILL');
  const human = await relinkCli(['status', '--config', config]);
  assert.match(human.stdout, new RegExp(`interrupted +the agent stopped in the middle of a deploy of ${app.releasesDir}/app\\.2 \\+ cfg\\.2, begun \\S+ \\(\\d+s ago\\): neither deployed nor rolled back yet; the next agent judges it as it starts`), human.stdout);
  type Interrupted = { phase: string; to: { bin: string; cfg: string }; from: { bin: string; cfg: string }; cause: string | null; since: string } | null;
  const interrupted = async (): Promise<Interrupted> => (JSON.parse((await relinkCli(['status', '--config', config, '--json'])).stdout) as { apps: Array<{ interrupted: Interrupted }> }).apps[0]!.interrupted;
  const i = await interrupted();
  assert.deepEqual([i?.phase, i?.to.bin, i?.to.cfg, i?.from.bin, i?.cause], ['deploy', path.join(app.releasesDir, 'app.2'), path.join(app.releasesDir, 'cfg.2'), path.join(app.releasesDir, 'app.1'), null]);
  assert.ok(Date.now() - Date.parse(i!.since) < 60_000, i!.since);
  // The next agent judges it; then nothing is interrupted.
  agent = startAgent(t, config);
  const e = await nth(root, app.name, 2);
  assert.equal(e.outcome, 'deployed', e.reason ?? '');
  assert.equal(await interrupted(), null);

  // A rollback under way (back to release 2, which takes 6 s to be healthy)
  // is told as one: from the failed release to the good one, with why (a
  // trial saw it told as "a rollback to" the failed release).
  await setCurrent(app, '3');
  await agent.waitForLog('the rollback', (l) => l.msg === 'deploy failed verification; rolling back');
  await agent.stop('SIGKILL');
  const back = await interrupted();
  assert.deepEqual([back?.phase, back?.from.bin, back?.to.bin, back?.to.cfg], ['rollback', path.join(app.releasesDir, 'app.3'), path.join(app.releasesDir, 'app.2'), path.join(app.releasesDir, 'cfg.2')]);
  assert.match(back?.cause ?? '', /\[APP_EXITED\]$/);
  const text = (await relinkCli(['status', '--config', config])).stdout;
  // When the rollback began, and the deploy it rolls back (a trial read the deploy's start as the rollback's).
  assert.match(text, new RegExp(`interrupted +the agent stopped in the middle of a rollback from ${app.releasesDir}/app\\.3 \\+ cfg\\.3 \\(.*\\[APP_EXITED\\]\\) to ${app.releasesDir}/app\\.2 \\+ cfg\\.2, begun \\S+ \\(\\d+s ago\\), the deploy at \\S+: the next agent finishes it as it starts`), text);
  const rs = (JSON.parse((await relinkCli(['status', '--config', config, '--json'])).stdout) as { apps: Array<{ interrupted: { since: string; rollbackSince: string | null } }> }).apps[0]!.interrupted;
  assert.ok(rs.rollbackSince !== null && Date.parse(rs.rollbackSince) >= Date.parse(rs.since) - 20, `the rollback began after the deploy: ${JSON.stringify(rs)}`);
  agent = startAgent(t, config);
  const r = await nth(root, app.name, 3);
  assert.equal(r.outcome, 'rolled_back', r.reason ?? '');
  await servedBy(app.port, 'app.2');
  assert.equal(await interrupted(), null);
  await agent.stop();
  assert.doesNotMatch((await relinkCli(['status', '--config', config])).stdout, /interrupted/);

  // An agent killed after it journaled the verdict, before it saved the
  // state without the deploy in flight (a trial, 2 in 5): the state file
  // still holds the rollback and the deploy before it. The journal has the
  // verdict: status says it, not "interrupted".
  const stateFile = path.join(root, 'state', 'apps', app.name, 'state.json');
  const saved = JSON.parse(await readFile(stateFile, 'utf8')) as Record<string, unknown>;
  const before = (await readHistory(path.join(root, 'state'), app.name))[1]!;
  await writeFile(stateFile, JSON.stringify({
    ...saved,
    lastDeploy: before,
    inflight: {
      phase: 'rollback', trigger: r.trigger, startedMs: Date.parse(r.time) - r.durationMs, hash: r.currentHash, text: '{}',
      release: { bin: path.join(app.releasesDir, 'app.3'), cfg: path.join(app.releasesDir, 'cfg.3') }, from: r.from, pidBefore: r.pidBefore,
      switchedTick: 0, cause: { code: 'APP_EXITED', message: 'exited' },
    },
  }));
  const after = JSON.parse((await relinkCli(['status', '--config', config, '--json'])).stdout) as { apps: Array<{ interrupted: Interrupted; lastDeploy: { outcome: string } | null }> };
  assert.equal(after.apps[0]!.interrupted, null);
  assert.equal(after.apps[0]!.lastDeploy?.outcome, 'rolled_back');
});

test('relink start is the way out of "fatal"; --wait answers a failed restart with exit 1; requests need a running agent', async (t) => {
  const root = await tmpDir(t);
  const app = await makeApp(root, 'fat', PLAIN, { '1': '' });
  reapMarkedAfter(t, app.dir);
  await setCurrent(app, '1');
  const config = await configFor(root, app, {});
  const noAgent = await relinkCli(['stop', app.name, '--config', config, '--wait']);
  assert.equal(noAgent.code, 1);
  assert.match(noAgent.stderr, /no relink agent is running/);

  const agent = startAgent(t, config);
  assert.equal((await nth(root, app.name, 1)).outcome, 'deployed');
  await servedBy(app.port, 'app.1');
  // The release breaks in place (its config now fails at start) and the app dies: a crash loop, then fatal.
  await writeFile(path.join(app.releasesDir, 'cfg.1'), `port=${app.port}\nfail_start=1\n`);
  const first = await status(config);
  process.kill(first.pid!, 'SIGKILL');
  await waitFor('fatal', async () => ((await status(config)).state === 'fatal' ? true : undefined), { timeoutMs: 30_000 });
  const failed = await relinkCli(['restart', app.name, '--config', config, '--wait']);
  assert.equal(failed.code, 1, failed.stdout);
  assert.match(failed.stderr, /fat: relink restart failed: .*exited/);

  // Mended, relink start gets it out of fatal.
  await writeFile(path.join(app.releasesDir, 'cfg.1'), `port=${app.port}\nmessage=fat 1\n`);
  const start = await relinkCli(['start', app.name, '--config', config, '--wait']);
  assert.equal(start.code, 0, start.stderr);
  await servedBy(app.port, 'app.1');
  assert.equal((await status(config)).state, 'running');

  // Another user is told these are root's, once, before anything else fails
  // (--wait read the journal first: EACCES), and --json stays JSON.
  const user = await testUser(t);
  await openUp(root);
  for (const verb of ['stop', 'start', 'restart']) {
    const r = await relinkCli([verb, app.name, '--config', config, '--wait'], {}, user);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^relink ${verb}: only root may ask the agent \\(\\S+ is root's\\): run it with sudo \\[NOT_ROOT\\]\n$`));
  }
  const reload = await relinkCli(['reload', '--config', config, '--wait', '--json'], {}, user);
  assert.equal(reload.code, 1, reload.stderr);
  const said = JSON.parse(reload.stdout) as { outcome: string; code: string; message: string };
  assert.deepEqual([said.outcome, said.code], ['error', 'NOT_ROOT']);
  assert.match(said.message, /^only root may have the agent \(pid \d+, root's\) reload: run it with sudo/);
  assert.equal((await status(config)).pid, (await servedBy(app.port, 'app.1')).pid, 'nothing was done');
  await agent.stop();
});

// Found by a trial: with the app's port taken, relink start --wait exited 1
// and journaled "failed"; crash supervision then brought the app up once
// the port was free, journaling nothing: history said failed, status running.
test('a relink start that fails on a taken port says supervision tries again, and the start that works once the port is free is journaled', async (t) => {
  const root = await tmpDir(t);
  // It tries to bind for 3 s (nginx does for 2.5 s), past its settle time.
  const app = await makeApp(root, 'busy', PLAIN, { '1': 'bind_retries=6\n' });
  reapMarkedAfter(t, app.dir);
  await setCurrent(app, '1');
  const config = await configFor(root, app, { supervise: { checkMs: 100, backoffMs: 1_500, maxBackoffMs: 3_000, stableMs: 3_000, maxRetries: 5 } });
  const agent = startAgent(t, config);
  assert.equal((await nth(root, app.name, 1)).outcome, 'deployed');
  assert.equal((await relinkCli(['stop', app.name, '--config', config, '--wait'])).code, 0);
  // Another program that answers every request with 200, as python's
  // http.server did in the trial (its probe passed: "started and healthy").
  const squatter = createHttpServer((_req, res) => res.end('not the app'));
  await new Promise<void>((resolve, reject) => squatter.once('error', reject).listen(app.port, '127.0.0.1', resolve));
  defer(t, () => new Promise<void>((resolve) => squatter.close(() => resolve())));

  const start = await relinkCli(['start', app.name, '--config', config, '--wait']);
  assert.equal(start.code, 1, start.stdout);
  assert.match(start.stderr, /busy: relink start failed: .*answered by pid \d+ \(\S*node\S*\), which listened on port \d+ before the app was started, while generation \d+ listens on nothing: the app could not bind its port.*; crash supervision tries again in 1500 ms, backing off up to supervise\.maxRetries \(5\) times, and journals the start that works/);
  await new Promise<void>((resolve) => squatter.close(() => resolve()));

  const up = await nth(root, app.name, 4);
  assert.deepEqual([up.outcome, up.action, up.trigger, up.code], ['deployed', 'start', 'supervise', null], up.reason ?? '');
  const served = await servedBy(app.port, 'app.1');
  assert.equal(up.pidAfter, served.pid);
  assert.equal((await status(config)).state, 'running');
  const hist = await relinkCli(['history', '--config', config]);
  assert.match(hist.stdout.trim().split('\n').at(-1) ?? '', / deployed +start \(supervision\) /, hist.stdout + hist.stderr);
  await agent.stop();
});

// The other side of the rule above: a probe that goes through a proxy in
// front of the app on purpose (README, PORT_TAKEN) is answered by a program
// that is not the app, while the app listens on its own port: it passes.
test('a probe through a proxy in front of the app (another program on the probe\'s port) passes when the app listens itself', async (t) => {
  const root = await tmpDir(t);
  const app = await makeApp(root, 'behind', PLAIN, { '1': '' });
  reapMarkedAfter(t, app.dir);
  const proxy = createNetServer((c) => {
    const up = connect(app.port, '127.0.0.1');
    c.pipe(up).pipe(c);
    up.on('error', () => c.destroy());
    c.on('error', () => up.destroy());
  });
  await new Promise<void>((resolve, reject) => proxy.once('error', reject).listen(0, '127.0.0.1', resolve));
  defer(t, () => new Promise<void>((resolve) => proxy.close(() => resolve())));
  const port = (proxy.address() as AddressInfo).port;
  await setCurrent(app, '1');
  const config = await configFor(root, app, { health: { url: `http://127.0.0.1:${port}/healthz`, settleMs: 200, deadlineMs: 4_000, intervalMs: 50 } });
  const agent = startAgent(t, config);
  const first = await nth(root, app.name, 1);
  assert.deepEqual([first.outcome, first.action], ['deployed', 'start'], first.reason ?? '');
  await agent.waitForLog('the proxy named', (l) => l['code'] === 'PORT_TAKEN' && l['holderPid'] === process.pid);
  await servedBy(app.port, 'app.1');
  await agent.stop();
});

test('a request the agent cannot take in time (it cannot manage the app) is withdrawn when --wait gives up, with why, and never carried out later', async (t) => {
  const root = await tmpDir(t);
  const app = await makeApp(root, 'gone', PLAIN, { '1': '' });
  reapMarkedAfter(t, app.dir);
  await setCurrent(app, '1');
  const config = await configFor(root, app, {});
  startAgent(t, config);
  assert.equal((await nth(root, app.name, 1)).outcome, 'deployed');
  const v1 = await servedBy(app.port, 'app.1');
  // The app's folder moved away: the agent cannot manage the app (state "error"), the app serves on.
  await rename(app.dir, `${app.dir}.away`);
  // Asked at once, before the agent's next re-check has seen the folder go
  // (status says "error" from the folder alone): before, the agent took the
  // request and stopped an app it could no longer manage.
  const r = await relinkCli(['stop', app.name, '--config', config, '--wait', '--timeout', '3']);
  assert.equal((await status(config)).state, 'error');
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /^relink stop: gone: no answer from the agent to relink stop within 3 s: the request is withdrawn, nothing was done; the agent cannot manage gone now: .*gone.*\n$/);
  assert.deepEqual(await readdir(path.join(root, 'state', 'apps', app.name, 'requests')), [], 'nothing left for the agent to find later');
  // Back: the agent manages the app again (adopts it) and stops nothing (it stopped it minutes later before).
  await rename(`${app.dir}.away`, app.dir);
  await waitFor('managed again', async () => ((await status(config)).state === 'running' ? true : undefined), { timeoutMs: 30_000 });
  assert.equal((await servedBy(app.port, 'app.1')).pid, v1.pid);
  assert.deepEqual((await readHistory(path.join(root, 'state'), app.name)).map((e) => e.outcome), ['deployed']);
});
