/**
 * The agent's own listening sockets (src/sockets.ts), for real: bound in a
 * blocked worker thread, never accepted from by the agent, passed to child
 * processes at fd 3, and let go on close.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { lstat, readdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { freePort } from '../src/demo/layout.js';
import { SocketHolder } from '../src/sockets.js';
import { defer, tmpDir, waitFor } from './helpers.js';

const connect = (opts: net.NetConnectOpts): Promise<net.Socket> => new Promise((resolve, reject) => {
  const c = net.connect(opts, () => resolve(c));
  c.once('error', reject);
});

/** A python child that accepts `n` connections on fd 3 and answers each with its pid. */
function acceptor(fd: number, n: number) {
  const child = spawn('/usr/bin/python3', ['-c', `
import os, socket
s = socket.socket(fileno=3)
for _ in range(${n}):
    c, _ = s.accept()
    c.sendall(b'%d' % os.getpid())
    c.close()
`], { stdio: ['ignore', 'inherit', 'inherit', fd] });
  return new Promise<number | null>((resolve) => child.once('exit', resolve));
}

const answer = (c: net.Socket): Promise<string> => new Promise((resolve) => {
  let got = '';
  c.on('data', (d) => { got += String(d); });
  c.once('close', () => resolve(got));
});

test('held sockets queue connections nobody accepts yet; a child given the fd serves them; the agent never accepts one', async (t) => {
  const dir = await tmpDir(t);
  const holder = new SocketHolder();
  defer(t, () => holder.close());
  const port = await freePort();
  const sock = path.join(dir, 'web.sock');
  const unheld = await holder.bind([{ address: `127.0.0.1:${port}` }, { address: `unix:${sock}`, owner: { uid: 0, gid: 0, mode: 0o660 } }]);
  assert.deepEqual(unheld, []);
  const tcp = holder.get(`127.0.0.1:${port}`)!;
  const unix = holder.get(`unix:${sock}`)!;
  assert.equal(tcp.source, 'agent');
  assert.equal(((await lstat(sock)).mode & 0o777), 0o660);
  // Nobody accepts: the connections wait in the backlog, accepted by no one in this process.
  const clients = await Promise.all([connect({ port, host: '127.0.0.1' }), connect({ port, host: '127.0.0.1' }), connect({ path: sock })]);
  const answers = clients.map(answer);
  await new Promise((r) => setTimeout(r, 300)); // let a wrongly polling worker accept (it must not)
  const [tcpExit, unixExit] = await Promise.all([acceptor(tcp.fd, 2), acceptor(unix.fd, 1)]);
  assert.equal(tcpExit, 0);
  assert.equal(unixExit, 0);
  for (const a of await Promise.all(answers)) assert.match(a, /^\d+$/, 'every queued connection was served by a child, none by the agent');
  // Still held after the children exited: a new connection waits again.
  const again = await connect({ port, host: '127.0.0.1' });
  const later = answer(again);
  assert.equal(await acceptor(tcp.fd, 1), 0);
  assert.match(await later, /^\d+$/);
});

