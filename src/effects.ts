/**
 * Every side effect the per-app orchestrator has, behind one narrow
 * interface: the real one below, a fake in the orchestration tests (as
 * tableflip swaps its `env`). The edges themselves are tested for real.
 */
import { stat } from 'node:fs/promises';
import type { AppConfig } from './config.js';
import { isErrno } from './errors.js';
import { readCurrent, sameContent, validateCurrent, type CurrentSnapshot, type Release } from './current.js';
import { writeFileAtomic } from './atomicWrite.js';
import { firstAnswer, probeOnce, probePort, type ProbeResult } from './health.js';
import { newestFirst, type HistoryEntry } from './history.js';
import type { AppEvent, Notifications } from './notifications.js';
import { launch, type Launched } from './launch.js';
import { preflightRelease, type PreflightResult } from './preflight.js';
import type { CommandResult } from './command.js';
import { runHook, type HookEntry, type HookName } from './hooks.js';
import { logSize, logTail } from './logtail.js';
import { AppOutput } from './appoutput.js';
import { descendantsOf, leavesOf, listeningInodes, portListener, ProcessFinder, readProc, readStat, sendSignal, listenerInodes, sharesListener, socketInodes, stderrFile, ticksNow, unixListening, waitingForWork, type Discovery, type LineageRecord, type ProcIdentity, type ProcInfo } from './proc.js';
import type { SocketHolder, Unheld } from './sockets.js';
import { parseListenAddress } from './listenfds.js';
import { RelinkError } from './errors.js';
import { claimAppFolder, releaseAppFolder, type LockMemo, type LockOwner } from './applock.js';
import { readLinks, relink, type LinkTargets } from './relink.js';
import { readerOf } from './safefs.js';
import { AppStore, type AppState } from './state.js';
import { takeRequests, type TakenRequests } from './requests.js';
import type { OnDamage } from './stateDir.js';
import { resolveRunAs } from './user.js';

