/**
 * Notifications (issue 13, item 3). The real agent tells real notifiers:
 * HTTP servers on 127.0.0.1 started here and shell scripts that write what
 * they read on stdin to a file; deploys, an automatic rollback and a crash
 * loop given up on; notifiers that hang, answer 503 then 200, answer 4xx;
 * the global list and an app's own; a reload changing them; who the
 * commands run as. Then the queue and its backoff against a fake clock,
 * behind src/notifications.ts's Send and Clock.
 */
import assert from 'node:assert/strict';
import { chmod, chown, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';
import { NOTIFY_MAX_DELAY_MS, parseConfig, type AgentConfig } from '../src/config.js';
import { RelinkErrors } from '../src/errors.js';
import { notifierProgramProblems } from '../src/notifiers.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { STOP_BUDGET } from '../src/app.js';
import { Channel, Notifications, NOTIFY_QUEUE_MAX, NOTIFY_STOP_MS, retryDelay, type AppEvent, type AttemptResult, type Clock, type NotifyPayload, type Send, type Target } from '../src/notifications.js';
import { redactUrl } from '../src/redact.js';
import { openUp, rootOnly, testUser } from './accounts.js';
import { fixture, nthEntry, servedBy, setCurrentText, type Fixture } from './fixture.js';
import { alive, defer, recordedRuns, relinkCli, ROOT, startAgent, tmpDir, waitFor, type AgentProc, type LogLine } from './helpers.js';

// --- real notifiers --------------------------------------------------------

interface Received {
  readonly headers: http.IncomingHttpHeaders;
  readonly url: string;
  readonly body: NotifyPayload;
}

interface Hook {
  /** The URL to configure (with a path, a query and userinfo when asked). */
  readonly url: string;
  readonly received: Received[];
  /** Requests still waiting for an answer (a hanging server's). */
  readonly open: () => number;
  /** When (Date.now()) each unanswered request was given up by the client, in order. */
  readonly dropped: number[];
}

/**
 * A real HTTP server on 127.0.0.1: every POST is recorded, then answered
 * with what `answer` says for the request (its 1-based number): a status,
 * or 'hang' (never answered; closed when the test ends).
 */
async function hookServer(t: TestContext, answer: (n: number, body: NotifyPayload) => number | 'hang' = () => 200, suffix = '/hook'): Promise<Hook> {
  const received: Received[] = [];
  const dropped: number[] = [];
  let open = 0;
  const server = http.createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => { text += c; });
    req.on('end', () => {
      const body = JSON.parse(text) as NotifyPayload;
      received.push({ headers: req.headers, url: req.url ?? '', body });
      const a = answer(received.length, body);
      if (a === 'hang') {
        open += 1;
        res.on('close', () => {
          open -= 1;
          dropped.push(Date.now());
        });
        return;
      }
      res.writeHead(a, { 'content-type': 'text/plain' }).end(a >= 400 ? `no thanks (${a})` : 'ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  defer(t, () => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}${suffix}`, received, open: () => open, dropped };
}

/** A shell script notifier: writes its stdin and what it saw (uid, folder, RELINK_* variables) to `out`, one pair of files per run. */
async function recorder(dir: string, out: string, name = 'notify.sh', tail = ''): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, `#!/bin/sh
n=$(date +%s%N); f="${out}/$n.$RELINK_EVENT"
cat > "$f.json"
printf 'uid=%s pwd=%s app=%s notifier=%s marker=%s\\n' "$(id -u)" "$(pwd)" "$RELINK_APP_NAME" "$RELINK_NOTIFIER" "\${RELINK_APP-unset}" > "$f.env"
${tail}`);
  await chmod(file, 0o755);
  return file;
}

/**
 * Each run of a script that notes its PID in `pids` is SIGKILLed, with its
 * process group, when the test ends: an agent that failed to end it (a
 * regression, or killed by the helper) would leave it sleeping.
 */
function reapRecordedAfter(t: TestContext, pids: string): void {
  defer(t, async () => {
    for (const name of await readdir(pids).catch(() => [])) {
      const pid = Number(await readFile(path.join(pids, name), 'utf8'));
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
  });
}

interface Run {
  readonly payload: NotifyPayload;
  readonly env: Record<string, string>;
}

/** The runs `recorder` made in `out`, oldest first. */
async function runs(out: string): Promise<Run[]> {
  return (await recordedRuns(out)).map((r) => ({ payload: r.json as NotifyPayload, env: r.env }));
}

/** The fixture app (releases 1.0, 2.0, crash, flaky, ...) with `notify` lists added to its config, and the agent on it. */
async function withNotify(t: TestContext, global: unknown[], app: unknown[] = [], opts: { supervise?: Record<string, unknown> } = {}): Promise<Fixture> {
  const f = await fixture(t, { agent: false, supervise: opts.supervise });
  await writeNotify(f.config, global, app);
  f.agent = startAgent(t, f.config);
  return f;
}

async function writeNotify(file: string, global: unknown[], app: unknown[] = []): Promise<void> {
  const config = JSON.parse(await readFile(file, 'utf8')) as { notify?: unknown[]; apps: Array<Record<string, unknown>> };
  config.notify = global;
  config.apps[0]!.notify = app;
  await writeFile(file, `${JSON.stringify(config, null, 2)}\n`);
}

function logOf(agent: AgentProc, what: string, pred: (l: LogLine) => boolean): Promise<LogLine> {
  return agent.waitForLog(what, pred, { timeoutMs: 30_000 });
}

/** What a notifier must receive for a journaled entry: the entry as journaled, after `event` and `host`. */
const told = (e: HistoryEntry): NotifyPayload => ({ event: e.outcome, host: os.hostname(), ...e });

test('a URL and a command are told of deployed and rolled_back with the entry as journaled, and of a crash loop given up on (fatal); the URL\'s secrets are never logged', async (t) => {
  const root = await tmpDir(t, 'relink-notify-');
  const out = path.join(root, 'out');
  await mkdir(out);
  const script = await recorder(root, out);
  const server = await hookServer(t, () => 200, '/hook/T0000000/abcdefghijklmnopqrstuvwx?token=s3cr3t-query');
  const url = server.url.replace('http://', 'http://relink:s3cr3t-pass@');
  const f = await withNotify(t, [
    { on: ['deployed', 'rolled_back', 'fatal'], url },
    { on: ['rolled_back', 'failed', 'fatal'], command: [script] },
  ]);
  const first = await nthEntry(f, 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const e1 = await waitFor('the first deploy POSTed', () => server.received[0]);
  assert.deepEqual(e1.body, told(first));
  assert.equal(e1.headers['content-type'], 'application/json');
  assert.equal(e1.headers['x-relink-event'], 'deployed');
  assert.equal(e1.headers.authorization, `Basic ${Buffer.from('relink:s3cr3t-pass').toString('base64')}`, 'userinfo as basic auth');
  assert.equal(e1.url, '/hook/T0000000/abcdefghijklmnopqrstuvwx?token=s3cr3t-query');

  // An automatic rollback: both are told, with the entry as journaled.
  await setCurrentText(f.app, 'crash');
  const rolledBack = await nthEntry(f, 2);
  assert.equal(rolledBack.outcome, 'rolled_back');
  const e2 = await waitFor('the rollback POSTed', () => server.received[1]);
  assert.deepEqual(e2.body, told(rolledBack));
  const cmd = await waitFor('the rollback run through the command', async () => (await runs(out))[0]);
  assert.deepEqual(cmd.payload, told(rolledBack));
  // A global command runs as the agent (root here), in /, without the app's lineage marker.
  assert.deepEqual(cmd.env, { uid: String(process.getuid?.()), pwd: '/', app: 'web', notifier: 'notify[1]', marker: 'unset' });
  await servedBy(f.app, '1.0');

  // flaky passes its verdict, then exits 1.5 s after every start: a crash loop, given up on.
  await setCurrentText(f.app, 'flaky');
  const flaky = await nthEntry(f, 3);
  assert.equal(flaky.outcome, 'deployed', flaky.reason ?? '');
  const fatal = await waitFor('fatal POSTed', () => server.received.find((r) => r.body.event === 'fatal'), { timeoutMs: 30_000 });
  const flakyBin = path.join(f.app.releasesDir, 'app.flaky');
  const flakyCfg = path.join(f.app.releasesDir, 'cfg.flaky');
  assert.deepEqual({ ...fatal.body, time: 'T' }, {
    event: 'fatal', host: os.hostname(), time: 'T', app: 'web', outcome: 'fatal', action: 'none',
    from: { bin: flakyBin, cfg: flakyCfg }, to: { bin: flakyBin, cfg: flakyCfg },
    reason: 'app keeps crashing: 2 quick failures in a row (supervise.maxRetries: 2), each run shorter than supervise.stableMs (3000 ms); left alone until the next deploy, a re-save of current.conf, or relink start web',
    code: 'CRASH_LOOP', trigger: 'supervise', restarts: 2, failures: 2, maxRetries: 2,
  });
  const cmdFatal = await waitFor('fatal run through the command', async () => (await runs(out)).find((r) => r.payload.event === 'fatal'));
  assert.deepEqual(cmdFatal.payload, fatal.body);
  assert.deepEqual(server.received.map((r) => r.body.event), ['deployed', 'rolled_back', 'deployed', 'fatal']);
  assert.deepEqual((await runs(out)).map((r) => r.payload.event), ['rolled_back', 'fatal'], 'the command only for the events its "on" names');

  // Logged with the notifier, its URL redacted; no secret in any line.
  const sent = await logOf(f.agent, 'the fatal notification in the log', (l) => l.notifier === 'notify[0]' && l.event === 'fatal');
  assert.equal(sent.url, 'http://***@127.0.0.1:' + new URL(server.url).port + '/hook/T0000000/***?***');
  assert.equal(sent.status, 'HTTP 200');
  for (const line of f.agent.raw) assert.doesNotMatch(line, /s3cr3t/, line);
});

test('a notifier that hangs (a server that never answers, a command that sleeps) delays no deploy; each is timed out and logged', async (t) => {
  const root = await tmpDir(t, 'relink-notify-');
  const out = path.join(root, 'out');
  await mkdir(out);
  const pids = path.join(root, 'pids');
  await mkdir(pids);
  reapRecordedAfter(t, pids);
  // The command notes its PID, then sleeps far past its timeout.
  const sleeper = await recorder(root, out, 'sleeper.sh', `echo $$ > "${pids}/$RELINK_EVENT.$n"\nsleep 300\n`);
  const server = await hookServer(t, () => 'hang');
  // A timeout far longer than a deploy, so that "still hanging when the next verdict came" is a matter of order.
  const f = await withNotify(t, [
    { on: ['deployed'], url: server.url, timeoutMs: 8_000, retries: 0 },
    { on: ['deployed'], command: [sleeper], timeoutMs: 8_000, retries: 0 },
  ]);
  assert.equal((await nthEntry(f, 1)).outcome, 'deployed');
  // Both notifiers are stuck on the first deploy now ...
  await waitFor('the server holding the first POST', () => server.open() === 1);
  const firstPid = Number(await waitFor('the sleeping command', async () => {
    const files = await readdir(pids);
    return files[0] === undefined ? undefined : readFile(path.join(pids, files[0]), 'utf8');
  }));
  // ... and the next deploy is judged and journaled meanwhile.
  await setCurrentText(f.app, '2.0');
  const second = await nthEntry(f, 2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  assert.equal(await alive(firstPid), true, 'the first command still sleeping when the next verdict was journaled');
  await servedBy(f.app, '2.0');

  // Each is timed out, logged with the notifier and the reason; the next event is then sent.
  const posted = await logOf(f.agent, 'the POST timed out', (l) => l.notifier === 'notify[0]' && l.level === 'warn');
  assert.equal(posted.status, 'no answer within 8000 ms (timeoutMs)');
  assert.equal(posted.code, 'NOTIFY_FAILED');
  assert.match(posted.msg, /^notifier notify\[0\] failed for deployed of web: no answer within 8000 ms \(timeoutMs\) \(gave up after 1 attempts\); nothing else is affected$/);
  assert.ok(Date.parse(second.time) < server.dropped[0]!, 'the next verdict was journaled while the first POST still hung');
  const ran = await logOf(f.agent, 'the command timed out', (l) => l.notifier === 'notify[1]' && l.level === 'warn');
  assert.equal(ran.status, 'killed after 8000 ms (timeoutMs)');
  assert.equal(ran.command, sleeper);
  await waitFor('the first command ended', async () => !(await alive(firstPid)));
  await waitFor('the second deploy sent to the hanging server', () => server.received.length === 2);
  const first = (await readHistory(f.stateDir, 'web'))[0]!;
  assert.deepEqual(server.received.map((r) => r.body.time), [first.time, second.time], 'in order');
});

test('retries: a server answering 503 twice then 200 gets three attempts; a 4xx is not retried; both logged', async (t) => {
  const flaky = await hookServer(t, (n) => (n <= 2 ? 503 : 200));
  const refusing = await hookServer(t, () => 404);
  const f = await withNotify(t, [
    { on: ['deployed'], url: flaky.url, retries: 3, backoffMs: 50 },
    { on: ['deployed'], url: refusing.url, retries: 3, backoffMs: 50 },
  ]);
  const first = await nthEntry(f, 1);
  const sent = await logOf(f.agent, 'delivered on the third attempt', (l) => l.notifier === 'notify[0]' && String(l.msg).startsWith('notified'));
  assert.equal(sent.attempts, 3);
  assert.equal(flaky.received.length, 3);
  for (const r of flaky.received) assert.deepEqual(r.body, told(first), 'the same payload each time');
  const retried = f.agent.lines.filter((l) => l.notifier === 'notify[0]' && String(l.msg).includes('retrying in'));
  assert.deepEqual(retried.map((l) => [l.status, l.delayMs]), [['HTTP 503', 50], ['HTTP 503', 100]], 'backoff doubles');

  const failed = await logOf(f.agent, 'the 404 given up at once', (l) => l.notifier === 'notify[1]' && l.level === 'warn');
  assert.equal(failed.status, 'HTTP 404');
  assert.equal(failed.detail, 'no thanks (404)');
  assert.equal(failed.attempts, 1);
  assert.match(String(failed.msg), /\(not retried\)/);
  // That was the last word on it: one request only.
  assert.equal(refusing.received.length, 1);
});

test('an app\'s own notify list adds to the global one; a reload changes both lists without touching the app', async (t) => {
  const global = await hookServer(t);
  const mine = await hookServer(t);
  const later = await hookServer(t);
  const f = await withNotify(t, [{ on: ['deployed', 'refused'], url: global.url }], [{ on: ['deployed'], url: mine.url }]);
  const first = await nthEntry(f, 1);
  await waitFor('both lists told', () => global.received.length === 1 && mine.received.length === 1);
  assert.deepEqual(global.received[0]!.body, told(first));
  assert.deepEqual(mine.received[0]!.body, told(first));
  // A refusal: only the global list names it.
  await writeFile(f.app.currentFile, '{"bin.file": "app.1.0"}\n');
  const refused = await nthEntry(f, 2);
  assert.equal(refused.outcome, 'refused');
  await waitFor('the refusal told', () => global.received.length === 2);
  const v1 = await servedBy(f.app, '1.0');

  // The global list now goes to `later`, the app's own is gone; a second
  // global notifier names a program that does not exist: said by the reload
  // (not at the first failure, hours later), the rest applied.
  const missing = path.join(f.root, 'no-such-dir', 'page-me');
  await writeNotify(f.config, [{ on: ['deployed'], url: later.url }, { on: ['failed'], command: [missing] }], []);
  const reload = await relinkCli(['reload', '--wait', '--config', f.config]);
  assert.equal(reload.code, 0, reload.stderr);
  assert.equal(reload.stdout, `reloaded ${f.config}; unchanged: web; agent settings changed: notify, web.notify\nwarning: ${f.config}: "notify[1].command": must name a program that exists (found: ${missing} does not exist)\n`);
  await logOf(f.agent, 'the new lists logged', (l) => String(l.msg).startsWith('notifiers: 2 in force (2 new, 2 removed)'));
  assert.ok(f.agent.lines.some((l) => String(l.msg).startsWith('config reloaded') && Array.isArray(l.unchanged) && (l.unchanged as string[]).includes('web')), 'a notify change is no change of the app');
  assert.equal((await servedBy(f.app, '1.0')).pid, v1.pid, 'the app untouched');

  await setCurrentText(f.app, '2.0');
  const second = await nthEntry(f, 3);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  await waitFor('the new list told', () => later.received.length === 1);
  assert.deepEqual(later.received[0]!.body, told(second));
  // Removed notifiers hear nothing new: they had nothing queued, and each event is queued when it happens.
  assert.equal(global.received.length, 2);
  assert.equal(mine.received.length, 1);
});

test('who runs a command: an app\'s own as the app\'s user in its folder, a global one as root; a global program the app\'s user could write is not run', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const root = await tmpDir(t, 'relink-notify-');
  const f = await fixture(t, { agent: false });
  await openUp(f.app.releasesDir);
  const appOut = path.join(f.app.dir, 'out');
  await mkdir(appOut);
  await chown(appOut, user.uid, user.gid);
  const appScript = await recorder(f.app.dir, appOut, 'notify-app.sh');
  await chown(appScript, user.uid, user.gid);
  const rootOut = path.join(root, 'out');
  await mkdir(rootOut);
  const rootScript = await recorder(root, rootOut, 'notify-root.sh');
  const config = JSON.parse(await readFile(f.config, 'utf8')) as { notify?: unknown[]; apps: Array<Record<string, unknown>> };
  config.apps[0] = { ...config.apps[0], user: user.name, allowRoot: false, notify: [{ on: ['deployed'], command: ['./notify-app.sh'] }] };
  // The app's user owns notify-app.sh: as a global (root) command it must not run.
  config.notify = [{ on: ['deployed'], command: [rootScript] }, { on: ['deployed'], command: [appScript] }];
  await writeFile(f.config, `${JSON.stringify(config, null, 2)}\n`);
  f.agent = startAgent(t, f.config);
  const first = await nthEntry(f, 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');

  const asApp = await waitFor('the app\'s command', async () => (await runs(appOut))[0]);
  assert.deepEqual(asApp.env, { uid: String(user.uid), pwd: f.app.dir, app: 'web', notifier: 'apps[0].notify[0]', marker: 'unset' });
  assert.deepEqual(asApp.payload, told(first));
  const asRoot = await waitFor('the global command', async () => (await runs(rootOut))[0]);
  assert.deepEqual(asRoot.env, { uid: '0', pwd: '/', app: 'web', notifier: 'notify[0]', marker: 'unset' });

  const refused = await logOf(f.agent, 'the untrusted program refused', (l) => l.notifier === 'notify[1]' && l.level === 'warn');
  assert.equal(refused.code, 'UNTRUSTED_PATH');
  assert.match(String(refused.status), new RegExp(`^not run: ${f.config}: "notify\\[1\\]\\.command": must be writable by nobody but root .*\\(found: ${appScript} is owned by ${user.name} \\(uid ${user.uid}\\), mode 0755\\)$`));
  assert.equal((await runs(appOut)).length, 1, 'run once, as the app\'s command only');
});

test('the agent stops without waiting on a notifier that hangs: what is left is abandoned, logged, and the command killed', async (t) => {
  const root = await tmpDir(t, 'relink-notify-');
  const out = path.join(root, 'out');
  await mkdir(out);
  const pids = path.join(root, 'pids');
  await mkdir(pids);
  reapRecordedAfter(t, pids);
  const sleeper = await recorder(root, out, 'sleeper.sh', `echo $$ > "${pids}/$n"\ntrap "" TERM\nsleep 300\n`);
  const server = await hookServer(t, () => 'hang');
  const f = await withNotify(t, [
    { on: ['deployed'], url: server.url, timeoutMs: 600_000, retries: 10 },
    { on: ['deployed'], command: [sleeper], timeoutMs: 600_000, retries: 10 },
  ]);
  assert.equal((await nthEntry(f, 1)).outcome, 'deployed');
  await waitFor('the server holding the POST', () => server.open() === 1);
  const pid = Number(await waitFor('the sleeping command', async () => {
    const files = await readdir(pids);
    return files[0] === undefined ? undefined : readFile(path.join(pids, files[0]), 'utf8');
  }));
  // Exits by itself (the helper would SIGKILL it after 20 s and report no exit code).
  assert.equal(await f.agent.stop(), 0);
  const lines = f.agent.lines.filter((l) => String(l.msg).includes('abandoned'));
  assert.deepEqual(lines.map((l) => l.notifier).sort(), ['notify[0]', 'notify[1]']);
  assert.match(String(lines[0]!.msg), /^the agent is stopping and notify\[\d\] did not finish within 2000 ms: 1 notification to notify\[\d\] abandoned \(deployed of web\)$/);
  assert.equal(await alive(pid), false, 'the command (which ignores SIGTERM) was killed with its group');
  await waitFor('the POST cut', () => server.open() === 0);
});

test('a malformed notifier is refused when the config is read: one message per problem naming the file, the key, the rule and what was found (a URL\'s secrets redacted)', () => {
  let err: unknown;
  try {
    parseConfig(JSON.stringify({
      notify: [
        { on: [], url: 'ftp://relink:s3cr3t@files.example.com/drop?token=s3cr3t' },
        { on: ['deployed', 'deploy'], command: ['page-me'] },
        { on: ['fatal'] },
        { on: ['failed'], url: 'http://127.0.0.1:9000/hook', retries: 11 },
        { on: ['failed'], url: 'http://127.0.0.1:99999/hook' },
      ],
      apps: [{ name: 'web', dir: '/srv/web', notify: [{ on: ['refused'], url: 'mailto:ops@example.com' }, { on: ['stopped'], command: ['./page-me'] }] }],
    }), '/etc/relink/config.json');
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof RelinkErrors, String(err));
  assert.deepEqual(err.problems.map((p) => p.message), [
    '/etc/relink/config.json: "notify[0].on": must name at least one event, e.g. ["rolled_back", "failed", "fatal"] (found: [])',
    '/etc/relink/config.json: "notify[0].url": must be an http:// or https:// URL such as "http://127.0.0.1:9000/hook" (found: "ftp://***@files.example.com/drop?***")',
    '/etc/relink/config.json: "notify[1].on[1]": must be one of "deployed", "refused", "rolled_back", "failed", "stopped", "fatal" (found: "deploy")',
    '/etc/relink/config.json: "notify[1].command": must name its program by absolute path: it runs as root, with no folder to resolve a relative one against (found: ["page-me"])',
    '/etc/relink/config.json: "notify[2]": needs "command" or "url" (or both): where the notification goes (found: {"on":["fatal"]})',
    '/etc/relink/config.json: "notify[3].retries": must be at most 10 (found: 11)',
    // An http URL that does not parse is not "not http(s)": its port is wrong (and, unparsed, it cannot be redacted part by part).
    '/etc/relink/config.json: "notify[4].url": must be a URL that parses: a host, and a port 1-65535 if any (such as "http://127.0.0.1:9000/hook") (found: "http://***"... (the rest not shown))',
    '/etc/relink/config.json: "apps[0].notify[0].url": must be an http:// or https:// URL such as "http://127.0.0.1:9000/hook" (found: "mailto:ops@example.com")',
  ]);
  assert.equal(err.problems[1]!.key, 'notify[0].url');
  assert.equal(err.problems[1]!.rule, 'must be an http:// or https:// URL such as "http://127.0.0.1:9000/hook"');
  assert.doesNotMatch(err.message, /s3cr3t/);
  // The interface's own example loads, with every default filled in; an app's relative command is fine (it runs in its dir).
  const ok = parseConfig(JSON.stringify({
    notify: [{ on: ['rolled_back', 'failed', 'fatal'], command: ['/usr/local/bin/page-me'] }, { on: ['deployed'], url: 'http://127.0.0.1:9000/hook' }],
    apps: [{ name: 'web', dir: '/srv/web', notify: [{ on: ['stopped'], command: ['./page-me'], url: 'https://hooks.example.com/x' }] }],
  }), '/etc/relink/config.json');
  assert.deepEqual(ok.notify, [
    { on: ['rolled_back', 'failed', 'fatal'], command: ['/usr/local/bin/page-me'], url: undefined, timeoutMs: 10_000, retries: 3, backoffMs: 1_000 },
    { on: ['deployed'], command: undefined, url: 'http://127.0.0.1:9000/hook', timeoutMs: 10_000, retries: 3, backoffMs: 1_000 },
  ]);
  assert.equal(ok.apps[0]!.notify.length, 1);
});

test('the notifiers\' stop budget fits after the apps\' inside the unit\'s TimeoutStopSec, with a margin', async () => {
  const unit = await readFile(path.join(ROOT, 'systemd', 'relink.service'), 'utf8');
  const stopS = Number(/^#?\s*TimeoutStopSec=(\d+)s$/m.exec(unit)?.[1]);
  assert.ok(stopS > 0, 'TimeoutStopSec= in the unit');
  assert.ok(STOP_BUDGET.waitMs + NOTIFY_STOP_MS.drainMs + NOTIFY_STOP_MS.killMs + 3_000 <= stopS * 1000,
    `${STOP_BUDGET.waitMs} + ${NOTIFY_STOP_MS.drainMs} + ${NOTIFY_STOP_MS.killMs} ms leaves too little of TimeoutStopSec=${stopS}s`);
});

test('redactUrl hides userinfo, query, fragment and token-like path segments, and keeps where it goes', () => {
  assert.equal(redactUrl('http://127.0.0.1:9000/hook'), 'http://127.0.0.1:9000/hook');
  assert.equal(redactUrl('https://user:pw@example.com/a/b?token=x#frag'), 'https://***@example.com/a/b?***#***');
  assert.equal(redactUrl('https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX'), 'https://hooks.slack.com/services/T00000000/B00000000/***');
  assert.equal(redactUrl('https://discord.com/api/webhooks/123456789012345678/abcdefghijklmnopqrstuvwxyz0123456789'), 'https://discord.com/api/webhooks/***/***');
  assert.equal(redactUrl('http://[::1]:8080/'), 'http://[::1]:8080/');
  assert.equal(redactUrl('http://exa mple.com/?token=x'), 'http://***', 'not a URL: cut after the scheme');
});

// --- the queue and its backoff, against a fake clock -------------------------

class FakeClock implements Clock {
  t = 0;
  readonly sleeps: number[] = [];
  readonly #waiting: Array<{ at: number; resolve: () => void }> = [];

  now(): number {
    return this.t;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    this.sleeps.push(ms);
    return new Promise((resolve) => {
      this.#waiting.push({ at: this.t + ms, resolve });
      signal?.addEventListener('abort', () => resolve(), { once: true });
    });
  }

  advance(ms: number): void {
    this.t += ms;
    for (const w of this.#waiting.filter((x) => x.at <= this.t)) {
      this.#waiting.splice(this.#waiting.indexOf(w), 1);
      w.resolve();
    }
  }
}

/** Let promise callbacks and immediates run until `cond` holds (no real time is waited for). */
async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (cond()) return;
    await new Promise((r) => setImmediate(r));
  }
  assert.fail(`never happened: ${what}`);
}

function capture() {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => { lines.push(JSON.parse(s) as Record<string, unknown>); } });
  return { log, lines };
}

function config(notify: unknown[], apps: Array<Record<string, unknown>> = [{ name: 'web', dir: '/srv/web' }]): AgentConfig {
  return parseConfig(JSON.stringify({ notify, apps }), '/etc/relink/config.json');
}

function entry(app: string, outcome: HistoryEntry['outcome'], n = 0): HistoryEntry {
  return {
    time: new Date(n * 1000).toISOString(), app, outcome, action: 'none', from: { bin: null, cfg: null }, to: { bin: null, cfg: null },
    reason: null, code: null, pidBefore: null, pidAfter: null, durationMs: 0, currentHash: `h${n}`, trigger: 'test',
  };
}

/**
 * A Send whose attempts answer as `answers` say, in turn (the last one from
 * then on); 'hang' answers only when aborted, or when the test calls release().
 */
function scripted(answers: Array<AttemptResult | 'hang'>) {
  const calls: Array<{ label: string; payload: NotifyPayload; signal: AbortSignal }> = [];
  const hanging: Array<(r: AttemptResult) => void> = [];
  const send: Send = (target: Target, payload: NotifyPayload, signal: AbortSignal) => {
    calls.push({ label: target.label, payload, signal });
    const a = answers[Math.min(calls.length - 1, answers.length - 1)]!;
    if (a !== 'hang') return Promise.resolve(a);
    return new Promise((resolve) => {
      hanging.push(resolve);
      signal.addEventListener('abort', () => resolve({ ok: false, retry: false, status: 'abandoned' }), { once: true });
    });
  };
  const release = (r: AttemptResult) => {
    for (const resolve of hanging.splice(0)) resolve(r);
  };
  return { send, calls, release };
}

const OK: AttemptResult = { ok: true, retry: false, status: 'HTTP 200' };
const UNAVAILABLE: AttemptResult = { ok: false, retry: true, status: 'HTTP 503' };
const NOT_FOUND: AttemptResult = { ok: false, retry: false, status: 'HTTP 404' };

test('backoff: retries after backoffMs, doubled each time, up to `retries`; what is not worth retrying is tried once', async () => {
  const clock = new FakeClock();
  const { log, lines } = capture();
  const { send, calls } = scripted([UNAVAILABLE, UNAVAILABLE, OK]);
  const n = new Notifications(config([{ on: ['deployed'], url: 'http://127.0.0.1:9/a', retries: 3, backoffMs: 1_000 }]), log, { send, clock, host: 'h1' });
  n.emit(entry('web', 'deployed'));
  await until('the first attempt', () => calls.length === 1);
  await until('the first backoff', () => clock.sleeps.length === 1);
  assert.deepEqual(clock.sleeps, [1_000]);
  clock.advance(999);
  await new Promise((r) => setImmediate(r));
  assert.equal(calls.length, 1, 'not before its time');
  clock.advance(1);
  await until('the second attempt and backoff', () => calls.length === 2 && clock.sleeps.length === 2);
  assert.deepEqual(clock.sleeps, [1_000, 2_000]);
  clock.advance(2_000);
  await n.idle();
  assert.equal(calls.length, 3);
  assert.deepEqual(calls[0]!.payload, { event: 'deployed', host: 'h1', ...entry('web', 'deployed') });
  assert.equal(lines.filter((l) => String(l.msg).startsWith('notified')).at(-1)?.attempts, 3);

  // Gives up after `retries` more attempts; a 404 is not retried at all.
  const gaveUp = scripted([UNAVAILABLE]);
  const refused = scripted([NOT_FOUND]);
  const both = new Notifications(config([
    { on: ['failed'], url: 'http://127.0.0.1:9/a', retries: 2, backoffMs: 10 },
    { on: ['failed'], command: ['/bin/true'], retries: 2, backoffMs: 10 },
  ]), log, { send: (t, p, s) => (t.kind === 'url' ? gaveUp.send(t, p, s) : refused.send(t, p, s)), clock });
  both.emit(entry('web', 'failed'));
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setImmediate(r));
    clock.advance(1_000);
  }
  await both.idle();
  assert.equal(gaveUp.calls.length, 3, '1 + retries');
  assert.equal(refused.calls.length, 1);
  assert.ok(lines.some((l) => l.notifier === 'notify[0]' && String(l.msg).includes('(gave up after 3 attempts)')));
  assert.ok(lines.some((l) => l.notifier === 'notify[1]' && String(l.msg).includes('(not retried)')));

  assert.equal(retryDelay(1, 1_000), 1_000);
  assert.equal(retryDelay(3, 1_000), 4_000);
  assert.equal(retryDelay(10, 60_000), NOTIFY_MAX_DELAY_MS, 'capped');
});

