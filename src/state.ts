/**
 * What the agent knows, on disk, for `relink status` and for the next agent:
 * <stateDir>/apps/NAME/state.json per app and <stateDir>/agent.json for the
 * running agent (layout and modes: stateDir.ts). Every write is temp +
 * rename, so a reader never sees half; every read is checked with zod, and a
 * damaged file is treated as absent (readers) or set aside (the agent).
 */
import { mkdir, unlink } from 'node:fs/promises';
import { z } from 'zod';
import { writeFileAtomic } from './atomicWrite.js';
import { RelinkError } from './errors.js';
import { HistoryEntrySchema, Journal, type HistoryEntry, type JournalOptions } from './history.js';
import { readProc, type LineageRecord, type ProcIdentity } from './proc.js';
import {
  agentFile, appDir, appStateFile, ensureAppDir, legacyStateFile, readJsonFile, setAside, writeAppFile, writeFailed, journalFile,
  type OnDamage,
} from './stateDir.js';

export { agentFile, appStateFile } from './stateDir.js';

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
  /** the agent cannot manage the app right now (its folder is missing, its user unknown, ...): see `problem` */
  | 'error';

/** A release that passed verification, with the current.conf text that named it. */
export interface GoodRelease {
  readonly bin: string;
  readonly cfg: string;
  readonly text: string;
}

/** Why the agent cannot manage the app right now. */
export interface AppProblem {
  readonly code: string;
  readonly message: string;
  /** ISO time the problem was first seen. */
  readonly since: string;
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
  readonly updatedAt: string;
  /** Why the agent cannot manage the app right now (state "error"), or what failed in its last pass; null (or absent, before issue 9) when nothing is wrong. */
  readonly problem?: AppProblem | null;
  /**
   * The last current.conf content (sha256, and when) the agent found naming
   * what already runs: nothing to do, so nothing journaled; `deploy --wait`
   * takes it as its verdict.
   */
  readonly matched?: { readonly hash: string; readonly at: string } | null;
  /**
   * The app's processes by lineage (src/proc.ts): every member by pid,
   * start time and generation, each generation's main, the serving one.
   * Root-owned like the rest of this file: the app's user cannot forge it.
   * Absent before issue 10.
   */
  readonly lineage?: LineageRecord | null;
  /**
   * A deploy (or its rollback) that has begun switching and is not yet
   * journaled: if the agent dies, the next one finishes judging it from
   * here (src/app.ts #recover). Absent or null when none is in flight.
   */
  readonly inflight?: InFlight | null;
  /**
   * Generations older than the serving one, still running: since when each
   * drains, and when it was told to stop (stop.signal; SIGKILL
   * stop.timeoutMs later), if it was (ISO times).
   */
  readonly draining?: ReadonlyArray<{ readonly gen: number; readonly since: string; readonly stopped?: string | null }> | null;
  /**
   * Under "upgrade" with reload.quiesceSignal: the old master the agent
   * quiesced (its workers stopped, the socket kept) while a new generation
   * is judged, and since when (ISO time). Null or absent when none is: set
   * when the quiesce signal is sent, cleared once the new generation serves
   * or the old master is resumed. `relink status` shows it; the next agent
   * resumes it if the new generation fails.
   */
  readonly quiesced?: { readonly pid: number; readonly startTime: number; readonly since: string } | null;
  /**
   * Stopped on request (`relink stop`, ISO time and request id): supervision
   * leaves the app stopped, across agent restarts, until `relink start`.
   * Absent or null when not.
   */
  readonly held?: { readonly at: string; readonly request: string } | null;
  /**
   * The settings the serving generation was started with, as digests by key
   * ("env.APP_COLOR", "command", "user", "limits.nofile": src/settings.ts),
   * so `relink status` can say which changed in the config since. Null when
   * unknown (an app adopted from before issue 12).
   */
  readonly settings?: Readonly<Record<string, string>> | null;
  /**
   * The relink start | restart being carried out (its command, request id
   * and when it was asked), saved before anything is done: an agent killed
   * meanwhile leaves the next one able to answer it (journaled "failed",
   * INTERRUPTED, with what it found), so a --wait waiting on it hears why.
   */
  readonly answering?: { readonly command: 'start' | 'restart'; readonly request: string; readonly at: string } | null;
}

