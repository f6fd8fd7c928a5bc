/**
 * What `relink deploy` and `relink rollback` share: name a release in
 * current.conf the way a human edit does (temp + rename), so the agent stays
 * the only thing that applies anything, then optionally wait for the agent's
 * verdict on this very content.
 */
import { constants as osConstants } from 'node:os';
import { writeFileAtomic } from '../atomicWrite.js';
import type { AgentConfig, AppConfig } from '../config.js';
import { currentTextFor, hashText, readCurrent, sameContent, validateCurrent, type Release, type ReleaseHashes } from '../current.js';
import { RelinkError } from '../errors.js';
import type { HistoryEntry } from '../history.js';
import { JournalTail } from '../journalTail.js';
import { readLinks } from '../relink.js';
import { preflightRefusal, preflightRelease } from '../preflight.js';
import { readerOf, type Reader } from '../safefs.js';
import { readAppState, runningAgent } from '../state.js';
import type { OnDamage } from '../stateDir.js';
import { resolveRunAs } from '../user.js';
import { strategyMismatch } from '../verify.js';
import { EXIT, releaseLabel, releasesDirsOf, type IO } from './io.js';

export interface RequestOptions {
  readonly wait: boolean;
  readonly timeoutMs: number;
  readonly json: boolean;
  /** The verb, for messages. */
  readonly verb: 'deploy' | 'rollback';
  /** Resolves with the signal's name on SIGINT/SIGTERM: --wait stops waiting (the agent goes on). */
  readonly stop?: Promise<string>;
  /** Told of damaged journal lines and state files skipped while waiting. */
  readonly onDamaged?: OnDamage;
  /** Written into current.conf ("bin.sha256", "cfg.sha256"), so the agent refuses files that do not match. */
  readonly sha256?: ReleaseHashes;
}

const WAIT_POLL_MS = 50;

/** The shell's exit status for a process ended by `signal`: 130 for SIGINT, 143 for SIGTERM. */
export function signalExitCode(signal: string): number {
  return 128 + (osConstants.signals[signal as NodeJS.Signals] ?? 0);
}

export async function requestRelease(config: AgentConfig, app: AppConfig, wanted: Release, opts: RequestOptions, io: IO): Promise<number> {
  const readOpts = { onDamaged: opts.onDamaged };
  const agent = await runningAgent(config.stateDir, readOpts);
  if (agent === undefined) {
    throw new RelinkError('NO_AGENT', `no relink agent is running for ${config.file} (stateDir ${config.stateDir}); start it (systemctl start relink) and try again`,
      { file: config.file, rule: 'an agent must be running to apply the change' });
  }
  const text = currentTextFor(app.currentFile, wanted, opts.sha256);
  const runAs = await resolveRunAs(app);
  const reader = await readerOf(runAs);
  // The agent's own checks, before anything is written: a refusal here
  // leaves current.conf exactly as it was.
  const release = await validateCurrent(app, text, app.currentFile, reader);
  // As history and status name it ("app.2.0", or "2.0/app" in a folder per release).
  const releasesReal = (await releasesDirsOf([app])).get(app.name);
  const short = (file: string) => releaseLabel(file, releasesReal);
  const named = `${short(release.bin)} + ${short(release.cfg)}`;
  const [links, saved] = await Promise.all([readLinks(app.links, app.releasesDir), readAppState(config.stateDir, app.name, readOpts)]);
  const live = links.bin === release.bin && links.cfg === release.cfg && links.dirStale !== true;
  // What the agent would refuse for the strategy (a new binary under "inplace" while the app runs), before anything is written.
  if (saved?.state === 'running') {
    const misfit = await strategyMismatch(app, links.bin, release, sameContent);
    if (misfit !== undefined) throw misfit;
  }
  // Already live only if current.conf says so too: links on X while
  // current.conf names Y (a change the agent has not applied yet, or a typo
  // it refused) means Y is what the agent will make live, not X. Asked only
  // then: validating current.conf walks a release folder's trust check again.
  const named0 = live && saved?.state === 'running' ? await namedByCurrent(app, reader) : undefined;
  if (named0?.bin === release.bin && named0.cfg === release.cfg) {
    return report(io, opts, { outcome: 'unchanged', release, message: `${app.name}: ${named} is already live` }, EXIT.ok);
  }
  // The preflight as the agent runs it (as the app runs), before anything is written.
  let stopped: string | undefined;
  void opts.stop?.then((signal) => { stopped = signal; });
  if (!live) {
    const pre = await preflightRelease(app, release, opts.stop === undefined ? undefined : abortOn(opts.stop));
    if (pre?.aborted === true && stopped !== undefined) {
      return report(io, opts, { outcome: 'interrupted', release, message: `${app.name}: stopped (${stopped}) during the preflight of ${named}; current.conf was not written, nothing changed` }, signalExitCode(stopped));
    }
    if (pre !== undefined && !pre.ok) throw preflightRefusal(app, release, pre);
  }
  // Where the journal ends now: the verdict is among what is appended after.
  const tail = opts.wait ? await JournalTail.open(config.stateDir, app.name, readOpts) : undefined;
  const hash = hashText(text);
  const writtenAt = Date.now();
  // As root, a rewritten current.conf keeps the owner and mode the app's user gave it.
  await writeFileAtomic(app.currentFile, text, { keepOwner: runAs.uid });
  if (tail === undefined) {
    return report(io, opts, { outcome: 'requested', release, message: `${app.name}: wrote ${app.currentFile}; the agent applies it (relink status / relink history)` }, EXIT.ok);
  }
  const deadline = Date.now() + opts.timeoutMs;
  const seen = new Set<string>();
  for (;;) {
    if (stopped !== undefined) {
      return report(io, opts, {
        outcome: 'interrupted', release,
        message: `${app.name}: stopped waiting (${stopped}); the ${opts.verb} of ${named} goes on in the agent: follow it with relink status --app ${app.name} or relink history --app ${app.name} --limit 5`,
      }, signalExitCode(stopped));
    }
    for (const e of await tail.read()) {
      if (e.currentHash === hash) return verdict(io, opts, app, named, e, short);
      if (e.currentHash !== null) seen.add(e.currentHash);
    }
    // A repeated identical refusal may not be journaled again (it is counted
    // in one later entry): the state file's last deploy says it at once.
    const state = await readAppState(config.stateDir, app.name, readOpts);
    const last = state?.lastDeploy;
    const fresh = last != null && Date.parse(last.time) >= writtenAt;
    if (fresh && last.currentHash === hash) return verdict(io, opts, app, named, last, short);
    // What was asked for already ran (current.conf named something else, or
    // something refused): the agent found nothing to do, and said so in the state file.
    const matched = state?.matched;
    if (matched != null && matched.hash === hash && Date.parse(matched.at) >= writtenAt) {
      return report(io, opts, { outcome: 'unchanged', release, message: `${app.name}: ${named} is live (it already ran; current.conf names it again)` }, EXIT.ok);
    }
    if (fresh && last.currentHash !== null) seen.add(last.currentHash);
    const now = await readCurrent(app.currentFile, reader).catch(() => undefined);
    if (now !== undefined && now.hash !== hash && seen.has(now.hash)) {
      throw new RelinkError('SUPERSEDED', `${app.name}: current.conf was changed again before the agent applied this ${opts.verb} of ${named}; the newer content was applied instead (relink history)`,
        { file: app.currentFile, rule: 'one change at a time' });
    }
    if (Date.now() > deadline) {
      throw new RelinkError('WAIT_TIMEOUT', `${app.name}: no verdict from the agent on ${named} within ${opts.timeoutMs / 1000} s; it may still be verifying (relink status)`,
        { file: app.currentFile, found: 'no journal entry yet' });
    }
    await pause(WAIT_POLL_MS, opts.stop);
  }
}

