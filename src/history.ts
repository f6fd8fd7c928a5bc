/**
 * The deploy journal: one JSON line per apply attempt, per app, in
 * <stateDir>/apps/NAME/history.jsonl, newest last, rotated like a log
 * (history.jsonl -> history.jsonl.1 -> ... up to `backups`) when an append
 * would take it over `maxBytes`, so it stays bounded and the newest entries
 * are kept. Who may read it: stateDir.ts.
 *
 * Readers never hold a whole file: they stream it oldest first, or read it
 * from the end, newest first, in chunks, across the rotated files, and stop
 * when they have what they need (at 200,000 entries, 88 MB, `relink
 * releases` used 634 MB when it read the whole file; BENCHMARKS.md, section
 * 5). A line that does not parse (cut short by a power loss, or garbage) is
 * skipped and reported through `onDamaged` with its file and line number.
 */
import { constants as fsConstants } from 'node:fs';
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { isErrno, RelinkError } from './errors.js';
import { lineNumberAt, linesBackward, linesForward, NL, type RawLine } from './lines.js';
import { appsDir, ensureAppDir, errnoText, isAppName, journalFile, ownFile, parseJson, writeFailed, type OnDamage } from './stateDir.js';

export type Outcome =
  /** links switched and the app started or signalled, and it answered as expected */
  | 'deployed'
  /** current.conf (or the release it names) failed validation: nothing was switched */
  | 'refused'
  /** the release failed verification; the last known-good release serves again */
  | 'rolled_back'
  /** the release failed and nothing could be rolled back to (or the rollback failed too) */
  | 'failed'
  /** the app was stopped on request (`relink stop`), or a deploy switched the links of an app so stopped and left it stopped */
  | 'stopped';

/**
 * What a deploy did to the app: started it (nothing ran), signalled it
 * (reexec, inplace, upgrade), started a new generation beside the serving
 * one on the held sockets (socket: "replace"), stopped and started it
 * ("restart"), or nothing.
 */
export type Action = 'start' | 'signal' | 'replace' | 'restart' | 'stop' | 'none';

/** An operator's request that an entry answers (`relink stop | start | restart`), as opposed to a change of current.conf. */
export type Command = 'stop' | 'start' | 'restart';

export interface HistoryEntry {
  readonly time: string;
  readonly app: string;
  readonly outcome: Outcome;
  readonly action: Action;
  readonly from: { readonly bin: string | null; readonly cfg: string | null };
  readonly to: { readonly bin: string | null; readonly cfg: string | null };
  readonly reason: string | null;
  readonly code: string | null;
  readonly pidBefore: number | null;
  readonly pidAfter: number | null;
  readonly durationMs: number;
  /** sha256 of the current.conf content this attempt read. */
  readonly currentHash: string | null;
  /** What started the attempt: a file event, the periodic re-check, or agent start. */
  readonly trigger: string;
  /** For rolled_back: the release that serves again. */
  readonly rolledBackTo?: { readonly bin: string; readonly cfg: string } | null;
  /** For rolled_back: the current.conf content that was rejected (current.conf now names what runs), cut to 4 KiB. */
  readonly rejected?: string | null;
  /**
   * A run of identical attempts (the same refusal of the same content) is
   * journaled once, then closed by one entry standing for the further
   * identical ones: this many of them.
   */
  readonly repeats?: number;
  /** The app's reload.strategy when the deploy ran (a deployed or rolled-back entry). */
  readonly strategy?: string;
  /** A restart with no held sockets: ms from the old generation's exit to the new one's first accepted connection (connections were refused meanwhile); null: not measured. */
  readonly outageMs?: number | null;
  /** A restart on held sockets: the same gap, during which connections waited in the backlog (none refused). */
  readonly queuedMs?: number | null;
  /** The operator's command this entry answers (absent for a change of current.conf). */
  readonly command?: Command;
  /** The id of that request (src/requests.ts): what `relink stop|start|restart --wait` waits for. */
  readonly request?: string;
}

const Files = z.object({ bin: z.string().nullable(), cfg: z.string().nullable() });

