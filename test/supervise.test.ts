/**
 * Crash supervision with real processes and real signals: kill -9 is
 * restarted, a crash loop backs off then goes fatal, and an agent restarted
 * in the middle adopts the app and keeps supervising it. A graceful re-exec
 * handoff is never taken for a crash.
 */
import assert from 'node:assert/strict';
import { readlink, rename, symlink } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { readHistory } from '../src/history.js';
import { readAppState } from '../src/state.js';
import { ask, fixture, nthEntry, servedBy, servedByNewProcess, setCurrentText } from './fixture.js';
import { alive, relinkCli, startAgent, waitFor } from './helpers.js';

test('kill -9 of the app: restarted, and status counts the restart', async (t) => {
  const f = await fixture(t);
  const v1 = await servedBy(f.app, '1.0');
  process.kill(v1.pid, 'SIGKILL');
  const v2 = await servedByNewProcess(f.app, v1.pid);
  assert.equal(v2.release, 'app.1.0');
  await f.agent.waitForLog('restart log line', (l) => l.msg === 'app restarted' && l.appPid === v2.pid);
  const status = await waitFor('status to show the restart', async () => {
    const s = JSON.parse((await relinkCli(['status', '--config', f.config, '--json'])).stdout) as { apps: Array<{ state: string; pid: number; restarts: number }> };
    return s.apps[0]?.restarts === 1 ? s.apps[0] : undefined;
  });
  assert.equal(status.state, 'running');
  assert.equal(status.pid, v2.pid);
  assert.equal((await readHistory(f.stateDir, 'web')).length, 1, 'a crash restart is not a deploy');
});

test('a crash loop backs off, then is marked fatal and left alone; a deploy starts it again', async (t) => {
  const f = await fixture(t, { supervise: { stableMs: 4_000, maxRetries: 2, backoffMs: 200, maxBackoffMs: 400 } });
  await servedBy(f.app, '1.0');
  // flaky passes verification (settle 500 ms) and then exits 1.5 s after every start.
  await setCurrentText(f.app, 'flaky');
  const e = await nthEntry(f, 2);
  assert.equal(e.outcome, 'deployed', e.reason ?? '');
  const backoff = await f.agent.waitForLog('a backoff', (l) => l.msg.startsWith('app exited unexpectedly after '), { timeoutMs: 20_000 });
  assert.equal(backoff.delayMs, 200);
  await f.agent.waitForLog('a second, longer backoff', (l) => l.msg.startsWith('app exited unexpectedly') && l.delayMs === 400, { timeoutMs: 20_000 });
  await f.agent.waitForLog('fatal', (l) => l.msg.startsWith('app keeps crashing; marked fatal') && l.msg.endsWith('or relink start web'), { timeoutMs: 20_000 });
  const state = await waitFor('fatal state on disk', async () => {
    const s = await readAppState(f.stateDir, 'web');
    return s?.state === 'fatal' ? s : undefined;
  });
  assert.equal(state.pid, null);
  const status = await relinkCli(['status', '--config', f.config]);
  assert.equal(status.code, 1, 'status exits 1 when an app is not running');
  assert.match(status.stdout, /web: fatal/);
  assert.equal(f.agent.lines.filter((l) => l.msg === 'app restarted').length, 2, 'maxRetries restarts, then no more');

  await setCurrentText(f.app, '2.0');
  const d = await nthEntry(f, 3);
  assert.equal(d.outcome, 'deployed', d.reason ?? '');
  assert.equal(d.action, 'start');
  await servedBy(f.app, '2.0');
});

test('agent restarted in the middle: the new agent adopts the app and keeps supervising it', async (t) => {
  const f = await fixture(t);
  const v1 = await servedBy(f.app, '1.0');
  assert.equal(await f.agent.stop(), 0);
  const next = startAgent(t, f.config);
  const adopted = await next.waitForLog('adoption', (l) => l.msg === 'adopted running app');
  assert.equal(adopted.appPid, v1.pid);
  await next.waitForLog('agent started', (l) => l.msg === 'agent started');
  // Not the new agent's child: only its /proc monitor can see this.
  process.kill(v1.pid, 'SIGKILL');
  const v2 = await servedByNewProcess(f.app, v1.pid);
  assert.equal(v2.release, 'app.1.0');
  assert.equal(await alive(v1.pid), false);
});

test('a graceful re-exec handoff (SIGHUP sent by hand) is followed, not restarted', async (t) => {
  const f = await fixture(t);
  const v1 = await servedBy(f.app, '1.0');
  process.kill(v1.pid, 'SIGHUP');
  const v2 = await servedByNewProcess(f.app, v1.pid);
  const handed = await f.agent.waitForLog('handoff noticed', (l) => l.msg === 'app handed over to a new process');
  assert.equal(handed.appPid, v2.pid);
  assert.equal(f.agent.lines.filter((l) => l.msg === 'app restarted').length, 0);
  // The next deploy reaches the successor.
  await setCurrentText(f.app, '2.0');
  const e = await nthEntry(f, 2);
  assert.equal(e.pidBefore, v2.pid);
  assert.equal(e.outcome, 'deployed', e.reason ?? '');
});

test('reconcile: links changed by hand are put back to what current.conf names, without signalling the app that runs it', async (t) => {
  const f = await fixture(t);
  await servedBy(f.app, '1.0');
  const link = path.join(f.app.dir, 'app.bin');
  await symlink(path.join(f.app.releasesDir, 'app.2.0'), `${link}.hand`);
  await rename(`${link}.hand`, link);
  const v1 = await ask(f.app);
  await f.agent.waitForLog('drift put back', (l) => l.msg.startsWith('links drifted from current.conf; put back'));
  assert.equal(await readlink(link), path.join(f.app.releasesDir, 'app.1.0'));
  // The app never saw the drift: it is not signalled (a reload nobody asked for).
  assert.equal((await ask(f.app)).pid, v1.pid);
  assert.equal((await readHistory(f.stateDir, 'web')).length, 1);
});
