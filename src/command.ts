/**
 * A one-off command run on an app's behalf (its preflight, its deploy
 * hooks), planned by src/launch.ts planCommand so that it runs exactly as
 * the app runs: the app's user, groups, limits and environment, in its
 * folder. Here it is run: in a process group of its own, fed `input` on
 * stdin, its output kept up to a bound, ended at a timeout or when the
 * caller aborts, and never outliving its verdict.
 */
import { spawn } from 'node:child_process';
import type { LaunchPlan } from './launch.js';

export interface CommandResult {
  readonly ok: boolean;
  /** "exit 1", "killed after 30000 ms", "killed by SIGSEGV", "ENOENT (/usr/local/bin/page-me)" (it could not be started), "abandoned: ...". */
  readonly status: string;
  /** The last part of stdout+stderr (MAX_OUTPUT characters at most), trimmed. */
  readonly output: string;
  /** Stopped because the caller's AbortSignal fired (the agent is stopping): no verdict. */
  readonly aborted?: boolean;
  /** Ended by the timeout (`status` says after how long). */
  readonly timedOut?: boolean;
}

/** Output kept for a reason or a log line; a command that prints megabytes is cut to its end. */
export const MAX_OUTPUT = 4096;

/**
 * How long the output pipes may stay open after the command itself has
 * exited and its process group was killed (ms): a process that left the
 * group (setsid) and kept them would otherwise hold the verdict back for
 * as long as it runs.
 */
const CLOSE_AFTER_EXIT_MS = 1_000;

export interface CommandOptions {
  /** Working folder: the app's `dir`. */
  readonly cwd: string;
  /** Ended (with everything it started) after this long (ms). */
  readonly timeoutMs: number;
  /** Ends it at once, e.g. when the agent is told to stop. */
  readonly signal?: AbortSignal | undefined;
  /** Written to its stdin, which is then closed; default: nothing (it reads end of file at once). */
  readonly input?: string | undefined;
  /**
   * At the timeout or the abort, the group gets SIGTERM and then SIGKILL
   * this long after (ms), so that the command can clean up; 0 (the
   * default): SIGKILL at once.
   */
  readonly killGraceMs?: number;
}

/**
 * Run `plan` (from planCommand) and report how it ended. Never throws: a
 * command that cannot start is a failure with the errno as status.
 *
 * It runs in a process group of its own, and the whole group is killed on
 * timeout, on abort and once the command itself has exited: a shell script
 * that left a background child would otherwise hold the output pipes open
 * (and run on, as the app's user) after the verdict.
 */
export function runCommand(plan: Pick<LaunchPlan, 'file' | 'args' | 'env'>, opts: CommandOptions): Promise<CommandResult> {
  return new Promise((resolve) => {
    if (opts.signal?.aborted) {
      resolve({ ok: false, status: 'abandoned: the agent is stopping', output: '', aborted: true });
      return;
    }
    let output = '';
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-MAX_OUTPUT);
    };
    const child = spawn(plan.file, [...plan.args], { cwd: opts.cwd, env: plan.env, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    let ended: string | undefined;
    let aborted = false;
    let timedOut = false;
    const timers: NodeJS.Timeout[] = [];
    const killGroup = (signal: NodeJS.Signals) => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, signal);
      } catch {
        // the group is gone already
      }
    };
    const end = () => {
      const grace = opts.killGraceMs ?? 0;
      if (grace <= 0) {
        killGroup('SIGKILL');
        return;
      }
      killGroup('SIGTERM');
      timers.push(setTimeout(() => killGroup('SIGKILL'), grace));
    };
    timers.push(setTimeout(() => {
      ended = `killed after ${opts.timeoutMs} ms`;
      timedOut = true;
      end();
    }, opts.timeoutMs));
    const onAbort = () => {
      ended = 'abandoned: the agent is stopping';
      aborted = true;
      end();
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    let settled = false;
    const finish = (result: CommandResult) => {
      if (settled) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      opts.signal?.removeEventListener('abort', onAbort);
      resolve(result);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    // A command that never reads its stdin (or exits first) is fine: EPIPE is not its failure.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input);
    child.once('error', (err: NodeJS.ErrnoException) => {
      // Which program could not be run: "EACCES" alone left the reader to guess.
      finish({ ok: false, status: `${err.code ?? err.message} (${plan.file})`, output: '' });
    });
    const verdict = (code: number | null, signal: NodeJS.Signals | null): CommandResult => {
      const status = ended ?? (signal !== null ? `killed by ${signal}` : `exit ${code}`);
      return { ok: code === 0 && ended === undefined, status, output: output.trim(), ...(aborted ? { aborted } : {}), ...(timedOut ? { timedOut } : {}) };
    };
    child.once('exit', (code, signal) => {
      killGroup('SIGKILL');
      // Normally 'close' follows at once; a process outside the group holding the pipes must not hold the verdict.
      const late = setTimeout(() => {
        child.stdout.destroy();
        child.stderr.destroy();
        finish(verdict(code, signal));
      }, CLOSE_AFTER_EXIT_MS);
      late.unref();
      timers.push(late);
    });
    child.once('close', (code, signal) => finish(verdict(code, signal)));
  });
}
