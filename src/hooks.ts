/**
 * Deploy hooks, as Capistrano and CodeDeploy users expect them: optional
 * commands of an app, run at three points of a deploy, each as the app runs
 * (src/launch.ts planCommand: its user, groups, limits and environment, in
 * its folder), with the journal entry on stdin as JSON and a timeout:
 *
 * - `beforeSwitch`: after validation and the preflight, before the links
 *   are switched. A non-zero exit (or the timeout) refuses the deploy
 *   (HOOK_FAILED), as the preflight does; nothing is switched.
 * - `afterDeploy`, `afterRollback`: once a `deployed` or `rolled_back`
 *   verdict is journaled. Their exit is logged and changes nothing. They run
 *   outside the app's pass, so supervision goes on meanwhile; the next
 *   deploy of the same app waits for one still running (at most its
 *   timeout), so an app's hooks run one at a time, in the order of its
 *   deploys. Another app never waits for them.
 *
 * A hook is not one of the app's processes: it does not carry the lineage
 * marker (src/proc.ts MARKER), so the agent never takes it for the app.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { runCommand, type CommandResult } from './command.js';
import type { AppConfig } from './config.js';
import type { Release } from './current.js';
import type { Effects } from './effects.js';
import { describeError, RelinkError } from './errors.js';
import type { Action, HistoryEntry, Outcome } from './history.js';
import { agentIdentity, planCommand } from './launch.js';
import { MARKER } from './proc.js';
import { entryFor, type ReadAttempt } from './record.js';

export const HOOK_NAMES = ['beforeSwitch', 'afterDeploy', 'afterRollback'] as const;
export type HookName = (typeof HOOK_NAMES)[number];

/**
 * What a hook reads on stdin: the journal entry (src/history.ts). For
 * beforeSwitch, which comes before any verdict, the entry as it would be
 * journaled with `outcome` null: `to` the release asked for, `from` where
 * the links point, `action` what the deploy is about to do.
 */
export type HookEntry = Omit<HistoryEntry, 'outcome'> & { readonly outcome: Outcome | null };

/** A hook at its timeout (or when the agent stops) gets SIGTERM, then SIGKILL this long after (ms): time to clean up. */
export const HOOK_KILL_GRACE_MS = 2_000;

/** The entry beforeSwitch reads: the attempt as it would be journaled, no verdict yet. */
export function pendingEntry(app: AppConfig, now: number, attempt: ReadAttempt, action: Action, release: Release): HookEntry {
  return { ...entryFor(app.name, now, attempt, 'deployed', action, release, undefined, undefined, { strategy: app.reload.strategy }), outcome: null };
}

/**
 * The variables a hook gets besides the app's environment. RELINK_APP and
 * RELINK_APP_DIR, the marker of the app's own processes, are removed: a
 * hook carrying them would be taken for one of them.
 */
export function hookEnv(app: AppConfig, name: HookName, entry: HookEntry): Record<string, string | undefined> {
  return {
    [MARKER.name]: undefined,
    [MARKER.dir]: undefined,
    RELINK_HOOK: name,
    RELINK_APP_NAME: app.name,
    RELINK_OUTCOME: entry.outcome ?? undefined,
    RELINK_RELEASE_BIN: entry.to.bin ?? undefined,
    RELINK_RELEASE_CFG: entry.to.cfg ?? undefined,
  };
}

/** Why `file` (a hook's argv[0]) cannot be run from `cwd` with `envPath`, or undefined when it exists. */
async function missingProgram(file: string, cwd: string, envPath: string | undefined): Promise<string | undefined> {
  const isFile = (p: string) => stat(p).then((st) => st.isFile(), () => false);
  if (file.includes('/')) {
    const p = path.resolve(cwd, file);
    return (await isFile(p)) ? undefined : `${p} does not exist or is not a file`;
  }
  // As execvp searches: the PATH the hook itself gets.
  const dirs = (envPath ?? '').split(':').filter((d) => d !== '');
  for (const d of dirs) if (await isFile(path.resolve(cwd, d, file))) return undefined;
  return `${file} is in no folder of PATH (${dirs.join(':')})`;
}

/**
 * Run the app's hook `name`, `entry` on its stdin as JSON, as the app runs;
 * undefined when the app has none. `signal` ends it (SIGTERM, then SIGKILL
 * HOOK_KILL_GRACE_MS later), as the timeout does. Throws HOOK_FAILED when
 * its program does not exist (naming the key), and what planCommand throws
 * (ROOT_REFUSED, USER_UNKNOWN, ...).
 */
export async function runHook(app: AppConfig, name: HookName, entry: HookEntry, signal?: AbortSignal): Promise<CommandResult | undefined> {
  const argv = app.hooks[name];
  if (argv === undefined) return undefined;
  const plan = await planCommand(app, await agentIdentity(), argv);
  // Last, so the app's own "env" cannot change them.
  const env = { ...plan.env, ...hookEnv(app, name, entry) };
  const missing = await missingProgram(argv[0]!, app.dir, env['PATH']);
  if (missing !== undefined) {
    throw new RelinkError('HOOK_FAILED', `"hooks.${name}": must name a program that exists (found: ${missing})`,
      { key: `hooks.${name}`, rule: 'must name a program that exists', found: missing });
  }
  return runCommand({ ...plan, env }, { cwd: app.dir, timeoutMs: app.hooks.timeoutMs, signal, input: `${JSON.stringify(entry)}\n`, killGraceMs: HOOK_KILL_GRACE_MS });
}

