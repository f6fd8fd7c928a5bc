/**
 * The older generations of an app that still run after a newer one took
 * over, and stopping processes: what drains, since when, and what is done
 * when it drains too long; SIGTERM then SIGKILL for a failed generation, a
 * dead main's leftovers, or a liveness restart. It signals only processes
 * the finder still confirms as the app's (pid and start time), and never
 * changes the app's lifecycle state (src/app.ts does).
 */
import type { Logger } from 'pino';
import type { Effects } from './effects.js';
import type { ProcIdentity, ProcInfo } from './proc.js';

/** SIGKILL this long after SIGTERM when stopping processes of an app (ms): the default of the app's stop.timeoutMs. */
export const STOP_KILL_MS = 10_000;

/** How a generation is stopped: `signal` (the app's stop.signal), SIGKILL `timeoutMs` later. */
export interface StopPolicy {
  readonly signal: NodeJS.Signals;
  readonly timeoutMs: number;
}

const DEFAULT_STOP: StopPolicy = { signal: 'SIGTERM', timeoutMs: STOP_KILL_MS };

/** How long stopProcesses waits after SIGKILL for the processes to be gone (ms). */
const AFTER_KILL_MS = 2_000;

export interface Draining {
  readonly gen: number;
  /** Since when it drains (fx.now() ms). */
  readonly sinceMs: number;
  /** When it was last signalled to stop (SIGTERM, then SIGKILL), if it was. */
  readonly stopAt?: number;
}

type Fx = Pick<Effects, 'verify' | 'signal' | 'sleep' | 'now' | 'lineage'>;

export class Generations {
  readonly #fx: Fx;
  readonly #log: Logger;
  readonly #draining = new Map<number, { sinceMs: number; stopAt?: number }>();

  constructor(fx: Fx, log: Logger) {
    this.#fx = fx;
    this.#log = log;
  }

