/**
 * The orchestrator for one app: read current.conf, validate, relink, start
 * or signal, confirm, record. One apply runs at a time; triggers that arrive
 * meanwhile coalesce into one more pass, which reads the file afresh, so the
 * newest content is what ends up applied.
 */
import type { Logger } from 'pino';
import type { AppConfig } from './config.js';
import type { CurrentSnapshot, Release } from './current.js';
import type { Effects } from './effects.js';
import { RelinkError, RelinkErrors } from './errors.js';
import type { Action, HistoryEntry, Outcome } from './history.js';
import type { ProcInfo } from './proc.js';
import type { AppState, AppStateName } from './state.js';

/** How often the app's process is looked at while waiting for a start or a handoff. */
const POLL_MS = 20;

interface Attempt {
  readonly trigger: string;
  readonly started: number;
  readonly snapshot: CurrentSnapshot | undefined;
  readonly from: { bin: string | undefined; cfg: string | undefined };
  readonly pidBefore: number | undefined;
}

export class AppAgent {
  readonly app: AppConfig;
  readonly #fx: Effects;
  readonly #log: Logger;
  /** The app's main process as last confirmed. Re-verified cheaply before use. */
  #main: ProcInfo | undefined;
  #since: string | null = null;
  #state: AppStateName = 'stopped';
  #lastDeploy: HistoryEntry | null = null;
  /** The current.conf content last acted on (hash + mtime: a re-save retries a refusal). */
  #seen: { hash: string; mtimeMs: number } | undefined;
  /** The code of the last unreadable-current.conf problem, so it is logged once, not every re-check. */
  #readProblem: string | undefined;
  #pending: string | undefined;
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

  /** Adopt a running app, if any, then look at current.conf once. */
  async start(): Promise<void> {
    const found = await this.#fx.discover();
    if (found.main !== undefined) {
      this.#setMain(found.main);
      this.#state = 'running';
      this.#log.info({ appPid: found.main.pid, exe: found.main.exe }, 'adopted running app');
    }
    this.#warnStrays(found.strays);
    await this.#saveState();
    this.trigger('startup');
  }

