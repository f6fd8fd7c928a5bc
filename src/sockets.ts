/**
 * Listening sockets the agent holds for its apps ("sockets" in the config),
 * so that every generation of an app is started on the same sockets: old
 * and new share one accept queue, and a connection that arrives while no
 * process accepts waits in the backlog instead of being refused.
 *
 * Where they come from:
 * - passed by systemd (socket units naming relink.service, one
 *   FileDescriptorName= per app; src/listenfds.ts): they outlive the agent,
 *   and a restarted agent is passed the same sockets again;
 * - bound by the agent itself when it was started by hand. Node has no way
 *   to listen without accepting (a net.Server accepts as soon as its event
 *   loop polls the socket), so they are bound in a worker thread that blocks
 *   (Atomics.wait) right after listen(), before its event loop ever polls:
 *   the sockets stay in the process's fd table, never accepted from, and are
 *   passed to each generation through spawn's stdio array (the child gets
 *   them at 3, 4, ... with FD_CLOEXEC cleared). They live as long as the
 *   agent: a hand-started agent that exits takes its copies along, the
 *   running generation keeps serving on its own, and the next agent finds
 *   the address taken by it (see `busy`).
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { RelinkError } from './errors.js';
import { parseListenAddress } from './listenfds.js';

/** One address the agent holds: the fd (in this process) listening on it. */
export interface Held {
  readonly address: string;
  readonly fd: number;
  /** Passed by systemd (survives an agent restart) or bound by this agent. */
  readonly source: 'systemd' | 'agent';
}

/** An address that could not be held, and why (a RelinkError: SOCKET_UNAVAILABLE). */
export interface Unheld {
  readonly address: string;
  readonly error: RelinkError;
  /** The address is in use (EADDRINUSE, or a unix socket someone listens on): perhaps by the app's running generation. */
  readonly busy: boolean;
}

/** A unix socket's owner and mode: the app's user must be able to connect, and so must its group (a proxy in front). */
export interface UnixOwner {
  readonly uid: number;
  readonly gid: number;
  /** Default 0o660. */
  readonly mode?: number;
}

export interface BindRequest {
  readonly address: string;
  readonly owner?: UnixOwner | undefined;
  /** listen(2)'s backlog; default 4096 (capped by net.core.somaxconn). */
  readonly backlog?: number;
}

type Outcome = { address: string; fd: number } | { address: string; code: string; message: string };

