/**
 * Starting the app. It runs detached in its own session so that it outlives
 * the agent: an agent restart or upgrade must never take the app down, and
 * the next agent adopts it (see proc.ts). Its stdout and stderr are appended
 * to its log file, opened by the agent and inherited by the app, so nothing
 * of the app's output passes through (or depends on) the agent.
 */
import { spawn } from 'node:child_process';
import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import type { AppConfig } from './config.js';
import { RelinkError } from './errors.js';

export interface Launched {
  readonly pid: number;
  /** Resolves with the exit code (or signal) if the app exits while this agent runs. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export async function launch(app: AppConfig): Promise<Launched> {
  await mkdir(path.dirname(app.logFile), { recursive: true });
  const log = await open(app.logFile, 'a', 0o640);
  try {
    const [file, ...args] = app.command as [string, ...string[]];
    const child = spawn(file, args, {
      cwd: app.dir,
      env: { ...process.env, ...app.env },
      detached: true,
      stdio: ['ignore', log.fd, log.fd],
    });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid as number));
      child.once('error', reject);
    }).catch((err: unknown) => {
      const e = err as NodeJS.ErrnoException;
      throw new RelinkError('START_FAILED', `${app.name}: could not start ${JSON.stringify(app.command)} in ${app.dir}: ${e.code ?? e.message}`,
        { key: 'command', rule: 'must start', found: e.code ?? e.message }, { cause: err });
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    // The agent must not wait for the app before it can exit itself.
    child.unref();
    return { pid, exited };
  } finally {
    // The child holds its own copy of the descriptor.
    await log.close();
  }
}
