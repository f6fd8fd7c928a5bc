/**
 * Watches on folders named by path, kept on whatever folder is at that path
 * now. An inotify watch (node:fs.watch) is on a folder's inode, not on its
 * path: once the folder is deleted, moved away or replaced (`rm -rf deploy;
 * mkdir deploy`, another folder moved in, a symlink on its path re-pointed)
 * it hears nothing from the folder now at that path, forever, and says
 * nothing about it. So each folder's identity is checked whenever something
 * suggests it changed, the watch is re-armed on the folder there now, and
 * the owner is told: the loss and the recovery (onFolder), and that the
 * files it cares about may have changed unseen (onRearmed). A folder that
 * does not exist (yet) is waited for the same way.
 *
 * What suggests a change, and why (each has a scenario in test/watch.test.ts):
 * - inotify's own word: an event on the watched folder itself (deleted:
 *   IN_DELETE_SELF, moved: IN_MOVE_SELF) reaches fs.watch named by the
 *   folder's own name (libuv's uv__inotify_read; measured: "rename", twice
 *   for `rm -rf`, once for a move, also when an ancestor is deleted);
 * - a poll (FOLDER_POLL_MS) where inotify has nothing to say: a missing
 *   folder, and one whose path goes through a symlink (measured: re-pointing
 *   the link gives the watch on the old target no event at all);
 * - sync() by the owner (CurrentWatcher before each report) and check() on
 *   the agent's periodic re-check: what nothing above sees, such as an
 *   ancestor renamed away and the tree rebuilt.
 *
 * node:fs.watch, not chokidar (which CurrentWatcher used before). Measured
 * with chokidar 5.0.0 on Linux 6.18, ext4, watching the folder with depth 0:
 * on `rm -rf` of the folder it reports `unlink` for the files in it and
 * nothing for the folder itself (no unlinkDir, no error), and after `mkdir`
 * and a write in the new folder, nothing at all; watching the parent gives
 * unlinkDir and addDir for a delete and a mkdir, but nothing for a folder
 * renamed away and another moved in (the path exists before and after). And
 * chokidar shares one fs.watch per path among all its watchers in a
 * process: one re-armed on the new folder while another (a second app in
 * the same releases folder) still holds the old one is attached to the dead
 * watch, and stays deaf even after the other closes. It also dropped events
 * (5 ms per file, paulmillr/chokidar#1333 and #1084; 100 ms after a
 * removal; 50 ms for `change`, #1455). Each fs.watch is its own handle on
 * the inode's inotify watch, and reports every event libuv reads.
 */
import { watch as watchFolder, type FSWatcher } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from './errors.js';

/** What happened to a watched folder: see FolderOptions.onFolder. */
export type FolderEvent = 'missing' | 'back';

export interface FolderOptions {
  /** The first poll of a folder found missing comes after this (ms), then twice as long each time, up to FOLDER_POLL_MS. */
  readonly pollMs: number;
  /** The folders to watch now (absolute paths); asked before each check. */
  readonly wanted: () => Promise<ReadonlySet<string>>;
  /** An inotify event in a watched folder: the entry's name, or null if inotify gave none. */
  readonly onEntry: (dir: string, name: string | null) => void;
  /** A folder was (re-)armed after a loss or a sign of one: whatever is in it may have changed unseen. */
  readonly onRearmed: () => void;
  /** "missing" / "back", once per transition of a folder (see WatchOptions.onFolder in watch.ts). */
  readonly onFolder: (event: FolderEvent, dir: string) => void;
  readonly onError: (err: Error) => void;
}

/**
 * How often a folder is looked at when no inotify event can tell that it
 * changed (see the file comment). Polls fall due on whole seconds of the
 * clock, as the agent's supervision checks do, so those of all apps come
 * together rather than spread over the second.
 *
 * A missing folder is polled rather than awaited by watching its nearest
 * existing ancestor: that ancestor may be the app's folder, /srv or /tmp,
 * where other programs' files (app.log) make a steady stream of events, each
 * of which would wake the agent; and a tree rebuilt level by level (`mkdir
 * -p`) would need the ancestor watch moved down at every level. One stat a
 * second costs less. The first polls after a loss come quicker (from pollMs,
 * doubling): `rm -rf deploy; mkdir deploy` in a script brings the folder back
 * within milliseconds, and the deploy after it should not wait a second.
 */
