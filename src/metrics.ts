/**
 * The agent's Prometheus metrics, with prom-client (the ecosystem's client
 * library: its exposition is what Prometheus and node_exporter parse).
 * Loaded only when the config has "metrics" (src/monitoring.ts imports it
 * lazily): an agent without them never loads prom-client.
 *
 * Every value is set from an event the orchestrator reports as it happens
 * (src/app.ts AppObserver: a verdict, a state transition, a restart), never
 * by re-reading the journal on a scrape. Counters start from zero when the
 * agent starts (a journal holds up to ~27,000 entries per app: too much to
 * read at every start); Prometheus's rate() and increase() take a counter
 * reset in their stride.
 *
 * Names follow Prometheus's conventions: the `relink_` prefix, base units
 * (seconds), `_total` for counters, an `_info` gauge of 1 for the serving
 * release. README "Metrics and status page" says what each one means.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { HistoryEntry, Outcome } from './history.js';
import type { AppStateName } from './state.js';
import { VERSION } from './version.js';

export const OUTCOMES: readonly Outcome[] = ['deployed', 'refused', 'rolled_back', 'failed', 'stopped'];
export const STATES: readonly AppStateName[] = ['running', 'stopped', 'deploying', 'backoff', 'fatal', 'failed', 'error'];

/** Seconds: a deploy takes from a few ms (a refusal) to minutes (a slow probe deadline). */
const BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

/**
 * prom-client samples event loop delay with a timer at this period (ms):
 * its default, 10, would wake the idle agent 100 times a second (it wakes
 * about once a second without metrics: README "Footprint").
 */
const EVENT_LOOP_SAMPLE_MS = 1_000;

/** prom-client default metrics that break Prometheus's naming rules (gauges ending in _total): not exported. */
const MISNAMED_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

type AppLabel = 'app';

/** The serving release as the info metric's labels: the link targets, "" for a missing link. */
interface ReleaseLabels {
  readonly bin: string;
  readonly cfg: string;
}

/**
 * A deploy for relink_last_successful_deploy_timestamp_seconds: deployed,
 * not an answer to relink start | restart, and a change of release (an
 * agent that found its app dead and started the same release again is no
 * deploy: a trial saw the timestamp move on an agent restart).
 */
export function isSuccessfulDeploy(e: HistoryEntry): boolean {
  return e.outcome === 'deployed' && e.command === undefined && (e.from.bin !== e.to.bin || e.from.cfg !== e.to.cfg);
}

export class Metrics {
  /** Everything: the apps' metrics and the agent's own process metrics (/metrics). */
  readonly all = new Registry();
  /**
   * The apps' metrics only, for the textfile: node_exporter exports its own
   * process_* and go_* series, and a textfile holding process_* would clash with them.
   */
  readonly apps = new Registry();
  readonly #deploys: Counter<'app' | 'outcome'>;
  readonly #duration: Histogram<AppLabel>;
  readonly #verdict: Histogram<'app' | 'outcome'>;
  readonly #up: Gauge<AppLabel>;
  readonly #state: Gauge<'app' | 'state'>;
  readonly #crashLoop: Gauge<AppLabel>;
  readonly #restarts: Counter<AppLabel>;
  readonly #release: Gauge<'app' | 'bin' | 'cfg'>;
  readonly #lastSuccess: Gauge<AppLabel>;
  /** The release labels each app's info series carries now (one series per app). */
  readonly #serving = new Map<string, ReleaseLabels>();
  readonly #known = new Set<string>();
  readonly #lastSuccessMs = new Map<string, number>();
  /** Called after every change (the textfile is rewritten). */
  onChange: () => void = () => undefined;

