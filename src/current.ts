/**
 * Reading and validating current.conf, exactly as the agent and
 * `relink validate` both do it. Nothing here changes anything on disk.
 *
 * current.conf is the original format: {"bin.file": PATH, "cfg.file": PATH}.
 * A PATH is absolute, relative to the folder holding current.conf, or starts
 * with "~/" (the home of the user who owns current.conf).
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { access, open, readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { AppConfig } from './config.js';
import { fileError, isErrno, RelinkError, RelinkErrors } from './errors.js';
import { deniedByAcl, deniedByKernel, deniedTo, kernelReadable, openRegular, readSmallFile, type Reader } from './safefs.js';
import { describeUser } from './user.js';
import { releaseFolderOf } from './relink.js';
import { checkTrust } from './trust.js';
import { parseJsonFile } from './json.js';
import { parseWithSchema } from './zodIssues.js';

/** Far above any real current.conf; protects the agent from a file pointed at by mistake. */
const MAX_BYTES = 64 * 1024;

const sha256 = z.string({ error: 'must be a sha256 as 64 hex digits' }).regex(/^[0-9a-fA-F]{64}$/, 'must be a sha256 as 64 hex digits');

const CurrentSchema = z.strictObject({
  'bin.file': z.string({ error: 'must be a string path' }).min(1, 'must be a non-empty path'),
  'cfg.file': z.string({ error: 'must be a string path' }).min(1, 'must be a non-empty path'),
  // Optional integrity: a half-finished scp has the right name and the wrong bytes.
  'bin.sha256': sha256.optional(),
  'cfg.sha256': sha256.optional(),
});

export type CurrentKey = 'bin.file' | 'cfg.file';

/** A validated release: real paths of the files the links will point at. */
export interface Release {
  readonly bin: string;
  readonly cfg: string;
}

export interface CurrentSnapshot {
  readonly text: string;
  /** sha256 of the bytes; content identity, since inode numbers are reused. */
  readonly hash: string;
  readonly mtimeMs: number;
}

/** The optional "bin.sha256" and "cfg.sha256" of current.conf: what the files must hash to. */
export interface ReleaseHashes {
  readonly bin?: string;
  readonly cfg?: string;
}

export function hashText(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/**
 * current.conf text naming `release`, written as a human would: each file
 * relative to the folder holding current.conf when it lies in or below it
 * (`app.2.0`), else absolute. Paths in current.conf resolve against that
 * folder, so this works wherever `currentFile` is (a `conf/current.conf`
 * beside the releases folder too). The one place that knows the format's
 * spelling (relink deploy, and the agent when it needs text for a release
 * it adopted).
 */
export function currentTextFor(currentFile: string, release: Release, sha256: ReleaseHashes = {}): string {
  const base = path.dirname(currentFile);
  const rel = (p: string) => {
    const r = path.relative(base, p);
    return r === '' || r.startsWith('..') || path.isAbsolute(r) ? p : r;
  };
  const hashes = { ...(sha256.bin === undefined ? {} : { 'bin.sha256': sha256.bin }), ...(sha256.cfg === undefined ? {} : { 'cfg.sha256': sha256.cfg }) };
  return `${JSON.stringify({ 'bin.file': rel(release.bin), 'cfg.file': rel(release.cfg), ...hashes })}\n`;
}

/**
 * sha256 of a release file, streamed (release binaries can be large). The
 * file is opened only if it is a regular file (a FIFO swapped in after the
 * checks would block the read for good), without blocking.
 * Throws SafeFsError (RELEASE_MISSING, RELEASE_NOT_FILE, RELEASE_UNREADABLE).
 */
export async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  const { handle } = await openRegular(file, {
    links: 'follow',
    codes: { missing: 'RELEASE_MISSING', 'not-regular': 'RELEASE_NOT_FILE', 'not-directory': 'RELEASE_MISSING', loop: 'RELEASE_MISSING', io: 'RELEASE_UNREADABLE', permission: 'RELEASE_UNREADABLE' },
  });
  try {
    for await (const chunk of handle.createReadStream({ autoClose: false })) hash.update(chunk as Buffer);
  } finally {
    await handle.close().catch(() => undefined);
  }
  return hash.digest('hex');
}

