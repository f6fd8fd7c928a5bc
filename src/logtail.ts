/**
 * The last lines an app wrote to its log, for the reason of a start that
 * failed: "exited right after start (see app.log)" sent operators to the
 * log for a cause (`Address already in use`) that fits on one line (issue
 * 9, item 21).
 *
 * The log lies in a folder the app's user can write, and the agent reads it
 * as root: through src/safefs.ts (no link planted on its path is followed,
 * nothing but a regular file is opened, nothing blocks), and only if it has
 * no other name (a hard link to somebody else's file is not quoted).
 * Anything else gives nothing: a message must never quote a file the app's
 * user could not read.
 *
 * An app writing to the journal is quoted from there (journalTail): only
 * lines its own user wrote (journald records each writer's credentials),
 * since the identifier alone is anybody's to use.
 */
import { execFile } from 'node:child_process';
import { openRegular } from './safefs.js';

/** Bytes read from the end; lines beyond `maxLines` are dropped from the front. */
const MAX_BYTES = 2048;

/** Size of `file` now, as the offset from which a new run's output starts; 0 when absent or not a plain regular file. */
export async function logSize(file: string): Promise<number> {
  try {
    const { handle, stats } = await openRegular(file);
    await handle.close();
    return stats.size;
  } catch {
    return 0;
  }
}

/**
 * The last `maxLines` non-empty lines written to `file` after byte `from`,
 * joined with " | ", at most ~2 KiB; "" when there are none or the file is
 * not a plain regular file.
 */
export async function logTail(file: string, from: number, maxLines = 5): Promise<string> {
  let opened;
  try {
    opened = await openRegular(file);
  } catch {
    return '';
  }
  const { handle, stats: st } = opened;
  try {
    // A hard link could make the log another file (a root-only one): quote only a file of its own.
    if (!st.isFile() || st.nlink !== 1 || st.size <= from) return '';
    const start = Math.max(from, st.size - MAX_BYTES);
    const buf = Buffer.alloc(st.size - start);
    const { bytesRead } = await handle.read(buf, 0, buf.length, start);
    const lines = buf.toString('utf8', 0, bytesRead).split('\n').map((l) => l.trimEnd()).filter((l) => l !== '');
    // A first line cut by the byte limit is dropped unless it is all there is.
    if (start > from && lines.length > 1) lines.shift();
    return lines.slice(-maxLines).join(' | ');
  } finally {
    await handle.close();
  }
}

/** How long journalTail waits for journald to have stored an exited app's last lines (it reads streams asynchronously). */
const JOURNAL_SETTLE_MS = 1_000;

/**
 * The last `maxLines` lines the journal holds from the app identified as
 * `identifier` since `sinceMs` (epoch ms), written by a process of `uid`
 * when given, joined with " | ", at most ~2 KiB; "" when there are none
 * or journalctl cannot be run. Asks again for up to a second while there
 * are none: journald may not have read the exited app's stream yet.
 */
export async function journalTail(identifier: string, sinceMs: number, opts: { namespace?: string | undefined; uid?: number | undefined; maxLines?: number } = {}): Promise<string> {
  const args = [
    ...(opts.namespace === undefined ? [] : [`--namespace=${opts.namespace}`]),
    '-t', identifier, ...(opts.uid === undefined ? [] : [`_UID=${opts.uid}`]),
    `--since=@${(sinceMs / 1000).toFixed(3)}`, '-n', String(opts.maxLines ?? 5), '-o', 'cat', '--no-pager', '-q',
  ];
  const deadline = Date.now() + JOURNAL_SETTLE_MS;
  for (;;) {
    const text = await new Promise<string>((resolve) => {
      execFile('journalctl', args, { encoding: 'utf8', timeout: 5_000, maxBuffer: 1024 * 1024 }, (err, stdout) => resolve(err ? '' : stdout));
    });
    const lines = text.split('\n').map((l) => l.trimEnd()).filter((l) => l !== '');
    if (lines.length > 0 || Date.now() >= deadline) {
      const joined = lines.join(' | ');
      return joined.length > MAX_BYTES ? joined.slice(joined.length - MAX_BYTES) : joined;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
