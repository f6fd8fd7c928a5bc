/**
 * Where an app's stdout and stderr go, and keeping its log file bounded.
 *
 * An app whose config leaves `logFile` unset writes into the journal when
 * the host runs journald: each start gets two streams (src/journalstream.ts),
 * stdout at priority 6 and stderr at 3, identified by the app's name
 * (`journalctl -t web`). They are the app's own connections, so the app
 * keeps them across agent restarts, and the journal rotates them. If
 * journald does not take a connection, that start writes to the file
 * instead and the agent says why, once. Otherwise (`logFile` set, or no
 * journald) the output is appended to the file, which the agent rotates by
 * size (src/applog.ts), checked every second. The same check looks at what
 * the app's processes write to: a log deleted or renamed under the running
 * app (src/logorphan.ts) is said once, with the way out, and kept bounded.
 *
 * Nothing of the app's output passes through the agent either way.
 */
import { closeSync, lstatSync, type Stats } from 'node:fs';
import type net from 'node:net';
import type { Logger } from 'pino';
import { rotateLog, clearMarker, type Rotation } from './applog.js';
import type { AppConfig } from './config.js';
import { RelinkError, type ErrorCode } from './errors.js';
import { JOURNAL_STDOUT, journalPresent, openJournalStream, PRIORITY } from './journalstream.js';
import { cutDetached, lookAt, realLogPath, stdoutName, type Detached } from './logorphan.js';
import { journalTail, logSize, logTail } from './logtail.js';
import type { ProcIdentity } from './proc.js';
import { openAppend } from './safefs.js';
import { resolveRunAs } from './user.js';

/** A journald to write to: its stdout socket and, for one not the host's default, its namespace (journalctl --namespace). */
export interface JournalTarget {
  readonly socket: string;
  readonly namespace?: string | undefined;
}

export const HOST_JOURNAL: JournalTarget = Object.freeze({ socket: JOURNAL_STDOUT });

/** Where one start's output went. */
export type Sink =
  | { readonly kind: 'journal'; readonly identifier: string; readonly namespace?: string | undefined }
  | {
    readonly kind: 'file';
    readonly file: string;
    /** Why the journal was wanted and not used (journald refused the connection). */
    readonly fallback?: string | undefined;
  };

/** A start's stdout and stderr, open: pass `stdout` and `stderr` in spawn's stdio, then close(). */
export interface OpenedSink {
  readonly sink: Sink;
  readonly stdout: number | net.Socket;
  readonly stderr: number | net.Socket;
  /** Closes the agent's copies (the app keeps its own). */
  close(): Promise<void>;
}

/**
 * Open where the next start of `app` writes (see the module's comment).
 * `owner`: the app's user and group, who get a log file the agent creates.
 * `journal`: the journald to use when `logFile` is unset (undefined: none).
 * Throws what src/safefs.ts openAppend throws for the file.
 */
export async function openSink(app: AppConfig, owner: { uid: number; gid: number } | undefined, journal: JournalTarget | undefined): Promise<OpenedSink> {
  let fallback: string | undefined;
  // Wanted but absent: said once (AppOutput.started), so that nobody looks in the journal for it.
  if (app.log.journal && journal !== undefined && !(await journalPresent(journal.socket))) fallback = `no journald on this host (${journal.socket} is not a socket)`;
  else if (app.log.journal && journal !== undefined) {
    const streams: net.Socket[] = [];
    try {
      streams.push(await openJournalStream({ identifier: app.name, priority: PRIORITY.info }, journal.socket));
      streams.push(await openJournalStream({ identifier: app.name, priority: PRIORITY.err }, journal.socket));
      const [stdout, stderr] = streams as [net.Socket, net.Socket];
      return {
        sink: { kind: 'journal', identifier: app.name, namespace: journal.namespace },
        stdout,
        stderr,
        // destroy(), never end(): a shutdown(2) would end the app's copy too.
        close: async () => { for (const s of streams) s.destroy(); },
      };
    } catch (err) {
      for (const s of streams) s.destroy();
      fallback = err instanceof Error ? err.message : String(err);
    }
  }
  const log = await openAppend(app.logFile, { owner });
  return { sink: { kind: 'file', file: app.logFile, fallback }, stdout: log.fd, stderr: log.fd, close: () => log.close() };
}

/** How to read what a sink holds, for messages: "journalctl -t web" or the file. */
export function describeSink(sink: Sink): string {
  if (sink.kind === 'file') return sink.file;
  return `journalctl ${sink.namespace === undefined ? '' : `--namespace ${sink.namespace} `}-t ${sink.identifier}`;
}

