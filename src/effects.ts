/**
 * Every side effect the per-app orchestrator has, behind one narrow
 * interface: the real one below, a fake in the orchestration tests (as
 * tableflip swaps its `env`). The edges themselves are tested for real.
 */
import type { AppConfig } from './config.js';
import { readCurrent, validateCurrent, type CurrentSnapshot, type Release } from './current.js';
import { writeFileAtomic } from './atomicWrite.js';
import { probeOnce, type ProbeResult } from './health.js';
import type { HistoryEntry } from './history.js';
import { launch, type Launched } from './launch.js';
import { expandArgs, runPreflight, type PreflightResult } from './preflight.js';
import { ProcessFinder, sendSignal, type Discovery, type ProcIdentity, type ProcInfo } from './proc.js';
import { readLinks, relink } from './relink.js';
import { AppStore, type AppState } from './state.js';

export interface Effects {
  readCurrent(): Promise<CurrentSnapshot>;
  /** Replace current.conf atomically (rollback rewrites it to what runs). */
  writeCurrent(text: string): Promise<void>;
  validate(text: string): Promise<Release>;
  preflight(release: Release): Promise<PreflightResult | undefined>;
  readLinks(): Promise<{ bin: string | undefined; cfg: string | undefined }>;
  relink(release: Release): Promise<void>;
  /** Cheap re-check of a known process (no process-table scan). */
  verify(id: ProcIdentity): Promise<ProcInfo | undefined>;
  discover(preferred?: ProcIdentity): Promise<Discovery>;
  launch(): Promise<Launched>;
  /** false if the process is already gone */
  signal(pid: number, signal: NodeJS.Signals): boolean;
  /** One health probe attempt; {ok: true} when no probe is configured. */
  probe(): Promise<ProbeResult>;
  record(entry: HistoryEntry): Promise<void>;
  saveState(state: AppState): Promise<void>;
  loadState(): Promise<AppState | undefined>;
  now(): number;
  sleep(ms: number): Promise<void>;
  /** Run `fn` once after `ms`; returns a cancel function. Never keeps the process alive by itself. */
  schedule(ms: number, fn: () => void): () => void;
}

/** `store`: the app's journal and state file (its group, rotation, damage warnings); see AppStore. */
export function realEffects(app: AppConfig, stateDir: string, store: AppStore = new AppStore(stateDir, app.name)): Effects {
  const finder = new ProcessFinder({ releasesDir: app.releasesDir, pidFile: app.pidFile, user: app.user });
  return {
    readCurrent: () => readCurrent(app.currentFile),
    writeCurrent: (text) => writeFileAtomic(app.currentFile, text),
    validate: (text) => validateCurrent(app, text),
    preflight: async (release) => {
      if (app.preflight === undefined) return undefined;
      return runPreflight(expandArgs(app.preflight.command, release), { cwd: app.dir, env: { ...process.env, ...app.env }, timeoutMs: app.preflight.timeoutMs });
    },
    readLinks: () => readLinks(app.links),
    relink: (release) => relink(app.links, release),
    verify: (id) => finder.verify(id),
    discover: (preferred) => finder.discover(preferred),
    launch: () => launch(app),
    signal: sendSignal,
    probe: async () => (app.health.probe === undefined ? { ok: true, detail: 'no probe' } : probeOnce(app.health.probe, app.health.probeTimeoutMs)),
    record: (entry) => store.record(entry),
    saveState: (state) => store.save(state),
    loadState: () => store.load(),
    now: () => Date.now(),
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
    schedule: (ms, fn) => {
      const t = setTimeout(fn, ms);
      t.unref();
      return () => clearTimeout(t);
    },
  };
}