  /** Ask for a pass. Cheap and safe to call from any event, any number of times. */
  trigger(why: string): void {
    if (this.#closed) return;
    // The newest reason wins; the pass reads the file afresh anyway.
    this.#pending = why;
    this.#loop ??= this.#run();
  }

  /** Resolves when no pass is running or pending. */
  async idle(): Promise<void> {
    while (this.#loop !== undefined) await this.#loop;
  }

  /** Stop taking triggers and wait for a pass in progress; the app is left running. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#pending = undefined;
    await this.idle();
  }

  async #run(): Promise<void> {
    try {
      while (this.#pending !== undefined) {
        const why = this.#pending;
        this.#pending = undefined;
        try {
          await this.#pass(why);
        } catch (err) {
          // A bug or an I/O error must not kill the agent or stop later passes.
          this.#log.error({ err, code: err instanceof RelinkError ? err.code : undefined }, 'apply pass failed unexpectedly');
        }
      }
    } finally {
      this.#loop = undefined;
    }
  }

  async #pass(trigger: string): Promise<void> {
    let snapshot: CurrentSnapshot;
    try {
      snapshot = await this.#fx.readCurrent();
      this.#readProblem = undefined;
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      // A missing current.conf is normal before the first deploy and for an
      // instant during delete-then-recreate: say it once, change nothing.
      if (this.#readProblem !== err.code) this.#log.warn({ code: err.code, file: err.file }, err.message);
      this.#readProblem = err.code;
      return;
    }
    if (this.#seen?.hash === snapshot.hash && this.#seen.mtimeMs === snapshot.mtimeMs) return;
    this.#seen = { hash: snapshot.hash, mtimeMs: snapshot.mtimeMs };

    const links = await this.#fx.readLinks();
    const main = await this.#currentMain();
    const attempt: Attempt = { trigger, started: this.#fx.now(), snapshot, from: links, pidBefore: main?.pid };

    let release: Release;
    try {
      release = await this.#fx.validate(snapshot.text);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      await this.#finish(attempt, 'refused', 'none', undefined, main, err);
      return;
    }

    const inSync = links.bin === release.bin && links.cfg === release.cfg;
    if (inSync && main !== undefined) {
      // Same release as what runs: nothing to switch, nothing to signal.
      this.#log.debug({ bin: release.bin, cfg: release.cfg, appPid: main.pid }, 'current.conf matches what runs');
      return;
    }

    this.#state = 'deploying';
    await this.#saveState();
    try {
      if (!inSync) await this.#fx.relink(release);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      this.#state = main === undefined ? 'stopped' : 'running';
      await this.#finish(attempt, 'failed', 'none', release, main, err);
      return;
    }

    if (main === undefined) {
      await this.#startApp(attempt, release);
    } else {
      await this.#reloadApp(attempt, release, main);
    }
  }

  async #startApp(attempt: Attempt, release: Release): Promise<void> {
    try {
      const launched = await this.#fx.launch();
      let exited = false;
      void launched.exited.then(() => { exited = true; });
      // The command may be a wrapper: wait until a process of the app shows up.
      const deadline = this.#fx.now() + this.app.reload.timeoutMs;
      for (;;) {
        const found = await this.#fx.discover();
        const mine = found.all.find((p) => p.pid === launched.pid) ?? found.main;
        if (mine !== undefined) {
          this.#setMain(mine);
          this.#state = 'running';
          await this.#finish(attempt, 'deployed', 'start', release, mine);
          return;
        }
        if (exited) throw new RelinkError('APP_EXITED', `${this.app.name}: the app exited right after start (see ${this.app.logFile})`, { file: this.app.logFile, rule: 'must keep running' });
        if (this.#fx.now() >= deadline) throw new RelinkError('START_FAILED', `${this.app.name}: no process running a binary from ${this.app.releasesDir} appeared within ${this.app.reload.timeoutMs} ms of starting ${JSON.stringify(this.app.command)}`, { key: 'command', rule: 'must run a binary from the releases folder' });
        await this.#fx.sleep(POLL_MS);
      }
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      this.#main = undefined;
      this.#state = 'failed';
      await this.#finish(attempt, 'failed', 'start', release, undefined, err);
    }
  }

  async #reloadApp(attempt: Attempt, release: Release, main: ProcInfo): Promise<void> {
    const { signal, mode, timeoutMs } = this.app.reload;
    if (!this.#fx.signal(main.pid, signal)) {
      // Gone between the check and the signal (a crash, or a handoff of its
      // own): start it from the new links instead.
      this.#main = undefined;
      await this.#startApp(attempt, release);
      return;
    }
    try {
      const after = mode === 'reexec' ? await this.#awaitHandoff(main, release, timeoutMs) : await this.#confirmInPlace(main);
      this.#setMain(after, after.pid === main.pid);
      this.#state = 'running';
      await this.#finish(attempt, 'deployed', 'signal', release, after);
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      const still = await this.#fx.discover(main);
      if (still.main !== undefined) this.#setMain(still.main, still.main.pid === main.pid);
      else this.#main = undefined;
      this.#state = still.main === undefined ? 'failed' : 'running';
      await this.#finish(attempt, 'failed', 'signal', release, still.main, err);
    }
  }

  /**
   * A re-exec'ing app (endless, tableflip, grace) answers the signal by
   * starting its successor and exiting once the successor is ready: the old
   * main has gone and exactly one new main runs. Only then is the handoff
   * over, so the next deploy signals the successor and not a draining parent.
   */
  async #awaitHandoff(old: ProcInfo, release: Release, timeoutMs: number): Promise<ProcInfo> {
    const deadline = this.#fx.now() + timeoutMs;
    for (;;) {
      const same = await this.#fx.verify(old);
      if (same === undefined) {
        const found = await this.#fx.discover();
        if (found.main !== undefined) return found.main;
        throw new RelinkError('APP_EXITED', `${this.app.name}: pid ${old.pid} exited after ${this.app.reload.signal} and no successor runs (see ${this.app.logFile})`, { file: this.app.logFile, rule: 'a successor must take over' });
      }
      // Some apps execve() themselves in place: same PID, new binary.
      if (same.exe === release.bin && old.exe !== release.bin) return same;
      if (this.#fx.now() >= deadline) {
        throw new RelinkError('HANDOFF_TIMEOUT', `${this.app.name}: pid ${old.pid} still runs ${timeoutMs} ms after ${this.app.reload.signal} (reload.mode is "reexec"; use "inplace" for an app that reloads without a new process)`,
          { key: 'reload.mode', rule: 'the old process must hand over and exit', found: `pid ${old.pid} still running` });
      }
      await this.#fx.sleep(POLL_MS);
    }
  }

  /** An in-place reloader (nginx) keeps its PID: it must simply still be there. */
  async #confirmInPlace(main: ProcInfo): Promise<ProcInfo> {
    const same = await this.#fx.verify(main);
    if (same === undefined) {
      throw new RelinkError('APP_EXITED', `${this.app.name}: pid ${main.pid} exited after ${this.app.reload.signal} (see ${this.app.logFile})`, { file: this.app.logFile, rule: 'must survive the reload signal' });
    }
    return same;
  }

