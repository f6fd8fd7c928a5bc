/**
 * What the config's "metrics" turns on (issue 13): the Prometheus metrics
 * (src/metrics.ts) served at /metrics and the status page (src/statusPage.ts)
 * at / on `metrics.listen`, and the same metrics written to
 * `metrics.textfile` for node_exporter's textfile collector. The agent
 * imports this module only when "metrics" is set, so an agent without it
 * loads neither prom-client nor the HTTP server.
 *
 * Nothing here can stop the agent or an app: an address that cannot be
 * bound, a textfile folder that is refused or a write that fails is logged
 * (once per problem) and the agent goes on without it. The listener is
 * read-only: GET and HEAD only (anything else is 405), and nothing it
 * serves changes anything.
 */
import http from 'node:http';
import { chmod, lstat, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { AppObserver } from './app.js';
import { writeFileAtomic } from './atomicWrite.js';
import { appStatus, type AppStatus } from './cli/status.js';
import type { AgentConfig, AppConfig, MetricsConfig } from './config.js';
import { describeError, isErrno } from './errors.js';
import { newestEntries, newestFirst, type HistoryEntry } from './history.js';
import { parseListenAddress } from './listenfds.js';
import { isSuccessfulDeploy, Metrics } from './metrics.js';
import { unixListening } from './proc.js';
import { readLinks } from './relink.js';
import type { AppStateName } from './state.js';
import { renderStatusPage } from './statusPage.js';
import { checkFolderForRoot, type Writer } from './trust.js';
import { resolveRunAs } from './user.js';
import { VERSION } from './version.js';

/** The textfile is rewritten at least this often (ms), so node_exporter's node_textfile_mtime_seconds shows an agent that stopped. */
export const TEXTFILE_EVERY_MS = 15_000;

/** The status page reloads itself this often (s). */
export const PAGE_REFRESH_S = 10;

/** Journal entries on the status page. */
export const RECENT_ENTRIES = 20;

/** At start, the last successful deploy is looked for among at most this many of an app's newest journal entries. */
const LAST_SUCCESS_SCAN = 1_000;

/** A request's headers and body must arrive within this (ms): a client that trickles them holds nothing for long. */
const REQUEST_TIMEOUT_MS = 10_000;
/**
 * Connections the listener holds at once; more are closed as they come.
 * Any local user may connect to a loopback address: without a cap, idle
 * connections used up the agent's file descriptors (a trial held 1,100:
 * EMFILE in supervision and spawns, a verdict 17 s late). The page and the
 * scrapes need a handful.
 */
const MAX_CONNECTIONS = 64;

export interface MonitoringOptions {
  readonly log: Logger;
  /** The config in force (a reload replaces it): the apps the page shows, the state folder. */
  readonly config: () => AgentConfig;
  /** When the agent started (ISO time), for the page. */
  readonly startedAt: string;
}

/** An app as the agent runs it now: its config and its orchestrator's state. */
export interface MonitoredApp {
  readonly app: AppConfig;
  readonly state: AppStateName;
  readonly up: boolean;
}

export class Monitoring {
  readonly metrics = new Metrics();
  readonly #log: Logger;
  readonly #opts: MonitoringOptions;
  #settings: MetricsConfig;
  #server: http.Server | undefined;
  #textfile: Textfile | undefined;
  readonly #apps = new Map<string, AppConfig>();
  /** Link reads in flight per app, and whether another is due after it. */
  readonly #linkReads = new Map<string, { again: boolean }>();
  /** A page being made: concurrent requests share it. */
  #page: Promise<string> | undefined;
  #closed = false;
  /** Why `metrics.listen` is not served now (its bind failed), for relink reload to say; undefined when served or not asked for. */
  listenProblem: string | undefined;

  /** Why `metrics.textfile` is not written now (its folder refused, a write failed), for relink reload to say; undefined when it is. */
  get textfileProblem(): string | undefined {
    return this.#textfile?.problem;
  }

  private constructor(settings: MetricsConfig, opts: MonitoringOptions) {
    this.#settings = settings;
    this.#opts = opts;
    this.#log = opts.log;
    this.metrics.onChange = () => this.#textfile?.changed();
  }

  /**
   * Export `apps`, then listen on `settings.listen` and write
   * `settings.textfile` (each when set). Never throws for either: a failure
   * is logged and the rest goes on.
   */
  static async start(settings: MetricsConfig, apps: readonly MonitoredApp[], opts: MonitoringOptions): Promise<Monitoring> {
    const m = new Monitoring(settings, opts);
    for (const a of apps) m.addApp(a);
    await m.#apply(settings);
    return m;
  }

  /** The observer calls of app `name` (src/app.ts AppObserver). */
  verdict(name: string, entry: HistoryEntry, writtenAtMs: number | undefined): void {
    // What the links now point at, as the verdict says (in the same textfile
    // write as the count); the links are read after it all the same (a
    // failed deploy may have left them either way).
    const serving = entry.outcome === 'rolled_back' ? entry.rolledBackTo : entry.outcome === 'deployed' || entry.outcome === 'stopped' ? entry.to : undefined;
    if (serving != null && serving.bin !== null && serving.cfg !== null && this.#apps.has(name)) this.metrics.release(name, serving.bin, serving.cfg);
    this.metrics.verdict(entry, writtenAtMs);
    this.#readLinks(name);
  }

  state(name: string, state: AppStateName, up: boolean, crashLoop: boolean): void {
    this.metrics.state(name, state, up, crashLoop);
    this.#readLinks(name);
  }

  restarted(name: string): void {
    this.metrics.restarted(name);
  }

  /** An observer for one app that forwards to this, for as long as this is the agent's monitoring. */
  observer(name: string): AppObserver {
    return { verdict: (e, w) => this.verdict(name, e, w), state: (s, up, loop) => this.state(name, s, up, loop), restarted: () => this.restarted(name) };
  }

  /**
   * Export an app (at agent start, or added or changed by a reload: its
   * counters go on). Its serving release is read from its links, and its
   * last successful deploy from the newest entries of its journal.
   */
  addApp(a: MonitoredApp): void {
    const name = a.app.name;
    const fresh = !this.#apps.has(name);
    this.#apps.set(name, a.app);
    this.metrics.addApp(name, a.state, a.up);
    this.#readLinks(name);
    if (fresh) void this.#lastSuccessFromJournal(name);
  }

  /** Stop exporting an app a reload let go. */
  removeApp(name: string): void {
    this.#apps.delete(name);
    this.metrics.removeApp(name);
  }

  /**
   * A config reload: listen and write where "metrics" now says. A textfile
   * no longer named is deleted (node_exporter would export its last values
   * forever); an address that could not be bound is tried again, changed or
   * not (the reload is how the log says to retry once it is free).
   */
  async reconfigure(settings: MetricsConfig): Promise<void> {
    await this.#apply(settings);
  }

  async #apply(settings: MetricsConfig): Promise<void> {
    const prev = this.#settings;
    this.#settings = settings;
    const first = this.#server === undefined && this.#textfile === undefined;
    if (first || prev.listen !== settings.listen || (this.#server === undefined && settings.listen !== undefined)) {
      this.listenProblem = undefined;
      if (settings.listen === undefined) await this.#closeServer();
      else await this.#moveTo(settings.listen, this.#server === undefined ? undefined : prev.listen);
    }
    if (first || prev.textfile !== settings.textfile) {
      await this.#textfile?.close({ remove: true });
      this.#textfile = undefined;
      if (settings.textfile !== undefined) {
        this.#textfile = new Textfile(settings.textfile, this.metrics, this.#log, () => this.#writers(), this.#opts.config().file);
        // Its folder checked before this returns: a refusal is what relink reload says (textfileProblem).
        await this.#textfile.start();
      }
    }
  }

  /**
   * Stop listening and writing; waits for a write in flight. The same
   * promise every time. `removeTextfile` (metrics turned off by a reload):
   * the textfile is deleted too; an agent that stops leaves it (its mtime,
   * node_textfile_mtime_seconds, shows the agent is gone).
   */
  #closing: Promise<void> | undefined;
  close(opts: { removeTextfile?: boolean } = {}): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      await this.#closeServer();
      await this.#textfile?.close({ remove: opts.removeTextfile === true });
    })();
    return this.#closing;
  }

  /** The apps' users, who may not write the textfile's folder. */
  async #writers(): Promise<Writer[]> {
    const apps = [...this.#apps.values()];
    const runAs = await Promise.all(apps.map((a) => resolveRunAs(a).catch(() => undefined)));
    return apps.flatMap((a, i) => {
      const r = runAs[i];
      return r === undefined ? [] : [{ app: a.name, user: r.user, uid: r.uid, gid: r.gid }];
    });
  }

  /** The info metric follows the links: read after each event, one read per app at a time. */
  #readLinks(name: string): void {
    const app = this.#apps.get(name);
    if (app === undefined || this.#closed) return;
    const inFlight = this.#linkReads.get(name);
    if (inFlight !== undefined) {
      inFlight.again = true;
      return;
    }
    const run = { again: false };
    this.#linkReads.set(name, run);
    void (async () => {
      do {
        run.again = false;
        const links = await readLinks(app.links).catch(() => undefined);
        if (links !== undefined && this.#apps.get(name) === app) this.metrics.release(name, links.bin, links.cfg);
      } while (run.again && !this.#closed);
      this.#linkReads.delete(name);
    })();
  }

  async #lastSuccessFromJournal(name: string): Promise<void> {
    let n = 0;
    try {
      for await (const e of newestFirst(this.#opts.config().stateDir, name)) {
        if (isSuccessfulDeploy(e)) {
          this.metrics.lastSuccess(name, Date.parse(e.time));
          return;
        }
        if (++n >= LAST_SUCCESS_SCAN) return;
      }
    } catch (err) {
      this.#log.child({ app: name }).debug({ err: describeError(err).message }, 'the journal could not be read for the last successful deploy');
    }
  }

  /**
   * Serve on `address` instead of `serving` (the address served now, if
   * any): the new one is bound first, and the old one closed only once it
   * is (a reload with an address that cannot be bound turned the metrics
   * off; a trial did). When the new address needs the old one's port, the
   * old one is closed first and bound again if the new one still fails.
   */
  async #moveTo(address: string, serving: string | undefined): Promise<void> {
    let bound = await this.#bind(address);
    if ('problem' in bound && bound.inUse && this.#server !== undefined) {
      await this.#closeServer();
      bound = await this.#bind(address);
      if ('problem' in bound && serving !== undefined) {
        const back = await this.#bind(serving);
        if ('server' in back) this.#server = back.server;
      }
    } else if ('server' in bound) {
      await this.#closeServer();
    }
    if ('server' in bound) {
      this.#server = bound.server;
      this.#log.info({ address }, `serving the metrics at ${address} /metrics and the status page at /`);
      return;
    }
    const still = this.#server !== undefined && serving !== undefined ? `still serving on ${serving}` : 'the agent and the apps run on without them';
    this.listenProblem = `cannot serve the metrics and the status page on ${address} (${bound.problem}): ${still}; fix "metrics.listen" (or free the address) and relink reload`;
    this.#log.error({ code: 'METRICS_UNAVAILABLE', address, err: bound.problem }, this.listenProblem);
  }

  /** A listening server on `address`, or why not (never throws); `inUse`: another socket holds the address. */
  async #bind(address: string): Promise<{ server: http.Server } | { problem: string; inUse: boolean }> {
    const a = parseListenAddress(address);
    // Requests' headers and bodies are timed out (REQUEST_TIMEOUT_MS) by a
    // sweep of every connection this often (Node's default: 30 s, which let
    // a client trickling one header line every 3 s hold a connection for
    // 40 s, and 64 of them blind the scrapes).
    const server = http.createServer({ connectionsCheckingInterval: 1_000 }, (req, res) => void this.#handle(req, res));
    server.requestTimeout = REQUEST_TIMEOUT_MS;
    server.headersTimeout = REQUEST_TIMEOUT_MS;
    server.maxConnections = MAX_CONNECTIONS;
    server.keepAliveTimeout = 5_000;
    try {
      if (a.kind === 'unix') {
        // Root creates, clears and chmods this path: an app's user who can
        // write its folder could swap in a symlink and have root chmod any
        // file 0666 (a trial did, 11 times in 12). The textfile's rule.
        const problem = await checkFolderForRoot(path.dirname(a.path), await this.#writers(), this.#opts.config().file, 'metrics.listen');
        if (problem !== undefined) throw problem;
        await clearStaleSocket(a.path);
      }
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(a.kind === 'unix' ? { path: a.path } : { host: a.host, port: a.port, ipv6Only: a.family === 6 }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      // The folder decides who may connect (README: a folder only the reader can enter).
      if (a.kind === 'unix') await chmod(a.path, 0o666);
    } catch (err) {
      server.close();
      return { problem: describeError(err).message, inUse: isErrno(err, 'EADDRINUSE') };
    }
    server.on('error', (err) => this.#log.error({ code: 'METRICS_UNAVAILABLE', address, err: err.message }, `the metrics listener failed: ${err.message}`));
    return { server };
  }

  async #closeServer(): Promise<void> {
    const server = this.#server;
    if (server === undefined) return;
    this.#server = undefined;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const send = (status: number, type: string, body: string, extra: Record<string, string> = {}): void => {
      res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff', ...extra });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        send(405, 'text/plain; charset=utf-8', 'read-only: GET or HEAD only\n', { Allow: 'GET, HEAD' });
        return;
      }
      const where = new URL(req.url ?? '/', 'http://relink').pathname;
      if (where === '/metrics') {
        send(200, this.metrics.all.contentType, await this.metrics.all.metrics());
      } else if (where === '/') {
        // No script may run on the page, whatever it holds (defence in depth: everything is escaped).
        send(200, 'text/html; charset=utf-8', await this.#statusPage(), { 'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'" });
      } else {
        send(404, 'text/plain; charset=utf-8', 'not found: / (the status page) or /metrics\n');
      }
    } catch (err) {
      const why = describeError(err).message;
      this.#log.error({ code: 'INTERNAL', err: why }, `the status page or metrics could not be made: ${why}`);
      if (!res.headersSent) send(500, 'text/plain; charset=utf-8', 'internal error (see the agent\'s log)\n');
      else res.destroy();
    }
  }

  #statusPage(): Promise<string> {
    this.#page ??= this.#makePage().finally(() => {
      this.#page = undefined;
    });
    return this.#page;
  }

  async #makePage(): Promise<string> {
    const config = this.#opts.config();
    const now = Date.now();
    const apps = await Promise.all(config.apps.map((a) => appStatus(config, a, true, now, process.pid).catch((err: unknown) => unavailable(a, err, now))));
    const recent = await newestEntries(config.stateDir, config.apps.map((a) => a.name), RECENT_ENTRIES);
    return renderStatusPage({
      agent: { pid: process.pid, version: VERSION, startedAt: this.#opts.startedAt, config: config.file },
      apps,
      recent: recent.entries,
      unreadable: recent.unreadable.map((u) => ({ app: u.app, message: u.error.message })),
      now,
      refreshSeconds: PAGE_REFRESH_S,
    });
  }
}

