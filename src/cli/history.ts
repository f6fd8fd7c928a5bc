import path from 'node:path';
import { readHistory } from '../history.js';
import { EXIT, loadFor, parse, selectApp, table, UsageError, type IO } from './io.js';
import type { Command } from './main.js';

const HELP = `Usage: relink history [--config FILE] [--app NAME] [--limit N] [--json]

The deploy journal, newest last: every apply attempt with its outcome
(deployed, refused, failed), what it switched from and to, the app's PID
before and after, how long it took, and the reason when it did not deploy.
The journal is <stateDir>/history.jsonl, one JSON object per line.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  --app NAME      only this app
  --limit N       only the newest N entries
  --json          {"history": [...]}
  -h, --help      this text

Exit codes: 0 success, 1 the config or journal cannot be read, 2 usage error.
`;

export const historyCommand: Command = {
  async run(args: string[], io: IO): Promise<number> {
    const { values } = parse(args, { config: { type: 'string', short: 'c' }, app: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' } });
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    let limit: number | undefined;
    if (values.limit !== undefined) {
      limit = Number(values.limit);
      if (!Number.isInteger(limit) || limit < 1) throw new UsageError(`--limit must be a positive integer (found: ${JSON.stringify(values.limit)})`);
    }
    const config = await loadFor(values.config, io);
    const name = values.app === undefined ? undefined : selectApp(config, values.app).name;
    let entries = await readHistory(config.stateDir, name);
    if (limit !== undefined) entries = entries.slice(-limit);
    if (values.json) {
      io.stdout(`${JSON.stringify({ history: entries })}\n`);
      return EXIT.ok;
    }
    if (entries.length === 0) {
      io.stdout('no deploys recorded yet\n');
      return EXIT.ok;
    }
    const base = (p: string | null) => (p === null ? '-' : path.basename(p));
    const rows = [['TIME', 'APP', 'OUTCOME', 'ACTION', 'TO (bin / cfg)', 'PID', 'MS', 'REASON']];
    for (const e of entries) {
      rows.push([e.time, e.app, e.outcome, e.action, `${base(e.to.bin)} / ${base(e.to.cfg)}`,
        e.pidBefore === e.pidAfter ? String(e.pidAfter ?? '-') : `${e.pidBefore ?? '-'}->${e.pidAfter ?? '-'}`, String(e.durationMs), e.reason ?? '']);
    }
    io.stdout(table(rows));
    return EXIT.ok;
  },
};
