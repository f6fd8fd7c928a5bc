import { realpath } from 'node:fs/promises';
import path from 'node:path';
import type { AppConfig } from '../config.js';
import { journaledApps, newestEntries, type HistoryEntry } from '../history.js';
import { EXIT, loadFor, selectApp, table } from './io.js';
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

/**
 * Each app's releases folder as the journal's paths name it: real paths (the
 * agent resolves current.conf's), so a releases folder reached through a
 * symlink (/srv -> /data/srv) is resolved too, for releaseLabel.
 */
export async function releasesDirsOf(apps: readonly AppConfig[]): Promise<Map<string, string>> {
  return new Map(await Promise.all(apps.map(async (a) => [a.name, await realpath(a.releasesDir).catch(() => a.releasesDir)] as const)));
}

/** A release file as the table shows it: relative to the app's releases folder ("app.2.0", or "2.0/app" in a folder per release), else its name. */
export function releaseLabel(p: string | null, releasesDir: string | undefined): string {
  if (p === null) return '-';
  const rel = releasesDir === undefined ? '' : path.relative(releasesDir, p);
  return rel === '' || rel.startsWith('..') || path.isAbsolute(rel) ? path.basename(p) : rel;
}

function row(e: HistoryEntry, releasesDir: string | undefined): string[] {
  const base = (p: string | null) => releaseLabel(p, releasesDir);
  // A restart's gap: refused connections (outage) or ones that waited in a held socket's backlog (queued).
  const gap = e.outageMs != null ? ` (outage ${e.outageMs} ms)` : e.queuedMs != null ? ` (queued ${e.queuedMs} ms)` : '';
  const asked = e.command === undefined ? '' : ` (relink ${e.command})`;
  return [e.time, e.app, e.repeats === undefined ? e.outcome : `${e.outcome} x${e.repeats}`, `${e.action}${gap}${asked}`, `${base(e.to.bin)} / ${base(e.to.cfg)}`,
    e.pidBefore === e.pidAfter ? String(e.pidAfter ?? '-') : `${e.pidBefore ?? '-'}->${e.pidAfter ?? '-'}`, String(e.durationMs), e.reason ?? ''];
}
