import path from 'node:path';
import { RelinkError } from '../errors.js';
import { listReleases, type ReleaseInfo } from '../releases.js';
import { ago, EXIT, loadFor, parse, selectApps, table, type IO } from './io.js';
import type { Command } from './main.js';
import { damageWarner } from './warn.js';

const HELP = `Usage: relink releases [--config FILE] [--app NAME] [--json]

The releases in each app's releases folder, oldest first by the time the
binary arrived on this host (ARRIVED: its birth time where the filesystem
records one, else its ctime; not its modification time, which rsync -a and
scp -p copy from the build: MODIFIED). A release is a binary named by the
app's releaseNames.bin pattern (default app.{release}) with its config
named by releaseNames.cfg (default cfg.{release}; shown as missing when
absent). Other files in the folder are not releases and are never pruned.

Flags: current (the app's links point at it), previous (what relink
rollback goes back to: the newest release the journal records as deployed,
other than what runs now), last-good (the agent's last known-good release),
failed (its latest deploy was rolled back or failed), and the reasons
\`relink prune\` keeps it whatever its age (named by current.conf, linked by
another app, arrived after the current release and never deployed).

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  --app NAME      only this app
  --json          {"apps": [{"name", "releases": [{"release", "bin", "cfg", "current", "previous",
                  "lastGood", "failed", "lastDeploy", "protected"}]}]}; bin and cfg are
                  {"path", "size", "mtime", "arrived", "arrivedBy": "birth" | "ctime"}
  -h, --help      this text

Exit codes: 0 success, 1 the config, a releases folder or the state cannot be read, 2 usage error.
`;

export const releasesCommand: Command = {
  async run(args: string[], io: IO): Promise<number> {
    const { values } = parse(args, { config: { type: 'string', short: 'c' }, app: { type: 'string' }, json: { type: 'boolean' } });
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    const config = await loadFor(values.config, io);
    const apps = selectApps(config, values.app);
    const listed: { name: string; releasesDir: string; releases: ReleaseInfo[] }[] = [];
    const onDamaged = damageWarner(io, 'releases');
    // One app that cannot be listed (its journal unreadable for this user,
    // its folder missing) is said on stderr; the others are listed.
    let failed = 0;
    for (const app of apps) {
      try {
        listed.push({ name: app.name, releasesDir: app.releasesDir, releases: await listReleases(config, app, { onDamaged }) });
      } catch (err) {
        if (!(err instanceof RelinkError) || apps.length === 1) throw err;
        failed += 1;
        io.stderr(`relink releases: ${app.name}: ${err.message}\n`);
      }
    }
    const code = failed === 0 ? EXIT.ok : EXIT.failed;
    if (values.json) {
      io.stdout(`${JSON.stringify({ apps: listed.map((a) => ({ name: a.name, releases: a.releases })) })}\n`);
      return code;
    }
    const now = Date.now();
    io.stdout(listed.map((a) => {
      const head = `${a.name}: ${a.releasesDir}\n`;
      if (a.releases.length === 0) return `${head}  no releases\n`;
      const rows = [['RELEASE', 'BIN', 'CFG', 'SIZE', 'ARRIVED', 'MODIFIED', 'FLAGS', 'LAST DEPLOY']];
      for (const r of a.releases) {
        rows.push([r.release, path.basename(r.bin.path), r.cfg === null ? '(missing)' : path.basename(r.cfg.path), bytes(r.bin.size),
          `${ago(r.bin.arrived, now)} ago`, `${ago(r.bin.mtime, now)} ago`, flags(r), r.lastDeploy === null ? '-' : `${r.lastDeploy.outcome} ${ago(r.lastDeploy.time, now)} ago`]);
      }
      return head + table(rows);
    }).join('\n'));
    return code;
  },
};

function flags(r: ReleaseInfo): string {
  const out: string[] = [];
  if (r.current) out.push('current');
  if (r.previous) out.push('previous');
  if (r.lastGood) out.push('last-good');
  if (r.failed) out.push('failed');
  // "current" and "last known-good" are already flags of their own.
  const more = r.protected.filter((p) => p !== 'current' && p !== 'last known-good');
  if (more.length > 0) out.push(`kept: ${more.join('; ')}`);
  return out.length === 0 ? '-' : out.join(', ');
}

function bytes(n: number): string {
  if (n < 1024) return `${n}B`;
  const units = ['K', 'M', 'G', 'T'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)}${units[i]}`;
}