test('a slow notifier queues at most NOTIFY_QUEUE_MAX events; the oldest waiting one is dropped, logged; the others are not held up', async () => {
  const clock = new FakeClock();
  const { log, lines } = capture();
  const slow = scripted(['hang']);
  const fast = scripted([OK]);
  const n = new Notifications(config([
    { on: ['refused'], url: 'http://127.0.0.1:9/slow', retries: 0 },
    { on: ['refused'], url: 'http://127.0.0.1:9/fast', retries: 0 },
  ]), log, { send: (t, p, s) => (t.label === 'notify[0]' ? slow.send(t, p, s) : fast.send(t, p, s)), clock });
  // One event per pass, as the orchestrators emit them.
  for (let i = 0; i < NOTIFY_QUEUE_MAX + 4; i++) {
    n.emit(entry('web', 'refused', i));
    await new Promise((r) => setImmediate(r));
  }
  await until('the fast one done', () => fast.calls.length === NOTIFY_QUEUE_MAX + 4);
  assert.equal(slow.calls.length, 1, 'the slow one is still on its first');
  const dropped = lines.filter((l) => l.notifier === 'notify[0]' && String(l.msg).includes('is dropped'));
  // One being sent, NOTIFY_QUEUE_MAX waiting: the next 3 pushed the oldest waiting ones (1, 2, 3) out.
  assert.deepEqual(dropped.map((l) => l.eventTime), [1, 2, 3].map((i) => new Date(i * 1000).toISOString()));
  assert.equal(dropped[0]!.level, 40);
  // The stop budget ends it: the rest is abandoned, logged once.
  const closed = n.close(2_000);
  await until('the drain wait', () => clock.sleeps.includes(2_000));
  clock.advance(2_000);
  await closed;
  assert.equal(slow.calls[0]!.signal.aborted, true, 'the attempt in flight cut short');
  const abandoned = lines.filter((l) => String(l.msg).includes('abandoned'));
  assert.equal(abandoned.length, 1);
  assert.equal(abandoned[0]!.abandoned, NOTIFY_QUEUE_MAX + 1);
  assert.equal(slow.calls.length, 1, 'nothing waiting was sent');
  n.emit(entry('web', 'refused', 999));
  assert.equal(fast.calls.length, NOTIFY_QUEUE_MAX + 4, 'nothing is queued after close');
});

