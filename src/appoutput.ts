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
 * size (src/applog.ts), checked every second.
 *
 * Nothing of the app's output passes through the agent either way.
 */
import { lstatSync } from 'node:fs';
import type net from 'node:net';
import type { Logger } from 'pino';
import { rotateLog, clearMarker, type Rotation } from './applog.js';
import type { AppConfig } from './config.js';
import { RelinkError } from './errors.js';
import { JOURNAL_STDOUT, journalPresent, openJournalStream, PRIORITY } from './journalstream.js';
import { journalTail, logSize, logTail } from './logtail.js';
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
   * Rotate the log file if it reached log.maxBytes (one at a time; a check
   * while one runs is skipped). A log that is missing is not made.
   * Problems are logged, once each; never throws.
   */
  check(): Promise<void> {
    if (this.#rotating !== undefined || this.#closing !== undefined) return this.#rotating ?? Promise.resolve();
    // The common case, a log below the bound (or none), costs this one stat. Synchronous: through
    // the thread pool, 20 apps' stats a second took the idle agent from 70 to 117 wake-ups a second.
    let st;
    try {
      st = lstatSync(this.app.logFile, { throwIfNoEntry: false });
    } catch {
      return Promise.resolve();
    }
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

  /** No more rotations; resolves once one under way has finished. The same promise every time. */
  close(): Promise<void> {
    this.#closing ??= (async () => { await this.#rotating; })();
    return this.#closing;
  }
}
