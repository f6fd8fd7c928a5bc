/** Order statistics for a benchmark's samples; nothing is averaged away. */

export interface Summary {
  readonly n: number;
  readonly min: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
  readonly mean: number;
}

/** Nearest-rank quantile of sorted samples (q in 0..1): always a value that was observed. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.max(1, Math.ceil(q * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1]!;
}

export function summarize(samples: readonly number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const mean = s.length === 0 ? Number.NaN : s.reduce((a, b) => a + b, 0) / s.length;
  return { n: s.length, min: s[0] ?? Number.NaN, p50: quantile(s, 0.5), p90: quantile(s, 0.9), p99: quantile(s, 0.99), max: s[s.length - 1] ?? Number.NaN, mean };
}

/** Milliseconds with as many decimals as the magnitude deserves. */
export function ms(x: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  if (x < 1) return x.toFixed(2);
  if (x < 100) return x.toFixed(1);
  return x.toFixed(0);
}

/** A ratio "a / b" as "4.2x", or "n/a". */
export function ratio(a: number, b: number): string {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return 'n/a';
  const r = a / b;
  return `${r < 10 ? r.toFixed(1) : r.toFixed(0)}x`;
}

/** An integer with thin thousands separators, for request counts. */
export function count(x: number): string {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : 'n/a';
}