/**
 * Whether release files `a` and `b` hold the same bytes: the same file
 * (device and inode, through symlinks), or two of one size with the same
 * sha256 (hashFile: opened only as regular files, never blocking on a FIFO
 * swapped in). False when either cannot be read. Tells a release whose
 * binary is a copy of the running one ("inplace" in the folder layout,
 * where every release has its own bin.file path).
 */
export async function sameContent(a: string, b: string): Promise<boolean> {
  try {
    const [sa, sb] = await Promise.all([stat(a), stat(b)]);
    if (sa.dev === sb.dev && sa.ino === sb.ino) return true;
    if (!sa.isFile() || !sb.isFile() || sa.size !== sb.size) return false;
    const [ha, hb] = await Promise.all([hashFile(a), hashFile(b)]);
    return ha === hb;
  } catch {
    return false;
  }
}

/**
 * Read current.conf: a regular file of at most 64 KiB, never blocking (a
 * FIFO or a device is refused before it is opened). The agent reads it as
 * root on behalf of the app's user: with `reader`, a file that user could
 * not read itself (mode bits along the whole path, symlinks followed) is
 * refused without being read, so no message ever quotes it.
 *
 * Throws RelinkError: CURRENT_MISSING, CURRENT_TOO_LARGE, CURRENT_UNREADABLE
 * (not a regular file, not readable by `reader`, any other I/O error).
 */
export async function readCurrent(file: string, reader?: Reader): Promise<CurrentSnapshot> {
  const { bytes, stats } = await readSmallFile(file, {
    maxBytes: MAX_BYTES,
    // A symlinked current.conf is a supported layout; what it may reach is
    // bounded by `reader`, and checkTrust judges who can write the target.
    links: 'follow',
    reader,
    codes: {
      missing: 'CURRENT_MISSING', 'too-large': 'CURRENT_TOO_LARGE', 'not-regular': 'CURRENT_UNREADABLE', 'not-directory': 'CURRENT_UNREADABLE',
      loop: 'CURRENT_UNREADABLE', permission: 'CURRENT_UNREADABLE', io: 'CURRENT_UNREADABLE', symlink: 'CURRENT_UNREADABLE',
    },
  });
  // The mode bits allowed it; the kernel decides, ACLs included, for the
  // very file read (a trial: an ACL denying the app's user left a root
  // file's content in the journal, which that user may read). Nothing read
  // is used before this.
  if (reader !== undefined && reader.uid !== 0 && reader.uid !== process.getuid?.()) {
    const seen = await kernelReadable(reader, file);
    const rule = `must be readable by the app's user ${describeUser({ user: reader.name, uid: reader.uid })}, for whom the agent reads it`;
    if (seen === false) {
      const real = await realpath(file).catch(() => file);
      throw fileError('CURRENT_UNREADABLE', file, undefined, rule, `${await deniedByAcl(real, real)}; the user may not read it, though the mode bits allow it: an ACL denies it (getfacl ${real} and the folders above)`);
    }
    if (seen !== undefined && seen !== `${stats.dev}:${stats.ino}`) {
      throw fileError('CURRENT_UNREADABLE', file, undefined, 'must not be replaced while it is read', `it names another file now; read again on its next change`);
    }
  }
  const text = bytes.toString('utf8');
  return { text, hash: hashText(text), mtimeMs: stats.mtimeMs };
}

/**
 * Check `text` (the content of `file`) against every rule and return the
 * release it names. A leading byte order mark and CRLF line ends are fine.
 * Throws RelinkErrors listing every problem found (at most MAX_PROBLEMS):
 * CURRENT_SYNTAX and CURRENT_DUPLICATE_KEY without quoting the text,
 * CURRENT_INVALID, CURRENT_UNKNOWN_KEY (with the nearest known key), then
 * the release files' and the trust rules' codes.
 */
