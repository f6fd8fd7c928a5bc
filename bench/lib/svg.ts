/**
 * Two small chart kinds, written as plain SVG (no dependency, readable in
 * any browser and on GitHub): horizontal bars with their values printed,
 * and cumulative distributions with vertical target lines.
 */

const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';
export const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#64748b', '#ca8a04'];

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

export interface Bar {
  readonly label: string;
  readonly value: number;
  /** Printed at the end of the bar instead of the value. */
  readonly text?: string;
  readonly color?: string;
}

export interface BarGroup {
  readonly title: string;
  readonly bars: readonly Bar[];
}

/** Horizontal bars in titled groups, one shared linear scale starting at 0. */
export function barChart(opts: { title: string; subtitle?: string; unit: string; groups: readonly BarGroup[]; width?: number }): string {
  const width = opts.width ?? 760;
  const labelW = 210;
  // Room on the right for the longest bar's printed value.
  const plotW = width - labelW - 250;
  const barH = 18;
  const gap = 6;
  const max = Math.max(1e-9, ...opts.groups.flatMap((g) => g.bars.map((b) => (Number.isFinite(b.value) ? b.value : 0))));
  const parts: string[] = [];
  let y = opts.subtitle ? 62 : 46;
  for (const g of opts.groups) {
    parts.push(`<text x="12" y="${y + 13}" font-size="13" font-weight="600" fill="#111827">${esc(g.title)}</text>`);
    y += 22;
    for (const [i, b] of g.bars.entries()) {
      const v = Number.isFinite(b.value) ? b.value : 0;
      const w = Math.max(v > 0 ? 1.5 : 0, (v / max) * plotW);
      const color = b.color ?? COLORS[i % COLORS.length]!;
      parts.push(`<text x="${labelW - 8}" y="${y + 13}" font-size="12" text-anchor="end" fill="#374151">${esc(b.label)}</text>`);
      parts.push(`<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${color}" rx="2"/>`);
      parts.push(`<text x="${(labelW + w + 6).toFixed(1)}" y="${y + 13}" font-size="12" fill="#111827">${esc(b.text ?? String(b.value))}</text>`);
      y += barH + gap;
    }
    y += 10;
  }
  const height = y + 24;
  const header = [
    `<text x="12" y="24" font-size="16" font-weight="700" fill="#111827">${esc(opts.title)}</text>`,
    opts.subtitle ? `<text x="12" y="44" font-size="12" fill="#4b5563">${esc(opts.subtitle)}</text>` : '',
    `<line x1="${labelW}" y1="${opts.subtitle ? 58 : 42}" x2="${labelW}" y2="${y}" stroke="#9ca3af" stroke-width="1"/>`,
    `<text x="${labelW + plotW}" y="${height - 8}" font-size="11" text-anchor="end" fill="#6b7280">${esc(opts.unit)}</text>`,
  ];
  return svg(width, height, [...header, ...parts]);
}

export interface Series {
  readonly label: string;
  readonly samples: readonly number[];
  readonly color: string;
  readonly dashed?: boolean;
}

