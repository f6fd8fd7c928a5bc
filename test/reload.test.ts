/**
 * Config reload (issue 12, item 2) with the real agent and real apps: SIGHUP
 * and `relink reload` re-read the config; an invalid file changes nothing and
 * says why; apps added start, apps removed are left running and let go, a
 * changed app gets its new settings on its next generation.
 */
import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { readHistory } from '../src/history.js';
import { alive, assertOneKeyOnce, get, reapMarkedAfter, relinkCli, startAgent, tmpDir, waitFor } from './helpers.js';
import { makeApp, nth, PLAIN, servedBy, setCurrent, type App } from './plainapps.js';

function appKeys(app: App, color: string): Record<string, unknown> {
  return {
    name: app.name,
    dir: app.dir,
    ...(process.getuid?.() === 0 ? { allowRoot: true } : {}),
    env: { APP_COLOR: color },
    health: { url: `http://127.0.0.1:${app.port}/healthz`, settleMs: 200, deadlineMs: 4_000, intervalMs: 50 },
    supervise: { checkMs: 100, backoffMs: 100, maxBackoffMs: 400, stableMs: 3_000, maxRetries: 3 },
    stop: { signal: 'SIGTERM', timeoutMs: 5_000 },
    reload: { strategy: 'restart', timeoutMs: 5_000 },
  };
}

async function writeConfig(file: string, root: string, apps: Array<Record<string, unknown>>): Promise<void> {
  await writeFile(file, JSON.stringify({ stateDir: path.join(root, 'state'), reconcileMs: 1_000, apps }, null, 2));
}

async function statusOf(config: string): Promise<Array<{ name: string; pid: number | null; restartToApply: string[] }>> {
  return (JSON.parse((await relinkCli(['status', '--config', config, '--json'])).stdout) as { apps: Array<{ name: string; pid: number | null; restartToApply: string[] }> }).apps;
}

async function colorOf(app: App): Promise<string> {
  return (JSON.parse((await get(`http://127.0.0.1:${app.port}/`)).body) as { color: string }).color;
}

