/**
 * The resident agent: one orchestrator and one watcher per app, a periodic
 * re-check as the safety net for any file event a watcher missed, the prune
 * schedules, and a claim on the stateDir so that two agents never manage
 * the same apps (each app's folder is claimed too: src/applock.ts).
 *
 * One app's trouble never reaches another: an app whose folder is missing,
 * whose user does not exist or whose watcher cannot start is reported and
 * retried on every re-check while the others run; a state folder that
 * cannot be written is said once and the apps are managed anyway.
 */
import { watch, type FSWatcher } from 'node:fs';
import { lstat, mkdir, readFile } from 'node:fs/promises';
import { loadConfig } from './config.js';
import { hashText } from './current.js';
import { requestsDir } from './requests.js';
import type { Logger } from 'pino';
import { AppAgent, EARLY_TRIGGER, RECHECK_TRIGGER, type AppObserver } from './app.js';
import { AppOutput, type JournalTarget } from './appoutput.js';
import { Compactor } from './compaction.js';
import type { AgentConfig, AppConfig } from './config.js';
import { realEffects } from './effects.js';
import { RelinkError, RelinkErrors } from './errors.js';
import { schedulePrune, type PruneSchedule } from './releases.js';
import { migrateStateDir } from './migrate.js';
import { agentFile, AppStore, claimAgent, releaseAgent, runningAgent, type AgentConfigRecord } from './state.js';
import { describeDamage, type Damage } from './stateDir.js';
import { resolveRunAs } from './user.js';
import { VERSION } from './version.js';
import { CurrentWatcher } from './watch.js';
import { SocketHolder } from './sockets.js';
import { forgetListenEnv, formatListenAddress, inheritedListeners, missingSocketError, parseListenAddress, underSystemd } from './listenfds.js';
import { openNotifySocket } from './notify.js';
import { Notifications } from './notifications.js';
import { notifierProgramProblems, realSend } from './notifiers.js';
import { appDir, ensureAppDir } from './stateDir.js';
import path from 'node:path';
import { describeListener, ofApp, unixListening } from './proc.js';
// Types only: the module itself (and prom-client with it) is imported when "metrics" is set.
import type { Monitoring } from './monitoring.js';

/** A full collection every 50 journal entries, or 5 s after the last (src/compaction.ts). */
const COMPACTION = { everyDeploys: 50, idleMs: 5_000 } as const;

/** One app under the agent: its orchestrator and, once it could be started, its watcher. */
interface Slot {
  readonly app: AppAgent;
  readonly log: Logger;
  /** Its journal and state file; their group is the app's, once its user exists. */
  readonly store: AppStore;
  /** Where its output goes; rotates its log file (src/appoutput.ts). */
  readonly output: AppOutput;
  gid: number | undefined;
  watcher: CurrentWatcher | undefined;
  /** A watcher start in progress (retried on every re-check until it works). */
  arming: Promise<void> | undefined;
  /** The last reason the watcher could not start, said once. */
  watchProblem: string | undefined;
  /** Watches the app's requests folder (relink stop | start | restart: src/requests.ts); undefined until it could be made. */
  requests: FSWatcher | undefined;
  /** Its sd_notify socket (readiness "notify"). */
  readonly notifier: Notifier | undefined;
  /** Its scheduled prune (releases), if any. */
  prune?: PruneSchedule | undefined;
}

/** What a config reload changed: apps by name, and the agent-wide settings. */
export interface ReloadResult {
  readonly added: readonly string[];
  readonly removed: readonly string[];
  readonly changed: readonly string[];
  readonly unchanged: readonly string[];
  /** Top-level keys whose value changed (`metrics`, `notify`, `logLevel`, ...), applied by this reload. */
  readonly settings: readonly string[];
  /** What the reloaded config asks for and cannot be done now (a metrics address in use, a notifier's missing program), one message each; the rest went through. */
  readonly warnings: readonly string[];
}

/** Top-level config keys a reload applies to the agent itself (the apps' own are compared per app). */
const AGENT_SETTINGS = ['metrics', 'notify', 'logLevel', 'reconcileMs', 'watch', 'history', 'prune'] as const;

type Notifier = { path: string; ready(sinceMs: number, deadlineMs: number): Promise<boolean>; close(): Promise<void> };

/** Where the apps' observers report (the metrics, when on): set and cleared as "metrics" comes and goes. */
interface MonitoringHub {
  current: Monitoring | undefined;
}

