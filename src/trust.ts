/**
 * Trust checks, like sshd's StrictModes: whoever can write current.conf, the
 * releases folder or a release file decides what the agent runs as the
 * app's user (or as root). So each of them, and every folder above them,
 * must be writable by nobody but root and the app's user; otherwise the
 * deploy is refused with the path, its owner and its mode.
 *
 * A folder above may be world-writable only with the sticky bit (/tmp):
 * others can then add entries but not rename or remove ours, and the entry
 * below is checked in its turn. That includes the folder holding
 * current.conf (a candidate checked with `relink validate /tmp/next.conf`,
 * as the README shows): the file itself is checked strictly. The files
 * themselves and the releases folder get no such exception (in a sticky
 * releases folder anybody could add a release). Group write is allowed only
 * when the group holds nobody but root and the app's user (a user-private
 * group). With `links.dir` the release's whole folder is exposed through the
 * link, and is checked entry by entry (Checker.tree, issue 15).
 *
 * The mode bits are not all: a POSIX ACL can let other users or groups
 * write (issue 15: `setfacl -m u:mallory:rw app.2.0` turns mode 0644 into
 * 0664, the mask, which passes for a user-private group). So every path
 * whose group-write bit is set, the only ones an ACL entry can grant write
 * through (src/acl.ts), has its ACL read, and a named user or group entry
 * that grants write is judged as an owner or an owning group would be.
 * Where the ACL cannot be read (getfacl missing) such a path is refused:
 * nothing else says who can write it.
 */
import { lstat, readdir, readlink, realpath, stat } from 'node:fs/promises';
import type { Dirent, Stats } from 'node:fs';
import path from 'node:path';
import type { AppConfig } from './config.js';
import type { CurrentKey, Release } from './current.js';
import { GETFACL_MISSING, readAcls, type Acl, type AclEntry } from './acl.js';
import { releaseFolderOf } from './relink.js';
import { fileError, isErrno, type RelinkError } from './errors.js';
import { describeUser, lookupGroup, lookupUser, resolveRunAs, usersInGroup, type RunAs } from './user.js';

const S_ISVTX = 0o1000;

interface Subject {
  /** The real path to check (and every folder above it). */
  readonly real: string;
  /** The current.conf key it comes from; undefined for current.conf and the releases folder. */
  readonly key: CurrentKey | undefined;
  /** Checked as a folder above (sticky world-writable accepted) rather than strictly. */
  readonly asAbove?: boolean;
}

/**
 * Check current.conf (`file`, and where it points if it is a symlink), the
 * releases folder and the release's files. Returns one problem per path
 * that others could write, in that order; none when all are safe.
 */
export async function checkTrust(app: AppConfig, file: string, release: Release, runAs?: RunAs): Promise<RelinkError[]> {
  const who = runAs ?? await resolveRunAs(app);
  const check = new Checker(file, who);
  const releasesReal = await realpath(app.releasesDir);
  // A symlinked current.conf: whoever can replace the link is checked through
  // its folder, whoever can write the target through the target itself.
  const fileReal = await realpath(file).catch((err: unknown) => (isErrno(err, 'ENOENT') ? undefined : Promise.reject(err)));
  const subjects: Subject[] = [
    { real: await realpath(path.dirname(path.resolve(file))), key: undefined, asAbove: true },
    ...(fileReal === undefined ? [] : [{ real: fileReal, key: undefined }]),
    { real: releasesReal, key: undefined },
    { real: release.bin, key: 'bin.file' },
    { real: release.cfg, key: 'cfg.file' },
    // A folder inside the releases folder holding a release file (2.0/ of
    // 2.0/app, issue 15) is as strict as the releases folder itself: no sticky
    // exception (anybody could add files to a release there).
    ...releaseSubfolders(releasesReal, release.bin).map((real) => ({ real, key: 'bin.file' as const })),
    ...releaseSubfolders(releasesReal, release.cfg).map((real) => ({ real, key: 'cfg.file' as const })),
  ];
  const problems: RelinkError[] = [];
  for (const s of subjects) {
    const p = await check.chain(s.real, s.key, s.asAbove !== true);
    if (p !== undefined) problems.push(p);
  }
  const folder = app.links.dir === undefined ? undefined : releaseFolderOf(releasesReal, release);
  if (folder !== undefined && problems.length === 0) {
    const p = await check.tree(folder, releasesReal);
    if (p !== undefined) problems.push(p);
  }
  return problems;
}

