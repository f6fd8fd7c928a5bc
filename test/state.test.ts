/**
 * The state folder (issue 9, items 4 and 9): who can read an app's journal
 * and state file (real users), damaged files at the boundary (readers warn
 * and go on, the agent sets them aside), typed write failures on a really
 * full and a really read-only filesystem, and the migration of the layout
 * before issue 9.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdir, open, readdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { Journal, readHistory, type HistoryEntry } from '../src/history.js';
import { migrateStateDir } from '../src/migrate.js';
import { readProc } from '../src/proc.js';
import { AppStore, claimAgent, readAppState, releaseAgent, runningAgent, type AppState } from '../src/state.js';
import { agentFile, appStateFile, journalFile, legacyJournalFile, legacyStateFile, StateWriteError, type Damage } from '../src/stateDir.js';
import { isRoot, openUp, rootOnly, testUser, type TestUser } from './accounts.js';
import { entry } from './entries.js';
import { defer, relinkCli, ROOT, startAgent, tmpDir, type CliResult } from './helpers.js';

const run = promisify(execFile);

function state(app: string, lastDeploy: HistoryEntry | null = null): AppState {
  return { app, state: 'running', pid: null, pidStart: null, since: null, bin: null, cfg: null, lastDeploy, lastGood: null, restarts: 0, updatedAt: '2026-01-01T00:00:00.000Z' };
}

async function configFor(root: string, names: readonly string[] = ['web'], logLevel = 'silent'): Promise<{ file: string; stateDir: string }> {
  const stateDir = path.join(root, 'state');
  const file = path.join(root, 'config.json');
  for (const n of names) await mkdir(path.join(root, n, 'release'), { recursive: true });
  await writeFile(file, JSON.stringify({ stateDir, logLevel, apps: names.map((name) => ({ name, dir: path.join(root, name) })) }));
  return { file, stateDir };
}

/** `relink ARGS...` as a real process running as `user` (its own group only). */
const cliAs = (user: TestUser, args: readonly string[]): Promise<CliResult> => relinkCli(args, {}, user);

const mode = async (p: string) => { const s = await stat(p); return { mode: (s.mode & 0o7777).toString(8), uid: s.uid, gid: s.gid }; };

