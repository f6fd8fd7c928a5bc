/**
 * The agent's config file: parsed once with zod at the boundary, then turned
 * into frozen, fully defaulted values the rest of the agent trusts.
 */
import { readFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { nodeCron } from './cron.js';
import { fileError, isErrno, RelinkErrors } from './errors.js';
import { parseHostPort, type Probe } from './health.js';
import { describe, zodProblems } from './zodIssues.js';

// SIGKILL and SIGSTOP cannot be handled, so they can never mean "reload".
const SIGNALS = Object.keys(osConstants.signals).filter((s) => s !== 'SIGKILL' && s !== 'SIGSTOP') as [string, ...string[]];

const absoluteOrRelative = z.string().min(1, 'must be a non-empty path');

const ReloadSchema = z.strictObject({
  signal: z.enum(SIGNALS, { error: 'must be a catchable signal name such as "SIGHUP" (not SIGKILL or SIGSTOP)' }).default('SIGHUP'),
  mode: z.enum(['reexec', 'inplace'], { error: 'must be "reexec" (the app re-executes itself and its PID changes) or "inplace" (the PID stays)' }).default('reexec'),
  timeoutMs: z.int().min(100).max(600_000).default(15_000),
});

const HealthSchema = z.strictObject({
  url: z.url({ protocol: /^http$/, error: 'must be an http:// URL such as "http://127.0.0.1:8080/healthz"' }).optional(),
  tcp: z.string().refine((s) => parseHostPort(s) !== undefined, 'must be "host:port", e.g. "127.0.0.1:8080"').optional(),
  deadlineMs: z.int().min(100).max(600_000).default(10_000),
  settleMs: z.int().min(0).max(600_000).default(1_000),
  intervalMs: z.int().min(10).max(60_000).default(200),
  probeTimeoutMs: z.int().min(10).max(60_000).default(1_000),
  liveness: z.strictObject({
    periodMs: z.int().min(100).max(3_600_000).default(10_000),
    failureThreshold: z.int().min(1).max(100).default(3),
  }).nullable().default(null),
}).refine((h) => !(h.url !== undefined && h.tcp !== undefined), 'set "url" or "tcp", not both')
  .refine((h) => h.liveness === null || h.url !== undefined || h.tcp !== undefined, { message: 'needs "url" or "tcp": the liveness check is that probe, repeated', path: ['liveness'] })
  .refine((h) => h.settleMs < h.deadlineMs, { message: 'settleMs must be shorter than deadlineMs', path: ['settleMs'] });

const SuperviseSchema = z.strictObject({
  enabled: z.boolean().default(true),
  checkMs: z.int().min(50).max(60_000).default(1_000),
  backoffMs: z.int().min(0).max(600_000).default(1_000),
  maxBackoffMs: z.int().min(0).max(3_600_000).default(30_000),
  stableMs: z.int().min(0).max(3_600_000).default(10_000),
  maxRetries: z.int().min(0).max(1_000).default(5),
});

const RELEASE_PLACEHOLDER = '{release}';

// A user or group: a name as useradd accepts it, or a numeric id (JSON number or string).
const account = (what: 'user' | 'group') => z.union([
  z.string().regex(/^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|\d{1,10})$/, `must be a ${what} name such as "web" or a numeric id`),
  z.int().min(0).max(4_294_967_294).transform(String),
], { error: `must be a ${what} name such as "web" or a numeric id` });

// Resource limits, each applied as both soft and hard limit, as systemd's Limit*= does.
const upTo = (min: number, max: number) => z.int({ error: `must be an integer from ${min} to ${max}` }).min(min).max(max);
const orUnlimited = (min: number, max: number) =>
  z.union([upTo(min, max), z.literal('unlimited')], { error: `must be an integer from ${min} to ${max}, or "unlimited"` });

