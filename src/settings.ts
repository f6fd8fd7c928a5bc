/**
 * What a generation is started with that only a new start changes: its
 * environment, command line, user and group, resource limits, the
 * sockets it is passed and where its output goes (issue 12). A re-exec
 * or an in-place reload inherits them from the process it replaces, so a
 * config edit reaches the app only when the agent starts a new generation
 * (a start, `relink restart`, a deploy under "socket" or "restart").
 *
 * Kept as one digest per key, never the values: env holds secrets, and the
 * state file is readable by the app's group.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { DEFAULT_LOG_FILE, type AppConfig } from './config.js';

/** sha256 of a value, first 16 hex digits: enough to tell a change, nothing to read back. */
function digest(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value ?? null)).digest('hex').slice(0, 16);
}

/**
 * The launch settings of `app` by key: "command", "user", "group" (when
 * set), "sockets" (when any: the sockets a generation is started on, in
 * LISTEN_FDS order), "env.NAME" per variable, "limits.nofile" /
 * "limits.nproc" / "limits.core" per limit set.
 */
export function launchSettings(app: Pick<AppConfig, 'command' | 'user' | 'group' | 'sockets' | 'env' | 'limits' | 'dir' | 'logFile' | 'log'>): Record<string, string> {
  const out: Record<string, string> = { command: digest(app.command), user: digest(app.user ?? null) };
  // Where the output goes is fixed at start (the app's stdout and stderr):
  // a running generation keeps writing to the old file, which is no longer
  // rotated. Absent for the default file, so that a generation started
  // before this key existed is not reported changed.
  if (app.log.journal) out['logFile'] = digest('journal');
  else if (app.logFile !== path.resolve(app.dir, DEFAULT_LOG_FILE)) out['logFile'] = digest(app.logFile);
  if ((app.group ?? null) !== null) out['group'] = digest(app.group);
  if (app.sockets.length > 0) out['sockets'] = digest(app.sockets);
  for (const [k, v] of Object.entries(app.env)) out[`env.${k}`] = digest(v);
  for (const [k, v] of Object.entries(app.limits)) if (v !== undefined) out[`limits.${k}`] = digest(v);
  return out;
}

/** The keys whose value differs between what a generation was started with and `now` (added and removed keys too), sorted. */
export function changedSettings(startedWith: Readonly<Record<string, string>>, now: Readonly<Record<string, string>>): string[] {
  const keys = new Set([...Object.keys(startedWith), ...Object.keys(now)]);
  return [...keys].filter((k) => startedWith[k] !== now[k]).sort();
}
