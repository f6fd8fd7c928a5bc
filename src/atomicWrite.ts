import { randomBytes } from 'node:crypto';
import { constants as C } from 'node:fs';
import { lstat, open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from './errors.js';
import { withFolder, type SafeFolder } from './safefs.js';

export interface AtomicWriteOptions {
  /** Mode of a new file (the umask applies). Default 0o644. */
  readonly mode?: number;
  /**
   * When the file being replaced is a regular file with one name owned by
   * this uid (the app's user), the new file keeps its owner, group and
   * permission bits: the agent rewriting an app's current.conf (a rollback)
   * must not leave it root-owned, which the app's user could no longer edit
   * in place. A symlink of that user's is replaced by a file of theirs
   * (mode 0644): the link itself is never followed.
   */
  readonly keepOwner?: number;
  /**
   * The new file's owner, group and permission bits, whatever was there
   * before (a file the agent writes for an app's user: the index beside
   * its log, owned and moded as the log). Takes the place of keepOwner.
   */
  readonly owner?: { readonly uid: number; readonly gid: number; readonly mode: number };
  /**
   * fsync the new file before the rename. Default true. False for a file
   * rewritten often that no reader needs to survive a power loss (the
   * metrics textfile): readers still never see half of it.
   */
  readonly sync?: boolean;
}

/**
 * Write `data` to `file` so that readers see the old content or the new,
 * never a mix: temp file in the same folder, fsync, rename over.
 *
 * The folder is reached without following a symlink somebody else could
 * have planted (src/safefs.ts `withFolder`); the temp file is created with
 * O_EXCL | O_NOFOLLOW inside that open folder and renamed there, so neither
 * a planted link nor a folder swapped mid-way redirects the write; owner
 * and mode are set on the descriptor.
 *
 * Throws SafeFsError for an unsafe or missing folder (UNSAFE_PATH,
 * FILE_UNREADABLE), else the system error.
 */
export async function writeFileAtomic(file: string, data: string, opts: AtomicWriteOptions = {}): Promise<void> {
  const name = path.basename(file);
  await withFolder(path.dirname(file), (dir) => writeFileAtomicIn(dir, name, data, opts).catch((err: unknown) => {
    // The system's message names the path it was given, /proc/self/fd/N/NAME: name the real one.
    if (isErrno(err) && err.path?.startsWith('/proc/self/fd/')) {
      const real = path.join(path.dirname(file), path.basename(err.path));
      err.message = err.message.replaceAll(err.path, real);
      err.path = real;
    }
    throw err;
  }));
}

/** writeFileAtomic inside a folder already open (src/safefs.ts): NAME in it; errors name /proc/self/fd paths. */
export async function writeFileAtomicIn(dir: SafeFolder, name: string, data: string, opts: AtomicWriteOptions = {}): Promise<void> {
  let keep: { readonly uid: number; readonly gid: number; readonly mode: number } | undefined = opts.owner;
  if (keep === undefined && opts.keepOwner !== undefined) {
    const st = await lstat(dir.at(name)).catch((err: unknown) => (isErrno(err, 'ENOENT') ? undefined : Promise.reject(err)));
    if (st !== undefined && st.isFile() && st.nlink === 1 && st.uid === opts.keepOwner) keep = st;
    if (st !== undefined && st.isSymbolicLink() && st.uid === opts.keepOwner) keep = Object.assign(st, { mode: 0o644 });
  }
  const tmp = dir.at(`.${name}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
  const handle = await open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, opts.mode ?? 0o644);
  try {
    await handle.writeFile(data);
    if (keep !== undefined) {
      // chown first: it would clear set-id bits that chmod had set (none are kept anyway).
      await handle.chown(keep.uid, keep.gid);
      await handle.chmod(keep.mode & 0o777);
    }
    if (opts.sync !== false) await handle.sync();
  } catch (err) {
    await handle.close();
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await handle.close();
  try {
    await rename(tmp, dir.at(name));
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}