test('routing: the global list hears every app, an app\'s own list only that app, each only the events its "on" names; a reload keeps an unchanged notifier\'s queue', async () => {
  const clock = new FakeClock();
  const { log } = capture();
  const gate = scripted(['hang']);
  const apps = [
    { name: 'web', dir: '/srv/web', notify: [{ on: ['rolled_back'], url: 'http://127.0.0.1:9/web' }] },
    { name: 'api', dir: '/srv/api' },
  ];
  const cfg = config([{ on: ['deployed', 'rolled_back'], url: 'http://127.0.0.1:9/all' }], apps);
  const sent: string[] = [];
  let hold = true;
  const send: Send = (t, p, s) => {
    sent.push(`${t.label} ${p.app} ${p.event}`);
    return hold && t.label === 'notify[0]' ? gate.send(t, p, s) : Promise.resolve(OK);
  };
  const n = new Notifications(cfg, log, { send, clock });
  const events: AppEvent[] = [entry('web', 'deployed', 1), entry('api', 'rolled_back', 2), entry('web', 'rolled_back', 3), entry('api', 'failed', 4)];
  for (const e of events) n.emit(e);
  await until('web\'s own notifier', () => sent.includes('apps[0].notify[0] web rolled_back'));
  assert.deepEqual(sent, ['notify[0] web deployed', 'apps[0].notify[0] web rolled_back']);
  // Reloaded with the global notifier unchanged, web's own removed: the global queue goes on in order.
  n.configure(config([{ on: ['deployed', 'rolled_back'], url: 'http://127.0.0.1:9/all' }], [{ name: 'web', dir: '/srv/web' }, { name: 'api', dir: '/srv/api' }]));
  n.emit(entry('web', 'rolled_back', 5));
  hold = false;
  gate.release(OK);
  await n.idle();
  assert.deepEqual(sent.filter((s) => s.startsWith('notify[0]')), ['notify[0] web deployed', 'notify[0] api rolled_back', 'notify[0] web rolled_back', 'notify[0] web rolled_back']);
  assert.equal(sent.filter((s) => s.startsWith('apps[0]')).length, 1, 'the removed notifier heard nothing new');
  await n.close();
});