const LimitsSchema = z.strictObject({
  // The kernel caps nofile at fs.nr_open (1048576 by default); it cannot be unlimited.
  nofile: upTo(1, 1_073_741_816).nullable().default(null),
  nproc: orUnlimited(1, 4_194_304).nullable().default(null),
  core: orUnlimited(0, Number.MAX_SAFE_INTEGER).nullable().default(null),
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
  health: HealthSchema.prefault({}),
  preflight: z.strictObject({
    command: z.array(z.string().min(1)).min(1),
    timeoutMs: z.int().min(100).max(3_600_000).default(30_000),
  }).nullable().default(null),
  supervise: SuperviseSchema.prefault({}),
  releaseNames: z.strictObject({
    bin: z.string().includes(RELEASE_PLACEHOLDER, { error: `must contain ${RELEASE_PLACEHOLDER}` }).refine((s) => !s.includes('/'), 'must be a file name, not a path').default('app.{release}'),
    cfg: z.string().includes(RELEASE_PLACEHOLDER, { error: `must contain ${RELEASE_PLACEHOLDER}` }).refine((s) => !s.includes('/'), 'must be a file name, not a path').default('cfg.{release}'),
  }).prefault({}),
  prune: z.strictObject({
    schedule: z.string().refine((s) => nodeCron().validate(s), 'must be a cron expression such as "0 3 * * *"').nullable().default(null),
    keep: z.int().min(1).max(10_000).default(5),
  }).prefault({}),
  user: account('user').nullable().default(null),
  group: account('group').nullable().default(null),
  allowRoot: z.boolean().default(false),
  limits: LimitsSchema.prefault({}),
}).superRefine((a, ctx) => {
  if (a.group !== null && a.user === null) {
    ctx.addIssue({ code: 'custom', path: ['group'], message: 'needs "user" as well (without it the app runs as the agent\'s own user and group)' });
  }
  // Said at load time when the config itself asks for root; running as root
  // because "user" is unset is refused when the app is started (launch.ts).
  if ((a.user === 'root' || a.user === '0') && !a.allowRoot) {
    ctx.addIssue({ code: 'custom', path: ['user'], message: 'runs the app as root: set "allowRoot": true to mean it, or name an unprivileged user' });
  }
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
  // Runs even when other keys are wrong (see `when` below), so the value may be partly unparsed.
  const apps: unknown = (cfg as { apps?: unknown }).apps;
  if (!Array.isArray(apps)) return;
  const seen = new Map<string, number>();
  apps.forEach((app: unknown, i) => {
    const name = app !== null && typeof app === 'object' ? (app as { name?: unknown }).name : undefined;
    if (typeof name !== 'string') return;
    const prev = seen.get(name);
    if (prev !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['apps', i, 'name'], message: `must be unique (apps[${prev}] has the same name)` });
    }
    seen.set(name, i);
  });
  // zod skips a refinement after an aborting issue anywhere else (a bad enum,
  // a wrong type); every problem must still be listed at once.
}, { when: (payload) => payload.value !== null && typeof payload.value === 'object' && !Array.isArray(payload.value) });

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
  readonly health: {
    readonly probe: Probe | undefined;
    readonly deadlineMs: number;
    readonly settleMs: number;
    readonly intervalMs: number;
    readonly probeTimeoutMs: number;
    /** After the verdict, the probe every periodMs; failureThreshold failures in a row restart the app. */
    readonly liveness: { readonly periodMs: number; readonly failureThreshold: number } | undefined;
  };
  readonly preflight: { readonly command: readonly string[]; readonly timeoutMs: number } | undefined;
  readonly supervise: {
    readonly enabled: boolean;
    readonly checkMs: number;
    readonly backoffMs: number;
    readonly maxBackoffMs: number;
    readonly stableMs: number;
    readonly maxRetries: number;
  };
  /** File name patterns of a release, `{release}` standing for e.g. "2.0". */
  readonly releaseNames: { readonly bin: string; readonly cfg: string };
  readonly prune: { readonly schedule: string | undefined; readonly keep: number };
  /** The user the app runs as (name or uid); undefined: the agent's own user. */
  readonly user: string | undefined;
  /** The app's group (name or gid); undefined: the user's primary group. */
  readonly group: string | undefined;
  /** The app may run as root (explicitly, or because `user` is unset and the agent is root). */
  readonly allowRoot: boolean;
  /** Resource limits set on the app's process (soft = hard); undefined: inherited from the agent. */
  readonly limits: Limits;
}

export type LimitValue = number | 'unlimited';

export interface Limits {
  readonly nofile: number | undefined;
  readonly nproc: LimitValue | undefined;
  readonly core: LimitValue | undefined;
}

export const LIMIT_NAMES = ['nofile', 'nproc', 'core'] as const;
export type LimitName = (typeof LIMIT_NAMES)[number];

/** The file names of release `r` (e.g. "2.0" -> app.2.0, cfg.2.0). */
export function releaseFiles(app: AppConfig, r: string): { bin: string; cfg: string } {
  return {
    bin: path.join(app.releasesDir, app.releaseNames.bin.replaceAll(RELEASE_PLACEHOLDER, r)),
    cfg: path.join(app.releasesDir, app.releaseNames.cfg.replaceAll(RELEASE_PLACEHOLDER, r)),
  };
}

/** The release name of a file, if it matches the app's bin (or cfg) pattern. */
export function releaseOf(app: AppConfig, file: string, kind: 'bin' | 'cfg' = 'bin'): string | undefined {
  const [pre, post] = app.releaseNames[kind].split(RELEASE_PLACEHOLDER) as [string, string];
  const name = path.basename(file);
  if (path.dirname(file) !== app.releasesDir || !name.startsWith(pre) || !name.endsWith(post)) return undefined;
  const r = name.slice(pre.length, name.length - post.length);
  return r === '' ? undefined : r;
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
      health: Object.freeze({
        probe: a.health.url !== undefined ? Object.freeze({ url: a.health.url }) : a.health.tcp !== undefined ? Object.freeze({ tcp: a.health.tcp }) : undefined,
        deadlineMs: a.health.deadlineMs,
        settleMs: a.health.settleMs,
        intervalMs: a.health.intervalMs,
        probeTimeoutMs: a.health.probeTimeoutMs,
        liveness: a.health.liveness === null ? undefined : Object.freeze({ ...a.health.liveness }),
      }),
      preflight: a.preflight === null ? undefined : Object.freeze({ command: Object.freeze([...a.preflight.command]), timeoutMs: a.preflight.timeoutMs }),
      supervise: Object.freeze({ ...a.supervise }),
      releaseNames: Object.freeze({ ...a.releaseNames }),
      prune: Object.freeze({ schedule: a.prune.schedule ?? undefined, keep: a.prune.keep }),
      user: a.user ?? undefined,
      group: a.group ?? undefined,
      allowRoot: a.allowRoot,
      limits: Object.freeze({ nofile: a.limits.nofile ?? undefined, nproc: a.limits.nproc ?? undefined, core: a.limits.core ?? undefined }),
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
