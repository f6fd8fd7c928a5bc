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
import { runCommand, type CommandResult } from './command.js';
import type { AppConfig } from './config.js';
import type { Release } from './current.js';
import { RelinkError } from './errors.js';
import { agentIdentity, planCommand } from './launch.js';

/** How a preflight ended (src/command.ts). */
export type PreflightResult = CommandResult;

export function expandArgs(argv: readonly string[], files: { bin: string; cfg: string }): string[] {
  return argv.map((a) => a.replaceAll('{bin}', files.bin).replaceAll('{cfg}', files.cfg));
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
  // Killed outright at its timeout: a check has nothing to clean up.
  return runCommand(plan, { cwd: app.dir, timeoutMs: app.preflight.timeoutMs, signal });
}

/** The refusal for a preflight that did not exit 0 (PREFLIGHT_FAILED, with its status and output). */
export function preflightRefusal(app: AppConfig, release: Release, r: PreflightResult): RelinkError {
  const cmd = app.preflight?.command.join(' ') ?? 'preflight';
  return new RelinkError('PREFLIGHT_FAILED', `preflight ${JSON.stringify(cmd)} refused ${release.bin} + ${release.cfg}: ${r.status}${r.output ? `: ${r.output}` : ''}`,
    { key: 'preflight.command', rule: 'must exit 0 for the candidate release', found: r.status });
}
