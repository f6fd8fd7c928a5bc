/**
 * The restart policy for a crashed app: capped exponential backoff over the
 * quick failures in a row (runs shorter than supervise.stableMs). A crash
 * after a stable run restarts at once: one crash in a week is not a loop.
 */
export interface BackoffPolicy {
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
}

/** Delay before restart number `failures` (1-based) of a run of quick failures. */
export function backoffDelay(failures: number, quick: boolean, policy: BackoffPolicy): number {
  if (!quick) return 0;
  const exp = policy.backoffMs * 2 ** Math.max(0, failures - 1);
  return Math.min(exp, policy.maxBackoffMs);
}