/** A journal line at the boundary. Unknown keys are kept: a newer agent may add fields. */
export const HistoryEntrySchema = z.looseObject({
  time: z.string(),
  app: z.string(),
  outcome: z.enum(['deployed', 'refused', 'rolled_back', 'failed', 'stopped']),
  action: z.enum(['start', 'signal', 'replace', 'restart', 'stop', 'none']),
  from: Files,
  to: Files,
  reason: z.string().nullable(),
  code: z.string().nullable(),
  pidBefore: z.int().nullable(),
  pidAfter: z.int().nullable(),
  durationMs: z.number(),
  currentHash: z.string().nullable(),
  trigger: z.string(),
  rolledBackTo: z.object({ bin: z.string(), cfg: z.string() }).nullable().optional(),
  rejected: z.string().nullable().optional(),
  repeats: z.int().min(1).optional(),
  strategy: z.string().optional(),
  outageMs: z.number().nullable().optional(),
  queuedMs: z.number().nullable().optional(),
  command: z.enum(['stop', 'start', 'restart']).optional(),
  request: z.string().optional(),
});

// What the schema accepts is a HistoryEntry (checked by the compiler).
const asEntry = (x: z.output<typeof HistoryEntrySchema>): HistoryEntry => x;

export const DEFAULT_MAX_BYTES = 4 * 1024 * 1024;
export const DEFAULT_BACKUPS = 2;

export interface JournalOptions {
  /** Rotate when an append would take history.jsonl over this many bytes. Default 4 MiB (about 9,000 entries). */
  readonly maxBytes?: number;
  /** Rotated files kept: history.jsonl.1 (newest) .. history.jsonl.N; 0 keeps none. Default 2. */
  readonly backups?: number;
  /**
   * The group that may read the journal: the gid the app runs as. The folder
   * is 0750 and the files 0640, owned by root and this group when the agent
   * runs as root; otherwise (or when undefined) owned by the agent. Default: undefined.
   */
  readonly gid?: number;
  /**
   * Told when an append finds the journal's last line cut short (a power
   * loss, a full disk) and ends it with a newline first: log a warning.
   * Default: silence.
   */
  readonly onDamaged?: OnDamage;
}

/**
 * One app's journal, written by the agent. Appends are serialised, go to
 * the file with O_APPEND, and rotate the file first when the entry would
 * take it over `maxBytes`. Before the first append of a run, and after any
 * failed append, the file's last byte is looked at: a line torn by a power
 * loss or a full disk is ended with a newline, so the next entry starts on
 * a line of its own instead of being glued to the torn one and lost.
 */
export class Journal {
  readonly file: string;
  readonly #maxBytes: number;
  readonly #backups: number;
  #gid: number | undefined;
  readonly #onDamaged: OnDamage | undefined;
  #dirReady = false;
  #queue: Promise<void> = Promise.resolve();

  /** `file`: the journal's path, journalFile(stateDir, app). */
  constructor(file: string, opts: JournalOptions = {}) {
    const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    const backups = opts.backups ?? DEFAULT_BACKUPS;
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) throw new RangeError(`maxBytes must be a positive integer (found: ${maxBytes})`);
    if (!Number.isSafeInteger(backups) || backups < 0) throw new RangeError(`backups must be an integer >= 0 (found: ${backups})`);
    this.file = file;
    this.#maxBytes = maxBytes;
    this.#backups = backups;
    this.#gid = opts.gid;
    this.#onDamaged = opts.onDamaged;
  }

  /** The app's group, known later (its user was created after the agent started): folder and files are handed to it on the next append. */
  setGid(gid: number | undefined): void {
    if (gid === this.#gid) return;
    this.#gid = gid;
    this.#dirReady = false;
  }

  /** Append one entry. Throws a StateWriteError (STATE_WRITE_FAILED, with the path and the errno). */
  append(entry: HistoryEntry): Promise<void> {
    return this.appendLines([JSON.stringify(entry)]);
  }

  /** Append ready-made lines (no newline in them), rotating between them as needed. */
  appendLines(lines: readonly string[]): Promise<void> {
    const run = this.#queue.then(() => this.#write(lines));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #write(lines: readonly string[]): Promise<void> {
    try {
      if (!this.#dirReady) {
        await ensureAppDir(path.dirname(this.file), this.#gid);
        this.#dirReady = true;
      }
      let i = 0;
      while (i < lines.length) {
        const handle = await open(this.file, fsConstants.O_RDWR | fsConstants.O_APPEND | fsConstants.O_CREAT | fsConstants.O_NOFOLLOW, 0o640);
        let full = false;
        try {
          const st = await handle.stat();
          await ownFile(handle, st, this.#gid);
          let size = st.size;
          let text = '';
          // Every append, not only the first: one byte read, and a line torn by
          // anything (a crash, a full disk, another writer) never swallows the next entry.
          if (size > 0 && !(await endsWithNewline(handle, size))) {
            text = '\n';
            this.#onDamaged?.({ file: this.file, line: await lineNumberAt(handle, size), problem: 'the last line was cut short (a crash or a full disk); ended it, so the next entry starts on a line of its own' });
            size += 1;
          }
          for (; i < lines.length; i++) {
            const add = Buffer.byteLength(lines[i]!) + 1;
            // An entry larger than maxBytes still goes into a file of its own.
            if (size > 0 && size + add > this.#maxBytes) {
              full = true;
              break;
            }
            text += `${lines[i]!}\n`;
            size += add;
          }
          if (text !== '') await handle.appendFile(text);
        } finally {
          await handle.close();
        }
        if (full) await this.#rotate();
      }
    } catch (err) {
      this.#dirReady = false;
      throw writeFailed(this.file, err, 'append to the journal');
    }
  }

  /** history.jsonl -> .1 -> .2 ... -> .backups; anything beyond goes (backups may have been lowered). */
  async #rotate(): Promise<void> {
    for (let k = this.#backups + 1; ; k++) {
      try {
        await unlink(`${this.file}.${k}`);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) break;
        throw err;
      }
    }
    if (this.#backups === 0) {
      await unlink(this.file).catch((err: unknown) => { if (!isErrno(err, 'ENOENT')) throw err; });
      return;
    }
    for (let k = this.#backups - 1; k >= 1; k--) {
      await rename(`${this.file}.${k}`, `${this.file}.${k + 1}`).catch((err: unknown) => { if (!isErrno(err, 'ENOENT')) throw err; });
    }
    await rename(this.file, `${this.file}.1`);
  }
}

