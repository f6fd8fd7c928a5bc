/**
 * The orchestrator for one app: read current.conf, validate, preflight,
 * relink, start or signal, verify, record; roll back to the last known-good
 * release when verification fails; restart the app when it crashes or stops
 * answering its liveness probe.
 *
 * One pass runs at a time; triggers that arrive meanwhile coalesce into one
 * more pass, which reads the file afresh, so the newest content is what ends
 * up applied. Supervision checks run through the same queue, so a crash
 * restart never races a deploy. Its actors live beside it: which process is
 * the app (src/tracker.ts), when to restart (src/supervise.ts), what an
 * attempt leaves in the journal and the log (src/record.ts). The app's state
 * changes in one place, #transition, which also saves it.
 *
 * Whatever goes wrong with one app stays with it: a folder that is missing,
 * a user that does not exist, another agent holding the app, even a bug in
 * a pass, put this app in state "error" with the reason (or record the
 * problem) and the agent retries on its periodic re-check; the other apps
 * never notice.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import type { AppConfig, Strategy } from './config.js';
import { currentTextFor, type CurrentSnapshot, type Release } from './current.js';
import type { Effects } from './effects.js';
import { describeError, isErrno, RelinkError, RelinkErrors, type ErrorCode } from './errors.js';
import { stripBom } from './json.js';
import type { Action, Command, HistoryEntry, Outcome } from './history.js';
import { DeployHooks, pendingEntry } from './hooks.js';
import { preflightRefusal } from './preflight.js';
import { describeListener, leavesOf, sameProcess, type ProcIdentity, type ProcInfo } from './proc.js';
import { entryFor, Recorder, type Attempt, type Extra, type ReadAttempt } from './record.js';
import type { AppProblem, AppStateName, GoodRelease, InFlight } from './state.js';
import { backoffDelay, CrashPolicy, LivenessCounter } from './supervise.js';
import { TokenBucket } from './throttle.js';
import { changedSettings, launchSettings } from './settings.js';
import type { AppRequest } from './requests.js';
import { describeDamage } from './stateDir.js';
import { ProcessTracker } from './tracker.js';
import { Generations } from './generations.js';
import { inflightFor, journaled, newestRoot, recoveredAttempt, recoveryPlan } from './inflight.js';
import { assertBinary, awaitHandoff, awaitHealthy, awaitStart, confirmInPlace, describeExit, IN_PLACE_FOUND, runsRelease, strategyMismatch, type StartedProcess, type StopBy } from './verify.js';

/**
 * A pass asked for on the first file event, before the watcher's quiet
 * period: it acts only on a complete JSON document (a file being written
 * never is one: no proper prefix of a JSON object parses) and otherwise
 * leaves the file to the pass that follows the quiet period.
 */
export const EARLY_TRIGGER = 'watch:early';

/** The periodic re-check (agent.ts): also re-confirms the claim on the app's folder. */
export const RECHECK_TRIGGER = 'recheck';

/** A current.conf that does not parse and has not changed for this long is judged by the re-check too. */
const BROKEN_SETTLED_MS = 2_000;

/**
 * The stop budget, counted from SIGTERM. systemd/relink.service gives the
 * agent TimeoutStopSec=30s before it SIGKILLs it: a pass that has switched
 * nothing is abandoned at once; one that has switched must be verified by
 * `verifyMs` or is rolled back, and the rollback must be over by
 * `rollbackMs`; `waitMs` is how long close() waits for a pass at all. 8 s
 * of margin stay (test/systemd.test.ts checks the unit against these).
 */
export const STOP_BUDGET = { verifyMs: 10_000, rollbackMs: 20_000, waitMs: 22_000 } as const;

/** current.conf reads while it keeps being refused: a burst of 20, then at most 5 a second (src/throttle.ts). */
export const READ_LIMIT = { burst: 20, perSecond: 5 } as const;

/** A liveness restart: SIGTERM, then SIGKILL if the app has not exited after this long (ms). */
export const LIVENESS_KILL_MS = 10_000;

/**
 * How often supervision follows the app's processes (new workers, exits)
 * through the shared /proc walk (ms), besides right after every start and
 * deploy. Every 5 s it cost the idle agent about 0.5 % of a core with 20
 * apps (BENCHMARKS.md, section 3): a walk reads every process's stat.
 */
const LINEAGE_REFRESH_MS = 30_000;

/** A restart asks for the new generation's first answer in slices this long (ms), checking between them that it still runs. */
const FIRST_ANSWER_SLICE_MS = 250;

/**
 * "socket" and "upgrade": once the new generation is judged, the old one is
 * stopped only when the new one is at its strength (as many processes, each
 * worker seen waiting for work in select, poll, epoll or accept at least
 * once), for at most this long (ms). Judged on its first answer, a
 * pre-fork server may have one worker up: stopped then, the old generation's share of the load fell on it alone while the
 * others still loaded the app (gunicorn, 2 workers, open-loop at half its
 * capacity: the queue grew for most of a second; BENCHMARKS.md, section 2).
 */
const STRENGTH_WAIT_MS = 1_000;

/**
 * How often the new generation's strength is looked at (ms): its tree (the
 * kernel's children lists) and where each worker waits. When each look
 * was a walk of /proc, at 20 ms the agent spent 203 ms of CPU per gunicorn
 * "upgrade" deploy (BENCHMARKS.md, section 2), competing with the app for
 * the cores while it served. Each poll samples where each worker waits:
 * fewer samples make a worker always busy when looked at more likely, and
 * that one is waited for up to STRENGTH_WAIT_MS, no longer.
 */
const STRENGTH_POLL_MS = 50;

/**
 * reload.quiesceSignal ("upgrade"): how long a worker of the new generation
 * may take to be seen waiting for connections before the old master would
 * be quiesced (ms). Past it the old master is left serving, said in the log:
 * a new generation that takes no connections is judged by the probe as it is.
 */
const QUIESCE_WAIT_MS = 5_000;

/**
 * reload.resumeSignal: how long the resumed old master's workers may take to
 * be seen waiting for connections before the failed generation is stopped
 * anyway (ms; said in the log). Meanwhile the new one still serves.
 */
const RESUME_WAIT_MS = 5_000;

/** Between looks at where a generation's workers wait, for the two waits above (ms). */
const QUIESCE_POLL_MS = 20;

/** The journal's `action` of a deploy over a running app, by reload.strategy. */
const ACTIONS: Record<Strategy, Action> = { reexec: 'signal', inplace: 'signal', upgrade: 'signal', socket: 'replace', restart: 'restart' };

function isJson(text: string): boolean {
  try {
    // A UTF-8 BOM is allowed in front of current.conf (RFC 8259 §8.1).
    JSON.parse(stripBom(text));
    return true;
  } catch {
    return false;
  }
}

/**
 * Do the links (or a release) `a` name release `b`? Links whose folder link
 * is stale (`links.dir` left elsewhere: relink.ts LinkTargets) do not, so a
 * deploy, the reconcile and a recovery switch all three again.
 */
const sameRelease = (a: { bin?: string | undefined; cfg?: string | undefined; dirStale?: boolean } | undefined, b: Release | undefined): boolean =>
  a !== undefined && b !== undefined && a.bin === b.bin && a.cfg === b.cfg && a.dirStale !== true;

/** An error code read back from the state file: written there by relink from one of its own errors (root-owned, not the app's to forge). */
function asErrorCode(code: string | undefined): ErrorCode {
  return (code ?? 'INTERNAL') as ErrorCode;
}

/** A request taken while the agent stops: answered, not carried out. */
function stopping(command: Command): RelinkError {
  return new RelinkError('AGENT_STOPPING', `relink ${command}: the agent was stopping; ask again once it runs`, { rule: 'requests are carried out by a running agent', found: 'agent stopping' });
}

/**
 * When the current.conf an attempt read was written (its mtime), if a
 * write is what started it: a watcher event, the periodic re-check finding
 * the file changed (it reads it only then: a late or missed event), or a
 * write during a rollback. Not for the agent's first pass, a drift repair or
 * a recovered deploy, which apply an older write.
 */
function writtenAt(attempt: Attempt): number | undefined {
  const t = attempt.trigger;
  const fresh = (t.startsWith('watch:') || t === RECHECK_TRIGGER || t === 'rollback:newer') && !t.endsWith(':drift') && !t.endsWith(':recovered');
  return fresh && attempt.snapshot !== null ? attempt.snapshot.mtimeMs : undefined;
}

/** A problem from anything thrown (src/errors.ts describeError), since `now`. */
function problemOf(err: unknown, now: number): AppProblem {
  return { ...describeError(err), since: new Date(now).toISOString() };
}

/**
 * What the orchestrator tells an onlooker (the metrics, src/monitoring.ts)
 * as it happens, so that nothing has to re-read the journal or the state
 * file. Called synchronously; an observer must not throw (what it throws is
 * logged and ignored) and must not wait on anything.
 */
export interface AppObserver {
  /**
   * An attempt's verdict, as journaled; a refusal that repeats the last one
   * (counted, not journaled: src/record.ts) is told too. `writtenAtMs`: the
   * wall-clock mtime of the current.conf a change of it made the agent read
   * (a watcher event, or the re-check finding it changed); undefined for any
   * other start (the agent's first pass, a drift repair, a request).
   */
  verdict(entry: HistoryEntry, writtenAtMs: number | undefined): void;
  /**
   * The app's state after a transition, changed or not; `up`: a main process
   * of the app runs; `crashLoop`: backoff or fatal, or running again after a
   * quick failure and not yet for supervise.stableMs (CrashPolicy.looping).
   */
  state(state: AppStateName, up: boolean, crashLoop: boolean): void;
  /** The crash supervision started the app again (after a crash, or a liveness failure). */
  restarted(): void;
}

export class AppAgent {
  readonly app: AppConfig;
  readonly #fx: Effects;
  readonly #log: Logger;
  readonly #tracker: ProcessTracker;
  readonly #generations: Generations;
  readonly #crash: CrashPolicy;
  /** The main and the lineage as last saved (#saveState): a change without a transition is saved by #ensureRunning. */
  #savedIdentity: string | undefined;
  readonly #liveness: LivenessCounter | undefined;
  readonly #recorder: Recorder;
  readonly #reads: TokenBucket;
  readonly #hooks: DeployHooks;
  #state: AppStateName = 'stopped';
  /** Why the app cannot be managed (state "error"), or what failed in the last pass. */
  #problem: AppProblem | undefined;
  /** Where the problem came from: it is over when that succeeds again (the setup, a start, any pass). */
  #problemFrom: 'setup' | 'start' | 'pass' | 'fatal' | undefined;
  /** The folder is claimed and a running app adopted; until then every pass retries that first. */
  #ready = false;
  /** The state the previous agent left, until the setup has used it. */
  #savedState: AppStateName | undefined;
  /** The main the state file names and since when it ran (fx.now() ms): an adopted main's run goes on from then. */
  #savedRun: { pid: number; startTime: number; sinceMs: number } | undefined;
  #lastDeploy: HistoryEntry | null = null;
  /** current.conf content found naming what runs (no journal entry): for `deploy --wait`. */
  #matched: { hash: string; at: string } | undefined;
  #lastGood: GoodRelease | undefined;
  /** The release current.conf's content maps to, once applied: what the links must point at. */
  #applied: { hash: string; release: Release } | undefined;
  /** The current.conf content last acted on (hash + mtime: a re-save retries). */
  #seen: { hash: string; mtimeMs: number } | undefined;
  #readProblem: string | undefined;
  /** currentSignature() of the content last judged (or found unreadable), and what was read: a re-check skips an unchanged file. */
  #judged: { signature: string; snapshot: CurrentSnapshot | undefined } | undefined;
  #cancelBackoff: (() => void) | undefined;
  #restartDue = false;
  /** The last restart could not start the app at all (not a crash of it). */
  #startFailed = false;
  /**
   * The last start could not bind the app's sockets (#startNew): set by it,
   * read by #judge. A start with nothing else serving is then tried again
   * (#retryUnbound), not judged a failed release.
   */
  #bindFailed = false;
  /** A retry of a start that could not bind (#retryUnbound) is due: the pass starts the app, not the crash supervision. */
  #retryDue = false;
  /** Failed tries to start current.conf's release (by its hash) for want of its sockets; reset once a deploy goes live (another current.conf starts again from 1). */
  #unboundTries: { readonly hash: string; readonly tries: number } | undefined;
  #cancelMonitor: (() => void) | undefined;
  /** When supervision next refreshes the lineage (fx.now() ms). */
  #refreshAt = 0;
  #cancelLiveness: (() => void) | undefined;
  /** Ends a wait for the read limit (close() calls it). */
  #wakeThrottle: (() => void) | undefined;
  #throttled = false;
  /** The last content judged was refused: reads are rate-limited (READ_LIMIT) until one goes through. */
  #refusing = false;
  #pendingPass: string | undefined;
  #pendingCheck = false;
  #pendingLiveness = false;
  /** A re-check asked to re-confirm the claim on the app's folder. */
  #reclaim = false;
  #loop: Promise<void> | undefined;
  /** A deploy switching or being judged: kept in the state file until its verdict is journaled. */
  #inflight: InFlight | undefined;
  /** What the previous agent left in flight, until the setup has looked at it. */
  #savedInflight: InFlight | undefined;
  /** A deploy in flight the previous agent left unjudged: the first pass finishes it. */
  #recovering: InFlight | undefined;
  /** A process the crash supervision started and nobody has judged healthy yet: a deploy waits for it first. */
  #unsettled: ProcInfo | undefined;
  /** The relink start | restart being carried out (saved: AppState.answering). */
  #answering: { readonly command: 'start' | 'restart'; readonly request: string; readonly at: string } | undefined;
  /** What the previous agent was answering when it stopped, until this one's first look at the app. */
  #savedAnswering: { readonly command: 'start' | 'restart'; readonly request: string; readonly at: string } | undefined;
  /** The process this agent started last, for the reason of a verdict on it (verify.ts StartedProcess). */
  #launched: StartedProcess | undefined;
  /** The generation a deploy in flight is bringing up: stopped if it fails. */
  #newGen: number | undefined;
  /**
   * Under "upgrade" with reload.quiesceSignal: the old master quiesced (by
   * this agent, or by the one before it: the state file says), and when
   * (epoch ms), until the new generation serves or it is resumed.
   */
  #quiesced: (ProcIdentity & { readonly sinceMs: number }) | undefined;
  /** A restart's gap: when the old generation was gone, and when the new one first accepted a connection (fx.now() ms). */
  #outage: { readonly goneAt: number; acceptedAt?: number; readonly held: boolean } | undefined;
  /** A reload signal sent and not yet judged: the generation it opened and the main it went to. */
  #reloading: { gen: number; main: ProcInfo } | undefined;
  /** Stopped on request (relink stop): supervision leaves the app stopped, across agent restarts, until relink start. */
  #held: { at: string; request: string } | undefined;
  /** Digests of the settings the serving generation was started with (src/settings.ts); undefined: unknown. */
  #settings: Record<string, string> | undefined;
  /** The generation the agent last started, and the settings it was started with: they serve once it does. */
  #started: { gen: number; settings: Record<string, string> } | undefined;
  /** The held app's not running was said in the log (once per agent). */
  #heldSaid = false;
  /**
   * Judge current.conf afresh on the next pass (reason `why`), even if its
   * content and mtime are those already judged: its folder was recreated
   * or replaced, and a refusal about the old one may no longer hold.
   */
  rejudge(why: string): void {
    this.#seen = undefined;
    this.#judged = undefined;
    this.#readProblem = undefined;
    this.trigger(why);
  }

