/**
 * Typed errors. Every refusal an operator can see carries a stable `code`
 * (logged as a field, used by scripts) and, where it applies, the file, the
 * key, the rule that was broken and what was found, so the message reads:
 *   /srv/app/release/current.conf: "bin.file": /srv/app/release/app.3 is not executable (mode 0644)
 */

export type ErrorCode =
  // agent config
  | 'CONFIG_UNREADABLE'
  | 'CONFIG_SYNTAX'
  | 'CONFIG_DUPLICATE_KEY'
  | 'CONFIG_INVALID'
  // current.conf
  | 'CURRENT_MISSING'
  | 'CURRENT_UNREADABLE'
  | 'CURRENT_TOO_LARGE'
  | 'CURRENT_SYNTAX'
  | 'CURRENT_DUPLICATE_KEY'
  | 'CURRENT_INVALID'
  | 'CURRENT_UNKNOWN_KEY'
  | 'RELEASE_MISSING'
  | 'RELEASE_NOT_FILE'
  | 'RELEASE_OUTSIDE'
  /** with links.dir: bin and cfg are not in one folder per release (issue 15) */
  | 'RELEASE_NOT_IN_FOLDER'
  | 'RELEASE_NOT_EXECUTABLE'
  | 'RELEASE_UNREADABLE'
  | 'RELEASE_HASH_MISMATCH'
  | 'HOME_UNKNOWN'
  | 'PREFLIGHT_FAILED'
  /** a deploy hook (src/hooks.ts) failed: beforeSwitch refuses the deploy; an after-hook's failure is only logged */
  | 'HOOK_FAILED'
  /** a notifier (src/notifications.ts) could not tell of an event, or dropped one: logged, never more */
  | 'NOTIFY_FAILED'
  /** crash supervision gave up on the app (state fatal): the `code` of the fatal notification */
  | 'CRASH_LOOP'
  // trust (StrictModes-style ownership and mode checks)
  | 'UNTRUSTED_PATH'
  // files in folders an app's user can write (src/safefs.ts)
  | 'UNSAFE_PATH'
  | 'FILE_UNREADABLE'
  // the sd_notify socket the apps report readiness on (src/notify.ts)
  | 'NOTIFY_SOCKET_FAILED'
  // the app's output (src/appoutput.ts): journald's stream socket, the log file's rotation
  | 'JOURNAL_UNAVAILABLE'
  | 'LOG_ROTATE_FAILED'
  /** the app writes to its log file deleted or renamed under it (src/logorphan.ts): relink restart makes a new one */
  | 'LOG_FILE_DETACHED'
  /** a start (nothing of the app running, no socket held) finds the health probe's port listened on by another process: a warning, the start goes on */
  | 'PORT_TAKEN'
  // relink / process
  | 'LINK_NOT_SYMLINK'
  | 'LINK_FAILED'
  | 'START_FAILED'
  // running the app as its own user, with its limits
  | 'USER_UNKNOWN'
  | 'ROOT_REFUSED'
  | 'USER_SWITCH_DENIED'
  | 'LIMIT_DENIED'
  | 'SIGNAL_FAILED'
  | 'HANDOFF_TIMEOUT'
  /** a listen address in "sockets" could not be held (bound, or found among the fds systemd passed) */
  | 'SOCKET_UNAVAILABLE'
  /** what the app did after the signal does not fit its reload.strategy (the message names the one that fits) */
  | 'STRATEGY_MISMATCH'
  /** readiness "notify": no READY=1 from the new generation in time */
  | 'NOT_READY'
  | 'APP_EXITED'
  /** relink stop: a process of the app survived stop.signal and SIGKILL */
  | 'STOP_FAILED'
  /** relink start | restart before any release was linked */
  | 'NOTHING_TO_START'
  | 'REQUEST_EXPIRED'
  | 'INTERRUPTED'
  | 'RELEASE_HIDDEN'
  | 'WRONG_BINARY'
  | 'UNHEALTHY'
  | 'ROLLBACK_FAILED'
  | 'NO_AGENT'
  /** a command only root may run (signal the agent, write its requests) run by another user */
  | 'NOT_ROOT'
  | 'WAIT_TIMEOUT'
  | 'SUPERSEDED'
  | 'UNKNOWN_RELEASE'
  // releases / pruning
  | 'PRUNE_FAILED'
  | 'RELEASES_UNREADABLE'
  // agent / CLI
  | 'AGENT_RUNNING'
  | 'AGENT_STOPPING'
  | 'APP_LOCKED'
  | 'APP_LOCK_FAILED'
  | 'APP_UNAVAILABLE'
  | 'LIVENESS_FAILED'
  | 'INTERNAL'
  | 'STATE_UNREADABLE'
  /** a state file or the journal could not be written (ENOSPC, EROFS, EACCES, ...) */
  | 'STATE_WRITE_FAILED'
  | 'UNKNOWN_APP'
  | 'USAGE';