/** A deploy in flight, as the state file keeps it. */
export interface InFlight {
  readonly phase: 'deploy' | 'rollback';
  readonly trigger: string;
  /** When the attempt began (ms since the epoch). */
  readonly startedMs: number;
  /** The current.conf content being applied, and its sha256. */
  readonly hash: string;
  readonly text: string;
  readonly release: { readonly bin: string; readonly cfg: string };
  /** Where the links pointed before. */
  readonly from: { readonly bin: string | null; readonly cfg: string | null };
  readonly pidBefore: number | null;
  /** When the links were (about to be) switched, in clock ticks since boot: a process started at or after it runs the new release. */
  readonly switchedTick: number;
  /** In the rollback phase: why the deploy failed. */
  readonly cause: { readonly code: string; readonly message: string } | null;
  /** When the rollback phase began, in clock ticks since boot: a process started at or after it is the rollback's own (runs the good release). */
  readonly rollbackTick?: number;
  /** The deploy stopped the serving generation before starting the new one (a restart): when it was gone (ms since the epoch), and whether the agent held its sockets meanwhile. */
  readonly restart?: { readonly goneAtMs: number; readonly held: boolean };
}

/** A state file at the boundary. Unknown keys are kept: a newer agent may add fields. */
export const AppStateSchema = z.looseObject({
  app: z.string(),
  state: z.enum(['running', 'stopped', 'deploying', 'backoff', 'fatal', 'failed', 'error']),
  pid: z.int().positive().nullable(),
  pidStart: z.number().nullable(),
  since: z.string().nullable(),
  bin: z.string().nullable(),
  cfg: z.string().nullable(),
  lastDeploy: HistoryEntrySchema.nullable(),
  lastGood: z.object({ bin: z.string(), cfg: z.string(), text: z.string() }).nullable(),
  restarts: z.int().min(0),
  updatedAt: z.string(),
  problem: z.object({ code: z.string(), message: z.string(), since: z.string() }).nullable().optional(),
  matched: z.object({ hash: z.string(), at: z.string() }).nullable().optional(),
  lineage: z.object({
    members: z.array(z.object({ pid: z.int().positive(), startTime: z.number(), gen: z.int().min(0) })),
    mains: z.array(z.object({ pid: z.int().positive(), startTime: z.number(), gen: z.int().min(0), sid: z.number().optional(), ownSession: z.boolean().optional(), exe: z.string().optional(), cmd: z.string().optional() })),
    serving: z.int().min(0),
    lastGen: z.int().min(0),
    openings: z.array(z.object({ gen: z.int().min(0), pid: z.int().positive(), startTime: z.number(), fromTick: z.number() })).optional(),
  }).nullable().optional(),
  inflight: z.object({
    phase: z.enum(['deploy', 'rollback']),
    trigger: z.string(),
    startedMs: z.number(),
    hash: z.string(),
    text: z.string(),
    release: z.object({ bin: z.string(), cfg: z.string() }),
    from: z.object({ bin: z.string().nullable(), cfg: z.string().nullable() }),
    pidBefore: z.int().positive().nullable(),
    switchedTick: z.number(),
    cause: z.object({ code: z.string(), message: z.string() }).nullable(),
    rollbackTick: z.number().optional(),
    restart: z.object({ goneAtMs: z.number(), held: z.boolean() }).optional(),
  }).nullable().optional(),
  draining: z.array(z.object({ gen: z.int().min(0), since: z.string(), stopped: z.string().nullable().optional() })).nullable().optional(),
  quiesced: z.object({ pid: z.int().positive(), startTime: z.number(), since: z.string() }).nullable().optional(),
  held: z.object({ at: z.string(), request: z.string() }).nullable().optional(),
  settings: z.record(z.string(), z.string()).nullable().optional(),
  answering: z.object({ command: z.enum(['start', 'restart']), request: z.string(), at: z.string() }).nullable().optional(),
});

const asState = (x: z.output<typeof AppStateSchema>): AppState => x;

export interface StateReadOptions {
  /**
   * Told of a state file that is damaged or unreadable, which is then
   * treated as absent (readers print a warning naming it). Default: silence.
   */
  readonly onDamaged?: OnDamage;
}

/**
 * The app's state file, or undefined when there is none (or it is damaged,
 * or unreadable: `onDamaged` says which). Falls back to the layout before
 * issue 9 (<stateDir>/apps/NAME.json) when the new file is missing. Never throws.
 */
