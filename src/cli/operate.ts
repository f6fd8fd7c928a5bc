/**
 * `relink stop | start | restart APP`: an operator's request to the running
 * agent (src/requests.ts), answered by a journal entry carrying its id;
 * `--wait` waits for that entry as `deploy --wait` waits for its verdict,
 * with the same exit codes.
 */
import type { AgentConfig, AppConfig } from '../config.js';
import { RelinkError } from '../errors.js';
import type { Command as Verb, HistoryEntry } from '../history.js';
import { JournalTail } from '../journalTail.js';
import { writeRequest } from '../requests.js';
import { runningAgent } from '../state.js';
import { EXIT, loadFor, parse, selectApp, UsageError, type IO } from './io.js';
import type { Command } from './main.js';
import { parseTimeout, signalExitCode } from './request.js';
import { damageWarner } from './warn.js';

const WAIT_POLL_MS = 50;

const WHAT: Record<Verb, string> = {
  stop: `Stop the app: every generation gets the app's stop.signal, SIGKILL after
stop.timeoutMs. Supervision leaves it stopped, across agent restarts, until
relink start. A deploy meanwhile switches the links and leaves it stopped.`,
  start: `Start the app from its current links (not current.conf), judged like a
deploy (settle time, health probe). Also the way out of "fatal" (a crash
loop) and of relink stop. An app already running is left as it is.`,
  restart: `Start a new generation of the app the way its reload.strategy replaces one
("socket": beside the old one on the held sockets, nothing refused), with
the config's current env, command, user and limits. Under "reexec",
"inplace" and "upgrade" the app would inherit the old ones: when relink
status says "restart to apply", the app is stopped and started instead.
Judged like a deploy; a failure is never rolled back (same release).`,
};

function help(verb: Verb): string {
  return `Usage: relink ${verb} [--config FILE] (APP | --app NAME) [--wait] [--timeout S] [--json]

${WHAT[verb]}

The request goes to the running agent (a file in its state folder, answered
by an entry of the app's journal: relink history); root only.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  --app NAME      the app (or as the one argument; needed when the config has several)
  --wait          wait for the agent's answer (Ctrl-C stops waiting, exit 130;
                  the agent goes on)
  --timeout S     how long --wait waits (default ${verb === 'stop' ? 'stop.timeoutMs + 30' : '120'})
  --json          one JSON object: {"outcome", "message", "entry"?}
  -h, --help      this text

Exit codes: 0 ${verb === 'stop' ? 'stopped' : 'running and healthy'} (without --wait: asked), 1 failed, no agent
running, or no answer in time; 2 usage error; 130 (SIGINT) or 143 (SIGTERM)
stopped waiting.
`;
}

function operate(verb: Verb): Command {
  return {
    async run(args: string[], io: IO, stop: Promise<string>): Promise<number> {
      const { values, positionals } = parse(args, {
        config: { type: 'string', short: 'c' }, app: { type: 'string' }, wait: { type: 'boolean' }, timeout: { type: 'string' }, json: { type: 'boolean' },
      }, true);
      if (values.help) {
        io.stdout(help(verb));
        return EXIT.ok;
      }
      if (positionals.length > 1) throw new UsageError(`expected one APP, got ${positionals.length}: ${positionals.join(' ')}`);
      if (positionals.length === 1 && values.app !== undefined && values.app !== positionals[0]) throw new UsageError(`the app is named twice: ${positionals[0]} and --app ${values.app}`);
      const config = await loadFor(values.config, io);
      const app = selectApp(config, positionals[0] ?? values.app);
      const timeoutMs = parseTimeout(values.timeout, verb === 'stop' ? app.stop.timeoutMs / 1000 + 30 : 120);
      return ask(config, app, verb, { wait: values.wait === true, timeoutMs, json: values.json === true, stop }, io);
    },
  };
}

export const stopCommand = operate('stop');
export const startCommand = operate('start');
export const restartCommand = operate('restart');

interface AskOptions {
  readonly wait: boolean;
  readonly timeoutMs: number;
  readonly json: boolean;
  readonly stop: Promise<string>;
}

async function ask(config: AgentConfig, app: AppConfig, verb: Verb, opts: AskOptions, io: IO): Promise<number> {
  const onDamaged = damageWarner(io, verb);
  if ((await runningAgent(config.stateDir, { onDamaged })) === undefined) {
    throw new RelinkError('NO_AGENT', `no relink agent is running for ${config.file} (stateDir ${config.stateDir}); start it (systemctl start relink) and try again`,
      { file: config.file, rule: 'an agent must be running to carry out the request' });
  }
  // Where the journal ends now: the answer is among what is appended after.
  const tail = opts.wait ? await JournalTail.open(config.stateDir, app.name, { onDamaged }) : undefined;
  const req = await writeRequest(config.stateDir, app.name, verb);
  if (tail === undefined) {
    return report(io, opts, { outcome: 'requested', message: `${app.name}: relink ${verb} asked (request ${req.id}); the agent answers in the journal (relink history --app ${app.name})` }, EXIT.ok);
  }
  let stopped: string | undefined;
  void opts.stop.then((signal) => { stopped = signal; });
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    if (stopped !== undefined) {
      return report(io, opts, { outcome: 'interrupted', message: `${app.name}: stopped waiting (${stopped}); relink ${verb} goes on in the agent: follow it with relink status --app ${app.name}` }, signalExitCode(stopped));
    }
    const answer = (await tail.read()).find((e) => e.request === req.id);
    if (answer !== undefined) return verdict(io, opts, app, verb, answer);
    if (Date.now() > deadline) {
      throw new RelinkError('WAIT_TIMEOUT', `${app.name}: no answer from the agent to relink ${verb} within ${opts.timeoutMs / 1000} s; it may still be working on it (relink status)`,
        { rule: 'the agent answers every request in the journal', found: 'no journal entry yet' });
    }
    await pause(WAIT_POLL_MS, opts.stop);
  }
}

function verdict(io: IO, opts: AskOptions, app: AppConfig, verb: Verb, e: HistoryEntry): number {
  const ok = verb === 'stop' ? e.outcome === 'stopped' : e.outcome === 'deployed';
  let message: string;
  if (!ok) message = `${app.name}: relink ${verb} ${e.outcome}: ${e.reason ?? ''}`;
  else if (verb === 'stop') message = `${app.name}: stopped${e.pidBefore === null ? ' (it was not running)' : ` (pid ${e.pidBefore})`}; it stays stopped until relink start`;
  else if (e.action === 'none') message = `${app.name}: already running (pid ${e.pidAfter ?? '-'})`;
  else message = `${app.name}: ${verb === 'start' ? 'started' : 'restarted'} and healthy (${e.action}, pid ${e.pidBefore ?? '-'} -> ${e.pidAfter ?? '-'}, ${e.durationMs} ms)`;
  return report(io, opts, { outcome: e.outcome, entry: e, message }, ok ? EXIT.ok : EXIT.failed);
}

function report(io: IO, opts: { readonly json: boolean }, r: { outcome: string; message: string; entry?: HistoryEntry }, code: number): number {
  if (opts.json) io.stdout(`${JSON.stringify({ outcome: r.outcome, message: r.message, ...(r.entry ? { entry: r.entry } : {}) })}\n`);
  else (code === EXIT.ok ? io.stdout : io.stderr)(`${r.message}\n`);
  return code;
}

/** `ms`, or less when `stop` resolves first; leaves no timer behind. */
async function pause(ms: number, stop: Promise<string>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([new Promise((resolve) => { timer = setTimeout(resolve, ms); }), stop]);
  clearTimeout(timer);
}
