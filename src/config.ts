/**
 * The agent's config file: parsed once with zod at the boundary, then turned
 * into frozen, fully defaulted values the rest of the agent trusts.
 */
import { readFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { fileError, isErrno, RelinkErrors } from './errors.js';
import { describe, zodProblems } from './zodIssues.js';

const SIGNALS = Object.keys(osConstants.signals) as [string, ...string[]];

const absoluteOrRelative = z.string().min(1, 'must be a non-empty path');

const ReloadSchema = z.strictObject({
  signal: z.enum(SIGNALS, { error: 'must be a signal name such as "SIGHUP"' }).default('SIGHUP'),
  mode: z.enum(['reexec', 'inplace'], { error: 'must be "reexec" (the app re-executes itself and its PID changes) or "inplace" (the PID stays)' }).default('reexec'),
  timeoutMs: z.int().min(100).max(600_000).default(15_000),
});

const AppSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'must be 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit'),
  dir: z.string().refine((p) => path.isAbsolute(p), 'must be an absolute path'),
  command: z.array(z.string().min(1)).min(1).default(['./app.bin', '-c', 'app.cfg']),
  env: z.record(z.string(), z.string()).default({}),
  releasesDir: absoluteOrRelative.optional(),
  currentFile: absoluteOrRelative.optional(),
  links: z.strictObject({ bin: absoluteOrRelative.optional(), cfg: absoluteOrRelative.optional() }).prefault({}),
  logFile: absoluteOrRelative.optional(),
  pidFile: absoluteOrRelative.nullable().default(null),
  reload: ReloadSchema.prefault({}),
});

export const ConfigSchema = z.strictObject({
  stateDir: absoluteOrRelative.default('/var/lib/relink'),
  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  reconcileMs: z.int().min(200).max(3_600_000).default(5_000),
  watch: z.strictObject({
    stabilityMs: z.int().min(0).max(10_000).default(50),
    pollMs: z.int().min(1).max(1_000).default(10),
  }).prefault({}),
  apps: z.array(AppSchema).min(1, 'must list at least one app'),
}).superRefine((cfg, ctx) => {
  const seen = new Map<string, number>();
  cfg.apps.forEach((app, i) => {
    const prev = seen.get(app.name);
    if (prev !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['apps', i, 'name'], message: `must be unique (apps[${prev}] has the same name)` });
    }
    seen.set(app.name, i);
  });
});

export type ReloadMode = 'reexec' | 'inplace';

export interface AppConfig {
  readonly name: string;
  readonly dir: string;
  readonly command: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly releasesDir: string;
  readonly currentFile: string;
  readonly links: { readonly bin: string; readonly cfg: string };
  readonly logFile: string;
  readonly pidFile: string | undefined;
  readonly reload: { readonly signal: NodeJS.Signals; readonly mode: ReloadMode; readonly timeoutMs: number };
}

export interface AgentConfig {
  /** Absolute path of the config file this came from. */
  readonly file: string;
  readonly stateDir: string;
  readonly logLevel: string;
  readonly reconcileMs: number;
  readonly watch: { readonly stabilityMs: number; readonly pollMs: number };
  readonly apps: readonly AppConfig[];
}

/** Parse an already-read config text. `file` is used for messages and relative paths. */
export function parseConfig(text: string, file: string): AgentConfig {
  const abs = path.resolve(file);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new RelinkErrors([fileError('CONFIG_SYNTAX', abs, undefined, 'must be valid JSON', (err as Error).message)]);
  }
  const parsed = ConfigSchema.safeParse(raw);
  if (!parsed.success) {
    throw new RelinkErrors(zodProblems(parsed.error, abs, 'CONFIG_INVALID', 'CONFIG_INVALID', raw));
  }
  const cfg = parsed.data;
  const base = path.dirname(abs);
  const apps = cfg.apps.map((a): AppConfig => {
    const dir = path.resolve(a.dir);
    const releasesDir = path.resolve(dir, a.releasesDir ?? 'release');
    return Object.freeze({
      name: a.name,
      dir,
      command: Object.freeze([...a.command]),
      env: Object.freeze({ ...a.env }),
      releasesDir,
      // Relative paths resolve against `dir`; the default follows releasesDir.
      currentFile: a.currentFile === undefined ? path.join(releasesDir, 'current.conf') : path.resolve(dir, a.currentFile),
      links: Object.freeze({ bin: path.resolve(dir, a.links.bin ?? 'app.bin'), cfg: path.resolve(dir, a.links.cfg ?? 'app.cfg') }),
      logFile: path.resolve(dir, a.logFile ?? 'app.log'),
      pidFile: a.pidFile === null ? undefined : path.resolve(dir, a.pidFile),
      reload: Object.freeze({ signal: a.reload.signal as NodeJS.Signals, mode: a.reload.mode, timeoutMs: a.reload.timeoutMs }),
    });
  });
  return Object.freeze({
    file: abs,
    stateDir: path.resolve(base, cfg.stateDir),
    logLevel: cfg.logLevel,
    reconcileMs: cfg.reconcileMs,
    watch: Object.freeze({ ...cfg.watch }),
    apps: Object.freeze(apps),
  });
}

export async function loadConfig(file: string): Promise<AgentConfig> {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = await readFile(abs, 'utf8');
  } catch (err) {
    const found = isErrno(err) ? err.code ?? 'error' : describe(String(err));
    throw new RelinkErrors([fileError('CONFIG_UNREADABLE', abs, undefined, 'must be a readable file', found)]);
  }
  return parseConfig(text, abs);
}

/** The app named `name`, or the only app when no name is given. */
export function pickApp(config: AgentConfig, name: string | undefined): AppConfig | undefined {
  if (name === undefined) return config.apps.length === 1 ? config.apps[0] : undefined;
  return config.apps.find((a) => a.name === name);
}
