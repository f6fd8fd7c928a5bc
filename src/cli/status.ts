import { access, constants as fsConstants, lstat, readFile } from 'node:fs/promises';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { LIMIT_NAMES, releaseOfFile, type AppConfig, type AgentConfig, type LimitName, type LimitValue } from '../config.js';
import { hashText } from '../current.js';
import { newestFirst, type HistoryEntry } from '../history.js';
import { journaled } from '../inflight.js';
import { lower, readLimits } from '../limits.js';
import { folderMissing } from '../applock.js';
import { describeError, isErrno, RelinkError } from '../errors.js';
import { bootTimeMs, describeListener, listenerInodes, portListener, ProcessFinder, sameProcess, socketInodes, startedAtMs, unmanagedCopies, type Discovery, type ProcInfo } from '../proc.js';
import { parseListenAddress } from '../listenfds.js';
import { detachedWriters } from '../logorphan.js';
import { lookupUser, resolveRunAs } from '../user.js';
import { readLinks } from '../relink.js';
import { readAppState, runningAgent, type AgentRecord, type AppProblem, type AppStateName, type InFlight } from '../state.js';
import { appStateFile, describeDamage } from '../stateDir.js';
import { changedSettings, launchSettings } from '../settings.js';
import { ago, EXIT, loadFor, releaseLabel, releasesDirsOf, selectApps, table } from './io.js';
import type { SpecOf } from './commands.js';
import type { Command } from './spec.js';
import { damageWarner } from './warn.js';

export interface AppStatus {
  readonly name: string;
  /**
   * The agent's state, corrected by what /proc shows; `unknown` when this
   * user may read neither the app's state file nor its processes (another
   * app's user, not in its group): "stopped" would be a guess.
   */
  readonly state: AppStateName | 'unknown';
  readonly pid: number | null;
  readonly since: string | null;
  readonly uptimeSeconds: number | null;
  readonly exe: string | null;
  readonly exeDeleted: boolean;
  readonly bin: string | null;
  readonly cfg: string | null;
  /** Where the release folder's link (links.dir) points; present only for an app with one (issue 15). */
  readonly dir?: string | null;
  readonly currentFile: string;
  readonly lastGood: { readonly bin: string; readonly cfg: string } | null;
  readonly restarts: number;
  readonly lastDeploy: HistoryEntry | null;
  /** Why the agent cannot manage the app right now (from its state file, while the agent runs). */
  readonly problem: AppProblem | null;
  /** Who the running main process runs as. */
  readonly user: { readonly name: string | null; readonly uid: number } | null;
  /** The running main process's limits as the kernel has them, with what the config asks for (null: not set). */
  readonly limits: Readonly<Record<LimitName, LimitStatus>> | null;
  /** Processes running the app's binaries as another user: never adopted, never signalled. */
  readonly foreign: ReadonlyArray<{ readonly pid: number; readonly uid: number; readonly exe: string }>;
  /**
   * Copies of the app outside its lineage (src/proc.ts unmanagedCopies): a
   * release binary run as the app's user by hand, or by an agent with
   * another stateDir; `processes` counts the root and those below it.
   * Never signalled.
   */
  readonly unmanaged: ReadonlyArray<{ readonly pid: number; readonly exe: string; readonly processes: number }>;
  readonly warnings: readonly string[];
  /** How the app takes a new release (reload.strategy). */
  readonly strategy: string;
  /** The listen addresses the agent holds for it ("sockets"), in fd order. */
  readonly sockets: readonly string[];
  /** The serving generation and the older ones still draining, each with its live processes. */
  readonly generations: readonly GenerationStatus[];
  /** Stopped on request (relink stop): since when (ISO time); null when not. Supervision leaves it stopped until relink start. */
  readonly held: string | null;
  /** Settings in the config the running generation was not started with ("env.APP_COLOR"): applied by relink restart. */
  readonly restartToApply: readonly string[];
  /**
   * With no agent running: the deploy (or its rollback) the last agent was
   * carrying out when it stopped (state.json `inflight`), neither deployed
   * nor rolled back yet; the next agent finishes it as it starts. `to`: the
   * release it was going to (a deploy's new release; a rollback's good
   * one), `from`: the one before (a rollback's failed release), `cause`: why
   * a rollback began, `since`: when the attempt began (ISO time). Null
   * otherwise.
   */
  readonly interrupted: {
    readonly phase: 'deploy' | 'rollback';
    readonly to: { readonly bin: string | null; readonly cfg: string | null };
    readonly from: { readonly bin: string | null; readonly cfg: string | null };
    readonly cause: string | null;
    /** When the deploy began (ISO time), for a rollback too. */
    readonly since: string;
    /** A rollback: when it began (ISO time); null when the state file does not say (an older agent's). */
    readonly rollbackSince: string | null;
  } | null;
}