/** `ms`, or less when `stop` resolves first; leaves no timer behind. */
async function pause(ms: number, stop: Promise<string> | undefined): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([new Promise((resolve) => { timer = setTimeout(resolve, ms); }), ...(stop === undefined ? [] : [stop])]);
  clearTimeout(timer);
}

/** `named`: the release that was asked for (a refused one has no `to` in its entry). */
function verdict(io: IO, opts: RequestOptions, app: AppConfig, named: string, e: HistoryEntry, short: (file: string) => string): number {
  if (e.outcome === 'deployed') {
    return report(io, opts, { outcome: e.outcome, entry: e, message: `${app.name}: ${named} deployed and healthy (${e.action}, pid ${e.pidBefore ?? '-'} -> ${e.pidAfter ?? '-'}, ${e.durationMs} ms)` }, EXIT.ok);
  }
  if (e.outcome === 'stopped') {
    return report(io, opts, { outcome: e.outcome, entry: e, message: `${app.name}: links switched to ${named}; the app is stopped (relink stop) and stays stopped: relink start ${app.name} runs it` }, EXIT.ok);
  }
  const back = e.rolledBackTo ? `; rolled back to ${short(e.rolledBackTo.bin)} + ${short(e.rolledBackTo.cfg)}` : '';
  return report(io, opts, { outcome: e.outcome, entry: e, message: `${app.name}: ${named} ${e.outcome.replace('_', ' ')}: ${e.reason ?? ''}${back}` }, EXIT.failed);
}

function report(io: IO, opts: RequestOptions, r: { outcome: string; message: string; release?: Release; entry?: HistoryEntry }, code: number): number {
  if (opts.json) io.stdout(`${JSON.stringify({ outcome: r.outcome, message: r.message, ...(r.entry ? { entry: r.entry } : {}), ...(r.release ? { bin: r.release.bin, cfg: r.release.cfg } : {}) })}\n`);
  else (code === EXIT.ok ? io.stdout : io.stderr)(`${r.message}\n`);
  return code;
}


/** The release current.conf names now, if it can be read and validated (as the app's user reads it). */
async function namedByCurrent(app: AppConfig, reader: Reader): Promise<Release | undefined> {
  try {
    return await validateCurrent(app, (await readCurrent(app.currentFile, reader)).text, app.currentFile, reader);
  } catch {
    return undefined;
  }
}

/** An AbortSignal that fires when `stop` settles (Ctrl-C kills a running preflight). */
function abortOn(stop: Promise<unknown>): AbortSignal {
  const ac = new AbortController();
  void stop.then(() => ac.abort());
  return ac.signal;
}
