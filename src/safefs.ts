/**
 * Opening files where somebody else can plant things, as root.
 *
 * The agent runs as root and works in folders the apps' users can write: the
 * app's folder (log file, app.bin/app.cfg links and their temp names, PID
 * file), the releases folder (current.conf and its temp file). A user who
 * owns such a folder can replace any entry in it between two of the agent's
 * system calls: with a symlink to /etc/shadow (the agent would open, append
 * to and chown the target), a FIFO (the agent's open or read would block for
 * good), a hard link to a root-owned file (the agent would chown it), or a
 * symlink in place of a folder on the path (`logs` -> /etc).
 *
 * What this module guarantees:
 * - Paths are walked one component at a time, each opened with O_PATH |
 *   O_NOFOLLOW relative to the folder opened before it, through
 *   `/proc/self/fd/N/NAME`: the kernel resolves NAME inside the folder that
 *   descriptor N holds, whatever happens to the path string meanwhile (Node
 *   has no openat(2); this is the same lookup).
 * - A symlink is followed only where following it gives nobody anything:
 *   under the 'trusted' policy, only in a folder that root (or the agent's
 *   own user) alone can write, or a sticky folder when the link itself is
 *   root's (`/srv -> /data/srv` made by the admin). Any other link is
 *   refused, naming it, who can write its folder and where it points. Under
 *   'follow' (reads whose result is checked otherwise) every link is followed.
 * - Nothing but a regular file is ever opened for reading or writing: the
 *   final component is first opened with O_PATH (which does not open a FIFO
 *   or a device, and never blocks), checked with fstat, and then reopened
 *   through its descriptor, which names the same inode.
 * - Ownership changes happen with fchown on the descriptor that was checked,
 *   never by path, and never on a file with another name somewhere else.
 * - Every refusal is a `SafeFsError` (a RelinkError) naming the file, the
 *   rule and what was found, with a `problem` kind and a code the caller may
 *   choose per kind.
 *
 * Linux only (O_PATH, /proc/self/fd), like the rest of the agent.
 */