/**
 * Where an app's releases go and whose they are, for `relink status --json`:
 * what a fleet tool (ansible/) needs to upload a release, taken from the
 * config through relink rather than repeated in the tool's variables. Not in
 * AppStatus: the status page renders that on every refresh, and the user
 * lookup runs getent.
 */
export interface AppPlaces {
  /** The release the links point at ("2.0" for app.2.0 + cfg.2.0, by releaseNames); null when they name no one release. */
  readonly release: string | null;
  readonly releasesDir: string;
  /** The release's file names in releasesDir, `{release}` standing for e.g. 2.0. */
  readonly releaseNames: { readonly bin: string; readonly cfg: string };
  /** Who the app runs as (null: its user or group does not exist): who should own its uploaded files. */
  readonly runAs: { readonly user: string; readonly uid: number; readonly group: string; readonly gid: number } | null;
}

export async function appPlaces(app: AppConfig, links: { readonly bin: string | null; readonly cfg: string | null }): Promise<AppPlaces> {
  const runAs = await resolveRunAs(app).then((r) => ({ user: r.user, uid: r.uid, group: r.group, gid: r.gid }), () => null);
  const bin = links.bin === null ? undefined : releaseOfFile(app, links.bin, 'bin');
  const cfg = links.cfg === null ? undefined : releaseOfFile(app, links.cfg, 'cfg');
  return {
    release: bin !== undefined && bin === cfg ? bin : null,
    releasesDir: app.releasesDir,
    releaseNames: { bin: app.releaseNames.bin, cfg: app.releaseNames.cfg },
    runAs,
  };
}

export interface GenerationStatus {
  readonly gen: number;
  /**
   * serving; draining (older: told to stop, or to be); new (newer than the
   * serving one: brought up by a deploy and not judged yet; with the agent
   * down, the next agent judges it).
   */
  readonly role: 'serving' | 'draining' | 'new';
  /** When it began draining (ISO time), for a draining one. */
  readonly drainingSince: string | null;
  /**
   * Since when (ISO time) its main is quiesced: under "upgrade" with
   * reload.quiesceSignal, an old master whose workers were stopped while a
   * newer generation is judged (it keeps the socket, accepts nothing, and is
   * resumed if the new generation fails). Null otherwise.
   */
  readonly quiesced: string | null;
  readonly processes: ReadonlyArray<{
    readonly pid: number;
    /** When the process itself started (ISO time, from /proc). */
    readonly startedAt: string;
    /** Its executable; null when this user may not read it. */
    readonly exe: string | null;
    readonly deleted: boolean;
    readonly main: boolean;
  }>;
}

/**
 * What a generation is doing, in words, for `relink status` and the status
 * page: "serving", "serving, quiesced since T (...)", "new, not judged
 * yet", "draining since T". `agentRunning`: false adds who judges a new one.
 */
export function generationState(g: GenerationStatus, agentRunning: boolean): string {
  if (g.role === 'new') return `new, not judged yet${agentRunning ? '' : ' (the agent is not running: the next one judges it)'}`;
  if (g.role === 'draining') return `draining${g.drainingSince === null ? '' : ` since ${g.drainingSince}`}`;
  return g.quiesced === null ? 'serving' : `serving, quiesced since ${g.quiesced} (its workers stopped, it keeps the socket while the new generation is judged; resumed if that one fails)`;
}

export interface LimitStatus {
  readonly soft: LimitValue;
  readonly hard: LimitValue;
  readonly configured: LimitValue | null;
}

/** The 1024 default nofile limit that busy apps run out of (the Supervisord trap in the seeds). */
const OLD_NOFILE_DEFAULT = 1024;

