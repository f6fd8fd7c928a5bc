/**
 * Supervision policy, apart from the orchestrator that carries it out:
 * what to do when the app is found gone (restart at once, restart after a
 * capped exponential backoff, or give up as fatal), and when a liveness
 * probe that keeps failing means the app must be restarted.
 *
 * Quick failures are runs shorter than supervise.stableMs; a crash after a
 * stable run restarts at once, since one crash in a week is not a loop
 * (Supervisor's startsecs and startretries, systemd's StartLimitBurst).
 */

export interface CrashPolicyOptions {
  /** First restart delay after a quick failure (ms), doubled each time. */
  readonly backoffMs: number;
  /** Cap of the delay (ms). */
  readonly maxBackoffMs: number;
  /** A run at least this long (ms) resets the count of quick failures. */
  readonly stableMs: number;
  /** Quick failures in a row after which the app is fatal. */
  readonly maxRetries: number;
}

/** Delay before restart number `failures` (1-based) of a run of quick failures (ms). */
export function backoffDelay(failures: number, quick: boolean, policy: Pick<CrashPolicyOptions, 'backoffMs' | 'maxBackoffMs'>): number {
  if (!quick) return 0;
  const exp = policy.backoffMs * 2 ** Math.max(0, failures - 1);
  return Math.min(exp, policy.maxBackoffMs);
}

export type CrashDecision =
  | { readonly kind: 'restart'; readonly delayMs: number; readonly failures: number; readonly quick: boolean }
  | { readonly kind: 'fatal'; readonly failures: number };

export class CrashPolicy {
  readonly #opts: CrashPolicyOptions;
  #quickFailures = 0;
  #restarts = 0;

  constructor(opts: CrashPolicyOptions) {
    this.#opts = opts;
  }

  /**
   * In a crash loop: the last run was a quick failure and no run since has
   * lasted supervise.stableMs (so also while the restarted app runs, between
   * its quick failures, and once fatal).
   */
  get looping(): boolean {
    return this.#quickFailures > 0;
  }

  /** Crash restarts since the last deploy (or agent start). */
  get restarts(): number {
    return this.#restarts;
  }

  /** The app was found gone after running `ranMs`: restart (after delayMs) or give up. */
  onExit(ranMs: number): CrashDecision {
    const quick = ranMs < this.#opts.stableMs;
    this.#quickFailures = quick ? this.#quickFailures + 1 : 1;
    if (this.#quickFailures > this.#opts.maxRetries) return { kind: 'fatal', failures: this.#quickFailures - 1 };
    return { kind: 'restart', delayMs: backoffDelay(this.#quickFailures, quick, this.#opts), failures: this.#quickFailures, quick };
  }

  onRestarted(): void {
    this.#restarts += 1;
  }

  /** The app is up and has run `ranMs`; true when that run just reset the count of quick failures. */
  onRunning(ranMs: number): boolean {
    if (this.#quickFailures === 0 || ranMs < this.#opts.stableMs) return false;
    this.#quickFailures = 0;
    return true;
  }

  /** A deliberate change (a deploy, a re-save): a fresh start. */
  reset(): void {
    this.#quickFailures = 0;
    this.#restarts = 0;
  }
}

/**
 * Liveness (health.liveness): after the verdict, the probe keeps running
 * every periodMs; failureThreshold failures in a row mean the app is alive
 * but not serving (a deadlock, a wedged event loop) and is restarted like a
 * crashed one (Kubernetes' livenessProbe, with its failureThreshold).
 */
export class LivenessCounter {
  readonly #threshold: number;
  #failures = 0;

  constructor(failureThreshold: number) {
    this.#threshold = failureThreshold;
  }

  get failures(): number {
    return this.#failures;
  }

  /** One probe's result; true when the app must be restarted. */
  onProbe(ok: boolean): boolean {
    this.#failures = ok ? 0 : this.#failures + 1;
    return this.#failures >= this.#threshold;
  }

  reset(): void {
    this.#failures = 0;
  }
}
