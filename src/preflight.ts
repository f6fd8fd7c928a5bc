/**
 * The optional preflight: a command run against the candidate release
 * before anything is switched (`nginx -t -c {cfg}`, `./app --check`). A
 * non-zero exit refuses the deploy with the command's output in the reason.
 *
 * It runs exactly as the app runs (src/launch.ts planCommand): the app's
 * user, groups, limits and environment, in the app's folder. Run as root, an
 * uploaded binary would have had root's rights, and whatever it created
 * (nginx -t makes its log and temp folders) would have been root's, so that
 * the app's own start then failed on them (issue 9, item 1).
 */
import { spawn } from 'node:child_process';
import type { AppConfig } from './config.js';
import type { Release } from './current.js';
import { RelinkError } from './errors.js';
import { agentIdentity, planCommand, type LaunchPlan } from './launch.js';

export interface PreflightResult {
  readonly ok: boolean;
  /** "exit 1", "killed after 30000 ms", "killed by SIGSEGV", "ENOENT", "abandoned: ...". */
  readonly status: string;
  /** The last part of stdout+stderr, trimmed. */
  readonly output: string;
  /** Stopped because the caller's AbortSignal fired (the agent is stopping): no verdict. */
  readonly aborted?: boolean;
}

/** Output kept for the reason; a preflight that prints megabytes is cut. */
const MAX_OUTPUT = 4096;

export function expandArgs(argv: readonly string[], files: { bin: string; cfg: string }): string[] {
  return argv.map((a) => a.replaceAll('{bin}', files.bin).replaceAll('{cfg}', files.cfg));
}

export interface PreflightOptions {
  /** Working folder: the app's `dir`. */
  readonly cwd: string;
  /** Killed (with everything it started) after this long (ms). */
  readonly timeoutMs: number;
  /** Kills it at once, e.g. when the agent is told to stop. */
  readonly signal?: AbortSignal | undefined;
}

/**
 * Run `plan` (from planCommand) and report how it ended. Never throws: a
 * command that cannot start is a failed preflight with the errno as status.
 *
 * It runs in a process group of its own, and the whole group is killed on
 * timeout, on abort and once the command itself has exited: a shell script
 * that left a background child would otherwise hold the output pipes open
 * (and run on, as the app's user) after the verdict.
 */
export function runPreflight(plan: LaunchPlan, opts: PreflightOptions): Promise<PreflightResult> {
  return new Promise((resolve) => {
    if (opts.signal?.aborted) {
      resolve({ ok: false, status: 'abandoned: the agent is stopping', output: '', aborted: true });
      return;
    }
    let output = '';
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-MAX_OUTPUT);
    };
    const child = spawn(plan.file, [...plan.args], { cwd: opts.cwd, env: plan.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let ended: string | undefined;
    let aborted = false;
    const killGroup = () => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // the group is gone already
      }
    };
    const timer = setTimeout(() => {
      ended = `killed after ${opts.timeoutMs} ms`;
      killGroup();
    }, opts.timeoutMs);
    const onAbort = () => {
      ended = 'abandoned: the agent is stopping';
      aborted = true;
      killGroup();
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const done = () => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.once('error', (err: NodeJS.ErrnoException) => {
      done();
      resolve({ ok: false, status: err.code ?? err.message, output: '' });
    });
    child.once('exit', () => killGroup());
    child.once('close', (code, signal) => {
      done();
      const status = ended ?? (signal !== null ? `killed by ${signal}` : `exit ${code}`);
      resolve({ ok: code === 0 && ended === undefined, status, output: output.trim(), ...(aborted ? { aborted } : {}) });
    });
  });
}

/**
 * The app's preflight on `release`, run as the app runs (planCommand: its
 * user, groups, limits, environment, in its `dir`); undefined when the app
 * has none. The agent and `relink validate` / `deploy` run it the same way.
 * Throws what planCommand throws (ROOT_REFUSED, USER_UNKNOWN, ...).
 */
export async function preflightRelease(app: AppConfig, release: Release, signal?: AbortSignal): Promise<PreflightResult | undefined> {
  if (app.preflight === undefined) return undefined;
  const plan = await planCommand(app, await agentIdentity(), expandArgs(app.preflight.command, release));
  return runPreflight(plan, { cwd: app.dir, timeoutMs: app.preflight.timeoutMs, signal });
}

/** The refusal for a preflight that did not exit 0 (PREFLIGHT_FAILED, with its status and output). */
export function preflightRefusal(app: AppConfig, release: Release, r: PreflightResult): RelinkError {
  const cmd = app.preflight?.command.join(' ') ?? 'preflight';
  return new RelinkError('PREFLIGHT_FAILED', `preflight ${JSON.stringify(cmd)} refused ${release.bin} + ${release.cfg}: ${r.status}${r.output ? `: ${r.output}` : ''}`,
    { key: 'preflight.command', rule: 'must exit 0 for the candidate release', found: r.status });
}
