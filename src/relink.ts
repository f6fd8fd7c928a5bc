/**
 * Pointing app.bin / app.cfg at a release without a moment where either is
 * missing: the new link is made under a temporary name beside the old one and
 * rename()d over it, which replaces it atomically (the seed's `rm` + `ln -s`
 * leaves a window with no app.bin at all).
 */
import { randomBytes } from 'node:crypto';
import { lstat, readlink, rename, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Release } from './current.js';
import { fileError, isErrno, RelinkError } from './errors.js';

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
 * Replace `link` with a symlink to `target`. Refuses to replace anything that
 * is not a symlink: a real file named app.bin is somebody's data.
 */
export async function swapLink(link: string, target: string): Promise<void> {
  await assertReplaceable(link);
  const tmp = path.join(path.dirname(link), `.${path.basename(link)}.relink-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await symlink(target, tmp);
    await rename(tmp, link);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    if (err instanceof RelinkError) throw err;
    throw new RelinkError('LINK_FAILED', `${link}: could not point it at ${target}: ${(err as Error).message}`, { file: link, rule: 'must be replaceable', found: (err as Error).message }, { cause: err });
  }
}

/**
 * Point both links at `release`. The config goes first: an app that happens
 * to restart between the two renames then runs the old binary with the new
 * config for an instant rather than a new binary with an old config it may
 * not understand, and nothing reads either before the signal anyway.
 */
export async function relink(links: Links, release: Release): Promise<void> {
  // Refuse before touching anything if either link is not ours to replace.
  await Promise.all([assertReplaceable(links.bin), assertReplaceable(links.cfg)]);
  await swapLink(links.cfg, release.cfg);
  await swapLink(links.bin, release.bin);
}

async function assertReplaceable(link: string): Promise<void> {
  try {
    const st = await lstat(link);
    if (!st.isSymbolicLink()) {
      throw fileError('LINK_NOT_SYMLINK', link, undefined, 'must be a symlink (or absent) for relink to replace it', st.isDirectory() ? 'a directory' : 'a regular file');
    }
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
}
