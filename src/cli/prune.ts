import { releasesAreFolders } from '../config.js';
import { pruneReleases } from '../releases.js';
import { EXIT, loadFor, selectApps } from './io.js';
import type { SpecOf } from './commands.js';
import type { Command } from './spec.js';
import { damageWarner } from './warn.js';

export const pruneCommand: Command<SpecOf<'prune'>> = {
  async run({ values }, io) {
    const keep = values.keep;
    const dryRun = values['dry-run'] === true;
    const config = await loadFor(values.config, io);
    const results: { name: string; removed: string[]; kept: string[]; leftovers: string[]; folders: boolean }[] = [];
    const onDamaged = damageWarner(io, 'prune');
    for (const app of selectApps(config, values.app)) {
      const { removed, kept, leftovers } = await pruneReleases(config, app, { keep, dryRun, onDamaged });
      results.push({ name: app.name, removed, kept, leftovers, folders: releasesAreFolders(app) });
    }
    if (values.json) {
      io.stdout(`${JSON.stringify({ dryRun, apps: results.map(({ folders: _, ...r }) => r) })}\n`);
      return EXIT.ok;
    }
    for (const r of results) {
      const verb = dryRun ? 'would remove' : 'removed';
      // In the folders layout ("{release}/app") a release is a folder, removed whole.
      const noun = r.folders ? 'release folder' : 'file';
      io.stdout(`${r.name}: ${r.removed.length === 0 ? `nothing to remove` : `${verb} ${r.removed.length} ${noun}${r.removed.length === 1 ? '' : 's'}`}, ${r.kept.length} kept\n`);
      for (const f of r.removed) io.stdout(`  ${f}\n`);
      // A folder an interrupted prune renamed away: removing it can take long (a big release), so it is said.
      if (r.leftovers.length > 0) io.stdout(`${r.name}: ${dryRun ? 'would also remove' : 'also removed'} what an interrupted prune left:\n${r.leftovers.map((f) => `  ${f}\n`).join('')}`);
    }
    return EXIT.ok;
  },
};
