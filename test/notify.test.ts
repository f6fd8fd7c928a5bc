/**
 * The sd_notify socket (src/notify.ts) with real senders: Debian's
 * systemd-notify (no booted systemd here, and none needed), python3's
 * socket module, both as a user of the app's group and as a user outside
 * it; a socket a killed agent left, a symlink, a file and a folder planted
 * at the path; and a process that must exit by itself once the socket is
 * closed.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { chmod, chown, lstat, mkdir, readdir, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { test, type TestContext } from 'node:test';
import { pathToFileURL } from 'node:url';
import { RelinkError } from '../src/errors.js';
import { MAX_SOCKET_PATH_BYTES, NOTIFY_HISTORY, NOTIFY_MAX_BYTES, openNotifySocket, parseNotify, type NotifyMessage, type NotifySocket, type NotifySocketOptions } from '../src/notify.js';
import { needProgram, openUp, rootOnly, testGroup, testUser, type TestUser } from './accounts.js';
import { defer, ROOT, tmpDir, waitFor } from './helpers.js';

const PYTHON = '/usr/bin/python3';
const SYSTEMD_NOTIFY = '/usr/bin/systemd-notify';
const SETPRIV = '/usr/bin/setpriv';

/**
 * Sends each argument as one datagram, in order: hex of the bytes, or
 * `big:N` for an N-byte STATUS= line. Prints the errno's name and exits 3
 * when a send fails.
 */
const SENDER = `
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    for a in sys.argv[2:]:
        data = b'STATUS=' + b'x' * (int(a[4:]) - 7) if a.startswith('big:') else bytes.fromhex(a)
        s.sendto(data, sys.argv[1])
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
    sys.exit(3)
`;

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run a program, as `as` with its groups (as the agent runs an app: setpriv --init-groups) when given. */
function runAs(file: string, args: readonly string[], opts: { as?: TestUser; env?: Record<string, string> } = {}): Promise<Run> {
  const argv = opts.as === undefined ? [file, ...args]
    : [SETPRIV, `--reuid=${opts.as.uid}`, `--regid=${opts.as.gid}`, '--init-groups', '--', file, ...args];
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { cwd: '/', env: { ...process.env, ...opts.env }, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : null;
      resolve({ code, stdout, stderr });
    });
  });
}

const hex = (s: string): string => Buffer.from(s).toString('hex');

/** python3 sends `payloads` (strings, or `big:N`) to `socketPath`, one datagram each. */
function pySend(socketPath: string, payloads: readonly string[], as?: TestUser): Promise<Run> {
  return runAs(PYTHON, ['-c', SENDER, socketPath, ...payloads.map((p) => (p.startsWith('big:') ? p : hex(p)))], { as });
}

function systemdNotify(socketPath: string, args: readonly string[], as?: TestUser): Promise<Run> {
  return runAs(SYSTEMD_NOTIFY, args, { as, env: { NOTIFY_SOCKET: socketPath } });
}

async function open(t: TestContext, file: string, opts?: NotifySocketOptions): Promise<NotifySocket> {
  const s = await openNotifySocket(file, opts);
  defer(t, () => s.close());
  return s;
}

/** The message whose field `key` is `value`, waited for with a deadline. */
function arrived(s: NotifySocket, key: string, value: string): Promise<NotifyMessage> {
  return waitFor(`a message with ${key}=${value}`, () => s.history().find((m) => m.fields.get(key) === value));
}

/** (a function: after one assert on s.mainPid TypeScript would take it for constant) */
const mainPid = (s: NotifySocket): number | undefined => s.mainPid?.pid;

