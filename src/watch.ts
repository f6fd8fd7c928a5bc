/**
 * Noticing that current.conf may have changed. The watcher only says "look
 * again"; the orchestrator re-reads the file and compares content hashes, so
 * a lost, doubled or out-of-order event cannot make the agent apply stale
 * content (the periodic re-check in agent.ts covers an event lost outright).
 *
 * Why these chokidar settings (measured, see DESIGN.md):
 * - the folder is watched, not the file: editors and `mv` replace the file
 *   (new inode), and a current.conf that is itself a symlink changes without
 *   the link's folder seeing anything, so the target's folder is watched too;
 * - awaitWriteFinish with a short threshold: chokidar 5 throttles a second
 *   `change` within ~50 ms into nothing (paulmillr/chokidar#1455), and a
 *   writer writing in chunks would otherwise be read half-way; its default
 *   (2 s) is far too slow for a deploy.
 */
import { realpath } from 'node:fs/promises';
import path from 'node:path';
import { watch, type FSWatcher } from 'chokidar';

export interface WatchOptions {
  readonly file: string;
  /** How long the file's size must stay unchanged before an event is passed on (ms). */
  readonly stabilityMs: number;
  readonly pollMs: number;
  readonly onChange: (event: string) => void;
  readonly onError: (err: Error) => void;
}

export class CurrentWatcher {
  readonly #opts: WatchOptions;
  readonly #watcher: FSWatcher;
  /** Paths whose events matter: current.conf and, if it is a symlink, its target. */
  readonly #names = new Set<string>();
  readonly #dirs = new Set<string>();
  #closing: Promise<void> | undefined;

  private constructor(opts: WatchOptions, watcher: FSWatcher) {
    this.#opts = opts;
    this.#watcher = watcher;
  }

  /** Resolves once the watcher is armed. Callers must still read the file once themselves. */
  static async start(opts: WatchOptions): Promise<CurrentWatcher> {
    const file = path.resolve(opts.file);
    const dir = path.dirname(file);
    let self: CurrentWatcher | undefined;
    const watcher = watch(dir, {
      depth: 0,
      ignoreInitial: true,
      // Everything else in the releases folder (uploads in progress included)
      // is none of the watcher's business.
      ignored: (p: string) => self !== undefined && !self.#dirs.has(p) && !self.#names.has(p),
      awaitWriteFinish: opts.stabilityMs > 0 ? { stabilityThreshold: opts.stabilityMs, pollInterval: opts.pollMs } : false,
    });
    self = new CurrentWatcher({ ...opts, file }, watcher);
    self.#names.add(file);
    self.#dirs.add(dir);
    await self.#followTarget();
    watcher.on('all', (event, p) => {
      if (!self.#names.has(p)) return;
      // The symlink may now point somewhere else: follow before reporting.
      void self.#followTarget().finally(() => opts.onChange(event));
    });
    watcher.on('error', (err) => opts.onError(err instanceof Error ? err : new Error(String(err))));
    await new Promise<void>((resolve) => watcher.once('ready', () => resolve()));
    return self;
  }

  async #followTarget(): Promise<void> {
    let real: string;
    try {
      real = await realpath(this.#opts.file);
    } catch {
      return; // absent for now; the folder watch sees it come back
    }
    if (this.#names.has(real)) return;
    this.#names.add(real);
    const dir = path.dirname(real);
    if (!this.#dirs.has(dir)) {
      this.#dirs.add(dir);
      this.#watcher.add(dir);
    }
  }

  /** Stops watching; the same promise every time. */
  close(): Promise<void> {
    this.#closing ??= this.#watcher.close();
    return this.#closing;
  }
}
