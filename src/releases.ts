/**
 * The releases kept in an app's releases folder: which one is current,
 * previous, last known-good or failed, and pruning the old ones (by
 * `relink prune` and on the schedule in the config, "Releases and pruning").
 *
 * Pruning deletes files, so every doubt keeps a file: only names matching
 * the app's releaseNames patterns are ever touched, and a release is kept
 * when the app's links, its previous release, its last known-good release,
 * its current.conf, or any app's links name one of its files (compared as
 * given and after resolving symlinks), when a running process uses it (its
 * executable, or its working folder, lies in it), or when it arrived after
 * the current release and was never deployed (an upload about to go live).
 *
 * "Old" means arrived on this host long ago, not built long ago: `rsync -a`
 * and `scp -p` keep the build's mtime, and a release uploaded a minute ago
 * but built nine days ago was pruned as the oldest right before its deploy
 * (issue 9, item 15). See `arrival`.
 *
 * A release is two files (app.2.0, cfg.2.0) or, with releaseNames such as
 * "{release}/app", a folder holding them and whatever else it ships (issue
 * 15): listed by the folder's arrival, kept when anything protected lies in
 * it, and pruned whole.
 */
import { readlinkSync, type Dirent, type Stats } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { lstat, readdir, realpath, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { releaseFiles, releaseOf, releasesAreFolders, type AgentConfig, type AppConfig } from './config.js';
import { nodeCron, type CronLogger } from './cron.js';
import { readCurrent } from './current.js';
import { fileError, isErrno, RelinkError, RelinkErrors, type ErrorCode } from './errors.js';
import type { Release } from './current.js';
import { newestFirst, type HistoryEntry, type Outcome, type ReadOptions } from './history.js';
import { procTable } from './proc.js';
import { readLinks, releaseFolderOf } from './relink.js';
import { removeTree, withFolder } from './safefs.js';
import { releaseTree } from './trust.js';
import { readAppState, type AppState } from './state.js';

const PRUNE_FAILED: ErrorCode = 'PRUNE_FAILED';
const RELEASES_UNREADABLE: ErrorCode = 'RELEASES_UNREADABLE';

export interface ReleaseFile {
  readonly path: string;
  readonly size: number;
  /** Last modification (ISO time): for an rsync'd or scp'd file, when it was built, not when it came. */
  readonly mtime: string;
  /** When the file arrived on this host (ISO time): see `arrivedBy`. Releases are ordered by this. */
  readonly arrived: string;
  /** "birth": the file's birth time (statx), where the filesystem records it; else "ctime", its last status change (an upload's own utime() sets it). */
  readonly arrivedBy: 'birth' | 'ctime';
}

export interface ReleaseInfo {
  /** What `{release}` stands for in the app's releaseNames, e.g. "2.0". */
  readonly release: string;
  readonly bin: ReleaseFile;
  /** null when the release's cfg file does not exist (or is not a regular file). */
  readonly cfg: ReleaseFile | null;
  /**
   * The release's folder in the folders layout (releaseNames "{release}/app",
   * issue 15); null in the files layout. Its arrival orders the releases:
   * an upload with `rsync --link-dest` (or `cp -al`) gives an unchanged
   * binary the old release's inode, and so its old birth time.
   */
  readonly folder: ReleaseFile | null;
  /** The app's links point at this release's bin or cfg (or, with links.dir, its folder). */
  readonly current: boolean;
  /** What `relink rollback` goes back to (see `previousRelease`). */
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

export interface PruneOptions extends ReadOptions {
  /** How many of the newest releases to keep besides the protected ones. Default: the app's `prune.keep`. */
  readonly keep?: number;
  /** List what would be removed and remove nothing. Default: false. */
  readonly dryRun?: boolean;
}

export interface PruneResult {
  /** Files deleted (or, on a dry run, that would be), oldest release first: in the folders layout, release folders, each with all it holds. */
  readonly removed: string[];
  /** Files (folders) of the releases kept, oldest release first. */
  readonly kept: string[];
  /**
   * Folders an interrupted prune had renamed away (`.relink-pruning.*`, the
   * folders layout) and that this run removed (on a dry run: would remove).
   */
  readonly leftovers: string[];
}

/**
 * File names a release name may not look like: editor backups and partial
 * downloads match `app.{release}` too ("app.2.0~", "app.2.0.part") and are
 * not releases. Dotfiles (rsync's and relink's own temp files) are skipped
 * before this is consulted.
 */
const NOT_A_RELEASE = /(~|\.(tmp|temp|part|partial|filepart|crdownload|swp|swx|bak|orig|rej))$/i;

/** What runs now, as far as "the previous release" is concerned. */
export interface LiveRelease {
  readonly bin: string | undefined;
  readonly cfg: string | undefined;
}

/**
 * What runs now: the app's links; a missing link is stood in for by the
 * state file's last known-good release (so that with the links gone a
 * rollback still skips what ran last).
 */
export function liveRelease(links: { bin: string | undefined; cfg: string | undefined }, state: AppState | undefined): LiveRelease {
  return { bin: links.bin ?? state?.lastGood?.bin, cfg: links.cfg ?? state?.lastGood?.cfg };
}

/** The live release's paths as given and resolved, for comparing with journal paths. */
interface LiveKeys {
  readonly bin: readonly string[];
  readonly cfg: readonly string[];
}

async function liveKeys(live: LiveRelease): Promise<LiveKeys> {
  return { bin: live.bin === undefined ? [] : await keysOf(live.bin), cfg: live.cfg === undefined ? [] : await keysOf(live.cfg) };
}

/**
 * THE definition of "the previous release" (rollback, releases and prune all
 * use it): the newest `deployed` journal entry whose release (bin and cfg)
 * is not the live one (`liveRelease`).
 */
function namesPrevious(e: HistoryEntry, live: LiveKeys): e is HistoryEntry & { to: Release } {
  return e.outcome === 'deployed' && e.to.bin !== null && e.to.cfg !== null && !(live.bin.includes(e.to.bin) && live.cfg.includes(e.to.cfg));
}

/**
 * The release `relink rollback` goes back to, `relink releases` flags as
 * previous and prune keeps: see `namesPrevious`. Reads the journal from its
 * end and stops at the first match. undefined when the journal has none.
 * Throws STATE_UNREADABLE when the journal exists but may not be read.
 */
export async function previousRelease(stateDir: string, app: AppConfig, opts: ReadOptions = {}): Promise<Release | undefined> {
  const [links, state] = await Promise.all([readLinks(app.links), readAppState(stateDir, app.name, opts)]);
  const live = await liveKeys(liveRelease(links, state));
  for await (const e of newestFirst(stateDir, app.name, opts)) {
    if (namesPrevious(e, live)) return { bin: e.to.bin, cfg: e.to.cfg };
  }
  return undefined;
}

/** Every release in the app's releases folder, oldest first (by arrival, then mtime, then name). */
export async function listReleases(config: AgentConfig, app: AppConfig, opts: ReadOptions = {}): Promise<ReleaseInfo[]> {
  const s = await survey(config, app, opts);
  return s.found.map((f): ReleaseInfo => {
    const last = s.lastEntry.get(f.release) ?? null;
    return {
      release: f.release,
      bin: f.bin,
      cfg: f.cfg,
      folder: f.folder,
      current: s.current.has(f.release),
      previous: f.release === s.previous,
      lastGood: f.release === s.lastGood,
      failed: last !== null && (last.outcome === 'rolled_back' || last.outcome === 'failed'),
      lastDeploy: last,
      protected: s.reasons(f),
    };
  });
}

/** A fresh look at the releases folder, the links, the state file and the journal. */
interface Survey {
  readonly found: Found[];
  readonly current: ReadonlySet<string>;
  readonly previous: string | undefined;
  readonly lastGood: string | undefined;
  readonly lastEntry: ReadonlyMap<string, { time: string; outcome: Outcome }>;
  /** Why pruning must keep `f`; empty when it may go. */
  reasons(f: Found): string[];
}

const ARRIVED_AFTER = 'arrived after the current release, never deployed';

async function survey(config: AgentConfig, app: AppConfig, opts: ReadOptions): Promise<Survey> {
  const found = await scanReleases(app);
  const [links, state] = await Promise.all([readLinks(app.links, app.releasesDir), readAppState(config.stateDir, app.name, opts)]);
  const live = await liveKeys(liveRelease(links, state));

  const byBin = new Map<string, string>();
  for (const f of found) for (const k of f.binKeys) byBin.set(k, f.release);
  const current = new Set<string>();
  const binLink = links.bin === undefined ? [] : await keysOf(links.bin);
  const cfgLink = links.cfg === undefined ? [] : await keysOf(links.cfg);
  const dirLink = links.dir === undefined ? [] : await keysOf(links.dir);
  const isLive = (f: Found, bin: readonly string[], cfg: readonly string[]) => bin.some((k) => f.binKeys.includes(k)) || cfg.some((k) => f.cfgKeys.includes(k));
  for (const f of found) if (isLive(f, binLink, cfgLink) || dirLink.some((k) => f.folderKeys.includes(k))) current.add(f.release);
  const lastGood = state?.lastGood?.bin == null ? undefined : byBin.get(state.lastGood.bin);

  // Newest first, and only as far as needed: every release's latest attempt
  // and the previous release. A release's attempts come after it arrived, so
  // once the entries are older than every release still without one, no
  // older entry can name one of them: the scan stops there (at 200,000
  // entries it would otherwise parse them all; BENCHMARKS.md section 5).
  // Where arrival is a ctime, a chmod after a deploy can hide that deploy:
  // the release then looks never deployed, which only keeps it longer.
  // Journal paths are real paths (the agent resolves current.conf's), so a
  // lookup by bin path and bin real path finds them.
  const lastEntry = new Map<string, { time: string; outcome: Outcome }>();
  const oldestPending = (): number => Math.min(...found.filter((f) => !lastEntry.has(f.release)).map(arrivedMs));
  let pendingSince = oldestPending();
  let previous: Release | undefined;
  for await (const e of newestFirst(config.stateDir, app.name, opts)) {
    if (previous === undefined && namesPrevious(e, live)) previous = { bin: e.to.bin, cfg: e.to.cfg };
    const r = e.to?.bin == null ? undefined : byBin.get(e.to.bin);
    if (r !== undefined && !lastEntry.has(r)) {
      lastEntry.set(r, { time: e.time, outcome: e.outcome });
      pendingSince = oldestPending();
    }
    if (previous !== undefined && (lastEntry.size === found.length || Date.parse(e.time) < pendingSince)) break;
  }

  const protections = await protectionsFor(config, app, previous, opts);
  // An upload about to be deployed: it came after what runs and the journal
  // has never seen it. (What runs: the links, else the last known-good.)
  const liveFound = found.filter((f) => isLive(f, live.bin, live.cfg));
  const liveArrived = liveFound.length === 0 ? undefined : Math.min(...liveFound.map(arrivedMs));
  const upcoming = new Set(found.filter((f) => liveArrived !== undefined && !liveFound.includes(f) && arrivedMs(f) > liveArrived && !lastEntry.has(f.release)).map((f) => f.release));
  return {
    found,
    current,
    previous: previous === undefined ? undefined : byBin.get(previous.bin),
    lastGood,
    lastEntry,
    reasons: (f) => [...reasonsFor(protections, f), ...(upcoming.has(f.release) ? [ARRIVED_AFTER] : [])],
  };
}

/**
 * Delete every release but the newest `keep` and the protected ones. In the
 * files layout the cfg first, then the bin, so that a failure half-way
 * leaves a release that the next run finds and retries rather than an
 * orphaned cfg nothing lists. In the folders layout the release's folder
 * with everything in it (src/safefs.ts removeTree: nothing is followed out
 * of it), the bin last, so a folder half-removed is still listed and retried.
 */
export async function pruneReleases(config: AgentConfig, app: AppConfig, opts: PruneOptions = {}): Promise<PruneResult> {
  const keep = opts.keep ?? app.prune.keep;
  if (!Number.isInteger(keep) || keep < 1) {
    throw new RelinkError('USAGE', `keep must be a positive integer (found: ${String(keep)})`, { key: 'keep', rule: 'must be a positive integer', found: String(keep) });
  }
  const releases = await listReleases(config, app, opts);
  const newest = new Set(releases.slice(-keep).map((r) => r.release));
  const candidates = releases.filter((r) => !newest.has(r.release) && r.protected.length === 0);
  let doomed = candidates.map((r) => ({ release: r.release, files: filesOf(r), folder: r.folder !== null }));
  if (doomed.length > 0 && !opts.dryRun) {
    // A deploy or an upload may have named or replaced one of them since the
    // listing: ask again just before deleting (this narrows the window; it
    // cannot close it).
    const fresh = await survey(config, app, opts);
    const scanned = new Map(fresh.found.map((f) => [f.release, f]));
    doomed = candidates.flatMap((r) => {
      const f = scanned.get(r.release);
      // In the folders layout the folder's arrival too: a folder put in its
      // place with rsync --link-dest keeps an unchanged binary's inode.
      if (f === undefined || f.bin.mtime !== r.bin.mtime || f.bin.arrived !== r.bin.arrived || f.folder?.arrived !== r.folder?.arrived || fresh.reasons(f).length > 0) return [];
      return [{ release: f.release, files: filesOf(f), folder: f.folder !== null }];
    });
  }
  const gone = new Set(doomed.map((d) => d.release));
  const kept = releases.filter((r) => !gone.has(r.release)).flatMap((r) => (r.folder !== null ? [r.folder.path] : [r.bin.path, ...(r.cfg === null ? [] : [r.cfg.path])]));
  const leftoverNames = releasesAreFolders(app) ? (await readdir(app.releasesDir).catch(() => [] as string[])).filter((n) => n.startsWith(PRUNING)) : [];
  if (opts.dryRun) return { removed: doomed.flatMap((d) => d.files), kept, leftovers: leftoverNames.map((n) => path.join(app.releasesDir, n)) };

  const removed: string[] = [];
  const problems: RelinkError[] = [];
  const leftovers = await removeLeftovers(app.releasesDir, leftoverNames, problems);
  for (const d of doomed) {
    for (const file of d.files) {
      if (path.dirname(file) !== app.releasesDir) {
        // Unreachable by construction (scanReleases joins names onto releasesDir); a pruner must not trust that.
        throw fileError('RELEASE_OUTSIDE', file, undefined, `prune deletes only inside ${app.releasesDir}`, file);
      }
      try {
        if (d.folder) await removeFolder(app.releasesDir, path.basename(file));
        else await unlink(file);
        removed.push(file);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue;
        problems.push(fileError(PRUNE_FAILED, file, undefined, 'could not delete it', err instanceof RelinkError ? err.message : isErrno(err) ? err.code : String(err)));
        break; // a release whose cfg could not go keeps its bin, so the next run retries it
      }
    }
  }
  if (problems.length > 0) throw new RelinkErrors(problems);
  return { removed, kept, leftovers };
}

/**
 * Remove the release folder NAME of `releasesDir`: renamed first to a
 * dotname nothing lists (so no half-removed release is ever listed or
 * deployed by name), then removed with all it holds. The releases folder is
 * the app's user's: it is reached without following a link planted on its
 * path, and everything happens inside it (src/safefs.ts removeTree).
 */
async function removeFolder(releasesDir: string, name: string): Promise<void> {
  await withFolder(releasesDir, async (dir) => {
    const away = `${PRUNING}${name}.${randomBytes(4).toString('hex')}`;
    await rename(dir.at(name), dir.at(away));
    await removeTree(dir, away);
  });
}

/** What an earlier prune renamed away (`names`) and could not finish removing: removed now; returns the paths removed; a failure is one more problem. */
async function removeLeftovers(releasesDir: string, names: readonly string[], problems: RelinkError[]): Promise<string[]> {
  const done: string[] = [];
  for (const name of names) {
    await withFolder(releasesDir, (dir) => removeTree(dir, name)).then(() => { done.push(path.join(releasesDir, name)); }, (err: unknown) => {
      if (!isErrno(err, 'ENOENT')) problems.push(fileError(PRUNE_FAILED, path.join(releasesDir, name), undefined, 'could not delete it', err instanceof RelinkError ? err.message : isErrno(err) ? err.code : String(err)));
    });
  }
  return done;
}

/** What pruning a release deletes, in order: its folder, or its cfg then its bin (see pruneReleases). */
function filesOf(r: { readonly bin: ReleaseFile; readonly cfg: ReleaseFile | null; readonly folder: ReleaseFile | null }): string[] {
  if (r.folder !== null) return [r.folder.path];
  return [...(r.cfg === null ? [] : [r.cfg.path]), r.bin.path];
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
      const { removed, kept, leftovers } = await pruneReleases(config, app);
      const also = leftovers.length === 0 ? '' : `; removed ${leftovers.length} folder${leftovers.length === 1 ? '' : 's'} an interrupted prune left`;
      log.info({ removed, kept, keep: app.prune.keep, ...(leftovers.length === 0 ? {} : { leftovers }) }, (removed.length === 0 ? 'prune: nothing to remove' : `prune: removed ${removed.length} files`) + also);
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
  /** The release's folder (folders layout), else null. */
  readonly folder: ReleaseFile | null;
  /** The file's path and, when different, its real path. */
  readonly binKeys: readonly string[];
  readonly cfgKeys: readonly string[];
  readonly folderKeys: readonly string[];
}

/** When a release arrived: its folder's arrival in the folders layout, else its binary's. */
const arrivedMs = (f: { readonly bin: ReleaseFile; readonly folder: ReleaseFile | null }): number => Date.parse((f.folder ?? f.bin).arrived);

/** Prefix of a release folder being pruned: renamed away first, so no half-removed release is ever listed or deployed. */
const PRUNING = '.relink-pruning.';

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
  const own = new Set([app.currentFile, app.logFile, app.links.bin, app.links.cfg, ...(app.links.dir === undefined ? [] : [app.links.dir]), ...(app.pidFile === undefined ? [] : [app.pidFile])]);
  const folders = releasesAreFolders(app);
  const candidates: { release: string; bin: string; cfg: string; folder: string | undefined }[] = [];
  for (const e of entries) {
    // Symlinks are never releases: lstat-level type from readdir. In the
    // folders layout a release is a folder, in the files layout a file.
    if ((folders ? !e.isDirectory() : !e.isFile()) || e.name.startsWith('.') || NOT_A_RELEASE.test(e.name)) continue;
    const entry = path.join(app.releasesDir, e.name);
    const release = releaseOf(app, e.name);
    // app.log.1 .. (src/applog.ts) too, should the log lie in the releases folder.
    if (release === undefined || own.has(entry) || /^\d{1,3}$/.test(entry.startsWith(`${app.logFile}.`) ? entry.slice(app.logFile.length + 1) : '')) continue;
    const files = releaseFiles(app, release);
    candidates.push({ release, ...files, folder: folders ? entry : undefined });
  }
  // With overlapping patterns ("{release}" and "{release}.cfg") a release's
  // cfg also reads as a release of its own: it is the cfg.
  const cfgs = new Set(candidates.map((c) => c.cfg));
  const found: Found[] = [];
  for (const c of candidates) {
    if (c.folder === undefined && cfgs.has(c.bin)) continue;
    const binStat = await lstatOrUndefined(c.bin);
    if (binStat === undefined || !binStat.isFile()) continue; // gone since readdir
    const cfgStat = c.cfg === c.bin ? undefined : await lstatOrUndefined(c.cfg);
    const cfg = cfgStat?.isFile() ? fileInfo(c.cfg, cfgStat) : null;
    const folderStat = c.folder === undefined ? undefined : await lstatOrUndefined(c.folder);
    if (c.folder !== undefined && folderStat?.isDirectory() !== true) continue;
    found.push({
      release: c.release,
      bin: fileInfo(c.bin, binStat),
      cfg,
      folder: c.folder === undefined || folderStat === undefined ? null : fileInfo(c.folder, folderStat),
      binKeys: await keysOf(c.bin),
      cfgKeys: cfg === null ? [] : await keysOf(c.cfg),
      folderKeys: c.folder === undefined ? [] : await keysOf(c.folder),
    });
  }
  found.sort((a, b) => arrivedMs(a) - arrivedMs(b) || Date.parse(a.bin.mtime) - Date.parse(b.bin.mtime) ||
    (a.release < b.release ? -1 : a.release > b.release ? 1 : 0));
  return found;
}

/** path -> why a file at that path must stay. Keys are paths as given and real paths. */
type Protections = Map<string, string[]>;

async function protectionsFor(config: AgentConfig, app: AppConfig, previous: Release | undefined, opts: ReadOptions): Promise<Protections> {
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
    const links = await readLinks(other.links, other.releasesDir);
    await add(links.bin, self ? 'current' : `linked by app ${other.name}`);
    await add(links.cfg, self ? 'current' : `linked by app ${other.name}`);
    await add(links.dir, self ? 'current' : `linked by app ${other.name}`);
    // What the live release folder links to elsewhere (9.0/shared -> ../8.0/static):
    // pruning it would break the live release (a trial's prune did).
    if (links.dir !== undefined) {
      for (const target of await linkTargets(links.dir)) await add(target, self ? 'linked from the current release' : `linked from app ${other.name}'s current release`);
    }
    // Files the agent writes, should one lie in a release folder (pruned whole).
    for (const own of [other.currentFile, other.logFile, ...(other.pidFile === undefined ? [] : [other.pidFile])]) {
      await add(own, self ? 'holds the app\'s own files' : `holds app ${other.name}'s own files`);
    }
    // A kept release's folder: what it links to elsewhere stays too, or a
    // rollback to it would land on missing assets (a trial's prune removed
    // 0.03, which the previous release's static/shared linked into, and the
    // rollback was "healthy").
    const releasesReal = await realpath(other.releasesDir).catch(() => undefined);
    const keepWithLinks = async (release: { readonly bin: string; readonly cfg: string } | null | undefined, reason: string, linkedReason = `linked from ${reason}`) => {
      if (release == null) return;
      await add(release.bin, reason);
      await add(release.cfg, reason);
      const [bin, cfg] = await Promise.all([release.bin, release.cfg].map((f) => realpath(f).catch(() => f)));
      const folder = releasesReal === undefined ? undefined : releaseFolderOf(releasesReal, { bin: bin!, cfg: cfg! });
      if (folder === undefined) return;
      for (const target of await linkTargets(folder)) await add(target, linkedReason);
    };
    if (self) {
      // What `relink rollback` would go back to must still be there.
      await keepWithLinks(previous, 'previous (the rollback target)');
    }
    const state = await readAppState(config.stateDir, other.name, opts);
    await keepWithLinks(state?.lastGood, self ? 'last known-good' : `last known-good of app ${other.name}`);
    // An upload about to be deployed: current.conf may already name it.
    const named = await namedByCurrent(other.currentFile);
    const byCurrent = self ? 'named by current.conf' : `named by app ${other.name}'s current.conf`;
    if (named.files.length === 2) await keepWithLinks({ bin: named.files[0]!, cfg: named.files[1]! }, byCurrent, self ? 'linked from the release current.conf names' : `linked from the release app ${other.name}'s current.conf names`);
    else for (const f of named.files) await add(f, byCurrent);
    for (const base of named.homeNames) {
      // "~/x" means the home of current.conf's owner, which needs /etc/passwd
      // (current.ts); keeping every release file of that name errs on the safe side.
      await add(path.join(app.releasesDir, base), byCurrent);
    }
  }
  // What running processes use from the releases folders: a process that
  // runs in place keeps its executable across deploys ("inplace" takes a new
  // bin.file of the same bytes), and a generation started from its own
  // folder works in it while it drains (a trial's prune removed the folder
  // an in-place nginx still ran from; nginx served on from deleted files).
  const roots = (await Promise.all(config.apps.map((a) => realpath(a.releasesDir).catch(() => undefined)))).filter((d): d is string => d !== undefined);
  for (const [file, pids] of inUseUnder(roots)) {
    await add(file, `in use by pid ${pids.slice(0, 3).join(', ')}${pids.length > 3 ? ` and ${pids.length - 3} more` : ''}`);
  }
  return out;
}