/**
 * One app's status. `agentPid`: the running agent's, whose held sockets
 * count as the app's (an address another program listens on is warned of).
 */
export async function appStatus(config: AgentConfig, app: AppConfig, agentRunning: boolean, now = Date.now(), agentPid?: number): Promise<AppStatus> {
  const damaged: string[] = [];
  const [saved, links] = await Promise.all([readAppState(config.stateDir, app.name, { onDamaged: (d) => damaged.push(describeDamage(d)) }), readLinks(app.links, app.releasesDir)]);
  const verdict = await verdictOf(config.stateDir, app.name, saved?.inflight, agentRunning);
  const finder = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile: app.pidFile, user: app.user, mode: app.reload.mode });
  const known = saved?.pid != null && saved.pidStart != null ? { pid: saved.pid, startTime: saved.pidStart } : undefined;
  finder.restore(saved?.lineage ?? undefined, known);
  let proc: ProcInfo | undefined;
  let discovery: Discovery = { main: undefined, strays: [], all: [], foreign: [] };
  // One app that cannot be looked at (its folder missing, its user unknown)
  // is shown in state "error" with the reason; the other apps are shown as usual.
  let unavailable: AppProblem | undefined;
  try {
    // Said as the agent says it (src/applock.ts), not as the process lookup's ENOENT on release/.
    const missing = await folderMissing(app.dir);
    if (missing !== undefined) throw missing;
    proc = known === undefined ? undefined : await finder.verify(known);
    discovery = await finder.discover(proc ?? known);
  } catch (err) {
    if (!(err instanceof RelinkError) && !isErrno(err)) throw err;
    const d = describeError(err);
    // Since when: the agent's word for the same problem, else now.
    unavailable = { ...d, since: saved?.problem?.code === d.code ? saved.problem.since : new Date(now).toISOString() };
  }
  proc ??= discovery.main;
  // A copy outside the lineage (a master started by hand, or by an agent
  // on another stateDir): its workers, which may run as another user, are
  // said with it, not each as a foreign process.
  const appUid = unavailable === undefined ? await resolveRunAs(app).then((r) => r.uid, () => undefined) : undefined;
  const copies = appUid === undefined ? [] : await unmanagedCopies(app.releasesDir, appUid, new Set([...discovery.all, ...discovery.strays, ...(discovery.leftovers ?? [])].map((p) => p.pid)), agentPid);
  const belowCopies = new Set(copies.flatMap((c) => c.below));
  const unmanaged = copies.map((c) => ({ pid: c.root.pid, exe: c.root.exe, processes: c.below.length + 1 }));
  const foreign = (discovery.foreign ?? []).filter((p) => !belowCopies.has(p.pid)).map((p) => ({ pid: p.pid, uid: p.uid, exe: p.exe }));
  const warnings: string[] = [...damaged, ...foreign.map((p) => `pid ${p.pid} runs ${p.exe} as uid ${p.uid}, not as the app's user: left alone`)];
  for (const u of unmanaged) {
    const more = u.processes > 1 ? `, with ${u.processes - 1} process${u.processes === 2 ? '' : 'es'} below it` : '';
    warnings.push(`pid ${u.pid} runs ${u.exe} as the app's user${more}, but is none of the app's generations: relink neither deploys, supervises nor stops it (started by hand, or by an agent with another stateDir?), and it may hold the app's address; stop it if it is not meant to run`);
  }
  // The linked release deleted under the app (rm -rf of the live folder): it
  // may serve on from what it loaded, but a restart or a crash cannot start it.
  for (const [key, target] of [['bin', links.bin], ['cfg', links.cfg]] as const) {
    if (target !== undefined && (await access(target).then(() => false, (err: unknown) => isErrno(err, 'ENOENT')))) {
      warnings.push(`${key === 'bin' ? app.links.bin : app.links.cfg} links to ${target}, which is gone: a restart could not start the app; deploy or relink rollback to a release that is there`);
    }
  }
  if (proc !== undefined && links.bin !== undefined && proc.exe !== '' && proc.exe !== links.bin && proc.exe.startsWith(path.dirname(links.bin) + path.sep) && app.reload.mode === 'inplace') {
    warnings.push(`pid ${proc.pid} runs ${proc.exe}, not the linked ${links.bin}: an in-place reload (reload.strategy "inplace") reloads the config only; the new binary runs once the app is restarted`);
  }
  if (links.dirStale === true) {
    // Something else than a symlink there (a folder made by hand) is not the agent's to replace: said so, with the way out.
    const st = app.links.dir === undefined ? undefined : await lstat(app.links.dir).catch(() => undefined);
    if (st !== undefined && !st.isSymbolicLink()) warnings.push(`${app.links.dir ?? ''} is a ${st.isDirectory() ? 'folder' : 'file'}, not a symlink: the agent does not replace it (LINK_NOT_SYMLINK); move it away, then the agent links the release's folder there`);
    else warnings.push(`${app.links.dir ?? ''} points at ${links.dir ?? 'nothing'}, not at the folder of the linked release: the agent puts it back on its next re-check (or, when current.conf names a release not applied, at the next deploy or crash restart)`);
  }
  warnings.push(...socketsTaken(app, agentPid, discovery.all));
  if (proc?.deleted === true) warnings.push(`pid ${proc.pid} runs ${proc.exe}, which was replaced or deleted on disk after it started`);
  // A log deleted or renamed under the running app (src/logorphan.ts): /proc tells root and the app's own user, no one else.
  for (const d of detachedWriters(discovery.all.map((p) => p.pid), app.logFile)) {
    warnings.push(`pid ${d.pid} writes its output to ${d.name}: ${app.logFile} was ${d.deleted ? 'deleted' : 'renamed'} while it ran, so relink logs does not show it; relink restart ${app.name} makes the app write to ${app.logFile} again`);
  }
  const limits = proc === undefined ? null : await limitStatus(app, proc.pid, warnings);
  const user = proc === undefined ? null : { name: (await lookupUser(proc.uid))?.name ?? null, uid: proc.uid };
  const sameAsSaved = proc !== undefined && proc.pid === saved?.pid;
  // The agent's word where it still holds, corrected by what /proc shows now.
  let state: AppStateName | 'unknown';
  // What another user cannot see: the state file (EACCES), and so the processes it names.
  const hidden = saved === undefined && proc === undefined && unavailable === undefined
    && (await access(appStateFile(config.stateDir, app.name), fsConstants.R_OK).then(() => false, (err: unknown) => isErrno(err, 'EACCES')));
  if (hidden) {
    state = 'unknown';
    warnings.push(`this user may not read the app's state or see its processes: whether it runs is unknown here (relink status as root, or as a member of the state folder's group for ${app.name}, shows it)`);
  } else if (unavailable !== undefined) state = 'error';
  else if (proc !== undefined) state = agentRunning && saved?.state === 'deploying' ? 'deploying' : 'running';
  else if (saved?.state === 'fatal' || saved?.state === 'failed' || (agentRunning && (saved?.state === 'backoff' || saved?.state === 'deploying' || saved?.state === 'error'))) state = saved.state;
  else state = 'stopped';
  void sameAsSaved;
  // The process's own start time, not when an agent adopted it.
  const boot = bootTimeMs();
  const since = proc === undefined ? null : new Date(startedAtMs(proc, boot)).toISOString();
  const drainingSince = new Map((saved?.draining ?? []).map((d) => [d.gen, d.since]));
  const gens = new Map<number, ProcInfo[]>();
  for (const p of discovery.all) {
    if (p.gen === undefined) continue;
    gens.set(p.gen, [...(gens.get(p.gen) ?? []), p]);
  }
  const quiesced = saved?.quiesced ?? undefined;
  const generations: GenerationStatus[] = [...gens].sort((a, b) => b[0] - a[0]).map(([gen, procs]) => ({
    gen,
    role: gen === finder.serving ? 'serving' : gen > finder.serving ? 'new' : 'draining',
    drainingSince: gen < finder.serving ? drainingSince.get(gen) ?? null : null,
    quiesced: quiesced !== undefined && procs.some((p) => sameProcess(p, quiesced)) ? quiesced.since : null,
    processes: procs.sort((a, b) => a.startTime - b.startTime || a.pid - b.pid).map((p) => ({
      pid: p.pid, startedAt: new Date(startedAtMs(p, boot)).toISOString(), exe: p.exe === '' ? null : p.exe, deleted: p.deleted, main: p.pid === proc?.pid,
    })),
  }));
  return {
    name: app.name,
    state,
    pid: proc?.pid ?? null,
    since,
    uptimeSeconds: since === null ? null : Math.max(0, Math.round((now - Date.parse(since)) / 1000)),
    exe: proc?.exe ?? null,
    exeDeleted: proc?.deleted ?? false,
    bin: links.bin ?? null,
    cfg: links.cfg ?? null,
    ...(app.links.dir === undefined ? {} : { dir: links.dir ?? null }),
    currentFile: app.currentFile,
    lastGood: saved?.lastGood ? { bin: saved.lastGood.bin, cfg: saved.lastGood.cfg } : null,
    restarts: saved?.restarts ?? 0,
    lastDeploy: verdict ?? saved?.lastDeploy ?? null,
    problem: unavailable ?? (agentRunning ? saved?.problem ?? null : null),
    user,
    limits,
    foreign,
    unmanaged,
    warnings,
    strategy: app.reload.strategy,
    sockets: app.sockets,
    generations,
    held: saved?.held?.at ?? null,
    restartToApply: proc === undefined || saved?.settings == null ? [] : changedSettings(saved.settings, launchSettings(app)),
    interrupted: verdict !== undefined || agentRunning || saved?.inflight == null ? null : interruptedOf(saved.inflight),
  };
}

