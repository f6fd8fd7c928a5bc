/**
 * The last lines an app wrote to its log, for the reason of a start that
 * failed: "exited right after start (see app.log)" sent operators to the
 * log for a cause (`Address already in use`) that fits on one line (issue
 * 9, item 21).
 *
 * The log lies in a folder the app's user can write, and the agent reads it
 * as root: it is opened without following a symlink (O_NOFOLLOW), without
 * blocking on a FIFO (O_NONBLOCK), and read only if it is a regular file
 * with no other name (a hard link to somebody else's file is not quoted).
 * Anything else gives nothing: a message must never quote a file the app's
 * user could not read.
 */
import { constants, type Stats } from 'node:fs';
import { lstat, open } from 'node:fs/promises';

/** Bytes read from the end; lines beyond `maxLines` are dropped from the front. */
const MAX_BYTES = 2048;

/** Size of `file` now, as the offset from which a new run's output starts; 0 when absent or not a regular file. */
export async function logSize(file: string): Promise<number> {
  const st: Stats | undefined = await lstat(file).catch(() => undefined);
  return st?.isFile() ? st.size : 0;
}

/**
 * The last `maxLines` non-empty lines written to `file` after byte `from`,
 * joined with " | ", at most ~2 KiB; "" when there are none or the file is
 * not a plain regular file.
 */
export async function logTail(file: string, from: number, maxLines = 5): Promise<string> {
  let handle;
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return '';
  }
  try {
    const st = await handle.stat();
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
