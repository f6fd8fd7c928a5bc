import { journaledApps, newestEntries, type HistoryEntry } from '../history.js';
import { EXIT, loadFor, releaseLabel, releasesDirsOf, selectApp, table } from './io.js';
import type { SpecOf } from './commands.js';
import type { Command } from './spec.js';
import { damageWarner } from './warn.js';

export const historyCommand: Command<SpecOf<'history'>> = {
  async run({ values }, io) {
    const limit = values.limit ?? Infinity;
    const config = await loadFor(values.config, io);
    const onDamaged = damageWarner(io, 'history');
    const apps = values.app === undefined
      ? [...new Set([...config.apps.map((a) => a.name), ...(await journaledApps(config.stateDir))])]
      : [selectApp(config, values.app).name];
    const { entries, unreadable } = await newestEntries(config.stateDir, apps, limit, { onDamaged });
    if (values.app !== undefined && unreadable[0] !== undefined) throw unreadable[0].error;
    for (const u of unreadable) io.stderr(`relink history: not shown: app ${u.app}: ${u.error.message}\n`);
    if (values.json) {
      io.stdout(`${JSON.stringify({ history: entries })}\n`);
      return EXIT.ok;
    }
    if (entries.length === 0) {
      io.stdout('no deploys recorded yet\n');
      return EXIT.ok;
    }
    const releasesDirs = await releasesDirsOf(config.apps);
    io.stdout(table([['TIME', 'APP', 'OUTCOME', 'ACTION', 'TO (bin / cfg)', 'PID', 'MS', 'REASON'], ...entries.map((e) => row(e, releasesDirs.get(e.app)))]));
    return EXIT.ok;
  },
};

function row(e: HistoryEntry, releasesDir: string | undefined): string[] {
  const base = (p: string | null) => releaseLabel(p, releasesDir);
  // A restart's gap: refused connections (outage) or ones that waited in a held socket's backlog (queued).
  const gap = e.outageMs != null ? ` (outage ${e.outageMs} ms)` : e.queuedMs != null ? ` (queued ${e.queuedMs} ms)` : '';
  // Who asked: an operator (relink start...), or the crash supervision bringing up an app a failed verdict left down.
  const asked = e.command !== undefined ? ` (relink ${e.command})` : e.trigger === 'supervise' ? ' (supervision)' : '';
  return [e.time, e.app, e.repeats === undefined ? e.outcome : `${e.outcome} x${e.repeats}`, `${e.action}${gap}${asked}`, `${base(e.to.bin)} / ${base(e.to.cfg)}`,
    pids(e.pidBefore, e.pidAfter), String(e.durationMs), e.reason ?? ''];
}

/** The PID column: "11" (the same process, or a start), "10->11" (another took over), "10->-" (none runs after), "-" (none either side). */
function pids(before: number | null, after: number | null): string {
  if (before === after || before === null) return String(after ?? '-');
  return `${before}->${after ?? '-'}`;
}
