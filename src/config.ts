/**
 * The agent's config file: parsed once with zod at the boundary, then turned
 * into frozen, fully defaulted values the rest of the agent trusts.
 */
import { realpath } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { nodeCron } from './cron.js';
import { fileError, isErrno, RelinkErrors, type RelinkError } from './errors.js';
import { parseHostPort, type Probe } from './health.js';
import { parseJsonFile } from './json.js';
import { formatListenAddress, listenAddressProblem, parseListenAddress, type ListenAddress } from './listenfds.js';
import { readSmallFile, SafeFsError } from './safefs.js';
import { describe, parseWithSchema } from './zodIssues.js';

// SIGKILL and SIGSTOP cannot be handled, so they can never mean "reload".
const SIGNALS = Object.keys(osConstants.signals).filter((s) => s !== 'SIGKILL' && s !== 'SIGSTOP') as [string, ...string[]];

const absoluteOrRelative = z.string().min(1, 'must be a non-empty path');

/**
 * Each key's description: the words of the README's "Agent config" table
 * (test/schema.test.ts holds them equal), shown by editors from config.schema.json.
 */
const about = (description: string) => ({ description });

/**
 * How an app takes a new release (README "Reload strategies"): the app
 * re-executes itself (`reexec`: tableflip, grace, endless), reloads in its
 * own process (`inplace`: nginx HUP, gunicorn HUP), starts a new master the
 * agent then stops the old one of (`upgrade`: gunicorn/unicorn/nginx USR2),
 * is started anew on sockets the agent holds (`socket`: any app that takes
 * LISTEN_FDS), or is stopped and started (`restart`).
 */
export const STRATEGIES = ['reexec', 'inplace', 'upgrade', 'socket', 'restart'] as const;
export type Strategy = (typeof STRATEGIES)[number];

/** Signals that stop a server (nginx, gunicorn, unicorn, and the default action everywhere): never a reload, quiesce or resume. */
const STOPPING: readonly string[] = ['SIGTERM', 'SIGINT', 'SIGQUIT'];

/** The signal named `found` most likely meant ("hup", "SIGhup", "WINCH": "SIGHUP", "SIGWINCH"); undefined when none is. */
function nearSignal(found: unknown): string | undefined {
  if (typeof found !== 'string') return undefined;
  const upper = found.trim().toUpperCase();
  const name = upper.startsWith('SIG') ? upper : `SIG${upper}`;
  return name !== found && SIGNALS.includes(name) ? name : undefined;
}

/** A signal name's schema; a near miss is answered with the name meant. */
const signalEnum = (example: string) =>
  z.enum(SIGNALS, {
    error: (iss) => {
      const near = nearSignal(iss.input);
      return `must be a catchable signal name such as "${example}" (not SIGKILL or SIGSTOP)${near === undefined ? '' : `: did you mean "${near}"?`}`;
    },
  });

const signalName = (def: string, description: string) => signalEnum(def).default(def).meta(about(description));

/**
 * When a cross-key check runs: whenever the keys it reads parsed. By
 * default zod 4 skips an object's checks once anything in it failed to
 * parse, so a type error anywhere in an app ("settleMs": "x") hid every
 * cross-key rule until it was fixed, and the next run refused the config
 * again for another reason. `keys` are paths below the object ("reload",
 * "health.url"); an issue at, above or below one of them holds the check.
 */
function reads(...keys: readonly string[]): { when: (payload: z.core.ParsePayload) => boolean } {
  const paths = keys.map((k) => k.split('.'));
  const overlap = (a: readonly string[], b: readonly PropertyKey[]): boolean => a.slice(0, b.length).every((seg, n) => String(b[n]) === seg);
  return { when: (payload) => !payload.issues.some((i) => i.continue !== true && paths.some((k) => overlap(k, i.path ?? []))) };
}

const ReloadSchema = z.strictObject({
  strategy: z.enum(STRATEGIES, { error: 'must be one of "reexec", "inplace", "upgrade", "socket", "restart" (README: "Reload strategies")' }).optional()
    .meta(about('how the app takes a new release: `reexec`, `inplace`, `upgrade`, `socket` or `restart` ("Reload strategies"); default `socket` when `sockets` is set, else `reexec`')),
  signal: signalName('SIGHUP', 'the signal that makes the app reload (`reexec`, `inplace`) or start its new master (`upgrade`); not `stop.signal`, nor a signal that stops a server (SIGTERM, SIGINT, SIGQUIT)'),
  mode: z.enum(['reexec', 'inplace'], { error: 'must be "reexec" or "inplace" (deprecated: use "strategy")' }).optional()
    .meta(about('deprecated alias of `strategy` (`reexec` or `inplace`); said once in the log')),
  timeoutMs: z.int().min(100).max(600_000).default(15_000)
    .meta(about('how long a start, a re-exec handoff or a new master may take to appear before the deploy counts as failed')),
  drainTimeoutMs: z.int().min(0).max(86_400_000).default(60_000)
    .meta(about('how long an older generation that exits by itself (`reexec`, `inplace`) may keep running (draining in-flight requests) after a new one serves; then `stop.signal`, and SIGKILL `stop.timeoutMs` later')),
  quiesceSignal: signalEnum('SIGWINCH').nullable().optional()
    .meta(about('optional (`null`: not set), `upgrade` only, with `resumeSignal`: sent to the old master once the new generation waits for connections, before it is judged, to stop the old one\'s workers accepting (nginx, gunicorn, unicorn: `SIGWINCH`), so the probe and the traffic reach the new one; the old master keeps the socket. Not `reload.signal`, `stop.signal`, `resumeSignal`, nor a signal that stops a server (SIGTERM, SIGINT, SIGQUIT)')),
  resumeSignal: signalEnum('SIGHUP').nullable().optional()
    .meta(about('optional (`null`: not set), with `quiesceSignal`: sent to the quiesced old master when the new generation fails, with the links back on the good release and before the new one is stopped, to start its workers again (nginx, gunicorn, unicorn: `SIGHUP`). Not `reload.signal`, `stop.signal`, `quiesceSignal`, nor a signal that stops a server (SIGTERM, SIGINT, SIGQUIT)')),
}).refine((r) => r.mode === undefined || r.strategy === undefined || r.mode === r.strategy,
  { message: 'set "strategy" only ("mode" is its deprecated alias, and the two disagree)', path: ['mode'], ...reads('mode', 'strategy') })
  .superRefine((r, ctx) => {
    // One problem per key, the first that applies.
    // null: not set, as for the other optional keys.
    const quiesce = r.quiesceSignal ?? undefined;
    const resume = r.resumeSignal ?? undefined;
    const upgrade = (r.strategy ?? r.mode) === 'upgrade';
    if (quiesce !== undefined) {
      if (!upgrade) {
        ctx.addIssue({ code: 'custom', path: ['quiesceSignal'], message: 'only with "strategy": "upgrade" (an old master that keeps the socket while its workers stop)' });
      } else if (STOPPING.includes(quiesce)) {
        // What stops a master everywhere leaves nothing to resume when the new generation fails.
        ctx.addIssue({ code: 'custom', path: ['quiesceSignal'], message: `must not be a signal that stops a server (${quiesce}): a failed new generation would leave nothing to resume (nginx, gunicorn, unicorn: "SIGWINCH")` });
      } else if (quiesce === r.signal) {
        // The upgrade signal would start a second new master.
        ctx.addIssue({ code: 'custom', path: ['quiesceSignal'], message: 'must differ from "signal" (that one starts the new master)' });
      }
    } else if (resume !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['quiesceSignal'], message: 'must be set with "resumeSignal", which undoes it (nginx, gunicorn, unicorn: "SIGWINCH")' });
    }
    if (resume === undefined) {
      if (quiesce !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['resumeSignal'], message: 'must be set with "quiesceSignal": an old master quiesced for a new generation that then fails must be told to accept again (nginx, gunicorn, unicorn: "SIGHUP")' });
      }
    } else if (STOPPING.includes(resume)) {
      ctx.addIssue({ code: 'custom', path: ['resumeSignal'], message: `must not be a signal that stops a server (${resume}): it goes to the good old master, to make it accept again (nginx, gunicorn, unicorn: "SIGHUP")` });
    } else if (resume === quiesce) {
      // A resume that is the quiesce would undo nothing.
      ctx.addIssue({ code: 'custom', path: ['resumeSignal'], message: 'must differ from "quiesceSignal" (it undoes it)' });
    } else if (quiesce !== undefined && upgrade && resume === r.signal) {
      // nginx ignores the upgrade signal while its new master runs: nothing would accept until the failed one is stopped.
      ctx.addIssue({ code: 'custom', path: ['resumeSignal'], message: `must differ from "signal" (${resume}, which starts a new master: an old master ignores it while its new one runs)` });
    }
    // (`signal` is only compared with valid names: a wrong one, reported on
    // its own, matches none, so it does not hold these rules.)
  }, reads('strategy', 'mode', 'quiesceSignal', 'resumeSignal'));

