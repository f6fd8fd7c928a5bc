/**
 * The state folder's layout, and who may read what in it:
 *
 *   <stateDir>/                           0755 root        the CLI finds the agent as any user
 *   <stateDir>/agent.json                 0644 root        pid, start time, config path, version
 *   <stateDir>/apps/                      0755 root
 *   <stateDir>/apps/NAME/                 0750 root:GROUP  GROUP: the group the app runs as
 *   <stateDir>/apps/NAME/state.json       0640 root:GROUP
 *   <stateDir>/apps/NAME/history.jsonl    0640 root:GROUP  and its rotated history.jsonl.1, .2, ...
 *
 * Journal entries carry refusal reasons and rejected current.conf text, which
 * may quote what only root or the app's user could read (issue 9, item 4):
 * root and the app's group read an app's folder, nobody else does. When the
 * agent does not run as root the files are its own and nothing is chowned.
 *
 * Also here: reading a small JSON file at the boundary (BOM, CRLF, a FIFO, a
 * damaged one), setting a damaged file aside, and the typed error every
 * writer of the state folder throws.
 */
import { JsonSyntaxError, parseJson as parseJsonText, stripBom } from './json.js';
import { constants as fsConstants, type Stats } from 'node:fs';
import { chmod, chown, lstat, mkdir, open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { z } from 'zod';
import { isErrno, RelinkError } from './errors.js';

export const APP_DIR_MODE = 0o750;
export const APP_FILE_MODE = 0o640;

/** The same rule as an app's `name` in the config: a folder name that cannot climb out of apps/. */
const APP_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function isAppName(name: string): boolean {
  return APP_NAME.test(name);
}

export function appsDir(stateDir: string): string {
  return path.join(stateDir, 'apps');
}

/** <stateDir>/apps/NAME: the app's journal and state file. */
export function appDir(stateDir: string, app: string): string {
  if (!isAppName(app)) throw new RelinkError('UNKNOWN_APP', `${JSON.stringify(app)} is not an app name`, { key: 'app', rule: 'must be an app name', found: app });
  return path.join(appsDir(stateDir), app);
}

export function appStateFile(stateDir: string, app: string): string {
  return path.join(appDir(stateDir, app), 'state.json');
}

export function journalFile(stateDir: string, app: string): string {
  return path.join(appDir(stateDir, app), 'history.jsonl');
}

export function agentFile(stateDir: string): string {
  return path.join(stateDir, 'agent.json');
}

/** Before issue 9: every app's attempts in one world-readable file. Migrated on agent start (migrate.ts). */
export function legacyJournalFile(stateDir: string): string {
  return path.join(stateDir, 'history.jsonl');
}

/** Before issue 9: <stateDir>/apps/NAME.json. Read when the new state file is missing. */
export function legacyStateFile(stateDir: string, app: string): string {
  return path.join(appsDir(stateDir), `${app}.json`);
}

/** A damaged line or file a reader skipped (a torn journal line, a state file of the wrong shape). */
export interface Damage {
  readonly file: string;
  /** 1-based line number, for the journal. */
  readonly line?: number;
  readonly problem: string;
}

export type OnDamage = (damage: Damage) => void;

export function describeDamage(d: Damage): string {
  return `${d.file}${d.line === undefined ? '' : `:${d.line}`}: ${d.problem}`;
}

/** One JSON text (a BOM and CRLF line ends accepted) checked against `schema`; the problem in words otherwise. */
export function parseJson<S extends z.ZodType>(text: string, schema: S): { ok: true; value: z.output<S> } | { ok: false; problem: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(stripBom(text));
  } catch {
    // Where and what, from the reader for hand-written JSON: V8's own message quotes the text.
    let why = 'not JSON';
    try {
      parseJsonText(text);
    } catch (err) {
      if (err instanceof JsonSyntaxError) why = err.message;
    }
    return { ok: false, problem: `is not valid JSON (${why})` };
  }
  const parsed = schema.safeParse(raw);
  if (parsed.success) return { ok: true, value: parsed.data };
  const issue = parsed.error.issues[0];
  const where = issue === undefined || issue.path.length === 0 ? '' : `"${issue.path.join('.')}": `;
  return { ok: false, problem: `is not what relink writes: ${where}${issue?.message ?? 'invalid'}` };
}

/** Far above any state file relink writes (a last deploy with a 64 KiB rejected current.conf). */
const MAX_STATE_BYTES = 4 * 1024 * 1024;

export type JsonRead<T> =
  | { readonly kind: 'ok'; readonly value: T }
  | { readonly kind: 'missing' }
  /** Unreadable (EACCES) or damaged: not valid JSON, the wrong shape, not a regular file, too large. */
  | { readonly kind: 'damaged'; readonly problem: string; readonly unreadable: boolean };

/**
 * Read a small JSON state file and check it against `schema`. Never blocks
 * (a FIFO is refused, not waited on) and never throws for what it finds.
 */
