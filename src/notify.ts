/**
 * The receiving side of the sd_notify protocol: the socket an app named by
 * NOTIFY_SOCKET reports `READY=1` (and `STATUS=`, `MAINPID=`, ...) on, for
 * `"health": {"readiness": "notify"}` (issue 11).
 *
 * The protocol (sd_notify(3), systemd-notify(1)): the app sends one AF_UNIX
 * SOCK_DGRAM datagram per notification to the path in $NOTIFY_SOCKET; its
 * payload is newline-separated `KEY=VALUE` assignments, like an environment
 * block (`READY=1\nSTATUS=listening on :8080\n`). systemd reads at most
 * PIPE_BUF (4096) bytes of one and splits lines at "\n" and "\r"; so does
 * this module. systemd-notify(1) (systemd >= 250) sends a second datagram
 * after its own, `BARRIER=1` with a pipe descriptor, and waits up to 5 s
 * for the descriptor to be closed: the receiver reads the datagram without
 * taking descriptors, so the kernel closes it, and such a barrier message is
 * not recorded here.
 *
 * Node has no AF_UNIX datagram sockets (nodejs/node#30059); the native addon
 * unix-dgram provides them. What it gives and what follows:
 * - No sender credentials (SO_PASSCRED is never set): a message cannot be
 *   attributed to a PID. The agent attributes by time (a `READY=1` read at
 *   or after the moment it started the new generation counts, see ready())
 *   and by `MAINPID=` when the app sends one. Whoever can write the socket
 *   can send, which is why it is root:GROUP 0660 (the app's group).
 * - Its poll handle is referenced from socket creation to close(), with no
 *   unref: an open NotifySocket keeps the Node process alive, like a
 *   listening server. The agent closes it when it stops (close()).
 * - It reads up to 64 KiB of a datagram and silently truncates the rest;
 *   anything above NOTIFY_MAX_BYTES is ignored anyway.
 * - A failing recvmsg() in it makes its JavaScript wrapper throw
 *   (bnoordhuis/node-unix-dgram#21, unfixed in 2.0.7; seen once in years,
 *   on no plausible error but a spurious EAGAIN): the agent would exit, and
 *   systemd restart it.
 * - Descriptors a sender passes (SCM_RIGHTS) are not taken: the kernel
 *   closes them.
 */
import { randomBytes } from 'node:crypto';
import { chmod, chown, lstat, mkdir, readlink, rename, rmdir, unlink } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { fileError, isErrno, RelinkError } from './errors.js';
import { describeKind } from './safefs.js';

/** Larger datagrams are ignored: systemd's NOTIFY_BUFFER_MAX (PIPE_BUF). */
export const NOTIFY_MAX_BYTES = 4096;
/** How many messages a NotifySocket keeps, oldest dropped first. */
export const NOTIFY_HISTORY = 32;
/** root:GROUP rw-rw----: root and the app's group may send, nobody else. */
export const NOTIFY_SOCKET_MODE = 0o660;
/** sockaddr_un.sun_path is 108 bytes, the terminating NUL included. */
export const MAX_SOCKET_PATH_BYTES = 107;

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * The assignments of one sd_notify datagram, in order, a later assignment
 * of a key replacing an earlier one (as in an environment block).
 * Lines are split at "\n" and "\r" (a trailing newline is optional); a line
 * without "=", with a key that is not a variable name ([A-Za-z_][A-Za-z0-9_]*)
 * or containing a NUL byte is ignored. Invalid UTF-8 becomes U+FFFD.
 * Values are kept as sent (STATUS= is free text: escape it for a terminal).
 */
export function parseNotify(buf: Buffer): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of buf.toString('utf8').split(/[\n\r]/)) {
    const eq = line.indexOf('=');
    if (eq <= 0 || line.includes('\0')) continue;
    const key = line.slice(0, eq);
    if (!KEY.test(key)) continue;
    fields.set(key, line.slice(eq + 1));
  }
  return fields;
}