// The worker's whole program: listen on every address, say which fds, then
// block before the event loop polls (so nothing is ever accepted) until told
// to close. Every listen() resolves through process.nextTick (an IP literal's
// lookup, the bind, the 'listening' or 'error' event), all drained before
// the loop's first poll: the wait starts before any socket is polled.
const WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const net = require('node:net');
const fs = require('node:fs');
const gate = new Int32Array(workerData.gate);
const servers = [];
const results = new Array(workerData.requests.length);
let pending = workerData.requests.length;
function done(i, r) {
  results[i] = r;
  if (--pending > 0) return;
  parentPort.postMessage(results);
  Atomics.wait(gate, 0, 0);
  for (const s of servers) s.close();
}
workerData.requests.forEach((req, i) => {
  const server = net.createServer();
  server.once('error', (err) => done(i, { address: req.address, code: err.code || 'ERROR', message: err.message }));
  server.once('listening', () => {
    try {
      if (req.path !== undefined && req.owner !== undefined) {
        fs.chownSync(req.path, req.owner.uid, req.owner.gid);
        fs.chmodSync(req.path, req.owner.mode);
      }
      // libuv made it non-blocking, and that flag belongs to the socket,
      // shared with every process it is passed to: put it back to blocking,
      // as systemd passes sockets (an app doing a plain accept() expects it).
      server._handle.setBlocking(true);
      servers.push(server);
      done(i, { address: req.address, fd: server._handle.fd });
    } catch (err) {
      server.close();
      done(i, { address: req.address, code: err.code || 'ERROR', message: err.message });
    }
  });
  const opts = req.path !== undefined ? { path: req.path, backlog: req.backlog } : { host: req.host, port: req.port, backlog: req.backlog, ipv6Only: req.host.includes(':') };
  server.listen(opts);
});
`;

/** Where to listen, as the worker's net.Server takes it (src/listenfds.ts parses the config's spelling). */
function splitAddress(address: string): { host: string; port: number } | { path: string } {
  const a = parseListenAddress(address);
  return a.kind === 'unix' ? { path: a.path } : { host: a.host, port: a.port };
}

/**
 * A unix socket path left by an earlier agent: removed when it is a socket
 * nobody listens on (`listening` says who does, from /proc/net/unix), so
 * that bind() can make it anew. Anything else there (a file, a link, a
 * folder) is left alone and the bind fails with EADDRINUSE.
 */
function clearStaleSocket(path: string, listening: (path: string) => boolean): void {
  try {
    const st = lstatSync(path);
    if (st.isSocket() && !listening(path)) unlinkSync(path);
  } catch {
    // nothing there
  }
}

/**
 * Holds the listening sockets of every app. `bind()` binds a batch in one
 * worker thread (kept blocked for as long as the sockets are held); `adopt()`
 * takes fds systemd passed. `close()` lets every socket this agent bound go
 * (the apps' own copies stay open in them).
 */
export class SocketHolder {
  readonly #held = new Map<string, Held>();
  /**
   * Under systemd the agent never binds an address itself (that socket
   * would close with the agent): what was not passed stays unheld, with the
   * error that says which unit lines to add (src/listenfds.ts).
   */
  #notPassed: ReadonlyMap<string, RelinkError> | undefined;

  /** This holder only holds what systemd passed; `missing` (read when asked, so it may be filled after): the error for each configured address that was not. */
  passedOnly(missing: ReadonlyMap<string, RelinkError>): void {
    this.#notPassed = missing;
  }
  readonly #workers: Array<{ worker: Worker; gate: Int32Array }> = [];

  /** The fd held for `address`, if it is held. */
  get(address: string): Held | undefined {
    return this.#held.get(address);
  }

  /** Every fd this process holds for the apps (what a child must not inherit unless given it). */
  fds(): number[] {
    return [...this.#held.values()].map((h) => h.fd);
  }

  /** fds passed by systemd, already matched to their addresses (src/listenfds.ts). */
  adopt(passed: ReadonlyArray<{ address: string; fd: number }>): void {
    for (const p of passed) this.#held.set(p.address, { address: p.address, fd: p.fd, source: 'systemd' });
  }

  /**
   * Bind and listen on each address not held yet, in a new worker thread.
   * A stale unix socket file nobody listens on is replaced; the socket
   * file gets `owner`. Resolves with what could not be held (bind errors:
   * EADDRINUSE, EACCES, a missing folder), each a SOCKET_UNAVAILABLE error.
   */
  async bind(requests: readonly BindRequest[], unixListening: (path: string) => boolean = () => false): Promise<Unheld[]> {
    const notPassed = this.#notPassed;
    if (notPassed !== undefined) {
      return requests.filter((r) => !this.#held.has(r.address)).map((r) => ({
        address: r.address,
        busy: false,
        error: notPassed.get(r.address) ?? new RelinkError('SOCKET_UNAVAILABLE', `systemd passed no socket for ${r.address}`, { key: 'sockets', rule: 'under systemd every address in "sockets" comes from a socket unit', found: 'not passed' }),
      }));
    }
    const missing: Unheld[] = [];
    const todo = requests.filter((r) => {
      if (this.#held.has(r.address)) return false;
      const where = splitAddress(r.address);
      // bind() says EACCES for a path whose folder does not exist: say what it is.
      if ('path' in where && !existsSync(path.dirname(where.path))) {
        missing.push({
          address: r.address,
          busy: false,
          error: new RelinkError('SOCKET_UNAVAILABLE', `cannot listen on ${r.address}: the folder ${path.dirname(where.path)} does not exist (create it, owned by root or the app's user; tried again before every start)`,
            { key: 'sockets', rule: 'a unix socket\'s folder must exist', found: `no folder ${path.dirname(where.path)}` }),
        });
        return false;
      }
      return true;
    });
    if (todo.length === 0) return missing;
    const payload = todo.map((r) => {
      const where = splitAddress(r.address);
      if ('path' in where) clearStaleSocket(where.path, unixListening);
      return {
        address: r.address,
        ...where,
        backlog: r.backlog ?? 4096,
        owner: r.owner === undefined ? undefined : { uid: r.owner.uid, gid: r.owner.gid, mode: r.owner.mode ?? 0o660 },
      };
    });
    const gate = new Int32Array(new SharedArrayBuffer(4));
    const worker = new Worker(WORKER, { eval: true, workerData: { gate: gate.buffer, requests: payload } });
    const results = await new Promise<Outcome[]>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`the socket worker exited (${code}) before binding`)));
    });
    // Blocked from now on: it must not keep the agent alive by itself.
    worker.unref();
    this.#workers.push({ worker, gate });
    const unheld: Unheld[] = [];
    for (const r of results) {
      if ('fd' in r) {
        this.#held.set(r.address, { address: r.address, fd: r.fd, source: 'agent' });
        continue;
      }
      const busy = r.code === 'EADDRINUSE';
      unheld.push({
        address: r.address,
        busy,
        error: new RelinkError('SOCKET_UNAVAILABLE', `cannot listen on ${r.address}: ${r.code}${busy ? ' (another process listens there)' : ''}`,
          { key: 'sockets', rule: 'the agent must be able to listen on every address in "sockets"', found: r.code }),
      });
    }
    if (results.every((r) => !('fd' in r))) await this.#release(this.#workers.pop()!);
    return [...missing, ...unheld];
  }

  /** Let every socket this agent bound go; fds passed by systemd stay open (systemd keeps them for the next agent anyway). */
  async close(): Promise<void> {
    const workers = this.#workers.splice(0);
    await Promise.all(workers.map((w) => this.#release(w)));
    for (const [address, h] of this.#held) if (h.source === 'agent') this.#held.delete(address);
  }

  async #release(w: { worker: Worker; gate: Int32Array }): Promise<void> {
    w.worker.ref();
    const exited = new Promise<void>((resolve) => w.worker.once('exit', () => resolve()));
    Atomics.store(w.gate, 0, 1);
    Atomics.notify(w.gate, 0);
    await exited;
  }
}