export interface ErrorDetail {
  /** The file the problem is in (current.conf, the agent config, a link). */
  file?: string;
  /** The key inside that file, e.g. "bin.file" or "apps[0].dir". */
  key?: string;
  /** The rule that was broken, in words: "must be executable". */
  rule?: string;
  /** What was found instead: "mode 0644". */
  found?: string;
}

export class RelinkError extends Error {
  readonly code: ErrorCode;
  readonly file: string | undefined;
  readonly key: string | undefined;
  readonly rule: string | undefined;
  readonly found: string | undefined;

  constructor(code: ErrorCode, message: string, detail: ErrorDetail = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RelinkError';
    this.code = code;
    this.file = detail.file;
    this.key = detail.key;
    this.rule = detail.rule;
    this.found = detail.found;
  }

  /** Fields for a log line or a history entry. */
  toJSON(): Record<string, string> {
    const out: Record<string, string> = { code: this.code, message: this.message };
    if (this.file !== undefined) out.file = this.file;
    if (this.key !== undefined) out.key = this.key;
    if (this.rule !== undefined) out.rule = this.rule;
    if (this.found !== undefined) out.found = this.found;
    return out;
  }
}

/**
 * A problem located in a file: `FILE: "KEY": RULE (found: FOUND)`. The
 * message is composed here so every such error reads the same way.
 */
export function fileError(code: ErrorCode, file: string, key: string | undefined, rule: string, found?: string): RelinkError {
  const where = key === undefined ? `${file}:` : `${file}: ${JSON.stringify(key)}:`;
  const tail = found === undefined ? '' : ` (found: ${found})`;
  return new RelinkError(code, `${where} ${rule}${tail}`, { file, key, rule, found });
}

/**
 * How many problems one error lists. A 46 KB current.conf with 2,000 unknown
 * keys made a 200 KB message per refusal, journaled and logged on every write
 * (issue 9, item 5); the first 20 say what is wrong as well as all would.
 */
export const MAX_PROBLEMS = 20;

/**
 * Several problems found at once (a config with three mistakes lists all
 * three). Past MAX_PROBLEMS, the rest is one last problem: "FILE: and N more
 * problems", with the code of the first one left out.
 */
export class RelinkErrors extends RelinkError {
  /** The problems as listed: at most MAX_PROBLEMS, then one "and N more problems". */
  readonly problems: readonly RelinkError[];
  /** How many problems were found, including those not listed. */
  readonly total: number;
  /** `uncounted`: further problems of the same kind and file as the last one, found but not built (a finder past MAX_PROBLEMS). */
  constructor(problems: readonly RelinkError[], uncounted = 0) {
    const first = problems[0];
    if (first === undefined) throw new TypeError('RelinkErrors needs at least one problem');
    const shown = problems.length + uncounted <= MAX_PROBLEMS ? problems
      : [...problems.slice(0, MAX_PROBLEMS), moreProblems(problems.slice(MAX_PROBLEMS).length > 0 ? problems.slice(MAX_PROBLEMS) : [problems.at(-1)!], problems.length - MAX_PROBLEMS + uncounted)];
    super(first.code, shown.map((p) => p.message).join('\n'), first);
    this.name = 'RelinkErrors';
    this.problems = shown;
    this.total = problems.length + uncounted;
  }
}

function moreProblems(rest: readonly RelinkError[], count: number): RelinkError {
  const head = rest[0]!;
  const rule = `and ${count} more problem${count === 1 ? '' : 's'}`;
  const file = rest.every((p) => p.file === head.file) ? head.file : undefined;
  return file === undefined ? new RelinkError(head.code, rule, { rule }) : fileError(head.code, file, undefined, rule);
}

export function isErrno(err: unknown, code?: string): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' &&
    (code === undefined || (err as NodeJS.ErrnoException).code === code);
}

/**
 * What an operator is told about anything thrown: a RelinkError's code and
 * message; for an I/O error the path and the errno (`/srv/web/release: does
 * not exist (ENOENT)`), never a stack; anything else is INTERNAL.
 */
export function describeError(err: unknown): { readonly code: string; readonly message: string } {
  if (err instanceof RelinkError) return { code: err.code, message: err.message };
  if (isErrno(err)) {
    const where = err.path === undefined ? '' : `${err.path}: `;
    return { code: err.code ?? 'INTERNAL', message: `${where}${err.code === 'ENOENT' ? 'does not exist' : err.message} (${err.code ?? 'error'})` };
  }
  return { code: 'INTERNAL', message: `unexpected error: ${err instanceof Error ? err.message : String(err)}` };
}
