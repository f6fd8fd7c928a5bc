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
 * - after every report the file is watched by polling for TAIL_MS more, so
 *   an edit whose event never came is still seen at once (see TAIL_MS);
 * - the folders are watched through FolderWatches (src/folders.ts), which
 *   keeps each watch on the folder at its path now: `rm -rf deploy; mkdir
 *   deploy`, a folder swapped, a symlink re-pointed or a folder not there
 *   yet would otherwise leave the watch deaf. When it re-arms, the file is
 *   read again (it may have been written before the watch was back), and
 *   the loss and the recovery are reported (onFolder).
 */
import { readlink, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { isErrno } from './errors.js';
import { FolderWatches, isMissing, type FolderEvent } from './folders.js';

export type { FolderEvent } from './folders.js';

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
  /**
   * Called once per transition of a watched folder (current.conf's folder,
   * and the folder of the file a symlinked current.conf leads to; `dir` is
   * that folder's path, absolute): "missing" when it does not exist (also
   * from start(), for a folder that does not exist yet) or is no longer the
   * folder the watch is on (deleted, moved away, replaced, a symlink on its
   * path re-pointed), so that changes in it go unseen until "back": a folder
   * is at that path again and watched, and onChange follows so the file is
   * read. A replaced folder gives "missing" then "back" at once. For one
   * `dir` the calls alternate, "missing" first; a folder the watcher no
   * longer needs while it is missing (the link now leads elsewhere) gets no
   * "back".
   */
  readonly onFolder?: (event: FolderEvent, dir: string) => void;
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

/**
 * How long the file is polled after a report, so that a change whose event
 * never arrives right after a deploy is still seen at once: an inotify queue
 * overflow (IN_Q_OVERFLOW, which libuv's uv__inotify_read drops as an event
 * for no watch), a write to a re-pointed link's new target before its folder
 * is watched. Sized to chokidar's longest throttle window (100 ms after a
 * removal) when chokidar supplied the events, and kept: the back-to-back
 * figures in BENCHMARKS.md were measured with it.
 */
const TAIL_MS = 150;

interface Signature {
  /** Inode, size and mtime: what changes when the file is written, replaced or removed. */
  readonly key: string;
  readonly present: boolean;
  readonly empty: boolean;
}

export class CurrentWatcher {
  readonly #opts: WatchOptions;
  /** current.conf's folder and, if elsewhere, its symlink target's. */
  readonly #folders: FolderWatches;
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
    this.#folders = new FolderWatches({
      pollMs: opts.pollMs,
      wanted: () => this.#follow(),
      onEntry: (dir, name) => {
        if (name === null || this.#names.has(path.join(dir, name))) this.#touch();
      },
      onRearmed: () => this.#touch(),
      onFolder: (event, dir) => this.#opts.onFolder?.(event, dir),
      onError: (err) => this.#opts.onError(err),
    });
  }

  /**
   * Resolves once the watcher is armed, or waiting for a folder that does
   * not exist yet (reported by onFolder "missing"; onChange follows when it
   * appears). Callers must still read the file once themselves. Throws when
   * a folder exists but cannot be watched (EACCES; ENOSPC: the inotify watch
   * limit, fs.inotify.max_user_watches).
   */
  static async start(opts: WatchOptions): Promise<CurrentWatcher> {
    const self = new CurrentWatcher({ ...opts, file: path.resolve(opts.file) });
    try {
      await self.#folders.sync();
      self.#present = (await signature(self.#opts.file)).present;
    } catch (err) {
      await self.close();
      throw err;
    }
    return self;
  }

  /**
   * Checks that every watched folder is still the one watched, and re-arms
   * (reporting through onFolder and onChange) if not; follows a symlinked
   * current.conf again. A safety net for what no inotify event and no poll
   * sees: an ancestor of the folder renamed or re-pointed, a folder deleted
   * while a process has its working directory there (measured: inotify says
   * nothing until that process leaves). Meant for the agent's periodic
   * re-check (reconcileMs). Costs a realpath of current.conf and a stat per
   * watched folder; never rejects (errors go to onError, once).
   */
  check(): Promise<void> {
    return this.#folders.check();
  }

  /** Stops watching and waits for a check in progress; the same promise every time. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      clearTimeout(this.#timer);
      clearTimeout(this.#earlyTimer);
      this.#wake?.();
      await this.#folders.close();
      await this.#settling;
    })();
    return this.#closing;
  }

  /**
   * The folders to watch: current.conf's, and that of the file it leads to
   * (a symlinked current.conf changes without its own folder seeing
   * anything). The link is followed again before every report.
   */
  async #follow(): Promise<ReadonlySet<string>> {
    const file = this.#opts.file;
    const names = new Set([file, await linkTarget(file)]);
    if (!this.#closed) this.#names = names;
    return new Set([...names].map((n) => path.dirname(n)));
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
        // Follows a re-pointed link, and notices a folder gone or replaced.
        await this.#folders.check();
        if (this.#closed) return;
        this.#report(sig);
        // The tail: a change whose event chokidar dropped shows up here.
        const tailEnd = performance.now() + TAIL_MS;
        while (!this.#dirty && !this.#closed && performance.now() < tailEnd) {
          await this.#sleep(this.#opts.pollMs);
          if (this.#closed) return;
          const now = await signature(this.#opts.file);
          if (!this.#dirty && now.key !== sig.key) {
            // A change no event reported (yet): a new round, as for an event.
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
    if (isMissing(err)) return { key: 'missing', present: false, empty: false };
    // Unreadable for now (EACCES, ELOOP...): the reader will say why.
    return { key: `error:${isErrno(err) ? err.code : String(err)}`, present: true, empty: false };
  }
}

/**
 * Where current.conf leads: its real path, or, while that does not exist (a
 * link to a file or a folder not there yet), the path the chain of links
 * names, so that the folder it will appear in is watched (or waited for).
 */
async function linkTarget(file: string): Promise<string> {
  try {
    return await realpath(file);
  } catch {
    // missing, dangling or a loop: follow the links by hand
  }
  let p = file;
  for (let hops = 0; hops < 40; hops++) {
    let target: string;
    try {
      target = await readlink(p);
    } catch {
      return p; // not a link (EINVAL), or not there: where the file would be
    }
    p = path.resolve(path.dirname(p), target);
  }
  return p;
}