/** One notification as the agent read it. */
export interface NotifyMessage {
  readonly fields: ReadonlyMap<string, string>;
  /** When the agent read it, on the socket's clock (Date.now() unless `now` was given), in ms. */
  readonly atMs: number;
  /** 1, 2, 3, ...: the order in which this socket read its messages. */
  readonly seq: number;
}

export interface NotifySocketOptions {
  /**
   * The group that may send (the app's group): the socket becomes root:gid,
   * mode 0660. Only when the agent runs as root; otherwise, or without a
   * gid, it stays the agent's, mode 0660 (its own user and group may send).
   */
  readonly gid?: number;
  /**
   * Called with every message recorded, as it is read. Like an event
   * listener's, an error it throws is uncaught.
   */
  readonly onMessage?: (message: NotifyMessage) => void;
  /** How many messages to keep (default NOTIFY_HISTORY). */
  readonly historySize?: number;
  /** The clock of `atMs`, `sinceMs` and `deadlineMs` (default Date.now). */
  readonly now?: () => number;
}

/** The subset of unix-dgram's Socket used here (it ships no types). */
interface DgramSocket {
  on(event: 'message', listener: (buf: Buffer) => void): unknown;
  on(event: 'error', listener: (err: Error & { code?: unknown }) => void): unknown;
  removeAllListeners(event?: string): unknown;
  bind(path: string): void;
  close(): void;
}

interface UnixDgram {
  createSocket(type: 'unix_dgram'): DgramSocket;
}

let addon: UnixDgram | undefined;

/** unix-dgram, loaded on first use: importing this module never needs the native build. */
function unixDgram(file: string): UnixDgram {
  try {
    addon ??= createRequire(import.meta.url)('unix-dgram') as UnixDgram;
    return addon;
  } catch (err) {
    throw failed(file, 'could not load the native addon unix-dgram (npm ci builds it with node-gyp: needs python3, make, g++ and Node\'s headers)',
      err instanceof Error ? err.message : String(err), err);
  }
}

function failed(file: string, rule: string, found: string, cause?: unknown): RelinkError {
  const e = fileError('NOTIFY_SOCKET_FAILED', file, undefined, rule, found);
  return new RelinkError(e.code, e.message, { file, rule, found }, cause === undefined ? undefined : { cause });
}

/** unix-dgram reports a negative errno number as `code` ("-98"): its name ("EADDRINUSE"). */
function errnoName(err: unknown): string {
  if (isErrno(err)) return err.code as string;
  const code = (err as { code?: unknown } | undefined)?.code;
  if (typeof code === 'number') {
    const name = Object.entries(osConstants.errno).find(([, n]) => n === -code)?.[0];
    return name ?? `errno ${-code}`;
  }
  return err instanceof Error ? err.message : String(err);
}

const agentUid = (): number => process.geteuid?.() ?? 0;

interface Waiter {
  readonly pred: (m: NotifyMessage) => boolean;
  readonly sinceMs: number;
  readonly settle: (m: NotifyMessage | undefined) => void;
}

/**
 * An sd_notify socket bound at a path: see openNotifySocket. Reads every
 * datagram as it arrives, keeps the last `historySize` messages, and the
 * latest READY=1, STATUS= and MAINPID= however many came after them.
 */
export class NotifySocket {
  /** The socket's path, to give the app as NOTIFY_SOCKET. */
  readonly path: string;
  readonly #sock: DgramSocket;
  /** The bound file's identity: close() removes that file, not one put in its place. */
  readonly #file: { readonly dev: number; readonly ino: number };
  readonly #now: () => number;
  readonly #historySize: number;
  readonly #onMessage: ((m: NotifyMessage) => void) | undefined;
  readonly #history: NotifyMessage[] = [];
  readonly #waiters = new Set<Waiter>();
  #seq = 0;
  #ignored = 0;
  #lastReady: NotifyMessage | undefined;
  #status: { readonly text: string; readonly atMs: number } | undefined;
  #mainPid: { readonly pid: number; readonly atMs: number } | undefined;
  #closing: Promise<void> | undefined;