const FOLDER_POLL_MS = 1000;

/**
 * A watched folder and what is known about it. Its identity is device, inode
 * and birth time: on ext4 a folder made right after `rm -rf` of another gets
 * the same inode number (measured: 5 times out of 5), and the birth time
 * (nanoseconds, statx) tells them apart. A kernel with coarse (per-tick)
 * timestamps can still give both the same birth time; inotify's word on the
 * folder itself covers that case: the watch is then re-armed and the owner
 * told to look again, whatever the identity says.
 */
interface Folder {
  readonly dir: string;
  /** The watch on it; undefined while it is missing or could not be watched. */
  watch: FSWatcher | undefined;
  /** The identity of the folder the watch is on. */
  id: string | undefined;
  /** Its path goes through a symlink: polled. */
  linked: boolean;
  /** inotify said the folder itself was deleted or moved: re-arm, whatever the identity. */
  stale: boolean;
  /** "missing" was reported and "back" not yet. */
  lost: boolean;
  /** The last error reported for it, so that a poll does not report it again every second. */
  error: string | undefined;
}

export class FolderWatches {
  readonly #opts: FolderOptions;
  readonly #folders = new Map<string, Folder>();
  /** The check in progress, and whether another was asked for meanwhile. */
  #syncing: Promise<void> | undefined;
  #again = false;
  #pollTimer: NodeJS.Timeout | undefined;
  /** The delay of the next poll of a missing folder while it is below FOLDER_POLL_MS. */
  #backoff = FOLDER_POLL_MS;
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(opts: FolderOptions) {
    this.#opts = opts;
  }