export interface Effects {
  readCurrent(): Promise<CurrentSnapshot>;
  /**
   * What current.conf is now, cheaply: device, inode, size, mtime and ctime
   * of what the path resolves to ("missing" when nothing does). Equal to
   * the last one, the file has not been written: the periodic re-check need
   * not read it again.
   */
  currentSignature(): Promise<string>;
  /** Replace current.conf atomically (rollback rewrites it to what runs). */
  writeCurrent(text: string): Promise<void>;
  validate(text: string): Promise<Release>;
  /**
   * Run the app's preflight on `release` as the app runs (its user, limits,
   * environment, folder); undefined when none is configured. `signal` kills it.
   * Throws what planCommand throws (the app may not run as that user).
   */
  preflight(release: Release, signal?: AbortSignal): Promise<PreflightResult | undefined>;
  /**
   * Run the app's deploy hook `name` as the app runs, `entry` on its stdin
   * as JSON (src/hooks.ts runHook); undefined when none is configured.
   * `signal` ends it. Throws HOOK_FAILED when its program does not exist,
   * and what planCommand throws.
   */
  hook(name: HookName, entry: HookEntry, signal?: AbortSignal): Promise<CommandResult | undefined>;
  /** Where the app's links point (with `links.dir`, whether the folder link is stale: relink.ts LinkTargets). */
  readLinks(): Promise<LinkTargets>;
  /** Whether two files hold the same bytes (src/current.ts sameContent); false when either cannot be read. */
  sameContent(a: string, b: string): Promise<boolean>;
  relink(release: Release): Promise<void>;
  /** Cheap re-check of a known process of the app (no process-table scan); with its generation. */
  verify(id: ProcIdentity): Promise<ProcInfo | undefined>;
  /** The app's processes by lineage (src/proc.ts ProcessFinder.discover). */
  discover(preferred?: ProcIdentity): Promise<Discovery>;
  /** Follow the app's processes cheaply (new workers, exited ones): ProcessFinder.refresh; `fresh`: from a walk of /proc made now. */
  refreshLineage(fresh?: boolean): Promise<void>;
  /** Does `old` still hold a listening socket its successor holds too (it may still be the one accepting)? See proc.ts sharesListener. */
  sharesListener(old: ProcIdentity, successor: ProcIdentity): boolean;
  /** A reload signal is about to be sent to `main`: the children it starts from now form a new generation (returned). */
  openGeneration(main: ProcIdentity): number;
  /** Generation `gen`, whose main process is `main`, passed verification and serves; older ones drain. */
  promote(gen: number, main: ProcInfo): void;
  /** A reload that failed: children `main` starts from now belong to its own generation again. */
  closeGeneration(gen: number): void;
  /** A deploy has its verdict (or none is in flight): every opening closed, newer generations' main records dropped (ProcessFinder.settle). */
  settleLineage(): void;
  /** What is known of the app's processes, for the state file (undefined: nothing to keep). */
  lineage(): LineageRecord | undefined;
  /** At start: what the previous agent kept (`legacy`: the main pid a state file from before lineage names). */
  restoreLineage(rec: LineageRecord | undefined, legacy: ProcIdentity | undefined): void;
  /**
   * Start the app from the links: the root of a new generation, which
   * serves. `output()` gives the last lines it wrote since (for a failed
   * start's reason).
   */
  launch(opts?: LaunchOptions): Promise<Launched & { readonly output: () => Promise<string>; readonly gen: number }>;
  /**
   * Bind the app's sockets this agent does not hold yet (after the process
   * that held their address has stopped); what still cannot be held.
   */
  holdSockets(): Promise<Unheld[]>;
  /** Are all of the app's sockets held by the agent (not only by a running generation)? */
  socketsHeld(): boolean;
  /**
   * Readiness "notify": resolves true once READY=1 arrived at or after
   * `sinceMs` (fx.now()), false at `deadlineMs` or when `signal` aborts.
   */
  notifiedReady(sinceMs: number, deadlineMs: number): Promise<boolean>;
  /**
   * When the app first answered its health probe (any HTTP status counts),
   * by fx.now(), trying until `deadlineMs`: a restart's gap ends then.
   * Undefined: not by then, or no probe is configured.
   */
  firstAnswer(deadlineMs: number): Promise<number | undefined>;
  /**
   * Before a start with no sockets held: what else already listens on the
   * health probe's port (proc.ts portListener), the app's own processes
   * left out; undefined when nothing does, or no probe is configured.
   */
  probePortTaken(): { readonly port: number; readonly pid?: number; readonly exe?: string } | undefined;
  /** false if the process is already gone */
  signal(pid: number, signal: NodeJS.Signals): boolean;
  /** Is `pid` waiting for work now (a thread asleep in select, poll, epoll or accept: proc.ts waitingForWork)? Undefined when gone. */
  waitingForWork(pid: number): boolean | undefined;
  /** The parent PID of `pid` now (/proc/PID/stat, whatever state the process is in: an exiting one too); undefined when gone. */
  parentOf(pid: number): number | undefined;
  /**
   * The file `pid` writes its errors to (its fd 2, /proc/PID/fd/2) when that
   * is a file of its own other than the app's log: nginx, daemonized, points
   * its stderr at its error_log. Undefined when it is the app's log, the
   * journal, a pipe or a terminal, or the process is gone or not readable.
   */
  errorFile(pid: number): string | undefined;
  /**
   * The processes below `pid` now, each with its parent (proc.ts
   * descendantsOf: the kernel's children lists, no walk of the whole
   * process table); undefined when the kernel does not list children or
   * `pid` is gone.
   */
  descendants(pid: number): ReadonlyArray<{ readonly pid: number; readonly ppid: number }> | undefined;
  /**
   * One health probe attempt; {ok: true} when no probe is configured. With
   * `judged` (a process of the generation being judged), a connection
   * accepted by an older generation of the app is not counted (`older`).
   * `onlyIfAccepting`: while an older generation shares the socket and no
   * process of the judged one has been seen waiting for connections (in
   * accept, poll, epoll or select: proc.ts waitingForWork), none is made
   * (`notSent`): the older one would take it, and finding out who did costs
   * an `ss` (some 15 ms of kernel CPU on a host with tens of thousands of
   * TIME_WAIT sockets) while the new generation starts on the same cores.
   */
  probe(judged?: ProcInfo, opts?: { readonly onlyIfAccepting?: boolean }): Promise<ProbeResult>;
  record(entry: HistoryEntry): Promise<void>;
  /**
   * Tell the operator's notifiers of an event (a journaled entry, a crash
   * loop given up on: src/notifications.ts). Only queues: never waits for
   * them, never throws.
   */
  notifyOperators(event: AppEvent): void;
  /** The newest entry of the app's journal, or undefined (none, or unreadable). */
  lastRecorded(): Promise<HistoryEntry | undefined>;
  /** Clock ticks since boot now: the unit of a process's start time (ProcIdentity.startTime). */
  ticks(): number;
  saveState(state: AppState): Promise<void>;
  loadState(): Promise<AppState | undefined>;
  now(): number;
  sleep(ms: number): Promise<void>;
  /** Run `fn` once after `ms`; returns a cancel function. Never keeps the process alive by itself. */
  schedule(ms: number, fn: () => void): () => void;
  /** Claim the app's folder for this agent, or re-confirm the claim (src/applock.ts); throws APP_LOCKED. */
  claimApp(): Promise<void>;
  /** Let the app's folder go (the agent stops). */
  releaseApp(): Promise<void>;
  /** Operators' requests waiting for the app (relink stop | start | restart), oldest first, each taken once (src/requests.ts). */
  takeRequests(onDamaged?: OnDamage): Promise<TakenRequests>;
}

