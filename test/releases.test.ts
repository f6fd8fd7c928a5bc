/**
 * "Releases and pruning": listing the releases with their flags, and pruning
 * that keeps the newest N plus everything a deploy may still need, on real
 * files, through the library, the CLI (real processes) and node-cron.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { access, chmod, copyFile, lstat, mkdir, readdir, readFile, readlink, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { nodeCron } from '../src/cron.js';
import { loadConfig, type AgentConfig, type AppConfig } from '../src/config.js';
import { RelinkError } from '../src/errors.js';
import { appendHistory, type HistoryEntry, type Outcome } from '../src/history.js';
import { createLogger } from '../src/log.js';
import { arrival, listReleases, previousRelease, pruneReleases, schedulePrune, type ReleaseInfo } from '../src/releases.js';
import { claimAgent, releaseAgent, writeAppState } from '../src/state.js';
import { relinkCli, tmpDir, waitFor, type LogLine } from './helpers.js';

const run = promisify(execFile);
const BASE = Date.parse('2024-01-01T00:00:00Z');
const ARRIVED_AFTER = 'arrived after the current release, never deployed';
/** Journal times: deploys happen after their releases arrived (a listing reads the journal back only that far). */
const T0 = Date.now() + 600_000;
const at = (day: number): string => new Date(T0 + day * 86_400_000).toISOString();

/**
 * app.R (executable) and, unless `cfg` is false, cfg.R, both modified
 * `minute` minutes after BASE. Releases are ordered by arrival: the next one
 * made arrives strictly later (the file clock is coarse, a few ms).
 */
async function addRelease(dir: string, r: string, minute: number, cfg = true): Promise<void> {
  const when = new Date(BASE + minute * 60_000);
  const bin = path.join(dir, `app.${r}`);
  await writeFile(bin, `#!/bin/sh\necho ${r}\n`, { mode: 0o755 });
  await utimes(bin, when, when);
  if (cfg) {
    await writeFile(path.join(dir, `cfg.${r}`), `release=${r}\n`);
    await utimes(path.join(dir, `cfg.${r}`), when, when);
  }
  await afterArrivalOf(bin);
}

/** Wait until a file made now would arrive later than `file` did. */
async function afterArrivalOf(file: string): Promise<void> {
  const made = arrival(await lstat(file)).ms;
  const probe = path.join(path.dirname(file), '.clock-probe');
  await waitFor(`the file clock to pass ${file}'s arrival`, async () => {
    await writeFile(probe, '');
    const later = arrival(await lstat(probe)).ms > made;
    await unlink(probe);
    return later;
  });
}

async function writeConfigFile(root: string, apps: readonly Record<string, unknown>[]): Promise<string> {
  const file = path.join(root, 'config.json');
  await writeFile(file, `${JSON.stringify({ stateDir: path.join(root, 'state'), logLevel: 'silent', apps }, null, 2)}\n`);
  return file;
}

/** One app "web" in <root>/web with releases in <root>/web/release. */
async function oneApp(root: string, extra: Record<string, unknown> = {}): Promise<{ file: string; config: AgentConfig; app: AppConfig; rel: string }> {
  const rel = path.join(root, 'web', 'release');
  await mkdir(rel, { recursive: true });
  const file = await writeConfigFile(root, [{ name: 'web', dir: path.join(root, 'web'), ...extra }]);
  const config = await loadConfig(file);
  return { file, config, app: config.apps[0]!, rel };
}

function entry(app: string, outcome: Outcome, bin: string, time: string): HistoryEntry {
  return {
    time, app, outcome, action: 'signal', from: { bin: null, cfg: null }, to: { bin, cfg: bin.replace(/app\.([^/]*)$/, 'cfg.$1') },
    reason: null, code: null, pidBefore: null, pidAfter: null, durationMs: 1, currentHash: null, trigger: 'test',
  };
}

async function setLastGood(stateDir: string, app: string, bin: string, cfg: string): Promise<void> {
  await writeAppState(stateDir, {
    app, state: 'running', pid: null, pidStart: null, since: null, bin, cfg, lastDeploy: null,
    lastGood: { bin, cfg, text: '' }, restarts: 0, updatedAt: new Date(BASE).toISOString(),
  });
}

/** Point an app's links (in `dir`) at release `r` in `rel`. */
async function linkTo(dir: string, rel: string, r: string): Promise<void> {
  await symlink(path.join(rel, `app.${r}`), path.join(dir, 'app.bin'));
  await symlink(path.join(rel, `cfg.${r}`), path.join(dir, 'app.cfg'));
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(() => true, () => false);
}

const names = (rs: readonly ReleaseInfo[], pred: (r: ReleaseInfo) => boolean = () => true) => rs.filter(pred).map((r) => r.release);

