/**
 * Every side effect the per-app orchestrator has, behind one narrow
 * interface: the real one below, a fake in the orchestration tests (as
 * tableflip swaps its `env`). The edges themselves are tested for real.
 */
import type { AppConfig } from './config.js';
import { readCurrent, validateCurrent, type CurrentSnapshot, type Release } from './current.js';
import { appendHistory, type HistoryEntry } from './history.js';
import { launch, type Launched } from './launch.js';
import { ProcessFinder, sendSignal, type Discovery, type ProcIdentity, type ProcInfo } from './proc.js';
import { readLinks, relink } from './relink.js';
import { writeAppState, type AppState } from './state.js';

export interface Effects {
  readCurrent(): Promise<CurrentSnapshot>;
  validate(text: string): Promise<Release>;
  readLinks(): Promise<{ bin: string | undefined; cfg: string | undefined }>;
  relink(release: Release): Promise<void>;
  /** Cheap re-check of a known process (no process-table scan). */
  verify(id: ProcIdentity): Promise<ProcInfo | undefined>;
  discover(preferred?: ProcIdentity): Promise<Discovery>;
  launch(): Promise<Launched>;
  /** false if the process is already gone */
  signal(pid: number, signal: NodeJS.Signals): boolean;
  record(entry: HistoryEntry): Promise<void>;
  saveState(state: AppState): Promise<void>;
  now(): number;
  sleep(ms: number): Promise<void>;
}

export function realEffects(app: AppConfig, stateDir: string): Effects {
  const finder = new ProcessFinder({ releasesDir: app.releasesDir, pidFile: app.pidFile });
  return {
    readCurrent: () => readCurrent(app.currentFile),
    validate: (text) => validateCurrent(app, text),
    readLinks: () => readLinks(app.links),
    relink: (release) => relink(app.links, release),
    verify: (id) => finder.verify(id),
    discover: (preferred) => finder.discover(preferred),
    launch: () => launch(app),
    signal: sendSignal,
    record: (entry) => appendHistory(stateDir, entry),
    saveState: (state) => writeAppState(stateDir, state),
    now: () => Date.now(),
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  };
}
