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
 * - meanwhile every change is also offered at once (onEarly, at most once
 *   per pollMs): the orchestrator acts on it only if the file is already a
 *   complete JSON document, so a finished write, back to back with the
 *   previous deploy or not, does not wait for the quiet period;
 * - chokidar 5 supplies the events, but is not trusted to supply all of
 *   them: it keeps the first of a quick series and drops the rest with no
 *   trailing event (5 ms per file, paulmillr/chokidar#1333 and #1084; 100 ms
 *   after a removal; 50 ms for `change`, #1455), so a vim save (rename away,
 *   write anew) or a delete-and-recreate right after an edit went unreported.
 *   Hence the quiet period polls the file itself, and after every report the
 *   file is watched by polling for TAIL_MS more, longer than any of those
 *   windows: an edit whose event chokidar swallowed is still seen at once.
 *   chokidar's own awaitWriteFinish is off; it applies after the drop.
 */
import { watch, type FSWatcher } from 'chokidar';
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
  /**
   * Called at once when current.conf may have changed (an event, or a
   * change seen by polling), at most once per pollMs, before the quiet
   * period: a consumer may read the file right away and act on it if it is
   * a complete JSON document (no proper prefix of a JSON object parses), and
   * otherwise wait for onChange. Saves the quiet period on most deploys.
   */
  readonly onEarly?: () => void;
  readonly onError: (err: Error) => void;
}

/**
 * An empty current.conf must stay empty this long (or stabilityMs if longer)
 * before it is passed on: every in-place writer (scp, `cat >`, vim with
 * backupcopy) truncates first, and a writer stalled between truncating and
 * writing (a slow link, a busy CPU) would otherwise be read as an empty file
 * and refused. A file really emptied is still reported, a little later.
 */
const EMPTY_QUIET_MS = 1000;

/** Longer than chokidar's longest throttle window (100 ms after a removal). */
const TAIL_MS = 150;

interface Signature {
  /** Inode, size and mtime: what changes when the file is written, replaced or removed. */
  readonly key: string;
  readonly present: boolean;
  readonly empty: boolean;
}

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
  /** When onEarly was last called (performance.now()). */
  #earlyAt = Number.NEGATIVE_INFINITY;
  /** An early call held back by the once-per-pollMs limit, due at the end of the window. */
  #earlyTimer: NodeJS.Timeout | undefined;
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
      const dir = path.dirname(self.#opts.file);
      // chokidar waits for a missing folder; the agent wants to be told.
      await stat(dir);
      await self.#watchFolder(dir);
      await self.#followTarget();
      self.#present = (await signature(self.#opts.file)).present;
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
      clearTimeout(this.#earlyTimer);
      this.#wake?.();
      const closing = [...this.#watches.values()].map((w) => w.close());
      this.#watches.clear();
      await Promise.allSettled(closing);
      await this.#settling;
    })();
    return this.#closing;
  }

  async #watchFolder(dir: string): Promise<void> {
    if (this.#watches.has(dir) || this.#closed) return;
    const w = watch(dir, {
      depth: 0,
      ignoreInitial: true,
      // Everything else in the folder (uploads in progress included) is none
      // of the watcher's business.
      ignored: (p: string) => p !== dir && !this.#names.has(p),
      awaitWriteFinish: false,
      atomic: false,
    });
    this.#watches.set(dir, w);
    w.on('all', (_event, p) => {
      if (this.#names.has(p)) this.#touch();
    });
    w.on('error', (err) => this.#opts.onError(err instanceof Error ? err : new Error(String(err))));
    await new Promise<void>((resolve) => w.once('ready', () => resolve()));
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
    const keep = new Set([path.dirname(file), path.dirname(real)]);
    // The ignore filter must let the new target through before its folder is watched.
    this.#names = new Set([...this.#names, ...names]);
    try {
      for (const dir of keep) await this.#watchFolder(dir);
    } catch (err) {
      // The target's folder cannot be watched (EACCES...): say so, report
      // anyway, and try again before the next report.
      this.#opts.onError(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    this.#names = names;
    for (const [dir, w] of this.#watches) {
      if (keep.has(dir)) continue;
      void w.close();
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
    this.#early();
  }

  /**
   * Every change is offered for an early read, at most once per pollMs (a
   * burst of events costs a read per poll, not one per event): the first
   * event after a pause, and equally a write that lands while the watcher is
   * still in the previous round (its quiet period or its tail), which is
   * what back-to-back deploys do. A change seen only by polling (chokidar
   * dropped its event) is offered too.
   */
  #early(): void {
    if (this.#closed) return;
    const now = performance.now();
    const wait = this.#earlyAt + this.#opts.pollMs - now;
    if (wait > 0) {
      // Held back, not dropped: the last change of a burst is still read early.
      this.#earlyTimer ??= setTimeout(() => {
        this.#earlyTimer = undefined;
        this.#early();
      }, wait);
      return;
    }
    this.#earlyAt = now;
    try {
      this.#opts.onEarly?.();
    } catch (err) {
      this.#opts.onError(err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** Report once the file has been quiet for stabilityMs; again if it changed meanwhile. */
  async #settle(): Promise<void> {
    try {
      while (this.#dirty && !this.#closed) {
        let sig = await signature(this.#opts.file);
        for (;;) {
          const quiet = sig.empty ? Math.max(this.#opts.stabilityMs, EMPTY_QUIET_MS) : this.#opts.stabilityMs;
          const left = quiet - (performance.now() - this.#lastChange);
          if (left <= 0) break;
          await this.#sleep(Math.min(this.#opts.pollMs, left));
          if (this.#closed) return;
          const now = await signature(this.#opts.file);
          if (now.key !== sig.key) {
            sig = now;
            this.#lastChange = performance.now();
            this.#early();
          }
        }
        // From here on, an event means another round: the report below
        // comes before any read it asks for, and covers everything before it.
        this.#dirty = false;
        await this.#followTarget();
        if (this.#closed) return;
        this.#report(sig);
        // The tail: a change whose event chokidar dropped shows up here.
        const tailEnd = performance.now() + TAIL_MS;
        while (!this.#dirty && !this.#closed && performance.now() < tailEnd) {
          await this.#sleep(this.#opts.pollMs);
          if (this.#closed) return;
          const now = await signature(this.#opts.file);
          if (!this.#dirty && now.key !== sig.key) {
            // A change chokidar did not report: a new round, as for an event.
            this.#dirty = true;
            this.#lastChange = performance.now();
            this.#early();
          }
        }
      }
    } catch (err) {
      if (!this.#closed) this.#opts.onError(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #report(sig: Signature): void {
    const { present } = sig;
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

/** Inode numbers alone are reused: size and mtime are part of the key. */
async function signature(file: string): Promise<Signature> {
  try {
    const st = await stat(file);
    return { key: `${st.ino}:${st.size}:${st.mtimeMs}`, present: true, empty: st.size === 0 };
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { key: 'missing', present: false, empty: false };
    // Unreadable for now (EACCES, ELOOP...): the reader will say why.
    return { key: `error:${isErrno(err) ? err.code : String(err)}`, present: true, empty: false };
  }
}