  /** Operators' requests may be waiting (src/requests.ts): the loop takes them. */
  #pendingRequests = false;
  #closed = false;
  /** retire(): no new pass is taken, the one in flight finishes. */
  #retiring = false;
  #closing: Promise<void> | undefined;
  /** When close() was called (fx.now()): the stop budget counts from here. */
  #stopAt: number | undefined;
  readonly #abort = new AbortController();
  readonly #observer: AppObserver | undefined;
  /** The observer threw: said once. */
  #observerFailed = false;

  /** `observer`: told of verdicts, state changes and restarts (AppObserver); default none. */
  constructor(app: AppConfig, effects: Effects, log: Logger, observer?: AppObserver) {
    this.app = app;
    this.#fx = effects;
    this.#log = log;
    this.#observer = observer;
    this.#tracker = new ProcessTracker(effects, log);
    this.#generations = new Generations(effects, log);
    this.#recorder = new Recorder(effects, log);
    this.#hooks = new DeployHooks(app, effects, log);
    this.#crash = new CrashPolicy(app.supervise);
    this.#liveness = app.health.liveness === undefined ? undefined : new LivenessCounter(app.health.liveness.failureThreshold);
    this.#reads = new TokenBucket(READ_LIMIT.burst, READ_LIMIT.perSecond, effects.now());
  }

  get state(): AppStateName {
    return this.#state;
  }

  get problem(): AppProblem | undefined {
    return this.#problem;
  }

  get mainPid(): number | undefined {
    return this.#tracker.main?.pid;
  }

  get restarts(): number {
    return this.#crash.restarts;
  }

  /**
   * The main process of each of the app's generations that still runs, as
   * last seen (no /proc read): what writes its output (its log file's
   * check, src/appoutput.ts).
   */
  writers(): ProcIdentity[] {
    const rec = this.#fx.lineage();
    const alive = new Set(rec?.members.map((m) => m.pid) ?? []);
    const out: ProcIdentity[] = (rec?.mains ?? []).filter((m) => alive.has(m.pid)).map((m) => ({ pid: m.pid, startTime: m.startTime }));
    const main = this.#tracker.main;
    if (main !== undefined && !out.some((m) => m.pid === main.pid)) out.push({ pid: main.pid, startTime: main.startTime });
    return out;
  }

