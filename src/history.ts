/**
 * The deploy journal: one JSON line per apply attempt, appended to
 * <stateDir>/history.jsonl, newest last. Appends use O_APPEND so lines from
 * one writer never interleave mid-line.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from './errors.js';

export type Outcome =
  /** links switched and the app started or signalled, and it answered as expected */
  | 'deployed'
  /** current.conf (or the release it names) failed validation: nothing was switched */
  | 'refused'
  /** the release failed verification; the last known-good release serves again */
  | 'rolled_back'
  /** the release failed and nothing could be rolled back to (or the rollback failed too) */
  | 'failed';

export type Action = 'start' | 'signal' | 'none';

export interface HistoryEntry {
  readonly time: string;
  readonly app: string;
  readonly outcome: Outcome;
  readonly action: Action;
  readonly from: { readonly bin: string | null; readonly cfg: string | null };
  readonly to: { readonly bin: string | null; readonly cfg: string | null };
  readonly reason: string | null;
  readonly code: string | null;
  readonly pidBefore: number | null;
  readonly pidAfter: number | null;
  readonly durationMs: number;
  /** sha256 of the current.conf content this attempt read. */
  readonly currentHash: string | null;
  /** What started the attempt: a file event, the periodic re-check, or agent start. */
  readonly trigger: string;
  /** For rolled_back: the release that serves again. */
  readonly rolledBackTo?: { readonly bin: string; readonly cfg: string } | null;
  /** For rolled_back: the current.conf content that was rejected (current.conf now names what runs), cut to 4 KiB. */
  readonly rejected?: string | null;
  /** The same refusal happened this many more times in a row after the entry before (journaled once, with the count). */
  readonly repeats?: number;
}

export function historyFile(stateDir: string): string {
  return path.join(stateDir, 'history.jsonl');
}

export async function appendHistory(stateDir: string, entry: HistoryEntry): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  await appendFile(historyFile(stateDir), `${JSON.stringify(entry)}\n`, { mode: 0o644 });
}

/** Entries, oldest first; a torn or foreign line is skipped, not fatal. */
export async function readHistory(stateDir: string, app?: string): Promise<HistoryEntry[]> {
  let text: string;
  try {
    text = await readFile(historyFile(stateDir), 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
  const out: HistoryEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const e = JSON.parse(line) as HistoryEntry;
      if (typeof e === 'object' && e !== null && typeof e.app === 'string' && (app === undefined || e.app === app)) out.push(e);
    } catch {
      // A line cut short by a full disk or a crash must not hide the rest.
    }
  }
  return out;
}
