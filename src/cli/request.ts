/**
 * What `relink deploy` and `relink rollback` share: name a release in
 * current.conf the way a human edit does (temp + rename), so the agent stays
 * the only thing that applies anything, then optionally wait for the agent's
 * verdict on this very content.
 */
import path from 'node:path';
import { writeFileAtomic } from '../atomicWrite.js';
import type { AgentConfig, AppConfig } from '../config.js';
import { currentTextFor, hashText, readCurrent, validateCurrent, type Release } from '../current.js';
import { RelinkError } from '../errors.js';
import { readHistory, type HistoryEntry } from '../history.js';
import { readLinks } from '../relink.js';
import { readerOf } from '../safefs.js';
import { readAppState, runningAgent } from '../state.js';
import { resolveRunAs } from '../user.js';
import { EXIT, UsageError, type IO } from './io.js';

export interface RequestOptions {
  readonly wait: boolean;
  readonly timeoutMs: number;
  readonly json: boolean;
  /** The verb, for messages. */
  readonly verb: 'deploy' | 'rollback';
}

const WAIT_POLL_MS = 50;

export async function requestRelease(config: AgentConfig, app: AppConfig, wanted: Release, opts: RequestOptions, io: IO): Promise<number> {
  const agent = await runningAgent(config.stateDir);
  if (agent === undefined) {
    throw new RelinkError('NO_AGENT', `no relink agent is running for ${config.file} (stateDir ${config.stateDir}); start it (systemctl start relink) and try again`,
      { file: config.file, rule: 'an agent must be running to apply the change' });
  }
  const text = currentTextFor(app.releasesDir, wanted);
  // The agent's own checks, before anything is written: a refusal here
  // leaves current.conf exactly as it was.
  const release = await validateCurrent(app, text);
  const [links, saved] = await Promise.all([readLinks(app.links), readAppState(config.stateDir, app.name)]);
  if (links.bin === release.bin && links.cfg === release.cfg && saved?.state === 'running') {
    return report(io, opts, { outcome: 'unchanged', release, message: `${app.name}: ${path.basename(release.bin)} + ${path.basename(release.cfg)} is already live` }, EXIT.ok);
  }
  const before = (await readHistory(config.stateDir, app.name)).length;
  const hash = hashText(text);
  await writeFileAtomic(app.currentFile, text);
  if (!opts.wait) {
    return report(io, opts, { outcome: 'requested', release, message: `${app.name}: wrote ${app.currentFile}; the agent applies it (relink status / relink history)` }, EXIT.ok);
  }
  const deadline = Date.now() + opts.timeoutMs;
  const reader = await readerOf(await resolveRunAs(app));
  for (;;) {
    const entries = (await readHistory(config.stateDir, app.name)).slice(before);
    const mine = entries.find((e) => e.currentHash === hash);
    if (mine !== undefined) return verdict(io, opts, app, mine);
    const now = await readCurrent(app.currentFile, reader).catch(() => undefined);
    if (now !== undefined && now.hash !== hash && entries.some((e) => e.currentHash === now.hash)) {
      throw new RelinkError('SUPERSEDED', `${app.name}: current.conf was changed again before the agent applied this ${opts.verb}; the newer content was applied instead (relink history)`,
        { file: app.currentFile, rule: 'one change at a time' });
    }
    if (Date.now() > deadline) {
      throw new RelinkError('WAIT_TIMEOUT', `${app.name}: no verdict from the agent within ${opts.timeoutMs / 1000} s; it may still be verifying (relink status)`,
        { file: app.currentFile, found: 'no journal entry yet' });
    }
    await new Promise((r) => setTimeout(r, WAIT_POLL_MS));
  }
}

function verdict(io: IO, opts: RequestOptions, app: AppConfig, e: HistoryEntry): number {
  const to = `${path.basename(e.to.bin ?? '?')} + ${path.basename(e.to.cfg ?? '?')}`;
  if (e.outcome === 'deployed') {
    return report(io, opts, { outcome: e.outcome, entry: e, message: `${app.name}: ${to} deployed and healthy (${e.action}, pid ${e.pidBefore ?? '-'} -> ${e.pidAfter ?? '-'}, ${e.durationMs} ms)` }, EXIT.ok);
  }
  const back = e.rolledBackTo ? `; rolled back to ${path.basename(e.rolledBackTo.bin)} + ${path.basename(e.rolledBackTo.cfg)}` : '';
  return report(io, opts, { outcome: e.outcome, entry: e, message: `${app.name}: ${to} ${e.outcome.replace('_', ' ')}: ${e.reason ?? ''}${back}` }, EXIT.failed);
}

function report(io: IO, opts: RequestOptions, r: { outcome: string; message: string; release?: Release; entry?: HistoryEntry }, code: number): number {
  if (opts.json) io.stdout(`${JSON.stringify({ outcome: r.outcome, message: r.message, ...(r.entry ? { entry: r.entry } : {}), ...(r.release ? { bin: r.release.bin, cfg: r.release.cfg } : {}) })}\n`);
  else (code === EXIT.ok ? io.stdout : io.stderr)(`${r.message}\n`);
  return code;
}

export function parseTimeout(value: string | undefined, fallbackS: number): number {
  if (value === undefined) return fallbackS * 1000;
  const s = Number(value);
  if (!Number.isFinite(s) || s <= 0) throw new UsageError(`--timeout must be a positive number of seconds (found: ${JSON.stringify(value)})`);
  return s * 1000;
}
