/**
 * The SVG charts for BENCHMARKS.md, where a picture reads better than a
 * table: reaction times as cumulative distributions, failed requests and
 * resident memory as bars.
 */
import type { Cell, DowntimeResult, Method } from './downtime.js';
import { isControl, METHOD_LABELS } from './downtime.js';
import type { FootprintResult, FootprintRow } from './footprint.js';
import { MANAGER_LABELS } from './footprint.js';
import { APP_KINDS, APP_LABELS } from './lib/apps.js';
import { count, ms } from './lib/stats.js';
import { barChart, cdfChart, COLORS, type BarGroup } from './lib/svg.js';
import type { ReactionResult, ReactionVariant } from './reaction.js';
import { CELL_ORDER, TARGETS, type Results } from './report.js';

const METHOD_COLORS: Record<Method, string> = {
  control: COLORS[6]!, 'boot-beside': COLORS[6]!, relink: COLORS[2]!, 'relink-socket': COLORS[2]!, 'relink-upgrade': COLORS[2]!, 'relink-restart': COLORS[7]!,
  restart: COLORS[0]!, 'socket-activate': COLORS[5]!, pm2: COLORS[3]!, supervisor: COLORS[4]!,
};

/** Labels that fit the bar chart's 210 px label column. */
const SHORT: Partial<Record<Method, string>> = {
  'relink-upgrade': 'relink "upgrade"',
  'relink-restart': 'relink "restart" (held)',
  'socket-activate': 'socket-activated restart',
};

/** The chart files, by name, for the results folder. */
export function charts(r: Results): Record<string, string> {
  const out: Record<string, string> = {};
  if (r.reaction !== undefined && r.reaction.variants.some((v) => v.samples.length > 0)) out['reaction.svg'] = reactionChart(r.reaction);
  if (r.downtime !== undefined && r.downtime.cells.length > 0) out['downtime.svg'] = downtimeChart(r.downtime);
  if (r.footprint !== undefined && r.footprint.rows.length > 0) out['footprint.svg'] = footprintChart(r.footprint);
  return out;
}

function reactionChart(rr: ReactionResult): string {
  const shown = rr.variants.filter((v) => v.samples.length > 0 && v.installed);
  const groups = [...new Set(shown.map((v) => `${v.label}|${v.spacing}`))];
  const colors = [COLORS[1]!, COLORS[4]!, COLORS[0]!, COLORS[2]!];
  const series = shown.map((v) => ({
    label: `${shortLabel(v)}, ${v.write === 'rename' ? 'rename' : 'in-place'}`,
    samples: v.samples,
    color: colors[groups.indexOf(`${v.label}|${v.spacing}`) % colors.length]!,
    dashed: v.write === 'inplace',
  }));
  const p99s = shown.map((v) => v.summary.p99).filter(Number.isFinite);
  return cdfChart({
    title: 'Deploy reaction time: write of current.conf to SIGHUP received',
    subtitle: 'share of deploys signalled within x ms; solid: rename, dashed: in-place write',
    unit: 'milliseconds',
    series,
    marks: [{ x: TARGETS.reactionP50, label: 'p50 target' }, { x: TARGETS.reactionP99, label: 'p99 target' }],
    xMax: Math.max(120, Math.ceil(Math.max(...p99s) / 20) * 20),
  });
}

function shortLabel(v: ReactionVariant): string {
  const who = v.stabilityMs === 50 && v.pollMs === 10 ? 'default' : `stability ${v.stabilityMs}`;
  return `${who}, ${v.spacing === 'spaced' ? 'spaced' : 'back to back'}`;
}

function downtimeChart(d: DowntimeResult): string {
  const groups: BarGroup[] = [];
  for (const app of APP_KINDS) {
    const cells = CELL_ORDER.map((m) => d.cells.find((c) => c.app === app && c.method === m && c.ratePerSecond === undefined)).filter((c): c is Cell => c !== undefined && !isControl(c.method));
    if (cells.length === 0) continue;
    groups.push({
      title: `${APP_LABELS[app]}, ${cells[0]!.deploys} deploys under load`,
      bars: cells.map((c) => ({
        label: SHORT[c.method] ?? METHOD_LABELS[c.method],
        value: c.failed,
        text: `${count(c.failed)} failed${c.probe.failures > 0 ? `, outage up to ${ms(c.probe.longestOutageMs)} ms` : ''}`,
        color: METHOD_COLORS[c.method],
      })),
    });
  }
  return barChart({ title: 'Failed requests while deploying (lower is better)', subtitle: "wrk -H 'Connection: close' on 127.0.0.1; socket errors + non-2xx", unit: 'failed requests', groups });
}

const MANAGER_COLORS: Record<FootprintRow['manager'], string> = { relink: COLORS[2]!, pm2: COLORS[3]!, supervisord: COLORS[4]! };

function footprintChart(f: FootprintResult): string {
  const groups: BarGroup[] = [...new Set(f.rows.map((x) => x.apps))].map((n) => ({
    title: `managing ${n} app${n === 1 ? '' : 's'}, idle`,
    bars: f.rows.filter((x) => x.apps === n).map((x) => ({ label: MANAGER_LABELS[x.manager], value: x.idle.rssMb, text: `${x.idle.rssMb.toFixed(1)} MB`, color: MANAGER_COLORS[x.manager] })),
  }));
  if (f.bareNode !== undefined) groups.push({ title: 'for scale', bars: [{ label: 'an idle bare node', value: f.bareNode.rssMb, text: `${f.bareNode.rssMb.toFixed(1)} MB`, color: COLORS[6] }] });
  return barChart({ title: 'Resident memory of the manager process (lower is better)', subtitle: 'VmRSS of the agent / PM2 daemon / supervisord, apps not counted', unit: 'MB', groups });
}