const StopSchema = z.strictObject({
  signal: signalName('SIGTERM', 'the signal that makes the app stop: finish its in-flight requests and exit (gunicorn TERM, unicorn and nginx QUIT)'),
  timeoutMs: z.int().min(0).max(3_600_000).default(10_000)
    .meta(about('how long a stopped generation may drain after `stop.signal` before it is killed (SIGKILL)')),
});

const LivenessSchema = z.strictObject({
  periodMs: z.int().min(100).max(3_600_000).default(10_000)
    .meta(about('between liveness probes, 100 to 3600000')),
  failureThreshold: z.int().min(1).max(100).default(3)
    .meta(about('failed liveness probes in a row that restart the app, 1 to 100')),
});

const HealthSchema = z.strictObject({
  url: z.url({ protocol: /^http$/, error: 'must be an http:// URL such as "http://127.0.0.1:8080/healthz"' }).optional()
    .meta(about('`http://` URL that must answer 2xx after a deploy (not with `tcp`)')),
  tcp: z.string().refine((s) => parseHostPort(s) !== undefined, 'must be "host:port", e.g. "127.0.0.1:8080"').optional()
    .meta(about('`"host:port"` that must accept a connection after a deploy (not with `url`)')),
  deadlineMs: z.int().min(100).max(600_000).default(10_000)
    .meta(about('the probe must pass and the settle time elapse within this, after the process check')),
  settleMs: z.int().min(0).max(600_000).default(1_000)
    .meta(about('the new process must stay up this long')),
  intervalMs: z.int().min(10).max(60_000).default(200)
    .meta(about('between probe attempts')),
  probeTimeoutMs: z.int().min(10).max(60_000).default(1_000)
    .meta(about('one probe attempt\'s timeout')),
  readiness: z.enum(['probe', 'notify'], { error: 'must be "probe" (settle time, then the probe) or "notify" (the app says READY=1 through sd_notify, then the probe)' }).default('probe')
    .meta(about('`probe`: a new generation is ready after `settleMs` and the probe; `notify`: once it sends READY=1 to `$NOTIFY_SOCKET` (sd_notify) within `deadlineMs`, then the probe')),
  liveness: LivenessSchema.nullable().default(null)
    .meta(about('after a deploy is judged healthy, the probe (`url` or `tcp`, which must be set) keeps running, and an app that fails it `failureThreshold` times in a row is restarted like a crashed one; `null`: off')),
}).refine((h) => !(h.url !== undefined && h.tcp !== undefined), { message: 'set "url" or "tcp", not both', ...reads('url', 'tcp') })
  .refine((h) => h.settleMs < h.deadlineMs, { message: 'settleMs must be shorter than deadlineMs', path: ['settleMs'], ...reads('settleMs', 'deadlineMs') })
  .refine((h) => h.liveness === null || h.url !== undefined || h.tcp !== undefined,
    { message: 'needs "url" or "tcp" in health: liveness supervision repeats that probe', path: ['liveness'], ...reads('liveness', 'url', 'tcp') });

const SuperviseSchema = z.strictObject({
  enabled: z.boolean().default(true)
    .meta(about('restart the app when it dies')),
  checkMs: z.int().min(50).max(60_000).default(1_000)
    .meta(about('how often the app\'s process is re-checked (a /proc read; the agent\'s own child is noticed at once)')),
  backoffMs: z.int().min(0).max(600_000).default(1_000)
    .meta(about('restart delay after a quick failure, doubled each time up to `maxBackoffMs`')),
  maxBackoffMs: z.int().min(0).max(3_600_000).default(30_000)
    .meta(about('the longest restart delay')),
  stableMs: z.int().min(0).max(3_600_000).default(10_000)
    .meta(about('a run this long resets the failure count')),
  maxRetries: z.int().min(0).max(1_000).default(5)
    .meta(about('quick failures in a row before the app is `fatal`')),
});

/** A hook's argv, like `command`; `null`: none. */
const hookCommand = (description: string) => z.array(z.string().min(1)).min(1, 'must name a program: an argv array such as ["./hooks/notify.sh"]').nullable().default(null)
  .meta(about(description));

const HooksSchema = z.strictObject({
  beforeSwitch: hookCommand('argv run after validation and the preflight, before the links are switched, for every deploy that switches them; non-zero (or the timeout) refuses the deploy (`HOOK_FAILED`); `null`: none'),
  afterDeploy: hookCommand('argv run after a deploy is journaled `deployed`; its exit code is logged and changes nothing; `null`: none'),
  afterRollback: hookCommand('argv run after an automatic rollback is journaled `rolled_back`; its exit code is logged and changes nothing; `null`: none'),
  timeoutMs: z.int().min(100).max(3_600_000).default(30_000)
    .meta(about('how long each hook may run; then SIGTERM to everything it started, and SIGKILL 2 s later')),
});

/**
 * What a notifier may be told of (README "Notifications"): the journal's
 * outcomes, and `fatal`, the crash supervision giving up on an app (a
 * state, not a journal entry).
 */
export const NOTIFY_EVENTS = ['deployed', 'refused', 'rolled_back', 'failed', 'stopped', 'fatal'] as const;
export type NotifyEvent = (typeof NOTIFY_EVENTS)[number];

/** The longest wait between two attempts of one notification (ms), however `backoffMs` and `retries` multiply. */
export const NOTIFY_MAX_DELAY_MS = 300_000;

/** Why `s` is not a URL a notifier may POST to, or undefined. */
export function notifyUrlProblem(s: string): string | undefined {
  const rule = 'must be an http:// or https:// URL such as "http://127.0.0.1:9000/hook"';
  // It says http(s) and does not parse: its host or port is wrong, not its scheme.
  if (!URL.canParse(s)) return /^https?:\/\//i.test(s) ? 'must be a URL that parses: a host, and a port 1-65535 if any (such as "http://127.0.0.1:9000/hook")' : rule;
  const u = new URL(s);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return rule;
  return undefined;
}

/**
 * One entry of a `notify` list. `scope` words the descriptions: the global
 * list's commands run as the agent's user (root), an app's as the app runs.
 */
