/**
 * App output to journald (issue 12, item 3): the stream protocol against a
 * real systemd-journald, started by the test in a journal namespace of its
 * own (`systemd-journald NS`: its sockets in /run/systemd/journal.NS/,
 * read with journalctl --namespace NS), so the host's journal, or its
 * absence, is never touched and other tests never see it. The agent runs
 * in-process, pointed at that journald: stdout at priority 6, stderr at 3,
 * a "<4>" prefix honoured, written by the app's own process and user, kept
 * across an agent restart, and quoted when a release exits at once. A
 * journald that refuses the connection sends that start to app.log, said
 * once. With the host's own journald (when it runs one), the real agent
 * process and `relink logs`.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { Agent } from '../src/agent.js';
import type { JournalTarget } from '../src/appoutput.js';
import { writeFileAtomic } from '../src/atomicWrite.js';
import { loadConfig } from '../src/config.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { JOURNAL_STDOUT, streamHeader } from '../src/journalstream.js';
import { createLogger } from '../src/log.js';
import { needProgram, openUp, rootOnly, testUser } from './accounts.js';
import { defer, reapMarkedAfter, relinkCli, startAgent, tmpDir, waitFor, type LogLine } from './helpers.js';

const run = promisify(execFile);
const JOURNALD = '/lib/systemd/systemd-journald';

test('the stream header is the seven lines journald reads: identifier, empty unit, priority, level prefix, no forwarding', () => {
  assert.equal(streamHeader({ identifier: 'web', priority: 6 }), 'web\n\n6\n1\n0\n0\n0\n');
  assert.equal(streamHeader({ identifier: 'web', priority: 3, levelPrefix: false }), 'web\n\n3\n0\n0\n0\n0\n');
  assert.throws(() => streamHeader({ identifier: 'a\nb', priority: 6 }), /one line/);
  assert.throws(() => streamHeader({ identifier: 'web', priority: 8 }), /0 to 7/);
});

/** A systemd-journald of its own namespace, stopped (by PID) and its files removed when the test ends. */
async function namespacedJournald(t: TestContext): Promise<JournalTarget> {
  const namespace = `relinktest${randomBytes(4).toString('hex')}`;
  const socket = `/run/systemd/journal.${namespace}/stdout`;
  const child: ChildProcess = spawn(JOURNALD, [namespace], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  defer(t, async () => {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
    await rm(path.dirname(socket), { recursive: true, force: true });
    for (const top of ['/var/log/journal', '/run/log/journal']) {
      for (const name of await readdir(top).catch(() => [] as string[])) {
        if (name.endsWith(`.${namespace}`)) await rm(path.join(top, name), { recursive: true, force: true });
      }
    }
  });
  await waitFor(`systemd-journald ${namespace} to listen`, () => {
    if (child.exitCode !== null) throw new Error(`systemd-journald exited ${child.exitCode}: ${stderr}`);
    return existsSync(socket);
  });
  return { socket, namespace };
}

interface Entry {
  readonly MESSAGE: string;
  readonly PRIORITY: string;
  readonly SYSLOG_IDENTIFIER: string;
  readonly _UID: string;
  readonly _PID: string;
  readonly _TRANSPORT: string;
}

async function entries(target: JournalTarget, identifier: string): Promise<Entry[]> {
  const { stdout } = await run('journalctl', [`--namespace=${target.namespace}`, '-t', identifier, '-o', 'json', '--no-pager'], { maxBuffer: 16 * 1024 * 1024 });
  return stdout.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Entry);
}

/** An app "web" of shell-script releases, run as `user`; the agent config (logFile unset). */
async function shellApp(t: TestContext, releases: Record<string, string>, user: { name: string }): Promise<{ root: string; config: string; stateDir: string; currentFile: string; dir: string }> {
  const root = await tmpDir(t, 'relink-journald-');
  const dir = path.join(root, 'web');
  const releasesDir = path.join(dir, 'release');
  await mkdir(releasesDir, { recursive: true });
  for (const [r, body] of Object.entries(releases)) {
    await writeFile(path.join(releasesDir, `app.${r}`), `#!/bin/sh\n${body}\n`);
    await chmod(path.join(releasesDir, `app.${r}`), 0o755);
    await writeFile(path.join(releasesDir, `cfg.${r}`), '');
  }
  const currentFile = path.join(releasesDir, 'current.conf');
  const first = Object.keys(releases)[0]!;
  await writeFile(currentFile, `${JSON.stringify({ 'bin.file': `app.${first}`, 'cfg.file': `cfg.${first}` })}\n`);
  await openUp(dir);
  const config = path.join(root, 'config.json');
  const stateDir = path.join(root, 'state');
  await writeFile(config, JSON.stringify({
    stateDir,
    apps: [{ name: 'web', dir, user: user.name, reload: { strategy: 'restart', timeoutMs: 5_000 }, health: { settleMs: 300, deadlineMs: 5_000 }, supervise: { checkMs: 100, backoffMs: 100 } }],
  }));
  reapMarkedAfter(t, root);
  return { root, config, stateDir, currentFile, dir };
}