test('releases are listed oldest first with current, previous, last-good and failed', async (t) => {
  const root = await tmpDir(t);
  const { config, app, rel } = await oneApp(root);
  await addRelease(rel, '1.0', 1);
  await addRelease(rel, '2.0', 2);
  await addRelease(rel, '4.0', 4); // arrived before 3.0, modified after it: order is by arrival, not by mtime nor by name
  await addRelease(rel, '3.0', 3);
  await addRelease(rel, '5.0', 5, false);
  await linkTo(app.dir, rel, '3.0');
  await setLastGood(config.stateDir, 'web', path.join(rel, 'app.2.0'), path.join(rel, 'cfg.2.0'));
  // A broken current.conf is not an error for listing.
  await writeFile(app.currentFile, '{"bin.file": ');
  const bin = (r: string) => path.join(rel, `app.${r}`);
  await appendHistory(config.stateDir, entry('web', 'failed', bin('2.0'), at(1)));
  await appendHistory(config.stateDir, entry('web', 'deployed', bin('2.0'), at(2)));
  // A hand rollback to 1.0: it, not the newer 2.0, was deployed last before 3.0.
  await appendHistory(config.stateDir, entry('web', 'deployed', bin('1.0'), at(3)));
  await appendHistory(config.stateDir, entry('web', 'deployed', bin('3.0'), at(4)));
  await appendHistory(config.stateDir, entry('web', 'rolled_back', bin('4.0'), at(5)));
  // Another app's journal lines are not this app's deploys.
  await appendHistory(config.stateDir, entry('api', 'deployed', bin('5.0'), at(6)));

  const rs = await listReleases(config, app);
  assert.deepEqual(names(rs), ['1.0', '2.0', '4.0', '3.0', '5.0']);
  for (let i = 1; i < rs.length; i++) assert.ok(rs[i - 1]!.bin.arrived <= rs[i]!.bin.arrived, 'oldest arrival first');
  assert.deepEqual(names(rs, (r) => r.current), ['3.0']);
  assert.deepEqual(names(rs, (r) => r.previous), ['1.0']);
  assert.deepEqual(names(rs, (r) => r.lastGood), ['2.0']);
  assert.deepEqual(names(rs, (r) => r.failed), ['4.0'], '2.0 failed once but its latest deploy succeeded');
  const by = new Map(rs.map((r) => [r.release, r]));
  assert.deepEqual(by.get('2.0')!.lastDeploy, { time: at(2), outcome: 'deployed' });
  assert.deepEqual(by.get('4.0')!.lastDeploy, { time: at(5), outcome: 'rolled_back' });
  assert.equal(by.get('5.0')!.lastDeploy, null);
  assert.equal(by.get('5.0')!.cfg, null, 'a missing cfg is shown as null');
  const a1 = arrival(await lstat(bin('1.0')));
  assert.deepEqual(by.get('1.0')!.bin, { path: bin('1.0'), size: '#!/bin/sh\necho 1.0\n'.length, mtime: new Date(BASE + 60_000).toISOString(), arrived: new Date(a1.ms).toISOString(), arrivedBy: a1.by });
  assert.equal(by.get('1.0')!.cfg?.path, path.join(rel, 'cfg.1.0'));
  assert.deepEqual(Object.fromEntries(rs.map((r) => [r.release, r.protected])),
    { '1.0': ['previous (the rollback target)'], '2.0': ['last known-good'], '3.0': ['current'], '4.0': [], '5.0': [ARRIVED_AFTER] });
});

test('files that are not releases are neither listed nor ever deleted', async (t) => {
  const root = await tmpDir(t);
  const { config, app, rel } = await oneApp(root);
  await addRelease(rel, '1.0', 10);
  await addRelease(rel, '2.0', 20);
  // All older than every release, so each would be pruned if taken for one.
  const others = ['.app.0.1.tmp', 'app.0.2.tmp', 'app.0.3~', 'app.0.4.part', 'README', 'cfg.0.5', 'app.', 'current.conf'];
  for (const name of others) await writeFile(path.join(rel, name), name === 'current.conf' ? '{"bin.file": "app.2.0", "cfg.file": "cfg.2.0"}' : 'x');
  await mkdir(path.join(rel, 'app.0.6'));
  await symlink(path.join(rel, 'app.2.0'), path.join(rel, 'app.0.7'));
  const old = new Date(BASE);
  for (const name of [...others, 'app.0.6']) await utimes(path.join(rel, name), old, old);

  assert.deepEqual(names(await listReleases(config, app)), ['1.0', '2.0']);
  // keep 1, and current.conf names 2.0 anyway: only 1.0 may go.
  const { removed, kept } = await pruneReleases(config, app, { keep: 1 });
  assert.deepEqual(removed, [path.join(rel, 'cfg.1.0'), path.join(rel, 'app.1.0')]);
  assert.deepEqual(kept, [path.join(rel, 'app.2.0'), path.join(rel, 'cfg.2.0')]);
  for (const name of [...others, 'app.0.6', 'app.0.7', 'app.2.0', 'cfg.2.0']) assert.ok(await exists(path.join(rel, name)), `${name} is still there`);
});