  /** Use openNotifySocket. */
  constructor(socketPath: string, sock: DgramSocket, file: Stats, opts: NotifySocketOptions) {
    this.path = socketPath;
    this.#sock = sock;
    this.#file = { dev: file.dev, ino: file.ino };
    this.#now = opts.now ?? Date.now;
    this.#historySize = Math.max(1, opts.historySize ?? NOTIFY_HISTORY);
    this.#onMessage = opts.onMessage;
    sock.on('message', (buf) => this.#receive(buf));
  }

  #receive(buf: Buffer): void {
    // Empty, oversized (or truncated at 64 KiB by the addon), or with a NUL
    // byte (systemd drops those too): not a notification.
    if (buf.length === 0 || buf.length > NOTIFY_MAX_BYTES || buf.includes(0)) {
      this.#ignored++;
      return;
    }
    const fields = parseNotify(buf);
    if (fields.size === 0) {
      this.#ignored++;
      return;
    }
    // systemd-notify's barrier: a protocol step, not news from the app.
    if (fields.size === 1 && fields.has('BARRIER')) return;
    const m: NotifyMessage = { fields, atMs: this.#now(), seq: ++this.#seq };
    this.#history.push(m);
    if (this.#history.length > this.#historySize) this.#history.shift();
    if (fields.get('READY') === '1') this.#lastReady = m;
    const status = fields.get('STATUS');
    if (status !== undefined) this.#status = { text: status, atMs: m.atMs };
    const pid = fields.get('MAINPID');
    if (pid !== undefined && /^[1-9][0-9]{0,9}$/.test(pid) && Number(pid) <= 0x7fffffff) this.#mainPid = { pid: Number(pid), atMs: m.atMs };
    for (const w of [...this.#waiters]) {
      if (m.atMs >= w.sinceMs && w.pred(m)) w.settle(m);
    }
    this.#onMessage?.(m);
  }

  /** The messages kept, oldest first (at most historySize). */
  history(): readonly NotifyMessage[] {
    return [...this.#history];
  }

  /** Datagrams dropped so far: empty, above NOTIFY_MAX_BYTES, with a NUL byte, or with no KEY=VALUE line. */
  get ignored(): number {
    return this.#ignored;
  }

  /** The latest STATUS= (free text from the app: escape it for a terminal). */
  get status(): { readonly text: string; readonly atMs: number } | undefined {
    return this.#status;
  }

  /** The latest valid MAINPID= (a positive decimal PID). */
  get mainPid(): { readonly pid: number; readonly atMs: number } | undefined {
    return this.#mainPid;
  }

  /** The latest message with READY=1, even if the history has dropped it since. */
  get lastReady(): NotifyMessage | undefined {
    return this.#lastReady;
  }

  /**
   * The first message kept or to come, read at or after `sinceMs`, that
   * `pred` accepts. Resolves undefined when `deadlineMs` passes first
   * (Infinity: no deadline; the wait lasts `deadlineMs - now()` ms, at most
   * about 24 days) or the socket is closed; rejects with the signal's
   * reason when `signal` aborts. Times on the socket's clock.
   */
  waitFor(pred: (m: NotifyMessage) => boolean, sinceMs: number, deadlineMs: number, signal?: AbortSignal): Promise<NotifyMessage | undefined> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const kept = this.#history.find((m) => m.atMs >= sinceMs && pred(m));
    if (kept !== undefined) return Promise.resolve(kept);
    if (this.#closing !== undefined) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        this.#waiters.delete(waiter);
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const waiter: Waiter = { pred, sinceMs, settle: (m) => { done(); resolve(m); } };
      const onAbort = (): void => { done(); reject(signal?.reason); };
      this.#waiters.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (Number.isFinite(deadlineMs)) {
        const left = deadlineMs - this.#now();
        // (setTimeout would fire at once above 2^31-1 ms, about 24 days)
        if (left <= 0) waiter.settle(undefined);
        else timer = setTimeout(() => waiter.settle(undefined), Math.min(left, 0x7fffffff));
      }
    });
  }

  /**
   * A READY=1 read at or after `sinceMs` (the moment the agent started the
   * generation it waits for: a READY=1 from before that is an older
   * generation's), or undefined at `deadlineMs` or on close; as waitFor.
   * The oldest such message kept, or the latest one when the history has
   * dropped them (an app that sent more than historySize messages since).
   */
  ready(sinceMs: number, deadlineMs: number, signal?: AbortSignal): Promise<NotifyMessage | undefined> {
    const last = this.#lastReady;
    if (last !== undefined && last.atMs >= sinceMs && !signal?.aborted && !this.#history.includes(last)) return Promise.resolve(last);
    return this.waitFor((m) => m.fields.get('READY') === '1', sinceMs, deadlineMs, signal);
  }

  /**
   * Stop reading, settle every waitFor with undefined, and remove the
   * socket file if it is still the one bound here. Idempotent. After it the
   * socket no longer keeps the process alive.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const w of [...this.#waiters]) w.settle(undefined);
      this.#sock.removeAllListeners('message');
      try {
        this.#sock.close();
      } catch {
        // close(2) failed (EBADF): the descriptor is gone either way, and so is the watcher.
      }
      const st = await lstat(this.path).catch(() => undefined);
      if (st !== undefined && st.isSocket() && st.dev === this.#file.dev && st.ino === this.#file.ino) {
        await unlink(this.path).catch((err: unknown) => (isErrno(err, 'ENOENT') ? undefined : Promise.reject(err)));
      }
    })();
    return this.#closing;
  }
}

/**
 * Bind an sd_notify socket at `socketPath` (absolute, at most 107 bytes,
 * in a folder whose path is at most 90), mode 0660, root:`opts.gid` when
 * the agent is root.
 *
 * The folder it goes in is the caller's and must exist, be a real folder
 * (not a symlink), belong to root (or the agent's user) and be writable by
 * nobody else, so nobody can swap the socket file between the calls here;
 * the app's group needs search (x) permission on it. The caller also makes
 * sure no other live agent uses the path (the app's lock): a socket found
 * there is one a previous agent left, and the new one replaces it. Anything
 * else found there (a symlink, never followed; a file; a folder) is refused.
 *
 * The socket is bound in a fresh 0700 folder beside it, given its mode and
 * group there, and renamed into place: whatever the umask, nobody but root
 * ever reaches it with another mode (a sender that connected in between
 * would keep sending after the chmod).
 *
 * Throws a RelinkError: UNSAFE_PATH for what is found at the path or an
 * unsafe folder, NOTIFY_SOCKET_FAILED for a path too long, the addon not
 * built, or bind, chmod, chown, rename failing.
 */
export async function openNotifySocket(socketPath: string, opts: NotifySocketOptions = {}): Promise<NotifySocket> {
  if (!path.isAbsolute(socketPath)) throw failed(socketPath, 'must be an absolute path', socketPath);
  const file = path.normalize(socketPath);
  const dir = path.dirname(file);
  if (Buffer.byteLength(file) > MAX_SOCKET_PATH_BYTES) {
    throw failed(file, `must be at most ${MAX_SOCKET_PATH_BYTES} bytes long (sockaddr_un)`, `${Buffer.byteLength(file)} bytes`);
  }
  await assertSafeFolder(dir);
  await assertReplaceable(file);
  const dgram = unixDgram(file);

  // The private folder: mkdir's 0700 can only lose bits to the umask.
  const tmpDir = path.join(dir, `.notify-${randomBytes(3).toString('hex')}`);
  const tmp = path.join(tmpDir, 's');
  if (Buffer.byteLength(tmp) > MAX_SOCKET_PATH_BYTES) {
    const room = MAX_SOCKET_PATH_BYTES - (Buffer.byteLength(tmp) - Buffer.byteLength(dir));
    throw failed(file, `must be in a folder whose path is at most ${room} bytes long (the socket is first bound as ${tmp}, and sockaddr_un holds ${MAX_SOCKET_PATH_BYTES})`,
      `${Buffer.byteLength(dir)} bytes`);
  }
  try {
    await mkdir(tmpDir, 0o700);
  } catch (err) {
    throw failed(file, `could not create the folder ${tmpDir} to bind it in`, errnoName(err), err);
  }
  let sock: DgramSocket | undefined;
  try {
    sock = dgram.createSocket('unix_dgram');
    let bindError: unknown;
    // unix-dgram reports a failed bind as an 'error' event, emitted before bind() returns.
    sock.on('error', (err) => { bindError ??= err; });
    sock.bind(tmp);
    if (bindError !== undefined) throw failed(file, 'could not bind the socket', errnoName(bindError), bindError);
    await chmod(tmp, NOTIFY_SOCKET_MODE).catch((err: unknown) => Promise.reject(failed(file, 'could not set its mode 0660', errnoName(err), err)));
    if (agentUid() === 0 && opts.gid !== undefined) {
      await chown(tmp, 0, opts.gid).catch((err: unknown) => Promise.reject(failed(file, `could not give it to root:${opts.gid}`, errnoName(err), err)));
    }
    // Replaces a socket a previous agent left in one step (rename(2)
    // follows no symlink: nothing but a socket was found there, and only
    // root can put anything in this folder).
    await rename(tmp, file).catch((err: unknown) => Promise.reject(failed(file, 'could not move the socket into place', errnoName(err), err)));
    const st = await lstat(file);
    return new NotifySocket(file, sock, st, opts);
  } catch (err) {
    if (sock !== undefined) {
      try {
        sock.close();
      } catch {
        // already closed
      }
    }
    await unlink(tmp).catch(() => undefined);
    throw err instanceof RelinkError ? err : failed(file, 'could not be opened', errnoName(err), err);
  } finally {
    await rmdir(tmpDir).catch(() => undefined);
  }
}

/** The socket's folder: a real folder that nobody but root (or the agent's user) can write. */
async function assertSafeFolder(dir: string): Promise<void> {
  let st: Stats;
  try {
    st = await lstat(dir);
  } catch (err) {
    throw fileError(isErrno(err, 'ENOENT') ? 'NOTIFY_SOCKET_FAILED' : 'UNSAFE_PATH', dir, undefined, 'must be an existing folder for the notify socket', errnoName(err));
  }
  if (!st.isDirectory()) throw fileError('UNSAFE_PATH', dir, undefined, 'must be a folder for the notify socket', describeKind(st));
  const owner = st.uid === 0 || st.uid === agentUid();
  if (!owner || (st.mode & 0o022) !== 0) {
    throw fileError('UNSAFE_PATH', dir, undefined, 'must be writable by root (or the agent\'s user) alone: anybody else could swap the notify socket',
      `owned by uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}`);
  }
}

/**
 * What is at `file` may be replaced: nothing, or a socket a previous agent
 * left (the rename into place replaces it, atomically). Anything else is
 * refused.
 */
async function assertReplaceable(file: string): Promise<void> {
  let st: Stats;
  try {
    st = await lstat(file);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw fileError('UNSAFE_PATH', file, undefined, 'must be a socket relink left, or absent', errnoName(err));
  }
  if (!st.isSocket()) {
    const what = st.isSymbolicLink() ? `a symlink to ${await readlink(file).catch(() => '?')}` : describeKind(st);
    throw fileError('UNSAFE_PATH', file, undefined, 'must be a socket relink left, or absent (nothing else is replaced or followed)', what);
  }
}