function agentLog(): { lines: LogLine[]; log: ReturnType<typeof createLogger> } {
  const lines: LogLine[] = [];
  return { lines, log: createLogger('debug', { write: (s: string) => { lines.push(JSON.parse(s) as LogLine); } }) };
}

async function nth(stateDir: string, n: number): Promise<HistoryEntry> {
  return waitFor(`history entry #${n}`, async () => (await readHistory(stateDir, 'web'))[n - 1], { timeoutMs: 30_000 });
}

const TICKING = `echo "web 1.0 out: started"
echo "web 1.0 err: started" >&2
echo "<4>web 1.0 warning through the level prefix"
i=0
while :; do i=$((i+1)); echo "web 1.0 tick $i"; sleep 0.1; done`;

test('journald (a namespace of its own): stdout at priority 6, stderr at 3, "<N>" prefixes honoured, written by the app\'s process and user; the app keeps its streams across an agent restart; a release that exits at once is quoted from the journal', async (t) => {
  if (!rootOnly(t)) return;
  if (!await needProgram(t, JOURNALD, 'systemd')) return;
  const target = await namespacedJournald(t);
  const user = await testUser(t);
  const a = await shellApp(t, { '1.0': TICKING, '2.0': 'echo "fatal: cannot bind 127.0.0.1:1 (test)" >&2\nexit 3' }, user);
  const config = await loadConfig(a.config);

  const first = agentLog();
  const agent1 = await Agent.start(config, first.log, { journal: target });
  defer(t, () => agent1.close());
  const deployed = await nth(a.stateDir, 1);
  assert.equal(deployed.outcome, 'deployed', deployed.reason ?? '');
  const pid = deployed.pidAfter!;
  const started = await waitFor('the first lines in the journal', async () => {
    const e = await entries(target, 'web');
    return e.filter((x) => / started$| prefix$/.test(x.MESSAGE)).length === 3 ? e : undefined;
  });
  const byMessage = new Map(started.map((e) => [e.MESSAGE, e]));
  assert.equal(byMessage.get('web 1.0 out: started')?.PRIORITY, '6');
  assert.equal(byMessage.get('web 1.0 err: started')?.PRIORITY, '3');
  assert.equal(byMessage.get('web 1.0 warning through the level prefix')?.PRIORITY, '4');
  for (const e of started) {
    assert.equal(e.SYSLOG_IDENTIFIER, 'web');
    assert.equal(e._TRANSPORT, 'stdout');
    // journald records the process that wrote, not the agent that connected.
    assert.equal(e._UID, String(user.uid));
    assert.equal(e._PID, String(pid));
  }
  assert.equal(existsSync(path.join(a.dir, 'app.log')), false, 'nothing went to app.log');

  // The agent goes away and comes back: the app, and its streams, are untouched.
  await agent1.close();
  const ticks = async () => (await entries(target, 'web')).filter((e) => e.MESSAGE.startsWith('web 1.0 tick ')).length;
  const atRestart = await ticks();
  const second = agentLog();
  const agent2 = await Agent.start(config, second.log, { journal: target });
  defer(t, () => agent2.close());
  await waitFor('the second agent to adopt the app', () => second.lines.some((l) => l.msg === 'adopted running app'));
  await waitFor('ticks written after the agent restart', async () => (await ticks()) >= atRestart + 5);
  assert.equal((await readHistory(a.stateDir, 'web')).length, 1, 'the app was not restarted');

  // A release that exits at once: its own last words, from the journal, in the reason.
  await writeFileAtomic(a.currentFile, `${JSON.stringify({ 'bin.file': 'app.2.0', 'cfg.file': 'cfg.2.0' })}\n`);
  const failed = await nth(a.stateDir, 2);
  assert.equal(failed.outcome, 'rolled_back');
  assert.equal(failed.code, 'APP_EXITED');
  // Said by whichever look saw it gone: the start's ("right after start") or, when it was found alive first, the health check's ("N ms after the deploy").
  assert.match(failed.reason ?? '', /exited (right after start \(|\d+ ms after the deploy, .*, )exit code 3\)?; its last output: fatal: cannot bind 127\.0\.0\.1:1 \(test\)/);
  assert.ok(![...first.lines, ...second.lines].some((l) => l['code'] === 'JOURNAL_UNAVAILABLE'));
});

