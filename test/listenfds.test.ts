/**
 * Sockets passed by systemd (src/listenfds.ts), for real: Debian's
 * systemd-socket-activate (no booted systemd needed) binds real sockets and
 * starts test/apps/listenprobe.ts with them by the socket-activation
 * protocol, which reads them the agent's way and spawns real children.
 * systemd-socket-activate waits for the first connection before it execs its
 * command (Debian 12's, systemd 252), so each run connects once.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { freePort } from '../src/demo/layout.js';
import {
  childStdio, devNull, formatListenAddress, forgetListenEnv, inheritable, inheritedListeners, listenAddressProblem,
  missingSocketError, parseListenAddress, serverStarterName, socketAddress, systemdListenStream, underSystemd, type InheritedListener,
} from '../src/listenfds.js';
import { RelinkError } from '../src/errors.js';
import { socketTable } from '../src/proc.js';
import { defer, ROOT, tmpDir, waitFor } from './helpers.js';

const PROBE = path.join(ROOT, 'test', 'apps', 'listenprobe.ts');
const NODE_PROBE = [process.execPath, '--import', 'tsx', PROBE];

/** Skip with the reason when systemd-socket-activate is missing; in CI it must be there (the systemd package). */
function needActivate(t: TestContext): boolean {
  if (spawnSync('systemd-socket-activate', ['--version']).status === 0) return true;
  if (process.env['CI']) assert.fail('systemd-socket-activate is missing: install the systemd package');
  t.skip('systemd-socket-activate not installed (apt-get install systemd)');
  return false;
}

/** Can this host listen on [::1] (an IPv6 loopback)? */
async function hasIPv6Loopback(): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(0, '::1', () => srv.close(() => resolve(true)));
  });
}

/**
 * `systemd-socket-activate -l ADDR... --fdname=NAMES CMD...`, connected to
 * once at `knock` (one of the addresses: a unix path in the test's own
 * folder where there is one, which no other process can be listening on)
 * so that it execs CMD; resolves
 * with CMD's stdout, parsed as the JSON line the probe prints. CMD's
 * environment is what systemd-socket-activate makes it: PATH, HOME, USER,
 * TERM, the LISTEN_* variables and `setenv` (its -E), nothing else.
 */