test('an app\'s journal and state are readable by root and the app\'s group only; the agent record by everyone', async (t) => {
  if (!rootOnly(t)) return;
  const root = await tmpDir(t);
  const { file: config, stateDir } = await configFor(root);
  await openUp(root);
  const appUser = await testUser(t);
  const stranger = await testUser(t);
  const secret = (n: number) => entry('web', n, { rejected: 'a root-only file\'s content' });
  // One entry per file: 3 entries, backups 1, so the oldest rotates out.
  const store = new AppStore(stateDir, 'web', { gid: appUser.gid, history: { maxBytes: JSON.stringify(secret(1)).length + 10, backups: 1 } });
  for (let n = 1; n <= 3; n++) await store.record(secret(n));
  await store.save(state('web', entry('web', 3)));
  await claimAgent(stateDir, config, 'test');
  defer(t, () => releaseAgent(stateDir));

  const web = path.join(stateDir, 'apps', 'web');
  assert.deepEqual(await mode(stateDir), { mode: '755', uid: 0, gid: 0 });
  assert.equal((await mode(agentFile(stateDir))).mode, '644');
  assert.equal((await mode(path.join(stateDir, 'apps'))).mode, '755');
  assert.deepEqual(await mode(web), { mode: '750', uid: 0, gid: appUser.gid });
  assert.deepEqual((await readdir(web)).sort(), ['history.jsonl', 'history.jsonl.1', 'state.json'], 'rotated once');
  for (const f of ['history.jsonl', 'history.jsonl.1', 'state.json']) assert.deepEqual(await mode(path.join(web, f)), { mode: '640', uid: 0, gid: appUser.gid }, f);

  // The app's user (who deploys with --wait and reads status) reads it all.
  const own = await cliAs(appUser, ['history', '--config', config, '--app', 'web', '--json']);
  assert.equal(own.code, 0, own.stderr);
  assert.deepEqual((JSON.parse(own.stdout) as { history: HistoryEntry[] }).history.map((e) => e.durationMs), [2, 3]);
  const ownStatus = await cliAs(appUser, ['status', '--config', config, '--json']);
  const os = JSON.parse(ownStatus.stdout) as { agent: { pid: number } | null; apps: Array<{ lastDeploy: HistoryEntry | null; warnings: string[] }> };
  assert.equal(os.agent?.pid, process.pid, 'agent.json is readable by every user');
  assert.equal(os.apps[0]!.lastDeploy?.durationMs, 3);
  assert.deepEqual(os.apps[0]!.warnings, []);

  // Anybody else reads neither, and is told so without a stack trace.
  const theirs = await cliAs(stranger, ['history', '--config', config, '--app', 'web']);
  assert.equal(theirs.code, 1);
  assert.equal(theirs.stderr, `relink history: ${journalFile(stateDir, 'web')}: could not read the journal (EACCES: permission denied) [STATE_UNREADABLE]\n`);
  const merged = await cliAs(stranger, ['history', '--config', config]);
  assert.equal(merged.code, 0, merged.stderr);
  assert.equal(merged.stdout, 'no deploys recorded yet\n');
  assert.equal(merged.stderr, `relink history: not shown: app web: ${journalFile(stateDir, 'web')}: could not read the journal (EACCES: permission denied)\n`);
  const theirStatus = await cliAs(stranger, ['status', '--config', config, '--json']);
  const ts = JSON.parse(theirStatus.stdout) as { agent: { pid: number } | null; apps: Array<{ state: string; lastDeploy: unknown; warnings: string[] }> };
  assert.equal(ts.agent?.pid, process.pid);
  assert.equal(ts.apps[0]!.lastDeploy, null);
  // Neither the state file nor the processes are this user's to see: not "stopped", which would be a guess.
  assert.equal(ts.apps[0]!.state, 'unknown');
  assert.deepEqual(ts.apps[0]!.warnings, [
    `${appStateFile(stateDir, 'web')}: could not be read (EACCES: permission denied); treated as absent`,
    'this user may not read the app\'s state or see its processes: whether it runs is unknown here (relink status as root, or as a member of the state folder\'s group for web, shows it)',
  ]);
  await assert.rejects(run('setpriv', ['--reuid', String(stranger.uid), '--regid', String(stranger.gid), '--clear-groups', 'cat', path.join(web, 'history.jsonl.1')]));
});

test('relink status survives a state file of the wrong shape and a garbage agent.json, and names both', async (t) => {
  const root = await tmpDir(t);
  const { file: config, stateDir } = await configFor(root);
  await mkdir(path.dirname(appStateFile(stateDir, 'web')), { recursive: true });
  await writeFile(appStateFile(stateDir, 'web'), '{"app": "web", "state": 42, "lastDeploy": "yesterday"}\n');
  await writeFile(agentFile(stateDir), 'pid=1234\n');
  const r = await relinkCli(['status', '--config', config]);
  assert.equal(r.code, 1, 'the app is not running');
  assert.doesNotMatch(r.stderr, /unexpected error|at .*\.ts:\d+/);
  assert.match(r.stderr, new RegExp(`^relink status: warning: ${agentFile(stateDir)}: is not valid JSON \\(.*\\); treated as no agent running$`, 'm'));
  assert.match(r.stdout, /^agent: not running/);
  assert.match(r.stdout, /^web: stopped$/m);
  assert.match(r.stdout, new RegExp(`warning\\s+${appStateFile(stateDir, 'web')}: is not what relink writes: "state": .*; treated as absent`));
  const json = await relinkCli(['status', '--config', config, '--json']);
  assert.equal(json.code, 1);
  assert.equal((JSON.parse(json.stdout) as { apps: Array<{ state: string }> }).apps[0]!.state, 'stopped');
});

