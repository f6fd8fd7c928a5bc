/**
 * Finding the app's process, and never anybody else's.
 *
 * A process belongs to the app only if /proc/PID/exe resolves to a file in
 * the app's releases folder. A command line that merely mentions app.bin (an
 * editor, `tail -f`, a shell) proves nothing and is never looked at. A
 * process is pinned by (pid, start time) so a recycled PID is not mistaken
 * for the app. ps-list does discovery, as the design card says; every
 * candidate is then confirmed through /proc directly, because ps-list strips
 * the kernel's " (deleted)" marker and its view is a moment old.
 *
 * A process must also run as the app's user (real and effective uid): a
 * process of another user running the same binary (a copy somebody started
 * by hand, another tenant) is never adopted and never signalled.
 */
import { readFileSync, readlinkSync, realpathSync } from 'node:fs';
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
    const deleted = exeRaw.endsWith(DELETED);
    const exe = deleted ? exeRaw.slice(0, -DELETED.length) : exeRaw;
    const uids = /^Uid:\s+(\d+)\s+(\d+)/m.exec(status);
    if (uids === null) return undefined;
    return { pid, ppid, startTime, exe, deleted, uid: Number(uids[1]), euid: Number(uids[2]), childFaults };
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ESRCH') || isErrno(err, 'EACCES') || isErrno(err, 'EPERM')) return undefined;
    throw err;
  }
}

export function sameProcess(a: ProcIdentity | undefined, b: ProcIdentity | undefined): boolean {
  return a !== undefined && b !== undefined && a.pid === b.pid && a.startTime === b.startTime;
}

export interface Discovery {
  /** The app's main process: the one whose parent is not itself a process of the app. */
  readonly main: ProcInfo | undefined;
  /** Other main-looking processes (a second copy started by hand): logged, never signalled. */
  readonly strays: readonly ProcInfo[];
  /** Every process of the app, workers and handoff generations included. */
  readonly all: readonly ProcInfo[];
  /** Processes running one of the app's binaries as another user: not the app's, never signalled. */
  readonly foreign?: readonly ProcInfo[];
}

export type ProcessLister = () => Promise<ReadonlyArray<{ pid: number; path?: string | undefined }>>;

export interface FinderOptions {
  readonly releasesDir: string;
  readonly pidFile?: string | undefined;
  /**
   * The app's user (name or uid, as in the config); only its processes
   * belong to the app. Default: the user running this process, which is
   * who the app runs as when the config names no user.
   */
  readonly user?: string | undefined;
  /** Swappable for tests and benchmarks; defaults to ps-list. */
  readonly list?: ProcessLister;
}

export class ProcessFinder {
  readonly #releasesDir: string;
  readonly #pidFile: string | undefined;
  readonly #list: ProcessLister;
  readonly #user: string | undefined;
  /** Resolved once: verify() runs every few ms during a deploy and must not ask NSS each time. */
  #uid: Promise<number> | undefined;

  constructor(opts: FinderOptions) {
    this.#releasesDir = opts.releasesDir;
    this.#pidFile = opts.pidFile;
    this.#list = opts.list ?? (() => psList());
    this.#user = opts.user;
  }

  /**
   * Real path of the releases folder, with a trailing separator, for prefix
   * checks. Resolved afresh every time: an operator may re-point a releases
   * symlink, and the new release's processes must be recognised at once.
   * Synchronous for the reason readProc is: one realpath(3) of a folder whose
   * entries the kernel has cached, against two thread-pool hand-offs.
   */
  async #prefix(): Promise<string> {
    return realpathSync.native(this.#releasesDir) + path.sep;
  }

