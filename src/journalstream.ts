/**
 * journald's stdout stream protocol: how a service's stdout reaches the
 * journal without passing through anything (what systemd does for
 * StandardOutput=journal, and `systemd-cat`). A client connects a unix
 * stream socket to /run/systemd/journal/stdout, writes a header of seven
 * lines, and from then on every line written to the socket is one journal
 * entry. The connected socket is then given to the app as its stdout (or
 * stderr): the app writes straight into the journal, and the connection
 * is the app's own, so it outlives the agent.
 *
 * The header, as systemd's sd_journal_stream_fd() writes it
 * (src/libsystemd/sd-journal/journal-send.c) and journald reads it
 * (src/journal/journald-stream.c, stdout_stream_line(): STDOUT_STREAM_IDENTIFIER
 * .. STDOUT_STREAM_FORWARD_TO_CONSOLE), one value a line:
 *
 *   identifier        SYSLOG_IDENTIFIER= of every entry (`journalctl -t NAME`)
 *   unit id           empty (only a root client may name a unit: not needed)
 *   priority          0-7, syslog's: 6 info for stdout, 3 err for stderr
 *   level prefix      1: a line starting with "<N>" (sd-daemon(3)) sets its own priority
 *   forward to syslog 0
 *   forward to kmsg   0
 *   forward to console 0
 *
 * Node has no socket(2), but a connected net.Socket passed in spawn's stdio
 * is dup'ed into the child at that index, and libuv makes fds 0-2 blocking
 * in the child (a C program's stdio would otherwise get EAGAIN). journald
 * records the credentials of the process that connected (the agent: its
 * _PID, _UID, _SYSTEMD_UNIT), not of the app.
 */
import { lstat } from 'node:fs/promises';
import net from 'node:net';
import { RelinkError } from './errors.js';

/** The socket journald reads stdout streams on (systemd-journald-stdout.socket). */
export const JOURNAL_STDOUT = '/run/systemd/journal/stdout';

/** syslog priorities journald stores in PRIORITY= (sd-daemon(3)). */
export const PRIORITY = { err: 3, info: 6 } as const;

export interface StreamHeader {
  /** SYSLOG_IDENTIFIER= of the stream's entries: one line, no NUL. */
  readonly identifier: string;
  /** 0 (emerg) to 7 (debug). */
  readonly priority: number;
  /** Let a line's own "<N>" prefix set its priority. Default true. */
  readonly levelPrefix?: boolean;
}

/** The seven header lines of a stream (see the module's comment). Throws RangeError for an identifier or priority journald would refuse. */
export function streamHeader(h: StreamHeader): string {
  if (h.identifier === '' || /[\n\0]/.test(h.identifier)) throw new RangeError(`a journal identifier is one line without NUL (found ${JSON.stringify(h.identifier)})`);
  if (!Number.isInteger(h.priority) || h.priority < 0 || h.priority > 7) throw new RangeError(`a syslog priority is 0 to 7 (found ${h.priority})`);
  return `${h.identifier}\n\n${h.priority}\n${h.levelPrefix === false ? 0 : 1}\n0\n0\n0\n`;
}

/** Does `socket` exist as a unix socket (journald runs, or is socket-activated)? */
export async function journalPresent(socket: string = JOURNAL_STDOUT): Promise<boolean> {
  return lstat(socket).then((st) => st.isSocket(), () => false);
}

/** How long a connection and its header may take: journald answers at once or is in trouble. */
const CONNECT_TIMEOUT_MS = 2_000;

/**
 * A stream connected to journald at `socket` with its header written: pass
 * it in spawn's stdio, then destroy() it (never end(): a shutdown would
 * close the app's copy too). Throws RelinkError JOURNAL_UNAVAILABLE with the
 * system's reason (ENOENT, ECONNREFUSED, EAGAIN, a timeout).
 */
export async function openJournalStream(header: StreamHeader, socket: string = JOURNAL_STDOUT): Promise<net.Socket> {
  const text = streamHeader(header);
  const conn = net.createConnection({ path: socket });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer within ${CONNECT_TIMEOUT_MS} ms`)), CONNECT_TIMEOUT_MS);
      conn.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      conn.once('connect', () => {
        conn.write(text, (err) => {
          clearTimeout(timer);
          if (err) reject(err);
          else resolve();
        });
      });
    });
  } catch (err) {
    conn.destroy();
    const found = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new RelinkError('JOURNAL_UNAVAILABLE', `cannot connect to journald at ${socket}: ${found}`, { file: socket, rule: 'journald must accept a stdout stream', found }, { cause: err });
  }
  // journald never writes back; nothing is read.
  conn.pause();
  conn.on('error', () => undefined);
  return conn;
}