/** `p`, or a failure naming `what` after `ms`: a wait that never settles must fail the test, not hang it. */
async function within<T>(what: string, p: Promise<T>, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

const fields = (m: NotifyMessage | undefined): Record<string, string> => Object.fromEntries(m?.fields ?? []);

test('parseNotify: KEY=VALUE lines as systemd reads them, malformed lines ignored', () => {
  const p = (s: string | Buffer): Record<string, string> => Object.fromEntries(parseNotify(Buffer.isBuffer(s) ? s : Buffer.from(s)));
  assert.deepEqual(p('READY=1\nSTATUS=listening on :8080\n'), { READY: '1', STATUS: 'listening on :8080' });
  assert.deepEqual(p('READY=1'), { READY: '1' }, 'the trailing newline is optional');
  assert.deepEqual(p('READY=1\r\nSTATUS=a=b\rMAINPID=42'), { READY: '1', STATUS: 'a=b', MAINPID: '42' }, '\\r separates lines too; a value may hold "="');
  assert.deepEqual(p('STATUS=\n'), { STATUS: '' }, 'an empty value is a value');
  assert.deepEqual(p('STATUS=one\nSTATUS=two'), { STATUS: 'two' }, 'the later assignment wins');
  assert.deepEqual(p('garbage\n=1\n1X=2\nA-B=3\n KEY=4\nKEY =5\nok_1=6\n_x=7'), { ok_1: '6', _x: '7' });
  assert.deepEqual(p(Buffer.from('A=1\0\nB=2')), { B: '2' }, 'a line with a NUL byte is dropped');
  assert.deepEqual(p('STATUS=déjà vu ✓'), { STATUS: 'déjà vu ✓' });
  assert.deepEqual(p(Buffer.from([0x53, 0x3d, 0xff])), { S: '\ufffd' }, 'invalid UTF-8 becomes U+FFFD');
  assert.deepEqual(p(''), {});
  assert.deepEqual(p('\n\n'), {});
});

test("Debian's systemd-notify, with no booted systemd: --ready, --status, --pid; its barrier is not recorded", async (t) => {
  if (!await needProgram(t, SYSTEMD_NOTIFY, 'systemd')) return;
  const dir = await tmpDir(t, 'relink-notify-');
  const s = await open(t, path.join(dir, 'notify.sock'));
  const since = Date.now();
  const ready = s.ready(since, Date.now() + 15_000);

  // systemd-notify waits (5 s at most) for the receiver to read its barrier
  // datagram: run it asynchronously, so this process goes on reading.
  const r = await systemdNotify(s.path, ['--ready', '--status=serving on :8080']);
  assert.equal(r.code, 0, `systemd-notify failed: ${r.stderr}`);
  const m = await within('ready()', ready);
  assert.deepEqual(fields(m), { READY: '1', STATUS: 'serving on :8080' }, 'no MAINPID without --pid');
  assert.ok(m!.atMs >= since);
  assert.deepEqual(s.status, { text: 'serving on :8080', atMs: m!.atMs });
  assert.equal(mainPid(s), undefined);

  const r2 = await systemdNotify(s.path, ['--pid=4242', '--status=reloaded', 'X_CUSTOM=yes']);
  assert.equal(r2.code, 0, `systemd-notify failed: ${r2.stderr}`);
  const m2 = await arrived(s, 'STATUS', 'reloaded');
  assert.deepEqual(fields(m2), { MAINPID: '4242', STATUS: 'reloaded', X_CUSTOM: 'yes' });
  assert.equal(mainPid(s), 4242);
  assert.equal(s.status?.text, 'reloaded');
  assert.equal(s.history().length, 2, 'two messages, no BARRIER=1');
  assert.ok(s.history().every((h) => !h.fields.has('BARRIER')));
  assert.equal(s.ignored, 0);

  // Nobody reading: systemd-notify says so and fails (the app must be told
  // a socket that works, for as long as it runs).
  await s.close();
  const r3 = await systemdNotify(s.path, ['--ready']);
  assert.equal(r3.code, 1);
  assert.match(r3.stderr, /No such file or directory/);
});

test('a python3 sender: messages in order; oversized, NUL and malformed datagrams ignored', async (t) => {
  if (!await needProgram(t, PYTHON, 'python3')) return;
  const dir = await tmpDir(t, 'relink-notify-');
  const seen: NotifyMessage[] = [];
  const s = await open(t, path.join(dir, 'n.sock'), { onMessage: (m) => seen.push(m) });

  const r = await pySend(s.path, [
    'STATUS=starting',
    `big:${NOTIFY_MAX_BYTES + 1}`, // over systemd's limit
    'big:70000', // truncated at 64 KiB by the addon: still over
    'READY=1\0',
    'STATUS=a NUL in another line drops the datagram\nX=\0',
    'no assignment here',
    '',
    `big:${NOTIFY_MAX_BYTES}`, // exactly at the limit: kept
    'READY=1\nMAINPID=not-a-pid',
    'DONE=1',
  ]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  await arrived(s, 'DONE', '1');
  const h = s.history();
  assert.deepEqual(h.map((m) => m.seq), [1, 2, 3, 4]);
  assert.equal(fields(h[0]).STATUS, 'starting');
  assert.equal(h[1]!.fields.get('STATUS')!.length, NOTIFY_MAX_BYTES - 'STATUS='.length);
  assert.deepEqual(fields(h[2]), { READY: '1', MAINPID: 'not-a-pid' });
  assert.equal(s.ignored, 6, 'two oversized, two with a NUL, the malformed, the empty');
  assert.equal(mainPid(s), undefined, 'MAINPID=not-a-pid is no PID');
  assert.equal(s.lastReady, h[2]);
  assert.deepEqual(seen, h, 'onMessage saw each recorded message, in order');
});

test(`the history keeps the last ${NOTIFY_HISTORY} messages; ready() still finds an older READY=1`, async (t) => {
  if (!await needProgram(t, PYTHON, 'python3')) return;
  const dir = await tmpDir(t, 'relink-notify-');
  const s = await open(t, path.join(dir, 'n.sock'));
  const since = Date.now();
  const statuses = Array.from({ length: 40 }, (_, i) => `STATUS=${i}`);
  assert.equal((await pySend(s.path, ['READY=1', ...statuses])).code, 0);
  await arrived(s, 'STATUS', '39');
  const h = s.history();
  assert.equal(h.length, NOTIFY_HISTORY);
  assert.equal(fields(h[0]).STATUS, String(40 - NOTIFY_HISTORY));
  assert.equal(h.at(-1)!.seq, 41);
  const ready = await within('ready()', s.ready(since, Date.now() + 1000));
  assert.equal(ready?.seq, 1, 'the READY=1 dropped from the history');
  assert.equal(s.status?.text, '39');
});

test('ready() counts only a READY=1 read at or after sinceMs; deadline, abort and close settle it', async (t) => {
  if (!await needProgram(t, PYTHON, 'python3')) return;
  const dir = await tmpDir(t, 'relink-notify-');
  let clock = 1000;
  const s = await open(t, path.join(dir, 'n.sock'), { now: () => clock });
  assert.equal((await pySend(s.path, ['READY=1\nSTATUS=old generation'])).code, 0);
  const old = await arrived(s, 'STATUS', 'old generation');
  assert.equal(old.atMs, 1000);

  // The new generation was started at 2000: the old READY=1 does not count.
  const started = Date.now();
  assert.equal(await within('ready() until its deadline', s.ready(2000, clock + 300)), undefined);
  assert.ok(Date.now() - started >= 250, 'resolved at the deadline, not before');
  assert.equal(await within('ready() past its deadline', s.ready(2000, clock)), undefined, 'a deadline already past');
  assert.equal(await within('ready() since 1000', s.ready(1000, clock + 10_000)), old, 'a READY=1 at sinceMs counts');

  // Waiting: a READY=1 read before sinceMs does not settle it, nor does a
  // message without READY=1; the READY=1 after sinceMs does.
  const pending = s.ready(2000, clock + 15_000);
  assert.equal((await pySend(s.path, ['READY=1\nSTATUS=old generation again'])).code, 0);
  await arrived(s, 'STATUS', 'old generation again');
  clock = 2500;
  assert.equal((await pySend(s.path, ['STATUS=new generation, not ready yet'])).code, 0);
  await arrived(s, 'STATUS', 'new generation, not ready yet');
  assert.equal((await pySend(s.path, ['READY=1'])).code, 0);
  const fresh = await within('ready() since 2000', pending);
  assert.equal(fresh?.atMs, 2500);
  assert.equal(fresh?.seq, 4);

  const ac = new AbortController();
  const aborted = s.waitFor((m) => m.fields.has('NEVER'), 0, Infinity, ac.signal);
  ac.abort(new Error('deploy superseded'));
  await assert.rejects(within('the aborted wait', aborted), /deploy superseded/);
  await assert.rejects(within('a wait on an aborted signal', s.ready(0, Infinity, ac.signal)), /deploy superseded/, 'an aborted signal rejects at once');

  const open1 = s.waitFor((m) => m.fields.has('NEVER'), 0, Infinity);
  const open2 = s.ready(9999, Infinity);
  await s.close();
  assert.equal(await within('waitFor() on close', open1), undefined);
  assert.equal(await within('ready() on close', open2), undefined);
  assert.equal(await within('ready() after close', s.ready(9999, Infinity)), undefined, 'after close, at once');
});

test('root:GROUP 0660: a user of the app\'s group can notify, a user outside it gets EACCES', async (t) => {
  if (!rootOnly(t)) return;
  if (!await needProgram(t, PYTHON, 'python3') || !await needProgram(t, SYSTEMD_NOTIFY, 'systemd')) return;
  const group = await testGroup(t);
  const member = await testUser(t, [group]); // in the group as a supplementary group, like an app's user
  const outsider = await testUser(t);
  const dir = await tmpDir(t, 'relink-notify-');
  await openUp(dir); // 0755: the outsider reaches the socket itself, so its mode is what refuses
  const s = await open(t, path.join(dir, 'notify.sock'), { gid: group.gid });

  const st = await lstat(s.path);
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o7777, 0o660);
  assert.equal(st.uid, 0);
  assert.equal(st.gid, group.gid);

  const r = await pySend(s.path, ['READY=1\nSTATUS=from the member'], member);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  await arrived(s, 'STATUS', 'from the member');
  const sd = await systemdNotify(s.path, ['--ready', '--status=systemd-notify as the member'], member);
  assert.equal(sd.code, 0, sd.stderr);
  await arrived(s, 'STATUS', 'systemd-notify as the member');

  const denied = await pySend(s.path, ['READY=1\nSTATUS=from the outsider'], outsider);
  assert.equal(denied.code, 3);
  assert.equal(denied.stdout.trim(), 'EACCES');
  const sdDenied = await systemdNotify(s.path, ['--ready', '--status=systemd-notify as the outsider'], outsider);
  assert.equal(sdDenied.code, 1);
  assert.match(sdDenied.stderr, /Permission denied/);

  // Datagrams arrive in order: once the marker is in, nothing else came.
  assert.equal((await pySend(s.path, ['STATUS=marker'])).code, 0);
  await arrived(s, 'STATUS', 'marker');
  assert.deepEqual(s.history().map((m) => m.fields.get('STATUS')), ['from the member', 'systemd-notify as the member', 'marker']);
});

/** A separate Node process holding a NotifySocket at `file` (the agent, as far as the socket goes). */
async function holder(t: TestContext, dir: string, file: string): Promise<{ child: ReturnType<typeof spawn>; lines: string[]; exit: Promise<number | null> }> {
  const script = path.join(dir, 'holder.mts');
  await writeFile(script, [
    `import { openNotifySocket } from ${JSON.stringify(pathToFileURL(path.join(ROOT, 'src', 'notify.ts')).href)};`,
    'const s = await openNotifySocket(process.argv[2]);',
    "process.stdout.write('open\\n');",
    'const m = await s.ready(0, Date.now() + 60_000);',
    'await s.close();',
    "process.stdout.write(`closed ${m?.fields.get('STATUS')}\\n`);",
    '',
  ].join('\n'));
  const child = spawn(process.execPath, ['--import', 'tsx', script, file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  defer(t, () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    return exit;
  });
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  await waitFor('the holder to open its socket', () => lines.includes('open') || child.exitCode !== null);
  assert.deepEqual(lines, ['open'], 'the holder opened its socket');
  return { child, lines, exit };
}

test('close() removes the socket and leaves nothing to keep the process alive: it exits by itself', async (t) => {
  if (!await needProgram(t, PYTHON, 'python3')) return;
  const dir = await tmpDir(t, 'relink-notify-');
  const file = path.join(dir, 'notify.sock');
  const h = await holder(t, dir, file);
  assert.ok((await lstat(file)).isSocket());
  assert.equal((await pySend(file, ['READY=1\nSTATUS=bye'])).code, 0);
  const code = await waitFor('the holder to exit by itself', () => (h.child.exitCode !== null ? { code: h.child.exitCode } : undefined));
  assert.equal(code.code, 0);
  assert.deepEqual(h.lines, ['open', 'closed bye']);
  await assert.rejects(lstat(file), { code: 'ENOENT' });
});

test('a socket a killed agent left is replaced; a symlink, a file or a folder at the path is refused and left alone', async (t) => {
  if (!await needProgram(t, PYTHON, 'python3')) return;
  const dir = await tmpDir(t, 'relink-notify-');
  const file = path.join(dir, 'notify.sock');

  // A previous agent, killed -9: its socket file stays.
  const h = await holder(t, dir, file);
  h.child.kill('SIGKILL');
  await h.exit;
  const stale = await lstat(file);
  assert.ok(stale.isSocket());
  assert.equal((await pySend(file, ['READY=1'])).stdout.trim(), 'ECONNREFUSED', 'nobody reads the stale socket');
  const s = await open(t, file);
  assert.equal((await pySend(file, ['STATUS=after the stale one'])).code, 0);
  await arrived(s, 'STATUS', 'after the stale one');
  await s.close();
  assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith('.notify-')), [], 'no temporary folder left');

  const refused = async (what: string, expect: RegExp): Promise<void> => {
    const err = await openNotifySocket(file).then(async (s) => { await s.close(); return 'opened'; }, (e: unknown) => e);
    assert.ok(err instanceof RelinkError, `${what}: ${String(err)}`);
    assert.equal(err.code, 'UNSAFE_PATH', err.message);
    assert.equal(err.file, file);
    assert.match(err.message, expect);
  };

  // A symlink to a socket: following it would remove that socket.
  const elsewhere = path.join(dir, 'elsewhere');
  await mkdir(elsewhere);
  const other = await holder(t, elsewhere, path.join(elsewhere, 'other.sock'));
  await symlink(path.join(elsewhere, 'other.sock'), file);
  await refused('a symlink to a socket', /must be a socket relink left, or absent .*symlink to .*other\.sock/);
  assert.equal(await readlink(file), path.join(elsewhere, 'other.sock'), 'the link is left');
  assert.equal((await pySend(path.join(elsewhere, 'other.sock'), ['READY=1\nSTATUS=still there'])).code, 0, 'its target still works');
  await waitFor('the other holder to get its message and exit', () => other.child.exitCode !== null);

  // A symlink to a root-only file: not followed, not chmod'ed, not removed.
  await rm(file, { recursive: true, force: true });
  const secret = path.join(dir, 'secret');
  await writeFile(secret, 'keep\n', { mode: 0o600 });
  await symlink(secret, file);
  await refused('a symlink to a file', /symlink to .*secret/);
  assert.equal(await readFile(secret, 'utf8'), 'keep\n');
  assert.equal((await stat(secret)).mode & 0o7777, 0o600);

  // A dangling symlink: bind(2) would not follow it, but it is refused before.
  await rm(file, { recursive: true, force: true });
  await symlink(path.join(dir, 'nowhere'), file);
  await refused('a dangling symlink', /symlink to .*nowhere/);

  await rm(file, { recursive: true, force: true });
  await writeFile(file, 'data\n');
  await refused('a regular file', /a regular file/);
  assert.equal(await readFile(file, 'utf8'), 'data\n');

  await rm(file, { recursive: true, force: true });
  await mkdir(file);
  await refused('a folder', /a directory/);
  assert.ok((await lstat(file)).isDirectory());
});