/**
 * With no agent running and a deploy in flight in the state file: the
 * journal's newest entry, when it is that deploy's verdict. The agent
 * journals a verdict before it saves the state without the deploy in
 * flight; killed in between (a trial), the deploy is over, not interrupted.
 * undefined otherwise, or when the journal cannot be read.
 */
async function verdictOf(stateDir: string, app: string, inflight: InFlight | null | undefined, agentRunning: boolean): Promise<HistoryEntry | undefined> {
  if (agentRunning || inflight == null) return undefined;
  try {
    for await (const e of newestFirst(stateDir, app)) return journaled(inflight, e) ? e : undefined;
  } catch {
    // Unreadable (another user's journal): the state file's word stands.
  }
  return undefined;
}

/** A deploy in flight as status tells it: where it was going (a rollback goes back to where the deploy came from). */
function interruptedOf(inf: InFlight): NonNullable<AppStatus['interrupted']> {
  const release = { bin: inf.release.bin, cfg: inf.release.cfg };
  const before = { bin: inf.from.bin, cfg: inf.from.cfg };
  const rollback = inf.phase === 'rollback';
  return {
    phase: inf.phase, to: rollback ? before : release, from: rollback ? release : before,
    cause: inf.cause === null ? null : `${inf.cause.message} [${inf.cause.code}]`, since: new Date(inf.startedMs).toISOString(),
    rollbackSince: rollback && inf.rollbackTick !== undefined ? new Date(startedAtMs({ pid: 0, startTime: inf.rollbackTick })).toISOString() : null,
  };
}