import { execFile } from 'node:child_process';
import { closeSync, constants as C, fstat as fstatCb, open as openCb, openSync, type Stats } from 'node:fs';
import { lstat, mkdir, open, readdir, readlink, rmdir, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { readAcls } from './acl.js';
import { fileError, isErrno, RelinkError, type ErrorCode } from './errors.js';
import { describeUser, lookupGroup, lookupUser } from './user.js';

/**
 * O_PATH from the kernel's generic fcntl.h (x86-64, arm64 and most others);
 * Node's fs.constants does not export it.
 */
export const O_PATH = 0o10000000;
const S_ISVTX = 0o1000;
/** As the kernel's MAXSYMLINKS: more links than this in one path is a loop. */
const MAX_LINKS = 40;

/** What was wrong, independent of the message; callers map kinds to their own codes. */
export type SafeFsProblem =
  /** the file (or a folder on its path) does not exist */
  | 'missing'
  /** a component of the path that must be a folder is not one */
  | 'not-directory'
  /** the file is a FIFO, a device, a socket or a folder where a regular file is needed */
  | 'not-regular'
  /** above the caller's size limit */
  | 'too-large'
  /** a symlink in a folder somebody else can write */
  | 'symlink'
  /** more than MAX_LINKS symlinks */
  | 'loop'
  /** a file with more than one name, which the agent would hand to the app's user */
  | 'hard-link'
  /** a file owned by neither the agent nor the app's user */
  | 'owner'
  /** the reader the caller named may not read it (mode bits) */
  | 'permission'
  /** any other error from the system (EACCES for a non-root agent, EIO, ...) */
  | 'io';

/** Codes used when the caller names none for a kind. */
const DEFAULT_CODES: Record<SafeFsProblem, ErrorCode> = {
  missing: 'FILE_UNREADABLE',
  'not-directory': 'FILE_UNREADABLE',
  'not-regular': 'UNSAFE_PATH',
  'too-large': 'FILE_UNREADABLE',
  symlink: 'UNSAFE_PATH',
  loop: 'UNSAFE_PATH',
  'hard-link': 'UNSAFE_PATH',
  owner: 'UNSAFE_PATH',
  permission: 'FILE_UNREADABLE',
  io: 'FILE_UNREADABLE',
};

export type ProblemCodes = Partial<Record<SafeFsProblem, ErrorCode>>;

/** A refusal from this module: a RelinkError that also says which kind of problem it was. */
export class SafeFsError extends RelinkError {
  readonly problem: SafeFsProblem;
  constructor(problem: SafeFsProblem, code: ErrorCode, file: string, rule: string, found: string | undefined, cause?: unknown) {
    const e = fileError(code, file, undefined, rule, found);
    super(code, e.message, { file, rule, found }, cause === undefined ? undefined : { cause });
    this.name = 'SafeFsError';
    this.problem = problem;
  }
}

/**
 * 'trusted': follow a symlink only in a folder nobody but root (or the
 * agent's own user) can write; refuse any other. 'follow': follow every
 * symlink (for reads whose result is checked otherwise: who may read the
 * file, that it lies inside the releases folder).
 */
export type LinkPolicy = 'trusted' | 'follow';

/** Who a file is read for: the app's user, whose rights the agent must not exceed. */
export interface Reader {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  /** Supplementary groups (the primary one may be repeated here). */
  readonly groups: readonly number[];
}

interface Ctx {
  /** The path as the caller gave it, for messages about the file itself. */
  readonly file: string;
  readonly links: LinkPolicy;
  readonly reader: Reader | undefined;
  readonly codes: ProblemCodes;
  /** Create missing folders (0755, the agent's) on the way. */
  readonly createFolders: boolean;
}

/** An open folder on a checked path. */
export interface SafeFolder {
  /** The folder's path with every followed link resolved. */
  readonly path: string;
  /**
   * A path for NAME (one component: no '/', not '.' or '..') in this
   * folder that the kernel resolves from the open folder, not from the
   * folder's path: pass it to symlink, rename, lstat, unlink, open.
   */
  at(name: string): string;
}

/**
 * An O_PATH descriptor of a folder. Raw descriptors, not FileHandles: an
 * O_PATH descriptor is closed synchronously (it was never opened for I/O,
 * so close has nothing to flush), which keeps a walk at one thread-pool
 * round trip per path component.
 */
interface Dir extends SafeFolder {
  readonly fd: number;
  /** fstat, asked only when a decision needs it (a link found, a reader to check). */
  stat(): Promise<Stats>;
}

const agentUid = (): number => process.geteuid?.() ?? 0;
const trustedUid = (uid: number): boolean => uid === 0 || uid === agentUid();
const asWhom = (): string => (agentUid() === 0 ? 'root' : `uid ${agentUid()}`);
const procPath = (fd: number): string => `/proc/self/fd/${fd}`;

/** open(2) to a raw descriptor (an O_PATH one is closed with closeSync). */
export function openFd(p: string, flags: number, mode?: number): Promise<number> {
  return new Promise((resolve, reject) => openCb(p, flags, mode, (err, fd) => (err ? reject(err) : resolve(fd))));
}

export function fstatFd(fd: number): Promise<Stats> {
  return new Promise((resolve, reject) => fstatCb(fd, (err, st) => (err ? reject(err) : resolve(st))));
}

/** The lstat of NAME in `dir`, on a descriptor of the entry itself (no path lookup twice). */
async function lstatAt(dir: Dir, name: string): Promise<Stats> {
  const fd = await openFd(dir.at(name), O_PATH | C.O_NOFOLLOW);
  try {
    return await fstatFd(fd);
  } finally {
    closeSync(fd);
  }
}

function fail(ctx: Ctx, problem: SafeFsProblem, file: string, rule: string, found?: string, cause?: unknown): SafeFsError {
  return new SafeFsError(problem, ctx.codes[problem] ?? DEFAULT_CODES[problem], file, rule, found, cause);
}

/** `file` (the caller's, or a folder on its path) does not exist. */
function missing(ctx: Ctx, file: string, cause?: unknown): SafeFsError {
  return fail(ctx, 'missing', ctx.file, 'must exist', file === ctx.file ? 'no such file' : `no such file or folder ${file}`, cause);
}

function ioError(ctx: Ctx, file: string, err: unknown, rule: string): SafeFsError {
  if (err instanceof SafeFsError) return err;
  if (isErrno(err, 'ENOENT')) return missing(ctx, file, err);
  if (isErrno(err, 'ENOTDIR')) return fail(ctx, 'not-directory', ctx.file, 'must be reached through folders', `${file} is not a folder`, err);
  if (isErrno(err, 'ELOOP')) return fail(ctx, 'loop', ctx.file, `must be reached through at most ${MAX_LINKS} symlinks`, 'a symlink loop', err);
  return fail(ctx, 'io', file, rule, isErrno(err) ? err.code : String(err), err);
}

/** "a FIFO", "a directory", ... for messages. */
export function describeKind(st: Stats): string {
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a directory';
  if (st.isSymbolicLink()) return 'a symlink';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'a special file';
}

const modeText = (st: Stats): string => (st.mode & 0o7777).toString(8).padStart(4, '0');

async function userText(uid: number): Promise<string> {
  const u = await lookupUser(uid).catch(() => undefined);
  return describeUser({ user: u?.name ?? String(uid), uid });
}

/** "web", "the group staff", "every user": who besides root can write a folder. */
async function writersOf(st: Stats): Promise<string> {
  if (!trustedUid(st.uid)) return (await lookupUser(st.uid).catch(() => undefined))?.name ?? `uid ${st.uid}`;
  if ((st.mode & 0o002) !== 0) return 'every user';
  return `the group ${(await lookupGroup(st.gid).catch(() => undefined))?.name ?? st.gid}`;
}

/**
 * May a symlink found in folder `dir` be followed by the agent? Only when
 * nobody but root (or the agent's user) could have put it there or can
 * replace it: the folder is theirs and nobody else may write it, or it is
 * sticky (/tmp) and both the folder and the link are theirs.
 */
function linkTrusted(dir: Stats, link: Stats): boolean {
  if (!trustedUid(dir.uid)) return false;
  if ((dir.mode & 0o022) === 0) return true;
  return (dir.mode & S_ISVTX) !== 0 && trustedUid(link.uid);
}

/** Mode-bit check as the kernel does it (owner class, then group, then other); root may do anything but execute a file with no x bit. */
function permits(st: Stats, r: Reader, bit: 4 | 2 | 1): boolean {
  if (r.uid === 0) return bit !== 1 || st.isDirectory() || (st.mode & 0o111) !== 0;
  if (st.uid === r.uid) return ((st.mode >> 6) & bit) !== 0;
  if (st.gid === r.gid || r.groups.includes(st.gid)) return ((st.mode >> 3) & bit) !== 0;
  return (st.mode & bit) !== 0;
}

/**
 * What keeps the app's user `r` from a release file `real` (absolute and
 * resolved: no symlink on the way): a folder on the way it may not search,
 * or the file's own bits for `need` (4 read, 1 execute, 5 both), checked as
 * the kernel checks mode bits (owner, then group, then other). Undefined
 * when nothing does. A denial on a path with an extended ACL is not
 * reported: the ACL may grant it, and the kernel decides at the start
 * (src/acl.ts; getfacl is run only then). Returns the refusal's "found":
 * `the folder /srv/web/release is owned by root (uid 0), mode 0700`.
 */
export async function deniedTo(real: string, r: Reader, need: 1 | 4 | 5): Promise<string | undefined> {
  if (r.uid === 0 && (need & 1) === 0) return undefined;
  const steps: Array<{ at: string; bits: Array<4 | 1> }> = [];
  for (let dir = path.dirname(real); ; dir = path.dirname(dir)) {
    steps.unshift({ at: dir, bits: [1] });
    if (dir === path.dirname(dir)) break;
  }
  steps.push({ at: real, bits: (need & 4) !== 0 ? ((need & 1) !== 0 ? [4, 1] : [4]) : [1] });
  for (const { at, bits } of steps) {
    const st = await lstat(at).catch(() => undefined);
    if (st === undefined || bits.every((b) => permits(st, r, b))) continue;
    // An ACL found, or none could be read (getfacl missing): not refused on a guess.
    const acl = await readAcls([at]).catch(() => undefined);
    if (acl === undefined || acl.acls.has(at) || acl.unreadable.has(at)) return undefined;
    return `${at === real ? at : `the folder ${at}`} is ${await ownership(st)}`;
  }
  return undefined;
}

/** "owned by root (uid 0), group web, mode 0640". */
async function ownership(st: Stats): Promise<string> {
  return `owned by ${await userText(st.uid)}, group ${(await lookupGroup(st.gid).catch(() => undefined))?.name ?? st.gid}, mode ${modeText(st)}`;
}

/**
 * What the kernel denied the app's user on `at` (the release file `real`,
 * or a folder on the way to it), for a refusal's "found":
 * `the folder /srv/web/release/acl is owned by root (uid 0), group root,
 * mode 0755, ACL user:1001:---, mask::r-x`. The ACL's named user and group
 * entries and its mask as getfacl prints them (numeric ids); none read: not
 * said.
 */
export async function deniedByAcl(at: string, real: string): Promise<string> {
  const st = await lstat(at).catch(() => undefined);
  const what = at === real ? at : `the folder ${at}`;
  if (st === undefined) return what;
  const acl = (await readAcls([at]).catch(() => undefined))?.acls.get(at);
  const entries = acl === undefined ? [] : [
    ...acl.entries.filter((e) => e.id !== undefined).map((e) => `${e.tag}:${e.id}:${e.perms}`),
    ...(acl.mask === undefined ? [] : [`mask::${acl.mask}`]),
  ];
  return `${what} is ${await ownership(st)}${entries.length === 0 ? '' : `, ACL ${entries.join(', ')}`}`;
}

/**
 * The kernel's word on what the app's user `r` may do, ACLs and all: one
 * `setpriv --reuid --regid --init-groups` (util-linux, as the app is
 * started: src/launch.ts) running `test -r` / `test -x` on each path.
 * Returns, per check, whether it is denied; undefined when that could not
 * be asked (setpriv missing, the agent not root).
 */
export async function deniedByKernel(r: Reader, checks: ReadonlyArray<{ readonly path: string; readonly op: 'r' | 'x' }>): Promise<boolean[] | undefined> {
  if (checks.length === 0) return [];
  const groups = r.name === String(r.uid) ? '--clear-groups' : '--init-groups';
  const script = 'while [ $# -gt 1 ]; do if test "$1" "$2"; then echo y; else echo n; fi; shift 2; done';
  const args = [`--reuid=${r.uid}`, `--regid=${r.gid}`, groups, '--', '/bin/sh', '-c', script, 'sh', ...checks.flatMap((c) => [`-${c.op}`, c.path])];
  const out = await new Promise<string | undefined>((resolve) => {
    execFile('/usr/bin/setpriv', args, { timeout: 5_000, env: { PATH: '/usr/bin:/bin', LC_ALL: 'C' } }, (err, stdout) => resolve(err === null ? stdout : undefined));
  });
  const said = out?.split('\n').filter((l) => l !== '') ?? [];
  return said.length === checks.length ? said.map((l) => l === 'n') : undefined;
}

/**
 * The kernel's word on whether the app's user `r` may read `file` as it
 * is now, ACLs included (the mode bits were checked as it was opened):
 * one `setpriv` as that user running `test -r`, then `stat -L` for the
 * device and inode the path leads to. Returns "dev:ino" when readable
 * (the caller compares it with what it read: the same file, not one
 * swapped in meanwhile), false when denied, undefined when it could not
 * be asked (setpriv missing, the agent not root).
 */
export async function kernelReadable(r: Reader, file: string): Promise<string | false | undefined> {
  const groups = r.name === String(r.uid) ? '--clear-groups' : '--init-groups';
  const script = 'if test -r "$1"; then /usr/bin/stat -L -c %d:%i -- "$1"; else echo n; fi';
  const out = await new Promise<string | undefined>((resolve) => {
    execFile('/usr/bin/setpriv', [`--reuid=${r.uid}`, `--regid=${r.gid}`, groups, '--', '/bin/sh', '-c', script, 'sh', file], { timeout: 5_000, env: { PATH: '/usr/bin:/bin', LC_ALL: 'C' } }, (err, stdout) => resolve(err === null ? stdout.trim() : undefined));
  });
  if (out === undefined) return undefined;
  if (out === 'n') return false;
  return /^\d+:\d+$/.test(out) ? out : undefined;
}

async function readerRefusal(ctx: Ctx, r: Reader, what: string, st: Stats): Promise<SafeFsError> {
  return fail(ctx, 'permission', ctx.file, `must be readable by the app's user ${describeUser({ user: r.name, uid: r.uid })}, for whom the agent reads it`,
    `${what} is ${await ownership(st)}`);
}

/** With a reader: may it search `dir` (to reach an entry in it)? */
async function assertSearchable(ctx: Ctx, dir: Dir): Promise<void> {
  if (ctx.reader === undefined) return;
  const st = await dir.stat();
  if (!permits(st, ctx.reader, 1)) throw await readerRefusal(ctx, ctx.reader, `the folder ${dir.path}`, st);
}

/**
 * The symlink NAME (with stats `link`) found in `dir`: its target if the
 * policy lets the agent follow it, else a refusal naming it, who can write
 * its folder and where it points. Counts toward the loop limit.
 */
async function follow(ctx: Ctx, dir: Dir, name: string, link: Stats, links: { n: number }): Promise<string> {
  const here = path.join(dir.path, name);
  if (ctx.links === 'trusted') {
    const dirStats = await dir.stat();
    if (!linkTrusted(dirStats, link)) {
      const target = await readlink(dir.at(name)).catch(() => '?');
      throw fail(ctx, 'symlink', here, `must not be a symlink (a link in a folder ${await writersOf(dirStats)} can write is not followed as ${asWhom()})`, `symlink to ${target}`);
    }
  }
  if (++links.n > MAX_LINKS) throw fail(ctx, 'loop', ctx.file, `must be reached through at most ${MAX_LINKS} symlinks`, 'a symlink loop');
  return readlink(dir.at(name));
}

function folder(fd: number, p: string, owned = true): Dir & { readonly owned: boolean } {
  let stats: Promise<Stats> | undefined;
  return {
    fd,
    owned,
    path: p,
    stat: () => (stats ??= fstatFd(fd)),
    at(name: string): string {
      if (name === '' || name === '.' || name === '..' || name.includes('/')) throw new RangeError(`not a single path component: ${JSON.stringify(name)}`);
      return `${procPath(fd)}/${name}`;
    },
  };
}

/** "/", opened once per process and never closed: every walk starts there. */
let rootFd: number | undefined;
function rootDir(): Dir & { readonly owned: boolean } {
  rootFd ??= openSync('/', O_PATH | C.O_DIRECTORY);
  return folder(rootFd, '/', false);
}

function closeDir(d: Dir & { readonly owned: boolean }): void {
  if (d.owned) closeSync(d.fd);
}

/**
 * Open the folder `dirPath` (absolute) component by component, following
 * symlinks as `ctx.links` allows. `links` counts the symlinks followed so
 * far for the whole lookup. The caller closes the returned folder.
 */
async function openFolder(ctx: Ctx, dirPath: string, links: { n: number }): Promise<Dir & { readonly owned: boolean }> {
  let rest = path.resolve(dirPath).split('/').filter((c) => c !== '');
  let created = 0;
  let cur = rootDir();
  try {
    while (rest.length > 0) {
      const name = rest[0]!;
      rest = rest.slice(1);
      await assertSearchable(ctx, cur);
      const here = path.join(cur.path, name);
      let fd: number;
      try {
        // O_DIRECTORY with O_NOFOLLOW: a folder opens, a symlink (or a file) is ENOTDIR.
        fd = await openFd(cur.at(name), O_PATH | C.O_NOFOLLOW | C.O_DIRECTORY);
      } catch (err) {
        if (isErrno(err, 'ENOENT') && ctx.createFolders && ++created <= MAX_LINKS) {
          // (bounded: a folder removed as fast as it is made must not hold the agent here)
          await mkdir(cur.at(name), 0o755).catch((e: unknown) => (isErrno(e, 'EEXIST') ? undefined : Promise.reject(ioError(ctx, here, e, 'must be a folder the agent can create'))));
          rest = [name, ...rest];
          continue;
        }
        if (!isErrno(err, 'ENOTDIR')) throw ioError(ctx, here, err, 'must be a folder the agent can open');
        const st = await lstatAt(cur, name).catch((e: unknown) => Promise.reject(ioError(ctx, here, e, 'must be a folder the agent can open')));
        if (!st.isSymbolicLink()) throw fail(ctx, 'not-directory', ctx.file, 'must be reached through folders', `${here} is ${describeKind(st)}`);
        const target = await follow(ctx, cur, name, st, links);
        // Start again from the root with the link replaced by its target:
        // each folder is opened afresh, so each is checked again.
        rest = path.resolve(cur.path, target, ...rest).split('/').filter((c) => c !== '');
        closeDir(cur);
        cur = rootDir();
        continue;
      }
      closeDir(cur);
      cur = folder(fd, here);
    }
    return cur;
  } catch (err) {
    closeDir(cur);
    throw err;
  }
}

function context(file: string, opts: { links?: LinkPolicy; reader?: Reader | undefined; codes?: ProblemCodes; createFolders?: boolean }): Ctx {
  return { file, links: opts.links ?? 'trusted', reader: opts.reader, codes: opts.codes ?? {}, createFolders: opts.createFolders ?? false };
}

/**
 * Run `fn` with the folder `dir` open, reached without following a symlink
 * the 'trusted' policy refuses. Operate on entries only through
 * `folder.at(name)`. The folder is closed when `fn` settles.
 *
 * Throws SafeFsError: 'missing', 'not-directory', 'symlink', 'loop', 'io'
 * (codes from `opts.codes`, else UNSAFE_PATH for links, FILE_UNREADABLE).
 */
export async function withFolder<T>(dir: string, fn: (folder: SafeFolder) => Promise<T>, opts: { codes?: ProblemCodes; createFolders?: boolean } = {}): Promise<T> {
  const d = await openFolder(context(dir, opts), dir, { n: 0 });
  try {
    return await fn(d);
  } finally {
    closeDir(d);
  }
}

/**
 * Remove NAME in the open folder `parent` and, when it is a folder,
 * everything in it (prune of a release folder, issue 15). Every entry is
 * reached from the folder opened before it, each folder opened with
 * O_NOFOLLOW: a symlink is removed, never followed, and a folder swapped for
 * a link meanwhile fails the open (ENOTDIR) rather than leading out. Throws
 * the system's error (ENOENT when NAME is gone).
 */
export async function removeTree(parent: SafeFolder, name: string): Promise<void> {
  const st = await lstat(parent.at(name));
  if (!st.isDirectory()) {
    await unlink(parent.at(name));
    return;
  }
  const d = folder(await openFd(parent.at(name), O_PATH | C.O_NOFOLLOW | C.O_DIRECTORY), path.join(parent.path, name));
  try {
    // readdir reopens the folder through its descriptor: the same inode.
    for (const e of await readdir(procPath(d.fd))) await removeTree(d, e);
  } finally {
    closeDir(d);
  }
  await rmdir(parent.at(name));
}

/**
 * Open the last component NAME of `dir` with O_PATH (a FIFO or a device is
 * not opened by that, and nothing blocks) and fstat it: the descriptor and
 * what it is. The caller closes the descriptor (closeSync).
 */
async function entryAt(ctx: Ctx, dir: Dir, name: string, rule: string): Promise<{ fd: number; stats: Stats } | undefined> {
  const here = path.join(dir.path, name);
  let fd: number;
  try {
    fd = await openFd(dir.at(name), O_PATH | C.O_NOFOLLOW);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw ioError(ctx, here, err, rule);
  }
  try {
    return { fd, stats: await fstatFd(fd) };
  } catch (err) {
    closeSync(fd);
    throw ioError(ctx, here, err, rule);
  }
}

/**
 * An O_PATH descriptor of the regular file `ctx.file` and its stats,
 * reached as `ctx` allows: the final component too is followed only as the
 * policy says. The file itself is never opened for I/O here.
 */
async function regularFile(ctx: Ctx): Promise<{ fd: number; stats: Stats }> {
  const links = { n: 0 };
  let target = path.resolve(ctx.file);
  for (;;) {
    const dir = await openFolder(ctx, path.dirname(target), links);
    try {
      const name = path.basename(target);
      await assertSearchable(ctx, dir);
      const here = path.join(dir.path, name);
      const entry = await entryAt(ctx, dir, name, 'must be a file the agent can open');
      if (entry === undefined) throw missing(ctx, here);
      const { fd, stats: st } = entry;
      if (st.isSymbolicLink()) {
        closeSync(fd);
        target = path.resolve(dir.path, await follow(ctx, dir, name, st, links));
        continue;
      }
      if (!st.isFile()) {
        closeSync(fd);
        throw fail(ctx, 'not-regular', ctx.file, 'must be a regular file', describeKind(st));
      }
      if (ctx.reader !== undefined && !permits(st, ctx.reader, 4)) {
        closeSync(fd);
        throw await readerRefusal(ctx, ctx.reader, here, st);
      }
      return entry;
    } finally {
      closeDir(dir);
    }
  }
}

export interface OpenReadOptions {
  /** Default 'trusted'. */
  readonly links?: LinkPolicy;
  /** Refuse, without reading, a file this user could not read (mode bits along the whole path). */
  readonly reader?: Reader | undefined;
  /** Codes per problem kind; defaults: UNSAFE_PATH for planted things, FILE_UNREADABLE otherwise. */
  readonly codes?: ProblemCodes;
}

/**
 * Open the regular file `file` for reading without ever opening anything
 * else (a FIFO, a device) and without blocking. The caller closes the handle.
 *
 * Throws SafeFsError: 'missing', 'not-directory', 'not-regular', 'symlink'
 * (policy 'trusted' only), 'loop', 'permission' (with `reader`), 'io'.
 */
export async function openRegular(file: string, opts: OpenReadOptions = {}): Promise<{ handle: FileHandle; stats: Stats }> {
  const ctx = context(file, opts);
  const { fd, stats } = await regularFile(ctx);
  try {
    // Reopening the O_PATH descriptor opens the inode that was checked.
    const handle = await open(procPath(fd), C.O_RDONLY | C.O_NONBLOCK | C.O_NOCTTY).catch((err: unknown) => {
      throw ioError(ctx, file, err, 'must be readable');
    });
    return { handle, stats };
  } finally {
    closeSync(fd);
  }
}

export interface ReadSmallOptions extends OpenReadOptions {
  /** The largest size accepted, in bytes; a larger file is 'too-large' and is not read. */
  readonly maxBytes: number;
}

export interface SmallFile {
  readonly bytes: Buffer;
  /** fstat of the descriptor the bytes were read from. */
  readonly stats: Stats;
}

/**
 * Read a small regular file whole, never blocking (a FIFO or a device is
 * refused before it is opened) and never reading more than `maxBytes` + 1
 * bytes (a file that grows while read is still refused as too large). For
 * current.conf, the agent config, state files, PID files.
 *
 * Throws SafeFsError: as `openRegular`, plus 'too-large'.
 */
export async function readSmallFile(file: string, opts: ReadSmallOptions): Promise<SmallFile> {
  const ctx = context(file, opts);
  const { handle, stats } = await openRegular(file, opts);
  try {
    const tooLarge = (found: string) => fail(ctx, 'too-large', file, `must be at most ${opts.maxBytes} bytes`, found);
    if (stats.size > opts.maxBytes) throw tooLarge(`${stats.size} bytes`);
    const buf = Buffer.alloc(opts.maxBytes + 1);
    let n = 0;
    try {
      for (;;) {
        const { bytesRead } = await handle.read(buf, n, buf.length - n, n);
        if (bytesRead === 0 || (n += bytesRead) >= buf.length) break;
      }
    } catch (err) {
      throw ioError(ctx, file, err, 'must be readable');
    }
    if (n > opts.maxBytes) throw tooLarge(`more than ${opts.maxBytes} bytes`);
    return { bytes: buf.subarray(0, n), stats };
  } finally {
    await handle.close().catch(() => undefined);
  }
}

export interface AppendOptions {
  /**
   * The app's user and group. A file the agent creates, or finds owned by
   * the agent's user with no other name, is handed to them (fchown on the
   * open descriptor); a file already theirs is used as it is; a file of
   * anybody else is refused. Default: the agent's own user (nothing chowned).
   */
  readonly owner?: { readonly uid: number; readonly gid: number } | undefined;
  /** Mode of a file created here (the umask applies). Default 0o640. */
  readonly mode?: number;
  /** Create missing folders on the way (0755, the agent's). Default true. */
  readonly createFolders?: boolean;
  readonly codes?: ProblemCodes;
}

/**
 * Open (or create) `file` for appending, for an app's log: reached under
 * the 'trusted' link policy, a regular file with one name, owned by the
 * agent's user or the app's, never a FIFO or a device, never blocking. The
 * caller closes the handle.
 *
 * Throws SafeFsError: 'not-directory', 'symlink', 'not-regular', 'loop',
 * 'hard-link' (a file of the agent's user with another name, or of root
 * for an app of root), 'owner' (anybody else's file), 'io'.
 */
export async function openAppend(file: string, opts: AppendOptions = {}): Promise<FileHandle> {
  const ctx = context(file, { links: 'trusted', codes: opts.codes, createFolders: opts.createFolders ?? true });
  const appUid = opts.owner?.uid ?? agentUid();
  const links = { n: 0 };
  let target = path.resolve(file);
  let handle: FileHandle | undefined;
  let shown = file;
  for (let attempt = 0; handle === undefined; attempt++) {
    // Each lap is a create that lost a race (EEXIST) or a followed link; a
    // writer that keeps creating and deleting the name does not hold the agent.
    if (attempt > MAX_LINKS) throw fail(ctx, 'io', file, 'must be a file the agent can create or open', 'it kept changing while being opened');
    const dir = await openFolder(ctx, path.dirname(target), links);
    try {
      const name = path.basename(target);
      shown = path.join(dir.path, name);
      const existing = await entryAt(ctx, dir, name, 'must be a file the agent can open');
      if (existing === undefined) {
        // O_EXCL: created here, or somebody was faster and the loop looks again.
        handle = await open(dir.at(name), C.O_WRONLY | C.O_APPEND | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW | C.O_NONBLOCK | C.O_NOCTTY, opts.mode ?? 0o640)
          .catch((err: unknown) => (isErrno(err, 'EEXIST') ? undefined : Promise.reject(ioError(ctx, shown, err, 'must be a file the agent can create'))));
        continue;
      }
      try {
        const st = existing.stats;
        if (st.isSymbolicLink()) {
          target = path.resolve(dir.path, await follow(ctx, dir, name, st, links));
          continue;
        }
        if (!st.isFile()) throw fail(ctx, 'not-regular', shown, 'must be a regular file', describeKind(st));
        handle = await open(procPath(existing.fd), C.O_WRONLY | C.O_APPEND | C.O_NONBLOCK | C.O_NOCTTY).catch((err: unknown) => {
          throw ioError(ctx, shown, err, 'must be writable by the agent');
        });
      } finally {
        closeSync(existing.fd);
      }
    } finally {
      closeDir(dir);
    }
  }
  try {
    // Judged on the descriptor the app will write to, after the open.
    const st = await handle.stat();
    if (!st.isFile()) throw fail(ctx, 'not-regular', shown, 'must be a regular file', describeKind(st));
    const mine = st.uid === agentUid();
    if (st.uid !== appUid && !mine) {
      throw fail(ctx, 'owner', shown, `must belong to the app's user ${await userText(appUid)} or to ${asWhom()}`, `owned by ${await userText(st.uid)}`);
    }
    // Another name elsewhere is somebody's file: the agent neither writes
    // it for the app nor hands it over. Only a non-root app's own file may
    // have several names (it could write them anyway).
    if (st.nlink > 1 && (st.uid !== appUid || appUid === 0)) {
      throw fail(ctx, 'hard-link', shown, `must have no other name (a hard link of another file is not handed to the app by ${asWhom()})`, `${st.nlink} names, owned by ${await userText(st.uid)}`);
    }
    if (opts.owner !== undefined && mine && (st.uid !== opts.owner.uid || st.gid !== opts.owner.gid)) await handle.chown(opts.owner.uid, opts.owner.gid);
    return handle;
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
}

/** Supplementary groups by user name, kept briefly: `id -G` is a process (~3 ms). */
const GROUPS_TTL_MS = 10_000;
const groupsCache = new Map<string, { at: number; groups: Promise<number[]> }>();

function idGroups(user: string): Promise<number[]> {
  return new Promise((resolve) => {
    execFile('id', ['-G', '--', user], { encoding: 'utf8' }, (err, stdout) => {
      // Unknown: the primary group alone, which can only refuse more.
      if (err) resolve([]);
      else resolve(stdout.trim().split(/\s+/).filter((g) => /^\d+$/.test(g)).map(Number));
    });
  });
}

/**
 * The Reader for an app's resolved user (src/user.ts `resolveRunAs`): its
 * uid, its group, and its supplementary groups as `setpriv --init-groups`
 * gives them to the app (NSS, through `id -G`).
 */
export async function readerOf(runAs: { readonly user: string; readonly uid: number; readonly gid: number }): Promise<Reader> {
  if (runAs.uid === 0 || runAs.user === String(runAs.uid)) return { name: runAs.user, uid: runAs.uid, gid: runAs.gid, groups: [] };
  let hit = groupsCache.get(runAs.user);
  if (hit === undefined || Date.now() - hit.at > GROUPS_TTL_MS) {
    hit = { at: Date.now(), groups: idGroups(runAs.user) };
    groupsCache.set(runAs.user, hit);
  }
  return { name: runAs.user, uid: runAs.uid, gid: runAs.gid, groups: await hit.groups };
}
