/**
 * What an app leaves behind: the record of each apply attempt (its journal
 * entry, src/history.ts, and its log line, with the same fields, built in
 * one place) and its state file. With the one rule that keeps a writer loop
 * from filling the disk: a refusal identical to the one just journaled is
 * counted, not journaled again, and the count is journaled once when the
 * run of repeats ends (issue 9, item 5: 300 writes of a bad current.conf in
 * 4 s added 50 MB to the journal and 234 MB to the log). And recording that
 * fails (a full or read-only state folder) never stops anything: it is said
 * once, with the path, and once more when it works again (item 9).
 */
import type { Logger } from 'pino';
import type { CurrentSnapshot, Release } from './current.js';
import type { Effects } from './effects.js';
import { describeError, RelinkErrors, type RelinkError } from './errors.js';
import type { Action, Command, HistoryEntry, Outcome } from './history.js';
import type { AppState } from './state.js';
import { TokenBucket } from './throttle.js';

export interface Attempt {
  /** What started it: a file event, the periodic re-check, agent start. */
  readonly trigger: string;
  /** fx.now() when the pass began (ms). */
  readonly started: number;
  /** What was read; null when current.conf could not be read at all (a FIFO, too large, unreadable). */
  readonly snapshot: CurrentSnapshot | null;
  /** Where the links pointed before. */
  readonly from: { readonly bin: string | undefined; readonly cfg: string | undefined };
  readonly pidBefore: number | undefined;
}

/** An attempt that read current.conf (every one that gets as far as a deploy). */
export type ReadAttempt = Attempt & { readonly snapshot: CurrentSnapshot };

export interface Extra {
  readonly strategy?: string;
  /** What the deploy turned out to do, when not what was planned (a "socket" deploy that had to restart the app once). */
  readonly action?: Action;
  readonly outageMs?: number | null;
  readonly queuedMs?: number | null;
  readonly rolledBackTo?: Release | null;
  /** The rejected current.conf text (a rollback rewrote the file). */
  readonly rejected?: string | null;
  /** The operator's request answered (relink stop | start | restart) and its id. */
  readonly command?: Command;
  readonly request?: string;
}

/** Characters of a rejected current.conf kept in an entry; a real one is ~100. */
export const MAX_REJECTED_CHARS = 4096;

/** Characters of a reason kept in an entry (preflight output is already cut to 4 KiB). */
export const MAX_REASON_CHARS = 8192;