test('a UTF-8 BOM and CRLF line ends are accepted in state files and agent.json; unknown keys are tolerated', async (t) => {
  const root = await tmpDir(t);
  const { file: config, stateDir } = await configFor(root);
  await mkdir(path.dirname(appStateFile(stateDir, 'web')), { recursive: true });
  const crlf = (o: unknown) => `\ufeff${JSON.stringify(o, null, 2).replace(/\n/g, '\r\n')}\r\n`;
  await writeFile(appStateFile(stateDir, 'web'), crlf({ ...state('web', entry('web', 7, { outcome: 'refused', repeats: 3 })), state: 'error', problem: { code: 'APP_DIR_MISSING', message: 'no such folder', since: '2026-01-01T00:00:00.000Z' }, fromTheFuture: 1 }));
  const me = await readProc(process.pid);
  await writeFile(agentFile(stateDir), crlf({ pid: process.pid, startTime: me!.startTime, configFile: config, startedAt: '2026-01-01T00:00:00.000Z', version: 'test', alsoNew: true }));
  assert.equal((await runningAgent(stateDir))?.pid, process.pid);
  const saved = await readAppState(stateDir, 'web');
  assert.equal(saved?.state, 'error');
  assert.equal(saved?.lastDeploy?.repeats, 3);
  const r = await relinkCli(['status', '--config', config]);
  assert.equal(r.stderr, '');
  assert.match(r.stdout, new RegExp(`^agent: running, pid ${process.pid}`));
  assert.match(r.stdout, /^web: error$/m);
  assert.match(r.stdout, /problem\s+no such folder \[APP_DIR_MISSING\] since 2026-01-01T00:00:00.000Z/);
});

test('the agent sets a damaged state file and a garbage agent.json aside (and is told), then rebuilds them', async (t) => {
  const root = await tmpDir(t);
  const stateDir = path.join(root, 'state');
  const file = appStateFile(stateDir, 'web');
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, '{"app": "web", "state": "running"}'); // valid JSON, wrong shape
  const told: Damage[] = [];
  const store = new AppStore(stateDir, 'web', { onDamaged: (d) => told.push(d) });
  assert.equal(await store.load(), undefined);
  assert.equal(told.length, 1);
  assert.equal(told[0]!.file, file);
  const aside = (await readdir(path.dirname(file))).filter((n) => n.startsWith('state.json.damaged-'));
  assert.equal(aside.length, 1);
  assert.match(told[0]!.problem, new RegExp(`set aside as .*${aside[0]!.replace(/[.]/g, '\\.')}, and rebuilt$`));
  assert.equal(await readFile(path.join(path.dirname(file), aside[0]!), 'utf8'), '{"app": "web", "state": "running"}', 'kept for a post-mortem');
  await store.save(state('web'));
  assert.equal((await store.load())?.state, 'running');

  await writeFile(agentFile(stateDir), '\0\0garbage');
  const agentTold: Damage[] = [];
  const rec = await claimAgent(stateDir, '/etc/relink/config.json', 'test', { onDamaged: (d) => agentTold.push(d) });
  defer(t, () => releaseAgent(stateDir));
  assert.equal(rec.pid, process.pid);
  assert.equal(agentTold.length, 1);
  assert.ok((await readdir(stateDir)).some((n) => n.startsWith('agent.json.damaged-')));
  assert.equal((await runningAgent(stateDir))?.pid, process.pid);
});

test('the real agent starts with a garbage agent.json left in its state folder', async (t) => {
  const root = await tmpDir(t);
  const { file: config, stateDir } = await configFor(root, ['web'], 'info');
  await mkdir(stateDir, { recursive: true });
  await writeFile(agentFile(stateDir), '{"pid": "not a number"');
  const agent = startAgent(t, config);
  await agent.waitForLog('the agent to start', (l) => l.msg === 'agent started');
  assert.ok((await readdir(stateDir)).some((n) => n.startsWith('agent.json.damaged-')));
  assert.equal(await agent.stop(), 0);
});

