/**
 * Pointing app.bin / app.cfg at a release without a moment where either is
 * missing: the new link is made under a temporary name beside the old one and
 * rename()d over it, which replaces it atomically (the seed's `rm` + `ln -s`
 * leaves a window with no app.bin at all).
 *
 * The links live in the app's folder, which the app's user can write: the
 * folder is opened without following a symlink planted on its path
 * (src/safefs.ts), and the temp link, the rename and the check of what is
 * there all happen inside that open folder, so the root agent never creates
 * or replaces anything elsewhere.
 */
import { randomBytes } from 'node:crypto';
import { lstat, readlink, rename, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Release } from './current.js';
import { fileError, isErrno, RelinkError } from './errors.js';
import { describeKind, SafeFsError, withFolder, type SafeFolder } from './safefs.js';

export interface Links {
  readonly bin: string;
  readonly cfg: string;
}

/** Where each link points now (absolute), or undefined when it does not exist. */
export async function readLinks(links: Links): Promise<{ bin: string | undefined; cfg: string | undefined }> {
  const [bin, cfg] = await Promise.all([readLinkTarget(links.bin), readLinkTarget(links.cfg)]);
  return { bin, cfg };
}

export async function readLinkTarget(link: string): Promise<string | undefined> {
  try {
    const target = await readlink(link);
    return path.resolve(path.dirname(link), target);
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'EINVAL')) return undefined;
    throw err;
  }
}

/**
 * Run `fn` in the open folder of `link`. A folder that is missing or not a
 * folder fails the switch (LINK_FAILED, naming the link); a planted symlink
 * on the way stays UNSAFE_PATH, naming the symlink.
 */
async function inFolderOf<T>(link: string, target: string, fn: (dir: SafeFolder) => Promise<T>): Promise<T> {
  return withFolder(path.dirname(link), fn).catch((err: unknown) => {
    if (!(err instanceof SafeFsError) || err.code === 'UNSAFE_PATH') throw err;
    throw new RelinkError('LINK_FAILED', `${link}: could not point it at ${target}: ${err.message}`, { file: link, rule: 'must be replaceable', found: err.found }, { cause: err });
  });
}

/**
 * Replace `link` with a symlink to `target`. Refuses to replace anything that
 * is not a symlink: a real file named app.bin is somebody's data.
 * Throws RelinkError: LINK_NOT_SYMLINK, LINK_FAILED, UNSAFE_PATH (a planted
 * symlink on the way to the links folder).
 */
export async function swapLink(link: string, target: string): Promise<void> {
  const name = path.basename(link);
  await inFolderOf(link, target, async (dir) => {
    await assertReplaceable(dir, name, link);
    const tmp = dir.at(`.${name}.relink-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await symlink(target, tmp);
      await rename(tmp, dir.at(name));
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw new RelinkError('LINK_FAILED', `${link}: could not point it at ${target}: ${(err as Error).message}`, { file: link, rule: 'must be replaceable', found: (err as Error).message }, { cause: err });
    }
  });
}

/**
 * Point both links at `release`. The config goes first: an app that happens
 * to restart between the two renames then runs the old binary with the new
 * config for an instant rather than a new binary with an old config it may
 * not understand, and nothing reads either before the signal anyway.
 */
export async function relink(links: Links, release: Release): Promise<void> {
  // Refuse before touching anything if either link is not ours to replace.
  const pairs: Array<[string, string]> = [[links.bin, release.bin], [links.cfg, release.cfg]];
  await Promise.all(pairs.map(([link, target]) => inFolderOf(link, target, (dir) => assertReplaceable(dir, path.basename(link), link))));
  await swapLink(links.cfg, release.cfg);
  await swapLink(links.bin, release.bin);
}

async function assertReplaceable(dir: SafeFolder, name: string, link: string): Promise<void> {
  try {
    const st = await lstat(dir.at(name));
    if (!st.isSymbolicLink()) {
      throw fileError('LINK_NOT_SYMLINK', link, undefined, 'must be a symlink (or absent) for relink to replace it', describeKind(st));
    }
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
}
