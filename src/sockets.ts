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
 *   running generation keeps serving on its own (a unix socket by the
 *   same path: the agent leaves the path in place), and the next agent
 *   finds the address taken by it (see `busy`). An address the config no
 *   longer names is let go on its own (`release`).
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { RelinkError } from './errors.js';
import { parseListenAddress } from './listenfds.js';
import { describeListener, portListener } from './proc.js';

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
  /** For a busy TCP address: the process listening there, when it can be told (src/proc.ts portListener). */
  readonly holder?: { readonly pid?: number; readonly exe?: string };
  /**
   * Busy because the app's own running generation listens there (a hand-
   * started agent was restarted): set by the app's Effects, which knows its
   * processes (src/effects.ts holdSockets). Such an address is free once
   * that generation is stopped; any other unheld one is not.
   */
  readonly own?: boolean;
  /** Binding it again may work (the agent binds its own: a port freed, a folder made); false when it must come from systemd. */
  readonly retry: boolean;
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

// The gate the agent and a socket worker share: [0] counts commands, [1]
// says which: the index of one socket to close, or CLOSE_ALL.
const CLOSE_ALL = -1;

// The worker's whole program: listen on every address, say which fds, then
// block before the event loop polls (so nothing is ever accepted). Woken,
// it closes one socket (a dropped address) or all of them and returns to
// its event loop to end. Every listen() resolves through process.nextTick
// (an IP literal's lookup, the bind, the 'listening' or 'error' event), all
// drained before the loop's first poll: the wait starts before any socket
// is polled. A closing unix socket would take its path along (libuv
// unlinks what it bound, at once): the path is hard-linked aside first and
// put back, so that the app's own copy stays reachable by its name.
const WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const net = require('node:net');
const fs = require('node:fs');
const gate = new Int32Array(workerData.gate);
const servers = new Array(workerData.requests.length);
const results = new Array(workerData.requests.length);
let pending = workerData.requests.length;
function closeKeepingPath(i) {
  const server = servers[i];
  if (server === undefined) return;
  servers[i] = undefined;
  const where = workerData.requests[i].path;
  if (where === undefined) return server.close();
  const aside = where + '.relink-' + process.pid + '-' + i;
  let kept = false;
  try { fs.linkSync(where, aside); kept = true; } catch {}
  server.close();
  if (!kept) return;
  try { fs.renameSync(aside, where); } catch { try { fs.unlinkSync(aside); } catch {} }
}
function done(i, r) {
  results[i] = r;
  if (--pending > 0) return;
  parentPort.postMessage(results);
  let seen = 0;
  for (;;) {
    Atomics.wait(gate, 0, seen);
    seen = Atomics.load(gate, 0);
    const which = Atomics.load(gate, 1);
    if (which === ${CLOSE_ALL}) break;
    closeKeepingPath(which);
    parentPort.postMessage({ closed: which });
  }
  for (let k = 0; k < servers.length; k++) closeKeepingPath(k);
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
      servers[i] = server;
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

/** A blocked socket worker, the addresses it bound (by request index) and those still open. */
interface SocketWorker {
  readonly worker: Worker;
  readonly gate: Int32Array;
  readonly addresses: readonly string[];
  readonly open: Set<string>;
}

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
  readonly #workers: SocketWorker[] = [];

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
        retry: false,
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
          retry: true,
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
    const gate = new Int32Array(new SharedArrayBuffer(8));
    const worker = new Worker(WORKER, { eval: true, workerData: { gate: gate.buffer, requests: payload } });
    const results = await new Promise<Outcome[]>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`the socket worker exited (${code}) before binding`)));
    });
    // Blocked from now on: it must not keep the agent alive by itself.
    worker.unref();
    const entry: SocketWorker = { worker, gate, addresses: payload.map((p) => p.address), open: new Set() };
    this.#workers.push(entry);
    const unheld: Unheld[] = [];
    for (const r of results) {
      if ('fd' in r) {
        this.#held.set(r.address, { address: r.address, fd: r.fd, source: 'agent' });
        entry.open.add(r.address);
        continue;
      }
      const busy = r.code === 'EADDRINUSE';
      const holder = busy ? tcpHolder(r.address) : undefined;
      unheld.push({
        address: r.address,
        busy,
        ...(holder === undefined ? {} : { holder }),
        retry: true,
        error: new RelinkError('SOCKET_UNAVAILABLE', `cannot listen on ${r.address}: ${r.code}${busy ? ` (${describeListener(holder) ?? 'another process'} listens there)` : ''}`,
          { key: 'sockets', rule: 'the agent must be able to listen on every address in "sockets"', found: r.code }),
      });
    }
    if (entry.open.size === 0) await this.#end(this.#workers.pop()!);
    return [...missing, ...unheld];
  }

  /**
   * Stop holding `address` (an app removed by a config reload, an address
   * dropped from "sockets"): a socket this agent bound is closed in this
   * process; a unix socket's path stays, so that a generation still running
   * on its own copy stays reachable. A socket systemd passed is kept (its
   * socket unit listens until it is stopped, and an app put back gets it
   * again). Resolves with what was done: 'closed', 'kept' (systemd's) or
   * 'none' (not held).
   */
  async release(address: string): Promise<'closed' | 'kept' | 'none'> {
    const held = this.#held.get(address);
    if (held === undefined) return 'none';
    if (held.source === 'systemd') return 'kept';
    const w = this.#workers.find((x) => x.open.has(address));
    this.#held.delete(address);
    if (w === undefined) return 'closed';
    w.open.delete(address);
    if (w.open.size === 0) {
      this.#workers.splice(this.#workers.indexOf(w), 1);
      await this.#end(w);
      return 'closed';
    }
    const closed = new Promise<void>((resolve) => w.worker.once('message', () => resolve()));
    w.worker.ref();
    this.#command(w, w.addresses.indexOf(address));
    await closed;
    w.worker.unref();
    return 'closed';
  }

  /** Let every socket this agent bound go (unix socket paths stay); fds passed by systemd stay open (systemd keeps them for the next agent anyway). */
  async close(): Promise<void> {
    const workers = this.#workers.splice(0);
    await Promise.all(workers.map((w) => this.#end(w)));
    for (const [address, h] of this.#held) if (h.source === 'agent') this.#held.delete(address);
  }

  #command(w: SocketWorker, which: number): void {
    Atomics.store(w.gate, 1, which);
    Atomics.add(w.gate, 0, 1);
    Atomics.notify(w.gate, 0);
  }

  async #end(w: SocketWorker): Promise<void> {
    w.worker.ref();
    const exited = new Promise<void>((resolve) => w.worker.once('exit', () => resolve()));
    this.#command(w, CLOSE_ALL);
    await exited;
  }
}

/**
 * Who holds a TCP address the agent could not bind, for the message: "pid
 * N (exe) listens there" (proc.ts portListener, which looks at every
 * process's fds: only on this failure); "another process listens there"
 * when it cannot be told (a unix socket, or a process the agent may not
 * look into).
 */
function tcpHolder(address: string): { pid?: number; exe?: string } | undefined {
  const a = parseListenAddress(address);
  return a.kind === 'tcp' ? portListener(a.port) : undefined;
}