/**
 * Where `app`'s output is, for a message about a process of it: the
 * journal when its logFile is unset and the host runs journald, else its
 * log file. (A start that fell back to the file said so in the log.)
 */
export function outputWhere(app: AppConfig, journal: JournalTarget = HOST_JOURNAL): string {
  if (!app.log.journal) return app.logFile;
  let present = false;
  try {
    present = lstatSync(journal.socket).isSocket();
  } catch {
    // no journald
  }
  return present ? describeSink({ kind: 'journal', identifier: app.name, namespace: journal.namespace }) : app.logFile;
}

/** What the agent says, once, of a log file deleted or renamed under the running app. */
function detachedMessage(app: AppConfig, d: Detached, pathNow: boolean): string {
  const file = app.logFile;
  const what = d.deleted
    ? `${file} was deleted while the app still writes to it (pid ${d.pid}, and what shares its output): its output goes into the deleted file, which relink logs cannot read and which takes disk space until the app exits${pathNow ? `, and the new ${file} stays empty` : ''}`
    : `${file} was renamed to ${d.name} while the app still writes to it (pid ${d.pid}, and what shares its output; logrotate's rename and create does this): its output goes into ${d.name}${pathNow ? `, and the new ${file} stays empty` : `, and there is no ${file}`}`;
  const meanwhile = d.cuttable === true
    ? `until then the agent keeps ${d.deleted ? 'the deleted file' : d.name} below log.maxBytes (${app.log.maxBytes} bytes), dropping its oldest output`
    : `until then it grows: the agent does not cut it, as ${d.cuttable}`;
  return `${what}. relink restart ${app.name} makes the app write to ${file} again; ${meanwhile}. The agent rotates ${file} itself: do not delete it, or point logrotate at it`;
}

/** The agent's side of one app's output: its starts' sinks and its log file's rotation. */
export class AppOutput {
  readonly app: AppConfig;
  /** The journald starts use when `logFile` is unset; undefined: never the journal. */
  readonly journal: JournalTarget | undefined;
  readonly #log: Pick<Logger, 'info' | 'warn' | 'error'>;
  /** The last fallback or rotation problem said, so each is said once. */
  #saidFallback: string | undefined;
  #saidRotate: string | undefined;
  #saidTruncate = false;
  /** Per filesystem (device): collapse-range supported, or why not (src/applog.ts). */
  readonly #collapse = new Map<number, true | string>();
  #rotating: Promise<void> | undefined;
  /** `dev:ino` of the last files seen at the log's path: a file the app writes to that is one of them was this log. */
  readonly #known = new Set<string>();
  /** Detached files said (by `dev:ino`), each once, with the last reason it could not be cut; forgotten once nothing writes to it. */
  readonly #detached = new Map<string, { name: string; failed?: string | undefined }>();
  /** Processes' stdout found not to be this log's file (`pid:startTime:name`): not looked at again. */
  #elsewhere = new Set<string>();
  /** The log's path as /proc names it (symlinked folders resolved); refreshed when a name differs. */
  #realLog: string | undefined;
  #watching: Promise<void> | undefined;
  /** The last reason a look at the writers failed, said once. */
  #saidWatch: string | undefined;
  #closing: Promise<void> | undefined;

  constructor(app: AppConfig, log: Pick<Logger, 'info' | 'warn' | 'error'>, opts: { journal?: JournalTarget | null } = {}) {
    this.app = app;
    this.#log = log;
    this.journal = opts.journal === null ? undefined : opts.journal ?? HOST_JOURNAL;
  }

  /** At agent start: a rotation marker left by a killed agent is removed, and what it may have doubled said. */
  async recover(): Promise<void> {
    if (await clearMarker(this.app.logFile)) {
      this.#log.warn({ file: this.app.logFile }, `a rotation of ${this.app.logFile} was interrupted (the agent was killed): its newest rotated file and the log may both hold the bytes of that rotation (doubled, never lost)`);
    }
  }

  /** What a start wrote to: a fallback from the journal is said once per reason, and the journal's return once. */
  started(sink: Sink): void {
    if (sink.kind === 'file' && sink.fallback !== undefined) {
      if (this.#saidFallback !== sink.fallback) {
        // A host without journald at all is a setup, not a fault: said at info.
        const absent = sink.fallback.startsWith('no journald');
        (absent ? this.#log.info.bind(this.#log) : this.#log.warn.bind(this.#log))({ code: absent ? undefined : 'JOURNAL_UNAVAILABLE', file: sink.file },
          `${sink.fallback}: ${absent ? 'the app writes its output to' : 'this start of the app writes its output to'} ${sink.file} instead (rotated by size; relink logs ${this.app.name} reads it)`);
      }
      this.#saidFallback = sink.fallback;
    } else if (sink.kind === 'journal' && this.#saidFallback !== undefined) {
      this.#saidFallback = undefined;
      this.#log.info(`journald takes the app's output again (${describeSink(sink)})`);
    }
  }