/** A tmpfs of `size` mounted on a fresh folder, unmounted after the test. */
async function tmpfs(t: TestContext, size: string): Promise<string> {
  const dir = path.join(await tmpDir(t), 'mnt');
  await mkdir(dir);
  await run('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir]);
  defer(t, () => run('umount', ['-l', dir]));
  return dir;
}

test('writers report a full disk and a read-only folder as STATE_WRITE_FAILED with the path and the errno; a line a full disk tore is ended before the next entry', async (t) => {
  if (!rootOnly(t)) return; // mount(8)
  const mnt = await tmpfs(t, '16k');
  const stateDir = path.join(mnt, 'state');
  const file = journalFile(stateDir, 'web');
  const store = new AppStore(stateDir, 'web');
  // Two entries of 1998 bytes: the journal's page has 100 bytes left.
  const big = (n: number) => entry('web', n, { reason: '' });
  const pad = (n: number) => ({ ...big(n), reason: 'x'.repeat(1997 - JSON.stringify(big(n)).length) });
  await store.record(pad(1));
  await store.record(pad(2));
  assert.equal((await stat(file)).size, 3996);
  // Fill the rest of the filesystem.
  const filler = await open(path.join(mnt, 'filler'), 'w');
  try {
    for (;;) await filler.write(Buffer.alloc(4096));
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC');
  } finally {
    await filler.close();
  }

  const full = await store.record(entry('web', 3)).then(() => undefined, (err: unknown) => err);
  assert.ok(full instanceof StateWriteError, String(full));
  assert.equal(full.code, 'STATE_WRITE_FAILED');
  assert.equal(full.errno, 'ENOSPC');
  assert.equal(full.file, file);
  assert.equal(full.message, `${file}: could not append to the journal (found: ENOSPC: no space left on device)`);
  assert.ok((await stat(file)).size > 3996, 'a part of the line was written: the disk tore it');
  const noState = await store.save(state('web')).then(() => undefined, (err: unknown) => err);
  assert.ok(noState instanceof StateWriteError);
  assert.equal(noState.errno, 'ENOSPC');
  assert.equal(noState.file, appStateFile(stateDir, 'web'));
  assert.deepEqual((await readdir(path.dirname(file))).filter((n) => n.endsWith('.tmp')), [], 'no temp file left behind');

  await unlink(path.join(mnt, 'filler'));
  await store.record(entry('web', 4));
  const damage: Damage[] = [];
  assert.deepEqual((await readHistory(stateDir, 'web', { onDamaged: (d) => damage.push(d) })).map((e) => e.durationMs), [1, 2, 4]);
  assert.deepEqual(damage.map((d) => d.line), [3]);

  await run('mount', ['-o', 'remount,ro', mnt]);
  const ro = await store.record(entry('web', 5)).then(() => undefined, (err: unknown) => err);
  assert.ok(ro instanceof StateWriteError);
  assert.equal(ro.errno, 'EROFS');
  assert.equal(ro.message, `${file}: could not append to the journal (found: EROFS: read-only file system)`);
  assert.deepEqual(ro.toJSON(), { code: 'STATE_WRITE_FAILED', message: ro.message, file, rule: 'could not append to the journal', found: 'EROFS: read-only file system', errno: 'EROFS' });
});

test('a writer that may not write the state folder reports EACCES with the path', async (t) => {
  if (!rootOnly(t)) return;
  const root = await tmpDir(t);
  await openUp(root);
  const stateDir = path.join(root, 'state');
  await new AppStore(stateDir, 'web').record(entry('web', 1));
  const user = await testUser(t);
  const script = path.join(root, 'append.mts');
  await writeFile(script, `import { AppStore } from ${JSON.stringify(path.join(ROOT, 'src', 'state.ts'))};
try { await new AppStore(${JSON.stringify(stateDir)}, 'web').save({}); } catch (err) { process.stdout.write(JSON.stringify(err.toJSON())); }
`);
  await chmod(script, 0o644);
  const out = await run('setpriv', ['--reuid', String(user.uid), '--regid', String(user.gid), '--clear-groups', process.execPath, '--import', 'tsx', script], { cwd: ROOT });
  const file = appStateFile(stateDir, 'web');
  assert.deepEqual(JSON.parse(out.stdout), { code: 'STATE_WRITE_FAILED', message: `${file}: could not write the state file (found: EACCES: permission denied)`,
    file, rule: 'could not write the state file', found: 'EACCES: permission denied', errno: 'EACCES' });
});

test('the layout before issue 9 is migrated once: the global journal split per app (oldest first, before anything new), the state files moved', async (t) => {
  const root = await tmpDir(t);
  const stateDir = path.join(root, 'state');
  await mkdir(path.join(stateDir, 'apps'), { recursive: true });
  const old = legacyJournalFile(stateDir);
  const lines = [entry('web', 1), entry('api', 2), entry('web', 3), entry('api', 4), entry('web', 5)].map((e) => JSON.stringify(e));
  // Written over the years: a BOM, a CRLF, a torn line, another app's name that is not a folder name.
  await writeFile(old, `\ufeff${lines[0]}\r\n${lines[1]}\n{"time": "20\n${lines[2]}\n${JSON.stringify(entry('../etc', 9))}\n${lines[3]}\n${lines[4]}\n`, { mode: 0o644 });
  await writeFile(legacyStateFile(stateDir, 'web'), JSON.stringify(state('web', entry('web', 5))), { mode: 0o644 });
  await writeFile(legacyStateFile(stateDir, 'api'), '{"app": "api"', { mode: 0o644 });
  // Before the agent migrates, readers fall back to the old state file.
  assert.equal((await readAppState(stateDir, 'web'))?.lastDeploy?.durationMs, 5);
  // Something the new agent journaled already for web (a crash after a partial start): it stays after the old entries.
  await new Journal(journalFile(stateDir, 'web')).append(entry('web', 6));

  const told: Damage[] = [];
  const gid = 54_321;
  const result = await migrateStateDir(stateDir, [{ name: 'web', gid }, { name: 'api', gid }], { onDamaged: (d) => told.push(d) });
  assert.deepEqual(result.journals, { web: 3, api: 2 });
  assert.deepEqual(result.states, ['web']);
  assert.deepEqual((await readHistory(stateDir, 'web')).map((e) => e.durationMs), [1, 3, 5, 6]);
  assert.deepEqual((await readHistory(stateDir, 'api')).map((e) => e.durationMs), [2, 4]);
  assert.deepEqual(told.map((d) => [path.basename(d.file), d.line]), [['api.json', undefined], ['history.jsonl.migrating', 3], ['history.jsonl.migrating', 5]]);
  assert.deepEqual((await readdir(stateDir)).sort(), ['apps']);
  assert.deepEqual((await readdir(path.join(stateDir, 'apps'))).filter((n) => !n.startsWith('api.json.damaged-')).sort(), ['api', 'web']);
  assert.equal((await readAppState(stateDir, 'web'))?.lastDeploy?.durationMs, 5);
  if (isRoot()) {
    for (const f of [path.join(stateDir, 'apps', 'web'), journalFile(stateDir, 'web'), appStateFile(stateDir, 'web'), journalFile(stateDir, 'api')]) {
      assert.equal((await stat(f)).gid, gid, f);
    }
  }
  assert.equal((await mode(journalFile(stateDir, 'api'))).mode, '640');

  // Idempotent.
  assert.deepEqual(await migrateStateDir(stateDir, [{ name: 'web', gid }]), { journals: {}, states: [], removed: [] });

  // A run that crashed after putting the journals in place, before removing the old file, is not done twice.
  const crashed = path.join(root, 'crashed');
  await new Journal(journalFile(crashed, 'web')).appendLines([lines[0]!, lines[2]!, lines[4]!]);
  await writeFile(`${legacyJournalFile(crashed)}.migrating`, `${lines[0]}\n${lines[2]}\n${lines[4]}\n`);
  assert.deepEqual((await migrateStateDir(crashed, [{ name: 'web' }])).journals, {});
  assert.deepEqual((await readHistory(crashed, 'web')).map((e) => e.durationMs), [1, 3, 5]);
  assert.deepEqual(await readdir(crashed), ['apps']);
});