test('prune keeps the newest N, current, last-good, what current.conf names and what another app links to', async (t) => {
  const root = await tmpDir(t);
  const shared = path.join(root, 'shared');
  const alias = path.join(root, 'alias'); // the same folder under another name: links through it must still count
  await mkdir(shared);
  await symlink(shared, alias);
  await mkdir(path.join(root, 'web'));
  await mkdir(path.join(root, 'api'));
  const file = await writeConfigFile(root, [
    { name: 'web', dir: path.join(root, 'web'), releasesDir: shared },
    { name: 'api', dir: path.join(root, 'api'), releasesDir: shared, currentFile: 'current.conf' },
  ]);
  const config = await loadConfig(file);
  const web = config.apps[0]!;
  for (let i = 1; i <= 10; i++) await addRelease(shared, `${i}.0`, i, i !== 4);
  await linkTo(web.dir, shared, '6.0');
  await setLastGood(config.stateDir, 'web', path.join(shared, 'app.5.0'), path.join(shared, 'cfg.5.0'));
  await writeFile(web.currentFile, '{"bin.file": "app.3.0", "cfg.file": "cfg.3.0"}\n'); // uploaded, not yet applied
  // 8.0 came after the current 6.0 but was tried and rolled back: no longer an upcoming deploy.
  await appendHistory(config.stateDir, entry('web', 'rolled_back', path.join(shared, 'app.8.0'), at(1)));
  await symlink('../alias/app.2.0', path.join(root, 'api', 'app.bin'));
  await symlink(path.join(alias, 'cfg.7.0'), path.join(root, 'api', 'app.cfg')); // only the cfg protects 7.0

  const listed = await listReleases(config, web);
  assert.deepEqual(Object.fromEntries(listed.filter((r) => r.protected.length > 0).map((r) => [r.release, r.protected])), {
    '2.0': ['linked by app api'],
    '3.0': ['named by current.conf'],
    '5.0': ['last known-good'],
    '6.0': ['current'],
    '7.0': ['linked by app api', ARRIVED_AFTER],
    '9.0': [ARRIVED_AFTER],
    '10.0': [ARRIVED_AFTER],
  });
  // For api, whose links point (through the alias) at 2.0's bin and 7.0's cfg, both are current.
  const api = await listReleases(config, config.apps[1]!);
  assert.deepEqual(names(api, (r) => r.current), ['2.0', '7.0']);
  assert.deepEqual(api.find((r) => r.release === '6.0')!.protected, ['linked by app web', ARRIVED_AFTER], 'api never deployed 6.0, which came after its 2.0');

  const all = (await listReleases(config, web)).flatMap((r) => [r.bin.path, ...(r.cfg ? [r.cfg.path] : [])]);
  const expected = ['cfg.1.0', 'app.1.0', 'app.4.0', 'cfg.8.0', 'app.8.0'].map((n) => path.join(shared, n));

  const dry = await pruneReleases(config, web, { keep: 2, dryRun: true });
  assert.deepEqual(dry.removed, expected);
  for (const f of all) assert.ok(await exists(f), `dry run left ${f}`);

  const done = await pruneReleases(config, web, { keep: 2 });
  assert.deepEqual(done.removed, expected);
  assert.deepEqual(done.kept, all.filter((f) => !expected.includes(f)));
  for (const f of all) assert.equal(await exists(f), !expected.includes(f), f);
  assert.deepEqual(names(await listReleases(config, web)), ['2.0', '3.0', '5.0', '6.0', '7.0', '9.0', '10.0']);

  // Nothing left to remove: a second run is a no-op.
  assert.deepEqual((await pruneReleases(config, web, { keep: 2 })).removed, []);
});

test('keep must be a positive integer', async (t) => {
  const root = await tmpDir(t);
  const { file, config, app, rel } = await oneApp(root);
  await addRelease(rel, '1.0', 1);
  await addRelease(rel, '2.0', 2);
  for (const keep of [0, -1, 1.5]) {
    await assert.rejects(pruneReleases(config, app, { keep }), (err: unknown) => err instanceof RelinkError && err.code === 'USAGE', `keep ${keep}`);
  }
  for (const keep of ['0', 'x', '2.5', '']) {
    const r = await relinkCli(['prune', '--config', file, '--keep', keep]);
    assert.equal(r.code, 2, `--keep ${JSON.stringify(keep)}: ${r.stderr}`);
    assert.match(r.stderr, /--keep must be a positive integer/);
  }
  assert.ok(await exists(path.join(rel, 'app.1.0')), 'a refused --keep deletes nothing');
});

