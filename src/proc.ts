/**
 * Reading processes from /proc, and finding the app's own: by lineage.
 *
 * A process belongs to an app because the agent started it for that app,
 * or it descends from one that was (forks, re-execs, daemonized children),
 * and it runs as the app's user. That holds for any language and any
 * launcher: an ELF binary, a `#!` script (whose executable is the
 * interpreter), a shell wrapper that execs gunicorn. Where the releases live
 * does not matter, so two apps may share a releases folder and a re-pointed
 * releases symlink loses nothing. How (README, "Design notes: identity"):
 *
 * - roots: every process the agent starts is recorded by (pid, start time);
 *   the record is kept in the app's state file (root-owned: the app's user
 *   cannot forge it), so the next agent knows them too;
 * - the process tree: a process whose parent is a member is a member, found
 *   by walking the table (pid, ppid, uid: ps-list for an app's adoption,
 *   procTable after) and confirmed in /proc
 *   (the parent started before the child: a recycled ppid proves nothing).
 *   Membership sticks: a worker seen once stays the app's after its master
 *   dies and it is re-parented;
 * - a marker in the environment, RELINK_APP and RELINK_APP_DIR, set at
 *   start and inherited by children: it finds a daemonized child whose
 *   parent exited before the agent looked. It is only believed of a process
 *   of the app's user, who could start such a process anyway.
 *
 * A process must run as the app's user (real and effective uid), except
 * below an app that runs as root ("allowRoot"), whose children may drop
 * privileges (nginx's workers). A process of another user is never adopted
 * and never signalled. A command line that merely mentions app.bin proves
 * nothing and is never looked at.
 *
 * Generations: every start opens a generation, and so does every reload
 * signal: a child of a generation's main process started at or after the
 * signal belongs to the new one (a re-exec'd successor, nginx's new
 * workers), everything else to its parent's. See src/tracker.ts for what is
 * done with them.
 */
import { execFile } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import psList from 'ps-list';
import { isErrno, RelinkError } from './errors.js';
import { readSmallFile } from './safefs.js';
import { lookupUser } from './user.js';

export interface ProcIdentity {
  readonly pid: number;
  /** Start time in clock ticks after boot (/proc/PID/stat field 22): guards against PID reuse. */
  readonly startTime: number;
}

export interface ProcInfo extends ProcIdentity {
  readonly ppid: number;
  /**
   * The real executable; " (deleted)" removed, see `deleted`. Empty when
   * this process may not read it: never inside a releases folder, so such a
   * process never belongs to an app.
   */
  readonly exe: string;
  /** The executable was unlinked or replaced on disk since the process started. */
  readonly deleted: boolean;
  /** Real uid (/proc/PID/status). */
  readonly uid: number;
  /** Effective uid; read from /proc, optional only so tests can describe a process briefly. */
  readonly euid?: number;
  /**
   * Page faults of the children this process has waited for (cminflt +
   * cmajflt, /proc/PID/stat fields 11 and 13). Every process that runs
   * faults pages in, so this grows whenever one of its children exits and is
   * reaped: how a re-exec'ing app's failed successor shows up, even one
   * that lived for a millisecond. Optional as euid is.
   */
  readonly childFaults?: number;
  /**
   * Where the process's stack begins (/proc/PID/stat field 28): placed at
   * random by each execve (ASLR), so a change with the same PID and start
   * time means the process re-executed itself in place, even when its
   * executable (an interpreter) stayed the same. Optional as euid is.
   */
  readonly startStack?: number;
  /** Its session id (/proc/PID/stat field 6): an app that daemonizes calls setsid(), its workers and helpers do not. */
  readonly session?: number;
  /** The generation the process belongs to (set by ProcessFinder). */
  readonly gen?: number;
}

const DELETED = ' (deleted)';

/**
 * The process as /proc sees it now, or undefined if it is gone, a zombie or
 * not readable.
 *
 * Synchronous inside: /proc is generated from kernel memory and never waits
 * for a disk, and this runs once per app per second (supervision). Through
 * the libuv thread pool each of these reads cost a hand-off to a worker
 * thread and back (four for a readFile): with 20 apps that was ~1,600 futex
 * calls a second for an idle agent (strace -c, see BENCHMARKS.md).
 */
export async function readProc(pid: number): Promise<ProcInfo | undefined> {
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  try {
    const statText = readFileSync(`/proc/${pid}/stat`, 'utf8');
    let exeRaw: string;
    try {
      exeRaw = readlinkSync(`/proc/${pid}/exe`);
    } catch (err) {
      // Another user's exe is guarded like ptrace (CAP_SYS_PTRACE): unreadable
      // to a non-root `relink status`, yet the process itself is there.
      if (!isErrno(err, 'EACCES')) throw err;
      exeRaw = '';
    }
    // Uids from status, not the owner of /proc/PID: that is root for a
    // process that made itself non-dumpable, whoever runs it.
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    // comm (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    const rest = statText.slice(statText.lastIndexOf(')') + 2).split(' ');
    const state = rest[0];
    if (state === 'Z' || state === 'X') return undefined;
    const ppid = Number(rest[1]);
    const startTime = Number(rest[19]);
    // Fields are counted from 1 and rest[0] is field 3.
    const childFaults = Number(rest[8]) + Number(rest[10]);
    const startStack = Number(rest[25]);
    const session = Number(rest[3]);
    const deleted = exeRaw.endsWith(DELETED);
    const exe = deleted ? exeRaw.slice(0, -DELETED.length) : exeRaw;
    const uids = /^Uid:\s+(\d+)\s+(\d+)/m.exec(status);
    if (uids === null) return undefined;
    return { pid, ppid, startTime, exe, deleted, uid: Number(uids[1]), euid: Number(uids[2]), childFaults, startStack, session };
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ESRCH') || isErrno(err, 'EACCES') || isErrno(err, 'EPERM')) return undefined;
    throw err;
  }
}

/** The processes of `procs` whose parent is not among them (a generation's mains, a master and not its workers), oldest first. */
export function rootsOf(procs: readonly ProcInfo[]): ProcInfo[] {
  const pids = new Set(procs.map((p) => p.pid));
  return procs.filter((p) => !pids.has(p.ppid)).sort((a, b) => a.startTime - b.startTime || a.pid - b.pid);
}

/**
 * Kernel functions a thread sleeps in while it waits for a connection or
 * for I/O on many sockets: select and poll (poll_schedule_timeout, older
 * do_select / do_sys_poll), epoll (do_epoll_wait, older ep_poll), a
 * blocking accept (inet_csk_accept). Names from /proc/PID/task/TID/wchan,
 * which may carry a compiler suffix (".constprop.0").
 */
const WAITING_FOR_WORK = /^(poll_schedule_timeout|do_select|do_sys_poll|do_epoll_wait|ep_poll|inet_csk_accept)\b/;

/**
 * Is `pid` waiting for work now: one of its threads asleep in select,
 * poll, epoll or accept (a server between requests, past its start)?
 * A process importing its code runs, or sleeps elsewhere (a timer, a
 * connect). Where the kernel shows no wait channel (wchan "0"), a process
 * asleep (state S) counts. Undefined when the process is gone.
 */
export function waitingForWork(pid: number): boolean | undefined {
  const st = readStat(pid);
  if (st === undefined || st.state === 'Z' || st.state === 'X') return undefined;
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return undefined;
  }
  let shown = false;
  for (const tid of tids) {
    let wchan: string;
    try {
      wchan = readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8').trim();
    } catch {
      continue;
    }
    if (wchan === '' || wchan === '0') continue;
    shown = true;
    if (WAITING_FOR_WORK.test(wchan)) return true;
  }
  return shown ? false : st.state === 'S';
}

/** How many processes descendantsOf follows at most: a generation is a master and its workers, not a fork bomb. */
const DESCENDANTS_MAX = 256;

/**
 * The processes below `pid` now (its children, theirs, ...; `pid` itself
 * not included), each with its parent, from the kernel's list of each
 * thread's children (/proc/PID/task/TID/children: Linux 3.5,
 * CONFIG_PROC_CHILDREN, which Debian's kernels set). The walk of one tree:
 * a few reads, where a look at the whole process table (procRows) reads
 * /proc/PID/stat for every process on the host. At most DESCENDANTS_MAX.
 * Undefined when the kernel does not list children (the file is missing)
 * or `pid` is gone.
 */
export function descendantsOf(pid: number): Array<{ readonly pid: number; readonly ppid: number }> | undefined {
  const out: Array<{ pid: number; ppid: number }> = [];
  const queue = [pid];
  for (let i = 0; i < queue.length && out.length < DESCENDANTS_MAX; i++) {
    const parent = queue[i]!;
    let tids: string[];
    try {
      tids = readdirSync(`/proc/${parent}/task`);
    } catch {
      if (parent === pid) return undefined;
      continue;
    }
    for (const tid of tids) {
      let text: string;
      try {
        text = readFileSync(`/proc/${parent}/task/${tid}/children`, 'utf8');
      } catch {
        // A thread that ended meanwhile has no file; a kernel that does not
        // list children has none for a thread that is there.
        if (existsSync(`/proc/${parent}/task/${tid}`)) return undefined;
        continue;
      }
      for (const word of text.split(' ')) {
        const child = Number(word);
        if (!Number.isSafeInteger(child) || child <= 0) continue;
        out.push({ pid: child, ppid: parent });
        queue.push(child);
      }
    }
  }
  return out;
}