/** An app's observer: forwards to the monitoring in force, if any (nothing is loaded for it otherwise). */
function observerFor(hub: MonitoringHub, name: string): AppObserver {
  return {
    verdict: (entry, writtenAtMs) => hub.current?.verdict(name, entry, writtenAtMs),
    state: (state, up, crashLoop) => hub.current?.state(name, state, up, crashLoop),
    restarted: () => hub.current?.restarted(name),
  };
}


export interface AgentOptions {
  /** The journald apps without a logFile write to; default the host's (src/appoutput.ts); null: always their log file. */
  readonly journal?: JournalTarget | null;
}

/** How often each app's log file size is looked at (one lstat), for rotation. */
const LOG_CHECK_MS = 1_000;

export class Agent {
  #config: AgentConfig;
  #slots: Slot[];
  readonly #log: Logger;
  /** Reloads run one at a time, in the order asked. */
  #reloads: Promise<unknown> = Promise.resolve();
  readonly #compactor: Compactor;
  /** Whether this agent holds the stateDir (agent.json); false when it could not be written. */
  #claimed = false;
  /** lstat identity of agent.json when it last named this agent. */
  #recordSignature: string | undefined;
  /** The last reason agent.json could not be written, said once. */
  readonly #claimProblem: { last: string | undefined } = { last: undefined };
  #timer: NodeJS.Timeout | undefined;
  /** The config as last loaded (agent.json's `config`), written again with agent.json. */
  #loaded: AgentConfigRecord | undefined;
  #logTimer: NodeJS.Timeout | undefined;
  /** Where apps without a logFile write (AgentOptions.journal), for apps added by a reload too. */
  #journal: JournalTarget | null | undefined;
  /** The apps' listening sockets (src/sockets.ts). */
  #sockets: SocketHolder | undefined;
  /** The operator's notifiers (src/notifications.ts), global and per app. */
  #notifications: Notifications | undefined;
  #closing: Promise<void> | undefined;
  /** Apps a reload is handing over (waiting for their pass in flight): an agent stopping cuts the wait short. */
  readonly #retiring = new Set<Slot>();
  /** The metrics and status page (src/monitoring.ts), when "metrics" is set. */
  readonly #hub: MonitoringHub;
  readonly #startedAt = new Date().toISOString();

  private constructor(config: AgentConfig, slots: Slot[], log: Logger, compactor: Compactor, hub: MonitoringHub) {
    this.#config = config;
    this.#hub = hub;
    this.#slots = slots;
    this.#log = log;
    this.#compactor = compactor;
  }

  /** The config in force (the file as last loaded successfully). */
  get config(): AgentConfig {
    return this.#config;
  }

  /** The apps managed now, in config order. */
  get apps(): readonly AppAgent[] {
    return this.#slots.map((s) => s.app);
  }

  /**
   * Claim the stateDir, bring a state folder of the layout before issue 9
   * over, start every app's orchestrator and watcher, and begin the periodic
   * re-check.
   */
  static async start(config: AgentConfig, log: Logger, opts: AgentOptions = {}): Promise<Agent> {
    const compactor = new Compactor(COMPACTION);
    const warn = (l: Logger) => (d: Damage) => l.warn({ file: d.file, line: d.line }, describeDamage(d));
    const claimProblem = { last: undefined as string | undefined };
    // What was loaded, in agent.json: relink status tells a config file edited since (reload it first).
    const loaded: AgentConfigRecord = { hash: hashText(await readFile(config.file, 'utf8').catch(() => '')), at: new Date().toISOString() };
    const claimed = await claim(config, log, warn(log), claimProblem, true, loaded);
    // The group of each app's folder in the state folder: who may read its journal and state.
    const gids = await Promise.all(config.apps.map((a) => resolveRunAs(a).then((r) => r.gid, () => undefined)));
    if (claimed) {
      await migrateStateDir(config.stateDir, config.apps.map((a, i) => ({ name: a.name, gid: gids[i] })), { ...config.history, onDamaged: warn(log) })
        .catch((err: unknown) => log.error({ err: err instanceof Error ? err.message : String(err), code: 'STATE_WRITE_FAILED' }, 'could not move the state folder to the per-app layout; the old journal is left as it is'));
    }
    const sockets = await holdSockets(config, log, gids);
    const notifiers = await openNotifiers(config, log, gids);
    const notifications = new Notifications(config, log, { send: realSend });
    const hub: MonitoringHub = { current: undefined };
    const slots = config.apps.map((app, i) => makeSlot(config, app, { gid: gids[i], log, compactor, sockets, notify: notifiers.get(app.name), journal: opts.journal, notifications, hub }));
    const agent = new Agent(config, slots, log, compactor, hub);
    agent.#notifications = notifications;
    agent.#journal = opts.journal;
    agent.#sockets = sockets;
    agent.#claimed = claimed;
    agent.#loaded = loaded;
    agent.#claimProblem.last = claimProblem.last;
    try {
      // Before the apps' first passes, whose transitions and verdicts it counts.
      await agent.#monitor(config);
      await agent.#checkNotifiers(config);
      await Promise.all(slots.map((s) => s.output.recover()));
      agent.#armLogCheck();
      for (const slot of slots) await agent.#startSlot(slot);
      agent.#timer = setInterval(() => agent.#recheck(), config.reconcileMs);
    } catch (err) {
      await agent.close();
      throw err;
    }
    log.info({ version: VERSION, config: config.file, stateDir: config.stateDir, apps: config.apps.map((a) => a.name) }, 'agent started');
    return agent;
  }