  /** The main process: the cached one if it still checks out, else a fresh scan. */
  async #currentMain(): Promise<ProcInfo | undefined> {
    if (this.#main !== undefined) {
      const same = await this.#fx.verify(this.#main);
      if (same !== undefined) return same;
    }
    const found = await this.#fx.discover(this.#main);
    this.#warnStrays(found.strays);
    if (found.main === undefined) {
      if (this.#main !== undefined) this.#log.warn({ appPid: this.#main.pid }, 'app process is gone');
      this.#main = undefined;
      if (this.#state === 'running') this.#state = 'stopped';
      return undefined;
    }
    this.#setMain(found.main, found.main.pid === this.#main?.pid);
    this.#state = 'running';
    return found.main;
  }

  #setMain(info: ProcInfo, keepSince = false): void {
    if (!keepSince || this.#since === null) this.#since = new Date(this.#fx.now()).toISOString();
    this.#main = info;
  }

  #warnStrays(strays: readonly ProcInfo[]): void {
    if (strays.length === 0) return;
    this.#log.warn({ appPid: this.#main?.pid, strays: strays.map((s) => s.pid) },
      'more than one copy of the app runs; only the main one is signalled, the others are left alone');
  }

  async #finish(attempt: Attempt, outcome: Outcome, action: Action, release: Release | undefined, after: ProcInfo | undefined, err?: RelinkError): Promise<void> {
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
      currentHash: attempt.snapshot?.hash ?? null,
      trigger: attempt.trigger,
    };
    this.#lastDeploy = entry;
    const fields = { ...entry, problems: problems.length > 1 ? problems.map((p) => p.toJSON()) : undefined, file: err?.file, key: err?.key };
    if (outcome === 'deployed') this.#log.info(fields, `deployed ${release?.bin ?? ''} (${action})`);
    else if (outcome === 'refused') this.#log.warn(fields, `refused: ${entry.reason ?? ''}`);
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
      since: this.#main === undefined ? null : this.#since,
      bin: links.bin ?? null,
      cfg: links.cfg ?? null,
      lastDeploy: this.#lastDeploy,
      updatedAt: new Date(this.#fx.now()).toISOString(),
    };
    await this.#fx.saveState(state).catch((e: unknown) => this.#log.error({ err: e }, 'could not write state'));
  }
}