/** Cumulative distribution of each series (x: value, y: share of samples at or below it), with marked x values. */
export function cdfChart(opts: { title: string; subtitle?: string; unit: string; series: readonly Series[]; marks: ReadonlyArray<{ x: number; label: string }>; xMax?: number }): string {
  const width = 900;
  const height = 420;
  const left = 56;
  const right = 260;
  const top = opts.subtitle ? 64 : 48;
  const bottom = 48;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const allMax = Math.max(...opts.series.flatMap((s) => s.samples), ...opts.marks.map((m) => m.x));
  const xMax = opts.xMax ?? niceCeil(allMax);
  const sx = (x: number): number => left + (Math.min(x, xMax) / xMax) * plotW;
  const sy = (q: number): number => top + (1 - q) * plotH;
  const parts: string[] = [
    `<text x="12" y="24" font-size="16" font-weight="700" fill="#111827">${esc(opts.title)}</text>`,
    opts.subtitle ? `<text x="12" y="44" font-size="12" fill="#4b5563">${esc(opts.subtitle)}</text>` : '',
  ];
  for (const q of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(`<line x1="${left}" y1="${sy(q).toFixed(1)}" x2="${left + plotW}" y2="${sy(q).toFixed(1)}" stroke="#e5e7eb"/>`);
    parts.push(`<text x="${left - 6}" y="${(sy(q) + 4).toFixed(1)}" font-size="11" text-anchor="end" fill="#6b7280">${q * 100}%</text>`);
  }
  parts.push(`<line x1="${left}" y1="${sy(0.99).toFixed(1)}" x2="${left + plotW}" y2="${sy(0.99).toFixed(1)}" stroke="#9ca3af" stroke-dasharray="1 2"/>`);
  parts.push(`<text x="${left + plotW - 4}" y="${(sy(0.99) + 12).toFixed(1)}" font-size="10" text-anchor="end" fill="#6b7280">99 %</text>`);
  const step = niceStep(xMax / 6);
  for (let x = 0; x <= xMax + 1e-9; x += step) {
    parts.push(`<line x1="${sx(x).toFixed(1)}" y1="${top}" x2="${sx(x).toFixed(1)}" y2="${top + plotH}" stroke="#f3f4f6"/>`);
    parts.push(`<text x="${sx(x).toFixed(1)}" y="${top + plotH + 16}" font-size="11" text-anchor="middle" fill="#6b7280">${+x.toFixed(3)}</text>`);
  }
  parts.push(`<text x="${left + plotW / 2}" y="${height - 10}" font-size="12" text-anchor="middle" fill="#374151">${esc(opts.unit)}</text>`);
  for (const m of opts.marks) {
    parts.push(`<line x1="${sx(m.x).toFixed(1)}" y1="${top}" x2="${sx(m.x).toFixed(1)}" y2="${top + plotH}" stroke="#111827" stroke-dasharray="2 3"/>`);
    parts.push(`<text x="${(sx(m.x) + 4).toFixed(1)}" y="${top + plotH - 8}" font-size="11" fill="#111827">${esc(m.label)}</text>`);
  }
  for (const [i, s] of opts.series.entries()) {
    const xs = [...s.samples].sort((a, b) => a - b);
    if (xs.length === 0) continue;
    const pts: string[] = [`${sx(xs[0]!).toFixed(1)},${sy(0).toFixed(1)}`];
    xs.forEach((x, k) => {
      pts.push(`${sx(x).toFixed(1)},${sy(k / xs.length).toFixed(1)}`, `${sx(x).toFixed(1)},${sy((k + 1) / xs.length).toFixed(1)}`);
    });
    parts.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" ${s.dashed ? 'stroke-dasharray="6 3"' : ''} points="${pts.join(' ')}"/>`);
    const ly = top + 8 + i * 20;
    parts.push(`<line x1="${left + plotW + 14}" y1="${ly}" x2="${left + plotW + 38}" y2="${ly}" stroke="${s.color}" stroke-width="2" ${s.dashed ? 'stroke-dasharray="6 3"' : ''}/>`);
    parts.push(`<text x="${left + plotW + 44}" y="${ly + 4}" font-size="11" fill="#111827">${esc(s.label)}</text>`);
  }
  parts.push(`<rect x="${left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="#9ca3af"/>`);
  return svg(width, height, parts);
}

function niceStep(raw: number): number {
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

function niceCeil(x: number): number {
  const s = niceStep(x / 5);
  return Math.ceil(x / s) * s;
}

function svg(width: number, height: number, parts: readonly string[]): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT}>
<rect width="100%" height="100%" fill="#ffffff"/>
${parts.filter((p) => p !== '').join('\n')}
</svg>
`;
}