/** The refusal for a beforeSwitch that did not exit 0 in time (HOOK_FAILED, with its status and its last output). */
export function hookRefusal(app: AppConfig, entry: HookEntry, r: CommandResult): RelinkError {
  const cmd = app.hooks.beforeSwitch?.join(' ') ?? 'beforeSwitch';
  const status = r.timedOut === true ? `${r.status} (hooks.timeoutMs)` : r.status;
  return new RelinkError('HOOK_FAILED', `hook beforeSwitch ${JSON.stringify(cmd)} refused ${entry.to.bin ?? ''} + ${entry.to.cfg ?? ''}: ${status}${r.output ? `: ${r.output}` : ''}`,
    { key: 'hooks.beforeSwitch', rule: 'must exit 0 within hooks.timeoutMs', found: status });
}

/**
 * One app's hooks as its orchestrator (src/app.ts) uses them: beforeSwitch
 * within the pass, the after-hooks queued behind it, one at a time.
 */
export class DeployHooks {
  readonly #app: AppConfig;
  readonly #fx: Pick<Effects, 'hook' | 'now'>;
  readonly #log: Logger;
  /** The after-hooks queued or running, in order; never rejects. */
  #tail: Promise<void> = Promise.resolve();
  /** After-hooks queued or running, and the name of the one running. */
  #pending = 0;
  #running: HookName | undefined;
  readonly #abort = new AbortController();

  constructor(app: AppConfig, fx: Pick<Effects, 'hook' | 'now'>, log: Logger) {
    this.#app = app;
    this.#fx = fx;
    this.#log = log;
  }

  /**
   * Run beforeSwitch for the deploy `entry` describes (pendingEntry), after
   * any after-hook of an earlier deploy has ended. True: the deploy goes
   * on (passed, or none configured); false: `signal` fired (the agent is
   * stopping) and nothing was judged. Throws HOOK_FAILED (the refusal) and
   * what runHook throws.
   */
  async beforeSwitch(entry: HookEntry, signal: AbortSignal): Promise<boolean> {
    await this.idle(signal);
    if (signal.aborted) return false;
    if (this.#app.hooks.beforeSwitch === undefined) return true;
    const started = this.#fx.now();
    const r = await this.#fx.hook('beforeSwitch', entry, signal);
    if (r === undefined) return true;
    if (r.aborted === true) return false;
    if (!r.ok) throw hookRefusal(this.#app, entry, r);
    this.#log.info({ hook: 'beforeSwitch', status: r.status, durationMs: this.#fx.now() - started, ...(r.output ? { output: r.output } : {}) }, `hook beforeSwitch: ${r.status}`);
    return true;
  }

  /**
   * A verdict was journaled: afterDeploy for a deploy's `deployed`,
   * afterRollback for `rolled_back` (nothing for the other outcomes, nor for
   * relink start and restart), run in the background after any earlier
   * one. Never throws; how it ended is logged.
   */
  after(entry: HistoryEntry): void {
    // relink start and restart (an entry answering a `command`) are not deploys.
    if (entry.command !== undefined) return;
    const name: HookName | undefined = entry.outcome === 'deployed' ? 'afterDeploy' : entry.outcome === 'rolled_back' ? 'afterRollback' : undefined;
    if (name === undefined || this.#app.hooks[name] === undefined) return;
    this.#pending += 1;
    this.#tail = this.#tail.then(() => this.#runAfter(name, entry)).finally(() => {
      this.#pending -= 1;
    });
  }

  async #runAfter(name: HookName, entry: HistoryEntry): Promise<void> {
    if (this.#abort.signal.aborted) {
      this.#log.warn({ hook: name }, `hook ${name} not run: the agent is stopping`);
      return;
    }
    this.#running = name;
    const started = this.#fx.now();
    try {
      const r = await this.#fx.hook(name, entry, this.#abort.signal);
      if (r === undefined) return;
      const fields = { hook: name, status: r.status, durationMs: this.#fx.now() - started, ...(r.output ? { output: r.output } : {}) };
      if (r.aborted === true) this.#log.warn(fields, `hook ${name} stopped: the agent is stopping`);
      else if (r.ok) this.#log.info(fields, `hook ${name}: ${r.status}`);
      else this.#log.warn({ ...fields, code: 'HOOK_FAILED' }, `hook ${name} failed (${r.status}${r.timedOut === true ? ', hooks.timeoutMs' : ''}); the verdict stands (${entry.outcome})`);
    } catch (err) {
      const { code, message } = describeError(err);
      this.#log.error({ hook: name, code }, `hook ${name} could not run: ${message}; the verdict stands (${entry.outcome})`);
    } finally {
      this.#running = undefined;
    }
  }

  /** Resolves once no after-hook runs or waits; at once when `signal` fires. */
  async idle(signal?: AbortSignal): Promise<void> {
    const stopped = () => signal?.aborted === true;
    if (this.#pending === 0 || stopped()) return;
    const name = this.#running === undefined ? 'an after-hook' : `hook ${this.#running}`;
    this.#log.info({ hook: this.#running }, `waiting for ${name} to end before the next deploy (at most hooks.timeoutMs, ${this.#app.hooks.timeoutMs} ms)`);
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<void>((resolve) => {
      onAbort = resolve;
      signal?.addEventListener('abort', onAbort, { once: true });
    });
    try {
      while (this.#pending > 0 && !stopped()) await Promise.race([this.#tail, aborted]);
    } finally {
      if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
    }
  }

  /** The agent is stopping: a running after-hook is ended (SIGTERM, SIGKILL HOOK_KILL_GRACE_MS later), queued ones are not run. Resolves once none runs; the same any number of times. */
  async close(): Promise<void> {
    this.#abort.abort();
    while (this.#pending > 0) await this.#tail;
  }
}