async function endsWithNewline(handle: FileHandle, size: number): Promise<boolean> {
  const b = Buffer.alloc(1);
  await handle.read(b, 0, 1, size - 1);
  return b[0] === NL;
}

/** Append one entry to its app's journal (default rotation unless `opts`). Throws a StateWriteError. (The agent keeps one Journal per app instead.) */
export async function appendHistory(stateDir: string, entry: HistoryEntry, opts: JournalOptions = {}): Promise<void> {
  await new Journal(journalFile(stateDir, entry.app), opts).append(entry);
}

// ---------------------------------------------------------------- reading

export interface ReadOptions {
  /** Told of every damaged line skipped (its file and 1-based line number). Default: silence. */
  readonly onDamaged?: OnDamage;
}


/** The journal's files, newest first: history.jsonl, history.jsonl.1, ... as far as they go. */
async function* journalFilesNewestFirst(stateDir: string, app: string): AsyncGenerator<{ file: string; handle: FileHandle }> {
  const base = journalFile(stateDir, app);
  for (let k = 0; ; k++) {
    const file = k === 0 ? base : `${base}.${k}`;
    const handle = await openForReading(file);
    // Right after a rotation history.jsonl is missing until the next append; .1 is still there.
    if (handle === undefined) {
      if (k === 0) continue;
      return;
    }
    try {
      yield { file, handle };
    } finally {
      await handle.close();
    }
  }
}