export async function validateCurrent(app: AppConfig, text: string, file: string = app.currentFile, reader?: Reader): Promise<Release> {
  const raw = parseJsonFile(text, file, { syntax: 'CURRENT_SYNTAX', duplicate: 'CURRENT_DUPLICATE_KEY' });
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new RelinkErrors([fileError('CURRENT_INVALID', file, undefined, 'must be a JSON object {"bin.file": ..., "cfg.file": ...}', JSON.stringify(raw).slice(0, 80))]);
  }
  const data = parseWithSchema(CurrentSchema, raw, file, { invalid: 'CURRENT_INVALID', unknownKey: 'CURRENT_UNKNOWN_KEY' });

  const releasesReal = await realpath(app.releasesDir).catch((err: unknown) => {
    throw new RelinkErrors([fileError('RELEASE_MISSING', file, undefined, `the releases folder ${app.releasesDir} must exist`, isErrno(err) ? err.code : String(err))]);
  });
  const problems: RelinkError[] = [];
  const check = async (key: CurrentKey, value: string, executable: boolean): Promise<CheckedFile | RelinkError> => {
    try {
      return await checkReleaseFile(file, key, value, releasesReal, executable, reader);
    } catch (err) {
      if (err instanceof RelinkError) return err;
      throw err;
    }
  };
  // Checked together, said in key order (bin.file, then cfg.file).
  const checked = await Promise.all([
    check('bin.file', data['bin.file'], true),
    check('cfg.file', data['cfg.file'], false),
  ]);
  // The kernel's word for both files at once, as the app's user (one setpriv).
  // Each file's folders on the way first (-x), then the file: the first denied is named.
  const asked = checked.flatMap((c) => (c instanceof RelinkError ? [] : c.kernel));
  const paths = asked.flatMap((k) => [...k.folders.map((dir) => ({ path: dir, op: 'x' as const })), k.check]);
  const verdicts = reader === undefined || asked.length === 0 ? undefined : await deniedByKernel(reader, paths);
  const found: Array<readonly [CurrentKey, RelinkError]> = [];
  let at = 0;
  for (const k of asked) {
    const mine = verdicts?.slice(at, at + k.folders.length + 1);
    at += k.folders.length + 1;
    if (mine === undefined || !mine.at(-1)) continue;
    const folder = k.folders.find((_, i) => mine[i] === true);
    found.push([k.key, await k.refusal(folder ?? k.check.path)]);
  }
  // A file's first denied check is said (its read before its execute).
  const refusals = new Map(found.reverse());
  for (const c of checked) {
    if (c instanceof RelinkError) problems.push(c);
    else if (refusals.has(c.key)) problems.push(refusals.get(c.key)!);
  }
  const [bin, cfg] = checked.map((c) => (c instanceof RelinkError || refusals.has(c.key) ? undefined : c.real));
  const expected: Array<[string | undefined, string | undefined, 'bin.sha256' | 'cfg.sha256']> = [
    [bin, data['bin.sha256'], 'bin.sha256'],
    [cfg, data['cfg.sha256'], 'cfg.sha256'],
  ];
  await Promise.all(expected.map(async ([real, want, key]) => {
    if (real === undefined || want === undefined) return;
    const got = await hashFile(real);
    if (got !== want.toLowerCase()) {
      problems.push(fileError('RELEASE_HASH_MISMATCH', file, key, `must match the file's sha256 (an upload may be unfinished)`, `current.conf says ${want.toLowerCase()}, ${real} has ${got}`));
    }
  }));
  if (bin !== undefined && cfg !== undefined && app.links.dir !== undefined) {
    const problem = folderProblem(file, releasesReal, { bin, cfg });
    if (problem !== undefined) problems.push(problem);
  }
  if (problems.length > 0 || bin === undefined || cfg === undefined) throw new RelinkErrors(problems);
  // Last, on a release that is otherwise valid: who could have written it.
  const untrusted = await checkTrust(app, file, { bin, cfg }).catch((err: unknown) => {
    if (err instanceof RelinkError) return [err];
    throw err;
  });
  if (untrusted.length > 0) throw new RelinkErrors(untrusted);
  return Object.freeze({ bin, cfg });
}

/**
 * Read and validate in one step; the snapshot is returned with the release.
 * `reader`: as for readCurrent (`relink validate` passes the app's user).
 */
export async function loadCurrent(app: AppConfig, file: string = app.currentFile, reader?: Reader): Promise<{ snapshot: CurrentSnapshot; release: Release }> {
  const snapshot = await readCurrent(file, reader);
  const release = await validateCurrent(app, snapshot.text, file, reader);
  return { snapshot, release };
}

