/**
 * `ss` through one long-lived shell (src/ssCoprocess.ts), as the health
 * probe's attribution asks it (src/proc.ts acceptedInode): real listening
 * sockets, real connections, the real `ss` and /bin/sh.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { test, type TestContext } from 'node:test';
import { acceptedInode, socketInodes } from '../src/proc.js';
import { SsCoprocess } from '../src/ssCoprocess.js';
import { needProgram } from './accounts.js';
import { alive, defer, waitFor } from './helpers.js';

/** A server on 127.0.0.1 that accepts, and a client connected to it, both in this process. */
async function accepted(t: TestContext): Promise<{ serverPort: number; clientPort: number; serverSide: net.Socket }> {
  const sides: net.Socket[] = [];
  const server = net.createServer((s) => sides.push(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise<void>((r) => client.once('connect', r));
  await waitFor('the server to accept', () => (sides.length > 0 ? true : undefined));
  defer(t, () => {
    client.destroy();
    for (const s of sides) s.destroy();
    server.close();
  });
  return { serverPort: (server.address() as net.AddressInfo).port, clientPort: client.localPort!, serverSide: sides[0]! };
}

test('acceptedInode names the socket of the process that accepted the connection, asked of the kernel through ss', async (t) => {
  if (!(await needProgram(t, '/usr/bin/ss', 'iproute2'))) return;
  const { serverPort, clientPort } = await accepted(t);
  const inode = await acceptedInode(serverPort, clientPort, 4);
  assert.ok(inode !== undefined && inode !== '0', `inode: ${inode}`);
  assert.ok(socketInodes(process.pid).has(inode), `socket:[${inode}] is one of this process's sockets`);
  // The client's family first, then the other: an IPv4 connection is found when asked as IPv6 first too.
  assert.equal(await acceptedInode(serverPort, clientPort, 6), inode);
});

test('a connection waiting in a listener\'s accept queue has inode "0": nobody accepted it yet', async (t) => {
  if (!(await needProgram(t, '/usr/bin/ss', 'iproute2'))) return;
  if (!(await needProgram(t, '/usr/bin/python3', 'python3'))) return;
  // A listener that never accepts.
  const py = spawn('/usr/bin/python3', ['-c', 'import socket,sys,time\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(8)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(60)'], { stdio: ['ignore', 'pipe', 'inherit'] });
  defer(t, () => py.kill('SIGKILL'));
  const port = Number(await new Promise<string>((r) => py.stdout.once('data', (d: Buffer) => r(d.toString().trim()))));
  const client = net.connect(port, '127.0.0.1');
  defer(t, () => client.destroy());
  await new Promise<void>((r) => client.once('connect', r));
  assert.equal(await acceptedInode(port, client.localPort!, 4), '0');
});

test('one shell answers every question, ends by itself once idle, and never keeps the process alive', async (t) => {
  if (!(await needProgram(t, '/usr/bin/ss', 'iproute2'))) return;
  const { serverPort, clientPort } = await accepted(t);
  const ss = new SsCoprocess({ idleMs: 300 });
  defer(t, () => ss.close());
  const first = await ss.connected(4, serverPort, clientPort);
  assert.match(first ?? '', /\bino:\d+/);
  const shell = ss.pid!;
  assert.ok(await alive(shell));
  // Many questions, some at once: answered in order, by the same shell.
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => ss.connected(4, serverPort, i % 2 === 0 ? clientPort : 1)));
  answers.forEach((a, i) => (i % 2 === 0 ? assert.match(a ?? '', /\bino:\d+/, `answer ${i}`) : assert.equal(a, '', `answer ${i}: no such connection`)));
  assert.equal(ss.pid, shell, 'no new shell per question');
  await waitFor('the idle shell to end', async () => (!(await alive(shell)) && ss.pid === undefined ? true : undefined), { timeoutMs: 5_000 });
  // Asked again: a new shell.
  assert.match(await ss.connected(4, serverPort, clientPort) ?? '', /\bino:\d+/);
  assert.notEqual(ss.pid, undefined);
  ss.close();
  assert.equal(ss.pid, undefined);
});

test('a process whose last work was a question exits once it has its answer: the idle shell (10 s by default) does not hold it', async (t) => {
  if (!(await needProgram(t, '/usr/bin/ss', 'iproute2'))) return;
  const script = `import { SsCoprocess } from ${JSON.stringify(new URL('../src/ssCoprocess.ts', import.meta.url).href)};
const ss = new SsCoprocess();
const out = await ss.connected(4, 1, 1);
console.log(JSON.stringify({ out, shell: ss.pid }));`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  defer(t, () => child.kill('SIGKILL'));
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  const { code } = await waitFor('the process to exit by itself, well before the shell\'s 10 s idle time', () => (child.exitCode === null ? undefined : { code: child.exitCode }), { timeoutMs: 8_000, intervalMs: 50 });
  assert.equal(code, 0);
  const said = JSON.parse(stdout) as { out: string; shell: number };
  assert.equal(said.out, '', 'asked and answered (no such connection)');
  await waitFor('its shell to end with it (stdin closed)', async () => (!(await alive(said.shell)) ? true : undefined), { timeoutMs: 5_000 });
});

test('no ss on the PATH, or a question that is not four integers: undefined at once, no hang', async () => {
  const missing = new SsCoprocess({ path: '/nonexistent' });
  try {
    assert.equal(await missing.connected(4, 80, 1234), undefined);
    // And again (the shell may have been stopped): still an answer.
    assert.equal(await missing.connected(6, 80, 1234), undefined);
  } finally {
    missing.close();
  }
  const ss = new SsCoprocess();
  try {
    for (const [a, b] of [[80.5, 1], [-1, 1], [1, 70_000], [Number.NaN, 1]] as const) assert.equal(await ss.connected(4, a, b), undefined, `${a} ${b}`);
    assert.equal(ss.pid, undefined, 'nothing started for a bad question');
  } finally {
    ss.close();
  }
});