/** The folders strictly between `releasesReal` and `file` (inside it), nearest first. */
function releaseSubfolders(releasesReal: string, file: string): string[] {
  const out: string[] = [];
  for (let p = path.dirname(file); p.startsWith(releasesReal + path.sep); p = path.dirname(p)) out.push(p);
  return out;
}

/**
 * The most entries of a release folder the trust check walks (a Node app's
 * node_modules holds tens of thousands): a folder with more is refused, not
 * half-checked. 10,000 entries took 0.4 to 1.4 s on the 2-core test host
 * with a load average of 7 to 18 (other test runs); each validation pays it
 * once (the agent's on a deploy, relink deploy's and validate's before it).
 */
export const MAX_FOLDER_ENTRIES = 200_000;

/** Entries of a release folder looked at together. */
const TREE_BATCH = 32;

/** A step of `releaseTree`. */
export type TreeStep =
  /** A folder of the walk (the release folder, one in it, or, `linked`, one a symlink leads to: its real path), before it is read. */
  | { readonly kind: 'folder'; readonly path: string; readonly linked: boolean }
  /** What that folder holds, in readdir order (its folders are walked next). */
  | { readonly kind: 'entries'; readonly dir: string; readonly entries: readonly Dirent[] }
  /** A file (not a folder) a symlink leads to outside the release folder: its real path. */
  | { readonly kind: 'target'; readonly path: string }
  /** More than MAX_FOLDER_ENTRIES entries: the walk ends here. */
  | { readonly kind: 'too many' };

/**
 * The one walk of a release folder, for the trust check (Checker.tree) and
 * for prune's protection of what the live release links to (issue 15), so
 * that both see the same things: every folder in it, recursively, without
 * following links; then, for each symlink, where it leads when that is
 * outside the release folder (inside it, the walk gets there anyway): a
 * folder is walked the same way, each real folder once (links in a loop
 * end), a file is a 'target'; a dangling link leads nowhere. At most
 * MAX_FOLDER_ENTRIES entries in all. A folder that cannot be read throws,
 * unless `skipUnreadable` (then it is passed over).
 */
export async function* releaseTree(folder: string, skipUnreadable = false): AsyncGenerator<TreeStep> {
  const folderReal = await realpath(folder);
  const pending = [{ dir: folder, linked: false }];
  const walked = new Set<string>([folderReal]);
  let count = 0;
  while (pending.length > 0) {
    const { dir, linked } = pending.pop()!;
    yield { kind: 'folder', path: dir, linked };
    let entries: Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (skipUnreadable) continue;
      throw err;
    }
    count += entries.length;
    if (count > MAX_FOLDER_ENTRIES) {
      yield { kind: 'too many' };
      return;
    }
    yield { kind: 'entries', dir, entries };
    for (const e of entries) if (e.isDirectory()) pending.push({ dir: path.join(dir, e.name), linked: false });
    for (const e of entries.filter((x) => x.isSymbolicLink())) {
      const real = await realpath(path.join(dir, e.name)).catch(() => undefined);
      if (real === undefined || real === folderReal || real.startsWith(folderReal + path.sep) || walked.has(real)) continue;
      walked.add(real);
      const st = await stat(real).catch(() => undefined);
      if (st?.isDirectory() === true) pending.push({ dir: real, linked: true });
      else if (st !== undefined) yield { kind: 'target', path: real };
    }
  }
}

