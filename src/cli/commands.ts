/**
 * Every relink command as data: what `relink --help` lists, what each
 * `relink CMD --help` prints, how its argv is parsed and checked (src/cli/spec.ts),
 * and where its code is (`load`, imported only when the command runs: the
 * resident agent never holds the report commands or the demo; BENCHMARKS.md
 * section 3). Plain data: nothing here imports a command's implementation.
 *
 * Adding a command: one entry in TABLE, plus src/cli/NAME.ts exporting
 * `nameCommand: Command<SpecOf<'name'>>`.
 */
import { COUNT, DEFAULT_CONFIG, LINES, PORT, SECONDS, SHA256, type CommandSpec, type Loaded, type OptionSpec } from './spec.js';

const CONFIG = {
  name: 'config', short: 'c', type: 'string', value: 'FILE', help: `agent config (default $RELINK_CONFIG, else ${DEFAULT_CONFIG})`,
} as const satisfies OptionSpec;
/** --app for a command about one app. */
const APP = { name: 'app', type: 'string', value: 'NAME', help: 'the app (needed when the config has several)' } as const satisfies OptionSpec;
/** --app for a command about every app unless told. */
const ONLY_APP = { name: 'app', type: 'string', value: 'NAME', help: 'only this app' } as const satisfies OptionSpec;
/** What --timeout means when it is not given (deploy, rollback, start, restart). */
export const DEFAULT_WAIT_S = 120;
/** --timeout S; `fallback` says what it is when not given (the command applies it). */
function timeout<const D extends string>(fallback: D) {
  return { name: 'timeout', type: 'string', value: 'S', help: `how long --wait waits (default ${fallback})`, parser: SECONDS } as const satisfies OptionSpec;
}
const TIMEOUT = timeout('120');
const JSON_OUTCOME = { name: 'json', type: 'boolean', help: 'one JSON object: {"outcome", "message", "entry"?}' } as const satisfies OptionSpec;
const STOPPED_WAITING = [
  { code: 130, meaning: '(SIGINT, Ctrl-C) stopped waiting' },
  { code: 143, meaning: '(SIGTERM) stopped waiting' },
] as const;

/** What stop, start and restart share: a request to the running agent about one app, answered in its journal. */
function operate<const N extends 'stop' | 'start' | 'restart', const S extends string, const D extends string>(name: N, summary: S, what: D, fallback: string, ok: string) {
  return {
    name,
    summary,
    usage: '[--config FILE] (APP | --app NAME) [--wait] [--timeout S] [--json]',
    description: `${what}

The request goes to the running agent (a file in its state folder, answered
by an entry of the app's journal: relink history); root only.`,
    positionals: [{ name: 'APP', help: 'the app (or --app NAME; needed when the config has several)' }],
    options: [
      CONFIG,
      { name: 'app', type: 'string', value: 'NAME', help: 'the app (or as the one argument; needed when the config has several)' },
      { name: 'wait', type: 'boolean', help: "wait for the agent's answer (Ctrl-C stops waiting, exit 130; the agent goes on)" },
      timeout(fallback),
      JSON_OUTCOME,
    ],
    exits: [
      { code: 0, meaning: `${ok} (without --wait: asked)` },
      { code: 1, meaning: 'failed, no agent running, or no answer in time' },
      ...STOPPED_WAITING,
    ],
    ownsStop: true,
    load: async (): Loaded => (await import('./operate.js'))[`${name}Command`],
  } as const satisfies CommandSpec;
}

/**
 * In the order `relink --help` lists them. An implementation is typed by
 * its entry: `export const stopCommand: Command<SpecOf<'stop'>>`.
 */