/**
 * Files and folders under `roots` (real paths) that running processes use:
 * each one's executable (/proc/PID/exe, " (deleted)" dropped: the folder
 * that held it is still in use) and working folder (/proc/PID/cwd), with
 * the pids using it. Processes this one may not look into (another user's,
 * to a prune not run as root) are not seen.
 */
function inUseUnder(roots: readonly string[]): Map<string, number[]> {
  const out = new Map<string, number[]>();
  if (roots.length === 0) return out;
  const under = (p: string) => roots.some((r) => p === r || p.startsWith(r + path.sep));
  for (const row of procTable()) {
    const used = new Set<string>();
    if (row.path !== undefined) used.add(row.path.replace(/ \(deleted\)$/, ''));
    try {
      used.add(readlinkSync(`/proc/${row.pid}/cwd`));
    } catch {
      // gone, a kernel thread, or not ours to read
    }
    for (const p of used) {
      if (!under(p)) continue;
      const pids = out.get(p) ?? [];
      pids.push(row.pid);
      out.set(p, pids);
    }
  }
  return out;
}

/**
 * What the symlinks inside the live release folder `folder` lead to outside
 * it (real paths: folders, and the files of folders they lead to are inside
 * those), walked as the trust check walks it (src/trust.ts releaseTree:
 * loops end, dangling links lead nowhere); what could be walked when a
 * folder cannot be.
 */