  /** The uid the app's processes must run as. */
  uid(): Promise<number> {
    this.#uid ??= (async () => {
      if (this.#user === undefined) return process.getuid?.() ?? 0;
      const account = await lookupUser(this.#user);
      if (account === undefined) {
        throw new RelinkError('USER_UNKNOWN', `"user": no such user ${JSON.stringify(this.#user)} for the app in ${path.dirname(this.#releasesDir)} (create it: useradd --system ${this.#user})`,
          { key: 'user', rule: 'must name an existing user (name or uid)', found: this.#user });
      }
      return account.uid;
    })();
    // A failed lookup (user not created yet) is retried next time.
    this.#uid.catch(() => { this.#uid = undefined; });
    return this.#uid;
  }

  /** Does this process run a binary from the app's releases folder, as the app's user? */
  async belongs(info: ProcInfo): Promise<boolean> {
    return info.exe.startsWith(await this.#prefix()) && ownedBy(info, await this.uid());
  }

  /**
   * Cheap re-check of a process found earlier: same PID, same start time,
   * still running one of the app's binaries. No process-table scan.
   */
  async verify(id: ProcIdentity): Promise<ProcInfo | undefined> {
    const info = await readProc(id.pid);
    if (info === undefined || info.startTime !== id.startTime) return undefined;
    return (await this.belongs(info)) ? info : undefined;
  }

  /** Full discovery: the PID file if configured and valid, else a process-table scan. */
  async discover(preferred?: ProcIdentity): Promise<Discovery> {
    const [prefix, uid] = await Promise.all([this.#prefix(), this.uid()]);
    const fromPidFile = await this.#fromPidFile(prefix, uid);
    const listed = await this.#list();
    // ps-list's path is only a hint (a moment old, " (deleted)" stripped);
    // /proc is asked again for every candidate.
    const hinted = listed.filter((p) => p.path !== undefined && p.path.startsWith(prefix)).map((p) => p.pid);
    const infos = await Promise.all(hinted.map((pid) => readProc(pid)));
    const running = infos.filter((i): i is ProcInfo => i !== undefined && i.exe.startsWith(prefix));
    const all = running.filter((i) => ownedBy(i, uid));
    const foreign = running.filter((i) => !ownedBy(i, uid));
    if (fromPidFile !== undefined && !all.some((p) => p.pid === fromPidFile.pid)) all.push(fromPidFile);
    const pids = new Set(all.map((p) => p.pid));
    const mains = all.filter((p) => !pids.has(p.ppid)).sort((a, b) => a.startTime - b.startTime || a.pid - b.pid);
    const chosen = pick(mains, fromPidFile ?? preferred);
    return { main: chosen, strays: mains.filter((p) => p !== chosen), all, foreign };
  }

  async #fromPidFile(prefix: string, uid: number): Promise<ProcInfo | undefined> {
    if (this.#pidFile === undefined) return undefined;
    // In the app's folder: a planted FIFO must not block discovery, nor a
    // planted link make root read elsewhere. An unusable PID file names no
    // candidate; the process-table scan still finds the app.
    const text = await readSmallFile(this.#pidFile, { maxBytes: 64 }).then((f) => f.bytes.toString('utf8'), () => '');
    const pid = Number.parseInt(text.trim(), 10);
    const info = await readProc(pid);
    // A PID file only names a candidate; it must pass the same executable and owner checks.
    return info !== undefined && info.exe.startsWith(prefix) && ownedBy(info, uid) ? info : undefined;
  }
}

/**
 * Both uids: the real one is whom kill() permission and accounting follow,
 * the effective one whose rights the process uses; an app of `uid` has both.
 */
function ownedBy(info: ProcInfo, uid: number): boolean {
  return info.uid === uid && (info.euid ?? info.uid) === uid;
}

/** The preferred process if it is among the mains, else the oldest main. */
function pick(mains: readonly ProcInfo[], preferred: ProcIdentity | undefined): ProcInfo | undefined {
  if (preferred !== undefined) {
    const hit = mains.find((m) => sameProcess(m, preferred));
    if (hit !== undefined) return hit;
  }
  return mains[0];
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