/**
 * With `links.dir` the live release's folder is linked (issue 15): bin and
 * cfg must be in one folder per release (releaseFolderOf), or there would be
 * no folder to link, or one that does not hold the config that runs.
 */
function folderProblem(file: string, releasesReal: string, release: Release): RelinkError | undefined {
  if (releaseFolderOf(releasesReal, release) !== undefined) return undefined;
  const why = '("links.dir" links to the live release\'s folder)';
  const binFolder = releaseFolderOf(releasesReal, { bin: release.bin, cfg: release.bin });
  if (binFolder === undefined) {
    return fileError('RELEASE_NOT_IN_FOLDER', file, 'bin.file', `must be in a folder per release inside ${releasesReal} ${why}`, release.bin);
  }
  return fileError('RELEASE_NOT_IN_FOLDER', file, 'cfg.file', `must be in the release folder of "bin.file", ${binFolder} ${why}`, release.cfg);
}

/**
 * A release file that passed the checks the agent makes itself, and what
 * is left to ask the kernel as the app's user (`kernel`: each check with
 * the refusal to make if it is denied; asked for both files at once).
 */
interface CheckedFile {
  readonly key: CurrentKey;
  readonly real: string;
  readonly kernel: ReadonlyArray<{
    readonly key: CurrentKey;
    readonly check: { readonly path: string; readonly op: 'r' | 'x' };
    /** The folders on the way to check.path, from the top: one the user may not search is what denies it. */
    readonly folders: readonly string[];
    /** The refusal, naming `denied` (check.path, or the folder that denies it). */
    readonly refusal: (denied: string) => Promise<RelinkError>;
  }>;
}

async function checkReleaseFile(file: string, key: CurrentKey, value: string, releasesReal: string, executable: boolean, reader?: Reader): Promise<CheckedFile> {
  const abs = await resolveReleasePath(file, key, value);
  let real: string;
  try {
    real = await realpath(abs);
  } catch (err) {
    const why = isErrno(err, 'ENOENT') ? 'no such file' : isErrno(err) ? err.code : String(err);
    throw fileError('RELEASE_MISSING', file, key, 'must name an existing file', `${abs}: ${why}`);
  }
  // realpath first, then the containment check: a "../" or a symlink that
  // leads out of the releases folder is caught on the resolved path.
  if (!real.startsWith(releasesReal + path.sep)) {
    const shown = real === abs ? abs : `${abs} -> ${real}`;
    throw fileError('RELEASE_OUTSIDE', file, key, `must be inside the releases folder ${releasesReal}`, shown);
  }
  // A dot name is an upload in progress (rsync to .2.0.part, then mv) or a
  // release being pruned: never a release, whichever way it is named.
  const hidden = path.relative(releasesReal, real).split(path.sep).find((part) => part.startsWith('.'));
  if (hidden !== undefined) {
    throw fileError('RELEASE_HIDDEN', file, key, 'must not lie under a name starting with "." (an upload in progress, renamed into place when complete, or a release being pruned)', real);
  }
  const st = await stat(real);
  if (!st.isFile()) throw fileError('RELEASE_NOT_FILE', file, key, 'must be a regular file', `${real} is a ${kindOf(st)}`);
  if (executable) {
    const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
    if ((st.mode & 0o111) === 0) throw fileError('RELEASE_NOT_EXECUTABLE', file, key, 'must be executable', `${real} has mode ${mode}`);
    try {
      await access(real, fsConstants.X_OK);
    } catch {
      throw fileError('RELEASE_NOT_EXECUTABLE', file, key, 'must be executable by the agent', `${real} has mode ${mode}`);
    }
  } else {
    try {
      await access(real, fsConstants.R_OK);
    } catch {
      throw fileError('RELEASE_UNREADABLE', file, key, 'must be readable', real);
    }
  }
  // The app's user must reach it too: the agent (root) may read what the
  // app cannot, and such a release was started, then rolled back with the
  // app's "Permission denied" in app.log only (a trial).
  if (reader !== undefined && reader.uid !== process.getuid?.()) {
    const who = `the app's user ${describeUser({ user: reader.name, uid: reader.uid })}`;
    const interpreter = executable ? await interpreterOf(real) : undefined;
    const rule = executable
      ? `must be executable by ${who}, who runs it${interpreter === undefined ? '' : `; a #! script must also be readable by that user, and its interpreter ${interpreter} executable by it`}`
      : `must be readable by ${who}, whose app reads it`;
    const code = executable ? 'RELEASE_NOT_EXECUTABLE' : 'RELEASE_UNREADABLE';
    const need = executable ? (interpreter === undefined ? 1 : 5) : 4;
    // The mode bits first: they say which file or folder, and why.
    const denied = await deniedTo(real, reader, need) ?? (interpreter === undefined ? undefined : await deniedTo(interpreter, reader, 1));
    if (denied !== undefined) throw fileError(code, file, key, rule, denied);
    // Then the kernel's word, ACLs included (an entry may deny what the
    // bits allow): asked by the caller for both files at once.
    const checks: Array<{ path: string; op: 'r' | 'x' }> = [];
    if ((need & 4) !== 0) checks.push({ path: real, op: 'r' });
    if ((need & 1) !== 0) checks.push({ path: real, op: 'x' });
    if (interpreter !== undefined) checks.push({ path: interpreter, op: 'x' });
    return {
      key,
      real,
      kernel: checks.map((check) => {
        const what = check.op === 'r' ? 'readable' : 'executable';
        const folders: string[] = [];
        for (let dir = path.dirname(check.path); ; dir = path.dirname(dir)) {
          folders.unshift(dir);
          if (dir === path.dirname(dir)) break;
        }
        const refusal = async (denied: string): Promise<RelinkError> => {
          const where = await deniedByAcl(denied, check.path);
          const verb = denied !== check.path ? `may not search it, so ${check.path} is not ${what} by it` : check.op === 'r' ? 'may not read it' : 'may not run it';
          const whose = check.path === real ? '' : ` (${check.path} is the #! interpreter of ${real})`;
          return fileError(code, file, key, rule, `${where}; the user ${verb}, though the mode bits allow it: an ACL denies it (getfacl ${denied})${whose}`);
        };
        return { key, check, folders, refusal };
      }),
    };
  }
  return { key, real, kernel: [] };
}