test('SIGHUP and relink reload: an invalid config changes nothing and the agent runs on; a valid one starts an added app, lets a removed one go running, and gives a changed one its env on its next generation', async (t) => {
  const root = await tmpDir(t);
  const a = await makeApp(root, 'ra', PLAIN, { '1': '' });
  const b = await makeApp(root, 'rb', PLAIN, { '1': '' });
  reapMarkedAfter(t, a.dir);
  reapMarkedAfter(t, b.dir);
  await setCurrent(a, '1');
  await setCurrent(b, '1');
  const config = path.join(root, 'config.json');
  await writeConfig(config, root, [appKeys(a, 'blue')]);
  const agent = startAgent(t, config);
  assert.equal((await nth(root, a.name, 1)).outcome, 'deployed');
  const first = await servedBy(a.port, 'app.1');
  assert.equal(await colorOf(a), 'blue');

  // An invalid file: the CLI refuses it without asking the agent...
  await writeFile(config, '{ "apps": [ ');
  const refused = await relinkCli(['reload', '--config', config, '--wait']);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /config\.json/);
  // Status cannot read the apps from it, and says the agent is not affected.
  const status = await relinkCli(['status', '--config', config]);
  assert.equal(status.code, 1);
  assert.match(status.stderr, /config\.json: must be valid JSON[^]*A running agent is not affected: it keeps the config it last loaded[^]*-c with a copy of the last good file/);
  // ...and a SIGHUP with it changes nothing: before, SIGHUP ended the agent.
  agent.child.kill('SIGHUP');
  await agent.waitForLog('the refusal', (l) => typeof l.msg === 'string' && l.msg.startsWith('config not reloaded, the running config stays'));
  assert.ok(await alive(agent.child.pid!), 'the agent runs on after SIGHUP with an invalid config');
  assert.equal((await servedBy(a.port, 'app.1')).pid, first.pid);

  // Valid: b added, a changed (env). Until reloaded, status says the file is not what runs.
  await writeConfig(config, root, [appKeys(a, 'green'), appKeys(b, 'red')]);
  const unloaded = await relinkCli(['status', '--config', config, '--app', a.name]);
  assert.match(unloaded.stdout, /config: .*config\.json changed since the agent loaded it: relink reload applies it/);
  assert.match(unloaded.stdout, /restart to apply +env\.APP_COLOR \(.*relink reload, then relink restart ra\)/);
  const ok = await relinkCli(['reload', '--config', config, '--wait']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /added: rb; .*changed \(next generation\): ra/);
  assert.equal((await nth(root, b.name, 1)).outcome, 'deployed');
  assert.equal(await colorOf(b), 'red');
  assert.equal((await servedBy(a.port, 'app.1')).pid, first.pid, 'a changed app is not restarted by a reload');
  const st = await statusOf(config);
  assert.deepEqual(st.find((x) => x.name === a.name)?.restartToApply, ['env.APP_COLOR']);
  assert.doesNotMatch((await relinkCli(['status', '--config', config])).stdout, /changed since the agent loaded it/, 'reloaded: the file is what runs');
  const restarted = await relinkCli(['restart', a.name, '--config', config, '--wait']);
  assert.equal(restarted.code, 0, restarted.stderr);
  assert.equal(await colorOf(a), 'green');

  // b removed: left running, no longer managed (a kill is not restarted).
  await writeConfig(config, root, [appKeys(a, 'green')]);
  const removed = await relinkCli(['reload', '--config', config, '--wait']);
  assert.equal(removed.code, 0, removed.stderr);
  assert.match(removed.stdout, /no longer managed \(left running\): rb/);
  const bPid = (await servedBy(b.port, 'app.1')).pid;
  assert.deepEqual((await statusOf(config)).map((x) => x.name), [a.name]);
  process.kill(bPid, 'SIGKILL');
  await waitFor('b gone', async () => ((await alive(bPid)) ? undefined : true));
  // a is still managed: killed, it is restarted (and b, were it managed, would be too).
  const aPid = (await servedBy(a.port, 'app.1')).pid;
  process.kill(aPid, 'SIGKILL');
  await waitFor('a restarted by supervision', async () => {
    const r = await get(`http://127.0.0.1:${a.port}/`).catch(() => undefined);
    return r !== undefined && (JSON.parse(r.body) as { pid: number }).pid !== aPid ? true : undefined;
  });
  assert.equal(await get(`http://127.0.0.1:${b.port}/`).then(() => 'answered', () => 'refused'), 'refused', 'a removed app is not supervised');
  assert.equal(await agent.stop(), 0);
  // Every line of all that (the removal's said "app" twice) is JSON with each key once.
  assertOneKeyOnce(agent);
});