async function linkTargets(folder: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const step of releaseTree(folder, true)) {
      if ((step.kind === 'folder' && step.linked) || step.kind === 'target') out.push(step.path);
    }
  } catch {
    // The folder itself is gone or unreadable: nothing more to protect.
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

/**
 * Why `f` must stay: a protected path is one of its files or, in the folders
 * layout, its folder or anything in it (pruning removes all of it: another
 * app's link to a file in there, the folder link, a log kept inside).
 */
function reasonsFor(protections: Protections, f: Found): string[] {
  const out: string[] = [];
  const add = (reasons: readonly string[] | undefined) => { for (const r of reasons ?? []) if (!out.includes(r)) out.push(r); };
  for (const k of [...f.binKeys, ...f.cfgKeys]) add(protections.get(k));
  if (f.folderKeys.length > 0) {
    for (const [k, reasons] of protections) if (f.folderKeys.some((d) => k === d || k.startsWith(d + path.sep))) add(reasons);
  }
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
  const a = arrival(st);
  return { path: file, size: st.size, mtime: st.mtime.toISOString(), arrived: new Date(a.ms).toISOString(), arrivedBy: a.by };
}

/**
 * When a file arrived on this host. Its birth time where the filesystem
 * records one (ext4, xfs, btrfs, tmpfs: Node fills `birthtime` from statx;
 * it is 0 where there is none); else its ctime, the last change of its
 * inode, which an upload's own utime() call (rsync -a, scp -p) sets to the
 * time of the upload, as do a chmod or chown after it. Never the mtime,
 * which rsync -a and scp -p copy from the build.
 */
export function arrival(st: Stats): { ms: number; by: 'birth' | 'ctime' } {
  return st.birthtimeMs > 0 ? { ms: st.birthtimeMs, by: 'birth' } : { ms: st.ctimeMs, by: 'ctime' };
}