/**
 * The processes of `tree` that are no other's parent in it: a pre-fork
 * server's workers, or the one process of a plain server (a master waits
 * for its children as often as for connections, so where it waits tells
 * nothing of whether it serves).
 */
export function leavesOf<T extends { readonly pid: number; readonly ppid: number | undefined }>(tree: readonly T[]): T[] {
  const parents = new Set(tree.map((p) => p.ppid));
  return tree.filter((p) => !parents.has(p.pid));
}

/** kernel.randomize_va_space is 0 (read once: a host setting). */
let aslrOff: boolean | undefined;

/** ADDR_NO_RANDOMIZE in a process's personality (/proc/PID/personality, linux/personality.h). */
const ADDR_NO_RANDOMIZE = 0x0040000;

/**
 * Is `child` a fork of `parent` that has not exec'd: the parent's own image
 * (a pre-fork server's worker), not a new program (a new master, a
 * successor)? A fork copies the address space, start of stack included
 * (/proc/PID/stat field 28, startstack); an exec maps a new stack, at an
 * address randomized by ASLR. False whenever that cannot tell: ASLR off
 * (kernel.randomize_va_space 0, or the parent's personality has
 * ADDR_NO_RANDOMIZE: every exec of one binary may then get the same
 * stack), a start of stack the kernel hid (0: no ptrace access), or
 * `child` not a child of `parent`.
 */
export function forkedImage(parent: ProcInfo, child: ProcInfo): boolean {
  if (child.ppid !== parent.pid || parent.startStack === undefined || child.startStack === undefined) return false;
  if (parent.startStack <= 0 || child.startStack !== parent.startStack) return false;
  try {
    aslrOff ??= readFileSync('/proc/sys/kernel/randomize_va_space', 'utf8').trim() === '0';
    if (aslrOff) return false;
    if ((Number.parseInt(readFileSync(`/proc/${parent.pid}/personality`, 'utf8').trim(), 16) & ADDR_NO_RANDOMIZE) !== 0) return false;
  } catch {
    return false;
  }
  return true;
}

export function sameProcess(a: ProcIdentity | undefined, b: ProcIdentity | undefined): boolean {
  return a !== undefined && b !== undefined && a.pid === b.pid && a.startTime === b.startTime;
}

/** Clock ticks per second of a process's start time (USER_HZ; 100 on every architecture Linux runs relink on). */
const TICKS_PER_SECOND = 100;

/** Clock ticks since boot now: the unit of ProcIdentity.startTime. */
export function ticksNow(): number {
  return Math.floor(Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * TICKS_PER_SECOND);
}

/**
 * When the machine booted (ms since the epoch): a start time in ticks
 * becomes a date with it. Now less /proc/uptime (the boot clock start
 * times count on, to 10 ms), not /proc/stat's btime, which is in whole
 * seconds: every start shown up to a second early.
 */
export function bootTimeMs(): number {
  const uptimeS = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
  return Date.now() - Math.round(uptimeS * 1000);
}

/** When a process started (ms since the epoch). */
export function startedAtMs(id: ProcIdentity, bootMs = bootTimeMs()): number {
  return bootMs + Math.round((id.startTime * 1000) / TICKS_PER_SECOND);
}

/** What /proc/PID/stat says of a process that may be a zombie: state letter, parent, session id, start time (clock ticks since boot); undefined when gone. */
export function readStat(pid: number): { state: string; ppid: number; session: number; startTime: number } | undefined {
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0] ?? '?', ppid: Number(rest[1]), session: Number(rest[3]), startTime: Number(rest[19]) };
  } catch {
    return undefined;
  }
}

/** How long one walk of /proc serves every app's refresh (ms): 20 apps re-checking together walk it once. */
const TABLE_TTL_MS = 250;
let table: { at: number; rows: TableRow[] } | undefined;

/**
 * Every process's pid and parent, straight from /proc/PID/stat (no uid, no
 * executable: the cheap view the periodic lineage refresh needs), shared by
 * all apps for TABLE_TTL_MS.
 */
export function procRows(now = Date.now(), maxAgeMs = TABLE_TTL_MS): ReadonlyArray<TableRow> {
  if (table !== undefined && now - table.at < maxAgeMs) return table.rows;
  const rows: TableRow[] = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isSafeInteger(pid) || pid <= 0) continue;
    const st = readStat(pid);
    if (st !== undefined) rows.push({ pid, ppid: st.ppid });
  }
  table = { at: now, rows };
  return rows;
}

/**
 * The process table from /proc, read afresh: every process's pid, parent
 * (`PPid:`) and effective uid (`Uid:`, second field, as `ps -o uid` shows
 * it) from /proc/PID/status, and its executable (the /proc/PID/exe link,
 * " (deleted)" kept; undefined where unreadable: a kernel thread, or
 * another user's process to an agent that is not root). A hint, as every
 * row is: each candidate is confirmed by readProc. Synchronous: about 4 ms
 * for 100 processes, where ps-list (which reads the same files through two
 * `ps` processes, and readlinks every exe synchronously too) costs ~30 ms of
 * CPU and two forks of the agent (BENCHMARKS.md, section 1).
 */
export function procTable(): TableRow[] {
  const rows: TableRow[] = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isSafeInteger(pid) || pid <= 0) continue;
    let status: string;
    try {
      status = readFileSync(`/proc/${pid}/status`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    const ppid = /^PPid:\s+(\d+)/m.exec(status);
    const uid = /^Uid:\s+\d+\s+(\d+)/m.exec(status);
    let exe: string | undefined;
    try {
      exe = readlinkSync(`/proc/${pid}/exe`);
    } catch {
      // a kernel thread, a zombie, or not ours to read
    }
    rows.push({ pid, ppid: ppid === null ? undefined : Number(ppid[1]), uid: uid === null ? undefined : Number(uid[1]), path: exe });
  }
  return rows;
}

let fullTable: { at: number; rows: TableRow[] } | undefined;

/** procTable, shared for TABLE_TTL_MS: a status of 20 apps walks /proc once, not once per app. */
export function recentProcTable(now = Date.now()): ReadonlyArray<TableRow> {
  if (fullTable === undefined || now - fullTable.at >= TABLE_TTL_MS) fullTable = { at: now, rows: procTable() };
  return fullTable.rows;
}

/**
 * A process's command line with each argument cut to its last path
 * component ("./app.bin" and "/srv/web/app.bin" read the same), or
 * undefined when gone: tells a process that re-executed itself (the same
 * command line) from a worker that renamed itself (nginx's "worker
 * process") or a helper it started (`sleep`).
 */
export function commandOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '').map((a) => path.basename(a)).join(' ');
  } catch {
    return undefined;
  }
}

/** The socket inodes a process holds open (its /proc/PID/fd links "socket:[N]"); empty when gone or unreadable. */
export function socketInodes(pid: number): Set<string> {
  const out = new Set<string>();
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out;
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m !== null) out.add(m[1]!);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

/**
 * Who listens on TCP `port` (on any address, IPv4 or IPv6) in this
 * network namespace, other than this process and `except`: the first
 * holder a walk of /proc/PID/fd finds (`pid` undefined when none readable
 * does: another user's process to an agent that is not root); undefined
 * when nothing else listens on it. A walk of every process's fds: for a
 * start's pre-check, never a loop.
 */
export function portListener(port: number, except: ReadonlySet<number> = new Set()): { pid?: number; exe?: string } | undefined {
  const inodes = listenerInodes({ port });
  for (const own of socketInodes(process.pid)) inodes.delete(own);
  if (inodes.size === 0) return undefined;
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || except.has(pid)) continue;
    const held = socketInodes(pid);
    if (![...inodes].some((i) => held.has(i))) continue;
    let exe: string | undefined;
    try {
      exe = readlinkSync(`/proc/${pid}/exe`);
    } catch {
      exe = undefined;
    }
    return exe === undefined ? { pid } : { pid, exe };
  }
  return {};
}

/** A listener portListener found, for a message: "pid N (exe)"; undefined when there is none or its holder could not be seen. */
export function describeListener(holder: { readonly pid?: number; readonly exe?: string } | undefined): string | undefined {
  if (holder?.pid === undefined) return undefined;
  return `pid ${holder.pid}${holder.exe === undefined ? '' : ` (${holder.exe})`}`;
}

/**
 * The regular file `pid` has open as its stderr (fd 2), by the path the
 * kernel gives (/proc/PID/fd/2); undefined when fd 2 is something else (a
 * pipe, a socket such as the journal's, a terminal, /dev/null), is the same
 * file as `except` (the app's own log, compared by device and inode), was
 * deleted, or cannot be read (gone, another user's).
 */
export function stderrFile(pid: number, except?: string): string | undefined {
  try {
    const target = readlinkSync(`/proc/${pid}/fd/2`);
    if (!target.startsWith('/') || target.endsWith(' (deleted)')) return undefined;
    const st = statSync(`/proc/${pid}/fd/2`);
    if (!st.isFile()) return undefined;
    if (except !== undefined) {
      const other = statSync(except, { throwIfNoEntry: false });
      if (other !== undefined && other.dev === st.dev && other.ino === st.ino) return undefined;
    }
    return target;
  } catch {
    return undefined;
  }
}