test('an app with held sockets removed by a reload: it serves on its own copy, and once it exits connections are refused, not left waiting in a socket nobody accepts from', async (t) => {
  const root = await tmpDir(t);
  const a = await makeApp(root, 'ra', PLAIN, { '1': '' });
  const s = await makeApp(root, 'rs', PLAIN, { '1': '' });
  reapMarkedAfter(t, a.dir);
  reapMarkedAfter(t, s.dir);
  await setCurrent(a, '1');
  await setCurrent(s, '1');
  const held = { ...appKeys(s, 'blue'), sockets: [`127.0.0.1:${s.port}`], reload: { strategy: 'socket', timeoutMs: 5_000 } };
  const config = path.join(root, 'config.json');
  await writeConfig(config, root, [appKeys(a, 'blue'), held]);
  const agent = startAgent(t, config);
  assert.equal((await nth(root, s.name, 1)).outcome, 'deployed');
  const pid = (await servedBy(s.port, 'app.1')).pid;

  await writeConfig(config, root, [appKeys(a, 'blue')]);
  const removed = await relinkCli(['reload', '--config', config, '--wait']);
  assert.equal(removed.code, 0, removed.stderr);
  await agent.waitForLog('the socket let go', (l) => l.app === s.name && typeof l.msg === 'string' && l.msg.includes('the agent stopped holding it'));
  assert.equal((await servedBy(s.port, 'app.1')).pid, pid, 'left running, on its own copy of the socket');
  process.kill(pid, 'SIGKILL');
  // Gone or a zombie: its files closed. (alive() says dead as soon as /proc
  // no longer shows its executable, which an exiting process loses before
  // its sockets: a connection made then was still accepted.)
  await waitFor('the removed app gone, its sockets closed', async () => {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
    return stat === undefined || stat.slice(stat.lastIndexOf(')')).startsWith(') Z') ? true : undefined;
  });
  // Held on, every connection would be accepted by the kernel and wait
  // forever. (A connection made in the first moments after the exit was
  // seen accepted now and then, with nothing listening a moment later: not
  // explained yet; the property is that refusals come, and stay.)
  const attempt = (): Promise<string> => new Promise<string>((resolve) => {
    const c = net.connect({ port: s.port, host: '127.0.0.1' });
    c.setTimeout(3_000, () => { c.destroy(); resolve('waiting'); });
    c.once('connect', () => { c.destroy(); resolve('accepted'); });
    c.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
  await waitFor('a connection to the removed app\'s address refused', async () => ((await attempt()) === 'ECONNREFUSED' ? true : undefined), { timeoutMs: 15_000 });
  for (let i = 0; i < 5; i++) assert.equal(await attempt(), 'ECONNREFUSED', 'and refused from then on');
  assert.equal(await agent.stop(), 0);
});

test('a reload while a deploy is in flight lets it finish: its beforeSwitch runs once, its verdict is journaled once, and the new orchestrator does not deploy it again', async (t) => {
  const root = await tmpDir(t);
  const a = await makeApp(root, 'ra', PLAIN, { '1': '', '2': '' });
  reapMarkedAfter(t, a.dir);
  await setCurrent(a, '1');
  const gate = path.join(root, 'gate');
  // The hook says it started, then holds the deploy until the test lets it go.
  const hooks = { beforeSwitch: ['/bin/sh', '-c', `echo ran >> ${gate}.ran; while [ ! -e ${gate}.go ]; do sleep 0.05; done`], timeoutMs: 30_000 };
  const config = path.join(root, 'config.json');
  await writeConfig(config, root, [{ ...appKeys(a, 'blue'), hooks }]);
  await writeFile(`${gate}.go`, '');
  const agent = startAgent(t, config);
  assert.equal((await nth(root, a.name, 1)).outcome, 'deployed');
  await waitFor('the first deploy\'s hook', async () => (await readFile(`${gate}.ran`, 'utf8').catch(() => '')).split('\n').length === 2 || undefined);
  await rm(`${gate}.go`);

  await setCurrent(a, '2');
  await waitFor('the second deploy\'s hook to start', async () => (await readFile(`${gate}.ran`, 'utf8')).split('\n').length === 3 || undefined);
  await writeConfig(config, root, [{ ...appKeys(a, 'green'), hooks }]);
  agent.child.kill('SIGHUP');
  // (Before, the reload cut the deploy short at once and ran it again from the start.)
  await agent.waitForLog('the reload to wait for the pass, or be done', (l) => typeof l.msg === 'string' && (l.msg.startsWith('a pass is in flight') || l.msg.startsWith('config reloaded')));
  await writeFile(`${gate}.go`, '');
  await agent.waitForLog('the reload done', (l) => typeof l.msg === 'string' && l.msg.startsWith('config reloaded'));
  assert.equal((await nth(root, a.name, 2)).outcome, 'deployed');
  await servedBy(a.port, 'app.2');
  // Give a wrong second deploy every chance to show: the new orchestrator's first pass has run.
  await waitFor('the new orchestrator idle on release 2', async () => {
    const st = (await statusOf(config)).find((x) => x.name === a.name);
    return st?.restartToApply.includes('env.APP_COLOR') === true || undefined;
  });
  assert.equal((await readFile(`${gate}.ran`, 'utf8')).trim().split('\n').length, 2, 'beforeSwitch ran once per deploy');
  assert.equal((await readHistory(path.join(root, 'state'), a.name)).length, 2, 'one verdict per deploy');
  assert.equal(agent.lines.find((l) => typeof l.msg === 'string' && l.msg.includes('the agent is stopping')), undefined);
  assert.equal(await agent.stop(), 0);
});
