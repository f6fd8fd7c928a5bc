import { pruneReleases } from '../releases.js';
import { EXIT, loadFor, parse, selectApps, UsageError, type IO } from './io.js';
import type { Command } from './main.js';
import { damageWarner } from './warn.js';

const HELP = `Usage: relink prune [--config FILE] [--app NAME] [--keep N] [--dry-run] [--json]

Delete old releases now (the agent also does it on each app's
prune.schedule): every release but the newest N loses its binary and its
config. Newest means arrived on this host last (the binary's birth time,
else its ctime), not modified last: rsync -a and scp -p keep the build's
modification time. Always kept, whatever their age:
  - the release the app's links point at (current);
  - the previous release: what relink rollback goes back to (the newest
    release the journal records as deployed, other than what runs now);
  - the last known-good release;
  - what current.conf names (an upload about to be deployed);
  - a release that arrived after the current one and was never deployed;
  - any file another app's links, last known-good release or current.conf
    name (apps may share a releases folder).
Files not named by the app's releaseNames patterns are never touched.
\`relink releases\` shows what would be kept and why.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  --app NAME      only this app
  --keep N        keep the newest N releases (default: the app's prune.keep, 5 unless set)
  --dry-run       list what would be deleted; delete nothing
  --json          {"dryRun": bool, "apps": [{"name", "removed": [FILE...], "kept": [FILE...]}]}
  -h, --help      this text

Exit codes: 0 success, 1 a file could not be deleted or the config or state cannot be read, 2 usage error.
`;

export const pruneCommand: Command = {
  async run(args: string[], io: IO): Promise<number> {
    const { values } = parse(args, { config: { type: 'string', short: 'c' }, app: { type: 'string' }, keep: { type: 'string' }, 'dry-run': { type: 'boolean' }, json: { type: 'boolean' } });
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    let keep: number | undefined;
    if (values.keep !== undefined) {
      keep = /^\d+$/.test(values.keep) ? Number(values.keep) : NaN;
      if (!Number.isSafeInteger(keep) || keep < 1) throw new UsageError(`--keep must be a positive integer (found: ${JSON.stringify(values.keep)})`);
    }
    const dryRun = values['dry-run'] === true;
    const config = await loadFor(values.config, io);
    const results: { name: string; removed: string[]; kept: string[] }[] = [];
    const onDamaged = damageWarner(io, 'prune');
    for (const app of selectApps(config, values.app)) {
      const { removed, kept } = await pruneReleases(config, app, { keep, dryRun, onDamaged });
      results.push({ name: app.name, removed, kept });
    }
    if (values.json) {
      io.stdout(`${JSON.stringify({ dryRun, apps: results })}\n`);
      return EXIT.ok;
    }
    for (const r of results) {
      const verb = dryRun ? 'would remove' : 'removed';
      io.stdout(`${r.name}: ${r.removed.length === 0 ? `nothing to remove` : `${verb} ${r.removed.length} file${r.removed.length === 1 ? '' : 's'}`}, ${r.kept.length} kept\n`);
      for (const f of r.removed) io.stdout(`  ${f}\n`);
    }
    return EXIT.ok;
  },
};
