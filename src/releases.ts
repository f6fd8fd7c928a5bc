/**
 * The releases kept in an app's releases folder: which one is current,
 * previous, last known-good or failed, and pruning the old ones (by
 * `relink prune` and on the schedule in the config, "Releases and pruning").
 *
 * Pruning deletes files, so every doubt keeps a file: only names matching
 * the app's releaseNames patterns are ever touched, and a release is kept
 * when the app's links, its last known-good release, its current.conf, or
 * any app's links name one of its files (compared as given and after
 * resolving symlinks).
 */
import type { Dirent, Stats } from 'node:fs';
import { lstat, readdir, realpath, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { releaseFiles, releaseOf, type AgentConfig, type AppConfig } from './config.js';
import { nodeCron, type CronLogger } from './cron.js';
import { readCurrent } from './current.js';
import { fileError, isErrno, RelinkError, RelinkErrors, type ErrorCode } from './errors.js';
import { readHistory, type Outcome } from './history.js';
import { readLinks } from './relink.js';
import { readAppState } from './state.js';

const PRUNE_FAILED: ErrorCode = 'PRUNE_FAILED';
const RELEASES_UNREADABLE: ErrorCode = 'RELEASES_UNREADABLE';

export interface ReleaseFile {
  readonly path: string;
  readonly size: number;
  /** ISO time. */
  readonly mtime: string;
}

export interface ReleaseInfo {
  /** What `{release}` stands for in the app's releaseNames, e.g. "2.0". */
  readonly release: string;
  readonly bin: ReleaseFile;
  /** null when the release's cfg file does not exist (or is not a regular file). */
  readonly cfg: ReleaseFile | null;
  /** The app's links point at this release's bin or cfg. */
  readonly current: boolean;
  /** The most recently deployed release other than the current one (from the history). */
  readonly previous: boolean;
  /** The state file's last known-good release. */
  readonly lastGood: boolean;
  /** Its latest deploy attempt was rolled back or failed. */
  readonly failed: boolean;
  /** Its latest deploy attempt, any outcome. */
  readonly lastDeploy: { readonly time: string; readonly outcome: Outcome } | null;
  /** Why pruning keeps it whatever its age; empty when it may go. */
  readonly protected: readonly string[];
}

export interface PruneOptions {
  /** How many of the newest releases to keep besides the protected ones. Default: the app's `prune.keep`. */
  readonly keep?: number;
  /** List what would be removed and remove nothing. Default: false. */
  readonly dryRun?: boolean;
}

export interface PruneResult {
  /** Files deleted (or, on a dry run, that would be), oldest release first. */
  readonly removed: string[];
  /** Files of the releases kept, oldest release first. */
  readonly kept: string[];
}

/**
 * File names a release name may not look like: editor backups and partial
 * downloads match `app.{release}` too ("app.2.0~", "app.2.0.part") and are
 * not releases. Dotfiles (rsync's and relink's own temp files) are skipped
 * before this is consulted.
 */
const NOT_A_RELEASE = /(~|\.(tmp|temp|part|partial|filepart|crdownload|swp|swx|bak|orig|rej))$/i;

/** Every release in the app's releases folder, oldest first (bin mtime, then name). */
export async function listReleases(config: AgentConfig, app: AppConfig): Promise<ReleaseInfo[]> {
  const found = await scanReleases(app);
  const [protections, history, links] = await Promise.all([
    protectionsFor(config, app),
    readHistory(config.stateDir, app.name),
    readLinks(app.links),
  ]);
  const state = await readAppState(config.stateDir, app.name);

  const byBin = new Map<string, string>();
  for (const f of found) for (const k of f.binKeys) byBin.set(k, f.release);
  const current = new Set<string>();
  const binLink = links.bin === undefined ? [] : await keysOf(links.bin);
  const cfgLink = links.cfg === undefined ? [] : await keysOf(links.cfg);
  for (const f of found) {
    if (binLink.some((k) => f.binKeys.includes(k)) || cfgLink.some((k) => f.cfgKeys.includes(k))) current.add(f.release);
  }
  const lastGood = state?.lastGood?.bin == null ? undefined : byBin.get(state.lastGood.bin);

  // History paths are real paths (the agent resolves current.conf's), so a
  // lookup by bin path and bin real path finds them without a realpath each.
  const lastEntry = new Map<string, { time: string; outcome: Outcome }>();
  let previous: string | undefined;
  for (let i = history.length - 1; i >= 0; i--) {
    const e = history[i]!;
    const r = e.to?.bin == null ? undefined : byBin.get(e.to.bin);
    if (r === undefined) continue;
    if (!lastEntry.has(r)) lastEntry.set(r, { time: e.time, outcome: e.outcome });
    if (previous === undefined && e.outcome === 'deployed' && !current.has(r)) previous = r;
  }

  return found.map((f): ReleaseInfo => {
    const last = lastEntry.get(f.release) ?? null;
    return {
      release: f.release,
      bin: f.bin,
      cfg: f.cfg,
      current: current.has(f.release),
      previous: f.release === previous,
      lastGood: f.release === lastGood,
      failed: last !== null && (last.outcome === 'rolled_back' || last.outcome === 'failed'),
      lastDeploy: last,
      protected: reasonsFor(protections, f),
    };
  });
}

/**
 * Delete every release but the newest `keep` and the protected ones: the cfg
 * first, then the bin, so that a failure half-way leaves a release that the
 * next run finds and retries rather than an orphaned cfg nothing lists.
 */
export async function pruneReleases(config: AgentConfig, app: AppConfig, opts: PruneOptions = {}): Promise<PruneResult> {
  const keep = opts.keep ?? app.prune.keep;
  if (!Number.isInteger(keep) || keep < 1) {
    throw new RelinkError('USAGE', `keep must be a positive integer (found: ${String(keep)})`, { key: 'keep', rule: 'must be a positive integer', found: String(keep) });
  }
  const releases = await listReleases(config, app);
  const newest = new Set(releases.slice(-keep).map((r) => r.release));
  const candidates = releases.filter((r) => !newest.has(r.release) && r.protected.length === 0);
  // cfg first: see above.
  let doomed = candidates.map((r) => ({ release: r.release, files: [...(r.cfg === null ? [] : [r.cfg.path]), r.bin.path] }));
  if (doomed.length > 0 && !opts.dryRun) {
    // A deploy or an upload may have named or replaced one of them since the
    // listing: ask again just before deleting (this narrows the window; it
    // cannot close it).
    const fresh = await protectionsFor(config, app);
    const scanned = new Map((await scanReleases(app)).map((f) => [f.release, f]));
    doomed = candidates.flatMap((r) => {
      const f = scanned.get(r.release);
      if (f === undefined || f.bin.mtime !== r.bin.mtime || reasonsFor(fresh, f).length > 0) return [];
      return [{ release: f.release, files: [...(f.cfg === null ? [] : [f.cfg.path]), f.bin.path] }];
    });
  }
  const gone = new Set(doomed.map((d) => d.release));
  const kept = releases.filter((r) => !gone.has(r.release)).flatMap((r) => [r.bin.path, ...(r.cfg === null ? [] : [r.cfg.path])]);
  if (opts.dryRun) return { removed: doomed.flatMap((d) => d.files), kept };

  const removed: string[] = [];
  const problems: RelinkError[] = [];
  for (const d of doomed) {
    for (const file of d.files) {
      if (path.dirname(file) !== app.releasesDir) {
        // Unreachable by construction (scanReleases joins names onto releasesDir); a pruner must not trust that.
        throw fileError('RELEASE_OUTSIDE', file, undefined, `prune deletes only inside ${app.releasesDir}`, file);
      }
      try {
        await unlink(file);
        removed.push(file);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue;
        problems.push(fileError(PRUNE_FAILED, file, undefined, 'could not delete it', isErrno(err) ? err.code : String(err)));
        break; // a release whose cfg could not go keeps its bin, so the next run retries it
      }
    }
  }
  if (problems.length > 0) throw new RelinkErrors(problems);
  return { removed, kept };
}

export interface PruneSchedule {
  /** Destroy the cron task and wait for a run in progress. The same promise every time. */
  stop(): Promise<void>;
}

/**
 * Prune `app` on its `prune.schedule`; undefined when it has none. Each run
 * logs one line: `removed` and `kept`, or the error. A run still going when
 * the next is due is skipped (noOverlap).
 */
export function schedulePrune(config: AgentConfig, app: AppConfig, log: Logger): PruneSchedule | undefined {
  const expr = app.prune.schedule;
  if (expr === undefined) return undefined;
  routeCronLogs(log);
  let running: Promise<void> = Promise.resolve();
  const run = async () => {
    try {
      const { removed, kept } = await pruneReleases(config, app);
      log.info({ removed, kept, keep: app.prune.keep }, removed.length === 0 ? 'prune: nothing to remove' : `prune: removed ${removed.length} files`);
    } catch (err) {
      log.error({ err, code: err instanceof RelinkError ? err.code : undefined }, 'prune failed');
    }
  };
  const task = nodeCron().schedule(expr, () => {
    running = run();
    return running;
  }, { name: `prune-${app.name}`, noOverlap: true, logger: cronLogger(log) });
  let stopping: Promise<void> | undefined;
  return {
    stop() {
      // A live task holds a timer and so keeps the process alive; destroy() also drops it from node-cron's registry.
      stopping ??= (async () => {
        await task.destroy();
        await running;
      })();
      return stopping;
    },
  };
}

let cronLogsRouted = false;

/**
 * node-cron's default logger writes coloured text with console.*, which
 * would break the agent's one-JSON-object-per-line log. Tasks get their own
 * logger (cronLogger below); this covers node-cron's process-wide messages
 * and goes to the first logger given.
 */
function routeCronLogs(log: Logger): void {
  if (cronLogsRouted) return;
  cronLogsRouted = true;
  nodeCron().setLogger(cronLogger(log));
}

function cronLogger(log: Logger): CronLogger {
  const l = log.child({ component: 'node-cron' });
  const withErr = (level: 'error' | 'debug') => (message: string | Error, err?: Error) => {
    if (message instanceof Error) l[level]({ err: message }, message.message);
    else if (err !== undefined) l[level]({ err }, message);
    else l[level](message);
  };
  return {
    info: (message) => l.info(message),
    warn: (message) => l.warn(message),
    error: withErr('error'),
    debug: withErr('debug'),
  };
}

interface Found {
  readonly release: string;
  readonly bin: ReleaseFile;
  readonly cfg: ReleaseFile | null;
  /** The file's path and, when different, its real path. */
  readonly binKeys: readonly string[];
  readonly cfgKeys: readonly string[];
}

/** Releases on disk, oldest first. */
async function scanReleases(app: AppConfig): Promise<Found[]> {
  let entries: Dirent[];
  try {
    entries = await readdir(app.releasesDir, { withFileTypes: true });
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw fileError(RELEASES_UNREADABLE, app.releasesDir, undefined, 'the releases folder must be readable', isErrno(err) ? err.code : String(err));
  }
  // The agent's own files, should a pattern like "{release}" match them.
  const own = new Set([app.currentFile, app.logFile, app.links.bin, app.links.cfg, ...(app.pidFile === undefined ? [] : [app.pidFile])]);
  const candidates: { release: string; bin: string; cfg: string }[] = [];
  for (const e of entries) {
    // Symlinks and folders are never releases: lstat-level type from readdir.
    if (!e.isFile() || e.name.startsWith('.') || NOT_A_RELEASE.test(e.name)) continue;
    const bin = path.join(app.releasesDir, e.name);
    const release = releaseOf(app, bin);
    if (release === undefined || own.has(bin)) continue;
    candidates.push({ release, bin, cfg: releaseFiles(app, release).cfg });
  }
  // With overlapping patterns ("{release}" and "{release}.cfg") a release's
  // cfg also reads as a release of its own: it is the cfg.
  const cfgs = new Set(candidates.map((c) => c.cfg));
  const found: Found[] = [];
  for (const c of candidates) {
    if (cfgs.has(c.bin)) continue;
    const binStat = await lstatOrUndefined(c.bin);
    if (binStat === undefined || !binStat.isFile()) continue; // gone since readdir
    const cfgStat = c.cfg === c.bin ? undefined : await lstatOrUndefined(c.cfg);
    const cfg = cfgStat?.isFile() ? fileInfo(c.cfg, cfgStat) : null;
    found.push({
      release: c.release,
      bin: fileInfo(c.bin, binStat),
      cfg,
      binKeys: await keysOf(c.bin),
      cfgKeys: cfg === null ? [] : await keysOf(c.cfg),
    });
  }
  found.sort((a, b) => Date.parse(a.bin.mtime) - Date.parse(b.bin.mtime) || (a.release < b.release ? -1 : a.release > b.release ? 1 : 0));
  return found;
}

/** path -> why a file at that path must stay. Keys are paths as given and real paths. */
type Protections = Map<string, string[]>;

async function protectionsFor(config: AgentConfig, app: AppConfig): Promise<Protections> {
  const out: Protections = new Map();
  const add = async (file: string | null | undefined, reason: string) => {
    if (file == null) return;
    for (const k of await keysOf(file)) {
      const reasons = out.get(k) ?? [];
      if (!reasons.includes(reason)) reasons.push(reason);
      out.set(k, reasons);
    }
  };
  // Every app, this one included: releases folders may be shared.
  for (const other of config.apps) {
    const self = other.name === app.name;
    const links = await readLinks(other.links);
    await add(links.bin, self ? 'current' : `linked by app ${other.name}`);
    await add(links.cfg, self ? 'current' : `linked by app ${other.name}`);
    if (self) {
      // What `relink rollback` would go back to must still be there.
      const previous = (await readHistory(config.stateDir, app.name)).reverse()
        .find((e) => e.outcome === 'deployed' && e.to.bin !== null && !(e.to.bin === links.bin && e.to.cfg === links.cfg));
      await add(previous?.to.bin, 'previous (the rollback target)');
      await add(previous?.to.cfg, 'previous (the rollback target)');
    }
    const state = await readAppState(config.stateDir, other.name);
    await add(state?.lastGood?.bin, self ? 'last known-good' : `last known-good of app ${other.name}`);
    await add(state?.lastGood?.cfg, self ? 'last known-good' : `last known-good of app ${other.name}`);
    // An upload about to be deployed: current.conf may already name it.
    const named = await namedByCurrent(other.currentFile);
    for (const f of named.files) await add(f, self ? 'named by current.conf' : `named by app ${other.name}'s current.conf`);
    for (const base of named.homeNames) {
      // "~/x" means the home of current.conf's owner, which needs /etc/passwd
      // (current.ts); keeping every release file of that name errs on the safe side.
      await add(path.join(app.releasesDir, base), self ? 'named by current.conf' : `named by app ${other.name}'s current.conf`);
    }
  }
  return out;
}

/** The files a current.conf names, read leniently: a broken one protects nothing and fails nothing. */
async function namedByCurrent(file: string): Promise<{ files: string[]; homeNames: string[] }> {
  const files: string[] = [];
  const homeNames: string[] = [];
  let raw: unknown;
  try {
    // readCurrent: a FIFO planted as current.conf must not block prune or `relink releases`.
    raw = JSON.parse((await readCurrent(file)).text);
  } catch {
    return { files, homeNames };
  }
  if (raw === null || typeof raw !== 'object') return { files, homeNames };
  for (const key of ['bin.file', 'cfg.file']) {
    const v = (raw as Record<string, unknown>)[key];
    if (typeof v !== 'string' || v === '') continue;
    if (v === '~' || v.startsWith('~/')) homeNames.push(path.basename(v));
    else files.push(path.resolve(path.dirname(file), v));
  }
  return { files, homeNames };
}

function reasonsFor(protections: Protections, f: Found): string[] {
  const out: string[] = [];
  for (const k of [...f.binKeys, ...f.cfgKeys]) for (const r of protections.get(k) ?? []) if (!out.includes(r)) out.push(r);
  return out;
}

/** `file` and its real path (when it resolves and differs). */
async function keysOf(file: string): Promise<string[]> {
  const real = await realpath(file).catch(() => undefined);
  return real === undefined || real === file ? [file] : [file, real];
}

async function lstatOrUndefined(file: string): Promise<Stats | undefined> {
  try {
    return await lstat(file);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw fileError(RELEASES_UNREADABLE, file, undefined, 'must be readable', isErrno(err) ? err.code : String(err));
  }
}

function fileInfo(file: string, st: Stats): ReleaseFile {
  return { path: file, size: st.size, mtime: st.mtime.toISOString() };
}