/**
 * Addresses in "sockets" that another program listens on, and neither the
 * agent nor the app: an agent started by hand holds them itself, and
 * restarted, it cannot bind one taken meanwhile; the next deploy that
 * starts a generation fails (SOCKET_UNAVAILABLE). Said here rather than
 * only in the agent's log at its start. Nothing when the agent's
 * descriptors cannot be read (another user: every address would look
 * foreign).
 */
function socketsTaken(app: AppConfig, agentPid: number | undefined, procs: readonly ProcInfo[]): string[] {
  if (agentPid === undefined || app.sockets.length === 0) return [];
  // An agent holding none at all is read too (every address of the app
  // taken when it started): only descriptors this user may not read skip it.
  if (!canReadFds(agentPid)) return [];
  const ours = new Set([...socketInodes(agentPid), ...procs.flatMap((p) => [...socketInodes(p.pid)])]);
  const out: string[] = [];
  for (const address of app.sockets) {
    const a = parseListenAddress(address);
    const listeners = [...listenerInodes(a.kind === 'unix' ? { path: a.path } : { port: a.port })];
    if (listeners.length === 0 || listeners.some((i) => ours.has(i))) continue;
    const holder = a.kind === 'unix' ? undefined : describeListener(portListener(a.port, new Set([agentPid])));
    out.push(`${address} is listened on by ${holder ?? 'another program'}, neither the agent nor the app: a deploy that starts a new generation fails (SOCKET_UNAVAILABLE) until it is freed; the agent binds it at the next deploy after that`);
  }
  return out;
}