async function activate<T>(t: TestContext, listen: readonly string[], names: readonly string[], knock: net.NetConnectOpts,
  cmd: readonly string[], setenv: Record<string, string> = {}): Promise<T> {
  const args = [...listen.flatMap((a) => ['-l', a]), `--fdname=${names.join(':')}`, ...Object.entries(setenv).map(([k, v]) => `-E${k}=${v}`), ...cmd];
  const child = spawn('systemd-socket-activate', args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  defer(t, () => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  const clients: net.Socket[] = [];
  defer(t, () => clients.forEach((c) => c.destroy()));
  // Each try is a real connection: the first one that gets through makes it exec the probe.
  // One that exited (could not bind) is reported below with its stderr.
  await waitFor('systemd-socket-activate to listen', () => child.exitCode !== null || new Promise<boolean>((resolve) => {
    const c = net.connect(knock);
    clients.push(c);
    c.once('connect', () => resolve(true));
    c.once('error', () => resolve(false));
  }));
  const code = await exited;
  assert.equal(code, 0, `the probe failed (${code}):\n${stderr}`);
  const line = stdout.trim().split('\n').at(-1) ?? '';
  return JSON.parse(line) as T;
}

interface Report {
  readonly pid: number;
  readonly underSystemd: boolean;
  readonly listeners: InheritedListener[];
  readonly cloexec: Record<string, boolean>;
  readonly env: Record<string, string>;
}

test('inheritedListeners names every passed socket and reads the address it really listens on (IPv4, IPv6, unix)', async (t) => {
  if (!needActivate(t)) return;
  const dir = await tmpDir(t, 'relink-listenfds-');
  const [p1, p2] = [await freePort(), await freePort()];
  const v6 = await hasIPv6Loopback();
  if (!v6) t.diagnostic('no IPv6 loopback on this host: the second socket is IPv4');
  const api = v6 ? `[::1]:${p2}` : `127.0.0.1:${p2}`;
  const sock = path.join(dir, 'web.sock');
  const r = await activate<Report>(t, [`127.0.0.1:${p1}`, api, sock], ['web', 'api', 'sock'], { path: sock }, [...NODE_PROBE, 'report']);
  assert.deepEqual(r.listeners, [
    { fd: 3, name: 'web', address: `127.0.0.1:${p1}`, listening: true },
    { fd: 4, name: 'api', address: api, listening: true },
    { fd: 5, name: 'sock', address: `unix:${sock}`, listening: true },
  ]);
  // Each address as the config spells it, so the agent can compare strings.
  for (const l of r.listeners) assert.equal(formatListenAddress(parseListenAddress(l.address!)), l.address);
  assert.equal(r.underSystemd, true, 'LISTEN_PID naming the process means it was socket-activated');
  // Node's start-up makes them close-on-exec (see src/listenfds.ts): a child not given them does not get them.
  assert.deepEqual(r.cloexec, { 3: true, 4: true, 5: true });
  assert.deepEqual(r.env, {}, 'forgetListenEnv leaves no LISTEN_* variable for the children');
});

test('LISTEN_PID naming another process (the variables leaked from a parent): nothing was passed to this one', async (t) => {
  if (!needActivate(t)) return;
  const port = await freePort();
  // sh forks node instead of exec'ing it (the command after it keeps sh alive): LISTEN_PID is sh's.
  const cmd = ['sh', '-c', `${NODE_PROBE.map((a) => `'${a}'`).join(' ')} report; exit $?`];
  const r = await activate<Report>(t, [`127.0.0.1:${port}`], ['web'], { host: '127.0.0.1', port }, cmd);
  assert.deepEqual(r.listeners, []);
  assert.equal(r.underSystemd, false);
  assert.deepEqual(r.env, {});
  // The same check without systemd-socket-activate, on this process's own (non-)passed fds.
  assert.deepEqual(inheritedListeners({ LISTEN_PID: String(process.pid + 1), LISTEN_FDS: '1', LISTEN_FDNAMES: 'web' }, process.pid), []);
  assert.deepEqual(inheritedListeners({ LISTEN_FDS: '1' }, process.pid), []);
  assert.deepEqual(inheritedListeners({ LISTEN_PID: String(process.pid), LISTEN_FDS: 'x' }, process.pid), []);
});

interface Children {
  readonly listeners: InheritedListener[];
  readonly parent: Record<string, string>;
  readonly plain: Record<string, string>;
  readonly ignored: Record<string, string>;
  readonly covered: Record<string, string>;
}

test('childStdio: a child gets the socket it is given at fd 3 and none of the others the agent holds, not even one without FD_CLOEXEC', async (t) => {
  if (!needActivate(t)) return;
  const dir = await tmpDir(t, 'relink-listenfds-');
  const [p1, p2] = [await freePort(), await freePort()];
  const sock = path.join(dir, 'web.sock');
  // bash dups the unix socket to fd 40 without FD_CLOEXEC before exec'ing node, above the fds
  // Node marks close-on-exec at start-up (0-15 and the run after them): a socket that would leak.
  const cmd = ['bash', '-c', `exec 40<&5; exec ${NODE_PROBE.map((a) => `'${a}'`).join(' ')} children`];
  const r = await activate<Children>(t, [`127.0.0.1:${p1}`, `127.0.0.1:${p2}`, sock], ['web', 'api', 'sock'], { path: sock }, cmd,
    { PROBE_LEAKY_FD: '40' });
  assert.deepEqual(r.listeners.map((l) => [l.fd, l.name]), [[3, 'web'], [4, 'api'], [5, 'sock']]);
  const held = new Set(['3', '4', '5'].map((fd) => r.parent[fd]));
  assert.equal(held.size, 3);
  assert.equal(r.parent['40'], r.parent['5'], 'fd 40 is the unix socket');
  /** The held sockets a child got: fd -> which of the agent's fds it is. */
  const sockets = (fds: Record<string, string>): Record<string, string> => Object.fromEntries(Object.entries(fds)
    .filter(([, target]) => held.has(target))
    .map(([fd, target]) => [fd, ['3', '4', '5'].find((p) => r.parent[p] === target)!]));
  // No stdio entry: the close-on-exec fds stay behind, the one without FD_CLOEXEC leaks at its own number.
  const seen = `(what the probe saw: ${JSON.stringify(r)})`;
  assert.deepEqual(sockets(r.plain), { 40: '5' }, seen);
  // 'ignore' at its index does not help: libuv leaves an fd >= 3 as it is.
  assert.deepEqual(sockets(r.ignored), { 3: '4', 40: '5' }, seen);
  // childStdio covers it with /dev/null.
  assert.deepEqual(sockets(r.covered), { 3: '4' }, seen);
  assert.equal(r.covered['40'], '/dev/null', seen);
  assert.equal(r.covered['4'], undefined, 'the close-on-exec fds are not covered, just closed by the exec');
});

test('childStdio puts the given fds at 3, 4, ... and covers only what would leak', () => {
  const base = ['ignore', 'inherit', 'inherit'] as const;
  const nul = devNull();
  assert.equal(readlinkSync(`/proc/self/fd/${nul}`), '/dev/null');
  assert.equal(inheritable(nul), false, 'the cover itself is close-on-exec');
  assert.equal(devNull(), nul, 'opened once');
  // Nothing leaks: the array is stdio plus the given fds.
  assert.deepEqual(childStdio([...base], [7, 5], [5, 6, 7], { leaks: () => false }), ['ignore', 'inherit', 'inherit', 7, 5]);
  // fd 9 would leak: /dev/null at 9; fd 4 would too, but index 4 already holds a given fd.
  assert.deepEqual(childStdio([...base], [7, 5], [4, 9, 9], { leaks: (fd) => fd === 9 || fd === 4, cover: 99 }),
    ['ignore', 'inherit', 'inherit', 7, 5, 'ignore', 'ignore', 'ignore', 'ignore', 99]);
  // By default the real flag decides: the /dev/null fd is close-on-exec, so it needs no cover.
  assert.ok(nul > 3);
  assert.deepEqual(childStdio([...base], [], [nul]), [...base]);
  assert.throws(() => childStdio(['ignore'], [3], []), TypeError);
  assert.throws(() => childStdio([...base], [-1], []), TypeError);
});

test('parseListenAddress takes IP literals with a port and absolute unix paths, and says which rule anything else breaks', () => {
  const ok: Array<[string, string, string]> = [
    // input, canonical, Server::Starter's name
    ['127.0.0.1:8080', '127.0.0.1:8080', '127.0.0.1:8080'],
    ['0.0.0.0:80', '0.0.0.0:80', '0.0.0.0:80'],
    ['[::1]:8080', '[::1]:8080', '[::1]:8080'],
    ['[::]:8080', '[::]:8080', '[::]:8080'],
    ['[0:0:0:0:0:0:0:1]:65535', '[::1]:65535', '[::1]:65535'],
    ['[2001:DB8::1]:1', '[2001:db8::1]:1', '[2001:db8::1]:1'],
    ['unix:/run/web/web.sock', 'unix:/run/web/web.sock', '/run/web/web.sock'],
  ];
  for (const [input, canonical, starter] of ok) {
    const a = parseListenAddress(input);
    assert.equal(formatListenAddress(a), canonical, input);
    assert.equal(serverStarterName(a), starter, input);
    assert.equal(listenAddressProblem(input), undefined);
  }
  assert.deepEqual(parseListenAddress('127.0.0.1:8080'), { kind: 'tcp', host: '127.0.0.1', port: 8080, family: 4 });
  assert.deepEqual(parseListenAddress('[::1]:8080'), { kind: 'tcp', host: '::1', port: 8080, family: 6 });
  assert.deepEqual(parseListenAddress('unix:/run/web/web.sock'), { kind: 'unix', path: '/run/web/web.sock' });
  assert.equal(systemdListenStream(parseListenAddress('unix:/run/web/web.sock')), '/run/web/web.sock');
  assert.equal(systemdListenStream(parseListenAddress('[::1]:8080')), '[::1]:8080');

  const refused: Array<[string, RegExp]> = [
    ['localhost:8080', /host name: write an IP address/],
    ['web.example.com:443', /host name/],
    ['8080', /needs an address before the port/],
    [':8080', /needs an address before the port/],
    ['127.0.0.1:0', /port 0 would pick a different port/],
    ['127.0.0.1:65536', /port must be a number 1-65535/],
    ['127.0.0.1:080', /port must be a number 1-65535/],
    ['127.0.0.1:http', /port must be a number 1-65535/],
    ['127.0.0.1', /must be a listen address/],
    ['127.0.0.01:8080', /not an IPv4 address in dotted decimal/],
    ['127.1:8080', /not an IPv4 address in dotted decimal/],
    ['::1:8080', /IPv6 address goes in brackets: "\[::1\]:8080"/],
    ['[::1:8080', /must be a listen address/],
    ['[fe80::1%eth0]:8080', /IPv6 zone/],
    ['[127.0.0.1]:8080', /is not an IPv6 address/],
    ['unix:run/web.sock', /absolute path/],
    ['unix:@abstract', /absolute path/],
    ['unix:/run/web/', /names a file, not a folder/],
    ['unix:/run//web/../web.sock', /without "\/\/", "\." or "\.\.": "unix:\/run\/web.sock"/],
    [`unix:/${'x'.repeat(107)}`, /at most 107 bytes/],
    [' 127.0.0.1:8080', /white space/],
    ['', /must be a listen address/],
  ];
  for (const [input, rule] of refused) {
    assert.match(listenAddressProblem(input) ?? 'accepted', rule, input);
    assert.throws(() => parseListenAddress(input), (err: unknown) => {
      assert.ok(err instanceof RelinkError);
      assert.equal(err.code, 'CONFIG_INVALID');
      assert.equal(err.key, 'sockets');
      assert.match(err.message, rule);
      assert.ok(err.message.includes(JSON.stringify(input)), 'names the entry');
      return true;
    });
  }
  // 107 bytes is the limit, not over it.
  assert.equal(listenAddressProblem(`unix:/${'x'.repeat(106)}`), undefined);
});

test('underSystemd: socket-activated, or INVOCATION_ID set with the service manager as parent; INVOCATION_ID inherited by a hand-started agent is not enough', () => {
  const self = { pid: 4242, ppid: process.pid };
  assert.equal(underSystemd({ LISTEN_PID: '4242', LISTEN_FDS: '1' }, self), true);
  assert.equal(underSystemd({ LISTEN_PID: '4243', LISTEN_FDS: '1' }, self), false);
  assert.equal(underSystemd({ INVOCATION_ID: '0123abcd' }, { pid: 4242, ppid: 1 }), true);
  // Our parent here is node (a test runner), not systemd: INVOCATION_ID alone was inherited.
  assert.equal(underSystemd({ INVOCATION_ID: '0123abcd' }, self), false);
  assert.equal(underSystemd({}, { pid: 4242, ppid: 1 }), false);
  assert.equal(underSystemd({ INVOCATION_ID: '' }, { pid: 4242, ppid: 1 }), false);
});

test('forgetListenEnv removes the protocol\'s variables and nothing else', () => {
  const env: NodeJS.ProcessEnv = { LISTEN_PID: '1', LISTEN_FDS: '2', LISTEN_FDNAMES: 'a:b', INVOCATION_ID: 'x', PATH: '/bin' };
  forgetListenEnv(env);
  assert.deepEqual(env, { INVOCATION_ID: 'x', PATH: '/bin' });
});

test('missingSocketError names the unit file, its lines and the commands, for TCP and unix sockets', () => {
  const tcp = missingSocketError('web', '127.0.0.1:8080', '/etc/relink/config.json');
  assert.equal(tcp.code, 'SOCKET_UNAVAILABLE');
  assert.equal(tcp.file, '/etc/relink/config.json');
  assert.equal(tcp.key, 'sockets');
  assert.equal(tcp.message, [
    '/etc/relink/config.json: "sockets": web: the agent runs under systemd, so 127.0.0.1:8080 must come from a socket unit, and no fd named "web" was passed. Write /etc/systemd/system/relink-web.socket:',
    '  [Socket]',
    '  ListenStream=127.0.0.1:8080',
    '  FileDescriptorName=web',
    '  Service=relink.service',
    '',
    '  [Install]',
    '  WantedBy=sockets.target',
    'then: systemctl daemon-reload && systemctl enable --now relink-web.socket && systemctl restart relink',
  ].join('\n'));
  const unix = missingSocketError('api', 'unix:/run/api/api.sock', '/etc/relink/config.json', { user: 'api', group: 'www-data' });
  assert.match(unix.message, /\n {2}ListenStream=\/run\/api\/api\.sock\n {2}FileDescriptorName=api\n {2}Service=relink\.service\n {2}SocketUser=api\n {2}SocketGroup=www-data\n {2}SocketMode=0660\n/);
  const any = missingSocketError('api', '[::]:8080', '/etc/relink/config.json');
  assert.match(any.message, /ListenStream=\[::\]:8080\n {2}FileDescriptorName=api\n {2}Service=relink\.service\n {2}BindIPv6Only=ipv6-only\n/);
  // A socket unit with the right name but another address: the message says what listens instead.
  const other = missingSocketError('web', '127.0.0.1:8080', '/etc/relink/config.json',
    { passed: [{ fd: 3, name: 'web', address: '127.0.0.1:8081', listening: true }, { fd: 4, name: 'api', address: '127.0.0.1:9000', listening: true }] });
  assert.match(other.message, /the fd named "web" listens on 127\.0\.0\.1:8081\. Write/);
  assert.throws(() => missingSocketError('web', 'localhost:8080', '/etc/relink/config.json'), /host name/);
});

test('socketTable lists this process\'s sockets with their raw local address: a unix path with a space, a TCP connection that is not listening', async (t) => {
  const dir = await tmpDir(t, 'relink-listenfds-');
  const sockPath = path.join(dir, 'with space.sock');
  const unix = net.createServer();
  const tcp = net.createServer();
  defer(t, () => new Promise<void>((resolve) => unix.close(() => resolve())));
  defer(t, () => new Promise<void>((resolve) => tcp.close(() => resolve())));
  await new Promise<void>((resolve) => unix.listen(sockPath, resolve));
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const port = (tcp.address() as net.AddressInfo).port;
  const client = net.connect(port, '127.0.0.1');
  defer(t, () => client.destroy());
  await new Promise((resolve) => client.once('connect', resolve));
  const rows = socketTable('self');
  assert.ok(rows.some((r) => r.table === 'unix' && r.local === sockPath && r.listening), 'the unix listener, path and all');
  const portHex = port.toString(16).toUpperCase().padStart(4, '0');
  assert.ok(rows.some((r) => r.table === 'tcp' && r.local.endsWith(`:${portHex}`) && r.listening), 'the TCP listener');
  const clientPortHex = client.localPort!.toString(16).toUpperCase().padStart(4, '0');
  assert.ok(rows.some((r) => r.table === 'tcp' && r.local.endsWith(`:${clientPortHex}`) && !r.listening), 'the client end: not listening');
});

test('socketAddress spells /proc\'s addresses the way the config does', (t) => {
  if (os.endianness() !== 'LE') {
    t.skip('the samples below are as a little-endian kernel prints them');
    return;
  }
  const tcp = (table: 'tcp' | 'tcp6', local: string) => socketAddress({ table, inode: '1', listening: true, local });
  assert.equal(tcp('tcp', '0100007F:1F90'), '127.0.0.1:8080');
  assert.equal(tcp('tcp', '00000000:0050'), '0.0.0.0:80');
  assert.equal(tcp('tcp6', '00000000000000000000000001000000:1F90'), '[::1]:8080');
  assert.equal(tcp('tcp6', '00000000000000000000000000000000:1F90'), '[::]:8080');
  assert.equal(tcp('tcp6', 'B80D0120000000000000000001000000:FFFF'), '[2001:db8::1]:65535');
  assert.equal(tcp('tcp6', '0000000000000000FFFF00000100007F:1F90'), '[::ffff:127.0.0.1]:8080');
  assert.equal(socketAddress({ table: 'unix', inode: '1', listening: true, local: '/run/web/web.sock' }), 'unix:/run/web/web.sock');
  assert.equal(socketAddress({ table: 'unix', inode: '1', listening: false, local: '' }), undefined);
});