test('relink releases --json and relink prune --dry-run, then prune, as real processes', async (t) => {
  const root = await tmpDir(t);
  const { file, config, app, rel } = await oneApp(root, { prune: { keep: 2 } });
  for (let i = 1; i <= 4; i++) await addRelease(rel, `${i}.0`, i);
  await linkTo(app.dir, rel, '1.0');
  await appendHistory(config.stateDir, entry('web', 'deployed', path.join(rel, 'app.1.0'), at(1)));
  await appendHistory(config.stateDir, entry('web', 'rolled_back', path.join(rel, 'app.2.0'), at(2)));

  const listed = await relinkCli(['releases', '--json'], { RELINK_CONFIG: file });
  assert.equal(listed.code, 0, listed.stderr);
  const json = JSON.parse(listed.stdout) as { apps: { name: string; releases: ReleaseInfo[] }[] };
  assert.deepEqual(json.apps.map((a) => a.name), ['web']);
  assert.deepEqual(names(json.apps[0]!.releases), ['1.0', '2.0', '3.0', '4.0']);
  assert.deepEqual(names(json.apps[0]!.releases, (r) => r.current), ['1.0']);
  assert.deepEqual(json.apps[0]!.releases[0]!.lastDeploy, { time: at(1), outcome: 'deployed' });

  const text = await relinkCli(['releases', '--config', file]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^RELEASE\s+BIN\s+CFG\s+SIZE\s+ARRIVED\s+MODIFIED\s+FLAGS\s+LAST DEPLOY$/m);
  assert.match(text.stdout, /^1\.0\s+app\.1\.0\s+cfg\.1\.0\s.*\scurrent\s+deployed /m);

  // keep 2 from the config: 3.0 and 4.0, plus 1.0 (current); 2.0 would go.
  const dry = await relinkCli(['prune', '--config', file, '--dry-run', '--json']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.deepEqual(JSON.parse(dry.stdout), {
    dryRun: true,
    apps: [{ name: 'web', removed: [path.join(rel, 'cfg.2.0'), path.join(rel, 'app.2.0')], kept: ['1.0', '3.0', '4.0'].flatMap((r) => [path.join(rel, `app.${r}`), path.join(rel, `cfg.${r}`)]), leftovers: [] }],
  });
  assert.ok(await exists(path.join(rel, 'app.2.0')), 'the dry run deleted nothing');
  assert.ok(await exists(path.join(rel, 'cfg.2.0')), 'the dry run deleted nothing');

  const real = await relinkCli(['prune', '--config', file, '--keep', '3']);
  assert.equal(real.code, 0, real.stderr);
  assert.equal(real.stdout, 'web: nothing to remove, 8 kept\n', '--keep overrides the config');
  const pruned = await relinkCli(['prune', '--config', file, '--app', 'web']);
  assert.equal(pruned.code, 0, pruned.stderr);
  assert.equal(pruned.stdout, `web: removed 2 files, 6 kept\n  ${path.join(rel, 'cfg.2.0')}\n  ${path.join(rel, 'app.2.0')}\n`);
  assert.equal(await exists(path.join(rel, 'app.2.0')), false);

  const unknown = await relinkCli(['prune', '--config', file, '--app', 'nope']);
  assert.equal(unknown.code, 1, unknown.stderr);
  assert.match(unknown.stderr, /no app named "nope"/);
});

test('schedulePrune prunes on its cron schedule, logs through pino, and stop() leaves no task', async (t) => {
  const lines: LogLine[] = [];
  const log = createLogger('debug', { write: (s: string) => { lines.push(JSON.parse(s) as LogLine); } });

  const none = await oneApp(await tmpDir(t));
  assert.equal(schedulePrune(none.config, none.app, log), undefined, 'no prune.schedule, no task');

  const root = await tmpDir(t);
  const { config, app, rel } = await oneApp(root, { prune: { schedule: '* * * * * *', keep: 1 } });
  for (let i = 1; i <= 3; i++) await addRelease(rel, `${i}.0`, i);
  const schedule = schedulePrune(config, app, log.child({ app: 'web' }));
  assert.ok(schedule);
  t.after(() => schedule.stop());
  assert.ok([...nodeCron().getTasks().values()].some((task) => task.name === 'prune-web'));

  const line = await waitFor('a scheduled prune', () => lines.find((l) => l.app === 'web' && Array.isArray(l.removed) && l.removed.length > 0));
  assert.equal(line.level, 'info');
  assert.deepEqual(line.removed, ['1.0', '2.0'].flatMap((r) => [path.join(rel, `cfg.${r}`), path.join(rel, `app.${r}`)]));
  assert.deepEqual(line.kept, [path.join(rel, 'app.3.0'), path.join(rel, 'cfg.3.0')]);
  assert.equal(await exists(path.join(rel, 'app.1.0')), false);
  assert.ok(await exists(path.join(rel, 'app.3.0')));

  // node-cron's own messages (here: a task that throws) go to pino, not to its coloured console output.
  const boom = nodeCron().schedule('* * * * * *', () => { throw new Error('boom from a cron task'); }, { name: 'boom' });
  t.after(() => boom.destroy());
  const cronLine = await waitFor('node-cron logging through pino', () => lines.find((l) => l.component === 'node-cron' && l.level === 'error'));
  assert.match(JSON.stringify(cronLine), /boom from a cron task/);
  await boom.destroy();

  const stopped = schedule.stop();
  assert.equal(schedule.stop(), stopped, 'stop() returns the same promise every time');
  await stopped;
  assert.deepEqual([...nodeCron().getTasks().values()].map((task) => task.name), [], 'no cron task left to keep the process alive');
});

test('issue 9 item 15: a release uploaded with rsync -a, built nine days ago, is the newest and is not pruned', async (t) => {
  const root = await tmpDir(t);
  const { file, config, app, rel } = await oneApp(root);
  for (let i = 1; i <= 3; i++) await addRelease(rel, `${i}.0`, 60 * 24 * 30 + i); // built and uploaded a month after BASE
  await linkTo(app.dir, rel, '3.0');
  for (let i = 1; i <= 3; i++) await appendHistory(config.stateDir, entry('web', 'deployed', path.join(rel, `app.${i}.0`), at(i)));
  // Built nine days ago, uploaded now: rsync -a (like scp -p) keeps the build's mtime.
  const build = path.join(root, 'build');
  await mkdir(build);
  const nineDaysAgo = new Date(Date.now() - 9 * 86_400_000);
  for (const r of ['4.0', '5.0']) {
    await writeFile(path.join(build, `app.${r}`), `#!/bin/sh\necho ${r}\n`, { mode: 0o755 });
    await writeFile(path.join(build, `cfg.${r}`), `release=${r}\n`);
    for (const f of [`app.${r}`, `cfg.${r}`]) await utimes(path.join(build, f), nineDaysAgo, nineDaysAgo);
    await run('rsync', ['-a', path.join(build, `app.${r}`), path.join(build, `cfg.${r}`), `${rel}/`]);
    await afterArrivalOf(path.join(rel, `app.${r}`));
  }
  const uploaded = await lstat(path.join(rel, 'app.4.0'));
  assert.ok(Math.abs(uploaded.mtimeMs - nineDaysAgo.getTime()) < 1000, 'rsync -a kept the build\'s mtime');
  assert.equal(arrival(uploaded).by, 'birth', 'this filesystem records birth times (README: "Releases and pruning")');

  const listed = await relinkCli(['releases', '--config', file, '--json']);
  assert.equal(listed.code, 0, listed.stderr);
  const rs = (JSON.parse(listed.stdout) as { apps: { releases: ReleaseInfo[] }[] }).apps[0]!.releases;
  assert.deepEqual(names(rs), ['1.0', '2.0', '3.0', '4.0', '5.0'], 'by arrival: the rsync\'d uploads last');
  const r4 = rs.find((r) => r.release === '4.0')!;
  assert.ok(Date.parse(r4.bin.arrived) > Date.now() - 600_000 && Date.parse(r4.bin.mtime) < Date.now() - 8 * 86_400_000, 'arrived now, modified nine days ago');
  assert.deepEqual(r4.protected, [ARRIVED_AFTER]);
  const text = await relinkCli(['releases', '--config', file]);
  assert.match(text.stdout, /^4\.0\s+app\.4\.0\s+cfg\.4\.0\s+\S+\s+\d+s ago\s+9d\d\dh ago\s+kept: arrived after the current release, never deployed\s+-$/m);

  // keep 1: 5.0 is the newest; 4.0, an upload not deployed yet, stays too; 3.0 is current and 2.0 the rollback target.
  const pruned = await relinkCli(['prune', '--config', file, '--keep', '1', '--json']);
  assert.equal(pruned.code, 0, pruned.stderr);
  assert.deepEqual((JSON.parse(pruned.stdout) as { apps: { removed: string[] }[] }).apps[0]!.removed, [path.join(rel, 'cfg.1.0'), path.join(rel, 'app.1.0')]);
  for (const r of ['2.0', '3.0', '4.0', '5.0']) assert.ok(await exists(path.join(rel, `app.${r}`)), `app.${r} kept`);

  // Once deployed, 4.0 is no upcoming upload any more (here: the previous release, as 3.0 runs again).
  await appendHistory(config.stateDir, entry('web', 'deployed', path.join(rel, 'app.4.0'), at(4)));
  assert.deepEqual((await listReleases(config, app)).find((r) => r.release === '4.0')!.protected, ['previous (the rollback target)']);
});

test('one definition of the previous release: rollback, releases and prune agree when the links are missing', async (t) => {
  const root = await tmpDir(t);
  const { file, config, app, rel } = await oneApp(root);
  for (let i = 1; i <= 3; i++) await addRelease(rel, `${i}.0`, i);
  for (let i = 1; i <= 3; i++) await appendHistory(config.stateDir, entry('web', 'deployed', path.join(rel, `app.${i}.0`), at(i)));
  // 3.0 runs (the state file's last known-good), but its links are gone: the previous release is 2.0, not 3.0.
  await setLastGood(config.stateDir, 'web', path.join(rel, 'app.3.0'), path.join(rel, 'cfg.3.0'));
  const expected = { bin: path.join(rel, 'app.2.0'), cfg: path.join(rel, 'cfg.2.0') };

  assert.deepEqual(await previousRelease(config.stateDir, app), expected);
  assert.deepEqual(names(await listReleases(config, app), (r) => r.previous), ['2.0']);
  const dry = await pruneReleases(config, app, { keep: 1, dryRun: true });
  assert.deepEqual(dry.removed, [path.join(rel, 'cfg.1.0'), path.join(rel, 'app.1.0')], 'prune keeps the same previous release');

  // rollback, as a real process, against this test process standing in for the agent.
  await claimAgent(config.stateDir, file, 'test');
  t.after(() => releaseAgent(config.stateDir));
  const back = await relinkCli(['rollback', '--config', file]);
  assert.equal(back.code, 0, back.stderr);
  assert.deepEqual(JSON.parse(await readFile(app.currentFile, 'utf8')), { 'bin.file': 'app.2.0', 'cfg.file': 'cfg.2.0' });

  // With the links back on 3.0 the answer is the same; on 2.0 it becomes 3.0.
  await linkTo(app.dir, rel, '3.0');
  assert.deepEqual(await previousRelease(config.stateDir, app), expected);
});

test('prune --help names the previous-release protection and the order by arrival', async () => {
  const r = await relinkCli(['prune', '--help']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /- the previous release: what relink rollback goes back to/);
  assert.match(r.stdout, /- a release that arrived after the current one and was never deployed;/);
  assert.match(r.stdout, /Newest means arrived on this host last/);
  assert.match(r.stdout, /- a release a running process uses: the binary it runs, or the folder\n\s+it works in/);
});

test('issue 15: releases in a folder each are listed and pruned whole, nothing followed out of them, with the protections of the files layout', async (t) => {
  const root = await tmpDir(t);
  const folders = { releaseNames: { bin: '{release}/app', cfg: '{release}/app.cfg' }, links: { dir: 'current' } };
  const { config, app, rel } = await oneApp(root, folders);
  const outside = path.join(root, 'outside');
  await mkdir(outside);
  await writeFile(path.join(outside, 'keep'), 'not a release\n');
  for (const r of ['1.0', '2.0', '3.0', '4.0', '5.0']) {
    await mkdir(path.join(rel, r, 'static'), { recursive: true });
    await writeFile(path.join(rel, r, 'app'), `#!/bin/sh\necho ${r}\n`, { mode: 0o755 });
    await writeFile(path.join(rel, r, 'app.cfg'), `release=${r}\n`);
    await writeFile(path.join(rel, r, 'static', 'style.css'), `/* ${r} */\n`);
    await afterArrivalOf(path.join(rel, r));
  }
  // Links in a release that goes: removed, never followed.
  await symlink(outside, path.join(rel, '1.0', 'static', 'shared'));
  await symlink(path.join(outside, 'keep'), path.join(rel, '4.0', 'keep'));
  // Not releases: a file named like one, a folder without the binary, a backup, a dot folder.
  await writeFile(path.join(rel, '0.1'), 'x');
  await mkdir(path.join(rel, '0.2'));
  await mkdir(path.join(rel, '0.3~'));
  await writeFile(path.join(rel, '0.3~', 'app'), 'x', { mode: 0o755 });
  await mkdir(path.join(rel, '.0.4'));
  await writeFile(path.join(rel, '.0.4', 'app'), 'x', { mode: 0o755 });
  // What an earlier prune renamed away and could not finish.
  await mkdir(path.join(rel, '.relink-pruning.0.5.0123abcd', 'static'), { recursive: true });
  // Only the folder link points at 2.0; another app links a file inside 3.0.
  await symlink(path.join(rel, '2.0'), path.join(app.dir, 'current'));
  const api = path.join(root, 'api');
  await mkdir(api);
  const file = await writeConfigFile(root, [{ name: 'web', dir: app.dir, ...folders }, { name: 'api', dir: api, releasesDir: rel, currentFile: 'current.conf' }]);
  const both = await loadConfig(file);
  await symlink(path.join(rel, '3.0', 'static', 'style.css'), path.join(api, 'app.cfg'));

  const rs = await listReleases(both, both.apps[0]!);
  assert.deepEqual(names(rs), ['1.0', '2.0', '3.0', '4.0', '5.0']);
  assert.deepEqual(names(rs, (r) => r.current), ['2.0']);
  assert.deepEqual(rs.map((r) => [r.folder?.path, r.bin.path, r.cfg?.path]), names(rs).map((r) => [path.join(rel, r), path.join(rel, r, 'app'), path.join(rel, r, 'app.cfg')]));
  assert.equal(rs[0]!.folder!.arrived, new Date(arrival(await lstat(path.join(rel, '1.0'))).ms).toISOString(), 'a release folder arrives with its folder');
  assert.deepEqual(Object.fromEntries(rs.map((r) => [r.release, r.protected])), { '1.0': [], '2.0': ['current'], '3.0': ['linked by app api'], '4.0': [], '5.0': [] });

  const dry = await pruneReleases(both, both.apps[0]!, { keep: 1, dryRun: true });
  assert.deepEqual(dry.removed, [path.join(rel, '1.0'), path.join(rel, '4.0')]);
  assert.deepEqual(dry.leftovers, [path.join(rel, '.relink-pruning.0.5.0123abcd')], 'a dry run says what an interrupted prune left');
  assert.ok(await exists(path.join(rel, '1.0', 'app')), 'a dry run removes nothing');
  assert.ok(await exists(path.join(rel, '.relink-pruning.0.5.0123abcd')), 'a dry run removes no leftover either');
  const dryText = await relinkCli(['prune', '--config', file, '--app', 'web', '--keep', '1', '--dry-run']);
  assert.equal(dryText.code, 0, dryText.stderr);
  assert.ok(dryText.stdout.endsWith(`web: would also remove what an interrupted prune left:\n  ${path.join(rel, '.relink-pruning.0.5.0123abcd')}\n`), dryText.stdout);
  const { removed, kept, leftovers } = await pruneReleases(both, both.apps[0]!, { keep: 1 });
  assert.deepEqual(removed, dry.removed);
  assert.deepEqual(leftovers, dry.leftovers, 'the leftover removed is reported (removing a big one takes long)');
  assert.deepEqual(kept, ['2.0', '3.0', '5.0'].map((r) => path.join(rel, r)));
  assert.deepEqual((await readdir(rel)).sort(), ['.0.4', '0.1', '0.2', '0.3~', '2.0', '3.0', '5.0']);
  assert.equal(await readFile(path.join(outside, 'keep'), 'utf8'), 'not a release\n');
});

test('issue 15: a release the live one links into (9.0/shared -> ../8.0/static) is kept by prune, with the reason', async (t) => {
  const root = await tmpDir(t);
  const folders = { releaseNames: { bin: '{release}/app', cfg: '{release}/app.cfg' }, links: { dir: 'current' } };
  const { app, rel } = await oneApp(root, folders);
  for (const r of ['1.0', '2.0', '3.0']) {
    await mkdir(path.join(rel, r, 'static'), { recursive: true });
    await writeFile(path.join(rel, r, 'app'), `#!/bin/sh\necho ${r}\n`, { mode: 0o755 });
    await writeFile(path.join(rel, r, 'app.cfg'), `release=${r}\n`);
    await afterArrivalOf(path.join(rel, r));
  }
  await symlink('../../1.0/static', path.join(rel, '3.0', 'static', 'shared'));
  // And one link further: 3.0/shared -> ../shared, whose old -> ../0.9/static (a loop back to 3.0 ends,
  // and is no reason of its own: the walk is the trust check's, which follows no link back into the release).
  await mkdir(path.join(rel, '0.9', 'static'), { recursive: true });
  await writeFile(path.join(rel, '0.9', 'app'), '#!/bin/sh\n', { mode: 0o755 });
  await writeFile(path.join(rel, '0.9', 'app.cfg'), 'release=0.9\n');
  await mkdir(path.join(rel, 'shared'));
  await symlink('../0.9/static', path.join(rel, 'shared', 'old'));
  await symlink('../3.0', path.join(rel, 'shared', 'back'));
  await symlink('.', path.join(rel, 'shared', 'self'));
  await symlink('../4.0/static', path.join(rel, 'shared', 'next')); // dangling: protects nothing, breaks nothing
  await symlink('../shared', path.join(rel, '3.0', 'shared'));
  await symlink(path.join(rel, '3.0'), path.join(app.dir, 'current'));
  const file = await writeConfigFile(root, [{ name: 'web', dir: app.dir, ...folders }]);
  const config = await loadConfig(file);
  const rs = await listReleases(config, config.apps[0]!);
  assert.deepEqual(Object.fromEntries(rs.map((r) => [r.release, r.protected])), { '0.9': ['linked from the current release'], '1.0': ['linked from the current release'], '2.0': [], '3.0': ['current'] });
  const { removed } = await pruneReleases(config, config.apps[0]!, { keep: 1 });
  assert.deepEqual(removed, [path.join(rel, '2.0')]);
  assert.ok(await exists(path.join(rel, '3.0', 'static', 'shared')), 'what the live release links to is still there');
});

test('prune keeps what a running process uses: the release whose binary it runs (an in-place reload keeps its executable) and the folder it works in (a draining generation); removes them once it has exited', async (t) => {
  const root = await tmpDir(t);
  const folders = { releaseNames: { bin: '{release}/app', cfg: '{release}/app.cfg' }, links: { dir: 'current' } };
  const { app, rel } = await oneApp(root, folders);
  for (const r of ['0.5', '1.0', '2.0', '3.0']) {
    await mkdir(path.join(rel, r), { recursive: true });
    // A real program: a copy of sleep, so that a process can run it from here.
    await copyFile('/usr/bin/sleep', path.join(rel, r, 'app'));
    await chmod(path.join(rel, r, 'app'), 0o755);
    await writeFile(path.join(rel, r, 'app.cfg'), `release=${r}\n`);
    await afterArrivalOf(path.join(rel, r));
  }
  await symlink(path.join(rel, '3.0'), path.join(app.dir, 'current'));
  const runs = spawn(path.join(rel, '1.0', 'app'), ['300'], { stdio: 'ignore' });
  const worksIn = spawn('sleep', ['300'], { cwd: path.join(rel, '2.0'), stdio: 'ignore' });
  const ended = (c: ChildProcess) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));
  t.after(async () => { runs.kill('SIGKILL'); worksIn.kill('SIGKILL'); await Promise.all([ended(runs), ended(worksIn)]); });
  await waitFor('the copy of sleep in 1.0 to run', async () => (await readlink(`/proc/${runs.pid}/exe`).catch(() => '')) === path.join(rel, '1.0', 'app'));
  const config = await loadConfig(path.join(root, 'config.json'));
  const rs = await listReleases(config, config.apps[0]!);
  assert.deepEqual(Object.fromEntries(rs.map((r) => [r.release, r.protected])),
    { '0.5': [], '1.0': [`in use by pid ${runs.pid}`], '2.0': [`in use by pid ${worksIn.pid}`], '3.0': ['current'] });
  const first = await pruneReleases(config, config.apps[0]!, { keep: 1 });
  assert.deepEqual(first.removed, [path.join(rel, '0.5')]);
  assert.ok(await exists(path.join(rel, '1.0', 'app')), 'the binary a process runs is still there');
  runs.kill('SIGKILL');
  worksIn.kill('SIGKILL');
  await Promise.all([ended(runs), ended(worksIn)]);
  const second = await pruneReleases(config, config.apps[0]!, { keep: 1 });
  assert.deepEqual(second.removed, [path.join(rel, '1.0'), path.join(rel, '2.0')]);
});