  /**
   * The last lines a start wrote after it began (`fromBytes` of the file,
   * `sinceMs` in the journal), for the reason of a start that failed:
   * only lines written by the app's user (journald records the writer).
   */
  tail(sink: Sink, fromBytes: number, sinceMs: number, uid: number | undefined): () => Promise<string> {
    if (sink.kind === 'file') return () => logTail(sink.file, fromBytes);
    return () => journalTail(sink.identifier, sinceMs, { namespace: sink.namespace, uid });
  }

  /** Size of the log file now (a start's output begins there). */
  size(): Promise<number> {
    return logSize(this.app.logFile);
  }

  /**
   * The per-second check: rotate the log file if it reached log.maxBytes
   * (one at a time; a check while one runs is skipped; a log that is
   * missing is not made), and look at what `writers` (the main process of
   * each of the app's generations) write their stdout to: a file that was
   * this log and no longer is at its path is said once and kept below
   * log.maxBytes (src/logorphan.ts). Problems are logged, once each; never
   * throws. Resolves when what it started is done.
   */
  check(writers: readonly ProcIdentity[] = []): Promise<void> {
    if (this.#closing !== undefined) return this.#rotating ?? Promise.resolve();
    // The common case, a log below the bound (or none), costs this one stat. Synchronous: through
    // the thread pool, 20 apps' stats a second took the idle agent from 70 to 117 wake-ups a second.
    let st: Stats | undefined;
    try {
      st = lstatSync(this.app.logFile, { throwIfNoEntry: false });
    } catch {
      st = undefined;
    }
    if (st?.isFile()) this.#remember(`${st.dev}:${st.ino}`);
    const watching = this.#watch(writers);
    return Promise.all([watching, this.#rotate(st)]).then(() => undefined);
  }

  #rotate(st: Stats | undefined): Promise<void> {
    if (this.#rotating !== undefined) return this.#rotating;
    if (st === undefined || !st.isFile() || st.size < this.app.log.maxBytes) return Promise.resolve();
    this.#rotating = (async () => {
      try {
        const runAs = await resolveRunAs(this.app);
        const owner = { uid: runAs.uid, gid: runAs.gid };
        const done = await rotateLog(this.app.logFile, { maxBytes: this.app.log.maxBytes, backups: this.app.log.backups, owner, collapse: this.#collapse });
        if (done !== undefined) this.#rotated(done);
        if (this.#saidRotate !== undefined) this.#log.info({ file: this.app.logFile }, 'the log file is rotated again');
        this.#saidRotate = undefined;
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        if (this.#saidRotate !== why) {
          this.#log.error({ code: err instanceof RelinkError ? err.code : 'LOG_ROTATE_FAILED', file: this.app.logFile }, `cannot rotate ${this.app.logFile}: ${why}; it grows until this is fixed (tried again every second)`);
        }
        this.#saidRotate = why;
      } finally {
        this.#rotating = undefined;
      }
    })();
    return this.#rotating;
  }

  #rotated(r: Rotation): void {
    const file = this.app.logFile;
    if (r.mode === 'truncate' && !this.#saidTruncate) {
      this.#saidTruncate = true;
      this.#log.warn({ code: 'LOG_ROTATE_FAILED', file }, `${file} is rotated by copy and truncate: its filesystem cannot remove bytes from the front of a file (fallocate --collapse-range: ${r.why ?? 'not supported'}), so lines the app writes while a rotation copies may be lost (tmpfs, btrfs and NFS cannot; ext4 and xfs can)`);
    }
    if (r.droppedBytes > 0 && this.app.log.backups > 0) {
      this.#log.warn({ file, droppedBytes: r.droppedBytes }, `${file} grew past what log.backups (${this.app.log.backups}) files of log.maxBytes hold between two checks: its oldest ${r.droppedBytes} bytes were dropped`);
    }
    this.#log.info({ file, keptBytes: r.keptBytes, files: r.files, droppedBytes: r.droppedBytes, mode: r.mode }, `rotated ${file}`);
  }

  #remember(key: string): void {
    if (this.#known.has(key)) return;
    this.#known.add(key);
    // A few are plenty: a file is seen at the path within a second of being put there.
    if (this.#known.size > 16) this.#known.delete(this.#known.values().next().value!);
  }

  /**
   * Compare each writer's stdout with the log's path (a readlink each,
   * synchronous: /proc only); look at the file behind any that differs
   * (one look at a time). Never throws.
   */
  #watch(writers: readonly ProcIdentity[]): Promise<void> {
    if (this.#watching !== undefined) return this.#watching;
    const suspects: Array<ProcIdentity & { name: string }> = [];
    const elsewhere = new Set<string>();
    for (const w of writers) {
      const name = stdoutName(w.pid);
      // A socket (the journal), a pipe, or no such process: no file to compare.
      if (name === undefined || !name.startsWith('/')) continue;
      this.#realLog ??= realLogPath(this.app.logFile);
      if (name === this.#realLog) continue;
      const seen = `${w.pid}:${w.startTime}:${name}`;
      if (this.#elsewhere.has(seen)) elsewhere.add(seen);
      else suspects.push({ pid: w.pid, startTime: w.startTime, name });
    }
    this.#elsewhere = elsewhere;
    if (suspects.length === 0) {
      this.#stillDetached(new Set());
      return Promise.resolve();
    }
    this.#watching = this.#inspect(suspects).then(() => { this.#saidWatch = undefined; }, (err: unknown) => {
      const why = err instanceof Error ? err.message : String(err);
      if (this.#saidWatch !== why) this.#log.error({ file: this.app.logFile, err: why }, `cannot look at what the app writes its output to: ${why}`);
      this.#saidWatch = why;
    }).finally(() => { this.#watching = undefined; });
    return this.#watching;
  }

  async #inspect(suspects: ReadonlyArray<ProcIdentity & { name: string }>): Promise<void> {
    const real = realLogPath(this.app.logFile);
    this.#realLog = real;
    // Unknown (the user is gone): nothing is cut, since nothing can be checked to be theirs.
    const uid = await resolveRunAs(this.app).then((r) => r.uid, () => -1);
    const found = new Set<string>();
    for (const s of suspects) {
      const r = await lookAt(s, this.app.logFile, { known: this.#known, uid, real });
      if (r === undefined) {
        this.#elsewhere.add(`${s.pid}:${s.startTime}:${s.name}`);
        continue;
      }
      try {
        if (!found.has(r.detached.key)) await this.#bound(r.detached, r.fd);
        found.add(r.detached.key);
      } finally {
        closeSync(r.fd);
      }
    }
    this.#stillDetached(found);
  }

  /** A detached file the app writes to: said once, then cut below log.maxBytes each time it reaches it (when that is safe). */
  async #bound(d: Detached, fd: number): Promise<void> {
    let said = this.#detached.get(d.key);
    if (said === undefined) {
      said = { name: d.name };
      this.#detached.set(d.key, said);
      this.#log.warn({ code: 'LOG_FILE_DETACHED' satisfies ErrorCode, file: this.app.logFile, detached: d.name, appPid: d.pid, bytes: d.size }, detachedMessage(this.app, d, lstatSync(this.app.logFile, { throwIfNoEntry: false }) !== undefined));
    }
    if (d.cuttable !== true) return;
    try {
      const cut = await cutDetached(fd, this.app.log.maxBytes, this.#collapse);
      if (cut > 0) this.#log.info({ file: d.name, appPid: d.pid, droppedBytes: cut }, `cut the oldest ${cut} bytes of ${d.name}, which the app still writes to instead of ${this.app.logFile} (relink restart ${this.app.name} ends this)`);
      said.failed = undefined;
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      if (said.failed !== why) this.#log.error({ code: 'LOG_ROTATE_FAILED', file: d.name }, `cannot cut ${d.name}, which the app still writes to: ${why}; it grows until relink restart ${this.app.name}`);
      said.failed = why;
    }
  }

  /** Occurrences no process writes to any more (`current`: the files written to now) are over: said, and forgotten. */
  #stillDetached(current: ReadonlySet<string>): void {
    for (const [key, d] of this.#detached) {
      if (current.has(key)) continue;
      this.#detached.delete(key);
      this.#log.info({ file: this.app.logFile, detached: d.name }, `no process of the app writes to ${d.name} any more`);
    }
  }

  /** No more rotations; resolves once one under way (and a look at a detached log) has finished. The same promise every time. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#rotating;
      await this.#watching;
    })();
    return this.#closing;
  }
}
