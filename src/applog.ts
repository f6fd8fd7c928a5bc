/**
 * Rotating an app's log file by size without losing a byte, and without the
 * app reopening anything.
 *
 * The app writes to an open file description it inherited (O_APPEND, from
 * src/launch.ts) and never reopens it: a rename would leave it writing
 * into app.log.1, and logrotate's copytruncate loses what is written
 * between the copy and the truncate. So the agent copies the file's first
 * C bytes into app.log.1 (the older backups shifted first, as Supervisord
 * names them: app.log.1 is the newest) and then removes exactly those C
 * bytes from the front of app.log with FALLOC_FL_COLLAPSE_RANGE
 * (fallocate(2); util-linux `fallocate --collapse-range`, since Node has
 * no fallocate). The kernel takes the inode's lock for it, so an append
 * lands either before (and is kept, after the cut) or after: none is lost
 * or doubled. C is a multiple of the filesystem's block size (the call
 * requires it) and stops short of the end of the file, so a line cut at C
 * begins in app.log.1 and ends in app.log.
 *
 * Filesystems without collapse-range (tmpfs, btrfs, NFS, ext4 without
 * extents: found by trying it once on a scratch file beside the log) get
 * copy + truncate instead, whose window (bytes the app writes between the
 * last read of the copy and the truncate) loses output; the caller says so.
 *
 * While the visible names change (from the first rename to the cut) a
 * marker `.NAME.rotating` lies beside the log: `relink logs -f` waits for
 * it to go before it maps its position to the new files. Before the cut,
 * the index `.NAME.index` (src/logindex.ts) is rewritten to say where each
 * file's bytes lie in the log's whole output, which is how a reader keeps
 * its place when offsets shift and pieces are dropped. An agent killed
 * in that window (SIGKILL, a power loss) leaves the bytes in both
 * app.log.1 and app.log: doubled, never lost; the next agent removes the
 * marker and says so.
 *
 * Everything happens inside the log's folder, which the app's user can
 * write: the log is opened through src/safefs.ts (no planted link, FIFO or
 * foreign hard link), names are reached through the open folder, new
 * files are created O_EXCL | O_NOFOLLOW and handed to the log's owner, and
 * fallocate works on the checked descriptor (/proc/self/fd/3), not a path.
 */