/** An app whose status could not be made (an unexpected error): shown in state "error" with why. */
function unavailable(app: AppConfig, err: unknown, now: number): AppStatus {
  return {
    name: app.name, state: 'error', pid: null, since: null, uptimeSeconds: null, exe: null, exeDeleted: false, bin: null, cfg: null,
    currentFile: app.currentFile, lastGood: null, restarts: 0, lastDeploy: null, problem: { ...describeError(err), since: new Date(now).toISOString() },
    user: null, limits: null, foreign: [], unmanaged: [], warnings: [], strategy: app.reload.strategy, sockets: app.sockets, generations: [], held: null, restartToApply: [], interrupted: null,
  };
}

/** A unix socket path an earlier agent left: removed when it is a socket nobody listens on; anything else fails the bind (EADDRINUSE). */
async function clearStaleSocket(p: string): Promise<void> {
  const st = await lstat(p).catch(() => undefined);
  if (st?.isSocket() === true && !unixListening(p)) await unlink(p).catch(() => undefined);
}

/**
 * The metrics in node_exporter's textfile format, written atomically (a
 * temp file in the same folder, renamed over: node_exporter reads only
 * *.prom files, and never a half-written one) after every change (writes
 * coalesce: one at a time, the next with whatever changed meanwhile) and
 * every TEXTFILE_EVERY_MS. Its folder is checked first (checkFolderForRoot),
 * and again on every periodic write: nothing is written while it is refused.
 */
