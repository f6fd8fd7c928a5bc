/**
 * A full garbage collection after deploys, when V8 would not do one itself.
 *
 * Each deploy leaves a few KB of garbage in V8's old space (objects that
 * lived through a deploy's verification polls). V8 collects the old space
 * only when it reaches a limit it sets far above the agent's ~9 MB of live
 * objects, so RSS climbed by ~7 KB per deploy (3,000 deploys, no full
 * collection; a heap snapshot's collection found the live heap unchanged:
 * garbage, not a leak). The agent is idle almost all the time, which is
 * when V8's own memory reducer would compact, but that only runs after a
 * full collection. So: one asynchronous full collection every `everyDeploys`
 * journal entries, or `idleMs` after the last one. Needs node's --expose-gc
 * (on relink's #! line); without it this does nothing.
 */

export type GcFunction = (options: { type: 'major'; execution: 'async' | 'sync' }) => unknown;

export interface CompactionOptions {
  readonly everyDeploys: number;
  readonly idleMs: number;
  /** Defaults to the global gc() that --expose-gc installs. */
  readonly gc?: GcFunction | undefined;
}

export class Compactor {
  readonly #every: number;
  readonly #idleMs: number;
  readonly #gc: GcFunction | undefined;
  #since = 0;
  #timer: NodeJS.Timeout | undefined;
  #runs = 0;

  constructor(opts: CompactionOptions) {
    this.#every = opts.everyDeploys;
    this.#idleMs = opts.idleMs;
    this.#gc = opts.gc ?? (globalThis as { gc?: GcFunction }).gc;
  }

  /** Collections asked for so far. */
  get runs(): number {
    return this.#runs;
  }

  /** A deploy (or any journal entry) happened. */
  noteDeploy(): void {
    if (this.#gc === undefined) return;
    this.#since += 1;
    clearTimeout(this.#timer);
    if (this.#since >= this.#every) {
      this.#collect();
      return;
    }
    this.#timer = setTimeout(() => this.#collect(), this.#idleMs);
    // Never what keeps the agent alive.
    this.#timer.unref();
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #collect(): void {
    this.#timer = undefined;
    this.#since = 0;
    this.#runs += 1;
    // Asynchronous: V8 marks incrementally instead of pausing the agent.
    this.#gc?.({ type: 'major', execution: 'async' });
  }
}
