/**
 * Reading an app's log file and its rotated files as one stream, for
 * `relink logs`: app.log.N .. app.log.1, app.log, oldest first (src/applog.ts
 * names them so). A line the rotation cut in two (its start in app.log.1,
 * its end in app.log) comes out whole, since the files are read back to back.
 *
 * Following (-f) goes on across rotations without a reopen by the reader
 * either: app.log keeps its inode and loses its first bytes, which reappear
 * as new rotated files, or are dropped when the app outran the checks. The
 * reader's place is a count of bytes in the log's whole output, which no
 * rotation changes; at each look the index the rotations keep
 * (src/logindex.ts) maps it to a rotated file or into app.log: what was
 * read is not printed twice. Bytes that no file holds any more when the
 * reader gets to them (dropped by the agent, or rotated past log.backups
 * before it looked) are skipped, and said with their number; the line they
 * cut short is ended, and reading goes on from the next whole line. While
 * a rotation renames and cuts (its marker beside the log, src/applog.ts)
 * the reader waits. A log replaced by another file (a new inode) is read
 * from its start, as `tail -F` does; one truncated by something else too.
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
import { indexFor, readIndex, type LogIndex } from './logindex.js';
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
  /** Where the reading is in the log's whole output (src/logindex.ts): every byte before it was read. */
  readonly at: number;
  /** The index's `cut` at the last look: a rotation since changes it. */
  readonly cut: number;
}

/**
 * Writes the bytes read out as text: UTF-8 decoded across reads and files
 * (a rotation's cut can split a character), and, after a gap, the line cut
 * short ended and the bytes up to the next line's start dropped, so that
 * each line printed is one the app wrote, or the start of one.
 */
export class Printer {
  readonly #out: (text: string) => void;
  #decoder = new StringDecoder('utf8');
  /** What was printed last did not end with a newline. */
  #open = false;
  /** After a gap that began inside a line: bytes are dropped up to and including the next newline. */
  #resync = false;

  constructor(out: (text: string) => void) {
    this.#out = out;
  }

  write(bytes: Buffer): void {
    let buf = bytes;
    if (this.#resync) {
      const nl = buf.indexOf(NL);
      if (nl < 0) return;
      this.#resync = false;
      buf = buf.subarray(nl + 1);
    }
    if (buf.length === 0) return;
    this.#open = buf[buf.length - 1] !== NL;
    const text = this.#decoder.write(buf);
    if (text !== '') this.#out(text);
  }

  /** Bytes are missing here: the line printed so far is ended; `midLine`: what follows begins inside a line, dropped up to the next. */
  gap(midLine: boolean): void {
    this.#flush();
    if (this.#open) this.#out('\n');
    this.#open = false;
    this.#resync = midLine;
  }

  /** No more bytes: a character cut short is written as U+FFFD. */
  end(): void {
    this.#flush();
  }

  #flush(): void {
    const tail = this.#decoder.end();
    if (tail !== '') this.#out(tail);
    this.#decoder = new StringDecoder('utf8');
  }
}

/**
 * The index when no rotation is under way (no marker before or after it
 * was read; the index is rewritten while the marker is there), and the
 * token to compare a later look with: the same token means no rotation
 * began or ended between the two (every rotation rewrites the index).
 * Undefined: a rotation is under way.
 */
async function quiet(file: string): Promise<{ token: string; index: LogIndex | undefined } | undefined> {
  if (await rotating(file)) return undefined;
  const { index, raw } = await readIndex(file);
  if (await rotating(file)) return undefined;
  return { token: raw, index };
}

interface Opened {
  readonly part: LogPart;
  readonly handle: FileHandle;
  readonly size: number;
}

interface Snapshot {
  readonly files: Opened[];
  readonly token: string;
  /** The index as it was, of whichever log (indexFor() checks it is of this one). */
  readonly index: LogIndex | undefined;
}

/**
 * The files listed, each opened (bound to the inode listed), with no
 * rotation overlapping, the index, and the token (quiet()) to check a
 * later read against; undefined: a rotation is under way, look again.
 */
async function snapshot(file: string): Promise<Snapshot | undefined> {
  const before = await quiet(file);
  if (before === undefined) return undefined;
  const parts = await logParts(file);
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
    if ((await quiet(file))?.token !== before.token || files.some((o) => o.part.index > 0 && !parts.some((p) => p.ino === o.part.ino))) throw new Retry();
    return { files, token: before.token, index: before.index };
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
 * set to `printer`, and tell where to go on in the log itself (step() reads
 * it, checked against rotations). Waits while a rotation renames and
 * cuts. Throws SafeFsError for a file a planted link leads to, the
 * system's error for an unreadable folder.
 */
export async function readLast(file: string, opts: ReadOptions, printer: Printer, sleep: (ms: number) => Promise<void>): Promise<Position> {
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
      if ((await quiet(file))?.token !== token) continue;
      for (let p = at.part; p < readable.length && readable[p]!.part.index > 0; p++) {
        const f = readable[p]!;
        await copy(f.handle, p === at.part ? at.offset : 0, f.size, printer);
      }
      const log = files.find((f) => f.part.index === 0);
      if (log === undefined) return { ino: undefined, at: 0, cut: 0 };
      const { cut } = indexFor(snap.index, log.part.ino);
      // The log itself is read by step(), from where the last lines begin in it (or its end, if they do not reach it).
      const logAt = readable.indexOf(log);
      const offset = logAt < 0 || at.part > logAt ? log.size : at.part === logAt ? at.offset : 0;
      return { ino: log.part.ino, at: cut + offset, cut };
    } finally {
      for (const f of files) await f.handle.close().catch(() => undefined);
    }
  }
}