test("the socket's folder must be a real folder only root can write; the path must fit sockaddr_un", async (t) => {
  const dir = await tmpDir(t, 'relink-notify-');
  const code = async (p: string): Promise<string> => {
    try {
      await (await openNotifySocket(p)).close();
      return 'opened';
    } catch (err) {
      assert.ok(err instanceof RelinkError, String(err));
      return err.code;
    }
  };

  const open777 = path.join(dir, 'open');
  await mkdir(open777);
  await chmod(open777, 0o777);
  assert.equal(await code(path.join(open777, 'n.sock')), 'UNSAFE_PATH', 'a folder everybody can write');
  await chmod(open777, 0o775);
  assert.equal(await code(path.join(open777, 'n.sock')), 'UNSAFE_PATH', 'a folder its group can write');

  const real = path.join(dir, 'real');
  await mkdir(real);
  await symlink(real, path.join(dir, 'linked'));
  assert.equal(await code(path.join(dir, 'linked', 'n.sock')), 'UNSAFE_PATH', 'a symlinked folder');
  assert.equal(await code(path.join(dir, 'missing', 'n.sock')), 'NOTIFY_SOCKET_FAILED', 'a folder that does not exist');
  assert.equal(await code('relative/n.sock'), 'NOTIFY_SOCKET_FAILED');

  // sun_path: 107 bytes and a NUL; the socket is first bound in a
  // temporary folder beside it, FOLDER/.notify-XXXXXX/s, which must fit too.
  const fits = path.join(real, 'x'.repeat(MAX_SOCKET_PATH_BYTES - real.length - 1));
  assert.equal(Buffer.byteLength(fits), MAX_SOCKET_PATH_BYTES);
  assert.equal(await code(fits), 'opened', 'exactly 107 bytes');
  assert.equal(await code(`${fits}x`), 'NOTIFY_SOCKET_FAILED', 'one byte more');
  const temp = '/.notify-123456/s'.length;
  const deepest = path.join(dir, 'd'.repeat(MAX_SOCKET_PATH_BYTES - temp - dir.length - 1));
  await mkdir(deepest);
  await mkdir(`${deepest}e`);
  assert.equal(await code(path.join(deepest, 'n')), 'opened', `a folder of ${deepest.length} bytes`);
  assert.equal(await code(path.join(`${deepest}e`, 'n')), 'NOTIFY_SOCKET_FAILED', 'a folder one byte longer: the temporary name would not fit');

  if (process.getuid?.() === 0) {
    const theirs = path.join(dir, 'theirs');
    await mkdir(theirs, 0o755);
    await chown(theirs, 65534, 65534);
    assert.equal(await code(path.join(theirs, 'n.sock')), 'UNSAFE_PATH', "a folder another user owns");
  }
  assert.equal(await code(path.join(real, 'n.sock')), 'opened');
});

