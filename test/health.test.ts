/**
 * Health, for real: the TCP probe (it had no test), the probe that must
 * still pass at the end of the settle time (issue 9, item 20: a probe
 * answered by the old workers in the first milliseconds judged a release
 * healthy whose new workers died right after), liveness supervision, and a
 * failed start that says why in the reason (item 21). The C demo app, the
 * real agent, real sockets.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { freePort, makeApp, setCurrent, writeConfig, type DemoApp } from '../src/demo/layout.js';
import { probeOnce } from '../src/health.js';
import { socketInodes } from '../src/proc.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { ask, servedBy, servedByNewProcess } from './fixture.js';
import { defer, reapAppsAfter, startAgent, tmpDir, waitFor, type AgentProc } from './helpers.js';

interface Setup {
  readonly app: DemoApp;
  readonly agent: AgentProc;
  nth(n: number): Promise<HistoryEntry>;
}

async function setup(t: TestContext, opts: { mode?: 'reexec' | 'inplace'; releases: Record<string, string>; start: string; appExtra: Record<string, unknown>; port?: number }): Promise<Setup> {
  const root = await tmpDir(t, 'relink-health-');
  const app = await makeApp({ root, mode: opts.mode ?? 'reexec', releases: Object.keys(opts.releases), port: opts.port });
  reapAppsAfter(t, app.releasesDir);
  for (const [r, extra] of Object.entries(opts.releases)) {
    await writeFile(path.join(app.releasesDir, `cfg.${r}`), `port=${app.port}\nmode=${opts.mode ?? 'reexec'}\nmessage=hello ${r}\n${extra}`);
  }
  await setCurrent(app, opts.start);
  const config = await writeConfig(root, [app], { reconcileMs: 60_000 }, opts.appExtra);
  const agent = startAgent(t, config);
  const stateDir = path.join(root, 'state');
  return { app, agent, nth: (n) => waitFor(`history entry #${n}`, async () => (await readHistory(stateDir, app.name))[n - 1], { timeoutMs: 30_000 }) };
}

test('probeOnce over TCP: a listening port is "connected", a closed one is refused (the control for both)', async (t) => {
  const server = net.createServer((s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  defer(t, () => new Promise<void>((r) => server.close(() => r())));
  const open = (server.address() as net.AddressInfo).port;
  assert.deepEqual(await probeOnce({ tcp: `127.0.0.1:${open}` }, 1000), { ok: true, detail: 'connected' });
  const closed = await freePort();
  assert.deepEqual(await probeOnce({ tcp: `127.0.0.1:${closed}` }, 1000), { ok: false, detail: 'ECONNREFUSED' });
});

test('an attributed probe names the socket that accepted it, on an IPv4 listener and on a dual-stack [::] one probed over IPv4 (ss asks the client\'s family first, then the other)', async (t) => {
  for (const host of ['127.0.0.1', '::']) {
    const server = http.createServer((req, res) => {
      res.statusCode = req.url === '/sick' ? 503 : 200;
      res.end('ok');
    });
    await new Promise<void>((r) => server.listen(0, host, r));
    defer(t, () => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as net.AddressInfo).port;
    const seen: string[] = [];
    // The server runs in this process: the socket that accepted is one of ours.
    const acceptor = (inode: string) => {
      seen.push(inode);
      return socketInodes(process.pid).has(inode) ? 'judged' as const : 'unknown' as const;
    };
    const r = await probeOnce({ url: `http://127.0.0.1:${port}/` }, 5_000, acceptor);
    assert.deepEqual(r, { ok: true, detail: 'HTTP 200', judged: true }, `listener on ${host}`);
    assert.equal(seen.length, 1, `listener on ${host}: asked once, with the inode found (${seen.join(', ')})`);
    const older = await probeOnce({ url: `http://127.0.0.1:${port}/` }, 5_000, () => 'older');
    assert.deepEqual(older, { ok: false, detail: 'accepted by an older generation', older: true }, `listener on ${host}`);
    // A failure on a connection the judged generation accepted is its own
    // answer (src/verify.ts does not then blame the shared socket).
    const sick = await probeOnce({ url: `http://127.0.0.1:${port}/sick` }, 5_000, acceptor);
    assert.deepEqual(sick, { ok: false, detail: 'HTTP 503', judged: true }, `listener on ${host}`);
    const stranger = await probeOnce({ url: `http://127.0.0.1:${port}/sick` }, 5_000, () => 'unknown');
    assert.deepEqual(stranger, { ok: false, detail: 'HTTP 503' }, `listener on ${host}: accepted by no process of the app`);
  }
});

test('health.tcp: a start whose app accepts on the probed port deploys; one whose app listens elsewhere fails (UNHEALTHY, ECONNREFUSED)', async (t) => {
  const tcp = (port: number) => ({ health: { tcp: `127.0.0.1:${port}`, settleMs: 200, deadlineMs: 1500, intervalMs: 100 } });
  const port = await freePort();
  const good = await setup(t, { releases: { '1.0': '' }, start: '1.0', port, appExtra: tcp(port) });
  const ok = await good.nth(1);
  assert.equal(ok.outcome, 'deployed', ok.reason ?? '');
  await servedBy(good.app, '1.0');

  const probed = await freePort();
  const elsewhere = await freePort();
  // It runs and listens, but on another port: the probed one never accepts.
  const bad = await setup(t, { releases: { '1.0': `port=${elsewhere}\n` }, start: '1.0', port: probed, appExtra: tcp(probed) });
  const first = await bad.nth(1);
  assert.equal(first.outcome, 'failed');
  assert.equal(first.code, 'UNHEALTHY');
  assert.match(first.reason ?? '', new RegExp(`TCP 127\\.0\\.0\\.1:${probed} did not pass within 1500 ms .*last: ECONNREFUSED`));
});

test('in place: a probe answered at once but failing by the end of the settle time rolls the release back', async (t) => {
  const port = await freePort();
  const s = await setup(t, {
    mode: 'inplace', port,
    // "wedge" answers its health check for 150 ms after the reload, then 503: like new workers that die right after.
    releases: { '1.0': '', wedge: 'unhealthy_after_ms=150\n' }, start: '1.0',
    appExtra: { reload: { mode: 'inplace' }, health: { url: `http://127.0.0.1:${port}/healthz`, settleMs: 800, deadlineMs: 2500, intervalMs: 100 } },
  });
  { const e1 = await s.nth(1); assert.equal(e1.outcome, 'deployed', e1.reason ?? ''); }
  const v1 = await servedBy(s.app, '1.0', 'message');
  await setCurrent(s.app, 'wedge', '1.0');
  const e = await s.nth(2);
  assert.equal(e.outcome, 'rolled_back', `judged healthy on a probe answered before the settle time was over: ${e.reason ?? ''}`);
  assert.equal(e.code, 'UNHEALTHY');
  assert.match(e.reason ?? '', /last: HTTP 503/);
  const back = await servedBy(s.app, '1.0', 'message');
  assert.equal(back.pid, v1.pid, 'same process, reloaded in place twice');
});

test('health.liveness: an app that stops answering its probe after the verdict is restarted like a crashed one', async (t) => {
  const port = await freePort();
  const s = await setup(t, {
    port,
    // Healthy for 1.5 s after start, then 503 forever: a wedged app (alive, not serving).
    releases: { '1.0': 'unhealthy_after_ms=1500\n' }, start: '1.0',
    appExtra: {
      health: { url: `http://127.0.0.1:${port}/healthz`, settleMs: 300, deadlineMs: 1200, intervalMs: 100, liveness: { periodMs: 200, failureThreshold: 3 } },
      supervise: { backoffMs: 100, maxBackoffMs: 200, stableMs: 60_000, maxRetries: 10 },
    },
  });
  const first = await s.nth(1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const v1 = await ask(s.app);
  const line = await s.agent.waitForLog('the liveness restart', (l) => l['code'] === 'LIVENESS_FAILED', { timeoutMs: 20_000 });
  assert.equal(line.level, 'error');
  assert.equal(line['appPid'], v1.pid);
  assert.match(line.msg, /liveness probe failed 3 times in a row \(last: HTTP 503\); restarting the app/);
  const v2 = await servedByNewProcess(s.app, v1.pid);
  assert.equal(v2.release, 'app.1.0');
  await s.agent.waitForLog('the restart', (l) => l.msg === 'app restarted' && l['appPid'] === v2.pid);
  assert.equal((await readHistory(path.dirname(s.app.dir) + '/state', s.app.name)).length, 1, 'a liveness restart is not a deploy');
});

test('a start that fails at once quotes the app\'s own last words in the reason (Address already in use)', async (t) => {
  const port = await freePort();
  const squatter = net.createServer();
  await new Promise<void>((r) => squatter.listen(port, '127.0.0.1', r));
  defer(t, () => new Promise<void>((r) => squatter.close(() => r())));
  const s = await setup(t, { port, releases: { '1.0': '' }, start: '1.0', appExtra: { health: { settleMs: 100, deadlineMs: 1000 } } });
  const e = await s.nth(1);
  assert.equal(e.outcome, 'failed');
  assert.equal(e.code, 'APP_EXITED');
  assert.match(e.reason ?? '', new RegExp(`the app exited right after start \\(exit code 1\\); its last output: app: listen on 127\\.0\\.0\\.1:${port}: Address already in use`));
});
