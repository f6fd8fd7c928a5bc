/**
 * Health-gated deploys end to end: the real agent, the real demo app, real
 * probes over HTTP. Every bad release must end with the previous release
 * serving and the reason in the journal; a refusal must switch nothing.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { ask, currentConf, fixture, nthEntry, servedBy, setCurrentText } from './fixture.js';
import { readHistory } from '../src/history.js';
import { makeApp, writeConfig } from '../src/demo/layout.js';
import { alive, assertOneKeyOnce, reapAppsAfter, relinkCli, startAgent, tmpDir, waitFor } from './helpers.js';
import { parseConfig } from '../src/config.js';
import type { ProcInfo } from '../src/proc.js';
import { runsRelease } from '../src/verify.js';

const sha256 = async (file: string) => createHash('sha256').update(await readFile(file)).digest('hex');

for (const [release, code, why] of [
  ['crash', 'APP_EXITED', 'a binary that exits at once never takes over (judged when the old main reaps it)'],
  ['sick', 'UNHEALTHY', 'a release that never becomes healthy'],
  ['dies', 'APP_EXITED', 'a release that crashes right after the handoff'],
] as const) {
  test(`rolled back: ${why} (${release} -> ${code})`, async (t) => {
    const f = await fixture(t);
    const v1 = await servedBy(f.app, '1.0');
    await setCurrentText(f.app, release);
    const e = await nthEntry(f, 2);
    assert.equal(e.outcome, 'rolled_back', e.reason ?? '');
    assert.equal(e.code, code);
    assert.equal(e.to.bin, path.join(f.app.releasesDir, `app.${release}`));
    assert.deepEqual(e.rolledBackTo, { bin: path.join(f.app.releasesDir, 'app.1.0'), cfg: path.join(f.app.releasesDir, 'cfg.1.0') });
    assert.match(e.rejected ?? '', new RegExp(`app\\.${release}`));
    // The previous release serves, the links and current.conf name it again.
    const now = await servedBy(f.app, '1.0');
    if (release === 'crash') assert.equal(now.pid, v1.pid, 'the old process never handed over and keeps serving');
    // Reaped by the old main before the agent looked, seen as its zombie
    // first, or seen alive a moment and judged (on a loaded host; the full
    // suite once): the same fault, said each way.
    if (release === 'crash') assert.match(e.reason ?? '', /did not take over: (a child of pid \d+ exited after SIGHUP|its process \(pid \d+, started by pid \d+ after SIGHUP\) died and was left unreaped)|^pid \d+ exited \d+ ms after the deploy, before it was judged healthy/);
    assert.equal(await readlink(path.join(f.app.dir, 'app.bin')), path.join(f.app.releasesDir, 'app.1.0'));
    assert.deepEqual(await currentConf(f.app), { 'bin.file': 'app.1.0', 'cfg.file': 'cfg.1.0' });

    const status = await relinkCli(['status', '--config', f.config, '--json']);
    const s = JSON.parse(status.stdout) as { apps: Array<{ state: string; lastDeploy: { outcome: string; reason: string }; lastGood: { bin: string } }> };
    assert.equal(s.apps[0]?.state, 'running');
    assert.equal(s.apps[0]?.lastDeploy.outcome, 'rolled_back');
    assert.equal(s.apps[0]?.lastGood.bin, path.join(f.app.releasesDir, 'app.1.0'));

    // The bad release is not retried on its own; the next good one deploys.
    await setCurrentText(f.app, '2.0');
    const next = await nthEntry(f, 3);
    assert.equal(next.outcome, 'deployed', next.reason ?? '');
    await servedBy(f.app, '2.0');
    const line = await f.agent.waitForLog('the rollback log line', (l) => l.outcome === 'rolled_back');
    assert.equal(line['rejected'], undefined, 'the rejected text stays in the journal, not in the log');
    assertOneKeyOnce(f.agent);
  });
}

test('rolled back: an app that never starts a successor (it reloads in place under reload.mode "reexec") -> HANDOFF_TIMEOUT', async (t) => {
  // The running process decides how it reloads: start on the in-place release.
  const f = await fixture(t, { start: 'stay' });
  const before = await servedBy(f.app, 'stay');
  await setCurrentText(f.app, '2.0');
  const e = await nthEntry(f, 2);
  assert.equal(e.outcome, 'rolled_back', e.reason ?? '');
  assert.equal(e.code, 'HANDOFF_TIMEOUT');
  assert.match(e.reason ?? '', /no new process of the app started within 3000 ms of SIGHUP/);
  assert.match(e.reason ?? '', / \(see \/\S+\/app\.log\)$/, 'the reason ends by naming the app\'s log file');
  const now = await servedBy(f.app, 'stay');
  assert.equal(now.pid, before.pid, 'the same process serves the last good release');
  assert.deepEqual(await currentConf(f.app), { 'bin.file': 'app.stay', 'cfg.file': 'cfg.stay' });
});

test('refused before anything is switched: a failing preflight, a wrong sha256; current.conf stays as written', async (t) => {
  const f = await fixture(t);
  const v1 = await servedBy(f.app, '1.0');
  const links = async () => [await readlink(path.join(f.app.dir, 'app.bin')), await readlink(path.join(f.app.dir, 'app.cfg'))];
  const before = await links();

  const preText = await setCurrentText(f.app, 'pre');
  const pre = await nthEntry(f, 2);
  assert.equal(pre.outcome, 'refused');
  assert.equal(pre.code, 'PREFLIGHT_FAILED');
  assert.match(pre.reason ?? '', /exit 1: emerg: preflight_fail=1 in .*cfg\.pre/);
  assert.equal(await readFile(f.app.currentFile, 'utf8'), preText, 'current.conf is left as the operator wrote it');

  const good = await sha256(path.join(f.app.releasesDir, 'app.2.0'));
  const wrong = '0'.repeat(64);
  await setCurrentText(f.app, '2.0', { 'bin.sha256': good, 'cfg.sha256': wrong });
  const hash = await nthEntry(f, 3);
  assert.equal(hash.outcome, 'refused');
  assert.equal(hash.code, 'RELEASE_HASH_MISMATCH');
  assert.match(hash.reason ?? '', new RegExp(`"cfg\\.sha256": .*current\\.conf says ${wrong}, .*cfg\\.2\\.0 has [0-9a-f]{64}`));

  assert.deepEqual(await links(), before);
  assert.equal((await ask(f.app)).pid, v1.pid);
  const status = await relinkCli(['status', '--config', f.config]);
  assert.match(status.stdout, /last deploy .*refused/);
  assert.match(status.stdout, /reason .*RELEASE_HASH_MISMATCH|reason .*sha256/);

  // With the right hashes it deploys.
  await setCurrentText(f.app, '2.0', { 'bin.sha256': good, 'cfg.sha256': await sha256(path.join(f.app.releasesDir, 'cfg.2.0')) });
  const ok = await nthEntry(f, 4);
  assert.equal(ok.outcome, 'deployed', ok.reason ?? '');
});

test('deploy --wait and rollback --wait answer with honest exit codes', async (t) => {
  const f = await fixture(t);
  await servedBy(f.app, '1.0');
  const cli = (...args: string[]) => relinkCli([...args, '--config', f.config]);

  const ok = await cli('deploy', '2.0', '--wait', '--timeout', '30');
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /app\.2\.0 \+ cfg\.2\.0 deployed and healthy/);
  assert.equal((await ask(f.app)).release, 'app.2.0');

  const again = await cli('deploy', '2.0', '--wait');
  assert.equal(again.code, 0);
  assert.match(again.stdout, /already live/);

  // The preflight runs before anything is written, as the agent would run it (item 4 of the trial).
  const refused = await cli('deploy', 'pre', '--wait', '--timeout', '30');
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /preflight .* refused .*app\.pre \+ .*cfg\.pre: exit 1: emerg: preflight_fail=1/);
  assert.match(await readFile(f.app.currentFile, 'utf8'), /app\.2\.0/, 'a release the preflight refuses is not written');
  const candidate = path.join(f.root, 'next.conf');
  await writeFile(candidate, '{"bin.file": "' + path.join(f.app.releasesDir, 'app.pre') + '", "cfg.file": "' + path.join(f.app.releasesDir, 'cfg.pre') + '"}\n');
  const validated = await cli('validate', candidate);
  assert.equal(validated.code, 1, 'relink validate runs the preflight too');
  assert.match(validated.stderr, /\[PREFLIGHT_FAILED\]/);

  const invalid = await cli('deploy', '9.9', '--wait');
  assert.equal(invalid.code, 1);
  assert.match(invalid.stderr, /no release 9\.9 in .*app\.9\.9: no such file\); `relink releases --app \S+` lists the releases there/);
  assert.match(await readFile(f.app.currentFile, 'utf8'), /app\.2\.0/, 'an invalid deploy does not touch current.conf');

  // Links on 2.0 but current.conf broken: "already live" must still fix current.conf, and wait for the agent's word.
  await writeFile(f.app.currentFile, '{"bin.file": "app.2.0", "cfg.flie": "cfg.2.0"}\n');
  await nthEntry(f, 3);
  const fixed = await cli('deploy', '2.0', '--wait', '--timeout', '30');
  assert.equal(fixed.code, 0, fixed.stderr);
  assert.match(fixed.stdout, /app\.2\.0 \+ cfg\.2\.0 is live \(it already ran; current\.conf names it again\)/);
  assert.deepEqual(await currentConf(f.app), { 'bin.file': 'app.2.0', 'cfg.file': 'cfg.2.0' });

  const crashed = await cli('deploy', 'crash', '--wait', '--timeout', '30');
  assert.equal(crashed.code, 1);
  // The app's name once, in front (it was doubled: "web: ... rolled back: web: ...").
  assert.match(crashed.stderr, /^web: app\.crash \+ cfg\.crash rolled back: the new release did not take over/);
  assert.equal(crashed.stderr.match(/\bweb:/g)?.length, 1, crashed.stderr);

  const rolled = await cli('deploy', 'sick', '--wait', '--timeout', '30', '--json');
  assert.equal(rolled.code, 1);
  const j = JSON.parse(rolled.stdout) as { outcome: string; entry: { code: string } };
  assert.equal(j.outcome, 'rolled_back');
  assert.equal(j.entry.code, 'UNHEALTHY');
  assert.equal((await ask(f.app)).release, 'app.2.0');

  const back = await cli('rollback', '--wait', '--timeout', '30');
  assert.equal(back.code, 0, back.stderr);
  assert.match(back.stdout, /app\.1\.0 \+ cfg\.1\.0 deployed/);
  await servedBy(f.app, '1.0');
  const to = await cli('rollback', '--to', '2.0', '--wait', '--timeout', '30');
  assert.equal(to.code, 0, to.stderr);
  await servedBy(f.app, '2.0');

  const usage = await cli('deploy', '--bin', 'x');
  assert.equal(usage.code, 2);
  assert.equal((await cli('deploy', '2.0', '--timeout', 'soon')).code, 2);

  assert.equal(await f.agent.stop(), 0);
  const noAgent = await cli('deploy', '1.0', '--wait');
  assert.equal(noAgent.code, 1);
  assert.match(noAgent.stderr, /no relink agent is running/);
});

test('SIGTERM during a long preflight: the preflight is killed, nothing is switched or journaled, the agent exits 0; the next agent applies the change', async (t) => {
  const f = await fixture(t, { agent: false });
  // The preflight announces itself (its PID in a file) and then takes a minute.
  const marker = path.join(f.root, 'preflight.pid');
  const cfg = JSON.parse(await readFile(f.config, 'utf8')) as { apps: Array<Record<string, unknown>> };
  cfg.apps[0]!['preflight'] = { command: ['/bin/sh', '-c', `case "$1" in *cfg.2.0) echo $$ > ${marker}; exec sleep 60;; esac`, 'preflight', '{cfg}'], timeoutMs: 120_000 };
  await writeFile(f.config, JSON.stringify(cfg));
  f.agent = startAgent(t, f.config);
  const first = await nthEntry(f, 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  await rm(marker, { force: true });
  await setCurrentText(f.app, '2.0');
  const pid = Number(await waitFor('the preflight running', async () => (await readFile(marker, 'utf8').catch(() => '')).trim()));
  assert.ok(await alive(pid));
  assert.equal(await f.agent.stop('SIGTERM'), 0, 'stopped by itself, well before the test\'s 20 s SIGKILL');
  assert.equal(await alive(pid), false, 'the preflight was killed');
  assert.equal(await readlink(path.join(f.app.dir, 'app.bin')), path.join(f.app.releasesDir, 'app.1.0'));
  assert.equal((await readHistory(f.stateDir, 'web')).length, 1);
  assert.ok(f.agent.lines.some((l) => l.msg.startsWith('the agent is stopping: deploy abandoned before anything was switched')));
  await servedBy(f.app, '1.0');

  // The next agent finds current.conf naming 2.0 and applies it (its preflight runs again).
  cfg.apps[0]!['preflight'] = null;
  await writeFile(f.config, JSON.stringify(cfg));
  startAgent(t, f.config);
  const next = await nthEntry(f, 2);
  assert.equal(next.outcome, 'deployed', next.reason ?? '');
  await servedBy(f.app, '2.0');
});

test('deploy and rollback by release name with current.conf outside the releases folder (conf/current.conf)', async (t) => {
  const root = await tmpDir(t);
  const app = await makeApp({ root, releases: ['1.0', '2.0'] });
  reapAppsAfter(t, app.releasesDir);
  const conf = path.join(app.dir, 'conf');
  await mkdir(conf);
  await writeFile(path.join(conf, 'current.conf'), JSON.stringify({ 'bin.file': '../release/app.1.0', 'cfg.file': '../release/cfg.1.0' }));
  const config = await writeConfig(root, [app], { reconcileMs: 60_000 }, { currentFile: 'conf/current.conf' });
  startAgent(t, config);
  await servedBy(app, '1.0');
  const up = await relinkCli(['deploy', '2.0', '--wait', '--timeout', '30', '--config', config]);
  assert.equal(up.code, 0, up.stderr);
  await servedBy(app, '2.0');
  assert.deepEqual(JSON.parse(await readFile(path.join(conf, 'current.conf'), 'utf8')), { 'bin.file': path.join(app.releasesDir, 'app.2.0'), 'cfg.file': path.join(app.releasesDir, 'cfg.2.0') });
  const back = await relinkCli(['rollback', '--wait', '--timeout', '30', '--config', config]);
  assert.equal(back.code, 0, back.stderr);
  await servedBy(app, '1.0');
});

test('issue 15: in the folders layout, reached through a symlinked releases folder, a process running another release\'s binary does not run the deployed one; an interpreter does', () => {
  // /srv/shop -> /data/shop: releasesDir as configured is not the real path the release files have.
  const app = parseConfig(JSON.stringify({ apps: [{ name: 'shop', dir: '/srv/shop', releasesDir: 'releases', releaseNames: { bin: '{release}/bin/app', cfg: '{release}/app.cfg' }, links: { dir: 'current' } }] }), '/etc/relink/config.json').apps[0]!;
  const release = { bin: '/data/shop/releases/2.0/bin/app', cfg: '/data/shop/releases/2.0/app.cfg' };
  const proc = (exe: string) => ({ exe }) as ProcInfo;
  assert.equal(runsRelease(app, proc('/data/shop/releases/2.0/bin/app'), release), true);
  assert.equal(runsRelease(app, proc('/data/shop/releases/1.0/bin/app'), release), false);
  assert.equal(runsRelease(app, proc('/usr/bin/python3'), release), true);
});
