/** Journal entries for the tests: entry n of an app, its fields derived from n. */
import type { HistoryEntry } from '../src/history.js';

/** Entry `n` of `app`: time n seconds after 2026-01-01, durationMs n, currentHash "hash-n". */
export function entry(app: string, n: number, extra: Partial<HistoryEntry> = {}): HistoryEntry {
  return {
    time: new Date(Date.UTC(2026, 0, 1) + n * 1000).toISOString(), app, outcome: 'deployed', action: 'signal',
    from: { bin: null, cfg: null }, to: { bin: `/srv/${app}/release/app.${n}`, cfg: `/srv/${app}/release/cfg.${n}` },
    reason: null, code: null, pidBefore: 10, pidAfter: 11, durationMs: n, currentHash: `hash-${n}`, trigger: 'test', ...extra,
  };
}