export interface LaunchOptions {
  /**
   * The started process serves at once (a start, a restart): true, the
   * default. False: it is a new generation brought up beside the serving
   * one (reload.strategy "socket"), which serves once promoted.
   */
  readonly serve?: boolean;
}

export interface RealEffectsOptions {
  /** The agent's held listening sockets (src/sockets.ts); the app's are passed to every start. */
  readonly sockets?: SocketHolder;
  /** The sd_notify socket the app's starts are given (readiness "notify"). */
  readonly notify?: { readonly path: string; ready(sinceMs: number, deadlineMs: number): Promise<boolean> };
  /** The app's journal and state file (its group, rotation, damage warnings); see AppStore. Default: plain. */
  readonly store?: AppStore;
  /** The agent's config file, named in the lock on the app's folder. */
  readonly configFile?: string;
  /** Where the app's output goes (journald or its log file); default: the host's journald, nothing logged. */
  readonly output?: AppOutput;
  /** The agent's notifiers (src/notifications.ts); default: none. */
  readonly notifications?: Pick<Notifications, 'emit'>;
}

export function realEffects(app: AppConfig, stateDir: string, opts: RealEffectsOptions = {}): Effects {
  const store = opts.store ?? new AppStore(stateDir, app.name);
  const configFile = opts.configFile ?? '';
  const output = opts.output ?? new AppOutput(app, { info: () => undefined, warn: () => undefined, error: () => undefined });
  const finder = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile: app.pidFile, user: app.user, mode: app.reload.mode });
  /** Another program listening on the probe's port, as found before the last start with nothing of the app running (probePortTaken). */
  let portTaken: { readonly port: number; readonly pid?: number; readonly exe?: string } | undefined;
  /** Does a process of generation `gen` (or `pid`, the one judged) listen on any socket, TCP or Unix? */
  const generationListens = (gen: number, pid: number): boolean => {
    const listening = listeningInodes('self');
    const pids = new Set([pid, ...finder.record().members.filter((m) => m.gen >= gen).map((m) => m.pid), ...(descendantsOf(pid) ?? []).map((p) => p.pid)]);
    for (const p of pids) for (const i of socketInodes(p)) if (listening.has(i)) return true;
    return false;
  };
  /** Generations a process of which has been seen waiting for connections: probed at once from then on. */
  const accepting = new Set<number>();
  /** How many sockets a process of a generation being judged held when first looked at (pid -> count). */
  const socketsSeen = new Map<number, number>();
  /**
   * Does generation `gen` take connections: has a process with no child in
   * the tree under `judged` (a worker, or the one process: a master waits
   * for its children as often as for connections) been seen waiting for
   * work? True when the kernel does not say (no children lists).
   */
  const takesConnections = (judged: ProcInfo, gen: number): boolean => {
    for (const g of accepting) if (g < gen) accepting.delete(g);
    if (accepting.has(gen)) return true;
    const below = descendantsOf(judged.pid);
    if (below === undefined) return true;
    const tree = [{ pid: judged.pid, ppid: undefined }, ...below];
    // What was counted of a process no longer in the tree is forgotten (its PID may come back as another).
    for (const pid of socketsSeen.keys()) if (!tree.some((p) => p.pid === pid)) socketsSeen.delete(pid);
    const leaves = leavesOf(tree).map((p) => p.pid);
    // Seen waiting for work; or, a process kept busy by the load (never seen
    // asleep between requests: the plain Python server under wrk), holding
    // more sockets than when first looked at: connections it accepted.
    const busyServing = (pid: number): boolean => {
      const n = socketInodes(pid).size;
      const first = socketsSeen.get(pid);
      if (first === undefined) socketsSeen.set(pid, n);
      return first !== undefined && n > first;
    };
    if (!leaves.some((pid) => waitingForWork(pid) === true || busyServing(pid))) return false;
    accepting.add(gen);
    socketsSeen.clear();
    return true;
  };
  let me: Promise<LockOwner> | undefined;
  const lockMemo: LockMemo = {};
  const lockOwner = (): Promise<LockOwner> => {
    me ??= readProc(process.pid).then((p) => ({ pid: process.pid, startTime: p?.startTime ?? 0, configFile, stateDir, app: app.name }));
    return me;
  };
  return {
    // As the app's user would read it: nothing it may not read reaches a message.
    readCurrent: async () => readCurrent(app.currentFile, await readerOf(await resolveRunAs(app))),
    // stat(2) opens nothing: a FIFO or a link to anything is safe to look at.
    currentSignature: () => stat(app.currentFile, { bigint: true }).then(
      (st) => `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`,
      (err: unknown) => (isErrno(err) ? `error:${err.code ?? ''}` : 'error')),
    // A rollback's rewrite keeps the owner and mode the app's user gave the file.
    writeCurrent: async (text) => writeFileAtomic(app.currentFile, text, { keepOwner: (await resolveRunAs(app)).uid }),
    // And the release files as the app's user must reach them (they are started as it).
    validate: async (text) => validateCurrent(app, text, app.currentFile, await readerOf(await resolveRunAs(app))),
    preflight: (release, signal) => preflightRelease(app, release, signal),
    hook: (name, entry, signal) => runHook(app, name, entry, signal),
    readLinks: () => readLinks(app.links, app.releasesDir),
    sameContent,
    relink: (release) => relink(app.links, release, app.releasesDir),
    verify: (id) => finder.verify(id),
    discover: (preferred) => finder.discover(preferred),
    refreshLineage: async (fresh) => { await finder.refresh({ fresh }); },
    openGeneration: (main) => finder.open(main),
    sharesListener: (old, successor) => sharesListener(old, successor),
    promote: (gen, main) => finder.promote(gen, main),
    closeGeneration: (gen) => finder.close(gen),
    settleLineage: () => finder.settle(),
    // Nothing recorded is saved as nothing (null), not as an empty record.
    lineage: () => (finder.recorded ? finder.record() : undefined),
    restoreLineage: (rec, legacy) => finder.restore(rec, legacy),
    launch: async (launchOpts = {}) => {
      const from = await output.size();
      const since = Date.now();
      const fds = app.sockets.map((address) => {
        const held = opts.sockets?.get(address);
        if (held === undefined) {
          throw new RelinkError('SOCKET_UNAVAILABLE', `the agent does not hold ${address} (see the agent's log for why), so the app cannot be started on it`,
            { key: 'sockets', rule: 'every address in "sockets" must be held by the agent', found: `${address} not held` });
        }
        return held.fd;
      });
      const startedFrom = ticksNow();
      const launched = await launch(app, undefined, fds, { notifySocket: opts.notify?.path, cover: opts.sockets?.fds() ?? [], journal: output.journal ?? null });
      output.started(launched.sink);
      const gen = await finder.launched(launched.pid, launchOpts.serve ?? true, startedFrom);
      void launched.exited.then(({ code, signal }) => finder.exited(launched.pid, code === 0 && signal === null));
      return { ...launched, gen, output: output.tail(launched.sink, from, since, launched.uid) };
    },
    holdSockets: async () => {
      if (opts.sockets === undefined || app.sockets.length === 0) return [];
      const owner = await resolveRunAs(app);
      const unheld = await opts.sockets.bind(app.sockets.map((address) => ({ address, owner: { uid: owner.uid, gid: owner.gid } })), unixListening);
      if (!unheld.some((u) => u.busy)) return unheld;
      // Which busy ones the app's own processes listen on (by socket inode).
      const mine = new Set(finder.record().members.flatMap((m) => [...socketInodes(m.pid)]));
      return unheld.map((u) => {
        if (!u.busy) return u;
        const a = parseListenAddress(u.address);
        const where = a.kind === 'unix' ? { path: a.path } : { port: a.port };
        const listeners = [...listenerInodes(where)];
        return { ...u, own: listeners.length > 0 && listeners.every((i) => mine.has(i)) };
      });
    },
    socketsHeld: () => app.sockets.every((a) => opts.sockets?.get(a) !== undefined),
    // Without a probe there is nothing to measure by: a connection to a held socket succeeds at once (it queues).
    firstAnswer: (deadlineMs) => firstAnswer(app.health.probe, deadlineMs),
    probePortTaken: () => {
      const port = probePort(app.health.probe);
      if (port === undefined) return undefined;
      const taken = portListener(port, new Set(finder.record().members.map((m) => m.pid)));
      // Asked before every start with nothing of the app running: the
      // probes of that start are attributed while this holds.
      portTaken = taken === undefined ? undefined : { port, ...taken };
      return portTaken;
    },
    notifiedReady: (sinceMs, deadlineMs) => (opts.notify === undefined ? Promise.resolve(false) : opts.notify.ready(sinceMs, deadlineMs)),
    signal: sendSignal,
    parentOf: (pid) => readStat(pid)?.ppid,
    errorFile: (pid) => stderrFile(pid, app.logFile),
    descendants: (pid) => descendantsOf(pid),
    waitingForWork: (pid) => waitingForWork(pid),
    probe: async (judged, probeOpts) => {
      if (app.health.probe === undefined) return { ok: true, detail: 'no probe' };
      if (judged?.gen === undefined) return probeOnce(app.health.probe, app.health.probeTimeoutMs);
      const gen = judged.gen;
      // Who accepted the probe's connection: a process of the generation
      // judged, of an older one (still sharing the socket), or someone else.
      const attribute = (inode: string): 'judged' | 'older' | 'unknown' => {
        for (const m of finder.record().members) {
          if (!socketInodes(m.pid).has(inode)) continue;
          // The judged process itself (an in-place reload keeps its PID and
          // is promoted only once judged) and its generation count.
          return m.pid === judged.pid || m.gen >= gen ? 'judged' : 'older';
        }
        return 'unknown';
      };
      // A process of the app the lineage does not know yet: one forked since
      // the last look (an old master replacing a worker every few requests,
      // gunicorn's max_requests: answering with the old release, it passed
      // a release whose workers could not start). The lineage is brought up
      // to date from a fresh /proc walk and asked again.
      const whose = async (inode: string): Promise<'judged' | 'older' | 'unknown'> => {
        const first = attribute(inode);
        if (first !== 'unknown') return first;
        await finder.refresh({ fresh: true });
        return attribute(inode);
      };
      await finder.refresh();
      // Nothing older left to share the socket (the first start, "restart",
      // a handoff whose old generation is gone): any answer is the judged
      // generation's, and the probe needs no attribution (an `ss` per look),
      // unless another program listened on the probe's port when the app
      // was started (probePortTaken).
      const others = finder.record().members.some((m) => m.pid !== judged.pid && m.gen < gen);
      if (others && probeOpts?.onlyIfAccepting === true && !takesConnections(judged, gen)) {
        return { ok: false, detail: `no process of generation ${gen} (pid ${judged.pid} and its children) was seen waiting for connections yet`, notSent: true };
      }
      const squatter = portTaken;
      if (squatter === undefined) return probeOnce(app.health.probe, app.health.probeTimeoutMs, others ? whose : undefined);
      // Accepted by that program: a proxy in front of the app when the
      // generation judged listens somewhere itself; else it answers for an
      // app that could not bind its port (a trial: nginx retrying bind()
      // for 2.5 s while python's http.server passed its probe, and relink
      // start said "started and healthy").
      const r = await probeOnce(app.health.probe, app.health.probeTimeoutMs, async (inode) => {
        const who = await whose(inode);
        return who === 'unknown' && !generationListens(gen, judged.pid) ? 'foreign' : who;
      });
      if (r.ok) portTaken = undefined;
      if (r.foreign !== true) return r;
      const by = squatter.pid === undefined ? 'a process the agent cannot see' : `pid ${squatter.pid}${squatter.exe === undefined ? '' : ` (${squatter.exe})`}`;
      return { ...r, detail: `answered by ${by}, which listened on port ${squatter.port} before the app was started, while generation ${gen} listens on nothing: the app could not bind its port` };
    },
    record: (entry) => store.record(entry),
    notifyOperators: (event) => opts.notifications?.emit(event),
    takeRequests: (onDamaged) => takeRequests(stateDir, app.name, onDamaged, Date.now()),
    lastRecorded: async () => {
      try {
        for await (const e of newestFirst(stateDir, app.name)) return e;
      } catch {
        // unreadable: as if empty
      }
      return undefined;
    },
    ticks: () => ticksNow(),
    saveState: (state) => store.save(state),
    loadState: () => store.load(),
    now: () => Date.now(),
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
    schedule: (ms, fn) => {
      const t = setTimeout(fn, ms);
      t.unref();
      return () => clearTimeout(t);
    },
    claimApp: async () => claimAppFolder(app.dir, await lockOwner(), lockMemo),
    releaseApp: async () => releaseAppFolder(app.dir, await lockOwner()),
  };
}