/** May this user list the descriptors of `pid` (/proc/PID/fd)? */
function canReadFds(pid: number): boolean {
  try {
    readdirSync(`/proc/${pid}/fd`);
    return true;
  } catch {
    return false;
  }
}

/** What /proc/PID/limits says, next to the config; a warning for each limit below what is configured. */
async function limitStatus(app: AppConfig, pid: number, warnings: string[]): Promise<Record<LimitName, LimitStatus> | null> {
  const real = await readLimits(pid);
  if (real === undefined) return null;
  const out = {} as Record<LimitName, LimitStatus>;
  for (const name of LIMIT_NAMES) {
    const configured = app.limits[name] ?? null;
    const { soft, hard } = real[name];
    out[name] = { soft, hard, configured };
    if (configured !== null && (lower(soft, configured) || lower(hard, configured))) {
      warnings.push(`${name} of pid ${pid} is ${soft} (hard ${hard}), lower than the configured ${configured}: it was started before "limits.${name}" was set, or by something else; restart it to apply`);
    }
  }
  if (app.limits.nofile === undefined && typeof out.nofile.soft === 'number' && out.nofile.soft <= OLD_NOFILE_DEFAULT) {
    warnings.push(`nofile of pid ${pid} is only ${out.nofile.soft}, inherited from whoever started it: set "limits.nofile" (or LimitNOFILE= in the agent's unit)`);
  }
  return out;
}