test('an address in use is reported busy; a stale unix socket file is replaced, a regular file there is not', async (t) => {
  const dir = await tmpDir(t);
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  defer(t, () => new Promise((r) => taken.close(r)));
  const port = (taken.address() as net.AddressInfo).port;
  const stale = path.join(dir, 'stale.sock');
  // A socket file whose listener is gone (a process that exited without unlinking it).
  const made = spawn('/usr/bin/python3', ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()', stale], { stdio: 'inherit' });
  assert.equal(await new Promise((r) => made.once('exit', r)), 0);
  assert.ok((await lstat(stale)).isSocket(), 'the stale socket file is still there');
  const plain = path.join(dir, 'plain.sock');
  await writeFile(plain, 'not a socket');
  const holder = new SocketHolder();
  defer(t, () => holder.close());
  const nowhere = path.join(dir, 'no-such-folder', 'x.sock');
  const unheld = await holder.bind([{ address: `127.0.0.1:${port}` }, { address: `unix:${stale}` }, { address: `unix:${plain}` }, { address: `unix:${nowhere}` }]);
  assert.deepEqual(unheld.map((u) => [u.address, u.busy, u.error.code]), [[`unix:${nowhere}`, false, 'SOCKET_UNAVAILABLE'], [`127.0.0.1:${port}`, true, 'SOCKET_UNAVAILABLE'], [`unix:${plain}`, true, 'SOCKET_UNAVAILABLE']]);
  assert.match(unheld[0]!.error.message, /the folder .*no-such-folder does not exist/);
  assert.match(unheld[1]!.error.message, /cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/);
  assert.ok(holder.get(`unix:${stale}`) !== undefined);
  assert.equal(String(await (await import('node:fs/promises')).readFile(plain)), 'not a socket');
});

test('an address another process listens on: the refusal names its PID and executable', async (t) => {
  // Found by the helper trial: "cannot listen on 127.0.0.1:18610: EADDRINUSE
  // (another process listens there)", and nothing said which one.
  const port = await freePort();
  const other = spawn('/usr/bin/python3', ['-c', `import socket,time\ns=socket.socket()\ns.bind(("127.0.0.1", ${port}))\ns.listen()\nprint("up", flush=True)\ntime.sleep(60)`], { stdio: ['ignore', 'pipe', 'inherit'] });
  defer(t, () => { other.kill('SIGKILL'); });
  await new Promise<void>((resolve) => other.stdout!.once('data', () => resolve()));
  const holder = new SocketHolder();
  defer(t, () => holder.close());
  const [unheld] = await holder.bind([{ address: `127.0.0.1:${port}` }]);
  assert.equal(unheld?.busy, true);
  assert.equal(unheld?.error.message, `cannot listen on 127.0.0.1:${port}: EADDRINUSE (pid ${other.pid} (${realpathSync('/usr/bin/python3')}) listens there)`);
});

test('close() lets the sockets go: the port can be bound again, and nothing keeps the process alive', async () => {
  const holder = new SocketHolder();
  const port = await freePort();
  assert.deepEqual(await holder.bind([{ address: `127.0.0.1:${port}` }]), []);
  await holder.close();
  assert.equal(holder.get(`127.0.0.1:${port}`), undefined);
  const again = net.createServer();
  await waitFor('the port to be free again', () => new Promise<boolean>((resolve) => {
    again.once('error', () => resolve(false));
    again.listen(port, '127.0.0.1', () => resolve(true));
  }));
  await new Promise((r) => again.close(r));
});

/** A python child given `fd` at 3 that serves connections with its pid until killed. */
function server(t: TestContext, fd: number): void {
  const child = spawn('/usr/bin/python3', ['-c', `
import os, socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.sendall(b'%d' % os.getpid())
    c.close()
`], { stdio: ['ignore', 'inherit', 'inherit', fd] });
  defer(t, () => { child.kill('SIGKILL'); });
}

test('release() lets one address go and keeps the others; a unix socket\'s path stays for the app serving on its own copy, through release() and close()', async (t) => {
  const dir = await tmpDir(t);
  const holder = new SocketHolder();
  defer(t, () => holder.close());
  const [kept, dropped] = [await freePort(), await freePort()];
  const sock = path.join(dir, 'web.sock');
  const other = path.join(dir, 'other.sock');
  assert.deepEqual(await holder.bind([{ address: `127.0.0.1:${kept}` }, { address: `127.0.0.1:${dropped}` }, { address: `unix:${sock}` }, { address: `unix:${other}` }]), []);
  // The app runs on its own copy of the unix socket, as a generation does.
  server(t, holder.get(`unix:${sock}`)!.fd);

  assert.equal(await holder.release(`127.0.0.1:${dropped}`), 'closed');
  assert.equal(await holder.release(`127.0.0.1:${dropped}`), 'none');
  assert.equal(holder.get(`127.0.0.1:${dropped}`), undefined);
  // Nobody listens there any more: refused, not queued.
  await assert.rejects(connect({ port: dropped, host: '127.0.0.1' }), { code: 'ECONNREFUSED' });
  // The other TCP address is still held: a connection waits in its backlog.
  const waiting = await connect({ port: kept, host: '127.0.0.1' });
  waiting.destroy();

  assert.equal(await holder.release(`unix:${sock}`), 'closed');
  assert.ok((await lstat(sock)).isSocket(), 'the path is still there');
  assert.match(await answer(await connect({ path: sock })), /^\d+$/, 'the app is still reached by its path');

  await holder.close();
  assert.ok((await lstat(other)).isSocket(), 'close() leaves a unix socket path in place too');
  assert.deepEqual((await readdir(dir)).sort(), ['other.sock', 'web.sock'], 'nothing set aside is left behind');
  assert.match(await answer(await connect({ path: sock })), /^\d+$/);
});