export async function readJsonFile<S extends z.ZodType>(file: string, schema: S): Promise<JsonRead<z.output<S>>> {
  let handle: FileHandle;
  try {
    handle = await open(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return { kind: 'missing' };
    return { kind: 'damaged', problem: `could not be read (${errnoText(err)})`, unreadable: true };
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) return { kind: 'damaged', problem: 'is not a regular file', unreadable: false };
    if (st.size > MAX_STATE_BYTES) return { kind: 'damaged', problem: `is ${st.size} bytes, more than relink ever writes (${MAX_STATE_BYTES})`, unreadable: false };
    const parsed = parseJson(await handle.readFile('utf8'), schema);
    return parsed.ok ? { kind: 'ok', value: parsed.value } : { kind: 'damaged', problem: parsed.problem, unreadable: false };
  } catch (err) {
    return { kind: 'damaged', problem: `could not be read (${errnoText(err)})`, unreadable: true };
  } finally {
    await handle.close();
  }
}

/**
 * Move a damaged file out of the way so the agent rebuilds it: FILE becomes
 * FILE.damaged-<ISO time> beside it, kept for a post-mortem. Returns the new
 * name. Throws a StateWriteError when it cannot be renamed.
 */
export async function setAside(file: string, now = new Date()): Promise<string> {
  const to = `${file}.damaged-${now.toISOString()}`;
  try {
    await rename(file, to);
  } catch (err) {
    throw writeFailed(file, err, 'set the damaged file aside');
  }
  return to;
}

/** A write to the state folder failed: the path, what was being done, and the errno (ENOSPC, EROFS, EACCES, ...). */
export class StateWriteError extends RelinkError {
  /** The errno code, e.g. "ENOSPC"; "unknown" when the failure had none. */
  readonly errno: string;
  constructor(file: string, doing: string, errno: string, detail: string, cause: unknown) {
    super('STATE_WRITE_FAILED', `${file}: could not ${doing} (found: ${detail})`, { file, rule: `could not ${doing}`, found: detail }, { cause });
    this.name = 'StateWriteError';
    this.errno = errno;
  }

  override toJSON(): Record<string, string> {
    return { ...super.toJSON(), errno: this.errno };
  }
}

export function writeFailed(file: string, err: unknown, doing: string): RelinkError {
  if (err instanceof RelinkError) return err;
  const errno = isErrno(err) ? (err.code as string) : 'unknown';
  return new StateWriteError(file, doing, errno, errnoText(err), err);
}

/** "ENOSPC: no space left on device", without the syscall and path Node appends. */
export function errnoText(err: unknown): string {
  if (!isErrno(err)) return String(err);
  return err.message.replace(/, \w+ '.*'$/s, '').replace(/, \w+$/, '');
}

const isRoot = (): boolean => process.getuid?.() === 0;

/**
 * Create the app's folder (and stateDir/apps above it, 0755), or correct it:
 * mode 0750, owned by root and `gid` when the agent is root. Throws a
 * StateWriteError.
 */
export async function ensureAppDir(dir: string, gid: number | undefined): Promise<void> {
  try {
    // Level by level, not recursive: on a read-only file system Node's
    // recursive mkdir reported nothing and the next step failed with a
    // misleading ENOENT; this way the error says EROFS (or ENOSPC, EACCES).
    for (const [d, mode] of [[path.dirname(path.dirname(dir)), 0o755], [path.dirname(dir), 0o755], [dir, APP_DIR_MODE]] as const) {
      try {
        await mkdir(d, { mode });
      } catch (err) {
        if (!isErrno(err, 'EEXIST')) throw err;
      }
    }
    const st = await lstat(dir);
    if (!st.isDirectory()) throw new StateWriteError(dir, 'use it as the app\'s state folder', 'ENOTDIR', `${st.isSymbolicLink() ? 'a symlink' : 'not a folder'}`, undefined);
    // mkdir's mode is filtered by the umask (0077 would shut the app's group out).
    if ((st.mode & 0o7777) !== APP_DIR_MODE) await chmod(dir, APP_DIR_MODE);
    if (isRoot() && gid !== undefined && (st.uid !== 0 || st.gid !== gid)) await chown(dir, 0, gid);
  } catch (err) {
    throw writeFailed(dir, err, 'create the app\'s state folder');
  }
}

/** Give an open file of the app's folder its mode (0640) and group; a no-op when both are right. */
export async function ownFile(handle: FileHandle, st: Stats, gid: number | undefined): Promise<void> {
  if ((st.mode & 0o7777) !== APP_FILE_MODE) await handle.chmod(APP_FILE_MODE);
  if (isRoot() && gid !== undefined && (st.uid !== 0 || st.gid !== gid)) await handle.chown(0, gid);
}

/**
 * Write a file of the app's folder so that readers see the old content or
 * the new, never a mix, and never a moment with the wrong owner: temp file
 * (0640, root:gid), fsync, rename over. Throws a StateWriteError.
 */
export async function writeAppFile(file: string, data: string, gid: number | undefined, doing = 'write it'): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
  let handle: FileHandle | undefined;
  try {
    handle = await open(tmp, 'wx', APP_FILE_MODE);
    await ownFile(handle, await handle.stat(), gid);
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await rename(tmp, file);
  } catch (err) {
    await handle?.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw writeFailed(file, err, doing);
  }
}
