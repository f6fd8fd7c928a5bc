/**
 * One app folder, one agent. Two agents with different state folders (two
 * configs naming the same app) each adopted the app and applied every
 * edit: both signalled it, both restarted it (issue 9, item 7). The claim
 * on the stateDir (src/state.ts) cannot see that, so each app folder gets a
 * lock of its own: `<dir>/.relink.lock`, naming the agent that manages it.
 *
 * The lock cannot outlive its agent: it names the agent's PID and its
 * start time (/proc/PID/stat), and a lock whose process is gone (or whose
 * PID now belongs to another process) is stale and taken over. Node has no
 * flock(); two agents taking over the same stale lock in the same instant
 * can both write it, so the writer reads it back, and the agent re-claims
 * it on every periodic re-check: the loser sees the other agent's name and
 * lets the app go.
 */
import { lstat, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './atomicWrite.js';
import { isErrno, RelinkError } from './errors.js';
import { readProc, type ProcIdentity } from './proc.js';
import { readSmallFile } from './safefs.js';

export interface LockOwner extends ProcIdentity {
  readonly configFile: string;
  readonly stateDir: string;
  readonly app: string;
}

export function lockFile(dir: string): string {
  return path.join(dir, '.relink.lock');
}

/** The lock's content when it names a live process; undefined when absent, stale or not a lock. */
export async function lockHolder(dir: string): Promise<LockOwner | undefined> {
  let text: string;
  try {
    // No planted link followed, never blocking on a FIFO, bounded (src/safefs.ts).
    text = (await readSmallFile(lockFile(dir), { maxBytes: 4096 })).bytes.toString('utf8');
  } catch {
    return undefined;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (raw === null || typeof raw !== 'object') return undefined;
  const r = raw as Record<string, unknown>;
  if (typeof r['pid'] !== 'number' || typeof r['startTime'] !== 'number') return undefined;
  const live = await readProc(r['pid']);
  if (live === undefined || live.startTime !== r['startTime']) return undefined;
  return {
    pid: r['pid'], startTime: r['startTime'],
    configFile: typeof r['configFile'] === 'string' ? r['configFile'] : '?',
    stateDir: typeof r['stateDir'] === 'string' ? r['stateDir'] : '?',
    app: typeof r['app'] === 'string' ? r['app'] : '?',
  };
}

const sameOwner = (a: ProcIdentity, b: ProcIdentity): boolean => a.pid === b.pid && a.startTime === b.startTime;

function lockedBy(dir: string, other: LockOwner): RelinkError {
  return new RelinkError('APP_LOCKED',
    `${dir} is managed by another relink agent (pid ${other.pid}, config ${other.configFile}, stateDir ${other.stateDir}, app ${JSON.stringify(other.app)}): one agent per app folder; stop that agent or remove the app from one of the configs`,
    { file: lockFile(dir), rule: 'one agent per app folder', found: `pid ${other.pid} (${other.configFile})` });
}

/**
 * Claim `dir` for `me`, or re-confirm the claim. Throws APP_LOCKED naming
 * the other agent when a live one holds it, APP_UNAVAILABLE when the folder
 * does not exist, APP_LOCK_FAILED when the lock cannot be written (a
 * read-only folder).
 */
export async function claimAppFolder(dir: string, me: LockOwner, memo: LockMemo = {}): Promise<void> {
  // Re-confirmed every few seconds for every app: when the lock file is the
  // very one this agent wrote or read last (inode, size, mtime), it is still
  // this agent's, and one lstat says so.
  if (memo.signature !== undefined && (await lockSignature(dir)) === memo.signature) return;
  memo.signature = undefined;
  const missing = await folderMissing(dir);
  if (missing !== undefined) throw missing;
  const holder = await lockHolder(dir);
  if (holder !== undefined) {
    if (!sameOwner(holder, me)) throw lockedBy(dir, holder);
    memo.signature = await lockSignature(dir);
    return;
  }
  const file = lockFile(dir);
  try {
    // Temp file + rename inside the folder as opened (src/atomicWrite.ts): no planted link is followed.
    await writeFileAtomic(file, `${JSON.stringify({ ...me, since: new Date().toISOString() })}\n`);
  } catch (err) {
    if (err instanceof RelinkError) throw err;
    const found = isErrno(err) ? err.code ?? 'error' : String(err);
    throw new RelinkError('APP_LOCK_FAILED', `${file}: could not write the lock that keeps a second agent off this app (${found})`,
      { file, rule: 'the app folder must exist and be writable by the agent', found }, { cause: err });
  }
  const now = await lockHolder(dir);
  if (now !== undefined && !sameOwner(now, me)) throw lockedBy(dir, now);
  memo.signature = await lockSignature(dir);
}

/** What claimAppFolder remembers between calls for one app (pass the same object every time). */
export interface LockMemo {
  signature?: string | undefined;
}

async function lockSignature(dir: string): Promise<string | undefined> {
  const st = await lstat(lockFile(dir), { bigint: true }).catch(() => undefined);
  return st === undefined || !st.isFile() ? undefined : `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** Remove the lock if it is `me`'s. */
export async function releaseAppFolder(dir: string, me: ProcIdentity): Promise<void> {
  const holder = await lockHolder(dir);
  if (holder !== undefined && sameOwner(holder, me)) await unlink(lockFile(dir)).catch(() => undefined);
}

/** APP_UNAVAILABLE when the app's folder is not there (or not a folder); undefined when it is. */
export async function folderMissing(dir: string): Promise<RelinkError | undefined> {
  const st = await stat(dir).catch((err: unknown) => err as NodeJS.ErrnoException);
  if (!(st instanceof Error) && st.isDirectory()) return undefined;
  const found = st instanceof Error ? (st.code === 'ENOENT' ? 'no such folder' : st.code ?? st.message) : 'not a folder';
  return new RelinkError('APP_UNAVAILABLE', `${dir}: the app's folder must exist (found: ${found}); the app is picked up when it does`,
    { file: dir, key: 'dir', rule: "the app's folder must exist", found });
}