const notifierSchema = (scope: 'global' | 'app') => z.strictObject({
  on: z.array(z.enum(NOTIFY_EVENTS, { error: `must be one of ${NOTIFY_EVENTS.map((e) => JSON.stringify(e)).join(', ')}` }))
    .min(1, 'must name at least one event, e.g. ["rolled_back", "failed", "fatal"]')
    .meta(about('the events this notifier is told of, at least one: `deployed`, `refused`, `rolled_back`, `failed`, `stopped` (journal outcomes), `fatal` (crash supervision gave up on the app)')),
  command: (scope === 'global'
    ? z.array(z.string().min(1)).min(1, 'must name a program: an argv array such as ["/usr/local/bin/page-me"]')
      .refine((argv) => argv[0] === undefined || path.isAbsolute(argv[0]), 'must name its program by absolute path: it runs as root, with no folder to resolve a relative one against')
    : z.array(z.string().min(1)).min(1, 'must name a program: an argv array such as ["./hooks/page-me"]')).optional()
    .meta(about(scope === 'global'
      ? 'argv run with the event as JSON on stdin, as the agent\'s user (root under systemd); its program by absolute path, writable by root only; exit 75 is retried'
      : 'argv run with the event as JSON on stdin, as the app runs (its user, groups, limits and environment, in `dir`), as the hooks are; exit 75 is retried')),
  url: z.string().superRefine((s, ctx) => {
    const problem = notifyUrlProblem(s);
    if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
  }).optional()
    .meta(about('`http://` or `https://` URL the event is POSTed to as JSON; retried on a connection error, a timeout or a 5xx answer, not on any other; its query, userinfo and long path segments are never logged')),
  timeoutMs: z.int().min(100).max(600_000).default(10_000)
    .meta(about('how long one attempt may take: the POST until its answer, or the command (then SIGTERM, and SIGKILL 2 s later)')),
  retries: z.int().min(0).max(10).default(3)
    .meta(about('attempts after the first one failed in a way worth retrying, 0 to 10')),
  backoffMs: z.int().min(10).max(60_000).default(1_000)
    .meta(about('wait before the first retry, doubled before each next one, at most 300000')),
}).superRefine((n, ctx) => {
  // Runs even when other keys are wrong (see `when`), so that every problem is listed at once.
  const v = n as { command?: unknown; url?: unknown };
  if (v.command === undefined && v.url === undefined) {
    ctx.addIssue({ code: 'custom', path: [], message: 'needs "command" or "url" (or both): where the notification goes' });
  }
}, { when: (payload) => payload.value !== null && typeof payload.value === 'object' && !Array.isArray(payload.value) });

const notifyList = (scope: 'global' | 'app', description: string) => z.array(notifierSchema(scope)).max(32).default([]).meta(about(description));

const LogSchema = z.strictObject({
  maxBytes: z.int().min(65_536).max(1_099_511_627_776).default(52_428_800)
    .meta(about('the log file is rotated once it reaches this many bytes (65536 to 1099511627776), checked every second: `app.log` becomes `app.log.1` and so on ("App logs")')),
  backups: z.int().min(0).max(100).default(10)
    .meta(about('how many rotated files (`app.log.1` .. `app.log.N`) are kept, 0 to 100; 0: the oldest output is dropped at each rotation')),
});

const RELEASE_PLACEHOLDER = '{release}';

const releaseName = (def: string, description: string) => z.string()
  // A regex, not .includes(): zod writes "format": "includes" into the JSON Schema, which validators reject as unknown.
  .regex(/\{release\}/, { error: `must contain ${RELEASE_PLACEHOLDER}` })
  .refine((s) => releasePatternProblem(s) === undefined, 'must be a file name ("app.{release}"), or a path in a folder per release whose first part alone holds {release} ("{release}/app", "{release}/bin/app"), with no "", "." or ".." part')
  .default(def)
  .meta(about(description));

/**
 * Why `s` is not a releaseNames pattern (issue 15): a file name in
 * releasesDir (the files layout), or `FOLDER/REST` where FOLDER holds
 * `{release}` and names the release's folder in releasesDir (the folders
 * layout, Capistrano's `releases/<tag>/`); REST names a file in it.
 */
function releasePatternProblem(s: string): string | undefined {
  const parts = s.split('/');
  if (parts.some((p) => p === '' || p === '.' || p === '..')) return 'bad part';
  if (parts.length > 1 && (!parts[0]!.includes(RELEASE_PLACEHOLDER) || parts.slice(1).some((p) => p.includes(RELEASE_PLACEHOLDER)))) return 'placeholder';
  return undefined;
}

/** The folder part of a releaseNames pattern ("{release}" of "{release}/app"); undefined for a file name. */
function folderPattern(pattern: string): string | undefined {
  const slash = pattern.indexOf('/');
  return slash < 0 ? undefined : pattern.slice(0, slash);
}

const ReleaseNamesSchema = z.strictObject({
  bin: releaseName('app.{release}', 'the binary\'s name in releasesDir, `{release}` standing for e.g. `2.0`: a file name (`app.{release}`), or a path in a folder per release (`{release}/app`: Capistrano\'s layout, "Releases and pruning")'),
  cfg: releaseName('cfg.{release}', 'the config\'s name in releasesDir, like `bin`: `cfg.{release}`, or `{release}/app.cfg` in the same folder as the binary'),
}).refine((n) => folderPattern(n.bin) === folderPattern(n.cfg),
  { message: 'must be in the same folder per release as "bin" (both file names, or both "FOLDER/..." with the same FOLDER)', path: ['cfg'], ...reads('bin', 'cfg') })
  .refine((n) => n.bin !== n.cfg, { message: 'must differ from "bin"', path: ['cfg'], ...reads('bin', 'cfg') });

// A user or group: a name as useradd accepts it, or a numeric id (JSON number or string).
const account = (what: 'user' | 'group') => z.union([
  z.string().regex(/^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|\d{1,10})$/, `must be a ${what} name such as "web" or a numeric id`),
  // A number stays a number here (parseConfig makes it a string): zod leaves the
  // default out of the JSON Schema of anything holding a transform.
  z.int().min(0).max(4_294_967_294),
], { error: `must be a ${what} name such as "web" or a numeric id` });

// Resource limits, each applied as both soft and hard limit, as systemd's Limit*= does.
const upTo = (min: number, max: number) => z.int({ error: `must be an integer from ${min} to ${max}` }).min(min).max(max);
const orUnlimited = (min: number, max: number) =>
  z.union([upTo(min, max), z.literal('unlimited')], { error: `must be an integer from ${min} to ${max}, or "unlimited"` });

const LimitsSchema = z.strictObject({
  // The kernel caps nofile at fs.nr_open (1048576 by default); it cannot be unlimited.
  nofile: upTo(1, 1_073_741_816).nullable().default(null)
    .meta(about('open files')),
  nproc: orUnlimited(1, 4_194_304).nullable().default(null)
    .meta(about('processes of the app\'s user, or `"unlimited"`')),
  core: orUnlimited(0, Number.MAX_SAFE_INTEGER).nullable().default(null)
    .meta(about('core file size in bytes, or `"unlimited"`')),
});

const AppSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'must be 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit')
    .meta(about('letters, digits, `.`, `_`, `-`; unique')),
  dir: z.string().refine((p) => path.isAbsolute(p), 'must be an absolute path')
    .meta(about('absolute; the app\'s working directory')),
  command: z.array(z.string().min(1)).min(1).default(['./app.bin', '-c', 'app.cfg'])
    .meta(about('argv used to start the app, run in `dir`')),
  env: z.record(z.string(), z.string()).default({})
    .meta(about('environment added to the agent\'s for the app')),
  releasesDir: absoluteOrRelative.default('release')
    .meta(about('where releases live (current.conf names files in it). The app\'s processes are known by lineage, not by where their binary lies (see "Design notes: identity"); only a process found before any lineage is recorded (an agent upgraded from a version without it) is taken by its binary from here')),
  currentFile: absoluteOrRelative.optional()
    .meta(about('the file the agent watches (default `<releasesDir>/current.conf`); no two apps may share one')),
  links: z.strictObject({
    bin: absoluteOrRelative.default('app.bin').meta(about('the symlink to the live release\'s binary')),
    cfg: absoluteOrRelative.default('app.cfg').meta(about('the symlink to the live release\'s config')),
    dir: absoluteOrRelative.optional().meta(about('optional (e.g. `"current"`): the symlink to the live release\'s folder, for apps that ship more than a binary and a config (Capistrano\'s `current`); bin and cfg must then be in one folder per release. Switched with the other two: cfg, then dir, then bin ("Releases and pruning"); none: no such link')),
  }).prefault({})
    .meta(about('the symlinks the agent switches (a regular file there is never replaced); no two apps may share one')),
  logFile: absoluteOrRelative.nullable().default(null)
    .meta(about('the file the app\'s stdout and stderr are appended to, rotated by size (`log`); no two apps may share one. `null`: the journal when the host runs journald (`journalctl -t NAME`), else `app.log`')),
  log: LogSchema.prefault({})
    .meta(about('how an app\'s log file is rotated (Supervisord\'s `logfile_maxbytes`, `logfile_backups`): by the agent, without the app reopening anything')),
  pidFile: absoluteOrRelative.nullable().default(null)
    .meta(about('optional: a PID file the app writes; it names a candidate, believed when it carries the app\'s marker, or carries none (its environment overwritten: nginx) and runs a binary from the releases folder and started after a process the agent started exited 0 (it daemonized). With one set, a started process that exits 0 is not a failure: its daemon is waited for, up to reload.timeoutMs')),
  reload: ReloadSchema.prefault({})
    .meta(about('how the app takes a new release')),
  sockets: z.array(z.string().superRefine((a, ctx) => {
    const problem = listenAddressProblem(a);
    if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
  }))
    .max(64).default([])
    .meta(about('listening sockets the agent holds and passes to every generation (LISTEN_FDS, from fd 3 in this order): `"127.0.0.1:8080"`, `"[::1]:8080"`, `"unix:/run/web/web.sock"`; `"0.0.0.0:8080"` is every IPv4 address and `"[::]:8080"` every IPv6 one only (IPv6-only, as nginx\'s `listen [::]`, whatever net.ipv6.bindv6only says): for both, list both, and the app gets two fds')),
  stop: StopSchema.prefault({})
    .meta(about('how a generation is stopped')),
  health: HealthSchema.prefault({})
    .meta(about('how a deploy is judged, and optional liveness supervision after it')),
  preflight: z.strictObject({
    command: z.array(z.string().min(1)).min(1)
      .meta(about('argv run before switching exactly as the app runs (its user, groups, limits and environment, in `dir`), `{bin}`/`{cfg}` replaced by the candidate\'s files; non-zero refuses')),
    timeoutMs: z.int().min(100).max(3_600_000).default(30_000)
      .meta(about('how long the preflight may run before it is killed with everything it started')),
  }).nullable().default(null)
    .meta(about('an optional check of a candidate release before anything is switched; `null`: none')),
  hooks: HooksSchema.prefault({})
    .meta(about('optional commands run at points of a deploy, as the app runs (its user, groups, limits and environment, in `dir`), the journal entry on stdin as JSON ("Deploy hooks")')),
  notify: notifyList('app', 'notifiers for this app\'s events, in addition to the global `notify` list ("Notifications")'),
  supervise: SuperviseSchema.prefault({})
    .meta(about('crash supervision: restarts with backoff')),
  releaseNames: ReleaseNamesSchema.prefault({})
    .meta(about('file names of a release, for `deploy RELEASE`; only files matching these are listed or pruned')),
  prune: z.strictObject({
    schedule: z.string().refine((s) => nodeCron().validate(s), 'must be a cron expression such as "0 3 * * *"').nullable().default(null)
      .meta(about('cron expression (5 fields, or 6 with seconds) on which the agent prunes old releases, e.g. `"0 3 * * *"`; `null`: never')),
    keep: z.int().min(1).max(10_000).default(5)
      .meta(about('how many of the newest releases pruning keeps, besides the protected ones')),
  }).prefault({})
    .meta(about('deleting old releases')),
  user: account('user').nullable().default(null)
    .meta(about('the user the app runs as (name or uid); `null`: the agent\'s own (root under systemd, which needs `allowRoot`)')),
  group: account('group').nullable().default(null)
    .meta(about('the app\'s group (name or gid), with `user`; `null`: the user\'s primary group. Supplementary groups are kept')),
  allowRoot: z.boolean().default(false)
    .meta(about('the app may run as root; without it an app that would run as root is refused (`ROOT_REFUSED`)')),
  limits: LimitsSchema.prefault({})
    .meta(about('resource limits set on the app (soft = hard); `null`: inherited from the agent (`LimitNOFILE=` in the unit)')),
}).superRefine((a, ctx) => {
  if (a.group !== null && a.user === null) {
    ctx.addIssue({ code: 'custom', path: ['group'], message: 'needs "user" as well (without it the app runs as the agent\'s own user and group)' });
  }
  // Said at load time when the config itself asks for root; running as root
  // because "user" is unset is refused when the app is started (launch.ts).
  if ((a.user === 'root' || String(a.user) === '0') && !a.allowRoot) {
    ctx.addIssue({ code: 'custom', path: ['user'], message: 'runs the app as root: set "allowRoot": true to mean it, or name an unprivileged user' });
  }
}, reads('user', 'group', 'allowRoot')).superRefine((a, ctx) => {
  const strategy = a.reload.strategy ?? a.reload.mode;
  const { signal } = a.reload;
  const quiesceSignal = a.reload.quiesceSignal ?? undefined;
  const resumeSignal = a.reload.resumeSignal ?? undefined;
  // (Signals that stop every server are refused above already: one problem per key.)
  if (quiesceSignal !== undefined && !STOPPING.includes(quiesceSignal) && quiesceSignal === a.stop.signal) {
    ctx.addIssue({ code: 'custom', path: ['reload', 'quiesceSignal'], message: 'must differ from "stop.signal": the old master would stop, and a failed new generation would leave nothing to resume' });
  }
  if (resumeSignal !== undefined && !STOPPING.includes(resumeSignal) && resumeSignal === a.stop.signal) {
    ctx.addIssue({ code: 'custom', path: ['reload', 'resumeSignal'], message: 'must differ from "stop.signal": the good old master would stop instead of accepting again' });
  }
  // The signal a running app gets to reload (or start its new master): not
  // what stops it. ("socket" and "restart" send no reload signal.)
  const signalled = strategy ?? (a.sockets.length > 0 ? 'socket' : 'reexec');
  if (signalled === 'reexec' || signalled === 'inplace' || signalled === 'upgrade') {
    if (STOPPING.includes(signal)) {
      ctx.addIssue({ code: 'custom', path: ['reload', 'signal'], message: `must not be a signal that stops a server (${signal}) under "${signalled}": it is sent to the serving app to ${signalled === 'upgrade' ? 'start a new master' : 'reload'} (nginx, gunicorn: SIGHUP to reload, SIGUSR2 to upgrade; grace: SIGUSR2; tableflip, endless: SIGHUP)` });
    } else if (signal === a.stop.signal) {
      ctx.addIssue({ code: 'custom', path: ['reload', 'signal'], message: `must differ from "stop.signal" (${signal}): one signal cannot mean both reload and stop` });
    }
  }
  if (strategy === 'socket' && a.sockets.length === 0) {
    ctx.addIssue({ code: 'custom', path: ['reload', 'strategy'], message: '"socket" needs "sockets": the listen addresses the agent holds and passes to every generation' });
  }
}, reads('reload.strategy', 'reload.mode', 'reload.quiesceSignal', 'reload.resumeSignal', 'stop.signal', 'sockets')).superRefine((a, ctx) => {
  const missed = probeMissesSockets(a.health.url !== undefined ? { url: a.health.url } : a.health.tcp !== undefined ? { tcp: a.health.tcp } : undefined, a.sockets);
  if (missed !== undefined) ctx.addIssue({ code: 'custom', path: ['health', a.health.url !== undefined ? 'url' : 'tcp'], message: missed });
  const canonical = a.sockets.map((s) => (listenAddressProblem(s) === undefined ? formatListenAddress(parseListenAddress(s)) : s));
  canonical.forEach((s, i) => {
    if (canonical.indexOf(s) !== i) ctx.addIssue({ code: 'custom', path: ['sockets', i], message: `must not repeat sockets[${canonical.indexOf(s)}]` });
  });
}, reads('health.url', 'health.tcp', 'sockets')).superRefine((a, ctx) => {
  if (a.links.dir !== undefined && folderPattern(a.releaseNames.bin) === undefined) {
    ctx.addIssue({ code: 'custom', path: ['links', 'dir'], message: 'needs "releaseNames" in a folder per release, e.g. {"bin": "{release}/app", "cfg": "{release}/app.cfg"}: the link points at the live release\'s folder' });
  }
}, reads('links.dir', 'releaseNames.bin'));