const TABLE = [
  {
    name: 'agent',
    summary: 'run the resident agent in the foreground',
    description: `
Run the resident agent in the foreground (systemd runs it this way). It
watches each app's current.conf, validates every change, relinks app.bin and
app.cfg atomically, and starts the app or sends it its reload signal. JSON
log lines go to stdout. SIGTERM or SIGINT stop the agent; the apps keep
running and the next agent adopts them. SIGHUP (systemctl reload relink, or
relink reload) re-reads the config: an invalid file changes nothing.

It refuses to run as PID 1 (a container's entrypoint): the successors its
apps start when they re-execute are re-parented to PID 1 and would stay
zombies, one per deploy. Run it under an init that reaps them: docker run
--init, or tini.`,
    options: [CONFIG],
    exits: [
      { code: 0, meaning: 'stopped by a signal' },
      { code: 1, meaning: 'bad config, another agent runs, or PID 1' },
    ],
    ownsStop: true,
    load: async (): Loaded => (await import('./agent.js')).agentCommand,
  },
  {
    name: 'status',
    summary: 'show each app: state, release, process, last deploy',
    description: `
Show each app: its state, the release files its links point at, its main
process and when that process started, its generations (the serving one
and any older ones still draining, each with its processes; "deleted on
disk" for a process whose executable was replaced), the user it runs as
and the limits it really has (from /proc/PID/limits, with a warning when
one is lower than configured), and the last deploy with its outcome. The
process is checked live (through /proc), not only read from the agent's
state file. Run it as the agent's user (root): other users cannot see
another user's processes' executables.

States: running; deploying; backoff (crashed, a restart is scheduled); fatal
(crashed too often in a row, left alone until the next deploy or a re-save of
current.conf, or relink start); failed (the last deploy failed and the app
is not running); error (the agent cannot manage the app right now: the
problem is shown); stopped; unknown (you may see neither the app's state
file nor its processes: run it as root or in the app's group). A state
file or agent.json that is damaged (or that you may not read: the app's
state is readable by root and the app's group) is treated as absent, with
a warning naming it.`,
    options: [
      CONFIG,
      ONLY_APP,
      {
        name: 'json', type: 'boolean',
        help: '{"agent": {...} | null, "apps": [{"name", "state", "pid", "since", "bin", "cfg", "release", "releasesDir", "releaseNames", "runAs", "strategy", "sockets", "generations", "user", "limits", "warnings", ...}]}',
      },
    ],
    exits: [
      { code: 0, meaning: 'every app shown is running, and an agent runs' },
      { code: 1, meaning: 'one is not, or no agent runs (or the config is bad)' },
    ],
    load: async (): Loaded => (await import('./status.js')).statusCommand,
  },
  {
    name: 'validate',
    summary: 'check a current.conf as the agent would; apply nothing',
    description: `
Check a current.conf exactly as the agent would (a regular file the app's
user may read, JSON, keys, that both files exist inside the app's releases
folder, the binary is executable, who could have written them, and the
app's preflight, run as the app runs, for a release that is not live yet)
and apply nothing. CURRENT_CONF defaults to the app's own current.conf;
relative paths inside it resolve against the folder holding it.`,
    positionals: [{ name: 'CURRENT_CONF', help: "the file to check (default: the app's current.conf)" }],
    options: [CONFIG, APP, { name: 'json', type: 'boolean', help: '{"ok": true|false, "file", "bin", "cfg", "live", "problems": [...]}' }],
    exits: [
      { code: 0, meaning: 'the agent would deploy it' },
      { code: 1, meaning: 'it would refuse it (reasons on stderr)' },
      { code: 130, meaning: '(SIGINT, Ctrl-C) stopped during the preflight, nothing judged' },
      { code: 143, meaning: '(SIGTERM) the same' },
    ],
    ownsStop: true,
    load: async (): Loaded => (await import('./validate.js')).validateCommand,
  },
  {
    name: 'history',
    summary: 'show the deploy journal, newest last',
    description: `
The deploy journal, newest last: every apply attempt with its outcome, what
it switched from and to, the app's PID before and after, how long it took,
and the reason when it did not deploy. Outcomes:
  deployed      switched, started or signalled, and verified healthy
  refused       current.conf or its release failed a check; nothing was switched
  rolled_back   the release failed verification; the last known-good release
                serves again, and current.conf names it again
  failed        the release failed and there was nothing to roll back to (or
                the rollback failed too)
  stopped       stopped by relink stop, or links switched while so stopped
An entry answering relink stop, start or restart shows it in ACTION.
A run of identical refusals is journaled once, then once more with the
number of further ones: "refused x12".

Each app's journal is <stateDir>/apps/NAME/history.jsonl, one JSON object
per line, rotated like a log (history.jsonl.1, .2) so it stays bounded; it
is readable by root and the app's group only. Without --app, the journals of
every app you may read are merged by time; the others are named on stderr.
A damaged line (cut short by a crash) is skipped with a warning.`,
    options: [
      CONFIG,
      ONLY_APP,
      { name: 'limit', type: 'string', value: 'N', help: 'only the newest N entries (reads only those)', parser: COUNT },
      { name: 'json', type: 'boolean', help: '{"history": [...]}' },
    ],
    exits: [
      { code: 0, meaning: 'success' },
      { code: 1, meaning: "the config or the app's journal cannot be read" },
    ],
    load: async (): Loaded => (await import('./history.js')).historyCommand,
  },
  {
    name: 'releases',
    summary: 'list the releases: current, previous, last known-good, failed',
    description: `
The releases in each app's releases folder, oldest first by the time the
binary arrived on this host (ARRIVED: its birth time where the filesystem
records one, else its ctime; not its modification time, which rsync -a and
scp -p copy from the build: MODIFIED). A release is a binary named by the
app's releaseNames.bin pattern (default app.{release}) with its config
named by releaseNames.cfg (default cfg.{release}; shown as missing when
absent); with patterns such as {release}/app and {release}/app.cfg a
release is a folder holding both (Capistrano's releases/<tag>/), shown by
their paths in it and ordered by the folder's arrival. Other files and
folders are not releases and are never pruned.

Flags: current (the app's links, the folder link too, point at it),
previous (what relink rollback goes back to: the newest release the
journal records as deployed, other than what runs now), last-good (the
agent's last known-good release),
failed (its latest deploy was rolled back or failed), and the reasons
\`relink prune\` keeps it whatever its age (named by current.conf, linked by
another app, arrived after the current release and never deployed).`,
    options: [
      CONFIG,
      ONLY_APP,
      {
        name: 'json', type: 'boolean',
        help: '{"apps": [{"name", "releases": [{"release", "bin", "cfg", "folder", "current", "previous", "lastGood", "failed", "lastDeploy", "protected"}]}]}; bin, cfg and folder (null unless releases are folders) are {"path", "size", "mtime", "arrived", "arrivedBy": "birth" | "ctime"}',
      },
    ],
    exits: [
      { code: 0, meaning: 'success' },
      { code: 1, meaning: 'the config, a releases folder or the state cannot be read' },
    ],
    load: async (): Loaded => (await import('./releases.js')).releasesCommand,
  },
  {
    name: 'prune',
    summary: 'delete old releases, keeping the newest N and every protected one',
    description: `
Delete old releases now (the agent also does it on each app's
prune.schedule): every release but the newest N loses its binary and its
config, or, when releases are folders ({release}/app), its whole folder
(renamed away first, then removed without following any link in it).
Newest means arrived on this host last (the binary's or folder's birth
time, else its ctime), not modified last: rsync -a and scp -p keep the
build's modification time. Always kept, whatever their age:
  - the release the app's links point at (current);
  - the previous release: what relink rollback goes back to (the newest
    release the journal records as deployed, other than what runs now);
  - the last known-good release;
  - what current.conf names (an upload about to be deployed);
  - a release that arrived after the current one and was never deployed;
  - any file another app's links, last known-good release or current.conf
    name (apps may share a releases folder); for a folder, anything in it;
  - a release folder that one of these releases' folders links into
    (9.0/shared -> ../8.0/static keeps 8.0);
  - a release a running process uses: the binary it runs, or the folder
    it works in (an app reloaded in place runs the binary it started with).
Files not named by the app's releaseNames patterns are never touched. A
folder an interrupted prune left (.relink-pruning.*) is removed, and said.
\`relink releases\` shows what would be kept and why.`,
    options: [
      CONFIG,
      ONLY_APP,
      { name: 'keep', type: 'string', value: 'N', help: "keep the newest N releases (default: the app's prune.keep, 5 unless set)", parser: COUNT },
      { name: 'dry-run', type: 'boolean', help: 'list what would be deleted; delete nothing' },
      { name: 'json', type: 'boolean', help: '{"dryRun": bool, "apps": [{"name", "removed": [FILE...], "kept": [FILE...], "leftovers": [FOLDER...]}]}' },
    ],
    exits: [
      { code: 0, meaning: 'success' },
      { code: 1, meaning: 'a file could not be deleted or the config or state cannot be read' },
    ],
    load: async (): Loaded => (await import('./prune.js')).pruneCommand,
  },
  {
    name: 'deploy',
    summary: 'name a release in current.conf and (with --wait) wait for the verdict',
    usage: '[--config FILE] [--app NAME] (RELEASE | --bin PATH --cfg PATH) [--bin-sha256 HEX] [--cfg-sha256 HEX] [--wait] [--timeout S] [--json]',
    description: `
Name a release in the app's current.conf, atomically, exactly as a hand
edit would; the running agent applies it (validate, relink, start or signal,
verify, roll back if unhealthy). RELEASE is a shorthand: "2.0" means the
app's releaseNames patterns, by default app.2.0 + cfg.2.0 in the releases
folder (2.0/app + 2.0/app.cfg with {release}/app and {release}/app.cfg).
The agent's validation runs first, the app's preflight included (as the
app runs): a release it would refuse is refused here and current.conf is
not touched. A release already live whose current.conf names something
else (a change not applied yet, a refused typo) is written again.
--bin-sha256 and --cfg-sha256 (the sha256 of the files as built, computed
where they were uploaded from) go into current.conf as "bin.sha256" and
"cfg.sha256": a file whose upload is unfinished or damaged is refused.`,
    positionals: [{ name: 'RELEASE', help: 'the release: "2.0" for app.2.0 + cfg.2.0 (or --bin and --cfg)' }],
    options: [
      CONFIG,
      APP,
      { name: 'bin', type: 'string', value: 'PATH', help: 'the binary (with --cfg, instead of RELEASE)' },
      { name: 'cfg', type: 'string', value: 'PATH', help: 'the config file' },
      { name: 'bin-sha256', type: 'string', value: 'HEX', help: 'the binary\'s sha256, written into current.conf ("bin.sha256") and checked', parser: SHA256 },
      { name: 'cfg-sha256', type: 'string', value: 'HEX', help: 'the config\'s sha256, written into current.conf ("cfg.sha256") and checked', parser: SHA256 },
      { name: 'wait', type: 'boolean', help: "wait for the agent's verdict on this change (Ctrl-C stops waiting, exit 130; the deploy goes on in the agent)" },
      TIMEOUT,
      JSON_OUTCOME,
    ],
    exits: [
      { code: 0, meaning: 'deployed and healthy (or already live; for an app held by relink stop: its links switched, the app left stopped; without --wait: written)' },
      { code: 1, meaning: 'refused, rolled back, failed, superseded, no agent running, or no verdict in time' },
      ...STOPPED_WAITING,
    ],
    ownsStop: true,
    load: async (): Loaded => (await import('./deploy.js')).deployCommand,
  },
  {
    name: 'rollback',
    summary: 'go back to the previous known-good release (or --to RELEASE)',
    description: `
Go back to the previous release, or to the named one, by rewriting
current.conf exactly as relink deploy does. The previous release is the
newest one the journal records as deployed, other than what runs now (the
app's links; where a link is missing, the last known-good release): the
same one \`relink releases\` flags as previous and prune keeps.`,
    options: [
      CONFIG,
      APP,
      { name: 'to', type: 'string', value: 'RELEASE', help: 'this release instead (e.g. 1.0 for app.1.0 + cfg.1.0)' },
      { name: 'wait', type: 'boolean', help: "wait for the agent's verdict (Ctrl-C stops waiting, exit 130; the rollback goes on in the agent)" },
      TIMEOUT,
      JSON_OUTCOME,
    ],
    exits: [
      { code: 0, meaning: 'rolled back and healthy (or already live; without --wait: written)' },
      { code: 1, meaning: 'refused, failed, nothing to roll back to, no agent running, or no verdict in time' },
      ...STOPPED_WAITING,
    ],
    ownsStop: true,
    load: async (): Loaded => (await import('./rollback.js')).rollbackCommand,
  },
  operate('stop', 'stop the app and keep it stopped (across agent restarts) until relink start', `
Stop the app: every generation gets the app's stop.signal, SIGKILL after
stop.timeoutMs. Supervision leaves it stopped, across agent restarts, until
relink start. A deploy meanwhile switches the links and leaves it stopped.`, 'stop.timeoutMs + 30', 'stopped'),
  operate('start', 'start the app from its current links (also out of "fatal" or a stop)', `
Start the app from its current links (not current.conf), judged like a
deploy (settle time, health probe). Also the way out of "fatal" (a crash
loop) and of relink stop. An app already running is left as it is.`, '120', 'running and healthy'),
  operate('restart', "a new generation the reload strategy's way, with the config's current env, command, user, limits", `
Start a new generation of the app the way its reload.strategy replaces one
("socket": beside the old one on the held sockets, nothing refused), with
the config's current env, command, user and limits. Under "reexec",
"inplace" and "upgrade" the app would inherit the old ones: when relink
status says "restart to apply", the app is stopped and started instead.
Judged like a deploy; a failure is never rolled back (same release).`, '120', 'running and healthy'),
  {
    name: 'reload',
    summary: 'have the running agent re-read its config (SIGHUP); an invalid file changes nothing',
    description: `
Have the running agent re-read its config file (SIGHUP to it, as systemctl
reload relink sends). The file is checked here first: an invalid one is
refused with its problems and the agent is not asked. The agent checks it
again: a file it cannot load, or one that moves "stateDir", changes nothing
and the running config stays. Otherwise apps added are started, apps removed
are no longer managed and left running, and an app whose settings changed
gets them for its next generation (relink status: "restart to apply";
relink restart applies them now). Unchanged apps are not touched.`,
    options: [
      CONFIG,
      { name: 'wait', type: 'boolean', help: 'wait until the agent has reloaded and say what changed' },
      timeout('30'),
      { name: 'json', type: 'boolean', help: 'one JSON object: {"outcome", "message", "config"?}' },
    ],
    exits: [
      { code: 0, meaning: 'reloaded (without --wait: asked)' },
      { code: 1, meaning: 'invalid config, no agent running, the agent refused the file, or no answer in time' },
      ...STOPPED_WAITING,
    ],
    ownsStop: true,
    load: async (): Loaded => (await import('./reload.js')).reloadCommand,
  },
  {
    name: 'logs',
    summary: 'print an app\'s output (the journal or its rotated log files); -f follows it',
    description: `
The app's own output (its stdout and stderr), from wherever it goes:
- the journal, when the app's config leaves "logFile" unset and the host
  runs journald: read with journalctl -t NAME (only lines written by the
  app's user), stdout and stderr interleaved as written; reading the
  system journal takes root or the group systemd-journal (or adm);
- else its log file and the rotated ones (app.log.N .. app.log.1, app.log),
  read back to back, oldest first: a line a rotation cut in two is whole.
  -f never prints a line twice; output rotated away before it was read
  (the app writing faster than the agent rotates) is skipped, and said on
  stderr with its size. A process of the app writing to its log file
  deleted or renamed under it is noted on stderr (relink restart ends it).
Lines are printed as the app wrote them (journalctl -o cat).`,
    positionals: [{ name: 'APP', help: 'the app (or --app NAME; needed when the config has several)' }],
    options: [
      CONFIG,
      { name: 'app', type: 'string', value: 'NAME', help: 'the app (or as the one argument; needed when the config has several)' },
      { name: 'lines', short: 'n', type: 'string', value: 'N', help: 'the last N lines (default 10; with --since, every line since)', parser: LINES },
      { name: 'follow', short: 'f', type: 'boolean', help: 'go on printing what the app writes, across rotations and new generations (deploys, restarts), until Ctrl-C' },
      {
        name: 'since', type: 'string', value: 'TIME',
        help: 'output since TIME: 2026-11-30T14:05 (local time, or with Z or an offset), 2026-11-30 (local midnight), @EPOCH_SECONDS, or 90s, 10m, 2h, 3d ago (-10m too, as journalctl writes it). The journal has a time per line; files do not, so for files whole files are shown: those written to at or after TIME (each file\'s modification time)',
      },
    ],
    exits: [
      { code: 0, meaning: 'success (Ctrl-C ends -f with 0)' },
      { code: 1, meaning: 'the config, the files or the journal cannot be read' },
    ],
    ownsStop: true,
    load: async (): Loaded => (await import('./logs.js')).logsCommand,
  },
  {
    name: 'demo',
    summary: 'run the agent on a self-contained demo (deploy, refusal, rollback, an automatic rollback)',
    description: `
Run the agent on a self-contained demo in a temp folder: three releases of
a small web app (built from C with the system's cc, inside that folder), a
deploy, a refused typo, a release that fails its health check and is rolled
back automatically, and a rollback by hand; then the agent stays up so you
can edit current.conf yourself. Ctrl-C stops it and removes the folder.`,
    options: [
      { name: 'exit', type: 'boolean', help: 'stop after the scripted tour' },
      { name: 'port', type: 'string', value: 'N', help: "the demo app's port on 127.0.0.1 (default: a free one)", parser: PORT },
    ],
    exits: [
      { code: 0, meaning: 'the demo ran and its folder is removed (after the tour with --exit, else on Ctrl-C)' },
      { code: 1, meaning: 'it failed (no C compiler, for one)' },
    ],
    ownsStop: true,
    load: async (): Loaded => (await import('./demo.js')).demoCommand,
  },
  {
    name: 'schema',
    summary: 'print the JSON Schema of the agent config, for editors',
    description: `
Print the JSON Schema of the agent config (draft-07), generated from the
schema the agent validates with: every key with its description, default
and bounds. Editors use it to check and complete a config that names it:

  {"$schema": "/usr/lib/node_modules/relink/config.schema.json", ...}

The package ships the same text as config.schema.json (\`npm run schema\`
regenerates it from a checkout). The agent itself ignores "$schema".`,
    options: [],
    exits: [{ code: 0, meaning: 'printed' }],
    load: async (): Loaded => (await import('./schema.js')).schemaCommand,
  },
] as const satisfies readonly CommandSpec[];

export const COMMANDS: readonly CommandSpec[] = TABLE;

export type CommandName = (typeof TABLE)[number]['name'];
/** The spec of the command named N, as written (literal names, typed parsers). */
export type SpecOf<N extends CommandName> = Extract<(typeof TABLE)[number], { readonly name: N }>;

/** The command named `name` (own entries only: `relink toString` is unknown). */
export function commandNamed(name: string): CommandSpec | undefined {
  return COMMANDS.find((c) => c.name === name);
}