test('issue 15: what the previous release and the last known-good one link into is kept by prune too: a rollback to them must not land on missing assets', async (t) => {
  const root = await tmpDir(t);
  const folders = { releaseNames: { bin: '{release}/app', cfg: '{release}/app.cfg' }, links: { dir: 'current' } };
  const { app, rel } = await oneApp(root, folders);
  for (const r of ['0.4', '0.5', '1.0', '2.0', '3.0']) {
    await mkdir(path.join(rel, r, 'static'), { recursive: true });
    await writeFile(path.join(rel, r, 'app'), `#!/bin/sh\necho ${r}\n`, { mode: 0o755 });
    await writeFile(path.join(rel, r, 'app.cfg'), `release=${r}\n`);
    await afterArrivalOf(path.join(rel, r));
  }
  // 2.0 (previous) shares 0.5's static files, 1.0 (last known-good) 0.4's; 3.0 is live.
  await symlink('../../0.5/static', path.join(rel, '2.0', 'static', 'shared'));
  await symlink('../../0.4/static', path.join(rel, '1.0', 'static', 'shared'));
  await symlink(path.join(rel, '3.0'), path.join(app.dir, 'current'));
  await symlink(path.join(rel, '3.0', 'app'), app.links.bin);
  await symlink(path.join(rel, '3.0', 'app.cfg'), app.links.cfg);
  const file = await writeConfigFile(root, [{ name: 'web', dir: app.dir, ...folders }]);
  const config = await loadConfig(file);
  const files = (r: string) => ({ bin: path.join(rel, r, 'app'), cfg: path.join(rel, r, 'app.cfg') });
  await appendHistory(config.stateDir, { ...entry('web', 'deployed', files('2.0').bin, at(1)), to: files('2.0') });
  await appendHistory(config.stateDir, { ...entry('web', 'deployed', files('3.0').bin, at(2)), to: files('3.0') });
  await setLastGood(config.stateDir, 'web', files('1.0').bin, files('1.0').cfg);
  const rs = await listReleases(config, config.apps[0]!);
  assert.deepEqual(Object.fromEntries(rs.map((r) => [r.release, r.protected])), {
    '0.4': ['linked from last known-good'], '0.5': ['linked from previous (the rollback target)'],
    '1.0': ['last known-good'], '2.0': ['previous (the rollback target)'], '3.0': ['current'],
  });
  const { removed } = await pruneReleases(config, config.apps[0]!, { keep: 1 });
  assert.deepEqual(removed, []);
  assert.ok(await exists(path.join(rel, '2.0', 'static', 'shared', '.')), 'the previous release\'s shared assets are still there');
});

test('issue 15: status says a folder in place of the `current` link is not the agent\'s to replace (it said the agent would put it back)', async (t) => {
  const root = await tmpDir(t);
  const folders = { releaseNames: { bin: '{release}/app', cfg: '{release}/app.cfg' }, links: { dir: 'current' } };
  const { config, app, rel } = await oneApp(root, folders);
  await mkdir(path.join(rel, '1.0'));
  await writeFile(path.join(rel, '1.0', 'app'), '#!/bin/sh\n', { mode: 0o755 });
  await writeFile(path.join(rel, '1.0', 'app.cfg'), 'x\n');
  await symlink(path.join(rel, '1.0', 'app'), app.links.bin);
  await symlink(path.join(rel, '1.0', 'app.cfg'), app.links.cfg);
  await mkdir(app.links.dir!);
  const { appStatus } = await import('../src/cli/status.js');
  const st = await appStatus(config, app, false);
  assert.ok(st.warnings.includes(`${app.links.dir} is a folder, not a symlink: the agent does not replace it (LINK_NOT_SYMLINK); move it away, then the agent links the release's folder there`), JSON.stringify(st.warnings));
});