const WatchSchema = z.strictObject({
  stabilityMs: z.int().min(0).max(10_000).default(50)
    .meta(about('on every change (at most once per `pollMs`) the agent reads current.conf at once and acts if it is a complete JSON document (no proper prefix of one parses); otherwise it waits until the file has kept its inode, size and mtime this long, so a half-written file is never acted on, and reads again')),
  pollMs: z.int().min(1).max(1_000).default(10)
    .meta(about('how often the file is looked at meanwhile')),
});

const HistorySchema = z.strictObject({
  maxBytes: z.int().min(65_536).max(1_073_741_824).default(4_194_304)
    .meta(about('a deploy journal is rotated, like a log, when an entry would take it past this many bytes (65536 to 1073741824); the newest entries are kept')),
  backups: z.int().min(1).max(100).default(2)
    .meta(about('how many rotated journal files are kept, 1 to 100')),
});

/** Is a listen address on this host only: IPv4 127.0.0.0/8, IPv6 ::1 (or 127.x mapped into IPv6), or a unix socket? */
export function loopbackOnly(a: ListenAddress): boolean {
  if (a.kind === 'unix') return true;
  if (a.family === 4) return a.host.startsWith('127.');
  return a.host === '::1' || /^::ffff:127\./.test(a.host);
}

const MetricsSchema = z.strictObject({
  listen: z.string().superRefine((a, ctx) => {
    const problem = listenAddressProblem(a);
    if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
  }).optional()
    .meta(about('where the agent serves its Prometheus metrics (`/metrics`) and its status page (`/`): `"127.0.0.1:9464"`, `"[::1]:9464"` or `"unix:/run/relink/metrics.sock"`; an address other hosts could reach needs `public`; none: nothing listens ("Metrics and status page")')),
  public: z.boolean().default(false)
    .meta(about('`listen` may be an address other hosts can reach (`"0.0.0.0:9464"`, a public IP): whoever reaches it sees every app\'s state and the journal\'s reasons; without it only a loopback address or a unix socket is accepted')),
  textfile: z.string().refine((p) => path.isAbsolute(p), 'must be an absolute path')
    .refine((p) => p.endsWith('.prom') && path.basename(p) !== '.prom', 'must name a file ending in ".prom" (node_exporter\'s textfile collector reads only those)').optional()
    .meta(about('a file the agent writes its `relink_` metrics to, atomically (temp file + rename), on every change and every 15 s, for node_exporter\'s textfile collector; neither its folder nor one above it may be writable by an app\'s user or by every user; none: no file')),
}).superRefine((m, ctx) => {
  // "metrics": {} (or only "public") would turn on nothing, silently.
  if (m.listen === undefined && m.textfile === undefined) {
    ctx.addIssue({ code: 'custom', path: [], message: 'needs "listen" or "textfile" (or both): with neither, nothing is served or written' });
    return;
  }
  if (m.listen === undefined || m.public || listenAddressProblem(m.listen) !== undefined) return;
  if (!loopbackOnly(parseListenAddress(m.listen))) {
    ctx.addIssue({ code: 'custom', path: ['listen'], message: 'must be a loopback address ("127.0.0.1:PORT", "[::1]:PORT") or "unix:/path": the status page shows every app\'s state and the journal\'s reasons to whoever connects; set "metrics.public": true to serve them to other hosts' });
  }
});

export const ConfigSchema = z.strictObject({
  $schema: z.string().optional()
    .meta(about('ignored by the agent: the JSON Schema editors check this file against (`config.schema.json` in the package; `relink schema` prints it)')),
  stateDir: absoluteOrRelative.default('/var/lib/relink')
    .meta(about('the running agent (`agent.json`, readable by all) and per app, in `apps/NAME/` (readable by root and the app\'s group only), its journal (`history.jsonl`, rotated) and state (`state.json`): "The state folder: who can read what"; one agent per stateDir; relative to the config file\'s folder')),
  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info')
    .meta(about('`trace` .. `fatal`, `silent`')),
  reconcileMs: z.int().min(200).max(3_600_000).default(5_000)
    .meta(about('how often each app is re-checked as a safety net: current.conf re-read (a missed file event), its folder\'s watch confirmed, the claim on the app\'s folder renewed, and an app that could not be managed (missing folder, unknown user) tried again; a few small file reads')),
  watch: WatchSchema.prefault({})
    .meta(about('how a change of current.conf is read')),
  history: HistorySchema.prefault({})
    .meta(about('how large the deploy journal may grow')),
  notify: notifyList('global', 'notifiers told of the events of every app: each a `command` and/or a `url`, and the events it is told of (`on`); apps may add their own ("Notifications")'),
  metrics: MetricsSchema.nullable().default(null)
    .meta(about('Prometheus metrics and a status page, served on `listen` and/or written to `textfile`; `null`: off, nothing is loaded or listened on ("Metrics and status page")')),
  apps: z.array(AppSchema).min(1, 'must list at least one app')
    .meta(about('the apps this agent manages, at least one; relative paths in an app resolve against its `dir`')),
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
  // A listen address is held once, for one app.
  const held = new Map<string, number>();
  apps.forEach((app: unknown, i) => {
    const sockets = app !== null && typeof app === 'object' ? (app as { sockets?: unknown }).sockets : undefined;
    if (!Array.isArray(sockets)) return;
    sockets.forEach((raw: unknown, j) => {
      if (typeof raw !== 'string' || listenAddressProblem(raw) !== undefined) return;
      // Compared as the kernel sees them: "[0:0::1]:80" is "[::1]:80".
      const s = formatListenAddress(parseListenAddress(raw));
      // A wildcard address takes its port on every address of its family:
      // "0.0.0.0:80" and "127.0.0.1:80" cannot both be bound.
      const overlap = [...held.keys()].find((h) => h !== s && overlaps(h, s));
      const prev = held.get(s) ?? (overlap === undefined ? undefined : held.get(overlap));
      if (prev !== undefined && prev !== i) ctx.addIssue({ code: 'custom', path: ['apps', i, 'sockets', j], message: `must not be a socket apps[${prev}] holds too (one listen address, one app)` });
      held.set(s, i);
    });
  });
  // zod skips a refinement after an aborting issue anywhere else (a bad enum,
  // a wrong type); every problem must still be listed at once.
}, { when: (payload) => payload.value !== null && typeof payload.value === 'object' && !Array.isArray(payload.value) });