/**
 * A program the agent runs as itself (a global notifier's command: root
 * under systemd, src/notifiers.ts): whoever could write it, or a folder
 * above it, would run code as root. So it (after resolving symlinks) and
 * every folder above it must be writable by nobody but root and the
 * agent's own user. `file` and `key` name where the config names it. The
 * problem (UNTRUSTED_PATH), or undefined when safe; throws what realpath
 * throws (ENOENT for a program that does not exist).
 */
export async function checkAgentProgram(program: string, file: string, key: string): Promise<RelinkError | undefined> {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  const who: RunAs = { user: String(uid), uid, gid, group: String(gid), home: undefined, configured: false };
  return new Checker(file, who, uid === 0 ? 'root' : `root or the agent's own user (uid ${uid})`).chain(await realpath(program), key);
}

class Checker {
  readonly #file: string;
  readonly #who: RunAs;
  /** Who may write, in words; default root and the app's user. */
  readonly #trusted: string | undefined;
  /**
   * Paths already looked at in this check (the folders above are shared by
   * every subject), and whether strictly: the releases folder may also be
   * the folder holding current.conf, checked before it as a folder above.
   */
  readonly #seen = new Map<string, { strict: boolean; failed: boolean }>();
  readonly #groups = new Map<number, Promise<string[] | undefined>>();

  constructor(file: string, who: RunAs, trusted?: string) {
    this.#file = file;
    this.#who = who;
    this.#trusted = trusted;
  }

  /** `real` itself (strictly unless `strict` is false), then each folder above it up to `/`; the first problem found. */
  async chain(real: string, key: string | undefined, strict = true): Promise<RelinkError | undefined> {
    let p = real;
    let self = strict;
    for (;;) {
      const seen = this.#seen.get(p);
      // A path already refused is said once.
      if (seen === undefined || (self && !seen.strict && !seen.failed)) {
        const found = await this.#one(p, key, self);
        const problem = found instanceof Pending ? await this.#acls([found]) : found;
        this.#seen.set(p, { strict: self, failed: problem !== undefined });
        if (problem !== undefined) return problem;
      }
      const up = path.dirname(p);
      if (up === p) return undefined;
      p = up;
      self = false;
    }
  }