/** The file open for reading, undefined when it does not exist; STATE_UNREADABLE when it cannot be read or is not a regular file. */
export async function openForReading(file: string): Promise<FileHandle | undefined> {
  try {
    const handle = await open(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    if (!(await handle.stat()).isFile()) {
      await handle.close();
      throw new RelinkError('STATE_UNREADABLE', `${file}: is not a regular file`, { file, rule: 'must be a regular file' });
    }
    return handle;
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return undefined;
    if (err instanceof RelinkError) throw err;
    throw new RelinkError('STATE_UNREADABLE', `${file}: could not read the journal (${errnoText(err)})`, { file, rule: 'must be readable', found: errnoText(err) }, { cause: err });
  }
}

/** What a reader says of a damaged line. */
export function damageText(line: RawLine, problem: string): string {
  return `${line.terminated ? '' : 'the last line has no newline (cut short by a crash, or still being written): '}${problem}; skipped`;
}

/** A line's entry, or why it is not one. Empty lines (a torn line's end, a blank) are neither. */
export function parseLine(bytes: Buffer): HistoryEntry | string | undefined {
  const text = bytes.toString('utf8').replace(/\r$/, '');
  if (text.trim() === '') return undefined;
  const r = parseJson(text, HistoryEntrySchema);
  return r.ok ? asEntry(r.value) : r.problem;
}

/**
 * The app's entries, newest first, read from the end of the journal in
 * chunks across the rotated files: stop iterating and nothing more is read.
 * Throws STATE_UNREADABLE when a file exists but cannot be read (EACCES).
 */
export async function* newestFirst(stateDir: string, app: string, opts: ReadOptions = {}): AsyncGenerator<HistoryEntry> {
  for await (const { file, handle } of journalFilesNewestFirst(stateDir, app)) {
    const size = (await handle.stat()).size;
    for await (const line of linesBackward(handle, size)) {
      const e = parseLine(line.bytes);
      if (e === undefined) continue;
      if (typeof e === 'string') {
        opts.onDamaged?.({ file, line: await lineNumberAt(handle, line.offset), problem: damageText(line, e) });
        continue;
      }
      yield e;
    }
  }
}

/** The app's entries, oldest first, streamed across the rotated files. Throws like newestFirst. */
export async function* oldestFirst(stateDir: string, app: string, opts: ReadOptions = {}): AsyncGenerator<HistoryEntry> {
  const base = journalFile(stateDir, app);
  let k = 1;
  while ((await openForReading(`${base}.${k}`).then(async (h) => { await h?.close(); return h !== undefined; }))) k++;
  for (let i = k - 1; i >= 0; i--) {
    const file = i === 0 ? base : `${base}.${i}`;
    const handle = await openForReading(file);
    if (handle === undefined) continue;
    try {
      const size = (await handle.stat()).size;
      let lineNo = 0;
      for await (const line of linesForward(handle, 0, size)) {
        lineNo++;
        const e = parseLine(line.bytes);
        if (e === undefined) continue;
        if (typeof e === 'string') {
          opts.onDamaged?.({ file, line: lineNo, problem: damageText(line, e) });
          continue;
        }
        yield e;
      }
    } finally {
      await handle.close();
    }
  }
}

/**
 * The names of the apps that have a folder in the state folder (a journal
 * of an app since removed from the config still counts).
 */
export async function journaledApps(stateDir: string): Promise<string[]> {
  try {
    return (await readdir(appsDir(stateDir), { withFileTypes: true })).filter((d) => d.isDirectory() && isAppName(d.name)).map((d) => d.name).sort();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
}

export interface MergedEntries {
  /** Oldest first (newest last), at most `limit`. */
  readonly entries: HistoryEntry[];
  /** Apps whose journal could not be read (EACCES: not in the app's group), with the error. */
  readonly unreadable: ReadonlyArray<{ readonly app: string; readonly error: RelinkError }>;
}

/**
 * The newest `limit` entries of these apps' journals, merged by time,
 * returned oldest first. Reads each journal from its end and only as far as
 * the entries shown. An app whose journal cannot be read is listed in
 * `unreadable`, not thrown.
 */
export async function newestEntries(stateDir: string, apps: readonly string[], limit = Infinity, opts: ReadOptions = {}): Promise<MergedEntries> {
  const unreadable: { app: string; error: RelinkError }[] = [];
  const heads: { app: string; it: AsyncGenerator<HistoryEntry>; head: HistoryEntry }[] = [];
  const advance = async (app: string, it: AsyncGenerator<HistoryEntry>): Promise<HistoryEntry | undefined> => {
    try {
      const r = await it.next();
      return r.done ? undefined : r.value;
    } catch (err) {
      if (!(err instanceof RelinkError) || err.code !== 'STATE_UNREADABLE') throw err;
      unreadable.push({ app, error: err });
      return undefined;
    }
  };
  for (const app of apps) {
    const it = newestFirst(stateDir, app, opts);
    const head = await advance(app, it);
    if (head !== undefined) heads.push({ app, it, head });
  }
  const out: HistoryEntry[] = [];
  try {
    while (out.length < limit && heads.length > 0) {
      let best = 0;
      for (let i = 1; i < heads.length; i++) if (Date.parse(heads[i]!.head.time) > Date.parse(heads[best]!.head.time)) best = i;
      const h = heads[best]!;
      out.push(h.head);
      const next = await advance(h.app, h.it);
      if (next === undefined) heads.splice(best, 1);
      else h.head = next;
    }
  } finally {
    for (const h of heads) await h.it.return(undefined);
  }
  return { entries: out.reverse(), unreadable };
}

/**
 * Every entry, oldest first: of `app`, or of every app in the state folder
 * merged by time. For tests and small tools; commands use the streaming
 * readers above. Throws STATE_UNREADABLE for a journal it may not read.
 */
export async function readHistory(stateDir: string, app?: string, opts: ReadOptions = {}): Promise<HistoryEntry[]> {
  if (app !== undefined) {
    const out: HistoryEntry[] = [];
    for await (const e of oldestFirst(stateDir, app, opts)) out.push(e);
    return out;
  }
  const merged = await newestEntries(stateDir, await journaledApps(stateDir), Infinity, opts);
  const first = merged.unreadable[0];
  if (first !== undefined) throw first.error;
  return merged.entries;
}