import { spawn } from 'node:child_process';
import { constants as C } from 'node:fs';
import { lstat, open, rename, statfs, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from './errors.js';
import { indexFor, readIndex, writeIndex, type IndexedFile, type LogIndex } from './logindex.js';
import { openAppend, withFolder, type SafeFolder } from './safefs.js';

/** app.log.K: the K-th newest rotated file (K >= 1). */
export function backupName(file: string, k: number): string {
  return `${file}.${k}`;
}

/** The marker a rotation leaves beside `file` while it renames and cuts. */
export function markerName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.rotating`);
}

/** A marker older than this is left by a killed agent: readers stop waiting for it. */
export const MARKER_STALE_MS = 10_000;

export interface RotateOptions {
  /** Rotate once the file holds this many bytes. */
  readonly maxBytes: number;
  /** Rotated files kept (app.log.1 .. app.log.N); 0: the cut bytes are dropped. */
  readonly backups: number;
  /** The app's user and group: the owners the log may have (src/safefs.ts openAppend). */
  readonly owner?: { readonly uid: number; readonly gid: number } | undefined;
  /**
   * Whether each filesystem (by device number) supports collapse-range, as
   * found by the first rotation there (true, or the reason it does not).
   * Kept by the caller across rotations.
   */
  readonly collapse: Map<number, true | string>;
}

export interface Rotation {
  /** 'collapse': lossless; 'truncate': copy + truncate (the filesystem cannot collapse). */
  readonly mode: 'collapse' | 'truncate';
  /** With 'truncate': why collapse-range could not be used (fallocate's words). */
  readonly why?: string;
  /** Bytes moved into rotated files. */
  readonly keptBytes: number;
  /** New rotated files (app.log.1 .. app.log.K). */
  readonly files: number;
  /** Bytes cut and not kept: more than `backups` files' worth arrived between two checks, or backups is 0. */
  readonly droppedBytes: number;
}

/** The most rotated files the config allows ("log.backups"): older names up to it are cleared when backups was lowered. */
const MAX_BACKUPS = 100;

/** Bytes copied per read. */
const CHUNK = 1024 * 1024;

/**
 * Rotate `file` if it holds `maxBytes` or more (see the module's comment);
 * undefined when it is smaller or missing. Throws SafeFsError for a log
 * that is not a plain file of the app's user (src/safefs.ts), or the
 * system's error.
 */
export async function rotateLog(file: string, opts: RotateOptions): Promise<Rotation | undefined> {
  let log: FileHandle;
  try {
    log = await openAppend(file, { owner: opts.owner, createFolders: false });
  } catch (err) {
    if (isErrno(err, 'ENOENT') || (err as { problem?: string }).problem === 'missing') return undefined;
    throw err;
  }
  let reader: FileHandle | undefined;
  try {
    const st = await log.stat();
    if (st.size < opts.maxBytes) return undefined;
    // The same inode, for reading: reopened through the checked descriptor.
    reader = await open(`/proc/self/fd/${log.fd}`, C.O_RDONLY | C.O_NOCTTY);
    const bsize = (await statfs(`/proc/self/fd/${log.fd}`)).bsize;
    const name = path.basename(file);
    // Where this log's offsets stand (an index of another inode is of a log that was replaced).
    const prev = indexFor((await readIndex(file)).index, st.ino);
    return await withFolder(path.dirname(file), async (dir) => {
      const files = { dir, name, ino: st.ino, uid: st.uid, gid: st.gid, mode: st.mode & 0o666 };
      let collapse = opts.collapse.get(st.dev);
      if (collapse === undefined) {
        collapse = await probeCollapse(dir, name, bsize);
        opts.collapse.set(st.dev, collapse);
      }
      if (collapse === true) {
        try {
          return await cut(log, reader!, st.size, bsize, opts, files, prev);
        } catch (err) {
          // Copy + truncate from now on: a cut that keeps failing would copy the same bytes every second.
          if (err instanceof CollapseFailed) opts.collapse.set(st.dev, err.reason);
          throw err;
        }
      }
      return await copyTruncate(log, reader!, st.size, opts, files, collapse, prev);
    }, { createFolders: false });
  } finally {
    await reader?.close().catch(() => undefined);
    await log.close().catch(() => undefined);
  }
}

interface Files {
  readonly dir: SafeFolder;
  /** The log's name in `dir`. */
  readonly name: string;
  /** The log's inode. */
  readonly ino: number;
  /** Owner and permission bits of the log, given to its rotated files. */
  readonly uid: number;
  readonly gid: number;
  readonly mode: number;
}

/** The lossless rotation: copy the pieces, shift, rename, collapse. */
async function cut(log: FileHandle, reader: FileHandle, size: number, bsize: number, opts: RotateOptions, f: Files, prev: LogIndex): Promise<Rotation> {
  // Each rotated file holds at most maxBytes; pieces are whole blocks.
  const piece = Math.max(bsize, Math.floor(opts.maxBytes / bsize) * bsize);
  // As many pieces as leave less than maxBytes behind, never reaching the
  // end of the file (collapse-range refuses that: EINVAL).
  let n = Math.floor((size - opts.maxBytes) / piece) + 1;
  if (n * piece >= size) n -= 1;
  if (n <= 0) return { mode: 'collapse', keptBytes: 0, files: 0, droppedBytes: 0 };
  const kept = Math.min(n, opts.backups);
  const temps: string[] = [];
  const made: IndexedFile[] = [];
  try {
    // The newest piece (just before the cut) becomes app.log.1.
    for (let k = 1; k <= kept; k++) {
      const start = (n - k) * piece;
      const out = await copyOut(reader, f, `${k}`, start, start + piece);
      temps.push(out.temp);
      made.push({ ino: out.ino, start: prev.cut + start, size: piece });
    }
    await mark(f);
    const next: LogIndex = { ino: f.ino, cut: prev.cut + n * piece, truncated: false, files: [...made, ...await survivors(f, opts.backups - kept, prev.files)] };
    // Before the names change and the cut (and not between them, which
    // would widen the moment both hold the bytes): killed after it, a
    // reader prints the cut bytes twice (the files hold them twice), it
    // never skips them.
    await writeIndex(f.dir, f.name, next, f);
    try {
      await shift(f, kept, opts.backups);
      for (const [i, temp] of temps.entries()) await rename(f.dir.at(temp), f.dir.at(`${f.name}.${i + 1}`));
      temps.length = 0;
      await collapseRange(log.fd, n * piece).catch((err: unknown) => { throw new CollapseFailed(file(f), kept, (err as Error).message); });
    } catch (err) {
      await uncut(f, prev, [...made, ...prev.files], opts.backups);
      throw err;
    }
  } finally {
    for (const temp of temps) await unlink(f.dir.at(temp)).catch(() => undefined);
    await unlink(f.dir.at(`.${f.name}.rotating`)).catch(() => undefined);
  }
  return { mode: 'collapse', keptBytes: kept * piece, files: kept, droppedBytes: (n - kept) * piece };
}

/**
 * The fallback: copy everything (growth included, until a read finds no
 * more), truncate at once, then shift and rename. Bytes the app writes
 * between the last read and the truncate are lost.
 */
async function copyTruncate(log: FileHandle, reader: FileHandle, size: number, opts: RotateOptions, f: Files, why: string, prev: LogIndex): Promise<Rotation> {
  const piece = opts.maxBytes;
  const n = Math.ceil(size / piece);
  const kept = Math.min(n, opts.backups);
  const temps: string[] = [];
  const made: Array<{ ino: number; start: number }> = [];
  let end = size;
  try {
    for (let k = kept; k >= 1; k--) {
      const start = (n - k) * piece;
      const out = await copyOut(reader, f, `${k}`, start, k === 1 ? size : start + piece);
      temps.unshift(out.temp);
      made.push({ ino: out.ino, start });
    }
    // Before the last reads: between the last one and the truncate, the app's writes are lost.
    await mark(f);
    // Growth since the size was taken goes into the newest piece, read until none is left.
    if (kept > 0) {
      const handle = await open(f.dir.at(temps[0]!), C.O_WRONLY | C.O_APPEND | C.O_NOFOLLOW);
      try {
        for (let more = true; more;) {
          const now = (await reader.stat()).size;
          more = now > end;
          if (more) end = await copyRange(reader, handle, end, now);
        }
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
    // Each piece ends where the next begins; the newest took the growth, up to `end`.
    const pieces = made.map((m, i) => ({ ino: m.ino, start: prev.cut + m.start, size: (made[i + 1]?.start ?? end) - m.start }));
    await writeIndex(f.dir, f.name, { ino: f.ino, cut: prev.cut + end, truncated: true, files: [...pieces, ...await survivors(f, opts.backups - kept, prev.files)] }, f);
    let truncated = false;
    try {
      await log.truncate(0);
      truncated = true;
      await shift(f, kept, opts.backups);
      for (const [i, temp] of temps.entries()) await rename(f.dir.at(temp), f.dir.at(`${f.name}.${i + 1}`));
      temps.length = 0;
    } catch (err) {
      if (!truncated) await uncut(f, prev, [...pieces, ...prev.files], opts.backups);
      throw err;
    }
  } finally {
    for (const temp of temps) await unlink(f.dir.at(temp)).catch(() => undefined);
    await unlink(f.dir.at(`.${f.name}.rotating`)).catch(() => undefined);
  }
  const keptBytes = kept === 0 ? 0 : end - (n - kept) * piece;
  return { mode: 'truncate', why, keptBytes, files: kept, droppedBytes: end - keptBytes };
}

const file = (f: Files): string => path.join(f.dir.path, f.name);

/** collapse-range failed after the probe said it works: the bytes copied out are in the log still. */
class CollapseFailed extends Error {
  readonly reason: string;
  constructor(log: string, files: number, reason: string) {
    super(`fallocate --collapse-range failed (${reason}): the bytes just copied to ${files} rotated file${files === 1 ? '' : 's'} are also still in ${log} (doubled, not lost); later rotations copy and truncate`);
    this.reason = reason;
  }
}

/** A new file `.NAME.rotate.TAG` in the folder holding bytes [from, to) of the log, the log's owner and mode, synced; its name and inode. */
async function copyOut(reader: FileHandle, f: Files, tag: string, from: number, to: number): Promise<{ temp: string; ino: number }> {
  const temp = `.${f.name}.rotate.${tag}`;
  // A leftover of a killed agent, or something planted: never followed, replaced.
  await unlink(f.dir.at(temp)).catch((err: unknown) => (isErrno(err, 'ENOENT') ? undefined : Promise.reject(err)));
  const out = await open(f.dir.at(temp), C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  try {
    await out.chown(f.uid, f.gid);
    await out.chmod(f.mode);
    await copyRange(reader, out, from, to);
    await out.sync();
    return { temp, ino: (await out.stat()).ino };
  } catch (err) {
    await out.close();
    await unlink(f.dir.at(temp)).catch(() => undefined);
    throw err;
  } finally {
    await out.close().catch(() => undefined);
  }
}

/** Append bytes [from, to) of `reader` to `out`; returns where the copy ended (`to`, or earlier at end of file). */
async function copyRange(reader: FileHandle, out: FileHandle, from: number, to: number): Promise<number> {
  const buf = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(1, to - from)));
  let pos = from;
  while (pos < to) {
    const { bytesRead } = await reader.read(buf, 0, Math.min(buf.length, to - pos), pos);
    if (bytesRead === 0) break;
    await out.write(buf, 0, bytesRead);
    pos += bytesRead;
  }
  return pos;
}

/** Make room for `count` new rotated files: .N-count .. .1 move up by `count`, those beyond `backups` go. */
async function shift(f: Files, count: number, backups: number): Promise<void> {
  if (count === 0) return;
  const at = (k: number) => f.dir.at(`${f.name}.${k}`);
  const gone = (err: unknown) => (isErrno(err, 'ENOENT') ? undefined : Promise.reject(err));
  // Beyond the bound, including files left by a larger "backups" before.
  for (let k = Math.max(1, backups - count + 1); k <= backups || (k <= MAX_BACKUPS && await exists(at(k))); k++) await unlink(at(k)).catch(gone);
  for (let k = backups - count; k >= 1; k--) await rename(at(k), at(k + count)).catch(gone);
}

/**
 * A rotation failed before its cut: the index back to the log's offsets
 * before it, listing the files that are there now (some may have been
 * renamed: their bytes are in the log too, and a reader prints them once).
 * Best effort: an index left as written makes a reader print the bytes
 * twice, never skip them.
 */
async function uncut(f: Files, prev: LogIndex, known: readonly IndexedFile[], backups: number): Promise<void> {
  await writeIndex(f.dir, f.name, { ...prev, files: await survivors(f, backups, known) }, f).catch(() => undefined);
}

/**
 * The rotated files app.log.1 .. app.log.`upTo` there now that are among
 * `known` (by inode): those a shift by the new files' number keeps.
 */
async function survivors(f: Files, upTo: number, known: readonly IndexedFile[]): Promise<IndexedFile[]> {
  const byIno = new Map(known.map((k) => [k.ino, k]));
  const out: IndexedFile[] = [];
  for (let k = 1; k <= upTo; k++) {
    const st = await lstat(f.dir.at(`${f.name}.${k}`)).catch(() => undefined);
    const entry = st?.isFile() ? byIno.get(st.ino) : undefined;
    if (entry !== undefined) out.push(entry);
  }
  return out;
}

/** lstat only: whatever is there is never opened. */
async function exists(p: string): Promise<boolean> {
  return lstat(p).then(() => true, (err: unknown) => !isErrno(err, 'ENOENT'));
}

/** The marker `.NAME.rotating` (see the module's comment). */
async function mark(f: Files): Promise<void> {
  const marker = `.${f.name}.rotating`;
  await unlink(f.dir.at(marker)).catch(() => undefined);
  const h = await open(f.dir.at(marker), C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o644);
  await h.writeFile(`${JSON.stringify({ pid: process.pid, time: new Date().toISOString() })}\n`);
  await h.close();
}

/**
 * Remove a marker a killed agent left beside `file`; true when there was
 * one (its rotation may have left up to a rotation's bytes in both the
 * newest rotated file and the log).
 */
export async function clearMarker(file: string): Promise<boolean> {
  return withFolder(path.dirname(file), (dir) => unlink(dir.at(`.${path.basename(file)}.rotating`)).then(() => true, () => false), { createFolders: false })
    .catch(() => false);
}

/**
 * Does the filesystem of `dir` support collapse-range? Tried on a scratch
 * file of two blocks beside the log; true, or fallocate's reason.
 */
async function probeCollapse(dir: SafeFolder, name: string, bsize: number): Promise<true | string> {
  const scratch = `.${name}.probe`;
  await unlink(dir.at(scratch)).catch(() => undefined);
  const h = await open(dir.at(scratch), C.O_RDWR | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  try {
    await h.write(Buffer.alloc(2 * bsize, 0x61), 0, 2 * bsize, 0);
    await collapseRange(h.fd, bsize);
    return (await h.stat()).size === bsize ? true : 'collapse-range did not shorten a test file';
  } catch (err) {
    return (err as Error).message;
  } finally {
    await h.close();
    await unlink(dir.at(scratch)).catch(() => undefined);
  }
}

/**
 * Remove bytes [0, length) of the open file `fd` (util-linux fallocate on
 * the descriptor, passed as its fd 3: the checked inode, never a path).
 * Throws an Error with fallocate's message ("Operation not supported").
 */
export function collapseRange(fd: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => {
    // spawn, not execFile: execFile passes no stdio beyond 0-2.
    const child = spawn('fallocate', ['--collapse-range', '--offset', '0', '--length', String(length), '/proc/self/fd/3'], { stdio: ['ignore', 'ignore', 'pipe', fd] });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (c: string) => { if (stderr.length < 4096) stderr += c; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`fallocate (util-linux): ${isErrno(err) ? err.code ?? err.message : err.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(stderr.trim().replace(/^fallocate: /, '') || `fallocate ${signal === null ? `exited ${code}` : `killed by ${signal}`}`));
    });
  });
}