  /**
   * With `links.dir` the whole release folder is exposed through the link
   * (issue 15): the folder and everything in it, recursively, strictly as a
   * release file (owner root or the app's user, writable by nobody else; no
   * sticky exception). A symlink in it cannot be written through (its
   * folder decides), but where it leads must be inside the releases folder
   * after resolving (a `static -> /etc` link would expose /etc through
   * `current/static`); a dangling one is judged by its target's path. What
   * it leads to outside this folder (a `shared/` beside the releases) is
   * exposed as well, so it is checked the same way, walked if a folder
   * (releaseTree: the walk prune's protections share). At most
   * MAX_FOLDER_ENTRIES entries in all. The first problem, or undefined.
   */
  async tree(folder: string, releasesReal: string): Promise<RelinkError | undefined> {
    const trusted = this.#trusted ?? (this.#who.uid === 0 ? 'root' : `root or the app's user ${describeUser(this.#who)}`);
    // The group-writable paths, whose ACLs are read together after the
    // walk (one getfacl for the whole folder, not one per file: a release
    // uploaded with umask 002 has every file group-writable).
    const pending: Pending[] = [];
    for await (const step of releaseTree(folder)) {
      if (step.kind === 'too many') {
        return fileError('UNTRUSTED_PATH', this.#file, undefined, `must be writable by nobody but ${trusted} (like sshd's StrictModes), checked for at most ${MAX_FOLDER_ENTRIES} entries`, `${folder} holds more entries than that`);
      }
      if (step.kind === 'folder' || step.kind === 'target') {
        const found = await this.#one(step.path, undefined, true);
        if (found instanceof Pending) pending.push(found);
        else if (found !== undefined) return found;
        continue;
      }
      const others = step.entries.filter((e) => !e.isDirectory());
      // A few lstats at a time, for libuv's thread pool to work on together;
      // the first problem in readdir order wins.
      for (let i = 0; i < others.length; i += TREE_BATCH) {
        const found = await Promise.all(others.slice(i, i + TREE_BATCH).map((e) => this.#entry(path.join(step.dir, e.name), e.isSymbolicLink(), releasesReal)));
        const bad = found.find((p): p is RelinkError => p !== undefined && !(p instanceof Pending));
        if (bad !== undefined) return bad;
        for (const p of found) if (p instanceof Pending) pending.push(p);
      }
    }
    return this.#acls(pending);
  }

  /** One entry (not a folder) of a release folder: see tree. */
  async #entry(p: string, link: boolean, releasesReal: string): Promise<RelinkError | Pending | undefined> {
    const bad = await this.#one(p, undefined, true);
    if (bad !== undefined || !link) return bad;
    const real = await realpath(p).catch(async () => path.resolve(path.dirname(p), await readlink(p)));
    if (real.startsWith(releasesReal + path.sep)) return undefined;
    return fileError('RELEASE_OUTSIDE', this.#file, undefined, `must be inside the releases folder ${releasesReal}, with everything "links.dir" exposes`, `${p} -> ${real}`);
  }

  /**
   * One path by its owner and mode bits: the problem, undefined when safe,
   * or, when its group-write bit is set and nothing else is wrong, Pending:
   * its ACL decides (#acls).
   */
  async #one(p: string, key: string | undefined, self: boolean): Promise<RelinkError | Pending | undefined> {
    const st = await lstat(p);
    const mode = modeOf(st);
    const refuse = this.#refuse(p, key);
    if (st.uid !== 0 && st.uid !== this.#who.uid) {
      return refuse(`is owned by ${await nameOf(st.uid)}, mode ${mode}`);
    }
    // Symlinks have mode 0777 and cannot be written through; their folder decides.
    if (st.isSymbolicLink()) return undefined;
    if ((st.mode & 0o002) !== 0 && !(st.isDirectory() && !self && (st.mode & S_ISVTX) !== 0)) {
      return refuse(`is writable by every user, mode ${mode}`);
    }
    if ((st.mode & 0o020) !== 0) {
      const others = await this.#otherWriters(st.gid);
      if (others !== undefined && others.length > 0) {
        return refuse(`is writable by group ${await groupName(st.gid)} (${others.join(', ')}), mode ${mode}`);
      }
      if (others === undefined) return refuse(`is writable by group ${st.gid}, which has no entry to say who is in it, mode ${mode}`);
      // A sticky folder above that every user may write (/tmp): an ACL can
      // grant nobody more than that.
      return (st.mode & 0o002) !== 0 ? undefined : new Pending(p, key, st);
    }
    return undefined;
  }

  #refuse(p: string, key: string | undefined): (why: string) => RelinkError {
    const trusted = this.#trusted ?? (this.#who.uid === 0 ? 'root' : `root or the app's user ${describeUser(this.#who)}`);
    const rule = `must be writable by nobody but ${trusted} (like sshd's StrictModes)`;
    return (why) => fileError('UNTRUSTED_PATH', this.#file, key, rule, `${p} ${why}`);
  }

  /**
   * The group-writable paths by their ACLs, read with one getfacl: a named
   * user entry that grants write (after the mask) must name root or the
   * app's user, a named group entry a group holding nobody else (the
   * owning group was judged by the mode bits, which are the mask and so
   * bound its entry). The first problem in `pending`'s order.
   */
  async #acls(pending: readonly Pending[]): Promise<RelinkError | undefined> {
    const { acls, unreadable } = await readAcls(pending.map((c) => c.path));
    for (const c of pending) {
      const refuse = this.#refuse(c.path, c.key);
      const why = unreadable.get(c.path);
      if (why !== undefined) return refuse(unreadableAcl(c.path, c.st, why));
      const problem = await this.#acl(c, acls.get(c.path), refuse);
      if (problem !== undefined) return problem;
    }
    return undefined;
  }

  async #acl(c: Pending, acl: Acl | undefined, refuse: (why: string) => RelinkError): Promise<RelinkError | undefined> {
    for (const e of acl?.entries ?? []) {
      if (!e.writes || e.id === undefined) continue;
      if (e.tag === 'user') {
        if (e.id === 0 || e.id === this.#who.uid) continue;
        const name = (await lookupUser(e.id))?.name;
        return refuse(`is writable by user ${name === undefined ? `uid ${e.id}` : `${name} (uid ${e.id})`} ${through(e, name, c.st)}`);
      }
      const others = await this.#otherWriters(e.id);
      const name = (await lookupGroup(e.id))?.name;
      if (others === undefined) return refuse(`is writable by group ${e.id}, which has no entry to say who is in it, ${through(e, name, c.st)}`);
      if (others.length > 0) return refuse(`is writable by group ${name ?? e.id} (${others.join(', ')}) ${through(e, name, c.st)}`);
    }
    return undefined;
  }

  /** Members of group `gid` other than root and the app's user; undefined if the group is unknown. */
  async #otherWriters(gid: number): Promise<string[] | undefined> {
    let members = this.#groups.get(gid);
    if (members === undefined) {
      members = usersInGroup(gid);
      this.#groups.set(gid, members);
    }
    const list = await members;
    if (list === undefined) return undefined;
    const accounts = await Promise.all(list.map(async (name) => ({ name, uid: (await lookupUser(name))?.uid })));
    return accounts.filter((a) => a.uid !== 0 && a.uid !== this.#who.uid).map((a) => a.name);
  }
}

/** A path whose group-write bit is set: its ACL decides (Checker.#acls). */
class Pending {
  constructor(readonly path: string, readonly key: string | undefined, readonly st: Stats) {}
}

/** `through an ACL (user:mallory:rw-), mode 0664`: the entry as getfacl prints it, by name where there is one. */
function through(e: AclEntry, name: string | undefined, st: Stats): string {
  return `through an ACL (${e.tag}:${name ?? e.id}:${e.perms}), mode ${modeOf(st)}`;
}

const modeOf = (st: Stats): string => (st.mode & 0o7777).toString(8).padStart(4, '0');

/**
 * What is found when a group-writable path's ACL cannot be read: refused,
 * since its mode bits may be an ACL's mask and so say nothing of who can
 * write it, with what to do about it.
 */
function unreadableAcl(p: string, st: Stats, why: string): string {
  const fix = why === GETFACL_MISSING ? `; install it (apt-get install acl), or clear the group write bit (chmod g-w ${p})` : '';
  return `is group-writable, mode ${modeOf(st)}, and its ACL (which could let other users write it) cannot be read: ${why}${fix}`;
}

async function nameOf(uid: number): Promise<string> {
  const a = await lookupUser(uid);
  return a === undefined ? `uid ${uid}` : `${a.name} (uid ${uid})`;
}

async function groupName(gid: number): Promise<string> {
  return (await lookupGroup(gid))?.name ?? String(gid);
}

/** An account that may not write a folder (an app's user), with the app it runs. */
export interface Writer {
  readonly app: string;
  readonly user: string;
  readonly uid: number;
  readonly gid: number;
}

/**
 * The folder of a file the agent writes as root for another program to read
 * (metrics.textfile, read by node_exporter): that folder, and every folder
 * above it, must be writable by no app's user, who could otherwise replace
 * what the agent wrote, and by not every user (world-writable; a folder
 * above may be with the sticky bit, like /tmp). Other accounts (the
 * prometheus user owning /var/lib/prometheus on Debian) are not the apps'.
 * `configFile` and `key` name where the path came from, for the message.
 * Resolves to the first problem (UNTRUSTED_PATH, naming the folder, who can
 * write it and its mode), or undefined; a folder that does not exist is one
 * (FILE_UNREADABLE).
 */
export async function checkFolderForRoot(dir: string, writers: readonly Writer[], configFile: string, key: string): Promise<RelinkError | undefined> {
  const real = await realpath(dir).catch((err: unknown) => (isErrno(err) ? err : Promise.reject(err)));
  if (typeof real !== 'string') return fileError('FILE_UNREADABLE', configFile, key, 'its folder must exist', `${dir}: ${real.code ?? 'error'}`);
  const rule = 'must be in a folder that no app\'s user can write, nor every user (the agent writes it as root, for another program to read)';
  const apps = writers.filter((w) => w.uid !== 0);
  const members = new Map<number, Promise<string[] | undefined>>();
  for (let p = real, self = true; ; self = false) {
    const st = await lstat(p);
    const mode = modeOf(st);
    if ((st.mode & 0o002) !== 0 && !(st.isDirectory() && !self && (st.mode & S_ISVTX) !== 0)) {
      return fileError('UNTRUSTED_PATH', configFile, key, rule, `${p} is writable by every user, mode ${mode}`);
    }
    // An owner can always chmod its folder, write bit or not.
    const owner = apps.find((w) => w.uid === st.uid);
    if (owner !== undefined) return fileError('UNTRUSTED_PATH', configFile, key, rule, `${p} is owned by ${owner.user} (uid ${owner.uid}), the user of app ${owner.app}, mode ${mode}`);
    if ((st.mode & 0o020) !== 0 && apps.length > 0) {
      let list = members.get(st.gid);
      if (list === undefined) members.set(st.gid, (list = usersInGroup(st.gid)));
      const names = await list;
      const inGroup = apps.find((w) => w.gid === st.gid || names?.includes(w.user) === true);
      if (inGroup !== undefined) return fileError('UNTRUSTED_PATH', configFile, key, rule, `${p} is writable by group ${await groupName(st.gid)}, which holds ${inGroup.user} (uid ${inGroup.uid}), the user of app ${inGroup.app}, mode ${mode}`);
      // The group bits may be an ACL's mask (Checker.#acls): its named
      // entries must not let an app's user write either (a sticky folder
      // above that every user may write, /tmp, grants nobody more).
      const found = (st.mode & 0o002) !== 0 ? undefined : await aclWriterForRoot(p, st, apps, members);
      if (found !== undefined) return fileError('UNTRUSTED_PATH', configFile, key, rule, `${p} ${found}`);
    }
    const up = path.dirname(p);
    if (up === p) return undefined;
    p = up;
  }
}

/**
 * checkFolderForRoot's ACL check of a group-writable folder: who among the
 * apps' users its ACL lets write it (a named user entry, or a named group
 * entry for a group holding one), or why its ACL cannot be read; as the
 * found part of the message, undefined when nobody.
 */
async function aclWriterForRoot(p: string, st: Stats, apps: readonly Writer[], members: Map<number, Promise<string[] | undefined>>): Promise<string | undefined> {
  const { acls, unreadable } = await readAcls([p]);
  const why = unreadable.get(p);
  if (why !== undefined) return unreadableAcl(p, st, why);
  for (const e of acls.get(p)?.entries ?? []) {
    if (!e.writes || e.id === undefined) continue;
    const gid = e.id;
    if (e.tag === 'user') {
      const w = apps.find((a) => a.uid === gid);
      if (w !== undefined) return `is writable by ${w.user} (uid ${w.uid}), the user of app ${w.app}, ${through(e, w.user, st)}`;
      continue;
    }
    let list = members.get(gid);
    if (list === undefined) members.set(gid, (list = usersInGroup(gid)));
    const names = await list;
    const w = apps.find((a) => a.gid === gid || names?.includes(a.user) === true);
    const group = (await lookupGroup(gid))?.name;
    if (w !== undefined) return `is writable by group ${group ?? gid}, which holds ${w.user} (uid ${w.uid}), the user of app ${w.app}, ${through(e, group, st)}`;
  }
  return undefined;
}