function render(agent: AgentRecord | undefined, apps: readonly AppStatus[], configFile: string, configChanged = false, releasesDirs: ReadonlyMap<string, string> = new Map()): string {
  let out = agent === undefined
    ? `agent: not running for ${configFile}\n`
    : `agent: running, pid ${agent.pid}, since ${agent.startedAt} (${ago(agent.startedAt)})\n`;
  if (configChanged) out += `config: ${configFile} changed since the agent loaded it: relink reload applies it (what follows is read from the file)\n`;
  for (const a of apps) {
    const proc = a.pid === null ? '' : `, pid ${a.pid}${a.since ? ` since ${a.since} (${ago(a.since)})` : ''}`;
    out += `\n${a.name}: ${a.state}${a.held === null ? '' : ` (relink stop at ${a.held}; relink start ${a.name} starts it)`}${proc}\n`;
    const rows: string[][] = [
      ['  bin', a.bin ?? '(no link)'],
      ['  cfg', a.cfg ?? '(no link)'],
      ...(a.dir === undefined ? [] : [['  dir', a.dir ?? '(no link)']]),
    ];
    if (a.exe !== null && (a.exe !== a.bin || a.exeDeleted)) rows.push(['  running', `${a.exe}${a.exeDeleted ? ' (deleted on disk)' : ''}`]);
    rows.push(['  strategy', `${a.strategy}${a.sockets.length > 0 ? `, sockets ${a.sockets.join(' ')}` : ''}`]);
    for (const g of a.generations) {
      // The new generation of an interrupted rollback was judged: it failed.
      const what = g.role === 'new' && a.interrupted?.phase === 'rollback' ? 'new, failed (the next agent stops it as it finishes the rollback)' : generationState(g, agent !== undefined);
      const procs = g.processes.map((p) => `${p.pid}${p.main ? ' (main)' : ''} started ${p.startedAt}${p.deleted ? ' (deleted on disk)' : ''}`);
      rows.push([`  generation ${g.gen}`, `${what}: ${procs.join('; ')}`]);
    }
    if (a.lastGood !== null && (a.lastGood.bin !== a.bin || a.lastGood.cfg !== a.cfg)) rows.push(['  last good', `${a.lastGood.bin} + ${path.basename(a.lastGood.cfg)}`]);
    if (a.restarts > 0) rows.push(['  restarts', `${a.restarts} since the last deploy`]);
    if (a.user !== null) rows.push(['  user', a.user.name === null ? `uid ${a.user.uid}` : `${a.user.name} (uid ${a.user.uid})`]);
    if (a.limits !== null) {
      for (const name of LIMIT_NAMES) {
        const l = a.limits[name];
        // nofile always (the limit that bites); the others when configured.
        if (name !== 'nofile' && l.configured === null) continue;
        const pair = l.soft === l.hard ? `${l.soft}` : `${l.soft} (hard ${l.hard})`;
        rows.push([`  ${name}`, `${pair}${l.configured === null ? ', not configured' : `, configured ${l.configured}`}`]);
      }
    }
    if (a.restartToApply.length > 0) rows.push(['  restart to apply', `${a.restartToApply.join(', ')} (changed in the config since the running generation started: ${configChanged ? 'relink reload, then ' : ''}relink restart ${a.name})`]);
    if (a.problem !== null) rows.push(['  problem', `${a.problem.message} [${a.problem.code}] since ${a.problem.since}`]);
    if (a.interrupted !== null) {
      const i = a.interrupted;
      const pair = (r: { bin: string | null; cfg: string | null }): string => `${r.bin ?? '(no link)'} + ${r.cfg === null ? '(no link)' : path.basename(r.cfg)}`;
      rows.push(['  interrupted', i.phase === 'deploy'
        ? `the agent stopped in the middle of a deploy of ${pair(i.to)}, begun ${i.since} (${ago(i.since)} ago): neither deployed nor rolled back yet; the next agent judges it as it starts`
        : `the agent stopped in the middle of a rollback from ${pair(i.from)}${i.cause === null ? '' : ` (${i.cause})`} to ${pair(i.to)}, begun ${i.rollbackSince ?? i.since} (${ago(i.rollbackSince ?? i.since)} ago)${i.rollbackSince === null ? ' with the deploy' : `, the deploy at ${i.since}`}: the next agent finishes it as it starts`]);
    }
    for (const w of a.warnings) rows.push(['  warning', w]);
    const d = a.lastDeploy;
    if (d !== null) {
      const to = d.to.bin === null ? '' : ` ${releaseLabel(d.to.bin, releasesDirs.get(a.name))}`;
      const pids = d.pidBefore === d.pidAfter ? `pid ${d.pidAfter ?? '-'}` : `pid ${d.pidBefore ?? '-'} -> ${d.pidAfter ?? '-'}`;
      // An entry answering relink stop | start | restart is not a deploy: named as what it was.
      const label = d.command === undefined ? '  last deploy' : `  last relink ${d.command}`;
      rows.push([label, `${d.time} (${ago(d.time)} ago): ${d.outcome}${to}, ${d.action}, ${pids}, ${d.durationMs} ms`]);
      if (d.reason !== null) rows.push(['  reason', d.reason]);
    }
    out += table(rows);
  }
  return out;
}

export const statusCommand: Command<SpecOf<'status'>> = {
  async run({ values }, io) {
    const config = await loadFor(values.config, io);
    const apps = selectApps(config, values.app);
    const agent = await runningAgent(config.stateDir, { onDamaged: damageWarner(io, 'status') });
    const statuses = await Promise.all(apps.map((a) => appStatus(config, a, agent !== undefined, undefined, agent?.pid)));
    // What is shown comes from the file on disk; the agent runs on what it loaded.
    const onDisk = hashText(await readFile(config.file, 'utf8').catch(() => ''));
    const configChanged = agent?.config !== undefined && agent.config.hash !== onDisk;
    if (values.json) {
      const withPlaces = await Promise.all(statuses.map(async (s, i) => ({ ...s, ...(await appPlaces(apps[i]!, s)) })));
      io.stdout(`${JSON.stringify({ agent: agent ?? null, configChanged, apps: withPlaces }, null, 2)}\n`);
    } else {
      io.stdout(render(agent, statuses, config.file, configChanged, await releasesDirsOf(config.apps)));
    }
    // 1 also when no agent runs: the apps may serve, but nothing deploys, supervises or rolls them back (a check on the exit code must see that).
    return agent !== undefined && statuses.every((s) => s.state === 'running' || s.state === 'deploying') ? EXIT.ok : EXIT.failed;
  },
};
