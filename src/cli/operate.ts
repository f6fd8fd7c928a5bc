/**
 * `relink stop | start | restart APP`: an operator's request to the running
 * agent (src/requests.ts), answered by a journal entry carrying its id;
 * `--wait` waits for that entry as `deploy --wait` waits for its verdict,
 * with the same exit codes.
 */
import { access, constants as fsConstants } from 'node:fs/promises';
import type { AgentConfig, AppConfig } from '../config.js';
import { isErrno, RelinkError } from '../errors.js';
import type { Command as Verb, HistoryEntry } from '../history.js';
import { JournalTail } from '../journalTail.js';
import { REQUEST_TTL_MS, requestsDir, writeRequest } from '../requests.js';
import { readAppState, runningAgent } from '../state.js';
import { DEFAULT_WAIT_S, type SpecOf } from './commands.js';
import { EXIT, loadFor, selectApp, UsageError, type IO } from './io.js';
import { signalExitCode } from './request.js';
import type { Command } from './spec.js';
import { damageWarner } from './warn.js';

const WAIT_POLL_MS = 50;

/** The three commands differ in their words (src/cli/commands.ts) and in stop's default --timeout. */
function operate(verb: Verb): Command<SpecOf<'stop' | 'start' | 'restart'>> {
  return {
    async run({ values, positionals }, io, stop) {
      const named = positionals.APP;
      if (named !== undefined && values.app !== undefined && values.app !== named) throw new UsageError(`the app is named twice: ${named} and --app ${values.app}`);
      const config = await loadFor(values.config, io);
      const app = selectApp(config, named ?? values.app);
      const timeoutMs = (values.timeout ?? (verb === 'stop' ? app.stop.timeoutMs / 1000 + 30 : DEFAULT_WAIT_S)) * 1000;
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
  const notRoot = (err: unknown): never => {
    if (isErrno(err, 'EACCES') || isErrno(err, 'EPERM')) {
      throw new RelinkError('NOT_ROOT', `only root may ask the agent (${requestsDir(config.stateDir, app.name)} is root's): run it with sudo`,
        { rule: 'requests are root\'s', found: `uid ${process.getuid?.() ?? '?'}` });
    }
    throw err;
  };
  // Said before anything else fails on it (--wait reads the journal first, which this user may not read either).
  await access(requestsDir(config.stateDir, app.name), fsConstants.W_OK).catch((err: unknown) => (isErrno(err, 'ENOENT') ? undefined : notRoot(err)));
  // Where the journal ends now: the answer is among what is appended after.
  const tail = opts.wait ? await JournalTail.open(config.stateDir, app.name, { onDamaged }) : undefined;
  // With --wait it expires when the wait ends (withdrawn then if not taken yet): never carried out after the asker was told "no answer".
  const handle = await writeRequest(config.stateDir, app.name, verb, new Date(), opts.wait ? opts.timeoutMs : REQUEST_TTL_MS).catch(notRoot);
  const req = handle.request;
  if (tail === undefined) {
    return report(io, opts, { outcome: 'requested', message: `${app.name}: relink ${verb} asked (request ${req.id}); the agent answers in the journal (relink history --app ${app.name}); not taken within ${REQUEST_TTL_MS / 60_000} minutes, it is not carried out` }, EXIT.ok);
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
      const withdrawn = await handle.withdraw();
      // Why the agent may not have answered: an app it cannot manage now says why in its state.
      const saved = await readAppState(config.stateDir, app.name).catch(() => undefined);
      const why = saved?.state === 'error' && saved.problem != null ? `; the agent cannot manage ${app.name} now: ${saved.problem.message}` : '';
      throw new RelinkError('WAIT_TIMEOUT', withdrawn
        ? `${app.name}: no answer from the agent to relink ${verb} within ${opts.timeoutMs / 1000} s: the request is withdrawn, nothing was done${why}`
        : `${app.name}: no answer from the agent to relink ${verb} within ${opts.timeoutMs / 1000} s; it has taken the request and may still be working on it (relink status)${why}`,
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
