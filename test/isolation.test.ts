/**
 * One app's problem stays that app's problem (issue 9, items 6 and 7): a
 * missing folder, an unknown user or another agent holding the app puts
 * that app in state "error" with the reason while the agent goes on
 * managing the others, and an app whose folder appears later is picked up
 * without an agent restart. One app folder is managed by one agent. The
 * real agent, real folders, real processes.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { makeApp, setCurrent, writeConfig, type DemoApp } from '../src/demo/layout.js';
import { readHistory } from '../src/history.js';
import { readAppState } from '../src/state.js';
import { ask, servedBy } from './fixture.js';
import { promisify } from 'node:util';
import { openUp, rootOnly, testUserNamed } from './accounts.js';
import { defer, reapAppsAfter, relinkCli, startAgent, tmpDir, waitFor } from './helpers.js';

const run = promisify(execFile);

test('a missing app folder and an unknown user put those apps in state "error"; the healthy app is managed; a folder that appears later is picked up', async (t) => {
  const root = await tmpDir(t, 'relink-isolation-');
  const web = await makeApp({ root, name: 'web', releases: ['1.0', '2.0'] });
  const ghost = await makeApp({ root, name: 'ghost', releases: ['1.0'] });
  // "late" is configured but its folder does not exist yet.
  const lateRoot = path.join(root, 'later');
  const late: DemoApp = { name: 'late', dir: path.join(lateRoot, 'late'), releasesDir: path.join(lateRoot, 'late', 'release'), currentFile: path.join(lateRoot, 'late', 'release', 'current.conf'), port: 0, url: '' };
  for (const a of [web, ghost, late]) reapAppsAfter(t, a.releasesDir);
  await setCurrent(web, '1.0');
  await setCurrent(ghost, '1.0');
  const configFile = await writeConfig(root, [web, ghost, late], { reconcileMs: 300 });
  // writeConfig gives every app the same extras: name ghost's unknown user by hand.
  const cfg = JSON.parse(await readFile(configFile, 'utf8')) as { apps: Array<Record<string, unknown>> };
  cfg.apps[1]!['user'] = 'relink-no-such-user';
  await writeFile(configFile, JSON.stringify(cfg));
  const stateDir = path.join(root, 'state');
  const agent = startAgent(t, configFile);

  await servedBy(web, '1.0');
  const ghostState = await waitFor('ghost in state error', async () => {
    const s = await readAppState(stateDir, 'ghost');
    return s?.state === 'error' ? s : undefined;
  });
  assert.equal(ghostState.problem?.code, 'USER_UNKNOWN');
  assert.match(ghostState.problem?.message ?? '', /"user": no such user "relink-no-such-user"/);
  const lateState = await waitFor('late in state error', async () => {
    const s = await readAppState(stateDir, 'late');
    return s?.state === 'error' ? s : undefined;
  });
  assert.equal(lateState.problem?.code, 'APP_UNAVAILABLE');
  assert.match(lateState.problem?.message ?? '', new RegExp(`${late.dir}: the app's folder must exist`));

  // relink status shows each app, those two with the reason; no stack trace.
  const status = await waitFor('status with web running', async () => {
    const r = await relinkCli(['status', '--config', configFile]);
    return /^web: running/m.test(r.stdout) ? r : undefined;
  });
  assert.equal(status.code, 1);
  assert.equal(status.stderr, '');
  assert.match(status.stdout, /^web: running/m);
  assert.match(status.stdout, /^ghost: error/m);
  assert.match(status.stdout, /problem\s+"user": no such user "relink-no-such-user".*\[USER_UNKNOWN\]/);
  assert.match(status.stdout, /^late: error/m);
  assert.match(status.stdout, /problem\s+.*late: the app's folder must exist \(found: no such folder\).*\[APP_UNAVAILABLE\]/);
  const json = JSON.parse((await relinkCli(['status', '--config', configFile, '--json'])).stdout) as { apps: Array<{ name: string; state: string; problem: { code: string } | null }> };
  assert.deepEqual(json.apps.map((a) => [a.name, a.state]), [['web', 'running'], ['ghost', 'error'], ['late', 'error']]);

  // The healthy app deploys as usual meanwhile; the agent is alive.
  await setCurrent(web, '2.0');
  await servedBy(web, '2.0');
  assert.equal(agent.child.exitCode, null);
  // Said once each, not on every re-check.
  await waitFor('a few re-checks', async () => (await readAppState(stateDir, 'late'))?.updatedAt !== lateState.updatedAt || agent.lines.length > 0);
  const said = agent.lines.filter((l) => String(l.msg).startsWith('cannot manage the app'));
  assert.deepEqual(said.map((l) => l['app']).sort(), ['ghost', 'late']);
  assert.equal(agent.lines.filter((l) => l.level === 'fatal' || String(l.msg).includes('stack')).length, 0);

  // The folder appears (a first install): picked up without restarting the agent.
  const made = await makeApp({ root: lateRoot, name: 'late', releases: ['1.0'] });
  await setCurrent(made, '1.0');
  await servedBy(made, '1.0');
  const entry = await waitFor('late deployed', async () => (await readHistory(stateDir, 'late'))[0]);
  assert.equal(entry.outcome, 'deployed', entry.reason ?? '');
  assert.equal((await readAppState(stateDir, 'late'))?.problem ?? null, null);
  await agent.waitForLog('late managed again', (l) => l['app'] === 'late' && l.msg === 'the app can be managed again');
  assert.equal((await ask(web)).release, 'app.2.0');
  await rm(lateRoot, { recursive: true, force: true });
});

test('a second agent with another state folder refuses the app the first one manages, naming it; the lock dies with its agent', async (t) => {
  const root = await tmpDir(t, 'relink-isolation-');
  const web = await makeApp({ root, name: 'web', releases: ['1.0', '2.0'] });
  reapAppsAfter(t, web.releasesDir);
  await setCurrent(web, '1.0');
  const first = await writeConfig(root, [web], { reconcileMs: 300 });
  const secondRoot = await tmpDir(t, 'relink-isolation-');
  const second = await writeConfig(secondRoot, [web], { reconcileMs: 300 });
  const a = startAgent(t, first);
  const v1 = await servedBy(web, '1.0');
  const b = startAgent(t, second);
  const refused = await waitFor('the second agent to refuse the app', async () => {
    const s = await readAppState(path.join(secondRoot, 'state'), 'web');
    return s?.state === 'error' ? s : undefined;
  });
  assert.equal(refused.problem?.code, 'APP_LOCKED');
  assert.match(refused.problem?.message ?? '', new RegExp(`managed by another relink agent \\(pid ${a.child.pid}, config ${first.replaceAll('.', '\\.')}`));
  // A deploy is applied once, by the first agent only.
  await setCurrent(web, '2.0');
  await servedBy(web, '2.0');
  await waitFor('the deploy journaled by the first agent', async () => (await readHistory(path.join(root, 'state'), 'web')).length === 2);
  assert.equal((await readHistory(path.join(secondRoot, 'state'), 'web')).length, 0, 'the second agent applied nothing');
  assert.notEqual((await ask(web)).pid, v1.pid);

  // The first agent is killed (no clean release of the lock): the second takes the app over.
  a.child.kill('SIGKILL');
  await a.stop();
  await b.waitForLog('the second agent managing the app', (l) => l['app'] === 'web' && l.msg === 'the app can be managed again', { timeoutMs: 20_000 });
  const adopted = await b.waitForLog('adoption', (l) => l.msg === 'adopted running app');
  assert.equal(adopted['appPid'], (await ask(web)).pid, 'adopted, not started twice');
});

test('a writer loop of 300 bad 46 KB current.conf files: the journal and the log grow by a few lines, the app serves on', async (t) => {
  const root = await tmpDir(t, 'relink-isolation-');
  const web = await makeApp({ root, name: 'web', releases: ['1.0', '2.0'] });
  reapAppsAfter(t, web.releasesDir);
  await setCurrent(web, '1.0');
  const config = await writeConfig(root, [web], { reconcileMs: 60_000 });
  const stateDir = path.join(root, 'state');
  const agent = startAgent(t, config);
  const v1 = await servedBy(web, '1.0');
  // 2,000 unknown keys each: the old agent journaled every one of them, every time.
  const keys = Array.from({ length: 2000 }, (_, i) => `"unknown.key.${String(i).padStart(4, '0')}": 1`).join(', ');
  // Each write different (so each is read again), each refused for the same problems.
  const bad = (i: number) => `{"bin.file": "app.2.0", "cfg.file": "cfg.2.0", ${keys}}${' '.repeat(i)}\n`;
  assert.ok(bad(0).length > 40_000);
  for (let i = 0; i < 300; i++) await writeFile(web.currentFile, bad(i));
  await waitFor('the last write judged', async () => (await readAppState(stateDir, 'web'))?.lastDeploy?.currentHash === createHash('sha256').update(bad(299)).digest('hex'), { timeoutMs: 60_000 });
  const entries = await readHistory(stateDir, 'web');
  assert.ok(entries.length <= 4, `${entries.length} journal entries for 300 identical refusals`);
  const judged = agent.raw.length;
  assert.ok(judged > 0);
  const refusal = entries.find((e) => e.outcome === 'refused');
  assert.equal(refusal?.code, 'CURRENT_UNKNOWN_KEY');
  assert.match(refusal?.reason ?? '', /and 1980 more problems/);
  assert.ok((refusal?.reason ?? '').length < 8_500, `a reason of ${refusal?.reason?.length} characters`);
  const warned = agent.raw.filter((l) => l.includes('"refused'));
  assert.ok(warned.length <= 3, `${warned.length} refusal log lines`);
  assert.ok(agent.raw.join('\n').length < 200_000, `the agent logged ${agent.raw.join('\n').length} bytes`);
  // The app was never touched, and a good edit still applies.
  assert.equal((await ask(web)).pid, v1.pid);
  await setCurrent(web, '2.0');
  await servedBy(web, '2.0');
});

test('a read-only state folder at start: the agent runs the app anyway and says so once, with the path', async (t) => {
  if (!rootOnly(t)) return; // mount(8)
  const root = await tmpDir(t, 'relink-isolation-');
  const web = await makeApp({ root, name: 'web', releases: ['1.0', '2.0'] });
  reapAppsAfter(t, web.releasesDir);
  await setCurrent(web, '1.0');
  const stateDir = path.join(root, 'state');
  await mkdir(stateDir);
  await run('mount', ['-t', 'tmpfs', '-o', 'ro,size=16k,mode=0755', 'tmpfs', stateDir]);
  defer(t, () => run('umount', [stateDir]));
  const config = await writeConfig(root, [web], { reconcileMs: 60_000 });
  const agent = startAgent(t, config);
  await servedBy(web, '1.0');
  await setCurrent(web, '2.0');
  await servedBy(web, '2.0');
  assert.equal(agent.child.exitCode, null);
  const said = await agent.waitForLog('the state folder problem', (l) => l['code'] === 'STATE_WRITE_FAILED' && l.msg.includes(stateDir));
  assert.equal(said.level, 'error');
  // Once for the stateDir claim, once each for the journal and the state file: not once per write.
  const all = agent.lines.filter((l) => l['code'] === 'STATE_WRITE_FAILED');
  assert.ok(all.length <= 3, `${all.length} lines about the state folder`);
  assert.ok(all.every((l) => /EROFS|read-only/i.test(JSON.stringify(l))), JSON.stringify(all));
  assert.deepEqual(agent.stderr.filter((l) => l.includes('    at ')), [], 'no stack trace');
});

test('agent.json deleted or damaged while the agent runs is written again; relink deploy --wait finds the agent', async (t) => {
  const root = await tmpDir(t, 'relink-isolation-');
  const web = await makeApp({ root, name: 'web', releases: ['1.0', '2.0'] });
  reapAppsAfter(t, web.releasesDir);
  await setCurrent(web, '1.0');
  const config = await writeConfig(root, [web], { reconcileMs: 300 });
  const agent = startAgent(t, config);
  await servedBy(web, '1.0');
  const record = path.join(root, 'state', 'agent.json');
  await rm(record);
  await agent.waitForLog('agent.json written again', (l) => l.msg.startsWith('agent.json was missing or damaged'));
  await writeFile(record, 'garbage{');
  await waitFor('agent.json naming the agent again', async () => (JSON.parse(await readFile(record, 'utf8').catch(() => '{}')) as { pid?: number }).pid === agent.child.pid);
  const deploy = await relinkCli(['deploy', '2.0', '--wait', '--timeout', '30', '--config', config]);
  assert.equal(deploy.code, 0, deploy.stderr);
  await servedBy(web, '2.0');
});

test('an app whose user is created after the agent started: its journal and state become readable by that user', async (t) => {
  if (!rootOnly(t)) return;
  const root = await tmpDir(t, 'relink-isolation-');
  const web = await makeApp({ root, name: 'web', releases: ['1.0'] });
  reapAppsAfter(t, web.releasesDir);
  await setCurrent(web, '1.0');
  const name = `rlkl${process.pid % 100_000}${Date.now() % 1000}`;
  const configFile = await writeConfig(root, [web], { reconcileMs: 300 }, { user: name, allowRoot: false });
  await openUp(web.releasesDir);
  const agent = startAgent(t, configFile);
  await agent.waitForLog('the unknown user', (l) => l['code'] === 'USER_UNKNOWN');
  const user = await testUserNamed(t, name);
  await servedBy(web, '1.0');
  await waitFor('the deploy journaled', async () => (await readHistory(path.join(root, 'state'), 'web')).some((e) => e.outcome === 'deployed'));
  const dir = path.join(root, 'state', 'apps', 'web');
  await waitFor('the app state folder handed to the app group', async () => (await stat(dir)).gid === user.gid);
  const h = await relinkCli(['history', '--app', 'web', '--config', configFile], {}, user);
  assert.equal(h.code, 0, h.stderr);
  assert.match(h.stdout, /deployed/);
});