  /**
   * Generation `gen` drains since `ms` (kept if already known); `stopAt`:
   * when it was told to stop (a previous agent's record), from which
   * stop.timeoutMs runs until its SIGKILL.
   */
  drainingSince(gen: number, ms: number, stopAt?: number): void {
    if (!this.#draining.has(gen)) this.#draining.set(gen, stopAt === undefined ? { sinceMs: ms } : { sinceMs: ms, stopAt });
  }

  /** Every generation older than `serving` with a process left now drains. */
  servingIs(serving: number): void {
    for (const m of this.#fx.lineage()?.members ?? []) {
      if (m.gen < serving) this.drainingSince(m.gen, this.#fx.now());
    }
  }

  /**
   * Generation `gen` is told to stop now (it was replaced: reload.strategy
   * "socket" or "upgrade"): `main` gets stop.signal, and what is left of
   * the generation is killed stop.timeoutMs later (by step()).
   */
  stopNow(gen: number, main: ProcIdentity, stop: StopPolicy): void {
    this.stopping(gen);
    this.#log.info({ gen, appPid: main.pid, signal: stop.signal }, `generation ${gen} replaced: ${stop.signal} to pid ${main.pid}; it may drain for ${stop.timeoutMs} ms (stop.timeoutMs)`);
    this.#fx.signal(main.pid, stop.signal);
  }

  /**
   * Generation `gen` is told to stop from now on (recorded before the
   * signal goes out, so that the state saved in between says so). When it
   * was told already (a previous agent's record, a signal sent again), the
   * first time is kept: its SIGKILL comes stop.timeoutMs after that, not
   * after the last (a trial: 47 s after the first signal, not 15).
   * Returns when it was first told.
   */
  stopping(gen: number): number {
    const now = this.#fx.now();
    const d = this.#draining.get(gen);
    const stopAt = d?.stopAt ?? now;
    this.#draining.set(gen, { sinceMs: d?.sinceMs ?? now, stopAt });
    return stopAt;
  }

  /** The generations draining, oldest first. */
  draining(): Draining[] {
    return [...this.#draining].sort((a, b) => a[0] - b[0]).map(([gen, d]) => ({ gen, ...d }));
  }

  /**
   * One look at the draining generations: each is left alone while it
   * finishes its in-flight requests, forgotten once its last process exits
   * (true is returned: worth saving), told to stop (stop.signal) once it has
   * drained for `drainTimeoutMs`, and killed (SIGKILL) stop.timeoutMs after
   * that. Never waits.
   */
  async step(drainTimeoutMs: number, stop: StopPolicy = DEFAULT_STOP): Promise<boolean> {
    if (this.#draining.size === 0) return false;
    const members = this.#fx.lineage()?.members ?? [];
    const now = this.#fx.now();
    let changed = false;
    for (const d of this.draining()) {
      const alive: ProcInfo[] = [];
      for (const m of members.filter((x) => x.gen === d.gen)) {
        const p = await this.#fx.verify(m);
        if (p !== undefined) alive.push(p);
      }
      if (alive.length === 0) {
        this.#draining.delete(d.gen);
        this.#log.info({ gen: d.gen, drainedMs: now - d.sinceMs }, `generation ${d.gen} has drained (its last process exited after ${now - d.sinceMs} ms)`);
        changed = true;
        continue;
      }
      const pids = alive.map((p) => p.pid);
      if (d.stopAt === undefined && now - d.sinceMs >= drainTimeoutMs) {
        this.#log.warn({ gen: d.gen, pids, drainTimeoutMs },
          `generation ${d.gen} still runs ${drainTimeoutMs} ms after the next one took over (reload.drainTimeoutMs): ${stop.signal} to ${pids.join(', ')}`);
        for (const p of alive) this.#fx.signal(p.pid, stop.signal);
        this.#draining.set(d.gen, { sinceMs: d.sinceMs, stopAt: now });
      } else if (d.stopAt !== undefined && now - d.stopAt >= stop.timeoutMs) {
        this.#log.warn({ gen: d.gen, pids }, `generation ${d.gen} still runs ${stop.timeoutMs} ms after ${stop.signal} (stop.timeoutMs): SIGKILL to ${pids.join(', ')}`);
        for (const p of alive) this.#fx.signal(p.pid, 'SIGKILL');
        this.#draining.set(d.gen, { sinceMs: d.sinceMs, stopAt: now });
      }
    }
    return changed;
  }

  /**
   * `signal` (default SIGTERM) to each of `procs` still the app's (to
   * `only` of them when given: a master that stops its own workers),
   * SIGKILL to all those left after `killAfterMs` (default STOP_KILL_MS);
   * resolves once all are gone or 2 s after the SIGKILL.
   */
  async stop(procs: readonly ProcIdentity[], killAfterMs = STOP_KILL_MS, signal: NodeJS.Signals = 'SIGTERM', only?: readonly ProcIdentity[]): Promise<void> {
    const alive = async (): Promise<ProcIdentity[]> => {
      const out: ProcIdentity[] = [];
      for (const p of procs) if ((await this.#fx.verify(p)) !== undefined) out.push(p);
      return out;
    };
    const waitGone = async (ms: number): Promise<ProcIdentity[]> => {
      const until = this.#fx.now() + ms;
      for (;;) {
        const left = await alive();
        if (left.length === 0 || this.#fx.now() >= until) return left;
        await this.#fx.sleep(20);
      }
    };
    const first = await alive();
    for (const p of first) if (only === undefined || only.some((o) => o.pid === p.pid)) this.#fx.signal(p.pid, signal);
    const left = await waitGone(killAfterMs);
    if (left.length === 0) return;
    this.#log.warn({ pids: left.map((p) => p.pid) }, `still running ${killAfterMs} ms after ${signal}: SIGKILL`);
    for (const p of left) this.#fx.signal(p.pid, 'SIGKILL');
    await waitGone(AFTER_KILL_MS);
  }
}