function cut(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}... [${text.length - max} more characters not kept]`;
}

/** The journal entry for an attempt that ended with `outcome`. */
export function entryFor(
  app: string, now: number, attempt: Attempt, outcome: Outcome, action: Action,
  release: Release | undefined, pidAfter: number | undefined, err?: RelinkError, extra: Extra = {},
): HistoryEntry {
  const problems = err instanceof RelinkErrors ? err.problems : err === undefined ? [] : [err];
  return {
    time: new Date(now).toISOString(),
    app,
    outcome,
    action: extra.action ?? action,
    from: { bin: attempt.from.bin ?? null, cfg: attempt.from.cfg ?? null },
    to: { bin: release?.bin ?? null, cfg: release?.cfg ?? null },
    reason: err === undefined ? null : cut(problems.map((p) => p.message).join('; '), MAX_REASON_CHARS),
    code: err?.code ?? null,
    pidBefore: attempt.pidBefore ?? null,
    pidAfter: pidAfter ?? null,
    durationMs: now - attempt.started,
    currentHash: attempt.snapshot?.hash ?? null,
    trigger: attempt.trigger,
    ...(extra.strategy !== undefined ? { strategy: extra.strategy } : {}),
    ...(extra.outageMs !== undefined ? { outageMs: extra.outageMs } : {}),
    ...(extra.queuedMs !== undefined ? { queuedMs: extra.queuedMs } : {}),
    ...(extra.rolledBackTo !== undefined ? { rolledBackTo: extra.rolledBackTo } : {}),
    ...(extra.rejected !== undefined ? { rejected: extra.rejected === null ? null : cut(extra.rejected, MAX_REJECTED_CHARS) } : {}),
    ...(extra.command !== undefined ? { command: extra.command } : {}),
    ...(extra.request !== undefined ? { request: extra.request } : {}),
  };
}

/**
 * The log line of an entry. The logger already carries `app` and its own
 * `time`, so the entry's are left out (one key once per line, item 18), and
 * so is the rejected current.conf text: the journal keeps it, readable only
 * by the app's user and root; the log goes to journald's readers.
 */
export function logEntry(log: Logger, entry: HistoryEntry, err?: RelinkError): void {
  const { time: _time, app: _app, rejected: _rejected, ...fields } = entry;
  const problems = err instanceof RelinkErrors && err.problems.length > 1 ? err.problems.slice(0, 20).map((p) => p.toJSON()) : undefined;
  const line = { ...fields, ...(problems ? { problems } : {}), ...(err?.file ? { file: err.file } : {}), ...(err?.key ? { key: err.key } : {}) };
  const repeats = entry.repeats === undefined ? '' : ` (${entry.repeats} more times)`;
  const asked = entry.command === undefined ? '' : `relink ${entry.command}: `;
  if (entry.outcome === 'deployed') log.info(line, `${asked}deployed ${entry.to.bin ?? ''} (${entry.action})`);
  else if (entry.outcome === 'stopped') log.info(line, `${asked}stopped${entry.command === undefined ? `; links switched to ${entry.to.bin ?? ''} (the app stays stopped until relink start)` : ''}`);
  else if (entry.outcome === 'refused') log.warn(line, `refused${repeats}: ${entry.reason ?? ''}`);
  else if (entry.outcome === 'rolled_back') log.error(line, `rolled back to ${entry.rolledBackTo?.bin ?? ''}: ${entry.reason ?? ''}`);
  else log.error(line, `${asked}failed: ${entry.reason ?? ''}`);
}

/**
 * Runs of refusals. `offer` says whether an entry goes to the journal. A
 * refusal is a repeat, counted and not journaled, when nothing but refusals
 * came since the one journaled last and it either says the same (code and
 * reason) or comes when refusals have already been journaled faster than a
 * person edits (more than BURST in a row, then one a minute): a writer loop
 * that varies what it writes gets no more journal entries than one that
 * does not (a trial with varying content rotated every deployed entry out of
 * the journal, and with it `relink rollback`'s target). The run ends with
 * the next other outcome, MAX_AGE_MS after it began, or the agent stopping:
 * `close` then gives the one entry that records the count (`repeats`, with
 * the newest refusal's reason), to be journaled before anything else.
 */
const signatureOf = (e: HistoryEntry): string | undefined => (e.outcome === 'refused' ? `${e.code ?? ''}\0${e.reason ?? ''}` : undefined);

export class RefusalStreak {
  #signature: string | undefined;
  #repeats = 0;
  #last: HistoryEntry | undefined;
  /** When the run began (ms). */
  #since = 0;
  /** Different refusals in a row that may still be journaled: BURST, then one a minute. */
  #budget: TokenBucket | undefined;

  /**
   * A run is journaled at least this often (ms), so `relink history` shows
   * a long run of repeats as it goes: one entry per period at most.
   */
  static readonly MAX_AGE_MS = 10 * 60_000;
  /** Different refusals journaled in a row before they are counted instead. */
  static readonly BURST = 10;

  /** 'journal' for an entry to write; 'repeat' for a counted repeat. Call close() first when it says 'journal'. */
  offer(entry: HistoryEntry, now: number): 'journal' | 'repeat' {
    const signature = signatureOf(entry);
    if (signature === undefined || this.#signature === undefined || now - this.#since >= RefusalStreak.MAX_AGE_MS) return 'journal';
    this.#budget ??= new TokenBucket(RefusalStreak.BURST, 1 / 60, now);
    if (signature !== this.#signature && this.#budget.take(now) === 0) return 'journal';
    this.#repeats += 1;
    this.#last = entry;
    return 'repeat';
  }

  /** After an entry was journaled: it may start a run. Anything but a refusal gives the budget back. */
  started(entry: HistoryEntry, now: number): void {
    this.#signature = signatureOf(entry);
    if (this.#signature === undefined) this.#budget = undefined;
    this.#repeats = 0;
    this.#last = undefined;
    this.#since = now;
  }

  /** The entry recording the repeats counted since the last journaled one, if any; the run is over. */
  close(): HistoryEntry | undefined {
    const last = this.#last;
    const repeats = this.#repeats;
    this.#signature = undefined;
    this.#repeats = 0;
    this.#last = undefined;
    return last === undefined || repeats === 0 ? undefined : { ...last, repeats };
  }
}

/**
 * The journal and the state file of one app, as the orchestrator writes
 * them. Never throws: a write that fails is logged once per kind (journal,
 * state) until one succeeds again.
 */
/** A counted refusal with a new reason is logged at most this often (ms). */
const LOG_EVERY_MS = 10_000;

export class Recorder {
  readonly #fx: Pick<Effects, 'record' | 'saveState' | 'readLinks' | 'now'>;
  readonly #log: Logger;
  readonly #streak = new RefusalStreak();
  /** What could not be written, by kind, said once until it works again. */
  readonly #failing = new Map<string, string>();
  /** The reason last logged, and when (fx ms): a run of refusals is logged at most once per LOG_EVERY_MS. */
  #loggedReason: string | null = null;
  #loggedAt = Number.NEGATIVE_INFINITY;

  constructor(fx: Pick<Effects, 'record' | 'saveState' | 'readLinks' | 'now'>, log: Logger) {
    this.#fx = fx;
    this.#log = log;
  }

  /**
   * Journal and log an attempt's entry, unless it repeats the last refusal
   * (then it is counted). The entries journaled, oldest first: none for a
   * counted repeat; the one closing a run of repeats, then this one.
   */
  async attempt(entry: HistoryEntry, err?: RelinkError): Promise<HistoryEntry[]> {
    const now = this.#fx.now();
    if (this.#streak.offer(entry, now) === 'repeat') {
      // A new reason is still said, at most once per LOG_EVERY_MS: the log stays bounded under a writer loop.
      const fresh = entry.reason !== this.#loggedReason && now - this.#loggedAt >= LOG_EVERY_MS;
      if (fresh) {
        this.#loggedReason = entry.reason;
        this.#loggedAt = now;
        this.#log.warn({ code: entry.code, currentHash: entry.currentHash }, `refused again (counted, journaled with the count when the run ends): ${entry.reason ?? ''}`);
      } else {
        this.#log.debug({ code: entry.code, currentHash: entry.currentHash }, 'refused again: counted, journaled with the count when the run ends');
      }
      return [];
    }
    this.#loggedReason = entry.reason;
    this.#loggedAt = now;
    const closing = await this.closeStreak();
    logEntry(this.#log, entry, err);
    await this.#journal(entry);
    this.#streak.started(entry, now);
    return closing === undefined ? [entry] : [closing, entry];
  }

  /** A run of repeated refusals is over (or the agent stops): journal its count. The entry journaled, if any. */
  async closeStreak(): Promise<HistoryEntry | undefined> {
    const closing = this.#streak.close();
    if (closing === undefined) return undefined;
    logEntry(this.#log, closing);
    await this.#journal(closing);
    return closing;
  }

  /** Save the state file; the links are read here, the time is now. */
  async save(state: Omit<AppState, 'bin' | 'cfg' | 'updatedAt'>): Promise<void> {
    const links = await this.#fx.readLinks().catch(() => ({ bin: undefined, cfg: undefined }));
    await this.#write('state', () => this.#fx.saveState({ ...state, bin: links.bin ?? null, cfg: links.cfg ?? null, updatedAt: new Date(this.#fx.now()).toISOString() }));
  }

  #journal(entry: HistoryEntry): Promise<void> {
    return this.#write('journal', () => this.#fx.record(entry));
  }

  async #write(what: string, write: () => Promise<void>): Promise<void> {
    try {
      await write();
    } catch (err) {
      const message = describeError(err).message;
      if (this.#failing.get(what) === message) return;
      this.#failing.set(what, message);
      this.#log.error({ code: 'STATE_WRITE_FAILED', err: message }, `cannot write the ${what}; the app is still managed, but this is not recorded: ${message}`);
      return;
    }
    if (this.#failing.delete(what)) this.#log.info(`the ${what} is written again`);
  }
}
