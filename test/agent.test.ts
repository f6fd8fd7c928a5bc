/**
 * The agent end to end: the real CLI in a child process, the real C demo app
 * (re-exec or in-place reload), real links, real signals, real HTTP.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, readlink, rename, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { makeApp, setCurrent, writeConfig, type DemoApp } from '../src/demo/layout.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { ProcessFinder } from '../src/proc.js';
import { ask, servedBy } from './fixture.js';
import { alive, assertOneKeyOnce, reapAppsAfter, relinkCli, startAgent, tmpDir, waitFor, type AgentProc } from './helpers.js';

async function history(root: string): Promise<HistoryEntry[]> {
  return readHistory(path.join(root, 'state'));
}

async function nthEntry(root: string, n: number): Promise<HistoryEntry> {
  return waitFor(`history entry #${n}`, async () => (await history(root))[n - 1]);
}

interface Setup {
  root: string;
  app: DemoApp;
  config: string;
  agent: AgentProc;
}

async function setup(t: TestContext, opts: { mode?: 'reexec' | 'inplace'; start?: string } = {}): Promise<Setup> {
  const root = await tmpDir(t);
  const app = await makeApp({ root, mode: opts.mode ?? 'reexec', releases: ['1.0', '2.0', '3.0'] });
  reapAppsAfter(t, app.releasesDir);
  await setCurrent(app, opts.start ?? '1.0');
  const config = await writeConfig(root, [app], { reconcileMs: 60_000 }, opts.mode === 'inplace' ? { reload: { mode: 'inplace' } } : {});
  const agent = startAgent(t, config);
  await nthEntry(root, 1);
  return { root, app, config, agent };
}

test('starts the app from current.conf, then deploys and rolls back by editing it (re-exec app: a new PID each time)', async (t) => {
  const { root, app } = await setup(t);
  const first = await nthEntry(root, 1);
  assert.equal(first.outcome, 'deployed');
  assert.equal(first.action, 'start');
  const v1 = await servedBy(app, '1.0');
  assert.equal(first.pidAfter, v1.pid);
  assert.equal(await readlink(path.join(app.dir, 'app.bin')), path.join(app.releasesDir, 'app.1.0'));

  await setCurrent(app, '2.0');
  const second = await nthEntry(root, 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  assert.equal(second.action, 'signal');
  assert.equal(second.pidBefore, v1.pid);
  const v2 = await servedBy(app, '2.0');
  assert.notEqual(v2.pid, v1.pid, 're-exec app must have a new PID');
  assert.equal(second.pidAfter, v2.pid, 'the agent must have found the new process');
  assert.equal(await readlink(path.join(app.dir, 'app.cfg')), path.join(app.releasesDir, 'cfg.2.0'));

  // The second deploy in a row must reach the process that replaced the first.
  await setCurrent(app, '1.0');
  const third = await nthEntry(root, 3);
  assert.equal(third.outcome, 'deployed', third.reason ?? '');
  assert.equal(third.pidBefore, v2.pid);
  const back = await servedBy(app, '1.0');
  assert.equal(third.pidAfter, back.pid);
  assert.equal(back.generation, 2);
  assert.equal(await alive(v1.pid), false);
  assert.equal(await alive(v2.pid), false);
});

test('in-place reloader (nginx-style): same PID, new config', async (t) => {
  const { root, app } = await setup(t, { mode: 'inplace' });
  const v1 = await servedBy(app, '1.0', 'message');
  // A new config only: "inplace" keeps the binary (a new bin.file is refused, test/app.test.ts).
  await setCurrent(app, '2.0', '1.0');
  const e = await nthEntry(root, 2);
  assert.equal(e.outcome, 'deployed', e.reason ?? '');
  assert.equal(e.pidBefore, v1.pid);
  assert.equal(e.pidAfter, v1.pid);
  const v2 = await servedBy(app, '2.0', 'message');
  assert.equal(v2.pid, v1.pid);
});

test('a bad current.conf is refused with file, key, rule and what was found; nothing changes; the next good edit applies', async (t) => {
  const { root, app, agent } = await setup(t);
  const v1 = await servedBy(app, '1.0');
  const linksBefore = [await readlink(path.join(app.dir, 'app.bin')), await readlink(path.join(app.dir, 'app.cfg'))];

  await writeFile(app.currentFile, '{"bin.file": "app.2.0", "cfg.flie": "cfg.2.0"}\n');
  const refused = await nthEntry(root, 2);
  assert.equal(refused.outcome, 'refused');
  assert.equal(refused.code, 'CURRENT_UNKNOWN_KEY');
  assert.match(refused.reason ?? '', new RegExp(`${app.currentFile.replaceAll('.', '\\.')}: "cfg\\.flie": is not a known key`));
  const line = await agent.waitForLog('refusal log line', (l) => l.outcome === 'refused');
  assert.equal(line.level, 'warn');
  assert.equal(line.file, app.currentFile);
  assert.equal(line.code, 'CURRENT_UNKNOWN_KEY');

  // A binary that is not executable (a half-finished upload, say).
  await chmod(path.join(app.releasesDir, 'app.3.0'), 0o644);
  await setCurrent(app, '3.0');
  const notExec = await nthEntry(root, 3);
  assert.equal(notExec.outcome, 'refused');
  assert.equal(notExec.code, 'RELEASE_NOT_EXECUTABLE');
  assert.match(notExec.reason ?? '', /"bin\.file": must be executable \(found: .*app\.3\.0 has mode 0644\)/);

  // A path out of the releases folder.
  await writeFile(app.currentFile, JSON.stringify({ 'bin.file': '/bin/sh', 'cfg.file': 'cfg.2.0' }));
  const outside = await nthEntry(root, 4);
  assert.equal(outside.code, 'RELEASE_OUTSIDE');

  // Nothing moved: same links, same process, still release 1.0, agent alive.
  assert.deepEqual([await readlink(path.join(app.dir, 'app.bin')), await readlink(path.join(app.dir, 'app.cfg'))], linksBefore);
  const still = await ask(app);
  assert.equal(still.pid, v1.pid);
  assert.equal(still.release, 'app.1.0');
  assert.equal(agent.child.exitCode, null);

  await setCurrent(app, '2.0');
  const ok = await nthEntry(root, 5);
  assert.equal(ok.outcome, 'deployed', ok.reason ?? '');
  await servedBy(app, '2.0');
  await agent.waitForLog('the deploy log line', (l) => l.outcome === 'deployed' && l['to'] !== undefined && (l['to'] as { bin: string }).bin.endsWith('app.2.0'));
  assertOneKeyOnce(agent);
});

test('content equal to what is applied changes nothing (no signal, no journal entry)', async (t) => {
  const { root, app } = await setup(t);
  const v1 = await servedBy(app, '1.0');
  // Same release, different bytes (whitespace, key order, absolute paths).
  await writeFile(app.currentFile, JSON.stringify({ 'cfg.file': path.join(app.releasesDir, 'cfg.1.0'), 'bin.file': 'app.1.0' }, null, 4));
  // A marker edit after it: once the marker is journaled, the earlier edit was seen too.
  await writeFile(app.currentFile, '{}');
  const marker = await nthEntry(root, 2);
  assert.equal(marker.outcome, 'refused', 'the same-release edit must not have produced an entry');
  assert.equal((await ask(app)).pid, v1.pid);
});

test('a burst of edits ends with the final content applied, one apply at a time', async (t) => {
  const { root, app, agent } = await setup(t);
  await servedBy(app, '1.0');
  for (let i = 0; i < 30; i++) {
    const r = ['2.0', '3.0', '1.0'][i % 3] as string;
    if (i % 2 === 0) await setCurrent(app, r);
    else await writeFile(app.currentFile, JSON.stringify({ 'bin.file': `app.${r}`, 'cfg.file': `cfg.${r}` }));
  }
  await setCurrent(app, '3.0');
  await servedBy(app, '3.0');
  await waitFor('links on 3.0', async () => (await readlink(path.join(app.dir, 'app.bin'))).endsWith('app.3.0'));
  const entries = await waitFor('the final content journaled', async () => {
    const all = await history(root);
    return all.at(-1)?.to.bin?.endsWith('app.3.0') ? all : undefined;
  });
  // No pass read a half-written file, and the last word is the last edit's.
  assert.ok(entries.every((e) => e.outcome === 'deployed'), JSON.stringify(entries.filter((e) => e.outcome !== 'deployed')));
  assert.equal(entries.at(-1)?.to.cfg, path.join(app.releasesDir, 'cfg.3.0'));
  for (let i = 1; i < entries.length; i++) {
    const prev = entries[i - 1]!;
    const cur = entries[i]!;
    // One apply at a time: each began after the previous one ended, from where it left the app.
    assert.ok(Date.parse(cur.time) - cur.durationMs >= Date.parse(prev.time), `apply ${i} began before apply ${i - 1} ended`);
    assert.equal(cur.pidBefore, prev.pidAfter);
  }
  assert.equal(agent.child.exitCode, null);
});

test('the app survives an agent restart and the new agent adopts it instead of starting a second copy', async (t) => {
  const { root, app, config, agent } = await setup(t);
  const v1 = await servedBy(app, '1.0');

  assert.equal(await agent.stop('SIGTERM'), 0);
  assert.ok(agent.lines.some((l) => l.msg === 'agent stopped; apps left running'));
  assert.equal((await ask(app)).pid, v1.pid, 'the app must keep serving while no agent runs');

  const next = startAgent(t, config);
  const adopted = await next.waitForLog('adoption', (l) => l.msg === 'adopted running app');
  assert.equal(adopted.appPid, v1.pid);
  await next.waitForLog('agent started', (l) => l.msg === 'agent started');
  const found = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir }).discover();
  assert.equal(found.all.length, 1, 'exactly one app process');
  assert.equal((await history(root)).length, 1, 'adoption is not a deploy');

  // And it drives the adopted app.
  await setCurrent(app, '2.0');
  const e = await nthEntry(root, 2);
  assert.equal(e.outcome, 'deployed', e.reason ?? '');
  assert.equal(e.pidBefore, v1.pid);
  await servedBy(app, '2.0');
});

test('a second agent on the same stateDir refuses to start', async (t) => {
  const { config, agent } = await setup(t);
  const second = await relinkCli(['agent', '--config', config]);
  assert.equal(second.code, 1);
  assert.match(second.stderr, /another relink agent \(pid \d+/);
  assert.equal(agent.child.exitCode, null, 'the first agent keeps running');
});

test('zero refused connections across deploys under a concurrent request loop', async (t) => {
  const { root, app } = await setup(t);
  await servedBy(app, '1.0');
  let running = true;
  const tally = { ok: 0, errors: [] as string[], status: [] as number[] };
  const worker = async () => {
    while (running) {
      await new Promise<void>((resolve) => {
        const req = http.get(app.url, { agent: false, headers: { connection: 'close' } }, (res) => {
          res.resume();
          res.on('end', () => {
            if (res.statusCode === 200) tally.ok += 1;
            else tally.status.push(res.statusCode ?? 0);
            resolve();
          });
        });
        req.on('error', (err) => { tally.errors.push(err.message); resolve(); });
        req.setTimeout(5000, () => req.destroy(new Error('timeout')));
      });
    }
  };
  const workers = Array.from({ length: 4 }, worker);
  try {
    const order = ['2.0', '3.0', '1.0', '2.0', '3.0', '1.0'];
    for (const [i, r] of order.entries()) {
      await setCurrent(app, r);
      const e = await nthEntry(root, i + 2);
      assert.equal(e.outcome, 'deployed', e.reason ?? '');
      await servedBy(app, r);
    }
  } finally {
    running = false;
    await Promise.all(workers);
  }
  assert.deepEqual(tally.errors, [], 'no request may fail');
  assert.deepEqual(tally.status, []);
  assert.ok(tally.ok > 100, `the load loop ran (${tally.ok} requests)`);
});

test('CLI: status, validate and history against a running agent; status exits 1 once it stops', async (t) => {
  const { root, app, config, agent } = await setup(t);
  const v1 = await servedBy(app, '1.0');

  const status = await relinkCli(['status', '--config', config, '--json']);
  assert.equal(status.code, 0, status.stderr);
  const s = JSON.parse(status.stdout) as { agent: { pid: number } | null; apps: Array<{ name: string; state: string; pid: number; bin: string; cfg: string; lastDeploy: HistoryEntry }> };
  assert.notEqual(s.agent, null);
  assert.equal(s.apps[0]?.name, 'web');
  assert.equal(s.apps[0]?.state, 'running');
  assert.equal(s.apps[0]?.pid, v1.pid);
  assert.equal(s.apps[0]?.bin, path.join(app.releasesDir, 'app.1.0'));
  assert.equal(s.apps[0]?.cfg, path.join(app.releasesDir, 'cfg.1.0'));
  assert.equal(s.apps[0]?.lastDeploy.outcome, 'deployed');
  const human = await relinkCli(['status', '--config', config]);
  assert.match(human.stdout, new RegExp(`web: running, pid ${v1.pid}`));

  const good = path.join(root, 'good.conf');
  await writeFile(good, JSON.stringify({ 'bin.file': path.join(app.releasesDir, 'app.2.0'), 'cfg.file': path.join(app.releasesDir, 'cfg.2.0') }));
  const ok = await relinkCli(['validate', '--config', config, good]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /OK for app web/);
  const bad = path.join(root, 'bad.conf');
  await writeFile(bad, JSON.stringify({ 'bin.file': path.join(app.releasesDir, 'app.9.9'), 'cfg.file': path.join(app.releasesDir, 'cfg.2.0') }));
  const no = await relinkCli(['validate', '--config', config, bad]);
  assert.equal(no.code, 1);
  assert.match(no.stderr, /bad\.conf: "bin\.file": must name an existing file \(found: .*app\.9\.9: no such file\) \[RELEASE_MISSING\]/);
  const own = await relinkCli(['validate', '--config', config]);
  assert.equal(own.code, 0);
  assert.match(own.stdout, /already live/);
  // validate applies nothing
  assert.equal((await ask(app)).release, 'app.1.0');

  const hist = await relinkCli(['history', '--config', config, '--json']);
  assert.equal(hist.code, 0);
  const h = JSON.parse(hist.stdout) as { history: HistoryEntry[] };
  assert.equal(h.history.length, 1);
  assert.equal(h.history[0]?.outcome, 'deployed');

  const usage = await relinkCli(['status', '--config', config, '--bogus']);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /--bogus/);
  const help = await relinkCli(['history', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Usage: relink history/);

  // The agent stopped, the app serving on: status says so and exits 1 (nothing manages it).
  assert.equal(await agent.stop(), 0);
  const unmanaged = await relinkCli(['status', '--config', config]);
  assert.equal(unmanaged.code, 1, unmanaged.stdout);
  assert.match(unmanaged.stdout, /agent: not running/);
  assert.match(unmanaged.stdout, new RegExp(`web: running, pid ${v1.pid}`));
  // The linked release deleted under the running app: said, since a restart could not start it.
  await rm(path.join(app.releasesDir, 'cfg.1.0'));
  const gone = await relinkCli(['status', '--config', config]);
  assert.match(gone.stdout, new RegExp(`warning +${path.join(app.dir, 'app.cfg').replaceAll('.', '\\.')} links to ${path.join(app.releasesDir, 'cfg.1.0').replaceAll('.', '\\.')}, which is gone: a restart could not start the app`));
});

test('current.conf\'s folder deleted and recreated (rm -rf deploy; mkdir deploy): the loss and the recovery are logged and the next deploy is seen by the watcher', async (t) => {
  const root = await tmpDir(t);
  const app = await makeApp({ root, releases: ['1.0', '2.0'] });
  reapAppsAfter(t, app.releasesDir);
  const deployDir = path.join(app.dir, 'deploy');
  const current = path.join(deployDir, 'current.conf');
  await mkdir(deployDir);
  const write = (r: string) => writeFile(current, JSON.stringify({ 'bin.file': path.join(app.releasesDir, `app.${r}`), 'cfg.file': path.join(app.releasesDir, `cfg.${r}`) }));
  await write('1.0');
  // The re-check once a minute: within the waits below only the watcher can see an edit.
  const config = await writeConfig(root, [app], { reconcileMs: 60_000 }, { currentFile: 'deploy/current.conf' });
  const agent = startAgent(t, config);
  await servedBy(app, '1.0');
  await rm(deployDir, { recursive: true, force: true });
  await mkdir(deployDir);
  await agent.waitForLog('the loss', (l) => l.level === 'warn' && l['dir'] === deployDir && l.msg.includes('missing or was replaced'));
  await agent.waitForLog('the recovery', (l) => l['dir'] === deployDir && l.msg.startsWith('watching the folder of current.conf again'));
  await write('2.0');
  await servedBy(app, '2.0');
  const e = (await history(root)).at(-1);
  assert.equal(e?.outcome, 'deployed');
  assert.notEqual(e?.trigger, 'recheck', 'seen by the watcher, not by the once-a-minute re-check');
});

// Found by a trial: a current.conf refused for its folder (mode 0777),
// the folder fixed, then moved away and back (or replaced by a cp -a copy):
// "current.conf is read again" was logged, but the same content and mtime
// were taken for judged already, and nothing was applied.
test('current.conf refused for its folder, then the folder moved away and back: current.conf is judged again and deployed', async (t) => {
  if (process.getuid?.() !== 0) {
    if (process.env['CI']) assert.fail('the trust checks refuse a world-writable folder for root: CI runs as root');
    t.skip('needs root');
    return;
  }
  const root = await tmpDir(t);
  const app = await makeApp({ root, releases: ['1.0', '2.0'] });
  reapAppsAfter(t, app.releasesDir);
  const deployDir = path.join(app.dir, 'deploy');
  const current = path.join(deployDir, 'current.conf');
  await mkdir(deployDir, { mode: 0o755 });
  const write = (r: string) => writeFile(current, JSON.stringify({ 'bin.file': path.join(app.releasesDir, `app.${r}`), 'cfg.file': path.join(app.releasesDir, `cfg.${r}`) }));
  await write('1.0');
  const config = await writeConfig(root, [app], { reconcileMs: 60_000 }, { currentFile: 'deploy/current.conf' });
  const agent = startAgent(t, config);
  await servedBy(app, '1.0');
  await chmod(deployDir, 0o777);
  await write('2.0');
  const refused = await waitFor('the refusal', async () => (await history(root)).find((e) => e.outcome === 'refused'));
  assert.equal(refused.code, 'UNTRUSTED_PATH', refused.reason ?? '');
  await chmod(deployDir, 0o755);
  await rename(deployDir, `${deployDir}.x`);
  await agent.waitForLog('the folder gone', (l) => l['dir'] === deployDir && String(l.msg).includes('missing or was replaced'));
  await rename(`${deployDir}.x`, deployDir);
  await agent.waitForLog('the folder back', (l) => l['dir'] === deployDir && String(l.msg).startsWith('watching the folder of current.conf again'));
  let h: HistoryEntry[] = [];
  await waitFor('the deploy after the refusal', async () => (h = await history(root)).length === 3 || undefined, { timeoutMs: 15_000 })
    .catch((err: Error) => { throw new Error(`${err.message}: ${JSON.stringify(h.map((x) => [x.time, x.trigger, x.outcome, x.code]))}`); });
  assert.deepEqual(h.map((x) => [x.outcome, x.trigger]), [['deployed', 'startup'], ['refused', 'watch:change'], ['deployed', 'watch:folder']]);
  await servedBy(app, '2.0');
  await agent.stop();
});