  /**
   * Watch the wanted folders, each on the folder at its path now; drop the
   * others. Coalesced: a call while one runs makes it run once more, and
   * resolves after that. Rejects when a folder exists but cannot be looked
   * at or watched (EACCES; ENOSPC: the inotify watch limit,
   * fs.inotify.max_user_watches); a missing one is no error.
   */
  sync(): Promise<void> {
    if (this.#syncing !== undefined) {
      this.#again = true;
      return this.#syncing;
    }
    this.#syncing = (async () => {
      do {
        this.#again = false;
        await this.#syncOnce();
      } while (this.#again && !this.#closed);
    })().finally(() => {
      this.#syncing = undefined;
      this.#schedulePoll();
    });
    return this.#syncing;
  }

  /** sync(), its error passed to onError (once, not on every poll). Never rejects. */
  async check(): Promise<void> {
    if (this.#closed) return;
    await this.sync().catch((err: unknown) => this.#fail(err));
  }

  /** Closes every watch and the poll, and waits for a check in progress; the same promise every time. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      clearTimeout(this.#pollTimer);
      for (const f of this.#folders.values()) disarm(f);
      await this.#syncing?.catch(() => undefined);
    })();
    return this.#closing;
  }

  async #syncOnce(): Promise<void> {
    const dirs = await this.#opts.wanted();
    if (this.#closed) return;
    for (const [dir, f] of this.#folders) {
      if (dirs.has(dir)) continue;
      disarm(f);
      this.#folders.delete(dir);
    }
    for (const dir of dirs) {
      if (!this.#folders.has(dir)) {
        this.#folders.set(dir, { dir, watch: undefined, id: undefined, linked: false, stale: false, lost: false, error: undefined });
      }
    }
    let rearmed = false;
    for (const f of [...this.#folders.values()]) {
      if (await this.#verify(f)) rearmed = true;
      if (this.#closed) return;
    }
    // After the watch is back: what was written before it is seen now.
    if (rearmed) this.#opts.onRearmed();
  }

  /**
   * Make sure the watch is on the folder at f.dir now. True when the owner
   * must look again: the folder came back, was replaced, or inotify said it
   * was deleted or moved.
   */
  async #verify(f: Folder): Promise<boolean> {
    const id = await folderId(f.dir);
    if (this.#closed) return false;
    if (f.watch !== undefined && !f.stale && id === f.id) return false;
    const stale = f.stale;
    if (f.watch !== undefined && id !== f.id) this.#lose(f); // gone, or replaced
    disarm(f);
    if (id === undefined) {
      this.#lose(f);
      return false;
    }
    let linked: boolean;
    try {
      linked = (await realpath(f.dir)) !== f.dir;
    } catch (err) {
      if (!isMissing(err)) throw err;
      this.#lose(f);
      return false;
    }
    if (this.#closed) return false;
    try {
      f.watch = this.#arm(f);
    } catch (err) {
      if (!isMissing(err)) throw err;
      this.#lose(f);
      return false;
    }
    f.id = id;
    f.linked = linked;
    f.stale = false;
    f.error = undefined;
    // Replaced between the stat and the watch: the next round sees it.
    if ((await folderId(f.dir)) !== id) this.#again = true;
    if (this.#closed) return false;
    if (f.lost) {
      f.lost = false;
      this.#event('back', f.dir);
      return true;
    }
    // Recreated under the same identity (see Folder), or a false alarm (an
    // entry named like its folder): look again, to be sure.
    return stale;
  }

  #arm(f: Folder): FSWatcher {
    const own = path.basename(f.dir);
    const w = watchFolder(f.dir, { persistent: true }, (event, name) => {
      if (this.#closed || f.watch !== w) return;
      this.#opts.onEntry(f.dir, name);
      if (name === null || (event === 'rename' && name === own)) this.#suspect(f);
    });
    w.on('error', (err) => {
      if (this.#closed || f.watch !== w) return;
      this.#opts.onError(err);
      this.#suspect(f);
    });
    return w;
  }

  #suspect(f: Folder): void {
    f.stale = true;
    void this.check();
  }

  #lose(f: Folder): void {
    if (f.lost) return;
    f.lost = true;
    this.#backoff = this.#opts.pollMs;
    this.#event('missing', f.dir);
  }

  #event(event: FolderEvent, dir: string): void {
    if (this.#closed) return;
    try {
      this.#opts.onFolder(event, dir);
    } catch (err) {
      this.#opts.onError(err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** A folder that cannot be looked at or watched (EACCES...): said once, retried by the poll. */
  #fail(err: unknown): void {
    if (this.#closed) return;
    const e = err instanceof Error ? err : new Error(String(err));
    const unarmed = [...this.#folders.values()].filter((f) => f.watch === undefined);
    if (unarmed.length > 0 && unarmed.every((f) => f.error === e.message)) return;
    for (const f of unarmed) f.error = e.message;
    this.#opts.onError(e);
  }

  /** Poll what no event can tell about: a missing or unwatchable folder, a symlinked one. */
  #schedulePoll(): void {
    clearTimeout(this.#pollTimer);
    this.#pollTimer = undefined;
    if (this.#closed) return;
    const folders = [...this.#folders.values()];
    const unarmed = folders.some((f) => f.watch === undefined);
    if (!unarmed && !folders.some((f) => f.linked)) return;
    let delay: number;
    if (unarmed && this.#backoff < FOLDER_POLL_MS) {
      delay = this.#backoff;
      this.#backoff *= 2;
    } else {
      delay = FOLDER_POLL_MS - (Date.now() % FOLDER_POLL_MS);
    }
    this.#pollTimer = setTimeout(() => {
      this.#pollTimer = undefined;
      void this.check();
    }, delay);
  }
}

/** ENOENT, or ENOTDIR: something on the path is a file where a folder should be. */
export function isMissing(err: unknown): boolean {
  return isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR');
}

/** Device, inode and birth time (see Folder); undefined if there is no folder at `dir`. */
async function folderId(dir: string): Promise<string | undefined> {
  try {
    const st = await stat(dir, { bigint: true });
    return st.isDirectory() ? `${st.dev}:${st.ino}:${st.birthtimeNs}` : undefined;
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
}

function disarm(f: Folder): void {
  f.watch?.close();
  f.watch = undefined;
}
