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

export function hashText(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/**
 * current.conf text naming `release`, written as a human would: file names
 * relative to the releases folder when the files are in it. The one place
 * that knows the format's spelling (relink deploy, and the agent when it
 * needs text for a release it adopted).
 */
export function currentTextFor(releasesDir: string, release: Release): string {
  const rel = (p: string) => (path.dirname(p) === releasesDir ? path.basename(p) : p);
  return `${JSON.stringify({ 'bin.file': rel(release.bin), 'cfg.file': rel(release.cfg) })}\n`;
}

/** sha256 of a file, streamed (release binaries can be large). */
export async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  const handle = await open(file, 'r');
  try {
    for await (const chunk of handle.createReadStream()) hash.update(chunk as Buffer);
  } finally {
    await handle.close().catch(() => undefined);
  }
  return hash.digest('hex');
}

export async function readCurrent(file: string): Promise<CurrentSnapshot> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) throw fileError('CURRENT_MISSING', file, undefined, 'must exist', 'no such file');
    throw fileError('CURRENT_UNREADABLE', file, undefined, 'must be readable', isErrno(err) ? err.code : String(err));
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw fileError('CURRENT_UNREADABLE', file, undefined, 'must be a regular file', kindOf(st));
    if (st.size > MAX_BYTES) throw fileError('CURRENT_TOO_LARGE', file, undefined, `must be at most ${MAX_BYTES} bytes`, `${st.size} bytes`);
    // Read at most one byte past the limit: the file may grow after the stat.
    const buf = Buffer.alloc(MAX_BYTES + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buf, n, buf.length - n, n);
      if (bytesRead === 0 || (n += bytesRead) >= buf.length) break;
    }
    if (n > MAX_BYTES) throw fileError('CURRENT_TOO_LARGE', file, undefined, `must be at most ${MAX_BYTES} bytes`, `more than ${MAX_BYTES} bytes`);
    const text = buf.toString('utf8', 0, n);
    return { text, hash: hashText(text), mtimeMs: st.mtimeMs };
  } finally {
    await handle.close();
  }
}

/**
 * Check `text` (the content of `file`) against every rule and return the
 * release it names. A leading byte order mark and CRLF line ends are fine.
 * Throws RelinkErrors listing every problem found (at most MAX_PROBLEMS):
 * CURRENT_SYNTAX and CURRENT_DUPLICATE_KEY without quoting the text,
 * CURRENT_INVALID, CURRENT_UNKNOWN_KEY (with the nearest known key), then
 * the release files' and the trust rules' codes.
 */
export async function validateCurrent(app: AppConfig, text: string, file: string = app.currentFile): Promise<Release> {
  const raw = parseJsonFile(text, file, { syntax: 'CURRENT_SYNTAX', duplicate: 'CURRENT_DUPLICATE_KEY' });
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new RelinkErrors([fileError('CURRENT_INVALID', file, undefined, 'must be a JSON object {"bin.file": ..., "cfg.file": ...}', JSON.stringify(raw).slice(0, 80))]);
  }
  const data = parseWithSchema(CurrentSchema, raw, file, { invalid: 'CURRENT_INVALID', unknownKey: 'CURRENT_UNKNOWN_KEY' });

  const releasesReal = await realpath(app.releasesDir).catch((err: unknown) => {
    throw new RelinkErrors([fileError('RELEASE_MISSING', file, undefined, `the releases folder ${app.releasesDir} must exist`, isErrno(err) ? err.code : String(err))]);
  });
  const problems: RelinkError[] = [];
  const check = async (key: CurrentKey, value: string, executable: boolean): Promise<string | undefined> => {
    try {
      return await checkReleaseFile(file, key, value, releasesReal, executable);
    } catch (err) {
      if (err instanceof RelinkError) problems.push(err);
      else throw err;
      return undefined;
    }
  };
  const [bin, cfg] = await Promise.all([
    check('bin.file', data['bin.file'], true),
    check('cfg.file', data['cfg.file'], false),
  ]);
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
  if (problems.length > 0 || bin === undefined || cfg === undefined) throw new RelinkErrors(problems);
  // Last, on a release that is otherwise valid: who could have written it.
  const untrusted = await checkTrust(app, file, { bin, cfg }).catch((err: unknown) => {
    if (err instanceof RelinkError) return [err];
    throw err;
  });
  if (untrusted.length > 0) throw new RelinkErrors(untrusted);
  return Object.freeze({ bin, cfg });
}

/** Read and validate in one step; the snapshot is returned with the release. */
export async function loadCurrent(app: AppConfig, file: string = app.currentFile): Promise<{ snapshot: CurrentSnapshot; release: Release }> {
  const snapshot = await readCurrent(file);
  const release = await validateCurrent(app, snapshot.text, file);
  return { snapshot, release };
}

async function checkReleaseFile(file: string, key: CurrentKey, value: string, releasesReal: string, executable: boolean): Promise<string> {
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
  return real;
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