/** The inode of the socket open at `fd` in `pid` (its /proc/PID/fd link "socket:[N]"); undefined for anything else, or when closed or unreadable. */
export function fdSocketInode(pid: number | 'self', fd: number | string): string | undefined {
  try {
    return /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1];
  } catch {
    return undefined;
  }
}

/** One TCP or Unix stream/datagram socket of a network namespace, as /proc/PID/net/{tcp,tcp6,unix} lists it. */
export interface SocketEntry {
  readonly table: 'tcp' | 'tcp6' | 'unix';
  readonly inode: string;
  /** TCP state 0A (LISTEN); Unix: the __SO_ACCEPTCON flag (listen() was called). */
  readonly listening: boolean;
  /**
   * The local address as the kernel prints it: TCP "0100007F:1F90" (the
   * address as 32-bit words in host byte order, the port in hex); Unix the
   * path, "" when unbound, "@name" for an abstract one.
   */
  readonly local: string;
}

const UNIX_LINE = /^\s*[0-9A-Fa-f]+:\s+[0-9A-Fa-f]+\s+[0-9A-Fa-f]+\s+([0-9A-Fa-f]+)\s+[0-9A-Fa-f]+\s+[0-9A-Fa-f]+\s+(\d+)(?: (.*))?$/;

/**
 * Every TCP (IPv4 and IPv6) and Unix socket in `pid`'s network namespace;
 * a table that cannot be read (no IPv6 in the kernel) is left out.
 */
export function socketTable(pid: number | 'self'): SocketEntry[] {
  const out: SocketEntry[] = [];
  for (const table of ['tcp', 'tcp6'] as const) {
    let text = '';
    try {
      text = readFileSync(`/proc/${pid}/net/${table}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[1] !== undefined && f[9] !== undefined) out.push({ table, inode: f[9], listening: f[3] === '0A', local: f[1] });
    }
  }
  let text = '';
  try {
    text = readFileSync(`/proc/${pid}/net/unix`, 'utf8');
  } catch {
    // no unix table: TCP only
  }
  for (const line of text.split('\n').slice(1)) {
    const m = UNIX_LINE.exec(line);
    if (m !== null) out.push({ table: 'unix', inode: m[2]!, listening: (Number.parseInt(m[1]!, 16) & 0x10000) !== 0, local: m[3] ?? '' });
  }
  return out;
}

/**
 * The TCP listeners of one table (/proc/PID/net/tcp or tcp6), read only as
 * far as they go. The kernel prints the listening hash first and the
 * established hash after it (tcp_seq_next: listening, then established;
 * request sockets in SYN_RECV come with the established ones since Linux
 * 4.4, and beside their listener before it), so the first line in any
 * other state than LISTEN (0A) or SYN_RECV (03) ends the listeners. Under
 * load that is most of the file: 42,000 TIME_WAIT lines (6 MB of text the
 * kernel formats on every read) where a handoff scan, every 100 ms, needs
 * a few lines. A table that cannot be read (no IPv6) gives nothing.
 */
function tcpListeners(pid: number | 'self', table: 'tcp' | 'tcp6', found: (inode: string, local: string) => void): void {
  let fd: number;
  try {
    fd = openSync(`/proc/${pid}/net/${table}`, 'r');
  } catch {
    return;
  }
  try {
    const buf = Buffer.allocUnsafe(64 * 1024);
    let rest = '';
    let header = true;
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) return;
      const lines = (rest + buf.toString('latin1', 0, n)).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) {
        if (header) {
          header = false;
          continue;
        }
        const f = line.trim().split(/\s+/);
        if (f[3] === '0A' && f[9] !== undefined) found(f[9], f[1] ?? '');
        else if (f[3] !== '03' && f[3] !== undefined) return;
      }
    }
  } catch {
    // the table vanished with the process: what was read stands
  } finally {
    closeSync(fd);
  }
}

/** The inodes of listening sockets in `pid`'s network namespace: TCP/TCP6 in state LISTEN, Unix with __SO_ACCEPTCON. */
export function listeningInodes(pid: number | 'self'): Set<string> {
  const out = new Set<string>();
  tcpListeners(pid, 'tcp', (inode) => out.add(inode));
  tcpListeners(pid, 'tcp6', (inode) => out.add(inode));
  let text = '';
  try {
    text = readFileSync(`/proc/${pid}/net/unix`, 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n').slice(1)) {
    const m = UNIX_LINE.exec(line);
    if (m !== null && (Number.parseInt(m[1]!, 16) & 0x10000) !== 0) out.add(m[2]!);
  }
  return out;
}

/**
 * Has `old` not handed over to `successor` yet? True while `old` still
 * listens on a socket `successor` holds (it may still be the only one
 * accepting: its successor not ready yet), and while `old` listens and
 * `successor` listens on nothing: it has taken nothing over. That was a
 * worker the old master forked just after the reload signal (gunicorn
 * spawns its workers up to 100 ms apart), taken for the new generation and
 * judged as the successor as it closed its sockets on its way out (a
 * flaky test: APP_EXITED for a gunicorn that had reloaded in place). An
 * old process that has handed over has stopped accepting and closed its
 * listeners (Go's Server.Shutdown does, as do tableflip, endless and
 * grace once their successor is ready), or exited.
 */
export function sharesListener(old: ProcIdentity, successor: ProcIdentity): boolean {
  const mine = socketInodes(old.pid);
  if (mine.size === 0) return false;
  const listening = listeningInodes(old.pid);
  const oldListens = [...mine].filter((i) => listening.has(i));
  if (oldListens.length === 0) return false;
  const theirs = [...socketInodes(successor.pid)].filter((i) => listening.has(i));
  return theirs.length === 0 || theirs.some((i) => mine.has(i));
}

/**
 * The inodes of the sockets listening on this host at `where`: on a TCP
 * port (any local address), or at a unix socket's path (__SO_ACCEPTCON).
 * Empty when none does or the tables cannot be read.
 */
export function listenerInodes(where: { readonly port: number } | { readonly path: string }): Set<string> {
  const out = new Set<string>();
  if ('port' in where) {
    // The listeners only (tcpListeners stops where they end: not the
    // thousands of TIME_WAIT lines of a loaded host).
    const hex = where.port.toString(16).toUpperCase().padStart(4, '0');
    const onPort = (inode: string, local: string): void => {
      if (local.endsWith(`:${hex}`)) out.add(inode);
    };
    tcpListeners('self', 'tcp', onPort);
    tcpListeners('self', 'tcp6', onPort);
    return out;
  }
  try {
    for (const line of readFileSync('/proc/self/net/unix', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[7] === where.path && f[3] !== undefined && (Number.parseInt(f[3], 16) & 0x10000) !== 0 && f[6] !== undefined) out.add(f[6]);
    }
  } catch {
    // no unix table
  }
  return out;
}

/** Does a process on this host listen on the unix socket at `path` (/proc/self/net/unix, __SO_ACCEPTCON)? */
export function unixListening(path: string): boolean {
  return listenerInodes({ path }).size > 0;
}

/**
 * The inode of the server side of a TCP connection on this host: the
 * socket whose local port is `serverPort` and whose peer's port is
 * `clientPort` (an ephemeral port of this host's, unique while the
 * connection lives). "0" while it waits in a listener's accept queue (no
 * process has accepted it); undefined when not found (closed, not local).
 *
 * Asked of the kernel through `ss` (iproute2's sock_diag client: the kernel
 * filters by port), falling back to /proc/net/tcp{,6}: on a busy host those
 * tables hold tens of thousands of lines (every TIME_WAIT connection), and
 * parsing them every few ms cost a core in a test under load. The kernel's
 * dump still walks every socket of the family asked for, TIME_WAIT ones
 * included: ~13 ms of kernel CPU per family with 42,000 of them (measured).
 * So `family` (the client's: 4 or 6) is asked first and the other only when
 * the connection is not there (a dual-stack [::] listener holds an IPv4
 * connection as an IPv6 socket).
 */
export async function acceptedInode(serverPort: number, clientPort: number, family?: 4 | 6): Promise<string | undefined> {
  const filter = `( sport = :${serverPort} and dport = :${clientPort} )`;
  const ask = (flag: string[]) => new Promise<string | undefined>((resolve) => {
    execFile('ss', [...flag, '-tnHe', 'state', 'connected', filter], { timeout: 2_000 }, (err, stdout) => resolve(err === null ? stdout : undefined));
  });
  const inodeIn = (out: string) => /\bino:(\d+)/.exec(out)?.[1];
  const first = family === undefined ? [] : [`-${family}`];
  let out = await ask(first);
  if (out !== undefined && inodeIn(out) === undefined && family !== undefined) out = await ask([`-${family === 4 ? 6 : 4}`]);
  if (out !== undefined) return inodeIn(out);
  const hex = (p: number) => p.toString(16).toUpperCase().padStart(4, '0');
  for (const table of ['tcp', 'tcp6']) {
    let text = '';
    try {
      text = readFileSync(`/proc/self/net/${table}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[1]?.endsWith(`:${hex(serverPort)}`) && f[2]?.endsWith(`:${hex(clientPort)}`) && f[9] !== undefined) return f[9];
    }
  }
  return undefined;
}