export async function readAppState(stateDir: string, app: string, opts: StateReadOptions = {}): Promise<AppState | undefined> {
  for (const file of [appStateFile(stateDir, app), legacyStateFile(stateDir, app)]) {
    const r = await readJsonFile(file, AppStateSchema);
    if (r.kind === 'missing') continue;
    if (r.kind === 'ok') return asState(r.value);
    opts.onDamaged?.({ file, problem: `${r.problem}; treated as absent` });
    return undefined;
  }
  return undefined;
}

export interface AppStoreOptions {
  /** The gid the app runs as: its folder 0750 and files 0640 are owned by root and this group (when the agent is root). */
  readonly gid?: number;
  /** Journal rotation: `history.maxBytes` / `history.backups` of the config. Defaults: 4 MiB, 2. */
  readonly history?: Pick<JournalOptions, 'maxBytes' | 'backups'>;
  /**
   * Told once per damaged file the agent sets aside (renamed to
   * FILE.damaged-<ISO time>) so that it is rebuilt, and when an append finds
   * the journal's last line torn (and ends it): log it as a warning.
   */
  readonly onDamaged?: OnDamage;
}

/**
 * The agent's side of one app's records: its journal (rotated) and its state
 * file, in <stateDir>/apps/NAME with the app's group. Writers throw a
 * StateWriteError (STATE_WRITE_FAILED with the path and the errno).
 */
export class AppStore {
  readonly app: string;
  readonly journal: Journal;
  readonly #stateDir: string;
  readonly #opts: AppStoreOptions;
  #dirReady = false;
  #gid: number | undefined;

  constructor(stateDir: string, app: string, opts: AppStoreOptions = {}) {
    this.app = app;
    this.#stateDir = stateDir;
    this.#opts = opts;
    this.#gid = opts.gid;
    this.journal = new Journal(journalFile(stateDir, app), { ...opts.history, gid: opts.gid, onDamaged: opts.onDamaged });
  }

  record(entry: HistoryEntry): Promise<void> {
    return this.journal.append(entry);
  }

