/**
 * Where each byte of an app's log file lies across rotations: the index a
 * rotation (src/applog.ts) leaves beside the log as `.NAME.index`, for
 * `relink logs -f` (src/logfollow.ts).
 *
 * A rotation by collapse-range removes the log's first bytes, so every
 * offset in the log moves back by what was cut; an app that outruns the
 * checks has pieces cut that no rotated file keeps; a reader that looks
 * late finds files already removed past log.backups. From the files alone a
 * reader cannot tell how far the offsets moved: it guessed from the sizes of
 * the rotated files it found, and printed tens of thousands of lines twice
 * once the agent had dropped output (the trial of issue 12). So positions
 * are counted in the log's whole output instead: byte N is the N-th byte the
 * app ever wrote to this log file (its inode), a count no rotation changes.
 * The index says where the log's first byte lies in that count now (`cut`:
 * every byte cut from its front so far) and where each rotated file's does.
 * A reader keeps its place in that count; a byte it needs that no file holds
 * any more was rotated away, and it can say how many.
 *
 * The agent (root) writes it through the log's open folder, under a temp
 * name then renamed, owned and moded as the log, while the rotation's marker
 * is there; readers read it as they read the log. The app's user can
 * replace it (the folder is theirs): it is only believed as numbers about
 * that user's own output, and one that is not a small regular file of the
 * expected shape is no index (offsets count from the log's first byte).
 */
import path from 'node:path';
import { z } from 'zod';
import { writeFileAtomicIn } from './atomicWrite.js';
import { readSmallFile, type SafeFolder } from './safefs.js';

/** One rotated file: bytes [start, start + size) of the log's output, in the file from its byte 0. */
export interface IndexedFile {
  readonly ino: number;
  readonly start: number;
  readonly size: number;
}

export interface LogIndex {
  /** The log file's inode these offsets are of. */
  readonly ino: number;
  /** Where the log's first byte lies in its output: the bytes cut from its front so far. */
  readonly cut: number;
  /**
   * The last rotation copied and truncated (no collapse-range): what the
   * app wrote between its last read and the truncate is in no file, and the
   * log's first byte lies at or after `cut`.
   */
  readonly truncated: boolean;
  /** The rotated files this log's rotations made that are still there, by inode. */
  readonly files: readonly IndexedFile[];
}

/** More than log.backups (at most 100) ever needs, far less than a folder could hold. */
const MAX_BYTES = 64 * 1024;

const count = z.int().min(0);
const IndexSchema = z.object({
  ino: count,
  cut: count,
  truncated: z.boolean(),
  files: z.array(z.object({ ino: count, start: count, size: count })).max(1000),
});

/** `.NAME.index` beside the log `file`. */
export function indexName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.index`);
}

/** The index as read: parsed when it is one, and the bytes (which change with every rotation). */
export interface ReadIndex {
  readonly index: LogIndex | undefined;
  readonly raw: string;
}

/**
 * The index beside `file`; `index` undefined when there is none, or it is
 * not a regular file of at most 64 KiB holding the expected JSON (a planted
 * link is not followed: src/safefs.ts). Never throws.
 */
export async function readIndex(file: string): Promise<ReadIndex> {
  let raw: string;
  try {
    raw = (await readSmallFile(indexName(file), { maxBytes: MAX_BYTES })).bytes.toString('utf8');
  } catch {
    return { index: undefined, raw: 'none' };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return { index: undefined, raw };
  }
  const r = IndexSchema.safeParse(parsed);
  return { index: r.success ? r.data : undefined, raw };
}

/** What the log's offsets are when `index` is not about the log with inode `ino`: nothing was cut. */
export function indexFor(index: LogIndex | undefined, ino: number): LogIndex {
  return index !== undefined && index.ino === ino ? index : { ino, cut: 0, truncated: false, files: [] };
}

/**
 * Write `index` as `.NAME.index` in the open folder `dir` (NAME: the log's
 * name), owned and moded as the log, as every file the agent replaces is
 * written (src/atomicWrite.ts): a temp file created O_EXCL | O_NOFOLLOW
 * (never a link followed), synced, then renamed over the old one.
 */
export function writeIndex(dir: SafeFolder, name: string, index: LogIndex, owner: { readonly uid: number; readonly gid: number; readonly mode: number }): Promise<void> {
  return writeFileAtomicIn(dir, `.${name}.index`, `${JSON.stringify(index)}\n`, { mode: 0o600, owner });
}
