/**
 * What every command shares: where output goes, usage errors, argv parsing
 * that turns parseArgs' exceptions into one clear usage line.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { loadConfig, pickApp, type AgentConfig, type AppConfig } from '../config.js';
import { RelinkError } from '../errors.js';

export interface IO {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  /** Environment the CLI was started with (read only by main.ts and passed down). */
  readonly env: Readonly<Record<string, string | undefined>>;
}

/** Exit codes: documented in the README and in every --help. */
export const EXIT = { ok: 0, failed: 1, usage: 2 } as const;

export class UsageError extends RelinkError {
  constructor(message: string) {
    super('USAGE', message);
    this.name = 'UsageError';
  }
}

export const DEFAULT_CONFIG = '/etc/relink/config.json';

export function parse<T extends ParseArgsConfig['options']>(args: string[], options: T, allowPositionals = false) {
  try {
    return parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } } as T & { help: { type: 'boolean'; short: 'h' } }, allowPositionals, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message.replace(/\. To specify a positional argument.*$/s, ''));
  }
}

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