  constructor() {
    const registers = [this.all, this.apps];
    this.#deploys = new Counter({ name: 'relink_deploys_total', help: 'Apply attempts by outcome, one per journal entry (a refusal repeated by a writer loop counted each time), since the agent started.', labelNames: ['app', 'outcome'], registers });
    this.#duration = new Histogram({ name: 'relink_deploy_duration_seconds', help: 'From the pass that read current.conf (or took a relink start/restart) to the verdict, for attempts that started or signalled the app (deployed, rolled back or failed), rollback included.', labelNames: ['app'], buckets: BUCKETS, registers });
    this.#verdict = new Histogram({ name: 'relink_deploy_verdict_seconds', help: 'Time to verdict: from a write of current.conf (its mtime), noticed by the watcher or the periodic re-check, to the journaled outcome.', labelNames: ['app', 'outcome'], buckets: BUCKETS, registers });
    this.#up = new Gauge({ name: 'relink_app_up', help: '1 while a main process of the app runs, else 0.', labelNames: ['app'], registers });
    this.#state = new Gauge({ name: 'relink_app_state', help: 'The app\'s state as relink status shows it: 1 for the current one, 0 for the others.', labelNames: ['app', 'state'], registers });
    this.#crashLoop = new Gauge({ name: 'relink_app_crash_loop', help: '1 while the app keeps crashing: from its first quick failure (a run shorter than supervise.stableMs) through its backoffs and restarts, or given up on (fatal), until a run lasts supervise.stableMs or a deploy or relink start starts afresh; else 0.', labelNames: ['app'], registers });
    this.#restarts = new Counter({ name: 'relink_app_restarts_total', help: 'Restarts by the crash supervision (a crash, or a failed liveness probe), since the agent started.', labelNames: ['app'], registers });
    this.#release = new Gauge({ name: 'relink_release_info', help: 'The release the app\'s links point at (bin and cfg: the link targets, "" when a link is missing); always 1.', labelNames: ['app', 'bin', 'cfg'], registers });
    this.#lastSuccess = new Gauge({ name: 'relink_last_successful_deploy_timestamp_seconds', help: 'When the app\'s last deploy of a change of current.conf was journaled deployed (Unix time); 0 when none is known.', labelNames: ['app'], registers });
    const build = new Gauge({ name: 'relink_build_info', help: 'The running agent\'s version; always 1.', labelNames: ['version'], registers });
    build.set({ version: VERSION }, 1);
    collectDefaultMetrics({ register: this.all, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    // prom-client's three sums of the per-type gauges are gauges named
    // *_total, which promtool's lint rejects (exit 3: "non-counter metrics
    // should not have _total suffix") and which a scrape check would flag.
    // The per-type gauges (nodejs_active_handles{type}, ...) say the same.
    for (const name of MISNAMED_DEFAULTS) this.all.removeSingleMetric(name);
  }

  /** Start exporting `app` (idempotent): every series it will have, at zero, so rate() sees its first increase. */
  addApp(app: string, state: AppStateName, up: boolean): void {
    if (!this.#known.has(app)) {
      this.#known.add(app);
      for (const outcome of OUTCOMES) this.#deploys.inc({ app, outcome }, 0);
      this.#duration.zero({ app });
      for (const outcome of OUTCOMES) this.#verdict.zero({ app, outcome });
      this.#restarts.inc({ app }, 0);
      this.#lastSuccess.set({ app }, 0);
    }
    this.state(app, state, up);
  }

  /** Stop exporting `app` (a config reload let it go): all of its series go. */
  removeApp(app: string): void {
    if (!this.#known.delete(app)) return;
    for (const outcome of OUTCOMES) {
      this.#deploys.remove({ app, outcome });
      this.#verdict.remove({ app, outcome });
    }
    for (const state of STATES) this.#state.remove({ app, state });
    for (const m of [this.#duration, this.#up, this.#crashLoop, this.#restarts, this.#lastSuccess]) m.remove({ app });
    this.#lastSuccessMs.delete(app);
    const serving = this.#serving.get(app);
    if (serving !== undefined) this.#release.remove({ app, ...serving });
    this.#serving.delete(app);
    this.onChange();
  }

  /** A verdict (AppObserver.verdict): counted; timed when it started or signalled the app, or a write started it. */
  verdict(entry: HistoryEntry, writtenAtMs: number | undefined): void {
    const app = entry.app;
    if (!this.#known.has(app)) return;
    this.#deploys.inc({ app, outcome: entry.outcome });
    if (entry.action !== 'none' && entry.action !== 'stop' && entry.outcome !== 'refused' && entry.outcome !== 'stopped') {
      this.#duration.observe({ app }, entry.durationMs / 1000);
    }
    const at = Date.parse(entry.time);
    if (writtenAtMs !== undefined) this.#verdict.observe({ app, outcome: entry.outcome }, Math.max(0, at - writtenAtMs) / 1000);
    if (isSuccessfulDeploy(entry)) this.lastSuccess(app, at);
    this.onChange();
  }

  /** The last successful deploy's time (ms); an older one than known is ignored (the journal's, read at start, may come late). */
  lastSuccess(app: string, atMs: number): void {
    if (!this.#known.has(app) || atMs <= (this.#lastSuccessMs.get(app) ?? 0)) return;
    this.#lastSuccessMs.set(app, atMs);
    this.#lastSuccess.set({ app }, atMs / 1000);
    this.onChange();
  }

  /** A state transition (AppObserver.state). */
  state(app: string, state: AppStateName, up: boolean, crashLoop = state === 'backoff' || state === 'fatal'): void {
    if (!this.#known.has(app)) return;
    for (const s of STATES) this.#state.set({ app, state: s }, s === state ? 1 : 0);
    this.#up.set({ app }, up ? 1 : 0);
    this.#crashLoop.set({ app }, crashLoop ? 1 : 0);
    this.onChange();
  }

  /** A crash restart (AppObserver.restarted). */
  restarted(app: string): void {
    if (!this.#known.has(app)) return;
    this.#restarts.inc({ app });
    this.onChange();
  }

  /** What the app's links point at now (undefined: no link). */
  release(app: string, bin: string | undefined, cfg: string | undefined): void {
    if (!this.#known.has(app)) return;
    const next = { bin: bin ?? '', cfg: cfg ?? '' };
    const prev = this.#serving.get(app);
    if (prev !== undefined && prev.bin === next.bin && prev.cfg === next.cfg) return;
    if (prev !== undefined) this.#release.remove({ app, ...prev });
    this.#release.set({ app, ...next }, 1);
    this.#serving.set(app, next);
    this.onChange();
  }

  /** The apps exported now. */
  get appNames(): readonly string[] {
    return [...this.#known];
  }
}