  /** Load what the previous agent knew, then take the app over in the first pass (and start supervising). */
  async start(): Promise<void> {
    const saved = await this.#fx.loadState().catch((err: unknown) => {
      this.#log.warn({ err: problemOf(err, this.#fx.now()).message }, 'the saved state could not be read; starting without it');
      return undefined;
    });
    this.#lastGood = saved?.lastGood ?? undefined;
    this.#lastDeploy = saved?.lastDeploy ?? null;
    this.#savedState = saved?.state;
    const sinceMs = saved?.since == null ? Number.NaN : Date.parse(saved.since);
    if (saved?.pid != null && saved.pidStart != null && Number.isFinite(sinceMs)) this.#savedRun = { pid: saved.pid, startTime: saved.pidStart, sinceMs };
    if (saved?.state === 'fatal' && saved.problem != null) {
      // Why it was given up on, and since when: shown by status, and the
      // first pass leaves the app down unless current.conf was written since.
      this.#problem = saved.problem;
      this.#problemFrom = 'fatal';
    }
    this.#savedInflight = saved?.inflight ?? undefined;
    // What the previous agent knew of the app's processes (a state file from
    // before lineage names only the main).
    const legacy = saved?.pid != null && saved.pidStart != null ? { pid: saved.pid, startTime: saved.pidStart } : undefined;
    this.#fx.restoreLineage(saved?.lineage ?? undefined, legacy);
    // Told to stop by the previous agent: killed stop.timeoutMs after that,
    // not left until reload.drainTimeoutMs (a trial: 52 s, not 10).
    for (const d of saved?.draining ?? []) {
      const stopped = d.stopped == null ? Number.NaN : Date.parse(d.stopped);
      this.#generations.drainingSince(d.gen, Date.parse(d.since), Number.isFinite(stopped) ? stopped : undefined);
    }
    this.#held = saved?.held ?? undefined;
    this.#settings = saved?.settings ?? undefined;
    this.#savedAnswering = saved?.answering ?? undefined;
    const quiescedSince = saved?.quiesced == null ? Number.NaN : Date.parse(saved.quiesced.since);
    if (saved?.quiesced != null && Number.isFinite(quiescedSince)) this.#quiesced = { pid: saved.quiesced.pid, startTime: saved.quiesced.startTime, sinceMs: quiescedSince };
    // Requests made while no agent ran are answered by the first pass.
    this.#pendingRequests = true;
    this.trigger('startup');
    if (this.app.supervise.enabled) this.#armMonitor();
    this.#armLiveness();
  }

  /** Ask for a full pass (current.conf, links, process). Safe to call from any event, any number of times. */
  trigger(why: string): void {
    if (this.#closed || this.#retiring) return;
    // The newest reason wins (the pass reads the file afresh anyway), except
    // that an early trigger, which may decide to do nothing, never displaces
    // one that must judge the file.
    if (why !== EARLY_TRIGGER || this.#pendingPass === undefined) this.#pendingPass = why;
    // The re-check also re-confirms the claim on the app's folder, whichever reason the pass ends up with.
    if (why === RECHECK_TRIGGER) this.#reclaim = true;
    this.#loop ??= this.#run();
  }

  /** Operators' requests may be waiting (relink stop | start | restart): take and answer them. Safe to call any number of times. */
  requests(): void {
    if (this.#closed || this.#retiring) return;
    this.#pendingRequests = true;
    // Acted on only once the claim on the app's folder is confirmed again:
    // a folder gone or taken since the last re-check means hands off, even
    // if the request came first (the CLI says "error" as soon as it is gone).
    this.#reclaim = true;
    this.#loop ??= this.#run();
  }

  /** Stopped on request (relink stop), and since when. */
  get held(): { readonly at: string; readonly request: string } | undefined {
    return this.#held;
  }

  /** Ask for a supervision check only (is the app still running?). */
  check(): void {
    if (this.#closed || this.#retiring) return;
    this.#pendingCheck = true;
    this.#loop ??= this.#run();
  }

  /** Resolves when no pass is running or pending. */
  async idle(): Promise<void> {
    while (this.#loop !== undefined) await this.#loop;
  }

  /**
   * Hand the app over to a new orchestrator (a config reload changed its
   * settings, or let it go): no new pass is taken, and the one in flight
   * finishes as it would (its preflight and beforeSwitch hook are not cut
   * short, its verdict is journaled), as does an after-hook it started
   * (bounded by hooks.timeoutMs); then close(). The next orchestrator
   * finds the verdict in the state file and does not deploy it again.
   */
  async retire(): Promise<void> {
    this.#retiring = true;
    if (this.#loop !== undefined) this.#log.info('a pass is in flight: it finishes before the app is handed over');
    await this.idle();
    await this.#hooks.idle();
    return this.close();
  }

  /**
   * Stop taking triggers and cancel timers; a pass that has switched nothing
   * is abandoned (its preflight killed), one that has switched finishes or
   * rolls back within STOP_BUDGET. The app is left running. The same promise
   * every time.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      this.#pendingPass = undefined;
      this.#pendingCheck = false;
      this.#pendingLiveness = false;
      this.#cancelMonitor?.();
      this.#cancelBackoff?.();
      this.#cancelLiveness?.();
      this.#stopAt = this.#fx.now();
      this.#abort.abort();
      // A running after-hook is ended now (SIGTERM); waited for below.
      void this.#hooks.close();
      this.#wakeThrottle?.();
      if (!(await this.#idleWithin(STOP_BUDGET.waitMs))) {
        this.#log.error({ waitedMs: STOP_BUDGET.waitMs }, 'a pass did not finish within the stop budget; stopping without it');
      }
      const closing = await this.#recorder.closeStreak();
      if (closing !== undefined) this.#fx.notifyOperators(closing);
      // Including one a verdict given while stopping queued (not run).
      await this.#hooks.close();
      await this.#fx.releaseApp().catch(() => undefined);
    })();
    return this.#closing;
  }

  async #idleWithin(ms: number): Promise<boolean> {
    let cancel: (() => void) | undefined;
    const late = new Promise<boolean>((resolve) => {
      cancel = this.#fx.schedule(ms, () => resolve(false));
    });
    try {
      return await Promise.race([this.idle().then(() => true), late]);
    } finally {
      cancel?.();
    }
  }

  /** While stopping: the moment verification must end by (STOP_BUDGET), else never. */
  readonly #verifyBy: StopBy = () => (this.#stopAt === undefined ? Number.POSITIVE_INFINITY : this.#stopAt + STOP_BUDGET.verifyMs);
  readonly #rollbackBy: StopBy = () => (this.#stopAt === undefined ? Number.POSITIVE_INFINITY : this.#stopAt + STOP_BUDGET.rollbackMs);

  #armMonitor(): void {
    // Due at the next multiple of checkMs on the clock, not checkMs after the
    // last check: every app's check then falls due at the same moment and an
    // agent with 20 apps wakes once a second, not 20 times.
    const every = this.app.supervise.checkMs;
    this.#cancelMonitor = this.#fx.schedule(every - (this.#fx.now() % every), () => {
      this.check();
      if (!this.#closed) this.#armMonitor();
    });
  }

  #armLiveness(): void {
    const liveness = this.app.health.liveness;
    if (liveness === undefined || this.#closed) return;
    this.#cancelLiveness = this.#fx.schedule(liveness.periodMs, () => {
      if (this.#closed || this.#retiring) return;
      this.#pendingLiveness = true;
      this.#loop ??= this.#run();
      this.#armLiveness();
    });
  }

  async #run(): Promise<void> {
    try {
      // Callers assign `this.#loop ??= this.#run()`: a body that finished
      // without awaiting would clear #loop before that assignment, leaving a
      // settled promise idle() waits on forever.
      await null;
      while (this.#pendingPass !== undefined || this.#pendingCheck || this.#pendingLiveness || this.#pendingRequests) {
        const why = this.#pendingPass;
        const liveness = this.#pendingLiveness;
        const requests = this.#pendingRequests;
        this.#pendingPass = undefined;
        this.#pendingCheck = false;
        this.#pendingLiveness = false;
        this.#pendingRequests = false;
        try {
          if (why !== undefined) {
            await this.#throttle();
            if (this.#closed) break;
            if (await this.#setup()) await this.#pass(why);
          } else if (requests) {
            await this.#setup();
          }
          // Not ready (the app cannot be managed now): requests stay on disk
          // for the periodic re-check.
          if (!this.#ready) continue;
          if (requests && !this.#closed) await this.#answerRequests();
          if (liveness) await this.#checkLiveness();
          // Every pass ends with the supervision check.
          await this.#ensureRunning();
          await this.#solved();
        } catch (err) {
          // A bug or an I/O error must not kill the agent, stop later passes,
          // or touch another app: it is this app's problem, said once.
          const problem = problemOf(err, this.#fx.now());
          if (this.#problem?.message !== problem.message) {
            this.#log.error({ err, code: problem.code }, `pass failed unexpectedly: ${problem.message}`);
            this.#problem = problem;
            this.#problemFrom = 'pass';
            await this.#saveState();
          }
        }
      }
    } finally {
      this.#loop = undefined;
    }
  }

  /** Wait for the read limit (READ_LIMIT) before a pass reads current.conf. */
  async #throttle(): Promise<void> {
    // Only a writer loop is slowed down: while what current.conf says keeps
    // being refused. A deploy that goes through is never delayed (a bench of
    // back-to-back deploys reads it 50 times a second, rightly).
    if (!this.#refusing) return;
    const now = this.#fx.now();
    if (this.#throttled && this.#reads.full(now)) {
      this.#throttled = false;
      this.#log.info('current.conf changes at a normal pace again');
    }
    const wait = this.#reads.take(now);
    if (wait === 0) return;
    if (!this.#throttled) {
      this.#throttled = true;
      this.#log.warn({ perSecond: READ_LIMIT.perSecond }, `current.conf keeps changing and being refused; reading it at most ${READ_LIMIT.perSecond} times a second until a change goes through`);
    }
    await new Promise<void>((resolve) => {
      const cancel = this.#fx.schedule(wait, resolve);
      this.#wakeThrottle = () => {
        cancel();
        resolve();
      };
    });
    this.#wakeThrottle = undefined;
    this.#reads.take(this.#fx.now());
  }

  /**
   * Before a pass: claim the app's folder (re-confirmed on every re-check,
   * so an agent that lost it lets the app go) and, the first time, adopt the
   * app if it runs. False, with the app in state "error", when it cannot be
   * managed now; the next pass tries again.
   */
  async #setup(): Promise<boolean> {
    const reclaim = this.#reclaim;
    this.#reclaim = false;
    if (this.#ready && !reclaim) return true;
    try {
      await this.#fx.claimApp();
      if (this.#ready) return true;
      const found = await this.#fx.discover();
      this.#tracker.warnStrays(found.strays, found.foreign);
      let state: AppStateName;
      if (found.main !== undefined) {
        // The run the previous agent saw goes on: a crash soon after the
        // adoption is not a quick one (a restart without backoff, as the
        // previous agent would have done).
        const run = sameProcess(this.#savedRun, found.main) ? this.#savedRun?.sinceMs : undefined;
        this.#tracker.set(found.main, run);
        this.#log.info({ appPid: found.main.pid, exe: found.main.exe }, 'adopted running app');
        if (this.#lastGood === undefined) {
          // An app found running is the best known-good there is.
          const links = await this.#fx.readLinks();
          if (links.bin !== undefined && links.cfg !== undefined) this.#lastGood = { bin: links.bin, cfg: links.cfg, text: currentTextFor(this.app.currentFile, { bin: links.bin, cfg: links.cfg }) };
        }
        state = 'running';
      } else {
        // A crash loop stays fatal across agent restarts until someone acts.
        state = this.#savedState === 'fatal' ? 'fatal' : 'stopped';
      }
      this.#savedState = undefined;
      this.#savedRun = undefined;
      const inflight = this.#savedInflight;
      this.#savedInflight = undefined;
      // Nothing to recover: whatever the previous agent left open is stale.
      if (inflight === undefined) this.#fx.settleLineage();
      if (inflight !== undefined) {
        const last = await this.#fx.lastRecorded();
        if (journaled(inflight, last)) {
          this.#log.info({ outcome: last?.outcome }, 'the previous agent journaled its last deploy before it stopped');
          // Its verdict stands: what it makes known-good and applied.
          this.#lastDeploy = last ?? this.#lastDeploy;
          if (last?.outcome === 'deployed') {
            const release = { bin: inflight.release.bin, cfg: inflight.release.cfg };
            this.#lastGood = { ...release, text: inflight.text };
            this.#applied = { hash: inflight.hash, release };
          }
        } else {
          this.#recovering = inflight;
        }
      }
      // A relink stop the previous agent took but did not finish (killed
      // mid-stop: held, no journal entry for it, and the app still runs):
      // finished now. Left as it was, the app served on marked "stopped",
      // with supervision off (trial of issue 12).
      const held = this.#held;
      const lastRequest = (await this.#fx.lastRecorded())?.request;
      const unfinished = held !== undefined && found.main !== undefined && lastRequest !== held.request;
      const answering = this.#savedAnswering;
      this.#savedAnswering = undefined;
      const interrupted = answering !== undefined && lastRequest !== answering.request ? answering : undefined;
      this.#ready = true;
      if (this.#problem !== undefined && this.#problemFrom === 'setup') {
        this.#log.info({ was: this.#problem.message }, 'the app can be managed again');
        this.#problem = undefined;
      }
      await this.#transition(state);
      if (interrupted !== undefined) {
        // Not carried out again (the app may have been restarted already, or
        // half-way): answered with what is found, so a --wait hears why.
        const links = await this.#fx.readLinks();
        const attempt: Attempt = { trigger: `request:${interrupted.command}:interrupted`, started: this.#fx.now(), snapshot: null, from: links, pidBefore: found.main?.pid };
        const now = found.main === undefined ? 'the app is not running' : `the app runs as pid ${found.main.pid}`;
        const err = new RelinkError('INTERRUPTED', `the agent stopped while it carried out relink ${interrupted.command} (asked at ${interrupted.at}); the next agent found that ${now}${found.main === undefined ? ' and starts it (supervision)' : ''}: relink ${interrupted.command} again if the new settings are wanted`,
          { rule: 'a request is carried out by the agent that took it', found: now });
        this.#log.warn({ request: interrupted.request, command: interrupted.command }, err.message);
        await this.#finish(attempt, 'failed', 'none', undefined, found.main, this.#state, err, { command: interrupted.command, request: interrupted.request });
      }
      if (unfinished && held !== undefined && found.main !== undefined) {
        this.#log.warn({ request: held.request, at: held.at, appPid: found.main.pid }, `the previous agent stopped before it finished relink stop (asked at ${held.at}): finishing it`);
        const links = await this.#fx.readLinks();
        const attempt: Attempt = { trigger: 'request:stop:recovered', started: this.#fx.now(), snapshot: null, from: links, pidBefore: found.main.pid };
        await this.#stopOnRequest(attempt, { command: 'stop', id: held.request, at: held.at }, found.main, { command: 'stop', request: held.request });
      }
      return true;
    } catch (err) {
      if (!(err instanceof RelinkError) && !isErrno(err)) throw err;
      const problem = problemOf(err, this.#fx.now());
      // Another agent took the app (or it cannot be confirmed): hands off.
      this.#ready = false;
      this.#tracker.forget();
      this.#cancelBackoff?.();
      this.#cancelBackoff = undefined;
      if (this.#problem?.message !== problem.message) {
        this.#log.error({ code: problem.code }, `cannot manage the app: ${problem.message}; the other apps are not affected, and this one is tried again on every re-check`);
        this.#problem = problem;
        this.#problemFrom = 'setup';
      }
      await this.#transition('error');
      return false;
    }
  }

  /** A pass went through: a problem of an earlier pass is over; said once. */
  async #solved(): Promise<void> {
    if (this.#problem === undefined || this.#problemFrom !== 'pass') return;
    this.#log.info({ was: this.#problem.message }, 'the last pass went through again');
    this.#problem = undefined;
    await this.#saveState();
  }

  async #pass(trigger: string): Promise<void> {
    // A backoff's retry is due whatever reason this pass ended up with: a
    // re-check coming due at the same moment displaces "retry:sockets"
    // (the newest reason wins), and must not take the file for judged.
    const retry = this.#retryDue;
    this.#retryDue = false;
    if (this.#recovering !== undefined) {
      const inflight = this.#recovering;
      this.#recovering = undefined;
      await this.#recover(inflight);
    }
    const early = trigger === EARLY_TRIGGER;
    // The periodic re-check reads current.conf only if it was written since
    // it was last judged (a stat, against reading it through src/safefs.ts
    // as the app's user): the idle agent's cost per app and re-check.
    const signature = await this.#fx.currentSignature();
    if (trigger === RECHECK_TRIGGER && !retry && signature === this.#judged?.signature) {
      if (this.#judged.snapshot !== undefined) await this.#reconcileLinks(trigger, this.#judged.snapshot);
      return;
    }
    let snapshot: CurrentSnapshot;
    try {
      snapshot = await this.#fx.readCurrent();
      // The early pass and the periodic re-check may read a file between a
      // writer's truncate and its write: that is the watcher's pass to judge,
      // unless the file has been left broken for a while (a missed event).
      if (!isJson(snapshot.text) && (early || (trigger === RECHECK_TRIGGER && this.#fx.now() - snapshot.mtimeMs < BROKEN_SETTLED_MS))) return;
      this.#readProblem = undefined;
      this.#judged = { signature, snapshot };
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      if (early) return;
      // Said once per problem (the same one is read again on every re-check),
      // changing nothing. A missing current.conf is normal before the first
      // deploy and for an instant during delete-then-recreate: only logged.
      // One that cannot be read (a FIFO, a link to a file the app's user may
      // not read, too large) is a refusal like any other: journaled, and
      // shown by relink status.
      this.#judged = { signature, snapshot: undefined };
      if (this.#readProblem === err.message) return;
      this.#readProblem = err.message;
      if (err.code === 'CURRENT_MISSING') {
        this.#log.warn({ code: err.code, file: err.file }, err.message);
        return;
      }
      const links = await this.#fx.readLinks();
      const attempt: Attempt = { trigger, started: this.#fx.now(), snapshot: null, from: links, pidBefore: this.#tracker.main?.pid };
      await this.#finish(attempt, 'refused', 'none', undefined, this.#tracker.main, this.#state, err);
      return;
    }
    if (this.#seen?.hash === snapshot.hash && this.#seen.mtimeMs === snapshot.mtimeMs) {
      await this.#reconcileLinks(trigger, snapshot);
      return;
    }
    this.#seen = { hash: snapshot.hash, mtimeMs: snapshot.mtimeMs };

    const links = await this.#fx.readLinks();
    const main = await this.#observe();
    const attempt: ReadAttempt = { trigger, started: this.#fx.now(), snapshot, from: links, pidBefore: main?.pid };

    let release: Release;
    try {
      release = await this.#fx.validate(snapshot.text);
      if (main !== undefined) {
        const misfit = await strategyMismatch(this.app, links.bin, release, (a, b) => this.#fx.sameContent(a, b));
        if (misfit !== undefined) throw misfit;
      }
      if (!sameRelease(links, release)) {
        // Held stopped (relink stop), a deploy only switches the links.
        const action: Action = main !== undefined ? ACTIONS[this.app.reload.strategy] : this.#held === undefined ? 'start' : 'none';
        if (!(await this.#preflight(release)) || !(await this.#hooks.beforeSwitch(pendingEntry(this.app, this.#fx.now(), attempt, action, release), this.#abort.signal))) {
          this.#abandon(release);
          return;
        }
      }
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      await this.#finish(attempt, 'refused', 'none', undefined, main, this.#state, err);
      return;
    }
    if (this.#closed) {
      this.#abandon(release);
      return;
    }

    if (sameRelease(links, release) && main !== undefined) {
      // Same release as what runs: nothing to switch, nothing to signal.
      this.#applied = { hash: snapshot.hash, release };
      this.#lastGood ??= { ...release, text: snapshot.text };
      this.#log.debug({ bin: release.bin, cfg: release.cfg, appPid: main.pid }, 'current.conf matches what runs');
      this.#matched = { hash: snapshot.hash, at: new Date(this.#fx.now()).toISOString() };
      this.#refusing = false;
      await this.#saveState();
      return;
    }
    if (this.#state === 'fatal' && main === undefined && sameRelease(links, release) && this.#problemFrom === 'fatal' && this.#problem !== undefined && snapshot.mtimeMs <= Date.parse(this.#problem.since)) {
      // A new agent's first look at an app given up on: current.conf has
      // not been written since, so nothing asks for it to run. Starting it
      // here would journal a "deployed" for a release that keeps crashing
      // and go through the same crash loop and its notifications again.
      this.#applied = { hash: snapshot.hash, release };
      this.#log.warn({ code: this.#problem.code, since: this.#problem.since }, `the app is fatal since ${this.#problem.since} (${this.#problem.message}); left down: deploy, re-save current.conf, or relink start ${this.app.name}`);
      return;
    }
    const last = this.#lastDeploy;
    if (trigger === 'startup' && main !== undefined && last?.outcome === 'failed' && last.currentHash === snapshot.hash && snapshot.mtimeMs <= Date.parse(last.time)) {
      // A new agent's first look after a deploy that failed, its rollback
      // too: current.conf has not been written since, so nothing asks for
      // that release again. Deployed again here, it stopped the generation
      // that still served (a trial, after a plain agent restart).
      this.#applied = { hash: snapshot.hash, release };
      this.#log.warn({ code: last.code, at: last.time, appPid: main.pid }, `the last deploy of this current.conf failed at ${last.time} (${last.reason ?? last.code ?? 'failed'}); not deployed again: pid ${main.pid} serves on; deploy, re-save current.conf, or relink restart ${this.app.name}`);
      return;
    }
    // A deliberate change (or a re-save) is a fresh start for supervision.
    this.#resetSupervision();
    await this.#deploy(attempt, release, await this.#settled(main), links);
  }

  /**
   * A process the crash supervision has just restarted may not have
   * installed its signal handlers yet: a reload signal would kill it. It is
   * given its settle time and probe first (as a deploy would judge it);
   * returns what runs after that (undefined if it died meanwhile).
   */
  async #settled(main: ProcInfo | undefined): Promise<ProcInfo | undefined> {
    const unsettled = this.#unsettled;
    this.#unsettled = undefined;
    if (main === undefined || unsettled === undefined || !sameProcess(main, unsettled)) return main;
    try {
      return await awaitHealthy(this.#fx, this.app, main, this.#verifyBy, this.#tracker.sinceMs, false, this.#launched);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      this.#log.warn({ appPid: main.pid, code: err.code }, `the restarted app did not settle before the deploy (${err.message})`);
      return this.#tracker.current();
    }
  }

  /** The agent is stopping and nothing has been switched: leave the change to the next agent. */
  #abandon(release: Release): void {
    // Not journaled and not remembered: the next agent reads current.conf afresh and applies it.
    this.#seen = undefined;
    this.#log.warn({ bin: release.bin, cfg: release.cfg }, 'the agent is stopping: deploy abandoned before anything was switched; the next agent applies it');
  }

  /** False when the agent is stopping (the preflight was killed); throws PREFLIGHT_FAILED on a refusal. */
  async #preflight(release: Release): Promise<boolean> {
    const r = await this.#fx.preflight(release, this.#abort.signal);
    if (r === undefined || r.ok) return true;
    if (r.aborted === true || this.#closed) return false;
    throw preflightRefusal(this.app, release, r);
  }

  /** Links moved away from what current.conf names (a hand edit, a missed event): put them back. */
  async #reconcileLinks(trigger: string, snapshot: CurrentSnapshot): Promise<void> {
    if (this.#applied === undefined || this.#applied.hash !== snapshot.hash || this.#state === 'deploying') return;
    const links = await this.#fx.readLinks();
    if (sameRelease(links, this.#applied.release)) return;
    const main = await this.#observe();
    // The running process never saw the drift (nothing signalled it): if it
    // runs the release current.conf names, putting the links back is all
    // there is to do. Signalling it would be a reload nobody asked for (and
    // one that can fail).
    if (main !== undefined && runsRelease(this.app, main, this.#applied.release)) {
      try {
        await this.#fx.relink(this.#applied.release);
        this.#log.warn({ links, expected: this.#applied.release, appPid: main.pid }, 'links drifted from current.conf; put back (the app runs that release: not signalled)');
      } catch (err) {
        if (!(err instanceof RelinkError)) throw err;
        this.#log.error({ code: err.code, links, expected: this.#applied.release }, `links drifted from current.conf and could not be put back: ${err.message}`);
      }
      return;
    }
    this.#log.warn({ links, expected: this.#applied.release }, 'links drifted from current.conf; repairing');
    await this.#deploy({ trigger: `${trigger}:drift`, started: this.#fx.now(), snapshot, from: links, pidBefore: main?.pid }, this.#applied.release, main, links);
  }

  async #deploy(attempt: ReadAttempt, release: Release, main: ProcInfo | undefined, links: { bin: string | undefined; cfg: string | undefined }): Promise<void> {
    // An app's hooks run one at a time, in the order of its deploys.
    await this.#hooks.idle(this.#abort.signal);
    if (this.#held !== undefined && main === undefined) {
      // Stopped on request: the links switch and the app stays stopped
      // (journaled "stopped"); relink start runs the release they name.
      // Links already there (the first pass of a new agent): nothing to say.
      if (sameRelease(links, release)) {
        this.#applied = { hash: attempt.snapshot.hash, release };
        this.#matched = { hash: attempt.snapshot.hash, at: new Date(this.#fx.now()).toISOString() };
        await this.#saveState();
        return;
      }
      try {
        if (!sameRelease(links, release)) await this.#fx.relink(release);
      } catch (err) {
        if (!(err instanceof RelinkError)) throw err;
        await this.#finish(attempt, 'failed', 'none', release, undefined, 'stopped', err);
        return;
      }
      this.#applied = { hash: attempt.snapshot.hash, release };
      await this.#finish(attempt, 'stopped', 'none', release, undefined, 'stopped');
      return;
    }
    // Recorded before anything is switched: an agent killed from here on
    // leaves the next one what it needs to finish judging (#recover).
    this.#inflight = inflightFor(attempt, release, main, links, this.#fx.ticks());
    await this.#transition('deploying');
    try {
      try {
        if (!sameRelease(links, release)) await this.#fx.relink(release);
      } catch (err) {
        if (!(err instanceof RelinkError)) throw err;
        await this.#finish(attempt, 'failed', 'none', release, main, main === undefined ? 'stopped' : 'running', err);
        return;
      }
      const action: Action = main === undefined ? 'start' : ACTIONS[this.app.reload.strategy];
      await this.#judge(attempt, release, main, action, () => (main === undefined ? this.#startNew(this.#verifyBy) : this.#takeOver(main, this.#verifyBy)));
    } catch (err) {
      if (!(err instanceof RelinkError)) await this.#internal(attempt, release, err);
      throw err;
    }
  }

  /**
   * Bring `release` up (`bringUp`: a start or a reload, or what already
   * runs it) and judge it: deployed, or whatever failed is stopped and the
   * last known-good release rolled back to.
   */
  async #judge(attempt: ReadAttempt, release: Release, before: ProcInfo | undefined, action: Action, bringUp: () => Promise<ProcInfo>): Promise<void> {
    let after: ProcInfo | undefined;
    this.#newGen = undefined;
    this.#outage = undefined;
    const since = this.#fx.now();
    try {
      after = await bringUp();
      if (action !== 'signal' || this.app.reload.mode === 'reexec') assertBinary(this.app, after, release);
      after = await awaitHealthy(this.#fx, this.app, after, this.#verifyBy, since, false, this.#launched);
      if (action === 'signal' && this.app.reload.strategy === 'inplace') await this.#assertNoNewMaster(after);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      if (before === undefined && this.#bindFailed) {
        await this.#retryUnbound(attempt, release, err);
        return;
      }
      // Judged failed: a rollback from here on, saved before the failed
      // generation is stopped (up to stop.timeoutMs). An agent killed
      // meanwhile left a deploy to judge again, and status said so (a
      // trial); the next one now carries out the rollback.
      if (this.#inflight?.phase === 'deploy' && this.#lastGood !== undefined && !sameRelease(this.#lastGood, release)) {
        this.#inflight = this.#rollbackPhase(this.#inflight, err);
        await this.#saveState();
      }
      await this.#stopFailed(before, err);
      await this.#rollback(attempt, action, release, before, err);
      return;
    }
    this.#unboundTries = undefined;
    await this.#atStrength(after, before);
    await this.#serve(after, before);
    if (after.deleted) this.#log.warn({ appPid: after.pid, exe: after.exe }, `pid ${after.pid} runs ${after.exe}, which was replaced or deleted on disk since it started`);
    if (this.app.reload.mode === 'inplace' && after.exe !== release.bin && after.exe.startsWith(path.dirname(release.bin) + path.sep)) {
      this.#log.warn({ appPid: after.pid, exe: after.exe, bin: release.bin }, `pid ${after.pid} still runs ${after.exe}: an in-place reload reloads the config only; ${release.bin} runs once the app is restarted`);
    }
    this.#applied = { hash: attempt.snapshot.hash, release };
    this.#lastGood = { ...release, text: attempt.snapshot.text };
    this.#liveness?.reset();
    // Its workers, started while it was being judged, are known from now on.
    await this.#fx.refreshLineage();
    await this.#finish(attempt, 'deployed', action, release, after, 'running', undefined, this.#outageExtra());
  }

  /**
   * A start (nothing serving) whose sockets could not be bound: the release
   * never ran, so nothing is rolled back and the links stay on it. The same
   * deploy is tried again after the crash supervision's backoff
   * (supervise.backoffMs, doubled each try, capped at maxBackoffMs; trigger
   * "retry:sockets"), up to supervise.maxRetries times, then the app is
   * fatal. Each try is journaled (failed, SOCKET_UNAVAILABLE, saying when
   * the next one is). A trial found an outgoing connection holding the
   * app's port for a while at boot: the app stayed down until current.conf
   * was written again. Without supervision it is not tried again.
   */
  async #retryUnbound(attempt: ReadAttempt, release: Release, err: RelinkError): Promise<void> {
    this.#newGen = undefined;
    const tries = (this.#unboundTries?.hash === attempt.snapshot.hash ? this.#unboundTries.tries : 0) + 1;
    const { enabled, maxRetries } = this.app.supervise;
    const detail = { key: err.key, rule: err.rule, found: err.found, file: err.file };
    if (!enabled || tries > maxRetries) {
      this.#unboundTries = undefined;
      const wayOut = `left alone until the next deploy, a re-save of current.conf, or relink start ${this.app.name}`;
      const e = new RelinkError(err.code, enabled
        ? `${err.message}; ${tries} tries, ${tries - 1} of them after a backoff (supervise.maxRetries: ${maxRetries}): marked fatal and ${wayOut}`
        : `${err.message}; not tried again (supervise.enabled is false): ${wayOut}`, detail);
      this.#problem = problemOf(e, this.#fx.now());
      this.#problemFrom = enabled ? 'fatal' : 'start';
      await this.#finish(attempt, 'failed', 'start', release, undefined, enabled ? 'fatal' : 'failed', e);
      return;
    }
    const delayMs = backoffDelay(tries, true, this.app.supervise);
    const e = new RelinkError(err.code, `${err.message}; tried again in ${delayMs} ms (${tries} of supervise.maxRetries: ${maxRetries})`, detail);
    this.#unboundTries = { hash: attempt.snapshot.hash, tries };
    this.#problem = problemOf(e, this.#fx.now());
    this.#problemFrom = 'start';
    await this.#finish(attempt, 'failed', 'start', release, undefined, 'backoff', e);
    // The same current.conf is deployed again by the next pass.
    this.#seen = undefined;
    this.#cancelBackoff?.();
    this.#cancelBackoff = this.#fx.schedule(delayMs, () => {
      this.#cancelBackoff = undefined;
      this.#retryDue = true;
      this.trigger('retry:sockets');
    });
  }

  /**
   * The deploy in flight turned rollback (saved by the caller before the
   * links go back): why, and from when (the first time only): a process
   * started since is the rollback's own, which the next agent judges as it
   * is rather than replacing it (a trial: a good generation already serving
   * was restarted, a second outage).
   */
  #rollbackPhase(inf: InFlight, cause: RelinkError): InFlight {
    return { ...inf, phase: 'rollback', cause: { code: cause.code, message: cause.message }, rollbackTick: inf.phase === 'rollback' && inf.rollbackTick !== undefined ? inf.rollbackTick : this.#fx.ticks() };
  }

  /**
   * An unexpected (untyped) error in the middle of a deploy: it still ends
   * in a journaled outcome (failed, INTERNAL) and a state that says what
   * runs, never "deploying"; the caller rethrows it to the pass's handler.
   */
  async #internal(attempt: ReadAttempt, release: Release, err: unknown): Promise<void> {
    const what = describeError(err).message;
    this.#newGen = undefined;
    this.#reloading = undefined;
    const now = await this.#tracker.current().catch(() => undefined);
    const next: AppStateName = now === undefined ? 'failed' : 'running';
    const e = new RelinkError('INTERNAL', `the deploy was cut short by an unexpected error: ${what}`, { rule: 'a deploy ends with a verdict', found: what });
    try {
      await this.#finish(attempt, 'failed', 'none', release, now, next, e);
    } catch {
      // The journal could not be written either: the state still moves on.
      this.#inflight = undefined;
      await this.#transition(next).catch(() => undefined);
    }
  }

  /**
   * The previous agent died with a deploy in flight (the state file says
   * so, and the journal has no verdict for it): finish judging it. Links not
   * yet switched: nothing happened, and the pass that follows applies
   * current.conf. Switched: the new release is brought up if it is not
   * already (a successor of the opened generation, or a process started
   * after the switch, is judged as it is; an old main is signalled; with
   * nothing running the app is started), judged, and journaled deployed or
   * rolled back. A rollback that was under way is carried out again.
   */
  async #recover(inf: InFlight): Promise<void> {
    const release: Release = { bin: inf.release.bin, cfg: inf.release.cfg };
    const links = await this.#fx.readLinks();
    if (inf.phase === 'deploy' && !sameRelease(links, release)) {
      this.#log.warn({ bin: release.bin, cfg: release.cfg }, 'the previous agent stopped before switching the links for a deploy: current.conf is applied afresh');
      return;
    }
    const attempt = recoveredAttempt(inf);
    this.#log.warn({ phase: inf.phase, bin: release.bin, cfg: release.cfg }, `the previous agent stopped in the middle of a ${inf.phase === 'deploy' ? 'deploy' : 'rollback'}: judging it now`);
    this.#inflight = inf;
    this.#seen = undefined;
    // The deploy restarted the app (stopped the old generation first): its
    // entry says so, with the gap from then (outageMs, or queuedMs with the
    // sockets held), measured when this agent starts the app itself, else
    // null (it came back while no agent ran).
    const gap = inf.restart === undefined ? undefined : { goneAt: inf.restart.goneAtMs, held: inf.restart.held };
    this.#outage = gap;
    await this.#transition('deploying');
    try {
      const found = await this.#fx.discover();
      const before = found.all.find((p) => p.pid === inf.pidBefore);
      if (inf.phase === 'rollback') {
        const cause = new RelinkError(asErrorCode(inf.cause?.code), inf.cause?.message ?? 'the deploy failed verification');
        // The failed generation may still run beside the old one it never
        // replaced (killed after the links went back, before it was
        // stopped): stopped first, as the rollback it interrupted would have
        // (a quiesced old master resumed before: #stopFailed).
        const newest = Math.max(0, ...found.all.map((p) => p.gen ?? 0));
        if (before?.gen !== undefined && newest > before.gen) {
          this.#newGen = newest;
          await this.#stopFailed(before, cause);
        }
        // A generation the rollback started before the agent was killed runs
        // the good release: judged as it is, not replaced (a trial: under
        // "socket" with the sockets not held, it was restarted).
        const since = inf.rollbackTick;
        const own = since === undefined ? undefined : newestRoot(found.all.filter((p) => p.startTime >= since && !sameProcess(p, before)));
        // Journaled with the action of the deploy it rolls back ("replace" under "socket").
        await this.#rollback(attempt, inf.pidBefore === null ? 'start' : ACTIONS[this.app.reload.strategy], release, before, cause, own);
        return;
      }
      const plan = recoveryPlan(inf, found, this.#fx.lineage()?.serving ?? 0, this.app.reload.mode);
      const takeOver: Record<Strategy, string> = { reexec: 'signalling the main process', inplace: 'signalling the main process', upgrade: 'signalling the main process', socket: 'starting a new generation beside the main process', restart: 'restarting the app' };
      this.#log.info({ plan: plan.kind, appPid: plan.kind === 'start' ? undefined : plan.proc.pid }, `recovering the deploy: ${plan.kind === 'judge' ? 'judging what runs it' : plan.kind === 'signal' ? takeOver[this.app.reload.strategy] : 'starting the app'}`);
      const prior = before ?? found.main;
      await this.#judge(attempt, release, prior, plan.kind === 'start' ? 'start' : ACTIONS[this.app.reload.strategy], async () => {
        // (#judge begins with no gap measured: the interrupted restart's is carried over.)
        if (plan.kind !== 'signal') this.#outage = gap === undefined ? undefined : { ...gap };
        if (plan.kind === 'judge') {
          // A generation the previous agent brought up beside one that still
          // serves (the old main lives on: "upgrade"; or the agent started
          // it: "socket") is stopped like any if it fails. One that is all
          // that serves (a re-exec whose old main has exited) is not: the
          // rollback reloads it (see #stopFailed).
          const strategy = this.app.reload.strategy;
          const beside = (before !== undefined && plan.proc.gen !== before.gen) || ((strategy === 'socket' || strategy === 'restart') && plan.proc.gen !== prior?.gen);
          if (plan.proc.gen !== undefined && beside) this.#newGen = plan.proc.gen;
          // A new master beside the old one, which the previous agent was
          // killed before it quiesced (the state file names it once quiesced:
          // not signalled twice).
          if (strategy === 'upgrade' && before !== undefined && beside && !sameProcess(this.#quiesced, before)) await this.#quiesce(before, plan.proc, this.#verifyBy);
          return plan.proc;
        }
        if (plan.kind === 'signal') return this.#takeOver(plan.proc, this.#verifyBy);
        const started = await this.#startNew(this.#verifyBy);
        await this.#firstAccepted(started, this.#verifyBy);
        return started;
      });
    } catch (err) {
      if (!(err instanceof RelinkError)) await this.#internal(attempt, release, err);
      throw err;
    }
  }

  /**
   * A main that died with processes of its generation alive (a master
   * killed with its workers): they hold the port and the old config, and a
   * new copy could not bind. Stopped before anything is started.
   */
  async #stopLeftovers(): Promise<void> {
    const leftovers = this.#tracker.leftovers;
    if (leftovers.length === 0) return;
    this.#log.error({ pids: leftovers.map((p) => p.pid), code: 'APP_CRASHED' },
      `the app's main process died and left ${leftovers.length} of its processes running (${leftovers.map((p) => p.pid).join(', ')}): stopping them before the app is started again`);
    await this.#generations.stop(leftovers);
    this.#tracker.leftoversStopped();
  }

  async #startNew(stopBy: StopBy, serve = true): Promise<ProcInfo> {
    await this.#stopLeftovers();
    // Sockets that could not be held before (a folder made since, a port
    // freed) are tried again before every start.
    this.#bindFailed = false;
    if (!this.#fx.socketsHeld()) {
      const unheld = await this.#fx.holdSockets();
      for (const u of unheld) this.#log.error({ code: u.error.code }, u.error.message);
      // Nothing can start without them: said with the bind's own error.
      if (unheld.length > 0) {
        this.#bindFailed = unheld.every((u) => u.retry);
        throw unheld[0]!.error;
      }
    }
    // Nothing of the app runs and no socket is held for it: whatever
    // already listens on the probe's port is someone else, who would answer
    // the new generation's health checks (an orphan of an earlier run, a
    // second copy started by hand). Said before the start, with its PID.
    if (serve && this.app.sockets.length === 0) {
      const taken = this.#fx.probePortTaken();
      if (taken !== undefined) {
        const who = describeListener(taken) ?? 'a process the agent cannot see';
        this.#log.warn({ code: 'PORT_TAKEN' satisfies ErrorCode, port: taken.port, holderPid: taken.pid, holderExe: taken.exe },
          `port ${taken.port} of the health probe (health.${this.app.health.probe !== undefined && 'url' in this.app.health.probe ? 'url' : 'tcp'}) is already listened on by ${who}, not a process of this app: the app may fail to bind it, and its health checks would be answered by that process (stop it, or point the probe at the app's own address)`);
      }
    }
    const launched = await this.#fx.launch({ serve });
    // The new generation, stopped if it fails verification.
    this.#newGen = launched.gen;
    this.#started = { gen: launched.gen, settings: launchSettings(this.app) };
    // Known on disk before it is waited for: an agent killed now leaves the
    // next one able to judge it (or stop it), never an unknown copy serving;
    // nor, for a start, a daemon it cannot tie to the app (nginx, its marker
    // overwritten: started a second time beside itself).
    await this.#saveState();
    let exited: string | undefined;
    const ended = launched.exited.then(({ code, signal }) => {
      exited = describeExit(code, signal);
      // Our own child: no need to wait for the next monitor tick.
      this.check();
      return exited;
    });
    // Started beside a serving generation, it shares the app's output with
    // it: the last lines may be the other one's (its access log, under load),
    // so they are not quoted as this one's.
    const output = serve ? launched.output : undefined;
    this.#launched = { pid: launched.pid, ended, output };
    return awaitStart(this.#fx, this.app, launched.pid, () => exited, output, stopBy, launched.gen);
  }

  /**
   * Bring the new release up over `main`, which serves the old one, the
   * way reload.strategy says: a signal and the app's own handoff (reexec,
   * inplace), a new master the agent stops the old one of once it is judged
   * (upgrade), a new generation started on the held sockets beside the old
   * (socket), or stop then start (restart). Returns the process to judge.
   */
  async #takeOver(main: ProcInfo, stopBy: StopBy): Promise<ProcInfo> {
    switch (this.app.reload.strategy) {
      case 'reexec':
      case 'inplace':
      case 'upgrade':
        return this.#reload(main, stopBy);
      case 'socket':
        if (!this.#fx.socketsHeld()) {
          const unheld = await this.#fx.holdSockets();
          // One that stopping the app would not free (another program
          // listens there, a folder is missing): refused before anything is
          // stopped. A trial saw the healthy app stopped, then the bind fail.
          const blocking = unheld.find((u) => u.own !== true);
          if (blocking !== undefined) throw blocking.error;
          if (unheld.length > 0) {
            // Held by the running generation, not by this agent (an agent
            // started by hand before this one bound them): they cannot be
            // shared, so this once the app is restarted, and bound after.
            this.#log.warn({ appPid: main.pid, addresses: unheld.map((u) => u.address) }, 'the sockets are held by the running generation, not by this agent (an agent started by hand was restarted): this deploy restarts the app once (journal: action "restart", outageMs); later ones share the held sockets');
            return this.#restart(main, stopBy);
          }
        }
        // The old generation is not touched until the new one is judged.
        return this.#startNew(stopBy, false);
      case 'restart':
        return this.#restart(main, stopBy);
    }
  }

  /**
   * Stop the serving generation (stop.signal to its main, SIGKILL to what is
   * left after stop.timeoutMs), then start the new release. With the sockets
   * held by the agent, connections wait in their backlog meanwhile; without,
   * they are refused: the gap is measured (#outage) for the journal entry.
   */
  async #restart(main: ProcInfo, stopBy: StopBy): Promise<ProcInfo> {
    const held = this.app.sockets.length > 0 && this.#fx.socketsHeld();
    const members = (this.#fx.lineage()?.members ?? []).filter((m) => m.gen === main.gen);
    this.#log.info({ appPid: main.pid, signal: this.app.stop.signal }, `restart: ${this.app.stop.signal} to pid ${main.pid}, then the new release is started`);
    await this.#generations.stop(members.length > 0 ? members : [main], this.app.stop.timeoutMs, this.app.stop.signal, [main]);
    this.#tracker.forget();
    // Sockets a running generation held for an agent started by hand before
    // this one (README: "Held sockets and a restarted agent") can be bound now.
    const unheld = await this.#fx.holdSockets();
    for (const u of unheld) this.#log.error({ code: u.error.code }, u.error.message);
    this.#outage = { goneAt: this.#fx.now(), held };
    // Saved now: an agent killed from here on (before the start, or while
    // it is judged) leaves the next one to journal the restart and its gap
    // (a trial: killed between the stop and the start, the next agent's
    // start was journaled "start", the gap unsaid).
    if (this.#inflight !== undefined) {
      this.#inflight = { ...this.#inflight, restart: { goneAtMs: this.#outage.goneAt, held } };
      await this.#saveState();
    }
    const started = await this.#startNew(stopBy);
    await this.#firstAccepted(started, stopBy);
    return started;
  }

  /**
   * A gap is being measured (#outage): the moment `started` first accepts
   * ends it. Asked in short slices while the started process lives: one
   * that died at once is judged now, not after reload.timeoutMs of asking
   * (a trial saw 15 s of nothing running before the verdict).
   */
  async #firstAccepted(started: ProcInfo, stopBy: StopBy): Promise<void> {
    if (this.#outage === undefined) return;
    const until = Math.min(this.#fx.now() + this.app.reload.timeoutMs, stopBy());
    let accepted: number | undefined;
    while (accepted === undefined && this.#fx.now() < until && (await this.#fx.verify(started)) !== undefined) {
      accepted = await this.#fx.firstAnswer(Math.min(this.#fx.now() + FIRST_ANSWER_SLICE_MS, until));
    }
    if (accepted !== undefined && this.#outage !== undefined) this.#outage.acceptedAt = accepted;
  }

  /**
   * Under "upgrade" the serving master is a child of the one it replaced
   * until that one has exited and it has been re-parented: gunicorn ("USR2
   * signal ignored. Parent exists.") and nginx ignore the upgrade signal
   * until then. So a deploy right after another waits for it, for as long
   * as the old master may drain (stop.timeoutMs), then kills it (it has had
   * its stop time).
   */
  async #awaitOldMasterGone(main: ProcInfo, stopBy: StopBy): Promise<ProcInfo> {
    // The main's parent, of an older generation of the app: replaced by
    // this agent or by one before it (restarted while it drained).
    const old = this.#olderParent(main);
    if (old === undefined) return main;
    // From when it was first told to stop (by this agent or the one before).
    const oldGen = this.#fx.lineage()?.members.find((m) => sameProcess(m, old))?.gen;
    const toldAt = oldGen === undefined ? undefined : this.#generations.draining().find((d) => d.gen === oldGen)?.stopAt;
    const deadline = (toldAt ?? this.#fx.now()) + this.app.stop.timeoutMs;
    let killed = false;
    for (;;) {
      const cur = await this.#fx.verify(main);
      if (cur === undefined || this.#fx.parentOf(cur.pid) !== old.pid) {
        return cur ?? main;
      }
      if (this.#fx.now() >= Math.min(deadline, stopBy())) {
        if (killed || this.#fx.now() >= stopBy()) return cur;
        this.#log.warn({ appPid: old.pid, stopTimeoutMs: this.app.stop.timeoutMs }, `the replaced master (pid ${old.pid}) still runs ${this.app.stop.timeoutMs} ms after ${this.app.stop.signal} (stop.timeoutMs): SIGKILL, so that pid ${main.pid} takes ${this.app.reload.signal}`);
        this.#fx.signal(old.pid, 'SIGKILL');
        killed = true;
      }
      await this.#fx.sleep(20);
    }
  }

  /** The parent of `main` when it is a process of an older generation of the app (the master it was started by, draining). */
  #olderParent(main: ProcInfo): ProcIdentity | undefined {
    const ppid = this.#fx.parentOf(main.pid);
    const rec = this.#fx.lineage();
    const gen = main.gen ?? rec?.serving;
    const m = ppid === undefined || gen === undefined ? undefined : rec?.members.find((x) => x.pid === ppid && x.gen < gen);
    return m === undefined ? undefined : { pid: m.pid, startTime: m.startTime };
  }

  /** The generation the agent started last now serves: the settings it was started with are the app's. */
  #startedServes(gen: number | undefined): void {
    if (gen !== undefined && this.#started?.gen === gen) {
      this.#settings = this.#started.settings;
      this.#started = undefined;
    }
  }

  /**
   * The config's launch settings that the serving generation was not
   * started with ("env.APP_COLOR", "limits.nofile"...): what a restart would
   * apply. Empty when they match or are unknown.
   */
  settingsToApply(): string[] {
    return this.#settings === undefined ? [] : changedSettings(this.#settings, launchSettings(this.app));
  }

  /** Take the operators' requests waiting on disk and answer each, oldest first, with a journal entry carrying its id. */
  async #answerRequests(): Promise<void> {
    const taken = await this.#fx.takeRequests((d) => this.#log.warn({ file: d.file }, `not a request (set aside): ${describeDamage(d)}`));
    for (const r of taken.expired) {
      // Not carried out late (its asker was told, or gave up): answered, so a --wait still waiting hears why.
      const links = await this.#fx.readLinks();
      const attempt: Attempt = { trigger: `request:${r.command}`, started: this.#fx.now(), snapshot: null, from: links, pidBefore: this.#tracker.main?.pid };
      const err = new RelinkError('REQUEST_EXPIRED', `relink ${r.command} asked at ${r.at} was not carried out: it expired at ${r.expiresAt ?? '?'} before the agent could take it${this.#problem === undefined ? '' : ` (the app could not be managed: ${this.#problem.message})`}; ask again if it is still wanted`,
        { rule: 'a request is carried out before it expires', found: `taken at ${new Date(this.#fx.now()).toISOString()}` });
      this.#log.warn({ command: r.command, request: r.id, at: r.at, expiresAt: r.expiresAt }, err.message);
      await this.#finish(attempt, 'refused', 'none', undefined, this.#tracker.main, this.#state, err, { command: r.command, request: r.id });
    }
    for (const r of taken.due) {
      const links = await this.#fx.readLinks();
      const main = await this.#observe();
      const attempt: Attempt = { trigger: `request:${r.command}`, started: this.#fx.now(), snapshot: null, from: links, pidBefore: main?.pid };
      const extra: Extra = { command: r.command, request: r.id };
      if (this.#closed) {
        await this.#finish(attempt, 'failed', 'none', undefined, main, this.#state, stopping(r.command), extra);
        continue;
      }
      this.#log.info({ command: r.command, request: r.id, at: r.at }, `relink ${r.command} asked`);
      if (r.command === 'stop') await this.#stopOnRequest(attempt, r, main, extra);
      else {
        // Saved first (a stop is saved as `held`): an agent killed meanwhile leaves the next one to answer it.
        this.#answering = { command: r.command, request: r.id, at: r.at };
        await this.#saveState();
        try {
          await this.#startOnRequest(attempt, r.command, main, links, extra);
        } finally {
          this.#answering = undefined;
        }
      }
    }
  }

  /**
   * relink stop: every generation gets stop.signal (its main; workers follow
   * their master), SIGKILL to what is left after stop.timeoutMs. Held
   * (saved first: an agent killed meanwhile leaves the app held).
   */
  async #stopOnRequest(attempt: Attempt, r: AppRequest, main: ProcInfo | undefined, extra: Extra): Promise<void> {
    this.#held = { at: r.at, request: r.id };
    this.#cancelBackoff?.();
    this.#cancelBackoff = undefined;
    this.#restartDue = false;
    await this.#saveState();
    const found = await this.#fx.discover(main);
    const all = found.all;
    const roots = all.filter((p) => !all.some((q) => q.pid === p.ppid));
    if (all.length > 0) {
      this.#log.info({ pids: roots.map((p) => p.pid), signal: this.app.stop.signal, timeoutMs: this.app.stop.timeoutMs }, `relink stop: ${this.app.stop.signal} to ${roots.map((p) => `pid ${p.pid}`).join(', ')}`);
      await this.#generations.stop(all, this.app.stop.timeoutMs, this.app.stop.signal, roots);
    }
    this.#tracker.forget();
    await this.#fx.refreshLineage(true);
    const left = (await this.#fx.discover()).all;
    if (left.length > 0) {
      const err = new RelinkError('STOP_FAILED', `relink stop: ${left.length} process(es) of the app still run after ${this.app.stop.signal} and SIGKILL: ${left.map((p) => p.pid).join(', ')}`,
        { key: 'stop', rule: 'every process of the app must exit', found: left.map((p) => p.pid).join(', ') });
      await this.#finish(attempt, 'failed', 'stop', undefined, undefined, 'stopped', err, extra);
      return;
    }
    await this.#finish(attempt, 'stopped', 'stop', undefined, undefined, 'stopped', undefined, extra);
  }

  /**
   * relink start (from the current links; also the way out of "fatal" and
   * of a stop) and relink restart (a new generation the strategy's way; a
   * stop and start when the config's env, command, user or limits changed
   * and the strategy would have the app inherit the old ones). Judged like
   * a deploy; never rolled back (the release is the same): a failure is
   * journaled "failed", and supervision goes on as after a crash.
   */
  async #startOnRequest(attempt: Attempt, command: Command, main: ProcInfo | undefined, links: { bin: string | undefined; cfg: string | undefined }, extra: Extra): Promise<void> {
    const wasHeld = this.#held !== undefined;
    this.#held = undefined;
    this.#resetSupervision();
    if (this.#state === 'fatal') await this.#transition(main === undefined ? 'stopped' : 'running');
    const release = links.bin !== undefined && links.cfg !== undefined ? { bin: links.bin, cfg: links.cfg } : undefined;
    if (release === undefined) {
      const err = new RelinkError('NOTHING_TO_START', `relink ${command}: the app has no release linked yet (${this.app.links.bin} and ${this.app.links.cfg}): deploy one first (relink deploy)`,
        { key: 'links', rule: 'a release must be linked', found: 'no links' });
      await this.#finish(attempt, 'failed', 'none', undefined, main, this.#state, err, extra);
      return;
    }
    if (main !== undefined && command === 'start') {
      this.#log.info({ appPid: main.pid }, `relink start: already running (pid ${main.pid})${wasHeld ? '; no longer held' : ''}`);
      await this.#finish(attempt, 'deployed', 'none', release, main, 'running', undefined, extra);
      return;
    }
    // The linked release checked as a deploy checks it (the app's user may
    // read and run it, trust), before anything is stopped: a trial's
    // relink restart stopped a healthy app whose live cfg an ACL had since
    // made unreadable to its user, which then could not start.
    try {
      await this.#fx.validate(currentTextFor(this.app.currentFile, release));
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      const problems = err instanceof RelinkErrors ? err.problems : [err];
      const e = new RelinkError(err.code, `relink ${command}: the linked release is refused, nothing was ${main === undefined ? 'started' : 'stopped'}: ${problems.map((p) => p.message).join('; ')}`, { key: err.key, rule: err.rule, found: err.found, file: err.file });
      this.#log.error({ code: e.code }, e.message);
      await this.#finish(attempt, 'failed', 'none', release, main, main === undefined ? this.#state : 'running', e, extra);
      return;
    }
    const stale = this.settingsToApply();
    const inherits = this.app.reload.strategy === 'reexec' || this.app.reload.strategy === 'inplace' || this.app.reload.strategy === 'upgrade';
    let action: Action = main === undefined ? 'start' : ACTIONS[this.app.reload.strategy];
    this.#newGen = undefined;
    this.#outage = undefined;
    const since = this.#fx.now();
    await this.#transition('deploying');
    let after: ProcInfo | undefined;
    try {
      if (main === undefined) {
        after = await this.#startNew(this.#verifyBy);
      } else if (inherits && stale.length > 0) {
        this.#log.warn({ changed: stale }, `relink restart: ${stale.join(', ')} changed in the config; under reload.strategy "${this.app.reload.strategy}" the app would inherit the old ones, so it is stopped and started (refused connections meanwhile unless the agent holds its sockets)`);
        action = 'restart';
        after = await this.#restart(main, this.#verifyBy);
      } else {
        after = await this.#takeOver(main, this.#verifyBy);
      }
      after = await awaitHealthy(this.#fx, this.app, after, this.#verifyBy, since, false, this.#launched);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      await this.#stopFailed(main, err);
      const now = await this.#observe();
      if (now === undefined) {
        // Nothing runs: supervision goes on as after a start that failed
        // now (its backoff and its reason), not as after a run that lasted
        // since the one before the stop (that restarted it at once).
        this.#tracker.restartFailed();
        this.#startFailed = true;
        this.#problem = problemOf(err, this.#fx.now());
        this.#problemFrom = 'start';
      }
      // Said in the verdict, so the asker knows the app may still come up.
      const { enabled, backoffMs, maxRetries } = this.app.supervise;
      const told = now === undefined && enabled
        ? new RelinkError(err.code, `${err.message}; crash supervision tries again in ${backoffMs} ms, backing off up to supervise.maxRetries (${maxRetries}) times, and journals the start that works`, { key: err.key, rule: err.rule, found: err.found, file: err.file })
        : err;
      await this.#finish(attempt, 'failed', action, release, now, now === undefined ? 'stopped' : 'running', told, { ...extra, strategy: this.app.reload.strategy });
      return;
    }
    await this.#serve(after, main);
    this.#liveness?.reset();
    // Started and judged healthy: the release a failed deploy goes back to
    // (it may have been linked by a deploy while the app was stopped).
    this.#lastGood = { ...release, text: currentTextFor(this.app.currentFile, release) };
    await this.#fx.refreshLineage();
    await this.#finish(attempt, 'deployed', action, release, after, 'running', undefined, { ...this.#outageExtra(), ...extra });
  }

  /** The journal's figures for a restart's gap: outageMs (nothing held: refused meanwhile) or queuedMs (held: waited in the backlog). */
  #outageExtra(): Extra {
    const o = this.#outage;
    this.#outage = undefined;
    if (o === undefined) return { strategy: this.app.reload.strategy };
    const ms = o.acceptedAt === undefined ? null : Math.max(0, o.acceptedAt - o.goneAt);
    return { strategy: this.app.reload.strategy, action: 'restart', ...(o.held ? { queuedMs: ms } : { outageMs: ms }) };
  }

  /**
   * After an in-place reload: a child of the main running the same
   * executable that has children of its own is a new master (gunicorn,
   * unicorn, nginx on SIGUSR2), which "inplace" would leave running beside
   * the old one.
   */
  async #assertNoNewMaster(main: ProcInfo): Promise<void> {
    const found = await this.#fx.discover(main);
    const master = found.all.find((p) => p.ppid === main.pid && p.exe === main.exe && found.all.some((c) => c.ppid === p.pid));
    if (master === undefined) return;
    throw new RelinkError('STRATEGY_MISMATCH',
      `a new master (pid ${master.pid}, a child of pid ${main.pid} with workers of its own) appeared after ${this.app.reload.signal}: the app upgrades rather than reloads in place on that signal; use reload.strategy "upgrade" (and stop.signal for its old master), or the signal that reloads in place (gunicorn, nginx: SIGHUP)`,
      { key: 'reload.strategy', rule: '"inplace" must not start a second master', found: `pid ${master.pid}` });
  }

  async #reload(main: ProcInfo, stopBy: StopBy): Promise<ProcInfo> {
    if (this.app.reload.strategy === 'upgrade') main = await this.#awaitOldMasterGone(main, stopBy);
    // Read again right before the signal: the handoff check compares the
    // children it has reaped (childFaults) with this moment, not the start
    // of the pass (the preflight may have taken seconds); and the workers
    // it has now are known, so one it reaps after the signal is not taken
    // for a successor that died (gunicorn had forked its workers after the
    // last look: judged APP_EXITED instead of an in-place reload).
    await this.#fx.refreshLineage(true);
    main = (await this.#fx.verify(main)) ?? main;
    const gen = this.#fx.openGeneration(main);
    this.#newGen = gen;
    this.#reloading = { gen, main };
    // The opened generation is on disk before the signal: an agent killed
    // right after it leaves the next one able to tell the successor (saved
    // after the signal, a kill in between had the next agent signal again:
    // nginx and gunicorn ignore an upgrade signal while a new master runs,
    // and two masters served on).
    await this.#saveState();
    this.#log.info({ appPid: main.pid, signal: this.app.reload.signal, gen }, `${this.app.reload.signal} to pid ${main.pid} (reload.signal, reload.strategy "${this.app.reload.strategy}"): what it starts is generation ${gen}`);
    if (!this.#fx.signal(main.pid, this.app.reload.signal)) {
      // Gone between the check and the signal: start it from the new links.
      this.#fx.closeGeneration(gen);
      this.#reloading = undefined;
      this.#tracker.forget();
      return this.#startNew(stopBy);
    }
    if (this.app.reload.mode === 'reexec') {
      const successor = await awaitHandoff(this.#fx, this.app, main, gen, stopBy, this.app.reload.strategy !== 'upgrade');
      if (this.app.reload.strategy === 'upgrade') await this.#quiesce(main, successor, stopBy);
      return successor;
    }
    // In place: the main itself now belongs to the new generation, with the workers it starts.
    return { ...(await confirmInPlace(this.#fx, this.app, main)), gen };
  }


  /**
   * The worker processes of the master `main`: the trees under its children
   * that are not of a newer generation (a new master it started under
   * "upgrade" is not its worker), each with its parent. Undefined when the
   * kernel does not list children or `main` is gone.
   */
  #workersOf(main: ProcInfo): Array<{ readonly pid: number; readonly ppid: number }> | undefined {
    const tree = this.#fx.descendants(main.pid);
    if (tree === undefined) return undefined;
    const members = this.#fx.lineage()?.members ?? [];
    const gen = main.gen ?? members.find((m) => sameProcess(m, main))?.gen;
    const newer = new Set(members.filter((m) => gen !== undefined && m.gen > gen).map((m) => m.pid));
    const out: Array<{ pid: number; ppid: number }> = [];
    const ours = new Set([main.pid]);
    // The tree lists parents before their children (a walk from the top).
    for (const p of tree) {
      if (!ours.has(p.ppid) || (p.ppid === main.pid && newer.has(p.pid))) continue;
      ours.add(p.pid);
      out.push(p);
    }
    return out;
  }

  /**
   * Wait until a worker (a process with no child) of `tree()` is seen
   * waiting for connections (in accept, poll, epoll or select) and passes
   * `also`, looking every QUIESCE_POLL_MS until `until` (fx.now() ms). True
   * once one is (or the kernel lists no children: nothing to wait for),
   * false at `until`, undefined when `gone()` says the processes are gone.
   */
  async #aWorkerWaits(tree: () => ReadonlyArray<{ readonly pid: number; readonly ppid: number }> | undefined, gone: () => Promise<boolean>, until: () => number, also: (pid: number) => boolean = () => true): Promise<boolean | undefined> {
    for (;;) {
      const t = tree();
      if (t === undefined) return (await gone()) ? undefined : true;
      if (leavesOf(t).some((p) => this.#fx.waitingForWork(p.pid) === true && also(p.pid))) return true;
      if (this.#fx.now() >= until()) return false;
      await this.#fx.sleep(QUIESCE_POLL_MS);
    }
  }

  /**
   * reload.quiesceSignal ("upgrade"): once a worker of the new generation
   * (a process with no child in the tree under the new master) has been
   * seen waiting for connections, the old master is told to stop its
   * workers accepting (nginx SIGWINCH: they finish their requests and exit;
   * the master keeps the listening socket), so that the probe, and the
   * traffic, reach the new generation alone while it is judged. Without
   * it the kernel picks the worker that accepts each probe (nginx's wait in
   * epoll with EPOLLEXCLUSIVE: under wrk, probes split 59/41 between an old
   * and a new worker in one try, all 100 to one worker in another), and one
   * the old generation takes is sent again. The nginx manual's binary
   * upgrade, gunicorn's and unicorn's (USR2, WINCH, then QUIT or HUP).
   * No worker seen waiting within QUIESCE_WAIT_MS: the old master is left
   * serving, said in the log, and the probe judges what it can.
   */
  async #quiesce(old: ProcInfo, successor: ProcInfo, stopBy: StopBy): Promise<void> {
    const signal = this.app.reload.quiesceSignal;
    if (signal === undefined) return;
    const deadline = this.#fx.now() + QUIESCE_WAIT_MS;
    // On the socket the old master listens on: a release listening on
    // another address only would leave nothing accepting on the old one
    // while it is judged (every connection waiting for the deadline).
    const waits = await this.#aWorkerWaits(() => this.#fx.descendants(successor.pid),
      async () => (await this.#fx.verify(successor)) === undefined, () => Math.min(deadline, stopBy()),
      (pid) => this.#fx.sharesListener(old, { pid, startTime: 0 }));
    // Gone: the health check says how.
    if (waits === undefined) return;
    if (!waits) {
      this.#log.warn({ appPid: old.pid, newPid: successor.pid, signal },
        `no worker of the new master (pid ${successor.pid}) was seen waiting for connections on the socket the old master (pid ${old.pid}) listens on within ${QUIESCE_WAIT_MS} ms: the old master is not sent ${signal} and serves on while the new one is judged`);
      return;
    }
    if (!this.#fx.signal(old.pid, signal)) return;
    this.#quiesced = { pid: old.pid, startTime: old.startTime, sinceMs: this.#fx.now() };
    // Saved at once: status shows the old master quiesced rather than serving,
    // and an agent killed while it is knows to resume it.
    await this.#saveState();
    this.#log.info({ appPid: old.pid, newPid: successor.pid, signal },
      `the new master (pid ${successor.pid}) has a worker waiting for connections: ${signal} to the old master (pid ${old.pid}), whose workers stop accepting while the new generation is judged`);
  }

  /**
   * reload.resumeSignal: an old master quiesced for a new generation that
   * failed is told to start its workers again (nginx SIGHUP), and the
   * failed generation is stopped only once one of them is seen waiting for
   * connections (at most RESUME_WAIT_MS): connections wait in the backlog
   * at worst, never refused (the old master holds the socket throughout).
   * Sent when this agent quiesced it, or, an agent killed meanwhile, when
   * it has no worker left. The links are put back on the good release
   * first: nginx re-reads its config on SIGHUP once its new master is gone.
   * `old`: the old master, found running by the caller just before.
   */
  async #resume(old: ProcInfo | undefined, cause?: RelinkError): Promise<void> {
    const signal = this.app.reload.resumeSignal;
    if (signal === undefined) return;
    const mine = sameProcess(this.#quiesced, old);
    this.#quiesced = undefined;
    if (old === undefined) return;
    const workers = this.#workersOf(old);
    if (!mine && (workers === undefined || workers.length > 0)) return;
    // The links go back now, before the rollback proper: an agent killed
    // from here on must find a rollback in flight, not a deploy whose links
    // were never switched (it would apply current.conf afresh over two
    // masters, and nginx ignores an upgrade signal while its new one runs).
    if (this.#inflight?.phase === 'deploy' && cause !== undefined) {
      this.#inflight = this.#rollbackPhase(this.#inflight, cause);
    }
    // Saved before the signal, the master no longer quiesced: an agent
    // killed right after it must not resume it a second time (a trial with
    // nginx: a SIGHUP while its failed new master is not yet reaped starts
    // another set of workers beside the first, twice worker_processes until
    // the next deploy). Killed between this write and the signal, the next
    // agent resumes it only if it has no worker left (the branch above).
    await this.#saveState();
    if (this.#lastGood !== undefined) await this.#fx.relink(this.#lastGood);
    if (!this.#fx.signal(old.pid, signal)) return;
    this.#log.warn({ appPid: old.pid, signal }, `the new generation failed: ${signal} to the quiesced old master (pid ${old.pid}) to start its workers again`);
    const deadline = this.#fx.now() + RESUME_WAIT_MS;
    const waits = await this.#aWorkerWaits(() => this.#workersOf(old), async () => true, () => deadline);
    if (waits === false) {
      this.#log.error({ appPid: old.pid, signal }, `no worker of the old master (pid ${old.pid}) was seen waiting for connections ${RESUME_WAIT_MS} ms after ${signal}: the failed generation is stopped anyway (connections wait in the backlog until the old master's workers accept)`);
    }
  }

  /**
   * "socket" and "upgrade", before the old generation is told to stop: wait
   * (up to STRENGTH_WAIT_MS) until the new one, judged healthy on its first
   * answers, has as many processes as the old one and each of them that
   * has no child (a worker, or the one process) has been seen waiting for
   * work (a thread in select, poll, epoll or accept: proc.ts
   * waitingForWork) at least once, so its last workers have loaded the
   * app. Past the wait the old generation is stopped anyway (a release
   * with fewer workers never matches, a process that waits otherwise),
   * said at debug level.
   */
  async #atStrength(after: ProcInfo, before: ProcInfo | undefined): Promise<void> {
    const strategy = this.app.reload.strategy;
    if ((strategy !== 'socket' && strategy !== 'upgrade') || before === undefined || sameProcess(before, after)) return;
    const deadline = this.#fx.now() + STRENGTH_WAIT_MS;
    const members = (): ReadonlyArray<{ pid: number; startTime: number; gen: number }> => this.#fx.lineage()?.members ?? [];
    const oldGen = before.gen ?? members().find((m) => sameProcess(m, before))?.gen;
    const newGen = after.gen;
    if (oldGen === undefined || newGen === undefined || oldGen >= newGen) return;
    const strength = members().filter((m) => m.gen === oldGen).length;
    const waited = new Set<number>();
    /**
     * The new generation now, each process with its parent: the tree under
     * its main (a few reads of the kernel's children lists), else, where
     * the kernel does not list children, the lineage from a walk of /proc.
     */
    const generation = async (): Promise<ReadonlyArray<{ readonly pid: number; readonly ppid: number | undefined }>> => {
      const tree = this.#fx.descendants(after.pid);
      if (tree !== undefined) return [{ pid: after.pid, ppid: undefined }, ...tree];
      await this.#fx.refreshLineage(true);
      return members().filter((m) => m.gen === newGen).map((m) => ({ pid: m.pid, ppid: this.#fx.parentOf(m.pid) }));
    };
    try {
      for (;;) {
        const fresh = await generation();
        // Workers, not masters: a master waits for its children (waitpid,
        // sigsuspend) as often as for connections; a process with none is the
        // one that serves.
        const leaves = leavesOf(fresh);
        for (const m of leaves) if (this.#fx.waitingForWork(m.pid) === true) waited.add(m.pid);
        if (fresh.length >= strength && leaves.every((m) => waited.has(m.pid))) return;
        if (this.#fx.now() >= deadline) {
          this.#log.debug({ gen: newGen, processes: fresh.length, ready: leaves.filter((m) => waited.has(m.pid)).length, of: leaves.length, strength },
            `generation ${newGen} is not at generation ${oldGen}'s strength after ${STRENGTH_WAIT_MS} ms: the old one is stopped anyway`);
          return;
        }
        await this.#fx.sleep(STRENGTH_POLL_MS);
      }
    } finally {
      // The lineage learns the new generation's workers before the old one
      // is stopped (once: the polls above looked at its tree alone).
      await this.#fx.refreshLineage(true);
    }
  }

  /**
   * A new generation passed verification: it serves, and the ones before it
   * drain (they may finish their in-flight requests, for at most
   * reload.drainTimeoutMs).
   */
  async #serve(after: ProcInfo, previous?: ProcInfo): Promise<void> {
    const gen = after.gen ?? this.#fx.lineage()?.serving ?? 0;
    this.#startedServes(gen);
    this.#fx.promote(gen, after);
    this.#reloading = undefined;
    this.#newGen = undefined;
    this.#quiesced = undefined;
    // A new generation is a new run for the crash policy (its quick failures count from here).
    this.#tracker.set(after);
    this.#generations.servingIs(gen);
    // Replaced, not handed over: the previous generation is told to stop
    // now, and may drain for stop.timeoutMs ("socket", "upgrade").
    const strategy = this.app.reload.strategy;
    const prevGen = previous === undefined || sameProcess(previous, after) ? undefined
      : previous.gen ?? this.#fx.lineage()?.members.find((m) => sameProcess(m, previous))?.gen;
    const replace = (strategy === 'socket' || strategy === 'upgrade') && previous !== undefined && prevGen !== undefined && prevGen < gen;
    if (replace) this.#generations.stopping(prevGen);
    // Saved at once, before the old generation is told to stop and before
    // the verdict is journaled: an agent killed in between left the old
    // generation recorded as serving, and the next one took the draining
    // master for the app's main (a trial: the deploy journaled, status
    // showing it interrupted, the next deploy's USR2 sent to the draining
    // master, HANDOFF_TIMEOUT). Killed after this save and before the
    // signal, the next agent judges the deploy again and sends it.
    await this.#saveState();
    if (replace) this.#generations.stopNow(prevGen, previous, this.app.stop);
  }

  /**
   * Whatever failed verification and would otherwise stay (a successor or a
   * fresh start that hangs, never ready or never healthy) is stopped before
   * the rollback and the verdict, so it can never block the next deploy:
   * the new generation's processes, SIGTERM then SIGKILL after STOP_KILL_MS,
   * when the old main still serves beside it, or when there was no old main
   * (a start). When the new generation is all that serves (the old one has
   * handed over and exited), it is not stopped, which would refuse
   * connections: the rollback reloads it into the good release, and what is
   * left of it drains like any old generation. After an in-place reload
   * nothing is stopped (the master manages its own workers, and the rollback
   * reloads it again).
   */
  async #stopFailed(before: ProcInfo | undefined, cause?: RelinkError): Promise<void> {
    const gen = this.#newGen;
    this.#newGen = undefined;
    if (this.#reloading !== undefined) this.#fx.closeGeneration(this.#reloading.gen);
    this.#reloading = undefined;
    if (gen === undefined) return;
    const strategy = this.app.reload.strategy;
    // In place, the master manages its own workers; but a second master
    // that the signal started (STRATEGY_MISMATCH) is stopped with its workers.
    if (before !== undefined && strategy === 'inplace' && cause?.code !== 'STRATEGY_MISMATCH') return;
    // An app that reloaded in place when a successor was expected: its new
    // workers are its master's, not a failed generation.
    if (before !== undefined && cause?.found === IN_PLACE_FOUND) return;
    // A generation the agent started itself ("socket", "restart") is
    // stopped whatever else runs; one the app started is left when it is
    // all that serves (see above).
    const started = strategy === 'socket' || strategy === 'restart';
    if (before !== undefined && !started && (await this.#fx.verify(before)) === undefined) return;
    // A quiesced old master accepts again before the failed generation goes.
    if (strategy === 'upgrade') await this.#resume(before, cause);
    const rec = this.#fx.lineage();
    const victims = (rec?.members ?? []).filter((m) => m.gen === gen && !sameProcess(m, before));
    if (victims.length === 0) return;
    this.#log.warn({ gen, pids: victims.map((v) => v.pid) }, `stopping generation ${gen}, which failed verification`);
    await this.#generations.stop(victims, this.app.stop.timeoutMs, this.app.stop.signal);
  }

  /**
   * Put the last known-good release back and make it serve: relink, then
   * signal or start as the situation needs, verify it like a deploy, and
   * rewrite current.conf so that it names what runs again.
   */
  async #rollback(attempt: ReadAttempt, action: Action, bad: Release, before: ProcInfo | undefined, cause: RelinkError, own?: ProcInfo): Promise<void> {
    const good = this.#lastGood;
    if (good === undefined || sameRelease(good, bad)) {
      const now = await this.#tracker.current();
      await this.#finish(attempt, 'failed', action, bad, now, now === undefined ? 'failed' : 'running', cause);
      return;
    }
    this.#log.warn({ code: cause.code, reason: cause.message, to: { bin: good.bin, cfg: good.cfg } }, 'deploy failed verification; rolling back');
    // A restart stopped the good release before the failed one was judged:
    // the gap runs from then until the good release accepts again.
    const gap = this.#outage;
    if (this.#inflight !== undefined) {
      this.#inflight = this.#rollbackPhase(this.#inflight, cause);
      await this.#saveState();
    }
    let after: ProcInfo | undefined;
    try {
      await this.#fx.relink(good);
      const found = await this.#fx.discover(before);
      // The old generation may have handed over and exited: then the failed
      // one (not promoted, so not "main") is what serves, and is reloaded
      // into the good release rather than a second copy started beside it.
      const now = found.main ?? newestRoot(found.all);
      this.#newGen = undefined;
      if (now === undefined) {
        after = await this.#startNew(this.#rollbackBy);
        if (gap !== undefined) {
          this.#outage = { goneAt: gap.goneAt, held: gap.held };
          await this.#firstAccepted(after, this.#rollbackBy);
        }
        assertBinary(this.app, after, good);
      } else if (own !== undefined && sameProcess(now, own) && sameRelease(await this.#fx.readLinks(), good)) {
        // Recovered: the generation this rollback started before the agent
        // was killed, the links on the good release. Judged as it is.
        this.#log.info({ appPid: now.pid }, `pid ${now.pid}, started by the interrupted rollback, runs the good release: judged as it is, not replaced`);
        after = now;
      } else if (cause.found === IN_PLACE_FOUND && before !== undefined && sameProcess(now, before)) {
        // It reloaded the failed release's config in place: the same signal,
        // with the links back, reloads the good one the same way.
        const gen = this.#fx.openGeneration(now);
        this.#fx.signal(now.pid, this.app.reload.signal);
        this.#fx.closeGeneration(gen);
        after = await confirmInPlace(this.#fx, this.app, now);
      } else if ((this.app.reload.strategy !== 'inplace' || cause.code === 'STRATEGY_MISMATCH') && this.app.reload.strategy !== 'restart' && before !== undefined && sameProcess(now, before) && runsRelease(this.app, now, good)) {
        // The old process never handed over (its successor died or hung, or
        // the new generation beside it failed, or the signal started a
        // second master instead of reloading it): it still runs the good
        // release with the good config. Signalling it again would repeat that.
        // Quiesced and not resumed yet (an agent killed before it could), it is now.
        after = now;
        if (this.app.reload.strategy === 'upgrade') await this.#resume(now);
      } else {
        after = await this.#takeOver(now, this.#rollbackBy);
        if (this.app.reload.mode === 'reexec') assertBinary(this.app, after, good);
      }
      // An untouched old process said READY=1 long ago: only its health is asked again.
      after = await awaitHealthy(this.#fx, this.app, after, this.#rollbackBy, undefined, sameProcess(after, before), this.#launched);
      await this.#serve(after, now);
      // The operator's newer write wins: current.conf is put back only if it
      // still holds what failed; anything written since is applied next.
      const still = await this.#fx.readCurrent().catch(() => undefined);
      // (A rollback recovered after an agent died may find its own rewrite there.)
      if (still === undefined || still.hash === attempt.snapshot.hash || stripBom(still.text) === good.text) {
        await this.#fx.writeCurrent(good.text);
        const written = await this.#fx.readCurrent();
        this.#seen = { hash: written.hash, mtimeMs: written.mtimeMs };
        this.#applied = { hash: written.hash, release: { bin: good.bin, cfg: good.cfg } };
      } else {
        this.#log.warn({ bin: good.bin, cfg: good.cfg }, `current.conf was written again after the write that failed (while it was judged or rolled back): the rollback to ${good.bin} + ${good.cfg} leaves it as written, and the newer write is applied next`);
        this.#seen = undefined;
        this.#pendingPass ??= 'rollback:newer';
      }
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      await this.#stopFailed(before);
      const now = await this.#tracker.current();
      const both = new RelinkError('ROLLBACK_FAILED', `${cause.message}; rolling back to ${good.bin} + ${good.cfg} failed too: ${err.message}`, { rule: cause.rule, found: err.message });
      await this.#finish(attempt, 'failed', action, bad, now, now === undefined ? 'failed' : 'running', both, { rolledBackTo: null, rejected: attempt.snapshot.text });
      return;
    }
    // The rollback's own restart (a failed release still running) measured from its stop: the gap began earlier.
    if (gap !== undefined && this.#outage !== undefined) this.#outage = { ...this.#outage, goneAt: gap.goneAt };
    const measured = gap === undefined ? {} : this.#outageExtra();
    await this.#finish(attempt, 'rolled_back', action, bad, after, 'running', cause, { ...measured, rolledBackTo: { bin: good.bin, cfg: good.cfg }, rejected: attempt.snapshot.text });
  }

  /**
   * Supervision: is the app running? A main that vanished may have handed
   * over to a successor on its own (a re-exec'ing app's PID changes); only
   * when no process of the app runs at all is it a crash, restarted with
   * capped exponential backoff, and marked fatal after too many quick ones.
   */
  async #ensureRunning(): Promise<void> {
    if (this.#closed || !this.#ready || this.#state === 'deploying') return;
    if (this.#fx.now() >= this.#refreshAt) {
      this.#refreshAt = this.#fx.now() + LINEAGE_REFRESH_MS;
      await this.#fx.refreshLineage();
    }
    const main = await this.#observe();
    if (await this.#generations.step(this.app.reload.drainTimeoutMs, this.app.stop)) await this.#saveState();
    // The main followed to the daemon it became or a successor it handed
    // over to, new workers found: saved, or an agent restarted now adopts
    // from a record naming dead processes only (nginx, whose marker is
    // overwritten, was then started a second time beside itself).
    else if (main !== undefined && this.#identity() !== this.#savedIdentity) await this.#saveState();
    if (main !== undefined) {
      if (this.#crash.onRunning(this.#tracker.ranMs())) {
        this.#log.info({ appPid: main.pid }, 'app has run stably; crash count reset');
        this.#tellState();
      }
      return;
    }
    // Stopped on request: left stopped until relink start (said once per agent).
    if (this.#held !== undefined) {
      if (!this.#heldSaid) this.#log.info({ held: this.#held.at }, `the app is not running: stopped by relink stop at ${this.#held.at}; left stopped until relink start`);
      this.#heldSaid = true;
      return;
    }
    if (this.app.supervise.enabled) await this.#stopLeftovers();
    if (!this.app.supervise.enabled || this.#state === 'fatal' || this.#cancelBackoff !== undefined || this.#retryDue) return;
    const links = await this.#fx.readLinks();
    // Nothing deployed yet, or a deploy that failed with nothing to go back
    // to: there is no release to restart. (Links alone are enough otherwise:
    // an adopted app must be restarted even while current.conf is refused.)
    // A failed state restarts nothing, unless the links are back on the last
    // known-good release (a rollback that relinked and then failed to bring
    // it up): that is safe to start, and leaving the app down is not.
    const linksGood = this.#lastGood !== undefined && sameRelease(links, this.#lastGood);
    if (links.bin === undefined || links.cfg === undefined || (this.#state === 'failed' && !linksGood)) return;

    let first = false;
    if (!this.#restartDue) {
      if (this.#tracker.sinceMs === undefined) {
        // Never seen running by this agent (it was down when the agent
        // started and current.conf could not be applied): not a crash.
        first = true;
        this.#log.info({ bin: links.bin, cfg: links.cfg }, 'the app is not running; starting it from the current links');
      } else {
        const ranMs = this.#tracker.ranMs();
        const d = this.#crash.onExit(ranMs);
        if (d.kind === 'fatal') {
          const what = this.#startFailed ? 'the app cannot be started' : 'app keeps crashing';
          const wayOut = `left alone until the next deploy, a re-save of current.conf, or relink start ${this.app.name}`;
          this.#log.error({ failures: d.failures, maxRetries: this.app.supervise.maxRetries }, `${what}; marked fatal and ${wayOut}`);
          const cause = this.#startFailed && this.#problem !== undefined ? `, the last: ${this.#problem.message}` : `, each run shorter than supervise.stableMs (${this.app.supervise.stableMs} ms)`;
          const reason = `${what}: ${d.failures} quick failures in a row (supervise.maxRetries: ${this.app.supervise.maxRetries})${cause}; ${wayOut}`;
          const code = this.#startFailed ? this.#problem?.code ?? 'START_FAILED' : 'CRASH_LOOP';
          const at = this.#fx.now();
          // Why, for status and the page, and kept across agent restarts (start()).
          this.#problem = { code, message: reason, since: new Date(at).toISOString() };
          this.#problemFrom = 'fatal';
          await this.#transition('fatal');
          this.#fx.notifyOperators({
            time: new Date(at).toISOString(),
            app: this.app.name,
            outcome: 'fatal',
            action: 'none',
            from: { bin: links.bin, cfg: links.cfg },
            to: { bin: links.bin, cfg: links.cfg },
            reason,
            code,
            trigger: 'supervise',
            restarts: this.#crash.restarts,
            failures: d.failures,
            maxRetries: this.app.supervise.maxRetries,
          });
          return;
        }
        const what = this.#startFailed ? 'the app could not be started' : `app exited unexpectedly after ${ranMs} ms`;
        this.#log.warn({ ranMs, delayMs: d.delayMs, failures: d.failures }, `${what}; restarting in ${d.delayMs} ms`);
        if (d.delayMs > 0) {
          this.#cancelBackoff = this.#fx.schedule(d.delayMs, () => {
            this.#cancelBackoff = undefined;
            this.#restartDue = true;
            this.check();
          });
          await this.#transition('backoff');
          return;
        }
      }
    }
    this.#restartDue = false;
    // The journal's last word on the app left it down (a failed relink
    // start, a failed start with nothing to go back to): the start that
    // brings it up is journaled too, or history says "failed" while status
    // says running (a trial: relink start with the port taken, then freed).
    const leftDown = this.#lastDeploy !== null && this.#lastDeploy.outcome === 'failed' && this.#lastDeploy.pidAfter === null;
    const attempt: Attempt = { trigger: 'supervise', started: this.#fx.now(), snapshot: null, from: links, pidBefore: undefined };
    try {
      if (links.dirStale === true) {
        // The folder link (links.dir) is missing or names another release
        // than app.bin and app.cfg (removed by hand after a deploy that could
        // not be applied, so no reconcile put it back): the app, run from
        // current/, could never start. Put back on the linked release first.
        this.#log.warn({ bin: links.bin, cfg: links.cfg }, 'the folder link does not name the linked release; put back before the app is started');
        await this.#fx.relink({ bin: links.bin, cfg: links.cfg });
      }
      const after = await this.#startNew(this.#verifyBy);
      this.#tracker.set(after);
      this.#startedServes(after.gen);
      this.#unsettled = after;
      this.#liveness?.reset();
      if (!first) {
        this.#crash.onRestarted();
        this.#tell((o) => o.restarted());
      }
      this.#log.info({ appPid: after.pid, restarts: this.#crash.restarts }, first ? 'app started' : 'app restarted');
      if (this.#problemFrom === 'start') this.#problem = undefined;
      this.#startFailed = false;
      await this.#transition('running');
      if (leftDown) await this.#journalSupervisedStart(attempt, { bin: links.bin, cfg: links.cfg }, after);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      // Not a crash of the app: it could not be started (a planted log
      // link, a user gone). The reason stays in `problem`, shown by status,
      // fatal included; it still counts as a quick failure (backoff, then fatal).
      this.#log.error({ code: err.code, err: err.message }, `the app could not be started: ${err.message}`);
      this.#problem = problemOf(err, this.#fx.now());
      this.#problemFrom = 'start';
      this.#startFailed = true;
      this.#tracker.restartFailed();
      // Counts as another quick failure on the next check.
      this.check();
      await this.#saveState();
    }
  }

  /**
   * A start by the crash supervision after a verdict that left the app down:
   * judged as a relink start is (settle time, readiness, the probe), then
   * journaled "deployed", action "start", trigger "supervise". One that does
   * not come up healthy is left to supervision and liveness as any restart,
   * and the failed verdict stays the journal's last word.
   */
  async #journalSupervisedStart(attempt: Attempt, release: Release, started: ProcInfo): Promise<void> {
    let after: ProcInfo;
    try {
      after = await awaitHealthy(this.#fx, this.app, started, this.#verifyBy, this.#tracker.sinceMs, false, this.#launched);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      this.#log.warn({ appPid: started.pid, code: err.code }, `the app restarted by supervision did not come up healthy: ${err.message}`);
      return;
    }
    if (this.#unsettled !== undefined && sameProcess(this.#unsettled, started)) this.#unsettled = undefined;
    this.#lastGood = { ...release, text: currentTextFor(this.app.currentFile, release) };
    await this.#finish(attempt, 'deployed', 'start', release, after, 'running');
  }

  /**
   * Liveness: the probe again, after the verdict. Failing failureThreshold
   * times in a row, the app is stopped (SIGTERM, SIGKILL after
   * LIVENESS_KILL_MS) and the crash supervision restarts it, with its backoff.
   */
  async #checkLiveness(): Promise<void> {
    if (this.#liveness === undefined || this.#state !== 'running' || this.#closed) return;
    const main = await this.#observe();
    // A process just (re)started is given its settle time before it is judged (it may not listen yet).
    if (main === undefined || this.#tracker.ranMs() < this.app.health.settleMs) return;
    const r = await this.#fx.probe();
    const restart = this.#liveness.onProbe(r.ok);
    if (r.ok) return;
    if (!restart) {
      this.#log.warn({ appPid: main.pid, failures: this.#liveness.failures, detail: r.detail }, 'liveness probe failed');
      return;
    }
    this.#log.error({ appPid: main.pid, failures: this.#liveness.failures, detail: r.detail, code: 'LIVENESS_FAILED' },
      `liveness probe failed ${this.#liveness.failures} times in a row (last: ${r.detail}); restarting the app`);
    this.#liveness.reset();
    await this.#generations.stop([main], LIVENESS_KILL_MS);
  }

  #resetSupervision(): void {
    this.#cancelBackoff?.();
    this.#cancelBackoff = undefined;
    this.#restartDue = false;
    this.#crash.reset();
    this.#startFailed = false;
    if (this.#problemFrom === 'start' || this.#problemFrom === 'fatal') this.#problem = undefined;
  }

  /** The main process now; the state follows what is seen (running <-> stopped). */
  async #observe(): Promise<ProcInfo | undefined> {
    const main = await this.#tracker.current();
    if (main === undefined && this.#state === 'running') await this.#transition('stopped');
    else if (main !== undefined && (this.#state === 'stopped' || this.#state === 'backoff' || this.#state === 'failed')) await this.#transition('running');
    return main;
  }

  /** The only place the app's state changes: logged and saved. */
  async #transition(to: AppStateName): Promise<void> {
    if (to !== this.#state) this.#log.debug({ from: this.#state, to }, `state ${to}`);
    this.#state = to;
    this.#tellState();
    await this.#saveState();
  }

  #tellState(): void {
    const to = this.#state;
    this.#tell((o) => o.state(to, this.#tracker.main !== undefined, to === 'backoff' || to === 'fatal' || this.#crash.looping));
  }

  /** Journal and log the attempt, then move to `next`. */
  async #finish(attempt: Attempt, outcome: Outcome, action: Action, release: Release | undefined, after: ProcInfo | undefined, next: AppStateName, err?: RelinkError, extra: Extra = {}): Promise<void> {
    // Every entry that started, signalled or stopped the app says by which strategy (a rollback's and a failure's too).
    const how: Extra = action === 'none' || extra.strategy !== undefined ? extra : { strategy: this.app.reload.strategy, ...extra };
    const entry = entryFor(this.app.name, this.#fx.now(), attempt, outcome, action, release, after?.pid, err, how);
    // Journaled first, then the state without it: killed in between, the
    // next agent finds the verdict in the journal and does not judge again.
    this.#inflight = undefined;
    // No reload is in flight past a verdict: what stayed open for one (an
    // agent killed mid-deploy opened it) must not take later children.
    this.#fx.settleLineage();
    this.#lastDeploy = entry;
    this.#refusing = outcome === 'refused';
    const journaled = await this.#recorder.attempt(entry, err);
    this.#tell((o) => o.verdict(entry, writtenAt(attempt)));
    await this.#transition(next);
    this.#hooks.after(entry);
    // What was journaled, not every attempt: a writer loop's counted refusals notify nobody.
    for (const e of journaled) this.#fx.notifyOperators(e);
  }

  /** Tell the observer, if any; what it throws never reaches the orchestrator (said once). */
  #tell(fn: (o: AppObserver) => void): void {
    if (this.#observer === undefined) return;
    try {
      fn(this.#observer);
    } catch (err) {
      if (this.#observerFailed) return;
      this.#observerFailed = true;
      this.#log.error({ err: describeError(err).message }, `the metrics could not be updated: ${describeError(err).message}`);
    }
  }

  /** What of the state changes between transitions: the main process and the lineage. */
  #identity(): string {
    const main = this.#tracker.main;
    return JSON.stringify([main?.pid, main?.startTime, this.#fx.lineage() ?? null]);
  }

  async #saveState(): Promise<void> {
    const main = this.#tracker.main;
    const since = this.#tracker.sinceMs;
    this.#savedIdentity = this.#identity();
    await this.#recorder.save({
      app: this.app.name,
      state: this.#state,
      pid: main?.pid ?? null,
      pidStart: main?.startTime ?? null,
      since: main === undefined || since === undefined ? null : new Date(since).toISOString(),
      lastDeploy: this.#lastDeploy,
      lastGood: this.#lastGood ?? null,
      restarts: this.#crash.restarts,
      problem: this.#problem ?? null,
      matched: this.#matched ?? null,
      lineage: this.#fx.lineage() ?? null,
      inflight: this.#inflight ?? null,
      draining: this.#generations.draining().map((d) => ({ gen: d.gen, since: new Date(d.sinceMs).toISOString(), stopped: d.stopAt === undefined ? null : new Date(d.stopAt).toISOString() })),
      quiesced: this.#quiesced === undefined ? null : { pid: this.#quiesced.pid, startTime: this.#quiesced.startTime, since: new Date(this.#quiesced.sinceMs).toISOString() },
      held: this.#held ?? null,
      settings: this.#settings ?? null,
      answering: this.#answering ?? null,
    });
  }
}
