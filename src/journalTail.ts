/**
 * Following an app's journal while `relink deploy --wait` waits: only the
 * bytes appended since it was opened are read (the waiter used to re-read
 * the whole journal every 50 ms: 919 MB at 200,000 entries), also across a
 * rotation in between.
 */
import { damageText, openForReading, parseLine, type HistoryEntry, type ReadOptions } from './history.js';
import { lineNumberAt, linesForward } from './lines.js';
import { journalFile } from './stateDir.js';

/** Where a file is: which file (device, inode and birth time, since ext4 reuses inode numbers) and how far it was read. */
interface FileId {
  readonly dev: number;
  readonly ino: number;
  readonly birth: number;
}

const sameFile = (a: FileId, b: FileId): boolean => a.dev === b.dev && a.ino === b.ino && a.birth === b.birth;

/**
 * What `relink deploy --wait` reads while it waits: the entries appended to
 * an app's journal since it was opened, read incrementally (only the new
 * bytes), also across a rotation in between. Open it before writing
 * current.conf.
 */
export class JournalTail {
  readonly #base: string;
  readonly #opts: ReadOptions;
  /** The live file when last read, and the offset up to which its complete lines were read. */
  #at: { id: FileId; offset: number } | undefined;
  /** Every file already read to its end or present at the start (rotated ones): skipped later. */
  #seen: FileId[] = [];

  private constructor(base: string, opts: ReadOptions) {
    this.#base = base;
    this.#opts = opts;
  }

  /** Mark the journal's current end: read() returns only what is appended after this. Throws STATE_UNREADABLE (a journal that exists but may not be read). */
  static async open(stateDir: string, app: string, opts: ReadOptions = {}): Promise<JournalTail> {
    const tail = new JournalTail(journalFile(stateDir, app), opts);
    const files = await tail.#files();
    for (const f of files) {
      if (f.file === tail.#base) tail.#at = { id: f.id, offset: f.size };
      else tail.#seen.push(f.id);
    }
    return tail;
  }

  /** The entries appended since open() or the last read(), oldest first; damaged lines go to `onDamaged`. Throws STATE_UNREADABLE. */
  async read(): Promise<HistoryEntry[]> {
    const out: HistoryEntry[] = [];
    const files = (await this.#files()).reverse(); // oldest first
    let at = this.#at;
    for (const f of files) {
      let from: number;
      if (this.#at !== undefined && sameFile(f.id, this.#at.id)) from = f.size >= this.#at.offset ? this.#at.offset : 0;
      else if (this.#seen.some((s) => sameFile(s, f.id))) continue;
      else from = 0;
      const handle = await openForReading(f.file);
      if (handle === undefined) continue;
      let end = from;
      try {
        const size = (await handle.stat()).size;
        for await (const line of linesForward(handle, from, size)) {
          // An unterminated last line is an append still being written: read it next time.
          if (!line.terminated && f.file === this.#base) break;
          end = line.next;
          const e = parseLine(line.bytes);
          if (e === undefined) continue;
          if (typeof e === 'string') {
            this.#opts.onDamaged?.({ file: f.file, line: await lineNumberAt(handle, line.offset), problem: damageText(line, e) });
            continue;
          }
          out.push(e);
        }
        if (f.file !== this.#base) end = size;
      } finally {
        await handle.close();
      }
      if (f.file === this.#base) at = { id: f.id, offset: end };
      else if (!this.#seen.some((s) => sameFile(s, f.id))) this.#seen.push(f.id);
    }
    this.#at = at;
    return out;
  }

  /** The journal's files that exist now, newest first, with their identity and size. */
  async #files(): Promise<Array<{ file: string; id: FileId; size: number }>> {
    const out: Array<{ file: string; id: FileId; size: number }> = [];
    for (let k = 0; ; k++) {
      const file = k === 0 ? this.#base : `${this.#base}.${k}`;
      const handle = await openForReading(file);
      if (handle === undefined) {
        if (k === 0) continue;
        return out;
      }
      try {
        const st = await handle.stat();
        out.push({ file, id: { dev: st.dev, ino: st.ino, birth: st.birthtimeMs }, size: st.size });
      } finally {
        await handle.close();
      }
    }
  }
}