test('Channel: a payload is sent as given, to the target it was queued for', async () => {
  const { log } = capture();
  const { send, calls } = scripted([OK]);
  const cfg = config([{ on: ['stopped'], command: ['/bin/true'] }]);
  const c = new Channel({ label: 'notify[0]', kind: 'command', notifier: cfg.notify[0]!, app: undefined, configFile: cfg.file }, send, new FakeClock(), log);
  const p = { event: 'stopped', host: 'h', ...entry('web', 'stopped') } as NotifyPayload;
  c.push(p);
  await c.idle();
  assert.deepEqual(calls.map((x) => [x.label, x.payload]), [['notify[0]', p]]);
  assert.equal(c.pending, 0);
});

test('the notifiers\' programs are checked when the config is loaded: missing, not executable, not a file, writable by others; an app\'s own relative to its dir; a bare name left to PATH', async (t) => {
  const dir = await tmpDir(t);
  await chmod(dir, 0o755);
  const ok = path.join(dir, 'page-me');
  const noexec = path.join(dir, 'noexec');
  const open = path.join(dir, 'open');
  await mkdir(open, { mode: 0o777 });
  await chmod(open, 0o777);
  const planted = path.join(open, 'page-me');
  for (const f of [ok, noexec, planted]) await writeFile(f, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  await chmod(noexec, 0o644);
  const appDir = path.join(dir, 'app');
  await mkdir(path.join(appDir, 'hooks'), { recursive: true });
  await writeFile(path.join(appDir, 'hooks', 'tell'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  const file = path.join(dir, 'config.json');
  const config = parseConfig(JSON.stringify({
    notify: [ok, noexec, dir, path.join(dir, 'gone'), planted].map((p) => ({ on: ['failed'], command: [p] })),
    apps: [{ name: 'web', dir: appDir, notify: [['./hooks/tell'], ['./hooks/gone'], ['page-me']].map((command) => ({ on: ['failed'], command })) }],
  }), file);
  const problems = await notifierProgramProblems(config);
  assert.deepEqual(problems.map((p) => [p.code, p.message]), [
    ['NOTIFY_FAILED', `${file}: "notify[1].command": must name an executable program (found: ${noexec} has no execute permission, mode 0644)`],
    ['NOTIFY_FAILED', `${file}: "notify[2].command": must name a program file (found: ${dir} is not a file)`],
    ['NOTIFY_FAILED', `${file}: "notify[3].command": must name a program that exists (found: ${path.join(dir, 'gone')} does not exist)`],
    ['UNTRUSTED_PATH', `${file}: "notify[4].command": must be writable by nobody but root (like sshd's StrictModes) (found: ${open} is writable by every user, mode 0777)`],
    ['NOTIFY_FAILED', `${file}: "apps[0].notify[1].command": must name a program that exists (found: ${path.join(appDir, 'hooks', 'gone')} does not exist)`],
  ]);
});
