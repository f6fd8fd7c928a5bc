/**
 * What the agent knows, on disk, for `relink status` and for the next agent:
 * <stateDir>/apps/<name>.json per app and <stateDir>/agent.json for the
 * running agent. Every write is temp + rename, so a reader never sees half.
 */
import { mkdir, readFile, unlink } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './atomicWrite.js';
import { isErrno, RelinkError } from './errors.js';
import type { HistoryEntry } from './history.js';
import { readProc, type ProcIdentity } from './proc.js';

export type AppStateName =
  | 'running'
  | 'stopped'
  | 'deploying'
  /** crashed; a restart is scheduled (capped exponential backoff) */
  | 'backoff'
  /** crashed too often in a row; left alone until the next deploy or a re-save of current.conf */
  | 'fatal'
  /** the last deploy failed and the app is not running */
  | 'failed'
  /** the agent cannot manage the app right now (its folder is missing, its user unknown, another agent holds it): see `problem` */
  | 'error';

/** Why the agent cannot manage the app right now, or what went wrong in its last pass. */
export interface AppProblem {
  readonly code: string;
  readonly message: string;
  /** ISO time since when. */
  readonly since: string;
}

/** A release that passed verification, with the current.conf text that named it. */
export interface GoodRelease {
  readonly bin: string;
  readonly cfg: string;
  readonly text: string;
}

export interface AppState {
  readonly app: string;
  readonly state: AppStateName;
  readonly pid: number | null;
  /** /proc start time of `pid`, so a reader can tell a recycled PID. */
  readonly pidStart: number | null;
  /** When the current process was started or adopted by this agent (ISO time). */
  readonly since: string | null;
  readonly bin: string | null;
  readonly cfg: string | null;
  readonly lastDeploy: HistoryEntry | null;
  readonly lastGood: GoodRelease | null;
  /** Crash restarts since the last deploy or agent start. */
  readonly restarts: number;
  /** Set while the agent cannot manage the app (state "error") or its last pass failed unexpectedly. */
  readonly problem?: AppProblem | null;
  readonly updatedAt: string;
}

export function appStateFile(stateDir: string, app: string): string {
  return path.join(stateDir, 'apps', `${app}.json`);
}

export async function writeAppState(stateDir: string, state: AppState): Promise<void> {
  await mkdir(path.join(stateDir, 'apps'), { recursive: true });
  await writeFileAtomic(appStateFile(stateDir, state.app), `${JSON.stringify(state, null, 2)}\n`);
}

export async function readAppState(stateDir: string, app: string): Promise<AppState | undefined> {
  return readJson<AppState>(appStateFile(stateDir, app));
}

export interface AgentRecord extends ProcIdentity {
  readonly configFile: string;
  readonly startedAt: string;
  readonly version: string;
}

export function agentFile(stateDir: string): string {
  return path.join(stateDir, 'agent.json');
}

/** The agent running for this stateDir, if its record names a live process. */
export async function runningAgent(stateDir: string): Promise<AgentRecord | undefined> {
  const rec = await readJson<AgentRecord>(agentFile(stateDir));
  if (rec === undefined) return undefined;
  const live = await readProc(rec.pid);
  return live !== undefined && live.startTime === rec.startTime ? rec : undefined;
}

/**
 * Claim the stateDir for this agent. Two agents on one stateDir would both
 * apply every edit and both start the app: the second one refuses.
 */
export async function claimAgent(stateDir: string, configFile: string, version: string): Promise<AgentRecord> {
  await mkdir(stateDir, { recursive: true });
  const other = await runningAgent(stateDir);
  if (other !== undefined && other.pid !== process.pid) {
    throw new RelinkError('AGENT_RUNNING', `another relink agent (pid ${other.pid}, config ${other.configFile}) already runs on ${stateDir}`,
      { file: agentFile(stateDir), rule: 'one agent per stateDir', found: `pid ${other.pid}` });
  }
  const me = await readProc(process.pid);
  const rec: AgentRecord = { pid: process.pid, startTime: me?.startTime ?? 0, configFile, startedAt: new Date().toISOString(), version };
  await writeFileAtomic(agentFile(stateDir), `${JSON.stringify(rec)}\n`);
  return rec;
}

export async function releaseAgent(stateDir: string): Promise<void> {
  const rec = await readJson<AgentRecord>(agentFile(stateDir));
  if (rec?.pid === process.pid) await unlink(agentFile(stateDir)).catch(() => undefined);
}

async function readJson<T>(file: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw new RelinkError('STATE_UNREADABLE', `${file}: could not read: ${(err as Error).message}`, { file, found: (err as Error).message });
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new RelinkError('STATE_UNREADABLE', `${file}: is not valid JSON (delete it; the agent rewrites it)`, { file, rule: 'must be valid JSON' });
  }
}
