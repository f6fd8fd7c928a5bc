/**
 * What the commands share: config and app selection, durations, tables.
 * (Exit codes, usage errors and argv parsing: src/cli/spec.ts.)
 */
import { lstat, realpath } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig, pickApp, releaseFiles, type AgentConfig, type AppConfig } from '../config.js';
import { isErrno, RelinkError } from '../errors.js';
import { DEFAULT_CONFIG, UsageError, type IO } from './spec.js';

export { DEFAULT_CONFIG, EXIT, UsageError, type IO } from './spec.js';

export function configPath(flag: string | undefined, io: IO): string {
  return flag ?? io.env.RELINK_CONFIG ?? DEFAULT_CONFIG;
}

export async function loadFor(flag: string | undefined, io: IO): Promise<AgentConfig> {
  return loadConfig(configPath(flag, io));
}

/** The app a command is about: --app NAME, or the only app. */
export function selectApp(config: AgentConfig, name: string | undefined): AppConfig {
  const app = pickApp(config, name);
  if (app !== undefined) return app;
  const names = config.apps.map((a) => a.name).join(', ');
  if (name === undefined) throw new UsageError(`${config.file} has ${config.apps.length} apps (${names}): say which with --app NAME`);
  throw new RelinkError('UNKNOWN_APP', `${config.file}: no app named ${JSON.stringify(name)} (apps: ${names})`, { file: config.file, key: 'apps', found: name });
}

/** Apps selected by an optional --app. */
export function selectApps(config: AgentConfig, name: string | undefined): readonly AppConfig[] {
  return name === undefined ? config.apps : [selectApp(config, name)];
}

export function ago(fromIso: string | null | undefined, now = Date.now()): string {
  if (!fromIso) return '';
  const s = Math.max(0, Math.round((now - Date.parse(fromIso)) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, '0')}h`;
}

/** Left-aligned columns, two spaces apart; a cell with line breaks (a preflight's output) stays on its row. */
export function table(rows0: readonly (readonly string[])[]): string {
  const rows = rows0.map((row) => row.map((c) => c.replace(/\s*\n\s*/g, ' | ')));
  const widths: number[] = [];
  for (const row of rows) row.forEach((c, i) => { widths[i] = Math.max(widths[i] ?? 0, c.length); });
  return rows.map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd()).join('\n') + '\n';
}

/**
 * A release named on the command line (deploy RELEASE, rollback --to):
 * one name, no "/" or "..", and not starting with "." (an upload in
 * progress under a dot name, renamed into place when complete, is not a
 * release). Throws UsageError (exit 2) naming what was found.
 */
export function releaseName(r: string, option: string): string {
  if (r === '' || r.includes('/') || r.startsWith('.')) {
    throw new UsageError(`${option} must be a release name such as 2.0 (found ${JSON.stringify(r)}${r.startsWith('.') && !r.includes('/') ? ': a name starting with "." is an upload in progress, not a release' : ''})`);
  }
  return r;
}

/**
 * The files of release `r` (a name checked by releaseName) of `app`, for
 * `deploy RELEASE` and `rollback --to RELEASE`. Throws RELEASE_MISSING when
 * its binary does not exist (a typo, or pruned since), naming the command
 * that lists the releases; other problems are the agent's checks' to say.
 */
export async function releaseFilesOf(app: AppConfig, r: string, option: string): Promise<{ bin: string; cfg: string }> {
  const files = releaseFiles(app, releaseName(r, option));
  const gone = await lstat(files.bin).then(() => false, (err: unknown) => isErrno(err, 'ENOENT'));
  if (gone) {
    throw new RelinkError('RELEASE_MISSING', `${app.name}: no release ${r} in ${app.releasesDir} (${files.bin}: no such file); \`relink releases --app ${app.name}\` lists the releases there`,
      { file: files.bin, key: option, rule: 'must name a release in the releases folder', found: 'no such file' });
  }
  return files;
}

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
