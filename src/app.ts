/**
 * The orchestrator for one app: read current.conf, validate, preflight,
 * relink, start or signal, verify, record; roll back to the last known-good
 * release when verification fails; restart the app when it crashes.
 *
 * One pass runs at a time; triggers that arrive meanwhile coalesce into one
 * more pass, which reads the file afresh, so the newest content is what ends
 * up applied. Supervision checks run through the same queue, so a crash
 * restart never races a deploy.
 */
import type { Logger } from 'pino';
import { backoffDelay } from './backoff.js';
import type { AppConfig } from './config.js';
import { currentTextFor, type CurrentSnapshot, type Release } from './current.js';
import type { Effects } from './effects.js';
import { RelinkError, RelinkErrors } from './errors.js';
import type { Action, HistoryEntry, Outcome } from './history.js';
import { sameProcess, type ProcInfo } from './proc.js';
import type { AppState, AppStateName, GoodRelease } from './state.js';
import { assertBinary, awaitHandoff, awaitHealthy, awaitStart, confirmInPlace } from './verify.js';

interface Attempt {
  readonly trigger: string;
  readonly started: number;
  readonly snapshot: CurrentSnapshot;
  readonly from: { bin: string | undefined; cfg: string | undefined };
  readonly pidBefore: number | undefined;
}

interface Extra {
  readonly rolledBackTo?: Release | null;
  readonly rejected?: string | null;
}

/**
 * A pass asked for on the first file event, before the watcher's quiet
 * period: it acts only on a complete JSON document (a file being written
 * never is one: no proper prefix of a JSON object parses) and otherwise
 * leaves the file to the pass that follows the quiet period.
 */
export const EARLY_TRIGGER = 'watch:early';

/** A current.conf that does not parse and has not changed for this long is judged by the re-check too. */
const BROKEN_SETTLED_MS = 2_000;

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

const sameRelease = (a: { bin?: string | undefined; cfg?: string | undefined } | undefined, b: Release | undefined): boolean =>
  a !== undefined && b !== undefined && a.bin === b.bin && a.cfg === b.cfg;

export class AppAgent {
  readonly app: AppConfig;
  readonly #fx: Effects;
  readonly #log: Logger;
  /** The app's main process as last confirmed. Re-verified cheaply before use. */
  #main: ProcInfo | undefined;
  /** When the current main process was started or adopted (ms). */
  #sinceMs: number | undefined;
  #state: AppStateName = 'stopped';
  #lastDeploy: HistoryEntry | null = null;
  #lastGood: GoodRelease | undefined;
  /** The release current.conf's content maps to, once applied: what the links must point at. */
  #applied: { hash: string; release: Release } | undefined;
  /** The current.conf content last acted on (hash + mtime: a re-save retries). */
  #seen: { hash: string; mtimeMs: number } | undefined;
  #readProblem: string | undefined;
  #restarts = 0;
  #quickFailures = 0;
  #cancelBackoff: (() => void) | undefined;
  #restartDue = false;
  #cancelMonitor: (() => void) | undefined;
  #pendingPass: string | undefined;
  #pendingCheck = false;
  #loop: Promise<void> | undefined;
  #closed = false;

  constructor(app: AppConfig, effects: Effects, log: Logger) {
    this.app = app;
    this.#fx = effects;
    this.#log = log;
  }

  get state(): AppStateName {
    return this.#state;
  }

  get mainPid(): number | undefined {
    return this.#main?.pid;
  }

  get restarts(): number {
    return this.#restarts;
  }

  /** Adopt a running app, if any, then look at current.conf once and start supervising. */
  async start(): Promise<void> {
    const saved = await this.#fx.loadState();
    this.#lastGood = saved?.lastGood ?? undefined;
    this.#lastDeploy = saved?.lastDeploy ?? null;
    const found = await this.#fx.discover();
    if (found.main !== undefined) {
      this.#setMain(found.main);
      this.#state = 'running';
      this.#log.info({ appPid: found.main.pid, exe: found.main.exe }, 'adopted running app');
      if (this.#lastGood === undefined) {
        // An app found running is the best known-good there is.
        const links = await this.#fx.readLinks();
        if (links.bin !== undefined && links.cfg !== undefined) this.#lastGood = { bin: links.bin, cfg: links.cfg, text: currentTextFor(this.app.releasesDir, { bin: links.bin, cfg: links.cfg }) };
      }
    } else if (saved?.state === 'fatal') {
      // A crash loop stays fatal across agent restarts until someone acts.
      this.#state = 'fatal';
    }
    this.#warnStrays(found.strays, found.foreign);
    await this.#saveState();
    this.trigger('startup');
    if (this.app.supervise.enabled) this.#armMonitor();
  }

