/**
 * An app writing to a log file that is no longer at the log's path: deleted
 * (an operator's `rm app.log`) or renamed away (logrotate's default: rename,
 * then create a new app.log). The app keeps the descriptor it was started
 * with, so its output goes on into the old file, which nothing rotates and
 * `relink logs` does not read: in the trial of issue 12 a deleted one
 * reached 12.5 MB with log.maxBytes 1 MiB, a renamed one 11.6 MB, the new
 * app.log stayed empty, and nothing said so.
 *
 * Found from /proc/PID/fd/1 of the app's processes. Its link text is the
 * open file's current name, with " (deleted)" once it has none: equal to
 * the log's path, it is the log (a readlink in /proc, no file system is
 * touched: the agent does this for every process each second). Otherwise
 * the file is looked at (its inode against the path's), and taken for this
 * log only if it was: an inode the agent saw at the log's path, the log's
 * own name marked deleted, or a name logrotate gives in the log's folder
 * (app.log.1, app.log-20261130: renamed while no agent ran). Any other
 * file is the app's business (a wrapper may send its stdout elsewhere on
 * purpose) and is left alone.
 *
 * Keeping it bounded means root writing to a file an app's process holds,
 * and that process's user chooses what its fd 1 is, at any moment: a
 * descriptor of /etc/shadow opened O_PATH (no rights needed) or a device
 * whose open does something. So the agent opens /proc/PID/fd/1 with O_PATH
 * only (the file itself is not opened, so nothing happens and nothing
 * blocks, whatever it is), checks what that reference is with fstat (a
 * regular file of the app's user with at most one name, that was this log),
 * and only then reopens its own reference (/proc/self/fd/N: the same inode,
 * whatever the app does meanwhile) to cut it. The most an app's user can
 * have root cut is a file of its own, which it could truncate itself.
 */
import { constants as C, closeSync, lstatSync, readlinkSync, realpathSync, statSync, type Stats } from 'node:fs';
import { open, statfs, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { collapseRange } from './applog.js';
import { readStat, type ProcIdentity } from './proc.js';
import { fstatFd, O_PATH, openFd } from './safefs.js';

/** What the kernel appends to the name of an open file that has none left. */
const DELETED = ' (deleted)';

/** The name /proc gives `pid`'s stdout now ("/srv/web/app.log", "socket:[123]", "... (deleted)"); undefined when it cannot be read. */
export function stdoutName(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/fd/1`);
  } catch {
    return undefined;
  }
}

/** The log's path as /proc names its open file: its folder's symlinks resolved. */
export function realLogPath(logFile: string): string {
  try {
    return path.join(realpathSync(path.dirname(logFile)), path.basename(logFile));
  } catch {
    return logFile;
  }
}

/** An app's stdout that is no longer the file at the log's path. */
export interface Detached {
  readonly pid: number;
  /** Where the file is now: its path, or the log's path with " (deleted)". */
  readonly name: string;
  readonly deleted: boolean;
  /** `dev:ino`: one occurrence, whichever processes write to it. */
  readonly key: string;
  readonly size: number;
  /** The agent may cut it (see the module's comment), or why not. */
  readonly cuttable: true | string;
}

export interface LookOptions {
  /** `dev:ino` of the files the agent saw at the log's path. */
  readonly known: ReadonlySet<string>;
  /** The app's user: only a file of theirs is ever cut. */
  readonly uid: number;
  /** The log's path as /proc names it: realLogPath(logFile), which the caller has just found. */
  readonly real: string;
}

/**
 * What `proc`'s stdout, named `proc.name` by stdoutName(), is: undefined when it
 * is the file at `logFile` after all (a path named otherwise, by a bind
 * mount), not a file this log was, or the process is gone or another one.
 * A Detached comes with `fd`, an O_PATH descriptor of that very file: pass
 * it to cutDetached, then closeSync it.
 */
export async function lookAt(proc: ProcIdentity & { readonly name: string }, logFile: string, opts: LookOptions): Promise<{ detached: Detached; fd: number } | undefined> {
  let fd: number;
  try {
    fd = await openFd(`/proc/${proc.pid}/fd/1`, O_PATH);
  } catch {
    return undefined;
  }
  try {
    // After the open: the descriptor was the app's process's own fd 1, not a reused PID's.
    if (readStat(proc.pid)?.startTime !== proc.startTime) throw new Skip();
    const st = await fstatFd(fd);
    const key = `${st.dev}:${st.ino}`;
    let here: Stats | undefined;
    try {
      here = lstatSync(logFile, { throwIfNoEntry: false });
    } catch {
      here = undefined;
    }
    if (here !== undefined && `${here.dev}:${here.ino}` === key) throw new Skip();
    const deleted = st.nlink === 0;
    const wasLog = opts.known.has(key) || (deleted && proc.name === `${opts.real}${DELETED}`) || (!deleted && rotatedName(proc.name, opts.real));
    if (!st.isFile() || !wasLog) throw new Skip();
    const cuttable = st.uid !== opts.uid ? `it belongs to uid ${st.uid}, not to the app's user (uid ${opts.uid})`
      : st.nlink > 1 ? `it has ${st.nlink} names` : true;
    return { detached: { pid: proc.pid, name: proc.name, deleted, key, size: st.size, cuttable }, fd };
  } catch (err) {
    closeSync(fd);
    if (err instanceof Skip) return undefined;
    throw err;
  }
}

