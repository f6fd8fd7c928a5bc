/**
 * Which process is the app's main process right now, and since when. The
 * tracker re-verifies the one it knows cheaply (PID + start time + binary,
 * no process-table scan) and scans only when that one is gone: a re-exec'ing
 * app's PID changes on every reload, and the successor is found again.
 *
 * It reports what it sees (the main is gone, it handed over or daemonized,
 * a dead main's leftovers, strays, other users' copies) and never changes
 * the app's lifecycle state: that is the orchestrator's decision
 * (src/app.ts). The generations that drain are src/generations.ts's.
 */
import type { Logger } from 'pino';
import type { Effects } from './effects.js';
import type { ProcInfo } from './proc.js';

export class ProcessTracker {
  readonly #fx: Pick<Effects, 'verify' | 'discover' | 'now'>;
  readonly #log: Logger;
  #main: ProcInfo | undefined;
  /** When the current main process was started or adopted (fx.now() ms). */
  #sinceMs: number | undefined;
  /** Pids already warned about as another user's: said once, not on every check. */
  readonly #foreignSeen = new Set<number>();
  /** The serving generation's processes a dead main left behind (last scan). */
  #leftovers: readonly ProcInfo[] = [];

  constructor(fx: Pick<Effects, 'verify' | 'discover' | 'now'>, log: Logger) {
    this.#fx = fx;
    this.#log = log;
  }

  /** The main process as last confirmed (not re-checked). */
  get main(): ProcInfo | undefined {
    return this.#main;
  }

  /** When the main process was started or adopted (ms), while there is one. */
  get sinceMs(): number | undefined {
    return this.#sinceMs;
  }

  /** How long the app has run (ms): since the last start or adoption; 0 if never. */
  ranMs(): number {
    return this.#sinceMs === undefined ? 0 : this.#fx.now() - this.#sinceMs;
  }

  /** The main process: the known one if it still checks out, else a fresh scan; undefined when none runs. */
  async current(): Promise<ProcInfo | undefined> {
    if (this.#main !== undefined) {
      const same = await this.#fx.verify(this.#main);
      if (same !== undefined) return same;
    }
    const found = await this.#fx.discover(this.#main);
    this.warnStrays(found.strays, found.foreign);
    this.#leftovers = found.leftovers ?? [];
    if (found.followed !== undefined) {
      this.#log.info({ appPid: found.followed.to, previous: found.followed.from }, `the app's main process ${found.followed.from} exited and left one child, ${found.followed.to}: followed as the main (the app daemonized or re-executed on its own)`);
    }
    if (found.main === undefined) {
      if (this.#main !== undefined) this.#log.warn({ appPid: this.#main.pid }, 'app process is gone');
      this.#main = undefined;
      return undefined;
    }
    if (this.#main !== undefined && found.main.pid !== this.#main.pid) {
      this.#log.info({ appPid: found.main.pid, previous: this.#main.pid }, 'app handed over to a new process');
    }
    this.set(found.main, 'keep');
    return found.main;
  }

  /**
   * Take `info` as the main process. `since`, when its run began: now
   * (default); 'keep' for a successor of the same run (a handoff); or a
   * time (fx.now() ms: an adopted main's, as the state file says).
   */
  set(info: ProcInfo, since?: number | 'keep'): void {
    if (typeof since === 'number') this.#sinceMs = since;
    else if (since !== 'keep' || this.#sinceMs === undefined) this.#sinceMs = this.#fx.now();
    this.#main = info;
  }

  /** No main process (it is gone, or was never there). The run's start is kept for the crash policy. */
  forget(): void {
    this.#main = undefined;
  }

  /** Processes of the serving generation whose main died (seen by the last scan): to be stopped before a restart. */
  get leftovers(): readonly ProcInfo[] {
    return this.#leftovers;
  }

  /** The leftovers were stopped. */
  leftoversStopped(): void {
    this.#leftovers = [];
  }

  /** A restart failed: the next check counts another quick failure from now. */
  restartFailed(): void {
    this.#sinceMs = this.#fx.now();
  }

  warnStrays(strays: readonly ProcInfo[], foreign: readonly ProcInfo[] = []): void {
    for (const f of foreign) {
      if (this.#foreignSeen.has(f.pid)) continue;
      this.#foreignSeen.add(f.pid);
      this.#log.warn({ foreignPid: f.pid, uid: f.uid, exe: f.exe },
        `pid ${f.pid} runs the app's binary as uid ${f.uid}, not as the app's user: never signalled, left alone`);
    }
    if (strays.length === 0) return;
    this.#log.warn({ appPid: this.#main?.pid, strays: strays.map((s) => s.pid) },
      'more than one copy of the app runs; only the main one is signalled, the others are left alone');
  }
}