  /** Ask for a full pass (current.conf, links, process). Safe to call from any event, any number of times. */
  trigger(why: string): void {
    if (this.#closed) return;
    // The newest reason wins (the pass reads the file afresh anyway), except
    // that an early trigger, which may decide to do nothing, never displaces
    // one that must judge the file.
    if (why !== EARLY_TRIGGER || this.#pendingPass === undefined) this.#pendingPass = why;
    this.#loop ??= this.#run();
  }

  /** Ask for a supervision check only (is the app still running?). */
  check(): void {
    if (this.#closed) return;
    this.#pendingCheck = true;
    this.#loop ??= this.#run();
  }

  /** Resolves when no pass is running or pending. */
  async idle(): Promise<void> {
    while (this.#loop !== undefined) await this.#loop;
  }

  /** Stop taking triggers, cancel timers, wait for a pass in progress; the app is left running. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#pendingPass = undefined;
    this.#pendingCheck = false;
    this.#cancelMonitor?.();
    this.#cancelBackoff?.();
    await this.idle();
  }

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

  async #run(): Promise<void> {
    try {
      while (this.#pendingPass !== undefined || this.#pendingCheck) {
        const why = this.#pendingPass;
        this.#pendingPass = undefined;
        this.#pendingCheck = false;
        try {
          if (why !== undefined) await this.#pass(why);
          // Every pass ends with the supervision check.
          await this.#ensureRunning();
        } catch (err) {
          // A bug or an I/O error must not kill the agent or stop later passes.
          this.#log.error({ err, code: err instanceof RelinkError ? err.code : undefined }, 'pass failed unexpectedly');
        }
      }
    } finally {
      this.#loop = undefined;
    }
  }

  async #pass(trigger: string): Promise<void> {
    const early = trigger === EARLY_TRIGGER;
    let snapshot: CurrentSnapshot;
    try {
      snapshot = await this.#fx.readCurrent();
      // The early pass and the periodic re-check may read a file between a
      // writer's truncate and its write: that is the watcher's pass to judge,
      // unless the file has been left broken for a while (a missed event).
      if (!isJson(snapshot.text) && (early || (trigger === 'recheck' && this.#fx.now() - snapshot.mtimeMs < BROKEN_SETTLED_MS))) return;
      this.#readProblem = undefined;
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      if (early) return;
      // A missing current.conf is normal before the first deploy and for an
      // instant during delete-then-recreate: say it once, change nothing.
      if (this.#readProblem !== err.code) this.#log.warn({ code: err.code, file: err.file }, err.message);
      this.#readProblem = err.code;
      return;
    }
    if (this.#seen?.hash === snapshot.hash && this.#seen.mtimeMs === snapshot.mtimeMs) {
      await this.#reconcileLinks(trigger, snapshot);
      return;
    }
    this.#seen = { hash: snapshot.hash, mtimeMs: snapshot.mtimeMs };

    const links = await this.#fx.readLinks();
    const main = await this.#currentMain();
    const attempt: Attempt = { trigger, started: this.#fx.now(), snapshot, from: links, pidBefore: main?.pid };

    let release: Release;
    try {
      release = await this.#fx.validate(snapshot.text);
      if (!sameRelease(links, release)) await this.#preflight(release);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      await this.#finish(attempt, 'refused', 'none', undefined, main, err);
      return;
    }

    if (sameRelease(links, release) && main !== undefined) {
      // Same release as what runs: nothing to switch, nothing to signal.
      this.#applied = { hash: snapshot.hash, release };
      this.#lastGood ??= { ...release, text: snapshot.text };
      this.#log.debug({ bin: release.bin, cfg: release.cfg, appPid: main.pid }, 'current.conf matches what runs');
      return;
    }
    // A deliberate change (or a re-save) is a fresh start for supervision.
    this.#resetSupervision();
    await this.#deploy(attempt, release, main, links);
  }

  async #preflight(release: Release): Promise<void> {
    const r = await this.#fx.preflight(release);
    if (r === undefined || r.ok) return;
    const cmd = this.app.preflight?.command.join(' ') ?? 'preflight';
    throw new RelinkError('PREFLIGHT_FAILED', `${this.app.name}: preflight ${JSON.stringify(cmd)} refused ${release.bin} + ${release.cfg}: ${r.status}${r.output ? `: ${r.output}` : ''}`,
      { key: 'preflight.command', rule: 'must exit 0 for the candidate release', found: r.status });
  }

  /** Links moved away from what current.conf names (a hand edit, a missed event): put them back. */
  async #reconcileLinks(trigger: string, snapshot: CurrentSnapshot): Promise<void> {
    if (this.#applied === undefined || this.#applied.hash !== snapshot.hash || this.#state === 'deploying') return;
    const links = await this.#fx.readLinks();
    if (sameRelease(links, this.#applied.release)) return;
    this.#log.warn({ links, expected: this.#applied.release }, 'links drifted from current.conf; repairing');
    const main = await this.#currentMain();
    await this.#deploy({ trigger: `${trigger}:drift`, started: this.#fx.now(), snapshot, from: links, pidBefore: main?.pid }, this.#applied.release, main, links);
  }

  async #deploy(attempt: Attempt, release: Release, main: ProcInfo | undefined, links: { bin: string | undefined; cfg: string | undefined }): Promise<void> {
    this.#state = 'deploying';
    await this.#saveState();
    try {
      if (!sameRelease(links, release)) await this.#fx.relink(release);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      this.#state = main === undefined ? 'stopped' : 'running';
      await this.#finish(attempt, 'failed', 'none', release, main, err);
      return;
    }
    const action: Action = main === undefined ? 'start' : 'signal';
    let after: ProcInfo | undefined;
    try {
      after = main === undefined ? await this.#startNew() : await this.#reload(main, release);
      this.#setMain(after, after.pid === main?.pid);
      if (action === 'start' || this.app.reload.mode === 'reexec') assertBinary(this.app, after, release);
      await awaitHealthy(this.#fx, this.app, after);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      await this.#rollback(attempt, action, release, main, err);
      return;
    }
    this.#state = 'running';
    this.#applied = { hash: attempt.snapshot.hash, release };
    this.#lastGood = { ...release, text: attempt.snapshot.text };
    await this.#finish(attempt, 'deployed', action, release, after);
  }

  async #startNew(): Promise<ProcInfo> {
    const launched = await this.#fx.launch();
    let exited = false;
    void launched.exited.then(() => {
      exited = true;
      // Our own child: no need to wait for the next monitor tick.
      this.check();
    });
    return awaitStart(this.#fx, this.app, launched.pid, () => exited);
  }

  async #reload(main: ProcInfo, release: Release): Promise<ProcInfo> {
    // Read again right before the signal: the handoff check compares the
    // children it has reaped (childFaults) with this moment, not the start
    // of the pass (the preflight may have taken seconds).
    main = (await this.#fx.verify(main)) ?? main;
    if (!this.#fx.signal(main.pid, this.app.reload.signal)) {
      // Gone between the check and the signal: start it from the new links.
      this.#main = undefined;
      return this.#startNew();
    }
    return this.app.reload.mode === 'reexec' ? awaitHandoff(this.#fx, this.app, main, release) : confirmInPlace(this.#fx, this.app, main);
  }

  /**
   * Put the last known-good release back and make it serve: relink, then
   * signal or start as the situation needs, verify it like a deploy, and
   * rewrite current.conf so that it names what runs again.
   */
  async #rollback(attempt: Attempt, action: Action, bad: Release, before: ProcInfo | undefined, cause: RelinkError): Promise<void> {
    const good = this.#lastGood;
    if (good === undefined || sameRelease(good, bad)) {
      const now = await this.#currentMain();
      this.#state = now === undefined ? 'failed' : 'running';
      await this.#finish(attempt, 'failed', action, bad, now, cause);
      return;
    }
    this.#log.warn({ code: cause.code, reason: cause.message, to: { bin: good.bin, cfg: good.cfg } }, 'deploy failed verification; rolling back');
    let after: ProcInfo | undefined;
    try {
      await this.#fx.relink(good);
      const found = await this.#fx.discover(before);
      const now = found.main;
      if (now === undefined) {
        after = await this.#startNew();
        assertBinary(this.app, after, good);
      } else if (this.app.reload.mode === 'reexec' && before !== undefined && sameProcess(now, before) && now.exe === good.bin) {
        // The old process never handed over (its successor died or hung):
        // it still runs the good binary with the good config.
        after = now;
      } else {
        after = await this.#reload(now, good);
        if (this.app.reload.mode === 'reexec') assertBinary(this.app, after, good);
      }
      this.#setMain(after, after.pid === before?.pid);
      await awaitHealthy(this.#fx, this.app, after);
      await this.#fx.writeCurrent(good.text);
      const written = await this.#fx.readCurrent();
      this.#seen = { hash: written.hash, mtimeMs: written.mtimeMs };
      this.#applied = { hash: written.hash, release: { bin: good.bin, cfg: good.cfg } };
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      const now = await this.#currentMain();
      this.#state = now === undefined ? 'failed' : 'running';
      const both = new RelinkError('ROLLBACK_FAILED', `${cause.message}; rolling back to ${good.bin} + ${good.cfg} failed too: ${err.message}`, { rule: cause.rule, found: err.message });
      await this.#finish(attempt, 'failed', action, bad, now, both, { rolledBackTo: null, rejected: attempt.snapshot.text });
      return;
    }
    this.#state = 'running';
    await this.#finish(attempt, 'rolled_back', action, bad, after, cause, { rolledBackTo: { bin: good.bin, cfg: good.cfg }, rejected: attempt.snapshot.text });
  }

  /**
   * Supervision: is the app running? A main that vanished may have handed
   * over to a successor on its own (a re-exec'ing app's PID changes); only
   * when no process of the app runs at all is it a crash, restarted with
   * capped exponential backoff, and marked fatal after too many quick ones.
   */
  async #ensureRunning(): Promise<void> {
    if (this.#closed || this.#state === 'deploying') return;
    const main = await this.#currentMain();
    if (main !== undefined) {
      if (this.#quickFailures > 0 && this.#sinceMs !== undefined && this.#fx.now() - this.#sinceMs >= this.app.supervise.stableMs) {
        this.#log.info({ appPid: main.pid }, 'app has run stably; crash count reset');
        this.#quickFailures = 0;
      }
      return;
    }
    if (!this.app.supervise.enabled || this.#state === 'fatal' || this.#cancelBackoff !== undefined) return;
    const links = await this.#fx.readLinks();
    // Nothing deployed yet, or a deploy that failed with nothing to go back
    // to: there is no release to restart. (Links alone are enough otherwise:
    // an adopted app must be restarted even while current.conf is refused.)
    if (links.bin === undefined || links.cfg === undefined || this.#state === 'failed') return;

    if (!this.#restartDue) {
      const ranMs = this.#sinceMs === undefined ? 0 : this.#fx.now() - this.#sinceMs;
      const quick = ranMs < this.app.supervise.stableMs;
      this.#quickFailures = quick ? this.#quickFailures + 1 : 1;
      if (this.#quickFailures > this.app.supervise.maxRetries) {
        this.#state = 'fatal';
        this.#log.error({ failures: this.#quickFailures - 1, maxRetries: this.app.supervise.maxRetries },
          'app keeps crashing; marked fatal and left alone until the next deploy (or a re-save of current.conf)');
        await this.#saveState();
        return;
      }
      const delay = backoffDelay(this.#quickFailures, quick, this.app.supervise);
      this.#log.warn({ ranMs, delayMs: delay, failures: this.#quickFailures }, `app exited unexpectedly; restarting in ${delay} ms`);
      this.#state = 'backoff';
      await this.#saveState();
      if (delay > 0) {
        this.#cancelBackoff = this.#fx.schedule(delay, () => {
          this.#cancelBackoff = undefined;
          this.#restartDue = true;
          this.check();
        });
        return;
      }
    }
    this.#restartDue = false;
    try {
      const after = await this.#startNew();
      this.#setMain(after);
      this.#restarts += 1;
      this.#state = 'running';
      this.#log.info({ appPid: after.pid, restarts: this.#restarts }, 'app restarted');
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      this.#log.error({ code: err.code, err: err.message }, 'restart failed');
      this.#sinceMs = this.#fx.now();
      // Counts as another quick failure on the next check.
      this.check();
    }
    await this.#saveState();
  }

  #resetSupervision(): void {
    this.#cancelBackoff?.();
    this.#cancelBackoff = undefined;
    this.#restartDue = false;
    this.#quickFailures = 0;
    this.#restarts = 0;
    if (this.#state === 'fatal' || this.#state === 'backoff') this.#state = 'stopped';
  }

  /** The main process: the cached one if it still checks out, else a fresh scan. */
  async #currentMain(): Promise<ProcInfo | undefined> {
    if (this.#main !== undefined) {
      const same = await this.#fx.verify(this.#main);
      if (same !== undefined) return same;
    }
    const found = await this.#fx.discover(this.#main);
    this.#warnStrays(found.strays, found.foreign);
    if (found.main === undefined) {
      if (this.#main !== undefined) this.#log.warn({ appPid: this.#main.pid }, 'app process is gone');
      this.#main = undefined;
      if (this.#state === 'running') this.#state = 'stopped';
      return undefined;
    }
    if (this.#main !== undefined && found.main.pid !== this.#main.pid) {
      this.#log.info({ appPid: found.main.pid, previous: this.#main.pid }, 'app handed over to a new process');
    }
    this.#setMain(found.main, true);
    if (this.#state === 'stopped' || this.#state === 'backoff' || this.#state === 'failed') this.#state = 'running';
    return found.main;
  }

  #setMain(info: ProcInfo, keepSince = false): void {
    if (!keepSince || this.#sinceMs === undefined) this.#sinceMs = this.#fx.now();
    this.#main = info;
  }

  /** Pids already warned about as foreign: said once, not on every check. */
  readonly #foreignSeen = new Set<number>();

  #warnStrays(strays: readonly ProcInfo[], foreign: readonly ProcInfo[] = []): void {
    for (const f of foreign) {
      if (this.#foreignSeen.has(f.pid)) continue;
      this.#foreignSeen.add(f.pid);
      this.#log.warn({ foreignPid: f.pid, uid: f.uid, exe: f.exe },
        `pid ${f.pid} runs the app's binary as uid ${f.uid}, not as the app's user: never signalled, left alone`);
    }
    if (strays.length === 0) return;
    this.#log.warn({ appPid: this.#main?.pid, strays: strays.map((s) => s.pid) },
      'more than one copy of the app runs; only the main one is signalled, the others are left alone');
  }

  async #finish(attempt: Attempt, outcome: Outcome, action: Action, release: Release | undefined, after: ProcInfo | undefined, err?: RelinkError, extra: Extra = {}): Promise<void> {
    const problems = err instanceof RelinkErrors ? err.problems : err === undefined ? [] : [err];
    const entry: HistoryEntry = {
      time: new Date(this.#fx.now()).toISOString(),
      app: this.app.name,
      outcome,
      action,
      from: { bin: attempt.from.bin ?? null, cfg: attempt.from.cfg ?? null },
      to: { bin: release?.bin ?? null, cfg: release?.cfg ?? null },
      reason: err === undefined ? null : problems.map((p) => p.message).join('; '),
      code: err?.code ?? null,
      pidBefore: attempt.pidBefore ?? null,
      pidAfter: after?.pid ?? null,
      durationMs: this.#fx.now() - attempt.started,
      currentHash: attempt.snapshot.hash,
      trigger: attempt.trigger,
      ...(extra.rolledBackTo !== undefined ? { rolledBackTo: extra.rolledBackTo } : {}),
      ...(extra.rejected !== undefined ? { rejected: extra.rejected } : {}),
    };
    this.#lastDeploy = entry;
    const fields = { ...entry, problems: problems.length > 1 ? problems.map((p) => p.toJSON()) : undefined, file: err?.file, key: err?.key };
    if (outcome === 'deployed') this.#log.info(fields, `deployed ${release?.bin ?? ''} (${action})`);
    else if (outcome === 'refused') this.#log.warn(fields, `refused: ${entry.reason ?? ''}`);
    else if (outcome === 'rolled_back') this.#log.error(fields, `rolled back to ${extra.rolledBackTo?.bin ?? ''}: ${entry.reason ?? ''}`);
    else this.#log.error(fields, `failed: ${entry.reason ?? ''}`);
    await Promise.all([
      this.#fx.record(entry).catch((e: unknown) => this.#log.error({ err: e }, 'could not write history')),
      this.#saveState(),
    ]);
  }

  async #saveState(): Promise<void> {
    const links = await this.#fx.readLinks().catch(() => ({ bin: undefined, cfg: undefined }));
    const state: AppState = {
      app: this.app.name,
      state: this.#state,
      pid: this.#main?.pid ?? null,
      pidStart: this.#main?.startTime ?? null,
      since: this.#main === undefined || this.#sinceMs === undefined ? null : new Date(this.#sinceMs).toISOString(),
      bin: links.bin ?? null,
      cfg: links.cfg ?? null,
      lastDeploy: this.#lastDeploy,
      lastGood: this.#lastGood ?? null,
      restarts: this.#restarts,
      updatedAt: new Date(this.#fx.now()).toISOString(),
    };
    await this.#fx.saveState(state).catch((e: unknown) => this.#log.error({ err: e }, 'could not write state'));
  }
}