class Skip extends Error {}

/**
 * Cut the oldest bytes of the detached file that the O_PATH descriptor
 * `fd` (from lookAt, checked there) holds, so that fewer than `maxBytes`
 * remain: whole blocks from its front with collapse-range, or, where that
 * fails (`collapse`, per device as the log's rotations found it, says so
 * beforehand: src/applog.ts), all of it (truncate). Returns the bytes cut
 * (0: it was below `maxBytes`). Throws the system's error.
 */
export async function cutDetached(fd: number, maxBytes: number, collapse: ReadonlyMap<number, true | string>): Promise<number> {
  // Our own reference to the inode checked: whatever the app's fd 1 is by now.
  const handle: FileHandle = await open(`/proc/self/fd/${fd}`, C.O_WRONLY | C.O_NONBLOCK | C.O_NOCTTY);
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.size < maxBytes) return 0;
    const bsize = (await statfs(`/proc/self/fd/${handle.fd}`)).bsize;
    // Blocks enough to leave less than maxBytes, never the end of the file (collapse-range refuses that).
    let length = (Math.floor((st.size - maxBytes) / bsize) + 1) * bsize;
    if (length >= st.size) length = Math.floor((st.size - 1) / bsize) * bsize;
    const can = collapse.get(st.dev);
    if (length > 0 && (can === undefined || can === true)) {
      // Not recorded either way: the log's own rotations keep their finding.
      const done = await collapseRange(handle.fd, length).then(() => true, () => false);
      if (done) return length;
    }
    await handle.truncate(0);
    return st.size;
  } finally {
    await handle.close();
  }
}

/** A name logrotate (or relink) gives a rotated `real` log: in its folder, its name then "." or "-" and more. */
function rotatedName(name: string, real: string): boolean {
  const base = path.basename(real);
  const renamed = path.basename(name);
  return path.dirname(name) === path.dirname(real) && renamed.startsWith(base) && /^[.-]./.test(renamed.slice(base.length));
}

/** detachedName() of each of `pids`, one per file (the first pid found writing to it), for `relink status` and `relink logs`. */
export function detachedWriters(pids: readonly number[], logFile: string): Array<{ pid: number; name: string; deleted: boolean }> {
  const byName = new Map<string, { pid: number; name: string; deleted: boolean }>();
  for (const pid of pids) {
    const d = detachedName(pid, logFile);
    if (d !== undefined && !byName.has(d.name)) byName.set(d.name, { pid, ...d });
  }
  return [...byName.values()];
}

/**
 * For `relink status`, which has no memory of what was at the path: `pid`'s
 * stdout when it is the log's file deleted, or renamed to a name logrotate
 * gives (rotatedName) while another file, or none, is at the path;
 * undefined otherwise, or when /proc does not let this user look.
 */
function detachedName(pid: number, logFile: string): { name: string; deleted: boolean } | undefined {
  const name = stdoutName(pid);
  const real = realLogPath(logFile);
  if (name === undefined || !name.startsWith('/') || name === real) return undefined;
  if (name === `${real}${DELETED}`) return { name, deleted: true };
  if (!rotatedName(name, real)) return undefined;
  try {
    // stat follows the magic link to the open file (a CLI may wait on its filesystem; the agent does not do this).
    const it = statSync(`/proc/${pid}/fd/1`);
    const here = lstatSync(logFile, { throwIfNoEntry: false });
    return here !== undefined && here.dev === it.dev && here.ino === it.ino ? undefined : { name, deleted: false };
  } catch {
    return undefined;
  }
}