  /**
   * Every app's log size checked each second (rotated past log.maxBytes),
   * and what its processes write to (a log deleted or renamed under them):
   * due on the second of the clock, when the apps' supervision checks are
   * (src/app.ts), so the agent still wakes once a second, not twice.
   */
  #armLogCheck(): void {
    if (this.#closing !== undefined) return;
    this.#logTimer = setTimeout(() => {
      for (const s of this.#slots) void s.output.check(s.app.writers());
      this.#armLogCheck();
    }, LOG_CHECK_MS - (Date.now() % LOG_CHECK_MS));
    this.#logTimer.unref();
  }

  async #startSlot(slot: Slot): Promise<void> {
    // The watcher first: an edit made while the agent was down, or
    // between start and ready, is seen by the app's first pass.
    await this.#arm(slot);
    await this.#watchRequests(slot);
    await slot.app.start();
    slot.prune = schedulePrune(this.#config, slot.app.app, slot.log);
  }

  /**
   * Let an app go: its watchers and schedule stop, its pass finishes (src/app.ts close:
   * within the stop budget, one that switched nothing abandoned; `retire`, for a
   * config reload: whatever it does, as it would); the app itself keeps running.
   */
  async #stopSlot(slot: Slot, how: 'close' | 'retire' = 'close'): Promise<void> {
    await slot.prune?.stop();
    await slot.arming;
    await slot.watcher?.close();
    slot.requests?.close();
    if (how === 'retire') {
      this.#retiring.add(slot);
      try {
        await (this.#closing === undefined ? slot.app.retire() : slot.app.close());
      } finally {
        this.#retiring.delete(slot);
      }
    } else {
      await slot.app.close();
    }
    // A rotation under way finishes: stopped half way it would leave bytes in two files.
    await slot.output.close();
    await slot.notifier?.close();
  }

  /**
   * Re-read the config file (SIGHUP, `relink reload`). A file that does not
   * load (the errors loadConfig throws), or that moves stateDir (which
   * cannot change under a running agent), changes nothing: the error is
   * thrown and the running config stays. Otherwise apps added are started;
   * apps removed are let go (left running, no longer managed: said in the
   * log); an app whose settings changed gets a new orchestrator, which
   * adopts what runs as a restarted agent would (the new settings apply to
   * the next generation it starts: relink status says "restart to apply");
   * the others are not touched. A change of an agent-wide key other than
   * logLevel, reconcileMs and notify (watch, history, prune) counts as a
   * change of every app. The notify lists, global and per app, apply to the
   * next event without touching any app (src/notifications.ts configure).
   * agent.json records the outcome (`config`), for relink reload.
   */
  reload(): Promise<ReloadResult> {
    const run = this.#reloads.then(() => this.#reload());
    this.#reloads = run.catch(() => undefined);
    return run;
  }

  async #reload(): Promise<ReloadResult> {
    if (this.#closing !== undefined) throw new RelinkError('AGENT_STOPPING', 'the agent is stopping: the config is not reloaded', { rule: 'a reload needs a running agent' });
    const file = this.#config.file;
    const text = await readFile(file, 'utf8').catch(() => '');
    let next: AgentConfig;
    try {
      next = await loadConfig(file);
      if (next.stateDir !== this.#config.stateDir) {
        throw new RelinkError('CONFIG_INVALID', `${file}: "stateDir" changed (${this.#config.stateDir} -> ${next.stateDir}): the agent keeps its state folder while it runs; restart the agent to move it (systemctl restart relink)`,
          { file, key: 'stateDir', rule: 'cannot change while the agent runs', found: next.stateDir });
      }
    } catch (err) {
      const message = err instanceof RelinkErrors ? err.problems.map((p: RelinkError) => p.message).join('; ') : err instanceof Error ? err.message : String(err);
      this.#log.error({ file, code: err instanceof RelinkError ? err.code : 'CONFIG_INVALID', err: message }, `config not reloaded, the running config stays: ${message}`);
      await this.#recordConfig({ hash: hashText(text), at: new Date().toISOString(), error: message });
      throw err;
    }
    const agentWide = (c: AgentConfig): string => JSON.stringify({ watch: c.watch, history: c.history, prune: (c as { prune?: unknown }).prune });
    const everything = agentWide(next) !== agentWide(this.#config);
    const before = new Map(this.#slots.map((s) => [s.app.app.name, s]));
    const wanted = new Set(next.apps.map((a) => a.name));
    const setting = (c: AgentConfig, k: string): string | undefined => JSON.stringify((c as unknown as Record<string, unknown>)[k]);
    const settings: string[] = AGENT_SETTINGS.filter((k) => setting(next, k) !== setting(this.#config, k));
    // An app's own notify list changes no app (it stays "unchanged") but is a change the reload applied: said as such.
    for (const a of next.apps) {
      const was = this.#config.apps.find((o) => o.name === a.name);
      if (was !== undefined && JSON.stringify(was.notify) !== JSON.stringify(a.notify)) settings.push(`${a.name}.notify`);
    }
    const result = { added: [] as string[], removed: [] as string[], changed: [] as string[], unchanged: [] as string[], settings, warnings: [] as string[] };
    for (const [name, slot] of before) {
      if (wanted.has(name)) continue;
      await this.#stopSlot(slot, 'retire');
      result.removed.push(name);
      slot.log.warn({}, `"${name}" is no longer in ${file}: no longer managed; its processes are left running (stop them by hand, or put it back and relink stop it)`);
    }
    const prev = this.#config;
    this.#config = next;
    // Before any app is started or handed over: their verdicts from now on go to the new lists.
    this.#notifications!.configure(next);
    if (next.logLevel !== prev.logLevel) this.#log.level = next.logLevel;
    if (next.reconcileMs !== prev.reconcileMs) {
      clearInterval(this.#timer);
      this.#timer = setInterval(() => this.#recheck(), next.reconcileMs);
    }
    const gids = await Promise.all(next.apps.map((a) => resolveRunAs(a).then((r) => r.gid, () => undefined)));
    const slots: Slot[] = [];
    for (const [i, app] of next.apps.entries()) {
      const old = before.get(app.name);
      if (old !== undefined && !everything && sameApp(old.app.app, app)) {
        slots.push(old);
        result.unchanged.push(app.name);
        continue;
      }
      if (old !== undefined) await this.#stopSlot(old, 'retire');
      const notify = (await openNotifiers({ ...next, apps: [app] }, this.#log, [gids[i]])).get(app.name);
      const slot = makeSlot(next, app, { gid: gids[i], log: this.#log, compactor: this.#compactor, sockets: this.#sockets!, notify, journal: this.#journal, notifications: this.#notifications!, hub: this.#hub });
      // Exported before its first pass (a changed app keeps its counters).
      this.#hub.current?.addApp({ app, state: slot.app.state, up: false });
      slots.push(slot);
      await slot.output.recover();
      await this.#startSlot(slot);
      (old === undefined ? result.added : result.changed).push(app.name);
    }
    this.#slots = slots;
    for (const name of result.removed) this.#hub.current?.removeApp(name);
    await this.#monitor(next);
    await this.#releaseSockets(prev, next);
    for (const p of [this.#hub.current?.listenProblem, this.#hub.current?.textfileProblem]) if (p !== undefined) result.warnings.push(p);
    result.warnings.push(...(await this.#checkNotifiers(next)));
    this.#log.info({ file, ...result }, `config reloaded: ${result.added.length} added, ${result.removed.length} let go, ${result.changed.length} changed (their next generation starts with the new settings), ${result.unchanged.length} unchanged${settings.length > 0 ? `; agent settings changed: ${settings.join(', ')}` : ''}${result.warnings.length > 0 ? `; ${result.warnings.length} warning(s)` : ''}`);
    await this.#recordConfig({ hash: hashText(text), at: new Date().toISOString(), ...result });
    return result;
  }

  /**
   * Addresses the reloaded config no longer names (an app removed, an
   * address dropped from "sockets") stop being held: a connection there is
   * refused once no process of the app listens, instead of waiting in a
   * backlog nobody will ever accept from. A running generation keeps its
   * own copy (and a unix socket its path) until it exits.
   */
  async #releaseSockets(prev: AgentConfig, next: AgentConfig): Promise<void> {
    const wanted = new Set(next.apps.flatMap((a) => a.sockets));
    for (const app of prev.apps) {
      for (const address of app.sockets) {
        if (wanted.has(address)) continue;
        const done = await this.#sockets!.release(address);
        const log = this.#log.child({ app: app.name });
        if (done === 'closed') log.info({ address }, `${address} is no longer in the config: the agent stopped holding it (a generation still running keeps serving on its own copy until it exits)`);
        if (done === 'kept') log.warn({ address }, `${address} is no longer in the config, but systemd passed it: its socket unit keeps it listening until that unit is stopped and removed`);
      }
    }
  }

  /** What the last reload did, in agent.json (for relink reload --wait). */
  async #recordConfig(config: AgentConfigRecord): Promise<void> {
    // A refused file leaves what was loaded before as what runs.
    const loaded: AgentConfigRecord = config.error === undefined ? config : { ...config, hash: this.#loaded?.hash ?? config.hash, refused: config.hash };
    this.#loaded = loaded;
    if (!this.#claimed) return;
    await claimAgent(this.#config.stateDir, this.#config.file, VERSION, { config: loaded }).catch((err: unknown) => {
      this.#log.warn({ err: err instanceof Error ? err.message : String(err) }, 'could not record the reload in agent.json');
    });
    this.#recordSignature = await fileSignature(agentFile(this.#config.stateDir));
  }

  async #arm(slot: Slot): Promise<void> {
    if (slot.watcher !== undefined || this.#closing !== undefined) return;
    slot.arming ??= (async () => {
      const app = slot.app.app;
      try {
        slot.watcher = await this.#watch(app, slot);
        if (slot.watchProblem !== undefined) slot.log.info({ file: app.currentFile }, 'watching current.conf again');
        slot.watchProblem = undefined;
        // A watcher that arrived while closing is closed at once.
        if (this.#closing !== undefined) await slot.watcher.close();
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        if (slot.watchProblem !== why) {
          slot.log.error({ file: app.currentFile, err: why }, `cannot watch current.conf (${why}); it is re-read every ${this.config.reconcileMs} ms meanwhile`);
        }
        slot.watchProblem = why;
      } finally {
        slot.arming = undefined;
      }
    })();
    await slot.arming;
  }

  #watch(app: AppConfig, slot: Slot): Promise<CurrentWatcher> {
    return CurrentWatcher.start({
      file: app.currentFile,
      stabilityMs: this.config.watch.stabilityMs,
      pollMs: this.config.watch.pollMs,
      onChange: (event) => slot.app.trigger(`watch:${event}`),
      onEarly: () => slot.app.trigger(EARLY_TRIGGER),
      onError: (err) => slot.log.error({ err }, 'watcher error'),
      onFolder: (event, dir) => {
        if (event === 'missing') slot.log.warn({ dir }, 'the folder of current.conf is missing or was replaced; watching for it to come back (re-read every re-check meanwhile)');
        else {
          slot.log.info({ dir }, 'watching the folder of current.conf again; current.conf is judged again');
          // Judged afresh, as a re-save would be: a refusal that was about
          // the old folder (its mode, its owner) is retried even when the
          // file came back with the same content and mtime (mv, cp -a).
          slot.app.rejudge('watch:folder');
        }
      },
    });
  }

  /**
   * Operators' requests (src/requests.ts) are answered as soon as one is
   * written: an inotify watch on the app's requests folder (made here, 0700).
   * Until it can be made (a state folder that cannot be written), the
   * periodic re-check looks instead.
   */
  async #watchRequests(slot: Slot): Promise<void> {
    if (slot.requests !== undefined || this.#closing !== undefined) return;
    const dir = requestsDir(this.config.stateDir, slot.app.app.name);
    try {
      // The app's folder first, with its own mode and group (a recursive
      // mkdir would make it 0700 and shut the app's group out of its journal).
      await ensureAppDir(path.dirname(dir), slot.gid);
      await mkdir(dir, { mode: 0o700 }).catch((err: unknown) => {
        if (!(err instanceof Error && 'code' in err && err.code === 'EEXIST')) throw err;
      });
      slot.requests = watch(dir, () => slot.app.requests());
      slot.requests.on('error', (err) => {
        slot.log.error({ dir, err: err.message }, 'the requests folder cannot be watched any more; the re-check looks there meanwhile');
        slot.requests?.close();
        slot.requests = undefined;
      });
    } catch (err) {
      slot.log.warn({ dir, err: err instanceof Error ? err.message : String(err) }, 'cannot watch the requests folder (relink stop | start | restart); the re-check looks there meanwhile');
    }
  }

  #recheck(): void {
    void this.#reclaim();
    for (const slot of this.#slots) {
      if (slot.requests === undefined) {
        void this.#watchRequests(slot);
        slot.app.requests();
      }
      // An app whose user did not exist when the agent started: its state folder goes to its group once it does.
      if (slot.gid === undefined) {
        void resolveRunAs(slot.app.app).then((r) => {
          slot.gid = r.gid;
          slot.store.setGid(r.gid);
        }, () => undefined);
      }
      if (slot.watcher === undefined) void this.#arm(slot);
      // The safety net for what no inotify event tells (an ancestor folder renamed and rebuilt).
      else void slot.watcher.check();
      slot.app.trigger(RECHECK_TRIGGER);
    }
  }

  /**
   * agent.json must name this agent for as long as it runs (the CLI finds
   * it there): deleted, damaged or never written (a read-only state folder
   * at start), it is written again on the re-check.
   */
  async #reclaim(): Promise<void> {
    if (this.#closing !== undefined) return;
    // The very file this agent last found naming it (one lstat), or read it again.
    const signature = await fileSignature(agentFile(this.config.stateDir));
    if (signature !== undefined && signature === this.#recordSignature) return;
    if ((await runningAgent(this.config.stateDir).catch(() => undefined))?.pid === process.pid) {
      this.#recordSignature = signature;
      return;
    }
    const wasClaimed = this.#claimed;
    this.#claimed = await claim(this.config, this.#log, (d) => this.#log.warn({ file: d.file }, describeDamage(d)), this.#claimProblem, false, this.#loaded);
    if (this.#claimed) {
      this.#recordSignature = await fileSignature(agentFile(this.config.stateDir));
      this.#claimProblem.last = undefined;
      this.#log.info({ stateDir: this.config.stateDir }, wasClaimed ? 'agent.json was missing or damaged: written again' : 'recording in the state folder again');
    }
  }

  /**
   * Start, change or stop the metrics and status page as `config.metrics`
   * says (at start, and after each reload). Loaded here, on first use:
   * prom-client and the HTTP server cost an agent without metrics nothing.
   * Never throws for the listener or the textfile (src/monitoring.ts logs).
   */
  async #monitor(config: AgentConfig): Promise<void> {
    const hub = this.#hub;
    if (config.metrics === undefined) {
      if (hub.current !== undefined) {
        await hub.current.close({ removeTextfile: true });
        hub.current = undefined;
        this.#log.info('metrics are off: the listener stopped and the textfile deleted');
      }
      return;
    }
    const settings = config.metrics;
    const apps = this.#slots.map((s) => ({ app: s.app.app, state: s.app.state, up: s.app.mainPid !== undefined }));
    if (hub.current === undefined) {
      try {
        const { Monitoring } = await import('./monitoring.js');
        hub.current = await Monitoring.start(settings, apps, { log: this.#log, config: () => this.#config, startedAt: this.#startedAt });
      } catch (err) {
        // prom-client missing from a broken install, say: the apps are managed all the same.
        const why = err instanceof Error ? err.message : String(err);
        this.#log.error({ code: 'METRICS_UNAVAILABLE', err: why }, `the metrics could not be started (${why}); the agent and the apps run on without them`);
      }
      return;
    }
    // A reload: the apps kept have the same settings; changed ones were re-added by #reload.
    for (const a of apps) hub.current.addApp(a);
    // Always: a listener whose address was taken is tried again.
    await hub.current.reconfigure(settings);
  }

  /** The notifiers' programs, checked now rather than at the first event (src/notifiers.ts notifierProgramProblems): each problem logged; their messages. */
  async #checkNotifiers(config: AgentConfig): Promise<string[]> {
    const problems = await notifierProgramProblems(config);
    for (const p of problems) this.#log.error({ code: p.code, key: p.key }, `${p.message}: that notifier will fail until it is fixed (checked again before each run); the others and the apps are not affected`);
    return problems.map((p) => p.message);
  }

  /** Resolves when every app has finished the passes asked of it so far. */
  async idle(): Promise<void> {
    await Promise.all(this.apps.map((a) => a.idle()));
  }

  /**
   * Stop watching, let each app finish or abandon its pass (within the stop
   * budget, src/app.ts), release the stateDir. The apps keep running. The
   * same promise every time.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      clearInterval(this.#timer);
      clearTimeout(this.#logTimer);
      this.#compactor.stop();
      // A reload in progress finishes first (it may be starting apps); an
      // app it is handing over stops waiting for its pass (close() within
      // the stop budget, as every app's).
      for (const slot of this.#retiring) void slot.app.close();
      await this.#reloads;
      // node-cron tasks keep the process alive until destroyed.
      await Promise.allSettled(this.#slots.map((s) => this.#stopSlot(s)));
      // After the apps: their last verdicts are queued by now.
      await this.#notifications?.close();
      await this.#hub.current?.close();
      this.#hub.current = undefined;
      // The running generations keep their own copies of the sockets.
      await this.#sockets?.close();
      if (this.#claimed) await releaseAgent(this.config.stateDir).catch(() => undefined);
      this.#log.info('agent stopped; apps left running');
    })();
    return this.#closing;
  }
}

/**
 * The same app for a reload: every setting but `notify`, which the agent's
 * Notifications takes over by itself (a changed list needs no new orchestrator).
 */
function sameApp(a: AppConfig, b: AppConfig): boolean {
  const { notify: _a, ...restA } = a;
  const { notify: _b, ...restB } = b;
  return JSON.stringify(restA) === JSON.stringify(restB);
}

/** An app's orchestrator with its effects, journal and log, not started yet. */
function makeSlot(config: AgentConfig, app: AppConfig, deps: { gid: number | undefined; log: Logger; compactor: Compactor; sockets: SocketHolder; notify: Notifier | undefined; journal: JournalTarget | null | undefined; notifications: Notifications; hub: MonitoringHub }): Slot {
  const applog = deps.log.child({ app: app.name });
  if (app.reload.deprecatedMode) applog.warn({ key: 'reload.mode' }, `"reload.mode" is deprecated: write "reload.strategy": ${JSON.stringify(app.reload.strategy)} instead (same meaning)`);
  const store = new AppStore(config.stateDir, app.name, { gid: deps.gid, history: config.history, onDamaged: (d: Damage) => applog.warn({ file: d.file, line: d.line }, describeDamage(d)) });
  const output = new AppOutput(app, applog, { journal: deps.journal });
  const fx = realEffects(app, config.stateDir, { store, configFile: config.file, sockets: deps.sockets, notify: deps.notify, output, notifications: deps.notifications });
  const record: typeof fx.record = async (entry) => {
    await fx.record(entry);
    deps.compactor.noteDeploy();
  };
  return { app: new AppAgent(app, { ...fx, record }, applog, observerFor(deps.hub, app.name)), log: applog, store, output, gid: deps.gid, watcher: undefined, arming: undefined, watchProblem: undefined, requests: undefined, notifier: deps.notify };
}

/**
 * One agent per stateDir (agent.json; a damaged one is set aside). Another
 * live agent on it is fatal (AGENT_RUNNING); a stateDir that cannot be
 * written (full, read-only) is not: the apps are managed anyway, and the log
 * says so, with the path. True when this agent holds the stateDir.
 */
async function claim(config: AgentConfig, log: Logger, onDamaged: (d: Damage) => void, said: { last: string | undefined }, atStart: boolean, loaded?: AgentConfigRecord): Promise<boolean> {
  try {
    await claimAgent(config.stateDir, config.file, VERSION, { onDamaged, config: loaded });
    return true;
  } catch (err) {
    const found = err instanceof Error ? err.message : String(err);
    // At start, another agent on this stateDir stops this one; later (a re-check) it is said once.
    if (atStart && err instanceof RelinkError && err.code === 'AGENT_RUNNING') throw err;
    if (said.last !== found) {
      said.last = found;
      log.error({ stateDir: config.stateDir, err: found, code: err instanceof RelinkError ? err.code : 'STATE_WRITE_FAILED' },
        `cannot record in the state folder ${config.stateDir} (${found}): the apps are managed anyway, but deploys are not journaled and relink deploy --wait cannot see this agent`);
    }
    return false;
  }
}

/**
 * An sd_notify socket for each app whose health.readiness is "notify", at
 * <stateDir>/apps/NAME/notify.sock (root and the app's group may send to
 * it): given to the app's starts as NOTIFY_SOCKET. One that cannot be made
 * is said once; that app's deploys then fail NOT_READY, saying so.
 */
async function openNotifiers(config: AgentConfig, log: Logger, gids: ReadonlyArray<number | undefined>): Promise<Map<string, Notifier>> {
  const out = new Map<string, Notifier>();
  for (const [i, app] of config.apps.entries()) {
    if (app.health.readiness !== 'notify') continue;
    try {
      const dir = appDir(config.stateDir, app.name);
      await ensureAppDir(dir, gids[i]);
      const sock = await openNotifySocket(path.join(dir, 'notify.sock'), { gid: gids[i] });
      out.set(app.name, { path: sock.path, ready: async (since, deadline) => (await sock.ready(since, deadline)) !== undefined, close: () => sock.close() });
    } catch (err) {
      log.child({ app: app.name }).error({ code: err instanceof RelinkError ? err.code : 'NOTIFY_SOCKET_FAILED' }, `cannot make the sd_notify socket for health.readiness "notify": ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return out;
}

/**
 * The apps' listening sockets. Under systemd they are passed by socket
 * units (systemd/relink-web.socket, one FileDescriptorName= per app) and
 * outlive the agent: each configured address is matched to a passed fd by
 * the app's name and the fd's real address (src/listenfds.ts), and one not
 * passed is that app's error, naming the lines to add. Started by hand, the
 * agent binds them itself in one batch (src/sockets.ts). What cannot be held
 * is said once per app; such an app starts without it, and its deploys say
 * why (an address taken by its own running generation, left by an earlier
 * hand-started agent, is taken over on the next deploy: src/app.ts #restart).
 */
async function holdSockets(config: AgentConfig, log: Logger, gids: ReadonlyArray<number | undefined>): Promise<SocketHolder> {
  const holder = new SocketHolder();
  const systemd = underSystemd();
  const passed = inheritedListeners();
  // No app may see the agent's own variables (launch.ts sets the app's).
  forgetListenEnv();
  const requests = await Promise.all(config.apps.flatMap((app, i) => app.sockets.map(async (address) => {
    const runAs = await resolveRunAs(app).catch(() => undefined);
    return { app, address, canonical: formatListenAddress(parseListenAddress(address)), owner: runAs === undefined ? undefined : { uid: runAs.uid, gid: gids[i] ?? runAs.gid } };
  })));
  if (requests.length === 0) return holder;
  if (systemd) {
    const missing = new Map<string, RelinkError>();
    holder.passedOnly(missing);
    for (const r of requests) {
      const fd = passed.find((p) => p.name === r.app.name && p.address === r.canonical && p.listening);
      if (fd !== undefined) {
        holder.adopt([{ address: r.address, fd: fd.fd }]);
        continue;
      }
      const err = missingSocketError(r.app.name, r.address, config.file, { user: r.app.user, group: r.app.group, passed });
      missing.set(r.address, err);
      log.child({ app: r.app.name }).error({ code: err.code, address: r.address }, err.message);
    }
    const named = new Set(config.apps.map((a) => a.name));
    for (const p of passed.filter((x) => !named.has(x.name))) {
      log.warn({ fd: p.fd, name: p.name, address: p.address }, `systemd passed fd ${p.fd} named "${p.name}", which names no app in the config: left unused`);
    }
    return holder;
  }
  const unheld = await holder.bind(requests.map((r) => ({ address: r.address, owner: r.owner })), unixListening);
  for (const u of unheld) {
    const r = requests.find((x) => x.address === u.address);
    const app = r?.app;
    const pid = u.holder?.pid;
    if (app !== undefined && pid !== undefined && (await ofApp(pid, app, r?.owner?.uid))) {
      // Expected after a hand-started agent is restarted (README, "sockets"): not an error.
      log.child({ app: app.name }).warn({ code: u.error.code, address: u.address, appPid: pid },
        `${u.address} is held by the app's own running generation (${describeListener(u.holder) ?? `pid ${pid}`}), started by an agent before this one (started by hand, which held its sockets itself): the app serves on; its next deploy restarts it once (journal: action "restart", outageMs) and the agent holds the socket from then on`);
      continue;
    }
    log.child({ app: app?.name }).error({ code: u.error.code, address: u.address },
      `${u.error.message}${u.busy && pid === undefined ? '; if the app itself holds it (an agent started by hand was restarted), its next deploy restarts it once and holds the socket from then on' : ''}`);
  }
  return holder;
}

/** Device, inode, size, mtime and ctime of `file` (not followed), or undefined. */
async function fileSignature(file: string): Promise<string | undefined> {
  const st = await lstat(file, { bigint: true }).catch(() => undefined);
  return st === undefined ? undefined : `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}