/** Write bytes [from, to) of `handle` to `printer`; returns where it stopped (`to`, or earlier at the file's end). */
async function copy(handle: FileHandle, from: number, to: number, printer: Printer): Promise<number> {
  const buf = Buffer.alloc(CHUNK);
  let pos = from;
  while (pos < to) {
    const { bytesRead } = await handle.read(buf, 0, Math.min(CHUNK, to - pos), pos);
    if (bytesRead === 0) break;
    printer.write(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
  return pos;
}

/** The most read in one step before it is checked and written (bounds a step's memory and what waits for a slow reader). */
const STEP_BYTES = 4 * 1024 * 1024;

export interface StepResult {
  readonly position: Position;
  /** Something was left to read (the step's byte budget ran out, or a rotation cut in): step again at once. */
  readonly more: boolean;
  /** A rotation was under way: nothing was read. */
  readonly busy: boolean;
}

/**
 * One look at the log set from `at`: the rotated files' bytes at or after
 * it (the index says where each file's lie), then the log's, which are
 * written only if no rotation overlapped their read (else they are read
 * again, from wherever they are, next time). `notice` says what a reader
 * must know: output rotated away unread (how many bytes), a log truncated
 * or replaced.
 */
export async function step(file: string, at: Position, printer: Printer, notice: (text: string) => void): Promise<StepResult> {
  const snap = await snapshot(file);
  if (snap === undefined) return { position: at, more: false, busy: true };
  const { files, token } = snap;
  try {
    const log = files.find((f) => f.part.index === 0);
    if (log === undefined) return { position: at, more: false, busy: false };
    const ino = log.part.ino;
    const index = indexFor(snap.index, ino);
    // The rotated files the index places (any other is not this log's output, or its place is unknown), in order.
    const rotated = index.files.flatMap((x) => {
      const f = files.find((o) => o.part.index > 0 && o.part.ino === x.ino);
      return f === undefined ? [] : [{ ...x, handle: f.handle }];
    }).sort((a, b) => a.start - b.start);
    let pos = at.at;
    if (at.ino !== ino) {
      // A new log, or the first one found: all of it that is kept, from its start.
      if (at.ino !== undefined) {
        notice(`${file} was replaced: reading the new file from its start`);
        printer.gap(false);
      }
      pos = Math.min(index.cut, ...rotated.map((r) => r.start));
    } else if (index.truncated && index.cut !== at.cut && pos > index.cut) {
      // Read past where a copy + truncate copied to: those bytes are in no file, and the log begins after them.
      pos = index.cut;
    } else if (pos > index.cut + log.size) {
      // No rotation shortens the output (cut + size only grows): something else truncated the log.
      notice(`${file} was truncated: reading it from its start`);
      printer.gap(false);
      pos = index.cut;
    }
    const skipTo = (to: number): void => {
      notice(`${to - pos} bytes of output were rotated away before they could be read (dropped by the agent, the app writing faster than it rotates, or removed past log.backups): going on from the next whole line`);
      printer.gap(true);
      pos = to;
    };
    const here = (): Position => ({ ino, at: pos, cut: index.cut });
    let budget = STEP_BYTES;
    for (const r of rotated) {
      const end = r.start + r.size;
      if (pos >= end) continue;
      if (pos < r.start) skipTo(r.start);
      const to = Math.min(end, pos + budget);
      const got = await copy(r.handle, pos - r.start, to - r.start, printer) + r.start;
      budget -= got - pos;
      pos = got;
      // Shorter than the index says (cut by something else): the rest is gone.
      if (got < to) skipTo(end);
      if (budget <= 0) return { position: here(), more: true, busy: false };
    }
    if (pos < index.cut) skipTo(index.cut);
    // The log's new bytes, held until the check below says no cut overlapped their read.
    const from = pos - index.cut;
    const size = (await log.handle.stat()).size;
    const want = Math.min(size - from, budget);
    if (want <= 0) return { position: here(), more: false, busy: false };
    const buf = Buffer.alloc(want);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await log.handle.read(buf, got, want - got, from + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    if ((await quiet(file))?.token !== token) return { position: here(), more: true, busy: false };
    printer.write(buf.subarray(0, got));
    return { position: { ino, at: pos + got, cut: index.cut }, more: from + got < size, busy: false };
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
 * `stop` resolves: every byte appended to the log is written to `printer`
 * at most once, in order, across rotations (see the module's comment);
 * ends the printer.
 */
export async function follow(file: string, from: Position, printer: Printer, stop: Promise<unknown> | undefined, opts: FollowOptions): Promise<void> {
  let stopped = false;
  // One reaction on `stop`, waking the pause under way: one per pause would pile up on it, four a second, for as long as -f runs.
  let wake: (() => void) | undefined;
  void stop?.then(() => { stopped = true; wake?.(); });
  let at = from;
  const pause = (ms: number) => new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    wake = () => { clearTimeout(t); resolve(); };
  });
  // Without `stop`: to the end once, a rotation in the way waited for (at most WAIT_MS).
  const until = Date.now() + WAIT_MS;
  while (!stopped) {
    const r = await step(file, at, printer, opts.notice);
    at = r.position;
    if (r.more) continue;
    if (stop === undefined && (!r.busy || Date.now() >= until)) break;
    await pause(r.busy ? 50 : opts.pollMs);
  }
  printer.end();
}
