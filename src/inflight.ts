/**
 * A deploy in flight, as the state file keeps it (InFlight, src/state.ts),
 * and what the next agent makes of one the previous agent left: is its
 * verdict already in the journal, and how is the new release brought up to
 * be judged. Pure: the orchestrator (src/app.ts #recover) carries it out.
 */
import type { Release } from './current.js';
import type { HistoryEntry } from './history.js';
import { rootsOf, type Discovery, type ProcInfo } from './proc.js';
import type { ReadAttempt } from './record.js';
import type { InFlight } from './state.js';

/** The record of a deploy about to switch `links` to `release`, `switchedTick` being now in clock ticks since boot. */
export function inflightFor(attempt: ReadAttempt, release: Release, main: ProcInfo | undefined, links: { bin: string | undefined; cfg: string | undefined }, switchedTick: number): InFlight {
  return {
    phase: 'deploy', trigger: attempt.trigger, startedMs: attempt.started, hash: attempt.snapshot.hash, text: attempt.snapshot.text,
    release: { bin: release.bin, cfg: release.cfg }, from: { bin: links.bin ?? null, cfg: links.cfg ?? null },
    pidBefore: main?.pid ?? null, switchedTick, cause: null,
  };
}

/** The attempt a recovered deploy is journaled as: the original one, its trigger marked ":recovered". */
export function recoveredAttempt(inf: InFlight): ReadAttempt {
  return {
    trigger: `${inf.trigger}:recovered`, started: inf.startedMs, snapshot: { text: inf.text, hash: inf.hash, mtimeMs: 0 },
    from: { bin: inf.from.bin ?? undefined, cfg: inf.from.cfg ?? undefined }, pidBefore: inf.pidBefore ?? undefined,
  };
}

/** The journal's newest entry is this deploy's verdict (the agent died after journaling it, before saving the state). */
export function journaled(inf: InFlight, last: HistoryEntry | undefined): boolean {
  return last !== undefined && last.currentHash === inf.hash && Date.parse(last.time) >= inf.startedMs;
}

/** The root (its parent not of the same generation) of the newest generation among `procs`, if any. */
export function newestRoot(procs: readonly ProcInfo[]): ProcInfo | undefined {
  const gen = Math.max(...procs.map((p) => p.gen ?? -1));
  return rootsOf(procs.filter((p) => p.gen === gen))[0];
}

/**
 * How a switched deploy the previous agent left is brought up to be judged:
 * - `judge`: it already runs: a successor of the generation its signal
 *   opened (not yet promoted), or, for a re-exec'ing app, a main process
 *   started at or after the switch (a successor found by its marker);
 * - `signal`: a main that started before the switch, which may never have
 *   been signalled (signalled again, an in-place reload being idempotent);
 * - `start`: nothing of the app runs.
 */
export type RecoveryPlan =
  | { readonly kind: 'judge'; readonly proc: ProcInfo }
  | { readonly kind: 'signal'; readonly proc: ProcInfo }
  | { readonly kind: 'start' };

export function recoveryPlan(inf: InFlight, found: Discovery, serving: number, mode: 'reexec' | 'inplace'): RecoveryPlan {
  const fresh = mode === 'reexec' ? newestRoot(found.all.filter((p) => (p.gen ?? 0) > serving)) : undefined;
  if (fresh !== undefined) return { kind: 'judge', proc: fresh };
  const main = found.main;
  if (main === undefined) return { kind: 'start' };
  if (mode === 'reexec' && main.startTime >= inf.switchedTick) return { kind: 'judge', proc: main };
  return { kind: 'signal', proc: main };
}