  /** The app's group, known later (its user was created after the agent started): handed the folder and files on the next write. */
  setGid(gid: number | undefined): void {
    if (gid === this.#gid) return;
    this.#gid = gid;
    this.#dirReady = false;
    this.journal.setGid(gid);
  }

  async save(state: AppState): Promise<void> {
    const file = appStateFile(this.#stateDir, this.app);
    try {
      if (!this.#dirReady) {
        await ensureAppDir(appDir(this.#stateDir, this.app), this.#gid);
        this.#dirReady = true;
      }
      await writeAppFile(file, `${JSON.stringify(state, null, 2)}\n`, this.#gid, 'write the state file');
    } catch (err) {
      this.#dirReady = false;
      throw writeFailed(file, err, 'write the state file');
    }
  }

  /**
   * The saved state, or undefined. A damaged file (or one left by the layout
   * before issue 9) is set aside and reported through `onDamaged`, so that
   * the next save rebuilds it. Never throws.
   */
  async load(): Promise<AppState | undefined> {
    for (const file of [appStateFile(this.#stateDir, this.app), legacyStateFile(this.#stateDir, this.app)]) {
      const r = await readJsonFile(file, AppStateSchema);
      if (r.kind === 'missing') continue;
      if (r.kind === 'ok') return asState(r.value);
      let aside: string | undefined;
      if (!r.unreadable) aside = await setAside(file).catch(() => undefined);
      this.#opts.onDamaged?.({ file, problem: `${r.problem}; ${aside === undefined ? 'ignored' : `set aside as ${aside}`}, and rebuilt` });
      return undefined;
    }
    return undefined;
  }
}

/** Write one app's state file (no group; the agent uses AppStore). Throws a StateWriteError. */
export async function writeAppState(stateDir: string, state: AppState, opts: Pick<AppStoreOptions, 'gid'> = {}): Promise<void> {
  await new AppStore(stateDir, state.app, opts).save(state);
}

export interface AgentRecord extends ProcIdentity {
  readonly configFile: string;
  readonly startedAt: string;
  readonly version: string;
  /** The last config reload (SIGHUP, relink reload): absent until one. */
  readonly config?: AgentConfigRecord;
}

/**
 * A config reload as agent.json records it: the sha256 of the file's text
 * as read, when, and either what it changed (app names) or why it changed
 * nothing (`error`).
 */
export interface AgentConfigRecord {
  /** sha256 of the config file's text the agent runs on (loaded at start or by the last reload that went through). */
  readonly hash: string;
  readonly at: string;
  /** A reload that changed nothing: sha256 of the text it refused, and why (`hash` stays the one running). */
  readonly refused?: string;
  readonly error?: string;
  readonly added?: readonly string[];
  readonly removed?: readonly string[];
  readonly changed?: readonly string[];
  readonly unchanged?: readonly string[];
  /** A reload's agent-wide settings changed, and what it could not do (src/agent.ts ReloadResult). */
  readonly settings?: readonly string[];
  readonly warnings?: readonly string[];
}

export const AgentRecordSchema = z.looseObject({
  pid: z.int().positive(),
  startTime: z.number(),
  configFile: z.string(),
  startedAt: z.string(),
  version: z.string(),
  config: z.object({
    hash: z.string(), at: z.string(), refused: z.string().optional(), error: z.string().optional(),
    added: z.array(z.string()).optional(), removed: z.array(z.string()).optional(), changed: z.array(z.string()).optional(), unchanged: z.array(z.string()).optional(),
    settings: z.array(z.string()).optional(), warnings: z.array(z.string()).optional(),
  }).optional(),
});

async function readAgentRecord(stateDir: string, onDamaged: ((file: string, problem: string, unreadable: boolean) => Promise<void>) | undefined): Promise<AgentRecord | undefined> {
  const file = agentFile(stateDir);
  const r = await readJsonFile(file, AgentRecordSchema);
  if (r.kind === 'ok') return r.value;
  if (r.kind === 'damaged') await onDamaged?.(file, r.problem, r.unreadable);
  return undefined;
}

/**
 * The agent running for this stateDir, if its record names a live process.
 * A damaged agent.json counts as no agent (`onDamaged` is told). Never throws.
 */
export async function runningAgent(stateDir: string, opts: StateReadOptions = {}): Promise<AgentRecord | undefined> {
  const rec = await readAgentRecord(stateDir, async (file, problem) => opts.onDamaged?.({ file, problem: `${problem}; treated as no agent running` }));
  if (rec === undefined) return undefined;
  const live = await readProc(rec.pid);
  return live !== undefined && live.startTime === rec.startTime ? rec : undefined;
}

/**
 * Claim the stateDir for this agent. Two agents on one stateDir would both
 * apply every edit and both start the app: the second one refuses
 * (AGENT_RUNNING). A damaged agent.json is set aside (told to `onDamaged`)
 * and the claim goes on. Throws a StateWriteError when agent.json cannot be
 * written.
 */
export async function claimAgent(stateDir: string, configFile: string, version: string, opts: StateReadOptions & { readonly config?: AgentConfigRecord } = {}): Promise<AgentRecord> {
  const file = agentFile(stateDir);
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o755 });
  } catch (err) {
    throw writeFailed(stateDir, err, 'create the state folder');
  }
  const other = await readAgentRecord(stateDir, async (f, problem, unreadable) => {
    const aside = unreadable ? undefined : await setAside(f);
    opts.onDamaged?.({ file: f, problem: `${problem}; ${aside === undefined ? 'ignored' : `set aside as ${aside}`}` });
  });
  const live = other === undefined ? undefined : await readProc(other.pid);
  if (other !== undefined && live !== undefined && live.startTime === other.startTime && other.pid !== process.pid) {
    throw new RelinkError('AGENT_RUNNING', `another relink agent (pid ${other.pid}, config ${other.configFile}) already runs on ${stateDir}`,
      { file, rule: 'one agent per stateDir', found: `pid ${other.pid}` });
  }
  const me = await readProc(process.pid);
  // Re-claimed by the same agent (a reload): it keeps its start time.
  const startedAt = other !== undefined && other.pid === process.pid ? other.startedAt : new Date().toISOString();
  const rec: AgentRecord = { pid: process.pid, startTime: me?.startTime ?? 0, configFile, startedAt, version, ...(opts.config === undefined ? {} : { config: opts.config }) };
  try {
    // 0644: the CLI finds the agent as any user; it holds nothing else.
    await writeFileAtomic(file, `${JSON.stringify(rec)}\n`, { mode: 0o644 });
  } catch (err) {
    throw writeFailed(file, err, 'write the agent record');
  }
  return rec;
}

export async function releaseAgent(stateDir: string): Promise<void> {
  const rec = await readAgentRecord(stateDir, undefined);
  if (rec?.pid === process.pid) await unlink(agentFile(stateDir)).catch(() => undefined);
}
