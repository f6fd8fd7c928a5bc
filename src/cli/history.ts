import path from 'node:path';
import { journaledApps, newestEntries, type HistoryEntry } from '../history.js';
import { EXIT, loadFor, parse, selectApp, table, UsageError, type IO } from './io.js';
import type { Command } from './main.js';
import { damageWarner } from './warn.js';

const HELP = `Usage: relink history [--config FILE] [--app NAME] [--limit N] [--json]

The deploy journal, newest last: every apply attempt with its outcome, what
it switched from and to, the app's PID before and after, how long it took,
and the reason when it did not deploy. Outcomes:
  deployed      switched, started or signalled, and verified healthy
  refused       current.conf or its release failed a check; nothing was switched
  rolled_back   the release failed verification; the last known-good release
                serves again, and current.conf names it again
  failed        the release failed and there was nothing to roll back to (or
                the rollback failed too)
  stopped       stopped by relink stop, or links switched while so stopped
An entry answering relink stop, start or restart shows it in ACTION.
A run of identical refusals is journaled once, then once more with the
number of further ones: "refused x12".

Each app's journal is <stateDir>/apps/NAME/history.jsonl, one JSON object
per line, rotated like a log (history.jsonl.1, .2) so it stays bounded; it
is readable by root and the app's group only. Without --app, the journals of
every app you may read are merged by time; the others are named on stderr.
A damaged line (cut short by a crash) is skipped with a warning.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  --app NAME      only this app
  --limit N       only the newest N entries (reads only those)
  --json          {"history": [...]}
  -h, --help      this text

Exit codes: 0 success, 1 the config or the app's journal cannot be read, 2 usage error.
`;

export const historyCommand: Command = {
  async run(args: string[], io: IO): Promise<number> {
    const { values } = parse(args, { config: { type: 'string', short: 'c' }, app: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' } });
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    let limit = Infinity;
    if (values.limit !== undefined) {
      limit = /^\d+$/.test(values.limit) ? Number(values.limit) : NaN;
      if (!Number.isSafeInteger(limit) || limit < 1) throw new UsageError(`--limit must be a positive integer (found: ${JSON.stringify(values.limit)})`);
    }
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
    io.stdout(table([['TIME', 'APP', 'OUTCOME', 'ACTION', 'TO (bin / cfg)', 'PID', 'MS', 'REASON'], ...entries.map(row)]));
    return EXIT.ok;
  },
};

function row(e: HistoryEntry): string[] {
  const base = (p: string | null) => (p === null ? '-' : path.basename(p));
  // A restart's gap: refused connections (outage) or ones that waited in a held socket's backlog (queued).
  const gap = e.outageMs != null ? ` (outage ${e.outageMs} ms)` : e.queuedMs != null ? ` (queued ${e.queuedMs} ms)` : '';
  const asked = e.command === undefined ? '' : ` (relink ${e.command})`;
  return [e.time, e.app, e.repeats === undefined ? e.outcome : `${e.outcome} x${e.repeats}`, `${e.action}${gap}${asked}`, `${base(e.to.bin)} / ${base(e.to.cfg)}`,
    e.pidBefore === e.pidAfter ? String(e.pidAfter ?? '-') : `${e.pidBefore ?? '-'}->${e.pidAfter ?? '-'}`, String(e.durationMs), e.reason ?? ''];
}