class Textfile {
  readonly #file: string;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #writers: () => Promise<Writer[]>;
  readonly #configFile: string;
  #trusted = false;
  #checked: Promise<void> | undefined;
  #writing: Promise<void> | undefined;
  #again = false;
  #timer: NodeJS.Timeout | undefined;
  /** The last problem logged (a refusal or a write error), said once until it is over. */
  #problem: string | undefined;
  #closed = false;
  /** This writer has written the file (so closing with `remove` deletes it). */
  #wrote = false;

  constructor(file: string, metrics: Metrics, log: Logger, writers: () => Promise<Writer[]>, configFile: string) {
    this.#file = file;
    this.#metrics = metrics;
    this.#log = log.child({ textfile: file });
    this.#writers = writers;
    this.#configFile = configFile;
  }

  /** Start writing; resolves once the folder has been checked the first time. */
  async start(): Promise<void> {
    this.#tick();
    await this.#checked;
  }

  /** The problem said last (a refused folder, a failed write), while it lasts. */
  get problem(): string | undefined {
    return this.#problem === undefined ? undefined : `metrics textfile ${this.#file}: ${this.#problem}`;
  }

  /** Something changed: write (now, or right after the write in flight). */
  changed(): void {
    if (this.#closed || this.#checked === undefined) return;
    if (this.#writing !== undefined) {
      this.#again = true;
      return;
    }
    this.#writing = this.#drain();
  }

  /** Write no more (a write in flight ends first); `remove`: then delete the file, if this wrote it. */
  async close(opts: { remove: boolean }): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#checked;
    await this.#writing;
    if (!opts.remove || !this.#wrote) return;
    try {
      await unlink(this.#file);
      this.#log.info('metrics textfile deleted (no longer in the config)');
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) this.#log.warn({ err: describeError(err).message }, 'the metrics textfile no longer in the config could not be deleted');
    }
  }

  #tick(): void {
    if (this.#closed) return;
    this.#checked = this.#check().then(() => this.changed());
    this.#timer = setTimeout(() => this.#tick(), TEXTFILE_EVERY_MS);
    this.#timer.unref();
  }

  async #check(): Promise<void> {
    const problem = await checkFolderForRoot(path.dirname(this.#file), await this.#writers(), this.#configFile, 'metrics.textfile')
      .catch((err: unknown) => describeError(err));
    this.#trusted = problem === undefined;
    if (problem !== undefined) this.#say(problem.code, problem.message, 'the textfile is not written');
  }

  async #drain(): Promise<void> {
    // changed() assigns `this.#writing = this.#drain()`: a body that ran to
    // its end without awaiting would clear #writing before that assignment,
    // and no write would ever start again.
    await null;
    try {
      do {
        this.#again = false;
        // Closed (a reload named another file) after this drain was asked for: not one more write.
        if (!this.#trusted || this.#closed) continue;
        try {
          // No fsync: it would contend with the deploy's own state writes, and
          // the file is rewritten at least every TEXTFILE_EVERY_MS anyway.
          await writeFileAtomic(this.#file, await this.#metrics.apps.metrics(), { mode: 0o644, sync: false });
          this.#wrote = true;
          if (this.#problem !== undefined) this.#log.info({ was: this.#problem }, 'the metrics textfile is written again');
          this.#problem = undefined;
        } catch (err) {
          const d = describeError(err);
          this.#say(d.code, d.message, 'tried again on the next change');
        }
      } while (this.#again && !this.#closed);
    } finally {
      this.#writing = undefined;
    }
  }

  #say(code: string, message: string, then: string): void {
    if (this.#problem === message) return;
    this.#problem = message;
    this.#log.error({ code }, `metrics textfile: ${message}; ${then} (the listener, the agent and the apps are not affected)`);
  }
}
