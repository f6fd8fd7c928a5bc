/**
 * The optional preflight: a command run against the candidate release
 * before anything is switched (`nginx -t -c {cfg}`, `./app --check`). A
 * non-zero exit refuses the deploy with the command's output in the reason.
 */
import { spawn } from 'node:child_process';

export interface PreflightResult {
  readonly ok: boolean;
  /** "exit 1", "killed by SIGKILL after 30000 ms", "ENOENT". */
  readonly status: string;
  /** The last part of stdout+stderr, trimmed. */
  readonly output: string;
}

/** Output kept for the reason; a preflight that prints megabytes is cut. */
const MAX_OUTPUT = 4096;

export function expandArgs(argv: readonly string[], files: { bin: string; cfg: string }): string[] {
  return argv.map((a) => a.replaceAll('{bin}', files.bin).replaceAll('{cfg}', files.cfg));
}

export function runPreflight(argv: readonly string[], opts: { cwd: string; env: Record<string, string | undefined>; timeoutMs: number }): Promise<PreflightResult> {
  return new Promise((resolve) => {
    const [file, ...args] = argv as [string, ...string[]];
    let output = '';
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-MAX_OUTPUT);
    };
    const child = spawn(file, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ ok: false, status: err.code ?? err.message, output: '' });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const status = timedOut ? `killed after ${opts.timeoutMs} ms` : signal !== null ? `killed by ${signal}` : `exit ${code}`;
      resolve({ ok: code === 0 && !timedOut, status, output: output.trim() });
    });
  });
}
