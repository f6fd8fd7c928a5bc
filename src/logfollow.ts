/**
 * Reading an app's log file and its rotated files as one stream, for
 * `relink logs`: app.log.N .. app.log.1, app.log, oldest first (src/applog.ts
 * names them so). A line the rotation cut in two (its start in app.log.1,
 * its end in app.log) comes out whole, since the files are read back to back.
 *
 * Following (-f) goes on across rotations without a reopen by the reader
 * either: app.log keeps its inode and loses its first bytes, which reappear
 * as new rotated files. A new rotated file is recognised by its inode (one
 * not seen at the last look), and the position read so far is carried
 * through the new files (oldest first) into app.log: what was read is not
 * printed twice, what was not is not skipped. While a rotation renames and
 * cuts (its marker beside the log, src/applog.ts) the reader waits. A log
 * replaced by another file (a new inode) is read from its start, as `tail -F`
 * does; one truncated by something else too.
 *
 * Files are opened as src/safefs.ts allows (no link another user planted is
 * followed), with the caller's own rights.
 */
import { readdir, lstat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { MARKER_STALE_MS, markerName } from './applog.js';
import { isErrno } from './errors.js';
import { NL } from './lines.js';
import { openRegular } from './safefs.js';

/** One file of the set, as it was when listed. */
export interface LogPart {
  readonly path: string;
  /** 0 for the log itself, K for app.log.K. */
  readonly index: number;
  readonly ino: number;
  readonly size: number;
  readonly mtimeMs: number;
}

/**
 * The log `file` and its rotated files that exist, oldest first (app.log.K
 * with the largest K first, the log itself last). Only regular files count
 * (lstat: nothing is opened).
 */
export async function logParts(file: string): Promise<LogPart[]> {
  const base = path.basename(file);
  const dir = path.dirname(file);
  const names = await readdir(dir).catch((err: unknown) => (isErrno(err, 'ENOENT') ? [] : Promise.reject(err)));
  const indexed: Array<{ name: string; index: number }> = [];
  for (const name of names) {
    if (name === base) indexed.push({ name, index: 0 });
    const m = name.startsWith(`${base}.`) ? /^(\d{1,3})$/.exec(name.slice(base.length + 1)) : null;
    if (m !== null && Number(m[1]) >= 1) indexed.push({ name, index: Number(m[1]) });
  }
  const parts: LogPart[] = [];
  for (const { name, index } of indexed) {
    const st = await lstat(path.join(dir, name)).catch(() => undefined);
    if (st?.isFile()) parts.push({ path: path.join(dir, name), index, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs });
  }
  // Oldest first: app.log.K (largest K) .. app.log.1, then app.log (index 0) last.
  return parts.sort((a, b) => (a.index === 0 ? 1 : b.index === 0 ? -1 : b.index - a.index));
}

/** Is a rotation renaming and cutting now (its marker is there, and recent)? */
export async function rotating(file: string, now = Date.now()): Promise<boolean> {
  const st = await lstat(markerName(file)).catch(() => undefined);
  return st !== undefined && now - st.mtimeMs < MARKER_STALE_MS;
}

/** Where a reading starts: a file of the set, and the byte in it. */
interface At {
  readonly part: number;
  readonly offset: number;
}

const CHUNK = 64 * 1024;

/**
 * Where the last `lines` lines of `parts` (read back to back) begin; a
 * last line without its newline counts as one.
 */
async function startOfLastLines(handles: ReadonlyArray<{ handle: FileHandle; size: number }>, lines: number): Promise<At> {
  if (lines <= 0) return { part: handles.length, offset: 0 };
  let seen = 0;
  let first = true;
  const buf = Buffer.alloc(CHUNK);
  for (let p = handles.length - 1; p >= 0; p--) {
    const { handle, size } = handles[p]!;
    for (let end = size; end > 0;) {
      const start = Math.max(0, end - CHUNK);
      const { bytesRead } = await handle.read(buf, 0, end - start, start);
      for (let i = bytesRead - 1; i >= 0; i--) {
        if (buf[i] !== NL) {
          first = false;
          continue;
        }
        // The newline ending the very last line does not start one.
        if (first) {
          first = false;
          continue;
        }
        if (++seen === lines) return { part: p, offset: start + i + 1 };
      }
      end = start;
    }
  }
  return { part: 0, offset: 0 };
}

export interface ReadOptions {
  /** The last N lines; Infinity: everything. */
  readonly lines: number;
  /** Only files modified at or after this moment (epoch ms): files carry no timestamp per line. */
  readonly sinceMs?: number | undefined;
}

/** Where a reading is: what the next step goes on from. */
export interface Position {
  /** The log's inode; undefined: no log yet (the next one found is read from its start). */
  readonly ino: number | undefined;
  /** The byte of the log read up to. */
  readonly offset: number;
  /** Inodes of the rotated files that existed then: any other is new. */
  readonly rotated: ReadonlySet<number>;
}

/**
 * What tells that no rotation overlapped a look at the files: no marker,
 * and the same newest rotated file (each rotation that keeps anything
 * makes a new app.log.1).
 */
async function quiet(file: string): Promise<string | undefined> {
  if (await rotating(file)) return undefined;
  const st = await lstat(`${file}.1`).catch(() => undefined);
  return `${st?.ino ?? 'none'}`;
}

interface Opened {
  readonly part: LogPart;
  readonly handle: FileHandle;
  readonly size: number;
}

/**
 * The files listed, each opened (bound to the inode listed), with no
 * rotation overlapping, and the token (quiet()) to check a later read
 * against; undefined: a rotation is under way, look again.
 */
async function snapshot(file: string, select?: (parts: LogPart[]) => LogPart[]): Promise<{ files: Opened[]; token: string } | undefined> {
  const token = await quiet(file);
  if (token === undefined) return undefined;
  let parts = await logParts(file);
  if (select !== undefined) parts = select(parts);
  const files: Opened[] = [];
  try {
    for (const part of parts) {
      let opened;
      try {
        opened = await openRegular(part.path);
      } catch (err) {
        // A rotated file renamed away meanwhile: the check below sees the rotation.
        if (part.index > 0) continue;
        throw err;
      }
      files.push({ part: { ...part, ino: opened.stats.ino, size: opened.stats.size }, handle: opened.handle, size: opened.stats.size });
    }
    if (await quiet(file) !== token || files.some((o) => o.part.index > 0 && !parts.some((p) => p.ino === o.part.ino))) throw new Retry();
    return { files, token };
  } catch (err) {
    for (const o of files) await o.handle.close().catch(() => undefined);
    if (err instanceof Retry) return undefined;
    throw err;
  }
}

class Retry extends Error {}

/** How long a reader waits for a rotation in progress before it reads anyway. */
const WAIT_MS = MARKER_STALE_MS;

/**
 * Write the rotated files' part of the last `opts.lines` lines of the log
 * set to `out`, and tell where to go on in the log itself (step() reads
 * it, checked against rotations). Waits while a rotation renames and
 * cuts. Throws SafeFsError for a file a planted link leads to, the
 * system's error for an unreadable folder.
 */
export async function readLast(file: string, opts: ReadOptions, out: (text: string) => void, sleep: (ms: number) => Promise<void>): Promise<Position> {
  const until = Date.now() + WAIT_MS;
  for (;;) {
    const snap = await snapshot(file);
    if (snap === undefined) {
      if (Date.now() >= until) throw new Error(`${file} kept being rotated while it was read`);
      await sleep(50);
      continue;
    }
    const { files, token } = snap;
    try {
      // --since: from the oldest file written to at or after it (files carry no time per line).
      const since = opts.sinceMs;
      const first = since === undefined ? 0 : files.findIndex((f) => f.part.mtimeMs >= since);
      const readable = first < 0 ? [] : files.slice(first);
      const at = opts.lines === Infinity ? { part: 0, offset: 0 } : await startOfLastLines(readable, opts.lines);
      // The log's own scan may have met a cut: look again.
      if (await quiet(file) !== token) continue;
      const decoder = new StringDecoder('utf8');
      for (let p = at.part; p < readable.length && readable[p]!.part.index > 0; p++) {
        const f = readable[p]!;
        await copy(f.handle, p === at.part ? at.offset : 0, f.size, decoder, out);
      }
      const tail = decoder.end();
      if (tail !== '') out(tail);
      const rotated = new Set(files.filter((f) => f.part.index > 0).map((f) => f.part.ino));
      const log = files.find((f) => f.part.index === 0);
      if (log === undefined) return { ino: undefined, offset: 0, rotated };
      // The log itself is read by step(), from where the last lines begin in it (or its end, if they do not reach it).
      const logAt = readable.indexOf(log);
      const offset = logAt < 0 || at.part > logAt ? log.size : at.part === logAt ? at.offset : 0;
      return { ino: log.part.ino, offset, rotated };
    } finally {
      for (const f of files) await f.handle.close().catch(() => undefined);
    }
  }
}

async function copy(handle: FileHandle, from: number, to: number, decoder: StringDecoder, out: (text: string) => void): Promise<number> {
  const buf = Buffer.alloc(CHUNK);
  let pos = from;
  while (pos < to) {
    const { bytesRead } = await handle.read(buf, 0, Math.min(CHUNK, to - pos), pos);
    if (bytesRead === 0) break;
    const text = decoder.write(buf.subarray(0, bytesRead));
    if (text !== '') out(text);
    pos += bytesRead;
  }
  return pos;
}

/** The most read from the log in one step before it is checked and written (bounds a step's memory). */
const STEP_BYTES = 4 * 1024 * 1024;

export interface StepResult {
  readonly position: Position;
  /** Something was left to read (the step's byte budget ran out, or a rotation cut in): step again at once. */
  readonly more: boolean;
  /** A rotation was under way: nothing was read. */
  readonly busy: boolean;
}

/**
 * One look at the log set from `at`: new rotated files (the position
 * carried through them), then the log's new bytes, which are written only
 * if no rotation overlapped their read (else they are read again from the
 * rotated files next time). `notice` says what a reader must know: output
 * rotated away unread, a log truncated or replaced.
 */
export async function step(file: string, at: Position, decoder: StringDecoder, out: (text: string) => void, notice: (text: string) => void): Promise<StepResult> {
  const snap = await snapshot(file);
  if (snap === undefined) return { position: at, more: false, busy: true };
  const { files, token } = snap;
  try {
    let offset = at.offset;
    const log = files.find((f) => f.part.index === 0);
    const rotated = files.filter((f) => f.part.index > 0);
    const fresh = rotated.filter((f) => !at.rotated.has(f.part.ino));
    if (log !== undefined && at.ino !== undefined && log.part.ino === at.ino && fresh.length > 0) {
      // When every rotated file is new, some before them may have been
      // dropped unread: their bytes are gone; reading starts at the oldest kept.
      if (at.rotated.size > 0 && fresh.length === rotated.length) {
        notice('output was rotated away before it could be read: going on from the oldest rotated file');
        offset = 0;
      }
      for (const f of fresh) {
        if (offset >= f.size) {
          offset -= f.size;
          continue;
        }
        await copy(f.handle, offset, f.size, decoder, out);
        offset = 0;
      }
    } else if (log !== undefined && at.ino !== undefined && log.part.ino !== at.ino) {
      notice(`${file} was replaced: reading the new file from its start`);
      offset = 0;
    } else if (log !== undefined && log.size < offset) {
      notice(`${file} was truncated: reading it from its start`);
      offset = 0;
    }
    const position: Position = { ino: log?.part.ino ?? at.ino, offset, rotated: new Set(rotated.map((f) => f.part.ino)) };
    if (log === undefined) return { position, more: false, busy: false };
    // The log's new bytes, held until the check below says no cut overlapped their read.
    const size = (await log.handle.stat()).size;
    const want = Math.min(size - offset, STEP_BYTES);
    if (want <= 0) return { position, more: false, busy: false };
    const buf = Buffer.alloc(want);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await log.handle.read(buf, got, want - got, offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    if (await quiet(file) !== token) return { position, more: true, busy: false };
    const text = decoder.write(buf.subarray(0, got));
    if (text !== '') out(text);
    return { position: { ...position, offset: offset + got }, more: offset + got < size, busy: false };
  } finally {
    for (const f of files) await f.handle.close().catch(() => undefined);
  }
}

export interface FollowOptions {
  /** Between looks at the files (ms). */
  readonly pollMs: number;
  /** What a reader must know (output rotated away unread, a log replaced). */
  readonly notice: (text: string) => void;
}

/**
 * Read the log from `from` to its end, then (with `stop`) go on until
 * `stop` resolves: every byte appended to the log is written to `out` once,
 * in order, across rotations (see the module's comment).
 */
export async function follow(file: string, from: Position, out: (text: string) => void, stop: Promise<unknown> | undefined, opts: FollowOptions): Promise<void> {
  let stopped = false;
  void stop?.then(() => { stopped = true; });
  const decoder = new StringDecoder('utf8');
  let at = from;
  const pause = (ms: number) => new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    void stop?.then(() => { clearTimeout(t); resolve(); });
  });
  // Without `stop`: to the end once, a rotation in the way waited for (at most WAIT_MS).
  const until = Date.now() + WAIT_MS;
  while (!stopped) {
    const r = await step(file, at, decoder, out, opts.notice);
    at = r.position;
    if (r.more) continue;
    if (stop === undefined && (!r.busy || Date.now() >= until)) break;
    await pause(r.busy ? 50 : opts.pollMs);
  }
  const tail = decoder.end();
  if (tail !== '') out(tail);
}