/** A #! script's interpreter (the path after "#!"), or undefined for anything else. */
async function interpreterOf(file: string): Promise<string | undefined> {
  const fh = await open(file, 'r').catch(() => undefined);
  if (fh === undefined) return undefined;
  try {
    const { bytesRead, buffer } = await fh.read(Buffer.alloc(256), 0, 256, 0);
    const m = /^#!\s*(\S+)/.exec(buffer.subarray(0, bytesRead).toString('latin1'));
    return m === null || !m[1]!.startsWith('/') ? undefined : m[1];
  } finally {
    await fh.close();
  }
}

async function resolveReleasePath(file: string, key: CurrentKey, value: string): Promise<string> {
  if (value === '~' || value.startsWith('~/')) {
    // current.conf may be gone since it was read: still a typed refusal, not a raw ENOENT.
    const home = await homeOfOwner(file).catch((err: unknown) => {
      throw fileError('CURRENT_UNREADABLE', file, key, 'a "~/" path needs current.conf to exist, to know its owner', isErrno(err) ? err.code : String(err));
    });
    if (home === undefined) throw fileError('HOME_UNKNOWN', file, key, 'a "~/" path needs the owner of current.conf to have a home folder in /etc/passwd', value);
    return path.join(home, value.slice(1));
  }
  return path.resolve(path.dirname(file), value);
}

/** Home folder of the user owning `file`, from /etc/passwd (no getpwuid in Node). */
async function homeOfOwner(file: string): Promise<string | undefined> {
  const { uid } = await stat(file);
  const passwd = await readFile('/etc/passwd', 'utf8').catch(() => '');
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f.length >= 7 && Number(f[2]) === uid && f[5]) return f[5];
  }
  return undefined;
}

function kindOf(st: { isDirectory(): boolean; isFile(): boolean; isSymbolicLink(): boolean }): string {
  if (st.isDirectory()) return 'directory';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  return 'special file';
}
