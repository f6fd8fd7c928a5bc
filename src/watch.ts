/**
 * Noticing that current.conf may have changed. The watcher only says "look
 * again"; the orchestrator re-reads the file and compares content hashes, so
 * a lost, doubled or out-of-order event cannot make the agent apply stale
 * content (the periodic re-check in agent.ts covers an event lost outright).
 *
 * How, and why (each point has a scenario in test/watch.test.ts):
 * - the folder is watched, not the file: editors and `mv` replace the file
 *   (new inode), and a folder watch (inotify) also reports writes to the
 *   files in it. A current.conf that is itself a symlink changes without its
 *   folder seeing anything, so the target's folder is watched too, and the
 *   link is followed again before every report;
 * - an event is passed on once the file has been quiet for `stabilityMs`:
 *   no event for it and no change of inode, size or mtime, checked every
 *   `pollMs`. The quiet period restarts on every event, so the last change
 *   is always followed by a report, and a writer writing in chunks is not
 *   read half-way;
 * - node:fs `watch`, not chokidar 5: chokidar keeps the first of a quick
 *   series of events and drops the rest with no trailing event (5 ms per
 *   file, paulmillr/chokidar#1333 and #1084; 100 ms after a removal; 50 ms
 *   for `change`, #1455). Even with awaitWriteFinish, a vim save (rename
 *   away, write anew) or a delete-and-recreate within 100 ms of the previous
 *   one was never reported: the agent kept a stale config until the next edit.
 */
import { watch, type FSWatcher } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { isErrno } from './errors.js';

export interface WatchOptions {
  readonly file: string;
  /** How long current.conf must stay unchanged before an event is passed on (ms). */
  readonly stabilityMs: number;
  /** How often it is looked at meanwhile (ms). */
  readonly pollMs: number;
  /** Called with "add", "change" or "unlink": what the file looked like once it was quiet. */
  readonly onChange: (event: string) => void;
  readonly onError: (err: Error) => void;
}

const MISSING = 'missing';

export class CurrentWatcher {
  readonly #opts: WatchOptions;
  /** Folder -> its watch: current.conf's folder and, if elsewhere, its symlink target's. */
  readonly #watches = new Map<string, FSWatcher>();
  /** Paths whose events matter: current.conf and, if it is a symlink, its target. */
  #names: ReadonlySet<string>;
  /** Whether current.conf existed at the last report, to name the next one. */
  #present = false;
  /** An event arrived that no report has covered yet. */
  #dirty = false;
  #lastChange = 0;
  #settling: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #wake: (() => void) | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;

  private constructor(opts: WatchOptions) {
    this.#opts = opts;
    this.#names = new Set([opts.file]);
  }

  /** Resolves once the watcher is armed. Callers must still read the file once themselves. */
  static async start(opts: WatchOptions): Promise<CurrentWatcher> {
    const self = new CurrentWatcher({ ...opts, file: path.resolve(opts.file) });
    try {
      self.#watchFolder(path.dirname(self.#opts.file));
      await self.#followTarget();
      self.#present = (await signature(self.#opts.file)) !== MISSING;
    } catch (err) {
      await self.close();
      throw err;
    }
    return self;
  }

  /** Stops watching and waits for a check in progress; the same promise every time. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      clearTimeout(this.#timer);
      this.#wake?.();
      for (const w of this.#watches.values()) w.close();
      this.#watches.clear();
      await this.#settling;
    })();
    return this.#closing;
  }

  #watchFolder(dir: string): void {
    if (this.#watches.has(dir)) return;
    const w = watch(dir, { persistent: true }, (_event, name) => {
      // No name: the kernel could not say which entry; assume it was ours.
      if (name === null || this.#names.has(path.join(dir, name))) this.#touch();
    });
    w.on('error', (err) => this.#opts.onError(err));
    this.#watches.set(dir, w);
  }

  /** Watch the folder of the file current.conf resolves to; stop watching a folder it left. */
  async #followTarget(): Promise<void> {
    let real: string;
    try {
      real = await realpath(this.#opts.file);
    } catch {
      return; // absent for now: its own folder's watch sees it come back
    }
    const file = this.#opts.file;
    const names = new Set([file, real]);
    if (this.#closed || (names.size === this.#names.size && [...names].every((n) => this.#names.has(n)))) return;
    this.#names = names;
    const keep = new Set([path.dirname(file), path.dirname(real)]);
    for (const dir of keep) this.#watchFolder(dir);
    for (const [dir, w] of this.#watches) {
      if (keep.has(dir)) continue;
      w.close();
      this.#watches.delete(dir);
    }
  }

  /** An event for current.conf (or its target): (re)start the quiet period. */
  #touch(): void {
    if (this.#closed) return;
    this.#dirty = true;
    this.#lastChange = performance.now();
    // Events arrive as macrotasks: none can slip in between the loop's last
    // look at #dirty and this promise settling.
    this.#settling ??= this.#settle().finally(() => {
      this.#settling = undefined;
    });
  }

  /** Report once the file has been quiet for stabilityMs; again if it changed meanwhile. */
  async #settle(): Promise<void> {
    try {
      while (this.#dirty && !this.#closed) {
        let sig = await signature(this.#opts.file);
        for (;;) {
          const left = this.#opts.stabilityMs - (performance.now() - this.#lastChange);
          if (left <= 0) break;
          await this.#sleep(Math.min(this.#opts.pollMs, left));
          if (this.#closed) return;
          const now = await signature(this.#opts.file);
          if (now !== sig) {
            sig = now;
            this.#lastChange = performance.now();
          }
        }
        // From here on, an event means another round: the report below
        // comes before any read it asks for, and covers everything before it.
        this.#dirty = false;
        await this.#followTarget();
        if (this.#closed) return;
        this.#report(sig);
      }
    } catch (err) {
      if (!this.#closed) this.#opts.onError(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #report(sig: string): void {
    const present = sig !== MISSING;
    const event = !present ? 'unlink' : this.#present ? 'change' : 'add';
    this.#present = present;
    this.#opts.onChange(event);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = resolve;
      this.#timer = setTimeout(resolve, ms);
    });
  }
}

/** What changes when the file is written, replaced or removed (inode numbers alone are reused). */
async function signature(file: string): Promise<string> {
  try {
    const st = await stat(file);
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return MISSING;
    return `error:${isErrno(err) ? err.code : String(err)}`;
  }
}
