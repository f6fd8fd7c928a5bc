import path from 'node:path';
import { RelinkError } from '../errors.js';
import { listReleases, type ReleaseInfo } from '../releases.js';
import { ago, EXIT, loadFor, selectApps, table } from './io.js';
import type { SpecOf } from './commands.js';
import type { Command } from './spec.js';
import { damageWarner } from './warn.js';

export const releasesCommand: Command<SpecOf<'releases'>> = {
  async run({ values }, io) {
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
        // In the folders layout ("{release}/app") the path in the releases folder: the file name alone says nothing.
        const shown = (file: string) => (r.folder === null ? path.basename(file) : path.relative(a.releasesDir, file));
        rows.push([r.release, shown(r.bin.path), r.cfg === null ? '(missing)' : shown(r.cfg.path), bytes(r.bin.size),
          `${ago((r.folder ?? r.bin).arrived, now)} ago`, `${ago(r.bin.mtime, now)} ago`, flags(r), r.lastDeploy === null ? '-' : `${r.lastDeploy.outcome} ${ago(r.lastDeploy.time, now)} ago`]);
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
