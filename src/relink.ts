/**
 * Pointing app.bin / app.cfg (and, with `links.dir`, the release folder's
 * link, Capistrano's `current`) at a release without a moment where any is
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
import { lstat, readlink, realpath, rename, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Release } from './current.js';
import { fileError, isErrno, RelinkError } from './errors.js';
import { describeKind, SafeFsError, withFolder, type SafeFolder } from './safefs.js';

export interface Links {
  readonly bin: string;
  readonly cfg: string;
  /** The link to the live release's folder (`links.dir`); undefined: none. */
  readonly dir?: string | undefined;
}

/** Where the links point now (absolute); undefined for a link that does not exist. */
export interface LinkTargets {
  readonly bin: string | undefined;
  readonly cfg: string | undefined;
  /** Set only for an app with `links.dir`. */
  readonly dir?: string | undefined;
  /**
   * With `links.dir`: the folder link does not point at the folder of the
   * release bin and cfg point at (missing, or left elsewhere by an agent
   * killed mid-switch, or a hand edit). What runs is then not "the same
   * release" as current.conf names, so the reconcile repairs it.
   */
  readonly dirStale?: boolean;
}

/**
 * The folder of `release` (real paths) in the releases folder
 * `releasesReal` (a real path): the first folder below it that holds both
 * files (<releasesDir>/2.0 for 2.0/app and 2.0/etc/app.cfg). undefined when
 * a file lies in the releases folder itself, outside it, or the two are in
 * different release folders: no folder can then be linked (issue 15).
 */
export function releaseFolderOf(releasesReal: string, release: { readonly bin: string; readonly cfg: string }): string | undefined {
  const top = (file: string): string | undefined => {
    const rel = path.relative(releasesReal, file);
    if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) return undefined;
    const parts = rel.split(path.sep);
    return parts.length < 2 ? undefined : parts[0];
  };
  const bin = top(release.bin);
  return bin !== undefined && bin === top(release.cfg) ? path.join(releasesReal, bin) : undefined;
}

/** The real path of the releases folder; undefined when it cannot be resolved (then no folder link is judged). */
async function releasesRealOf(releasesDir: string): Promise<string | undefined> {
  return realpath(releasesDir).catch(() => undefined);
}

/**
 * Where each link points now (absolute), or undefined when it does not
 * exist. With `links.dir` (and `releasesDir` to place the folder in) also
 * the folder link, and whether it is stale (see LinkTargets.dirStale).
 */
export async function readLinks(links: Links, releasesDir?: string): Promise<LinkTargets> {
  const [bin, cfg] = await Promise.all([readLinkTarget(links.bin), readLinkTarget(links.cfg)]);
  if (links.dir === undefined || releasesDir === undefined) return { bin, cfg };
  const [dir, releasesReal] = await Promise.all([readLinkTarget(links.dir), releasesRealOf(releasesDir)]);
  const want = bin === undefined || cfg === undefined || releasesReal === undefined ? undefined : releaseFolderOf(releasesReal, { bin, cfg });
  return { bin, cfg, dir, dirStale: want !== undefined && dir !== want };
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
 * Point the links at `release`. With `links.dir`, `releasesDir` places the
 * release's folder (releaseFolderOf), and the folder link is switched too.
 *
 * Each rename(2) is atomic, the two or three together are not, so the order
 * decides what an app reading them mid-switch can see: the config, then the
 * folder, then the binary last. The binary is what starts (or re-executes)
 * the app, so whatever runs the new binary finds its config and its folder
 * (templates, assets, a `current/app -c current/app.cfg` command: one link)
 * already of its release: it never sees a mix. What can see one is the old
 * binary, which still runs anyway until it is signalled after the switch
 * (and for an instant an old process re-reading app.cfg gets the new
 * config, as before issue 15): a new binary with an old config or old
 * assets is the mix it cannot run. A rollback goes through here too, in the
 * same order: the good binary, linked last, never sees the bad release.
 * Nothing is signalled before all of them are switched.
 */
export async function relink(links: Links, release: Release, releasesDir?: string): Promise<void> {
  let folder: string | undefined;
  if (links.dir !== undefined) {
    const releasesReal = releasesDir === undefined ? undefined : await releasesRealOf(releasesDir);
    folder = releasesReal === undefined ? undefined : releaseFolderOf(releasesReal, release);
    if (folder === undefined) {
      throw new RelinkError('LINK_FAILED', `${links.dir}: could not point it at the folder of ${release.bin}: bin and cfg must be in one release folder inside ${releasesDir ?? 'the releases folder'}`,
        { file: links.dir, rule: 'links.dir needs bin and cfg in one release folder', found: `${release.bin}, ${release.cfg}` });
    }
  }
  // cfg, dir, bin: see above.
  const pairs: Array<[string, string]> = [[links.cfg, release.cfg], ...(links.dir === undefined || folder === undefined ? [] : [[links.dir, folder] as [string, string]]), [links.bin, release.bin]];
  // Refuse before touching anything if any link is not ours to replace.
  await Promise.all(pairs.map(([link, target]) => inFolderOf(link, target, (dir) => assertReplaceable(dir, path.basename(link), link))));
  for (const [link, target] of pairs) await swapLink(link, target);
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