test('journald refusing the connection: that start writes to app.log, said once with the reason; a later start falls back again without saying it again', async (t) => {
  if (!rootOnly(t)) return;
  if (!await needProgram(t, '/usr/bin/python3', 'python3')) return;
  const user = await testUser(t);
  const a = await shellApp(t, { '1.0': 'echo "web out"\necho "web err" >&2\nexec sleep 1000' }, user);
  // A socket file nobody listens on: connect() is refused (ECONNREFUSED).
  const socket = path.join(a.root, 'stdout');
  await run('/usr/bin/python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', socket]);
  const { lines, log } = agentLog();
  const agent = await Agent.start(await loadConfig(a.config), log, { journal: { socket } });
  defer(t, () => agent.close());
  const first = await nth(a.stateDir, 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const appLog = path.join(a.dir, 'app.log');
  await waitFor('the app\'s output in app.log', async () => (await readFile(appLog, 'utf8').catch(() => '')) === 'web out\nweb err\n');
  const said = () => lines.filter((l) => l['code'] === 'JOURNAL_UNAVAILABLE');
  assert.equal(said().length, 1);
  assert.equal(said()[0]!.level, 'warn');
  assert.match(said()[0]!.msg, new RegExp(`cannot connect to journald at ${socket}: ECONNREFUSED: this start of the app writes its output to ${appLog} instead`));
  // A crash and its restart: the same fallback, not said again.
  process.kill(first.pidAfter!, 'SIGKILL');
  await waitFor('the restarted app\'s output', async () => (await readFile(appLog, 'utf8').catch(() => '')).split('web out').length === 3, { timeoutMs: 20_000 });
  assert.equal(said().length, 1);
});

test('the host\'s journald (when it runs one): the real agent sends an app without logFile there, and relink logs reads it', async (t) => {
  if (!existsSync(JOURNAL_STDOUT)) return t.skip(`no journald on this host (${JOURNAL_STDOUT} is missing); the opt-in systemd end-to-end test (npm run test:systemd) checks it under a booted systemd`);
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const tag = randomBytes(4).toString('hex');
  const a = await shellApp(t, { '1.0': `echo "out ${tag}"\necho "err ${tag}" >&2\nexec sleep 1000` }, user);
  // A name of its own in the host's journal.
  const config = JSON.parse(await readFile(a.config, 'utf8')) as { apps: Array<Record<string, unknown>> };
  config.apps[0]!['name'] = `relinktest-${tag}`;
  await writeFile(a.config, JSON.stringify(config));
  startAgent(t, a.config);
  const r = await waitFor('relink logs to show both lines', async () => {
    const out = await relinkCli(['logs', '--config', a.config, '-n', '10']);
    return out.stdout.includes(`out ${tag}`) && out.stdout.includes(`err ${tag}`) ? out : undefined;
  }, { timeoutMs: 30_000 });
  assert.equal(r.code, 0, r.stderr);
  const { stdout } = await run('journalctl', ['-t', `relinktest-${tag}`, '-o', 'json', '--no-pager']);
  const got = stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Entry);
  assert.equal(got.find((e) => e.MESSAGE === `out ${tag}`)?.PRIORITY, '6');
  assert.equal(got.find((e) => e.MESSAGE === `err ${tag}`)?.PRIORITY, '3');
});

test('a host without journald: the app\'s output goes to app.log, said once at info naming the file (nothing said where it went)', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const a = await shellApp(t, { '1.0': 'echo "web out"\nexec sleep 1000' }, user);
  const socket = path.join(a.root, 'no-journald-here');
  const { lines, log } = agentLog();
  const agent = await Agent.start(await loadConfig(a.config), log, { journal: { socket } });
  defer(t, () => agent.close());
  const first = await nth(a.stateDir, 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const appLog = path.join(a.dir, 'app.log');
  await waitFor('the app\'s output in app.log', async () => (await readFile(appLog, 'utf8').catch(() => '')) === 'web out\n');
  const said = () => lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('no journald on this host'));
  assert.equal(said().length, 1);
  assert.equal(said()[0]!.level, 'info');
  assert.equal(said()[0]!.msg, `no journald on this host (${socket} is not a socket): the app writes its output to ${appLog} instead (rotated by size; relink logs web reads it)`);
  process.kill(first.pidAfter!, 'SIGKILL');
  await waitFor('the restarted app\'s output', async () => (await readFile(appLog, 'utf8').catch(() => '')).split('web out').length === 3, { timeoutMs: 20_000 });
  assert.equal(said().length, 1, 'said once, not on every start');
});