/** The environment names of the marker every process relink starts carries (and its children inherit). */
export const MARKER = { name: 'RELINK_APP', dir: 'RELINK_APP_DIR' } as const;

/** The marker for an app's environment at start. */
export function markerEnv(app: { readonly name: string; readonly dir: string }): Record<string, string> {
  return { [MARKER.name]: app.name, [MARKER.dir]: app.dir };
}

/**
 * The app a process says it belongs to (its environment as the kernel kept
 * it at exec, /proc/PID/environ), or undefined when it says nothing, may not
 * be read, or overwrote that memory (setproctitle does). Only a hint: the
 * caller believes it of the app's own user only.
 */
export function readMarker(pid: number): { name: string; dir: string } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/environ`, 'latin1');
  } catch {
    return undefined;
  }
  let name: string | undefined;
  let dir: string | undefined;
  for (const entry of text.split('\0')) {
    if (entry.startsWith(`${MARKER.name}=`)) name = entry.slice(MARKER.name.length + 1);
    else if (entry.startsWith(`${MARKER.dir}=`)) dir = entry.slice(MARKER.dir.length + 1);
  }
  return name === undefined || dir === undefined ? undefined : { name, dir };
}

export interface Discovery {
  /** The serving generation's main process; undefined when none runs (or only leftovers of a dead one do). */
  readonly main: ProcInfo | undefined;
  /** Other roots of the serving generation besides its main: logged, never signalled. */
  readonly strays: readonly ProcInfo[];
  /** Every live process of the app, every generation, workers included, each with its `gen`. */
  readonly all: readonly ProcInfo[];
  /** Processes running one of the app's binaries as another user: not the app's, never signalled. */
  readonly foreign?: readonly ProcInfo[];
  /**
   * The serving generation's processes left behind by a main that died
   * (orphaned workers, the main not found): the app has crashed, and these
   * must be stopped before it is started again. Empty otherwise.
   */
  readonly leftovers?: readonly ProcInfo[];
  /** The app's processes that died and were not reaped by their parent (state Z), with their generation. */
  readonly zombies?: ReadonlyArray<{ readonly pid: number; readonly gen: number }>;
  /** The serving generation's main died and its only surviving child was taken as the main (an app that daemonizes). */
  readonly followed?: { readonly from: number; readonly to: number };
}

/** One process of an app, in one generation. */
export interface Member extends ProcIdentity {
  readonly gen: number;
}

/** What the finder knows of an app's processes: kept in its state file so the next agent knows it too. */
export interface LineageRecord {
  readonly members: readonly Member[];
  /** Each generation's main process, with its session, executable and command line (commandOf) when known. */
  readonly mains: ReadonlyArray<Member & { readonly sid?: number | undefined; readonly ownSession?: boolean | undefined; readonly exe?: string | undefined; readonly cmd?: string | undefined }>;
  /** The serving generation (0: none yet). */
  readonly serving: number;
  /** The newest generation number given out. */
  readonly lastGen: number;
  /** Reload signals not yet judged: children of `pid` started at or after `fromTick` (clock ticks since boot) belong to `gen`. */
  readonly openings?: ReadonlyArray<{ readonly gen: number; readonly pid: number; readonly startTime: number; readonly fromTick: number }>;
}

/** A row of the process table (ps-list's or procTable's): a moment old, only a hint. */
export interface TableRow {
  readonly pid: number;
  readonly ppid?: number | undefined;
  readonly uid?: number | undefined;
  readonly path?: string | undefined;
}

export type ProcessLister = () => Promise<ReadonlyArray<TableRow>>;

export interface FinderOptions {
  /** The app's name and folder: what its marker says. */
  readonly name: string;
  readonly dir: string;
  /** Only for processes started before relink knew lineage (no marker, no record): recognised by their executable there. */
  readonly releasesDir: string;
  readonly pidFile?: string | undefined;
  /**
   * The app's user (name or uid, as in the config); only its processes
   * belong to the app. Default: the user running this process, which is
   * who the app runs as when the config names no user.
   */
  readonly user?: string | undefined;
  /**
   * Swappable for tests and benchmarks. Default: ps-list for an app with
   * nothing recorded yet (its adoption: once per app), procTable() once
   * lineage is recorded (every discovery of a deploy: a handoff scans every
   * 100 ms, and ps-list's two `ps` processes per scan took CPU from the app
   * while it started its new generation).
   */
  readonly list?: ProcessLister;
  /** Clock ticks since boot (ticksNow); swappable for tests. */
  readonly ticks?: () => number;
  /** The app's reload.mode: how a generation opened by a reload signal that is all that is left is taken. Default "reexec". */
  readonly mode?: 'reexec' | 'inplace';
}

/** A generation's main process, with what tells a successor or a daemonized child of it from a leftover worker or helper once it is gone. */
interface MainRecord extends ProcIdentity {
  readonly sid?: number | undefined;
  /**
   * The session `sid` is one the app made (its leader was a process of the
   * app: started by the agent, which spawns each generation in a session
   * of its own, or a daemon's setsid()), not one it was merely started in
   * (an adopted app started from a login shell): only such a session's
   * other processes are the app's by that alone (#adoptOrphans).
   */
  readonly ownSession?: boolean | undefined;
  readonly exe?: string | undefined;
  /** commandOf() as last seen alive. */
  readonly cmd?: string | undefined;
}

interface Opening {
  readonly gen: number;
  readonly parent: ProcIdentity;
  readonly fromTick: number;
}

export class ProcessFinder {
  readonly #name: string;
  readonly #dir: string;
  readonly #releasesDir: string;
  readonly #pidFile: string | undefined;
  readonly #list: ProcessLister;
  readonly #ticks: () => number;
  readonly #mode: 'reexec' | 'inplace';
  readonly #user: string | undefined;
  /** Resolved once: verify() runs every few ms during a deploy and must not ask NSS each time. */
  #uid: Promise<number> | undefined;
  readonly #members = new Map<number, Member>();
  readonly #mains = new Map<number, MainRecord>();
  #openings: Opening[] = [];
  #serving = 0;
  #lastGen = 0;
  /** Processes the agent started that have exited: true when cleanly (exit code 0). */
  readonly #exits = new Map<number, boolean>();
  /**
   * Processes the agent spawned itself (pid -> start time): they begin as
   * root in the prlimit/setpriv exec chain (src/launch.ts) and become the
   * app's user only once setpriv has run, so their uid is not checked (the
   * agent made them; nothing to forge). A gunicorn start caught in the chain
   * was judged exited, and then not stopped, when the app has a user.
   */
  readonly #spawned = new Map<number, number>();
  /** Children of an opened parent that had not exec'd when found (#descend), by pid: looked at again until they have. */
  readonly #unexeced = new Map<number, { readonly startTime: number; readonly parent: Member; readonly startStack: number | undefined }>();
  /** A lineage record exists: processes without one are never taken for the app by their executable. */
  #recorded = false;
  /** Mains restored from the previous agent's record (pid -> start time): how they ended is unknown to this agent. */
  readonly #restoredMains = new Map<number, number>();
  /** Dead mains ("pid:startTime") whose orphans were looked for (#aMainJustDied). */
  readonly #orphansLookedFor = new Set<string>();

  constructor(opts: FinderOptions) {
    this.#name = opts.name;
    this.#dir = opts.dir;
    this.#releasesDir = opts.releasesDir;
    this.#pidFile = opts.pidFile;
    this.#list = opts.list ?? (async () => (this.#recorded ? procTable() : psList()));
    this.#ticks = opts.ticks ?? ticksNow;
    this.#mode = opts.mode ?? 'reexec';
    this.#user = opts.user;
  }

  /**
   * Anything is recorded: the agent started a process of the app, adopted
   * one, or restored a previous agent's record. False for an app this
   * agent has never managed (another agent holds it: APP_LOCKED): its
   * record says nothing, and saved as an empty one it would stop the next
   * agent from adopting the app by its executable.
   */
  get recorded(): boolean {
    return this.#recorded;
  }

  /** The serving generation (0 before the first). */
  get serving(): number {
    return this.#serving;
  }

  /** What is known, for the state file. */
  record(): LineageRecord {
    return {
      members: [...this.#members.values()],
      mains: [...this.#mains].filter(([gen, id]) => gen >= this.#serving || this.#members.has(id.pid))
        .map(([gen, id]) => ({ pid: id.pid, startTime: id.startTime, gen, sid: id.sid, ownSession: id.ownSession, exe: id.exe, cmd: id.cmd })),
      serving: this.#serving,
      lastGen: this.#lastGen,
      openings: this.#openings.map((o) => ({ gen: o.gen, pid: o.parent.pid, startTime: o.parent.startTime, fromTick: o.fromTick })),
    };
  }

  /**
   * Take over what the previous agent knew (its state file). `legacy` is the
   * main process a state file from before lineage names: adopted as the
   * root of generation 1 if it still runs as the app's user.
   */
  restore(rec: LineageRecord | undefined, legacy?: ProcIdentity): void {
    if (rec !== undefined) {
      for (const m of rec.members) this.#members.set(m.pid, { pid: m.pid, startTime: m.startTime, gen: m.gen });
      for (const m of rec.mains) {
        this.#mains.set(m.gen, { pid: m.pid, startTime: m.startTime, sid: m.sid, ownSession: m.ownSession, exe: m.exe, cmd: m.cmd });
        this.#restoredMains.set(m.pid, m.startTime);
      }
      this.#serving = rec.serving;
      this.#lastGen = Math.max(rec.lastGen, rec.serving, ...(rec.openings ?? []).map((o) => o.gen));
      this.#openings = (rec.openings ?? []).map((o) => ({ gen: o.gen, parent: { pid: o.pid, startTime: o.startTime }, fromTick: o.fromTick }));
      this.#recorded = true;
    } else if (legacy !== undefined) {
      this.#lastGen = 1;
      this.#serving = 1;
      this.#members.set(legacy.pid, { ...legacy, gen: 1 });
      this.#mains.set(1, legacy);
    }
  }

  /**
   * The agent started `pid` for the app: the root (and main) of a new
   * generation, which serves at once unless `serve` is false (a generation
   * brought up beside the serving one, promoted once verified). Returns the generation.
   * `startedFrom`: clock ticks since boot (ticksNow) read before the spawn.
   */
  async launched(pid: number, serve = true, startedFrom?: number): Promise<number> {
    const info = await readProc(pid);
    const gen = ++this.#lastGen;
    this.#recorded = true;
    if (info !== undefined) {
      this.#members.set(pid, { pid, startTime: info.startTime, gen });
      this.#spawned.set(pid, info.startTime);
      this.#noteMain(gen, info);
    } else if (startedFrom !== undefined) {
      // Gone already (a daemonizing app's first process exits within
      // milliseconds): what is known of it, for the child it left. It was
      // spawned detached, so it led its own session; its start time is no
      // earlier than `startedFrom` (ticks read before the spawn), which no
      // live process's identity will match.
      this.#mains.set(gen, { pid, startTime: startedFrom, sid: pid, ownSession: true });
    }
    if (serve) this.#serving = gen;
    return gen;
  }

  /** A process the agent started exited (as its parent, the agent saw how): a main that exits 0 may have daemonized. */
  exited(pid: number, clean: boolean): void {
    this.#exits.set(pid, clean);
  }

  /**
   * A reload signal is about to be sent to `main`: children it starts from
   * now on form a new generation. Returns its number.
   */
  open(main: ProcIdentity): number {
    const gen = ++this.#lastGen;
    this.#openings.push({ gen, parent: { pid: main.pid, startTime: main.startTime }, fromTick: this.#ticks() });
    return gen;
  }

  /**
   * Generation `gen` passed verification and serves; `main` is its main
   * process (the old main itself after an in-place reload or re-exec).
   * Older generations now drain. Openings on earlier mains are closed:
   * their later children belong to their parent's generation.
   */
  promote(gen: number, main: ProcInfo): void {
    const m = this.#members.get(main.pid);
    if (m !== undefined && m.startTime === main.startTime) {
      const from = m.gen;
      this.#members.set(main.pid, { ...m, gen });
      // Its own children started after the opening already carry `gen`; the
      // rest stay where they were (old workers draining).
      if (this.#mains.get(from)?.pid === main.pid) this.#mains.delete(from);
    }
    this.#noteMain(gen, main);
    this.#serving = gen;
    this.#openings = this.#openings.filter((o) => o.gen > gen);
  }

  /**
   * A deploy has its verdict: no reload is in flight. Every opening is
   * closed (a child started from now on is its parent's), and the main
   * records of generations newer than the serving one (a failed one, its
   * processes stopped) are dropped. Left, a recovered failure's opening
   * (the agent that opened it was killed) took every later child of the
   * old master, each next deploy's new master included (HANDOFF_TIMEOUT,
   * two masters serving), and the dead main's record took every process
   * later found by its marker.
   */
  settle(): void {
    this.#openings = [];
    for (const gen of [...this.#mains.keys()]) if (gen > this.#serving) this.#mains.delete(gen);
  }

  /** A reload that failed: its opening is closed; the processes it produced keep their generation until they are stopped. */
  close(gen: number): void {
    this.#openings = this.#openings.filter((o) => o.gen !== gen);
  }

  /** The uid the app's processes must run as. */
  uid(): Promise<number> {
    this.#uid ??= (async () => {
      if (this.#user === undefined) return process.getuid?.() ?? 0;
      const account = await lookupUser(this.#user);
      if (account === undefined) {
        throw new RelinkError('USER_UNKNOWN', `"user": no such user ${JSON.stringify(this.#user)} for the app in ${this.#dir} (create it: useradd --system ${this.#user})`,
          { key: 'user', rule: 'must name an existing user (name or uid)', found: this.#user });
      }
      return account.uid;
    })();
    // A failed lookup (user not created yet) is retried next time.
    this.#uid.catch(() => { this.#uid = undefined; });
    return this.#uid;
  }

  /** Is this a known process of the app (same PID and start time), running as it may? */
  async belongs(info: ProcInfo): Promise<boolean> {
    const m = this.#members.get(info.pid);
    return m !== undefined && m.startTime === info.startTime && this.#allowed(info, await this.uid());
  }

  /** May this member run as it does: as the app's user (anyone below a root app), or it is one the agent spawned, still in its exec chain. */
  #allowed(info: ProcInfo, uid: number): boolean {
    return allowed(info, uid) || this.#spawned.get(info.pid) === info.startTime;
  }

  /**
   * Cheap re-check of a process found earlier: same PID, same start time,
   * still a member of the app. No process-table scan.
   */
  async verify(id: ProcIdentity): Promise<ProcInfo | undefined> {
    const info = await readProc(id.pid);
    if (info === undefined || info.startTime !== id.startTime) return undefined;
    const m = this.#members.get(id.pid);
    if (m === undefined || m.startTime !== id.startTime || !this.#allowed(info, await this.uid())) return undefined;
    return { ...info, gen: m.gen };
  }

  /**
   * Full discovery: the members still alive, their new descendants, and
   * (when the serving generation has none left, or nothing is recorded) the
   * processes whose marker names the app. `preferred` is chosen as the main
   * among the serving generation's roots when it is one. When `preferred`
   * is the main of a newer generation being judged (started beside the one
   * serving: "socket") and has exited, the one process its generation is
   * left with is followed the same way (`followed`: it daemonized).
   */
  async discover(preferred?: ProcIdentity): Promise<Discovery> {
    const uid = await this.uid();
    const rows = await this.#list();
    const zombies: Array<{ pid: number; gen: number }> = [];
    await this.#prune(zombies);
    await this.#descend(rows, uid, zombies);
    // A zombie is kept as a member (it is reported, and its PID is not
    // reused while it stays) but is nothing of the app that runs: a
    // generation left with zombies alone has none left (the agent killed
    // mid-rollback: the failed release and the old main both dead and
    // unreaped, the good release it had started found by its marker only).
    const living = (): Member[] => [...this.#members.values()].filter((m) => !zombies.some((z) => z.pid === m.pid));
    const servingAlive = (): boolean => living().some((m) => m.gen === this.#serving);
    const judged = preferred === undefined ? undefined : [...this.#mains].find(([g, m]) => g > this.#serving && sameProcess(m, preferred));
    // The environment of every process of the app's user is read only when
    // descent did not find what is looked for: nothing recorded, nothing of
    // the serving generation, a reload's successor not found yet (its
    // parent exited before the agent looked), or nothing of the generation
    // judged (its main daemonized). Not on every scan of a handoff.
    const members = living();
    const successorMissing = this.#openings.some((o) => !members.some((m) => m.gen === o.gen));
    const judgedMissing = judged !== undefined && !members.some((m) => m.gen === judged[0]);
    if (!this.#recorded || !servingAlive() || successorMissing || judgedMissing) {
      if ((await this.#byMarker(rows, uid)) || (await this.#byOpening(rows, uid))) await this.#descend(rows, uid, zombies);
    }
    if (await this.#fromPidFile(uid)) await this.#descend(rows, uid, zombies);
    // A main of the serving (or a newer) generation is dead: what it left
    // that the lineage never saw (re-parented, no longer anyone's child) is
    // found by its session, to be followed or stopped with the rest.
    if (this.#aMainJustDied() && (await this.#adoptOrphans(rows, uid))) await this.#descend(rows, uid, zombies);
    if (!this.#recorded && this.#members.size === 0 && (await this.#byExecutable(rows, uid))) await this.#descend(rows, uid, zombies);

    const all: ProcInfo[] = [];
    for (const m of this.#members.values()) {
      const info = await readProc(m.pid);
      if (info !== undefined && info.startTime === m.startTime) all.push({ ...info, gen: m.gen });
    }
    const foreign = await this.#foreign(rows, uid);
    let gen = this.#serving;
    // Nothing of the serving generation runs, but a newer one (opened by a
    // reload signal, never promoted: the agent died before its verdict was
    // saved, or the old main exited mid-handoff): that is what runs. A
    // re-exec'd successor is followed as the main; after an in-place reload
    // the newer generation holds only workers whose master died: leftovers.
    const newer = all.filter((p) => (p.gen ?? 0) > gen);
    let leftovers: ProcInfo[] = [];
    let followed: Discovery['followed'];
    if (!all.some((p) => p.gen === gen) && newer.length > 0) {
      if (this.#mode === 'reexec') {
        const top = Math.max(...newer.map((p) => p.gen ?? 0));
        const from = this.#mains.get(gen)?.pid;
        this.#serving = gen = top;
        const root = rootsOf(newer.filter((p) => p.gen === top))[0];
        if (root !== undefined && !this.#mains.has(top)) this.#noteMain(top, root);
        if (root !== undefined && from !== undefined) followed = { from, to: root.pid };
      } else {
        leftovers = newer;
      }
    }
    const serving = all.filter((p) => p.gen === gen);
    const roots = rootsOf(serving);
    const mainId = this.#mains.get(gen);
    let main = serving.find((p) => sameProcess(p, mainId));
    if (mainId === undefined && roots.length > 0) {
      // Adopted without a recorded main (found by marker, PID file or
      // executable): the preferred root, else the oldest.
      main = roots.find((r) => sameProcess(r, preferred)) ?? roots[0]!;
      this.#noteMain(gen, main);
    } else if (main !== undefined) {
      // Kept current: after an exec chain (prlimit, setpriv, a sh wrapper)
      // the executable and command line are the app's own.
      if (main.exe !== mainId?.exe) this.#noteMain(gen, main);
    } else if (roots.length > 0) {
      // The main is gone and processes of its generation live on. One that
      // is the app itself carrying on is followed: it daemonized (a new
      // session, still carrying the app's marker) or re-executed on its own
      // (the same command line), and the main did not die of a signal or an
      // error. Anything else (a worker, a helper, several left) is a crashed
      // app's leftovers.
      const clean = this.#exits.get(mainId!.pid) ?? true;
      const survivor = roots[0]!;
      if (roots.length === 1 && clean && this.#carriesOn(mainId!, survivor)) {
        main = survivor;
        followed = { from: mainId!.pid, to: main.pid };
        this.#noteMain(gen, main);
      } else {
        leftovers = [...leftovers, ...serving];
      }
    }
    // The generation judged lost its main, which exited cleanly and left one
    // process carrying on: a daemon (double fork, a new session), as a
    // first start follows it. Not followed, the daemon served on unmanaged
    // beside every later release (a trial: 9 daemons on one socket). Here
    // the one process left is followed even before it has left the main's
    // session (the daemon's first fork, about to call setsid: the main's
    // command line recorded at its start may still be the exec chain's,
    // prlimit or setpriv, so "the same command line" cannot tell): it is of
    // the generation judged, newer than its main and marked as the app's,
    // and if it is not the app, the judgement fails and stops it, while
    // the serving generation is never touched.
    if (judged !== undefined && followed === undefined && !all.some((p) => sameProcess(p, preferred))) {
      const [jgen, jmain] = judged;
      const jroots = rootsOf(all.filter((p) => p.gen === jgen));
      const survivor = jroots[0];
      const marked = survivor !== undefined && readMarker(survivor.pid)?.name === this.#name;
      if (jroots.length === 1 && survivor !== undefined && (this.#exits.get(jmain.pid) ?? true) && (marked || this.#carriesOn(jmain, survivor))) {
        followed = { from: jmain.pid, to: survivor.pid };
        this.#noteMain(jgen, survivor);
      }
    }
    const strays = main === undefined ? [] : roots.filter((r) => r.pid !== main.pid && r.ppid !== main.pid);
    return { main, strays, all, foreign, leftovers, zombies, followed };
  }

  /**
   * The cheap periodic look: members that are gone forgotten, new
   * descendants added (a worker forked after the start, respawned by its
   * master), from the shared /proc walk (procRows). No marker or
   * executable scan. Returns the zombies among the members. `fresh`: walk
   * /proc now rather than take a walk up to TABLE_TTL_MS old.
   */
  async refresh(opts: { readonly fresh?: boolean } = {}): Promise<ReadonlyArray<{ readonly pid: number; readonly gen: number }>> {
    const uid = await this.uid();
    const zombies: Array<{ pid: number; gen: number }> = [];
    await this.#prune(zombies);
    await this.#descend(procRows(Date.now(), opts.fresh === true ? 0 : undefined), uid, zombies);
    return zombies;
  }

  /** Record `info` as generation `gen`'s main, with its session, executable and command line. */
  #noteMain(gen: number, info: ProcInfo): void {
    const sid = info.session;
    // Its own session (it leads it: spawned by the agent, or daemonized), or
    // one led by a process of the app (a new master forked by the old one).
    const leader = sid === undefined ? undefined : this.#members.get(sid);
    const ownSession = sid !== undefined && (sid === info.pid || [...this.#mains.values()].some((m) => m.ownSession === true && m.sid === sid)
      || (leader !== undefined && readStat(sid)?.startTime === leader.startTime));
    this.#mains.set(gen, { pid: info.pid, startTime: info.startTime, sid, ownSession, exe: info.exe, cmd: commandOf(info.pid) });
  }

  /**
   * Has the recorded main of the serving generation, or of a newer one,
   * died since the last look? Each death is answered once: its orphans are
   * re-parented as it dies, and what they fork later descends from them (a
   * stopped or crash-looping app, its main dead for good, is not scanned
   * for orphans on every look).
   */
  #aMainJustDied(): boolean {
    let died = false;
    for (const [gen, m] of this.#mains) {
      if (gen < this.#serving) continue;
      const st = readStat(m.pid);
      if (st !== undefined && st.state !== 'Z' && st.startTime === m.startTime) continue;
      const key = `${m.pid}:${m.startTime}`;
      if (!this.#orphansLookedFor.has(key)) died = true;
      this.#orphansLookedFor.add(key);
    }
    return died;
  }

  /**
   * Processes left by a dead parent (re-parented to init or a subreaper)
   * that the lineage never saw (forked since its last look: a worker an
   * nginx master replaced moments before it was killed), found by their
   * session: one the app made (MainRecord.ownSession) and whose other
   * processes are the app's by that alone. A session id is not given out
   * again while any process of the session lives. Each is of the
   * generation a reload signal to a main of that session opened when it
   * started after it, else of the newest generation of the session whose
   * main started no later than it did. True if any was added.
   */
  async #adoptOrphans(rows: ReadonlyArray<TableRow>, uid: number): Promise<boolean> {
    const sessions = new Map<number, Array<[number, MainRecord]>>();
    for (const [gen, m] of this.#mains) {
      if (m.ownSession !== true || m.sid === undefined) continue;
      sessions.set(m.sid, [...(sessions.get(m.sid) ?? []), [gen, m]]);
    }
    if (sessions.size === 0) return false;
    let added = false;
    for (const row of rows) {
      if (this.#members.has(row.pid) || (row.ppid !== undefined && this.#members.has(row.ppid))) continue;
      if (row.uid !== undefined && uid !== 0 && row.uid !== uid) continue;
      const st = readStat(row.pid);
      const mains = st?.session === undefined ? undefined : sessions.get(st.session);
      if (mains === undefined || st === undefined || st.state === 'Z') continue;
      const info = await readProc(row.pid);
      if (info === undefined || info.startTime !== st.startTime || info.session !== st.session || !allowed(info, uid)) continue;
      const from = mains.filter(([, m]) => m.startTime <= info.startTime).sort(([, a], [, b]) => b.startTime - a.startTime)[0];
      if (from === undefined) continue;
      // Started after a reload signal to a main of the session: of the
      // generation that signal opened, as a child found by descent would be.
      const opening = this.#openings.findLast((o) => info.startTime >= o.fromTick && mains.some(([, m]) => sameProcess(m, o.parent)));
      this.#members.set(info.pid, { pid: info.pid, startTime: info.startTime, gen: opening?.gen ?? from[0] });
      added = true;
    }
    return added;
  }

  /**
   * Is `survivor`, the one process left of a dead main's generation, the app
   * carrying on? It daemonized (a new session) and carries the app's marker,
   * or carries no readable marker at all and runs a binary from the releases
   * folder: nginx, like every program that sets its process title the
   * classic way, overwrites its environment, marker included.
   */
  #carriesOn(dead: MainRecord, survivor: ProcInfo): boolean {
    const marker = readMarker(survivor.pid);
    const daemonized = dead.sid !== undefined && survivor.session !== undefined && survivor.session !== dead.sid
      && (marker !== undefined ? marker.name === this.#name : this.#runsRelease(survivor));
    const cmd = commandOf(survivor.pid);
    const reexeced = dead.cmd !== undefined && cmd === dead.cmd;
    return daemonized || reexeced;
  }

  /** Members that are gone are forgotten; a zombie is reported (it died and nobody reaped it). */
  async #prune(zombies: Array<{ pid: number; gen: number }>): Promise<void> {
    for (const m of [...this.#members.values()]) {
      const info = await readProc(m.pid);
      if (info !== undefined && info.startTime === m.startTime) continue;
      const st = readStat(m.pid);
      if (st !== undefined && st.startTime === m.startTime && st.state === 'Z') {
        // Seen before its exec (counted in its parent's generation until it
        // exec'd, #descend) and dead before it was seen again: a zombie has
        // no image left to tell. Forked after a reload signal and died
        // unreaped, it is taken for the successor the signal asked for, in
        // the generation the signal opened (on a loaded host the window
        // between fork and exec is long enough to be caught in).
        const u = this.#unexeced.get(m.pid);
        if (u !== undefined && u.startTime === m.startTime) {
          const gen = this.#genOfChild(u.parent, u.startTime);
          this.#unexeced.delete(m.pid);
          this.#members.set(m.pid, { ...m, gen });
          zombies.push({ pid: m.pid, gen });
          continue;
        }
        zombies.push({ pid: m.pid, gen: m.gen });
        continue;
      }
      this.#members.delete(m.pid);
      this.#spawned.delete(m.pid);
    }
    // How a main exited is kept while its generation is recorded: a
    // daemonizing app's child may be found (by its PID file) only later.
    const mains = new Set([...this.#mains.values()].map((m) => m.pid));
    for (const pid of this.#exits.keys()) if (!this.#members.has(pid) && !mains.has(pid)) this.#exits.delete(pid);
  }

  /** Every process whose parent is a member becomes one (repeated down the tree). */
  async #descend(rows: ReadonlyArray<TableRow>, uid: number, zombies: Array<{ pid: number; gen: number }>): Promise<void> {
    // A parent that has exec'd since the last look is in its new generation
    // before its children are given theirs.
    await this.#reexamine();
    for (let added = true; added;) {
      added = false;
      for (const row of rows) {
        if (row.ppid === undefined || this.#members.has(row.pid)) continue;
        const parent = this.#members.get(row.ppid);
        if (parent === undefined) continue;
        if (row.uid !== undefined && uid !== 0 && row.uid !== uid) continue;
        const info = await readProc(row.pid);
        if (info === undefined) {
          // A child that died at once and was never reaped (a failed successor).
          const st = readStat(row.pid);
          if (st?.state === 'Z' && st.ppid === parent.pid && st.startTime >= parent.startTime && !zombies.some((z) => z.pid === row.pid)) {
            zombies.push({ pid: row.pid, gen: this.#genOfChild(parent, st.startTime) });
          }
          continue;
        }
        // The table is a moment old and a PID may have been recycled: the
        // parent must be the member, and older than the child.
        if (info.ppid !== parent.pid || info.startTime < parent.startTime || !allowed(info, uid)) continue;
        let gen = this.#genOfChild(parent, info.startTime);
        // After a reload signal, a child that has not exec'd is a worker the
        // old master forked (a pre-fork server replacing one, gunicorn's
        // max_requests): its generation is its master's, or the health
        // probes it answers with the old release would judge the new one
        // (a release whose workers could not start was deployed). A new
        // master or successor execs a program; one seen before its exec is
        // looked at again until it has (#reexamine).
        if (gen !== parent.gen && this.#mode === 'reexec') {
          const parentInfo = await readProc(parent.pid);
          if (parentInfo !== undefined && forkedImage(parentInfo, info)) {
            this.#unexeced.set(info.pid, { startTime: info.startTime, parent: { pid: parent.pid, startTime: parent.startTime, gen: parent.gen }, startStack: info.startStack });
            gen = parent.gen;
          }
        }
        this.#members.set(info.pid, { pid: info.pid, startTime: info.startTime, gen });
        if (gen !== parent.gen && !this.#mains.has(gen)) this.#noteMain(gen, info);
        added = true;
      }
    }
    await this.#reexamine();
  }

  /**
   * Children of an opened parent put in its generation because they had not
   * exec'd (#descend): one that has exec'd since (a new master caught
   * between its fork and its exec) joins the opening it started after. One
   * gone, or whose parent has no opening left, is forgotten here.
   */
  async #reexamine(): Promise<void> {
    for (const [pid, u] of [...this.#unexeced]) {
      const m = this.#members.get(pid);
      const info = m === undefined || m.startTime !== u.startTime ? undefined : await readProc(pid);
      const gen = info === undefined ? undefined : this.#genOfChild(u.parent, u.startTime);
      // Dead since and not reaped: #prune judges it on the next look.
      if (info === undefined && m !== undefined && m.startTime === u.startTime && readStat(pid)?.state === 'Z') continue;
      if (info === undefined || gen === undefined || gen === u.parent.gen) {
        this.#unexeced.delete(pid);
        continue;
      }
      if (info.startStack === u.startStack) continue;
      this.#unexeced.delete(pid);
      this.#members.set(pid, { pid, startTime: u.startTime, gen });
      if (!this.#mains.has(gen)) this.#noteMain(gen, info);
      // What its new image forked before this look (a new master's workers,
      // found in the same scan, took its old generation from it) moves too.
      this.#moveChildren(pid, u.startTime, u.parent.gen, gen);
    }
  }

  /** Members of generation `from` below `pid` (started after it, at `start`): of generation `to` now, down the tree. */
  #moveChildren(pid: number, start: number, from: number, to: number): void {
    for (const m of [...this.#members.values()]) {
      if (m.gen !== from || m.startTime < start || this.#unexeced.has(m.pid)) continue;
      if (readStat(m.pid)?.ppid !== pid) continue;
      this.#members.set(m.pid, { ...m, gen: to });
      this.#moveChildren(m.pid, m.startTime, from, to);
    }
  }

  /** The generation of a child of `parent` started at `startTime`: the newest opening on that parent it started after, else the parent's. */
  #genOfChild(parent: Member, startTime: number): number {
    const opening = this.#openings.findLast((o) => sameProcess(o.parent, parent) && startTime >= o.fromTick);
    return opening?.gen ?? parent.gen;
  }

  /** Processes of the app's user whose marker names this app (a daemonized child whose parent exited unseen). True if any was added. */
  async #byMarker(rows: ReadonlyArray<TableRow>, uid: number): Promise<boolean> {
    let added = false;
    for (const row of rows) {
      if (this.#members.has(row.pid) || (row.uid !== undefined && row.uid !== uid)) continue;
      const marker = readMarker(row.pid);
      if (marker?.name !== this.#name || marker.dir !== this.#dir) continue;
      const info = await readProc(row.pid);
      if (info === undefined || !ownedBy(info, uid)) continue;
      this.#adopt(info);
      added = true;
    }
    return added;
  }

  /**
   * A successor whose parent exited before the agent looked, when it
   * carries no marker (an app started by a relink from before lineage): a
   * process of the app's user, started after the reload signal, running a
   * binary from the releases folder, belongs to the generation the signal
   * opened. True if any was added.
   */
  async #byOpening(rows: ReadonlyArray<TableRow>, uid: number): Promise<boolean> {
    const first = this.#openings.reduce((min, o) => Math.min(min, o.fromTick), Number.POSITIVE_INFINITY);
    const prefix = releasesPrefix(this.#releasesDir);
    if (this.#openings.length === 0 || prefix === undefined) return false;
    let added = false;
    for (const row of rows) {
      if (this.#members.has(row.pid) || row.path === undefined || !row.path.startsWith(prefix)) continue;
      const info = await readProc(row.pid);
      if (info === undefined || info.startTime < first || !info.exe.startsWith(prefix) || !ownedBy(info, uid)) continue;
      if (readMarker(row.pid) !== undefined) continue;
      this.#adopt(info);
      added = true;
    }
    return added;
  }

  /**
   * Before lineage: a process running a binary from the releases folder as
   * the app's user, and not marked as another app's. Only when nothing is
   * recorded (an agent upgraded from a version without lineage).
   */
  async #byExecutable(rows: ReadonlyArray<TableRow>, uid: number): Promise<boolean> {
    const prefix = releasesPrefix(this.#releasesDir);
    if (prefix === undefined) return false;
    let added = false;
    for (const row of rows) {
      if (row.path === undefined || !row.path.startsWith(prefix)) continue;
      const info = await readProc(row.pid);
      if (info === undefined || !info.exe.startsWith(prefix) || !ownedBy(info, uid)) continue;
      if (readMarker(row.pid) !== undefined) continue;
      this.#adopt(info);
      added = true;
    }
    // Only the roots: children are found by descent.
    for (const m of [...this.#members.values()]) {
      const info = await readProc(m.pid);
      if (info !== undefined && this.#members.has(info.ppid)) this.#members.delete(m.pid);
    }
    return added;
  }

  /** A process found without a parent the agent knows: into `gen`, else the generation it started in. */
  #adopt(info: ProcInfo, into?: number): void {
    this.#recorded = true;
    if (this.#lastGen === 0) {
      this.#lastGen = 1;
      this.#serving = 1;
    }
    const opening = [...this.#openings].reverse().find((o) => info.startTime >= o.fromTick);
    // A generation started beside the serving one ("socket": its main is the
    // agent's, not a child of the old main, so no opening) takes what started
    // after its main did: the daemon its main left.
    const startedAfter = (m: ProcIdentity) => m.startTime < info.startTime || (m.startTime === info.startTime && m.pid < info.pid);
    const newer = [...this.#mains].filter(([g, m]) => g > this.#serving && startedAfter(m)).map(([g]) => g);
    let gen = into ?? opening?.gen ?? (newer.length > 0 ? Math.max(...newer) : this.#serving);
    // Started before the main of the generation it would join (in the same
    // clock tick: a lower pid), it is none of that generation's: a leftover
    // of an older one (an orphaned child of a stopped main, found by its
    // marker once the new main had exited at once), which was judged in
    // place of the release that had failed (the journald test).
    const main = into === undefined && opening === undefined ? this.#mains.get(gen) : undefined;
    if (main !== undefined && (info.startTime < main.startTime || (info.startTime === main.startTime && info.pid < main.pid))) {
      const older = [...this.#mains.keys()].filter((g) => g < gen);
      if (older.length > 0) gen = Math.max(...older);
      else if (gen > 1) gen -= 1;
    }
    this.#members.set(info.pid, { pid: info.pid, startTime: info.startTime, gen });
  }

  /**
   * The PID file names a candidate: believed of a process of the app's user
   * that carries the app's marker; or that carries no readable marker (its
   * environment overwritten by its process title, as nginx does), runs a
   * binary from the releases folder, and either nothing is recorded (before
   * lineage) or it started after the main of the serving generation or of
   * a newer one, which the agent started and which exited cleanly (it
   * daemonized: a double fork, its parent gone before the agent looked), or
   * which the previous agent recorded and is gone (how it ended was never
   * seen). It joins that main's generation. A child of a member is left to
   * descent.
   */
  async #fromPidFile(uid: number): Promise<boolean> {
    if (this.#pidFile === undefined) return false;
    // In the app's folder: a planted FIFO must not block discovery, nor a
    // planted link make root read elsewhere.
    const text = await readSmallFile(this.#pidFile, { maxBytes: 64 }).then((f) => f.bytes.toString('utf8'), () => '');
    const pid = Number.parseInt(text.trim(), 10);
    if (!Number.isSafeInteger(pid) || pid <= 1 || this.#members.has(pid)) return false;
    const info = await readProc(pid);
    if (info === undefined || !ownedBy(info, uid)) return false;
    // A child of a member (a new master the file names before a scan has
    // seen it) is descent's to place, in the generation its parent's reload
    // signal opened: the next scan finds it. Taken from the file, it joined
    // a dead main's generation and stayed there (every later upgrade timed
    // out, its new master filed as draining).
    const parent = this.#members.get(info.ppid);
    if (parent !== undefined && parent.startTime <= info.startTime) return false;
    const marker = readMarker(pid);
    let into: number | undefined;
    if (marker !== undefined) {
      if (marker.name !== this.#name || marker.dir !== this.#dir) return false;
    } else if (!this.#runsRelease(info)) {
      return false;
    } else if (this.#recorded) {
      // A main the previous agent recorded and that is gone ended unseen by
      // this one: taken as daemonized too (the agent killed right after it
      // started nginx, "daemon on": its daemon would be started twice).
      const endedClean = async (m: MainRecord): Promise<boolean> => {
        const seen = this.#exits.get(m.pid);
        if (seen !== undefined) return seen;
        if (this.#restoredMains.get(m.pid) !== m.startTime) return false;
        const now = await readProc(m.pid);
        return now === undefined || now.startTime !== m.startTime;
      };
      // Only the serving generation's main or a newer one's: an older main's
      // end is its generation draining away, not a daemon's start.
      const candidates: Array<[number, MainRecord]> = [];
      for (const [gen, m] of this.#mains) if (gen >= this.#serving && info.startTime >= m.startTime && (await endedClean(m))) candidates.push([gen, m]);
      const daemonizedFrom = candidates.sort(([a], [b]) => b - a)[0];
      if (daemonizedFrom === undefined) return false;
      into = daemonizedFrom[0];
    }
    this.#adopt(info, into);
    return true;
  }

  /** Does the process run a binary from the app's releases folder? */
  #runsRelease(info: ProcInfo): boolean {
    const prefix = releasesPrefix(this.#releasesDir);
    return prefix !== undefined && info.exe.startsWith(prefix);
  }

  /** Processes running a binary from the releases folder as another user: warned about, never touched. */
  async #foreign(rows: ReadonlyArray<TableRow>, uid: number): Promise<ProcInfo[]> {
    const prefix = releasesPrefix(this.#releasesDir);
    if (prefix === undefined) return [];
    const out: ProcInfo[] = [];
    for (const row of rows) {
      if (row.path === undefined || !row.path.startsWith(prefix) || this.#members.has(row.pid)) continue;
      const info = await readProc(row.pid);
      if (info !== undefined && info.exe.startsWith(prefix) && !ownedBy(info, uid)) out.push(info);
    }
    return out;
  }
}

/**
 * How long a copy outside the lineage must have run to be reported (ms): a
 * preflight or a hook may run the candidate release for a moment (a smoke
 * test, started by `relink deploy` itself or daemonized away from the
 * agent; a trial's ran 1.5 s), which is no copy left running.
 */
const UNMANAGED_MIN_AGE_MS = 10_000;

/** A copy of the app outside its lineage (src/cli/status.ts): its root process, and how many processes it has below it. */
export interface UnmanagedCopy {
  readonly root: ProcInfo;
  /** Its processes below the root (workers, as any user), by pid. */
  readonly below: readonly number[];
}

/**
 * Copies of the app that none of its generations accounts for: a process
 * running a binary of `releasesDir` as the app's user (`uid`; real and
 * effective), in none of `known` (the app's processes, every generation)
 * and not started below `agentPid` (the agent's preflight, hooks, or a
 * generation it is starting), with the processes below it (a master's
 * workers, which may run as another user). Started by hand, or by an agent
 * with another stateDir: relink neither deploys, supervises nor stops such
 * a copy, and it may hold the app's address. One younger than `minAgeMs`
 * (default UNMANAGED_MIN_AGE_MS) is left out. A script release's processes
 * run an interpreter, not a release binary: not found here.
 */
export async function unmanagedCopies(releasesDir: string, uid: number, known: ReadonlySet<number>, agentPid?: number, minAgeMs = UNMANAGED_MIN_AGE_MS): Promise<UnmanagedCopy[]> {
  const prefix = releasesPrefix(releasesDir);
  if (prefix === undefined) return [];
  const rows = recentProcTable();
  const parent = new Map(rows.map((r) => [r.pid, r.ppid]));
  /** Is `pid` the agent, a known process, or below one (a chain of at most 64 parents)? */
  const accounted = (pid: number): boolean => {
    let at: number | undefined = pid;
    for (let hops = 0; at !== undefined && at > 1 && hops < 64; hops++, at = parent.get(at)) {
      if (known.has(at) || at === agentPid) return true;
    }
    return false;
  };
  const runs = new Map<number, TableRow>();
  for (const r of rows) if (r.path?.startsWith(prefix) === true && !accounted(r.pid)) runs.set(r.pid, r);
  const out: UnmanagedCopy[] = [];
  for (const r of runs.values()) {
    if (r.ppid !== undefined && runs.has(r.ppid)) continue; // below another one: counted there
    const root = await readProc(r.pid);
    if (root === undefined || !root.exe.startsWith(prefix) || !ownedBy(root, uid)) continue;
    if (Date.now() - startedAtMs(root) < minAgeMs) continue;
    const below = [...runs.keys()].filter((pid) => {
      for (let at = parent.get(pid), hops = 0; at !== undefined && hops < 64; at = parent.get(at), hops++) if (at === r.pid) return true;
      return false;
    });
    out.push({ root, below });
  }
  return out;
}

/**
 * Real path of the releases folder with a trailing separator, resolved
 * afresh every time (a re-pointed releases symlink); undefined when it does
 * not resolve.
 */
function releasesPrefix(dir: string): string | undefined {
  try {
    return realpathSync.native(dir) + path.sep;
  } catch {
    return undefined;
  }
}

/**
 * Is `pid` a process of `app`, running as `uid` (the app's user)? Its
 * marker (the environment relink starts every process with, believed of
 * that user only) names the app, or, when the process overwrote it (nginx
 * writes its title there), its executable is in the app's releases folder.
 * Undefined `uid` (the user cannot be resolved): false.
 */
export async function ofApp(pid: number, app: { readonly name: string; readonly dir: string; readonly releasesDir: string }, uid: number | undefined): Promise<boolean> {
  if (uid === undefined) return false;
  const info = await readProc(pid);
  if (info === undefined || !ownedBy(info, uid)) return false;
  const marker = readMarker(pid);
  if (marker !== undefined) return marker.name === app.name && marker.dir === app.dir;
  const prefix = releasesPrefix(app.releasesDir);
  return prefix !== undefined && info.exe.startsWith(prefix);
}

/**
 * Both uids: the real one is whom kill() permission and accounting follow,
 * the effective one whose rights the process uses; an app of `uid` has both.
 */
function ownedBy(info: ProcInfo, uid: number): boolean {
  return info.uid === uid && (info.euid ?? info.uid) === uid;
}

/** A member may run as the app's user; below an app run as root, as anyone (workers drop privileges). */
function allowed(info: ProcInfo, uid: number): boolean {
  return uid === 0 || ownedBy(info, uid);
}

/** Send `signal`; false if the process is already gone. */
export function sendSignal(pid: number, signal: NodeJS.Signals): boolean {
  // kill(0) and kill(-1) mean "my process group" and "everyone": never.
  if (!Number.isSafeInteger(pid) || pid <= 1) throw new RangeError(`refusing to signal pid ${pid}`);
  try {
    process.kill(pid, signal);
    return true;
  } catch (err) {
    if (isErrno(err, 'ESRCH')) return false;
    throw err;
  }
}