/** Two canonical TCP listen addresses on one port where one is the wildcard of the other's family ("0.0.0.0", "[::]"). */
function overlaps(a: string, b: string): boolean {
  if (a.startsWith('unix:') || b.startsWith('unix:')) return false;
  const port = (x: string) => x.slice(x.lastIndexOf(':') + 1);
  const host = (x: string) => x.slice(0, x.lastIndexOf(':'));
  if (port(a) !== port(b)) return false;
  const v6 = (x: string) => host(x).startsWith('[');
  const wild = (x: string) => host(x) === '0.0.0.0' || host(x) === '[::]';
  // "[::]" is bound IPv6-only by the agent: it overlaps IPv6 addresses only.
  return v6(a) === v6(b) && (wild(a) || wild(b));
}

/**
 * The agent config's JSON Schema (draft-07, which every editor's JSON
 * support reads), generated from ConfigSchema: what `relink schema` prints
 * and config.schema.json holds. Input side: a key with a default is optional.
 */
export function configJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(ConfigSchema, { target: 'draft-7', io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
}

// The frozen config's types come from the schemas where a part is used as
// parsed (STYLE.md: one source for the config shape); the rest is what
// parseConfig makes of it (resolved paths, `undefined` for "none", a probe).
type Frozen<S extends z.ZodType> = Readonly<z.output<S>>;

/** Which kind of process handling the finder applies (src/proc.ts): the same process reloads, or new ones take over. */
export type ReloadMode = 'reexec' | 'inplace';

export interface AppConfig {
  readonly name: string;
  readonly dir: string;
  readonly command: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly releasesDir: string;
  readonly currentFile: string;
  /** The links the agent switches, absolute; `dir` absent when the app has none. */
  readonly links: { readonly bin: string; readonly cfg: string; readonly dir?: string | undefined };
  /** The app's log file, absolute: `logFile`, else `<dir>/app.log` (used when the journal is not). */
  readonly logFile: string;
  /**
   * `journal`: `logFile` is unset, so the app's output goes to journald when
   * the host runs it (src/appoutput.ts). `maxBytes` (bytes), `backups`: the
   * file's rotation (src/applog.ts).
   */
  readonly log: { readonly journal: boolean; readonly maxBytes: number; readonly backups: number };
  readonly pidFile: string | undefined;
  readonly reload: {
    readonly strategy: Strategy;
    /** How the finder follows generations: "inplace" for that strategy, "reexec" for every one where new processes take over. */
    readonly mode: ReloadMode;
    readonly signal: NodeJS.Signals;
    readonly timeoutMs: number;
    readonly drainTimeoutMs: number;
    /**
     * "upgrade" only: sent to the old master once the new generation waits
     * for connections, before it is judged (its workers stop accepting: nginx
     * SIGWINCH), and, when the new generation fails, `resumeSignal` (nginx
     * SIGHUP: its workers start again). Both or neither; undefined: neither.
     */
    readonly quiesceSignal: NodeJS.Signals | undefined;
    readonly resumeSignal: NodeJS.Signals | undefined;
    /** The config used the deprecated "mode" key (said once in the log at start). */
    readonly deprecatedMode: boolean;
  };
  /** Listen addresses the agent holds for the app, in fd order (3, 4, ...): "127.0.0.1:8080", "[::1]:8080", "unix:/path". */
  readonly sockets: readonly string[];
  /** How a generation is stopped: `signal`, then SIGKILL after `timeoutMs` (ms). */
  readonly stop: { readonly signal: NodeJS.Signals; readonly timeoutMs: number };
  readonly health: Readonly<Omit<z.output<typeof HealthSchema>, 'url' | 'tcp' | 'liveness'> & {
    /** The HTTP or TCP probe, from `url` or `tcp`; undefined: none. */
    probe: Probe | undefined;
    /** Probing after the verdict (`periodMs`, `failureThreshold`); undefined: off. */
    liveness: Frozen<typeof LivenessSchema> | undefined;
  }>;
  readonly preflight: { readonly command: readonly string[]; readonly timeoutMs: number } | undefined;
  /** Deploy hooks (src/hooks.ts): each an argv, undefined when none; `timeoutMs` for each run (ms). */
  readonly hooks: Hooks;
  /** This app's notifiers (src/notifications.ts), told besides the global ones. */
  readonly notify: readonly Notifier[];
  readonly supervise: Frozen<typeof SuperviseSchema>;
  /** File name patterns of a release, `{release}` standing for e.g. "2.0". */
  readonly releaseNames: Frozen<typeof ReleaseNamesSchema>;
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

export interface Hooks {
  readonly beforeSwitch: readonly string[] | undefined;
  readonly afterDeploy: readonly string[] | undefined;
  readonly afterRollback: readonly string[] | undefined;
  readonly timeoutMs: number;
}

/**
 * One notifier (README "Notifications"): the events it is told of, and a
 * command (argv) and/or a URL (at least one of them is set). Each attempt
 * may take `timeoutMs` (ms); an attempt that failed in a way worth
 * retrying is retried up to `retries` times, `backoffMs` (ms) before the
 * first retry, doubled before each next, at most NOTIFY_MAX_DELAY_MS.
 */
export interface Notifier {
  readonly on: readonly NotifyEvent[];
  readonly command: readonly string[] | undefined;
  readonly url: string | undefined;
  readonly timeoutMs: number;
  readonly retries: number;
  readonly backoffMs: number;
}

function freezeNotifiers(list: ReadonlyArray<{ on: readonly NotifyEvent[]; command?: readonly string[] | undefined; url?: string | undefined; timeoutMs: number; retries: number; backoffMs: number }>): readonly Notifier[] {
  return Object.freeze(list.map((n) => Object.freeze({
    on: Object.freeze([...new Set(n.on)]),
    command: n.command === undefined ? undefined : Object.freeze([...n.command]),
    url: n.url,
    timeoutMs: n.timeoutMs,
    retries: n.retries,
    backoffMs: n.backoffMs,
  })));
}

export type LimitValue = number | 'unlimited';

export interface Limits {
  readonly nofile: number | undefined;
  readonly nproc: LimitValue | undefined;
  readonly core: LimitValue | undefined;
}

export const LIMIT_NAMES = ['nofile', 'nproc', 'core'] as const;
export type LimitName = (typeof LIMIT_NAMES)[number];

/**
 * The rule a health probe breaks when it can never reach the sockets the
 * agent holds: the app's sockets take its port, but none on the probe's
 * address ("[::]:8080" is IPv6-only, so http://127.0.0.1:8080/ is refused
 * there; "127.0.0.1:8080" does not take [::1]). Undefined when it reaches
 * one, when no socket has its port (the app binds it itself), or when the
 * probe names a host (resolved at probe time).
 */
function probeMissesSockets(probe: Probe | undefined, sockets: readonly string[]): string | undefined {
  if (probe === undefined) return undefined;
  let target: { host: string; port: number } | undefined;
  if ('url' in probe) {
    try {
      const u = new URL(probe.url);
      target = { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(u.port || 80) };
    } catch {
      return undefined;
    }
  } else {
    target = parseHostPort(probe.tcp);
  }
  if (target === undefined) return undefined;
  const family = /^\d+\.\d+\.\d+\.\d+$/.test(target.host) ? 4 : target.host.includes(':') ? 6 : undefined;
  if (family === undefined) return undefined;
  const held = sockets.filter((s) => listenAddressProblem(s) === undefined).map(parseListenAddress)
    .filter((l): l is Extract<ListenAddress, { kind: 'tcp' }> => l.kind === 'tcp' && l.port === target.port);
  if (held.length === 0) return undefined;
  const any = family === 4 ? '0.0.0.0' : '::';
  if (held.some((l) => l.family === family && (l.host === any || l.host === target.host))) return undefined;
  const at = family === 4 ? `${target.host}:${target.port}` : `[${target.host}]:${target.port}`;
  return `reaches ${at}, but "sockets" holds port ${target.port} only on ${held.map((l) => formatListenAddress(l)).join(', ')}${held.some((l) => l.host === '::') ? ' ("[::]" is IPv6-only)' : ''}: the probe would be refused. Add "${family === 4 ? `0.0.0.0:${target.port}` : `[::]:${target.port}`}" (or "${at}") to "sockets", or probe an address held`;
}

/** The strategy an app uses: the one configured, else "socket" when it has sockets, else "reexec". */
function strategyOf(configured: Strategy | undefined, sockets: readonly string[]): Strategy {
  return configured ?? (sockets.length > 0 ? 'socket' : 'reexec');
}

/** The file names of release `r` (e.g. "2.0" -> app.2.0, cfg.2.0; or 2.0/app, 2.0/app.cfg in the folders layout). */
export function releaseFiles(app: AppConfig, r: string): { bin: string; cfg: string } {
  return {
    bin: path.join(app.releasesDir, app.releaseNames.bin.replaceAll(RELEASE_PLACEHOLDER, r)),
    cfg: path.join(app.releasesDir, app.releaseNames.cfg.replaceAll(RELEASE_PLACEHOLDER, r)),
  };
}

/** Whether releases are folders (releaseNames "{release}/app", issue 15) rather than file pairs. */
export function releasesAreFolders(app: AppConfig): boolean {
  return folderPattern(app.releaseNames.bin) !== undefined;
}

/**
 * The release name of `entry`, a name in releasesDir, if it matches the
 * app's bin pattern (files layout) or its folder part (folders layout).
 */
export function releaseOf(app: AppConfig, entry: string): string | undefined {
  return releaseIn(folderPattern(app.releaseNames.bin) ?? app.releaseNames.bin, entry);
}

/**
 * The release whose `kind` file `file` is (an absolute path: a link's
 * target), by releaseNames, in either layout ("app.{release}" or
 * "{release}/app"); undefined when it is no such file of the releases folder.
 */
export function releaseOfFile(app: AppConfig, file: string, kind: 'bin' | 'cfg'): string | undefined {
  const rel = path.relative(app.releasesDir, file);
  return rel.startsWith('..') || path.isAbsolute(rel) ? undefined : releaseIn(app.releaseNames[kind], rel);
}

/** What `{release}` stands for in `name` by `pattern`: undefined when it does not match, or would be empty or hold a "/". */
function releaseIn(pattern: string, name: string): string | undefined {
  const [pre, post] = pattern.split(RELEASE_PLACEHOLDER) as [string, string];
  if (name.length <= pre.length + post.length || !name.startsWith(pre) || !name.endsWith(post)) return undefined;
  const r = name.slice(pre.length, name.length - post.length);
  return r.includes('/') ? undefined : r;
}

/** An app's log file when `logFile` is not set (or journald is not there), in its `dir`. */
export const DEFAULT_LOG_FILE = 'app.log';

export interface AgentConfig {
  /** Absolute path of the config file this came from. */
  readonly file: string;
  readonly stateDir: string;
  readonly logLevel: string;
  readonly reconcileMs: number;
  readonly watch: Frozen<typeof WatchSchema>;
  /** Each deploy journal's bound: rotated past `maxBytes` (bytes), keeping `backups` rotated files. */
  readonly history: Frozen<typeof HistorySchema>;
  /** Notifiers told of every app's events (src/notifications.ts). */
  readonly notify: readonly Notifier[];
  /** Metrics and the status page (src/monitoring.ts); undefined: off. */
  readonly metrics: MetricsConfig | undefined;
  readonly apps: readonly AppConfig[];
}

export interface MetricsConfig {
  /** Where /metrics and the status page are served ("127.0.0.1:9464", "[::1]:9464", "unix:/path"); undefined: not served. */
  readonly listen: string | undefined;
  /** `listen` may be reachable from other hosts. */
  readonly public: boolean;
  /** Absolute path of the node_exporter textfile (*.prom); undefined: none. */
  readonly textfile: string | undefined;
}

/**
 * Parse an already-read config text (a leading byte order mark ignored).
 * `file` is used for messages and relative paths. Throws RelinkErrors:
 * CONFIG_SYNTAX, CONFIG_DUPLICATE_KEY, or CONFIG_INVALID listing every
 * problem (at most MAX_PROBLEMS), including two apps sharing a file.
 */
export function parseConfig(text: string, file: string): AgentConfig {
  const abs = path.resolve(file);
  const raw = parseJsonFile(text, abs, { syntax: 'CONFIG_SYNTAX', duplicate: 'CONFIG_DUPLICATE_KEY' });
  const cfg = parseWithSchema(ConfigSchema, raw, abs, { invalid: 'CONFIG_INVALID', unknownKey: 'CONFIG_INVALID' });
  const base = path.dirname(abs);
  const apps = cfg.apps.map((a): AppConfig => {
    const dir = path.resolve(a.dir);
    const releasesDir = path.resolve(dir, a.releasesDir);
    return Object.freeze({
      name: a.name,
      dir,
      command: Object.freeze([...a.command]),
      env: Object.freeze({ ...a.env }),
      releasesDir,
      // Relative paths resolve against `dir`; the default follows releasesDir.
      currentFile: a.currentFile === undefined ? path.join(releasesDir, 'current.conf') : path.resolve(dir, a.currentFile),
      links: Object.freeze({ bin: path.resolve(dir, a.links.bin), cfg: path.resolve(dir, a.links.cfg), ...(a.links.dir === undefined ? {} : { dir: path.resolve(dir, a.links.dir) }) }),
      logFile: path.resolve(dir, a.logFile ?? DEFAULT_LOG_FILE),
      log: Object.freeze({ journal: a.logFile === null, maxBytes: a.log.maxBytes, backups: a.log.backups }),
      pidFile: a.pidFile === null ? undefined : path.resolve(dir, a.pidFile),
      reload: Object.freeze({
        strategy: strategyOf(a.reload.strategy ?? a.reload.mode, a.sockets),
        mode: (a.reload.strategy ?? a.reload.mode) === 'inplace' ? 'inplace' : 'reexec',
        signal: a.reload.signal as NodeJS.Signals,
        timeoutMs: a.reload.timeoutMs,
        drainTimeoutMs: a.reload.drainTimeoutMs,
        quiesceSignal: (a.reload.quiesceSignal ?? undefined) as NodeJS.Signals | undefined,
        resumeSignal: (a.reload.resumeSignal ?? undefined) as NodeJS.Signals | undefined,
        deprecatedMode: a.reload.mode !== undefined,
      }),
      sockets: Object.freeze([...a.sockets]),
      stop: Object.freeze({ signal: a.stop.signal as NodeJS.Signals, timeoutMs: a.stop.timeoutMs }),
      health: Object.freeze({
        probe: a.health.url !== undefined ? Object.freeze({ url: a.health.url }) : a.health.tcp !== undefined ? Object.freeze({ tcp: a.health.tcp }) : undefined,
        deadlineMs: a.health.deadlineMs,
        settleMs: a.health.settleMs,
        intervalMs: a.health.intervalMs,
        probeTimeoutMs: a.health.probeTimeoutMs,
        readiness: a.health.readiness,
        liveness: a.health.liveness === null ? undefined : Object.freeze({ ...a.health.liveness }),
      }),
      preflight: a.preflight === null ? undefined : Object.freeze({ command: Object.freeze([...a.preflight.command]), timeoutMs: a.preflight.timeoutMs }),
      hooks: Object.freeze({
        beforeSwitch: a.hooks.beforeSwitch === null ? undefined : Object.freeze([...a.hooks.beforeSwitch]),
        afterDeploy: a.hooks.afterDeploy === null ? undefined : Object.freeze([...a.hooks.afterDeploy]),
        afterRollback: a.hooks.afterRollback === null ? undefined : Object.freeze([...a.hooks.afterRollback]),
        timeoutMs: a.hooks.timeoutMs,
      }),
      notify: freezeNotifiers(a.notify),
      supervise: Object.freeze({ ...a.supervise }),
      releaseNames: Object.freeze({ ...a.releaseNames }),
      prune: Object.freeze({ schedule: a.prune.schedule ?? undefined, keep: a.prune.keep }),
      user: a.user === null ? undefined : String(a.user),
      group: a.group === null ? undefined : String(a.group),
      allowRoot: a.allowRoot,
      limits: Object.freeze({ nofile: a.limits.nofile ?? undefined, nproc: a.limits.nproc ?? undefined, core: a.limits.core ?? undefined }),
    });
  });
  const shared = sharedFiles(abs, apps, (p) => ({ key: p, shown: p }));
  if (shared.length > 0) throw new RelinkErrors(shared);
  return Object.freeze({
    file: abs,
    stateDir: path.resolve(base, cfg.stateDir),
    logLevel: cfg.logLevel,
    reconcileMs: cfg.reconcileMs,
    watch: Object.freeze({ ...cfg.watch }),
    history: Object.freeze({ ...cfg.history }),
    notify: freezeNotifiers(cfg.notify),
    metrics: cfg.metrics === null ? undefined : Object.freeze({ listen: cfg.metrics.listen, public: cfg.metrics.public, textfile: cfg.metrics.textfile }),
    apps: Object.freeze(apps),
  });
}

/** The files each app has to itself: what the agent applies, switches or writes. */
const OWN_FILES = [
  { key: 'currentFile', of: (a: AppConfig) => a.currentFile, what: 'a current.conf', why: 'two apps would both apply one current.conf', link: false },
  { key: 'links.bin', of: (a: AppConfig) => a.links.bin, what: 'the binary\'s link', why: 'two apps would switch the same link', link: true },
  { key: 'links.cfg', of: (a: AppConfig) => a.links.cfg, what: 'the config\'s link', why: 'two apps would switch the same link', link: true },
  { key: 'links.dir', of: (a: AppConfig) => a.links.dir, what: 'the release folder\'s link', why: 'two apps would switch the same link', link: true },
  { key: 'logFile', of: (a: AppConfig) => a.logFile, what: 'a log', why: 'two apps would write one log', link: false },
] as const;

/**
 * Two apps (or two keys of one app) naming the same file, compared by
 * `identity` (the resolved path; in loadConfig the real path too). One
 * problem for each later use, naming the earlier one.
 */
function sharedFiles(file: string, apps: readonly AppConfig[], identity: (p: string, link: boolean) => { key: string; shown: string }): RelinkError[] {
  const first = new Map<string, { app: number; use: (typeof OWN_FILES)[number] }>();
  const problems: RelinkError[] = [];
  apps.forEach((app, i) => {
    for (const use of OWN_FILES) {
      const own = use.of(app);
      if (own === undefined) continue;
      const id = identity(own, use.link);
      const prev = first.get(id.key);
      if (prev === undefined) {
        first.set(id.key, { app: i, use });
        continue;
      }
      const rule = prev.use === use ? `must not be the same file as apps[${prev.app}]'s (${use.why})`
        : `must not be the same file as apps[${prev.app}].${prev.use.key} (one file cannot be both ${use.what} and ${prev.use.what})`;
      problems.push(fileError('CONFIG_INVALID', file, `apps[${i}].${use.key}`, rule, id.shown));
    }
  });
  return problems;
}

/** The real path of `p` where it exists; of its folder for a link (the link itself, not its target) or a file not made yet. */
async function realPathOf(p: string, link: boolean): Promise<string> {
  if (!link) {
    const real = await realpath(p).catch(() => undefined);
    if (real !== undefined) return real;
  }
  const dir = await realpath(path.dirname(p)).catch(() => undefined);
  return dir === undefined ? p : path.join(dir, path.basename(p));
}

/**
 * Read and parse the config file (see parseConfig). Two apps whose files
 * are the same only through symlinks are refused here, where the real
 * paths are looked up. Throws RelinkErrors (CONFIG_UNREADABLE and those of parseConfig).
 */
/** Far above any real config (a hundred apps fit in 100 KiB). */
const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

export async function loadConfig(file: string): Promise<AgentConfig> {
  const abs = path.resolve(file);
  let text: string;
  try {
    // Never blocking: a FIFO or a device named as the config is refused at
    // once, not read (a blocked read also held the CLI's exit, issue 9 item 8).
    text = (await readSmallFile(abs, { maxBytes: MAX_CONFIG_BYTES, links: 'follow' })).bytes.toString('utf8');
  } catch (err) {
    const found = err instanceof SafeFsError ? err.found ?? err.message : isErrno(err) ? err.code ?? 'error' : describe(String(err));
    throw new RelinkErrors([fileError('CONFIG_UNREADABLE', abs, undefined, 'must be a readable regular file', found)]);
  }
  const config = parseConfig(text, abs);
  const real = new Map<string, string>();
  await Promise.all(config.apps.flatMap((a) => OWN_FILES.map(async (use) => {
    const p = use.of(a);
    if (p === undefined) return;
    real.set(`${use.link}:${p}`, await realPathOf(p, use.link));
  })));
  const shared = sharedFiles(abs, config.apps, (p, link) => {
    const r = real.get(`${link}:${p}`) ?? p;
    return { key: r, shown: r === p ? p : `${p} -> ${r}` };
  });
  if (shared.length > 0) throw new RelinkErrors(shared);
  return config;
}

/** The app named `name`, or the only app when no name is given. */
export function pickApp(config: AgentConfig, name: string | undefined): AppConfig | undefined {
  if (name === undefined) return config.apps.length === 1 ? config.apps[0] : undefined;
  return config.apps.find((a) => a.name === name);
}
