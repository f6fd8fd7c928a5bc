/**
 * Operators' requests to the agent about one app: `relink stop | start |
 * restart` (issue 12). A request is a small JSON file in
 * <stateDir>/apps/NAME/requests/ (0700, root's like the rest of the state
 * folder: the app's user can neither ask nor see), written atomically, named
 * so that the directory's sort order is the order they were made in. The
 * agent takes them in that order (read, then deleted) when the folder
 * changes and on every periodic re-check; one made while no agent runs
 * waits for the next. Each is answered by a journal entry carrying its id
 * (HistoryEntry.request), which is what `--wait` waits for, as `deploy
 * --wait` waits for the entry of its current.conf.
 *
 * Files, not a control socket: the same path as deploys (a file, the
 * journal), nothing listening, and a request survives an agent restart.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from './atomicWrite.js';
import { isErrno } from './errors.js';
import type { Command } from './history.js';
import { appDir, readJsonFile, setAside, type OnDamage } from './stateDir.js';

export interface AppRequest {
  readonly command: Command;
  /** A random UUID: the journal entry that answers the request carries it. */
  readonly id: string;
  /** When it was made (ISO time). */
  readonly at: string;
}

const RequestSchema = z.strictObject({
  command: z.enum(['stop', 'start', 'restart']),
  id: z.string().regex(/^[0-9a-f-]{36}$/),
  at: z.string(),
});

/** Requests left unanswered beyond this many are refused by the writer: a loop of `relink restart` must not fill the disk. */
export const MAX_PENDING = 100;

export function requestsDir(stateDir: string, app: string): string {
  return path.join(appDir(stateDir, app), 'requests');
}

/**
 * Make a request for `app`. Returns it (its id is what to wait for).
 * Throws the errno error of a state folder that cannot be written (EACCES
 * for anyone but root), or a RangeError when MAX_PENDING are already waiting.
 */
export async function writeRequest(stateDir: string, app: string, command: Command, now = new Date()): Promise<AppRequest> {
  const dir = requestsDir(stateDir, app);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const pending = (await readdir(dir)).filter((f) => f.endsWith('.json')).length;
  if (pending >= MAX_PENDING) throw new RangeError(`${dir} already holds ${pending} requests nobody has answered: is the agent running?`);
  const req: AppRequest = { command, id: randomUUID(), at: now.toISOString() };
  // Zero-padded milliseconds, then the id: sorted by name is sorted by time.
  const name = `${String(now.getTime()).padStart(15, '0')}-${req.id}.json`;
  await writeFileAtomic(path.join(dir, name), `${JSON.stringify(req)}\n`, { mode: 0o600 });
  return req;
}

/**
 * Every request waiting for `app`, oldest first, each removed as it is
 * read. A file that is not a request (damaged, foreign) is set aside and
 * told to `onDamaged`. Never throws for a missing folder.
 */
export async function takeRequests(stateDir: string, app: string, onDamaged: OnDamage = () => undefined): Promise<AppRequest[]> {
  const dir = requestsDir(stateDir, app);
  let names: string[];
  try {
    names = (await readdir(dir)).filter((f) => f.endsWith('.json')).sort();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
  const out: AppRequest[] = [];
  for (const name of names) {
    const file = path.join(dir, name);
    const read = await readJsonFile(file, RequestSchema);
    if (read.kind === 'missing') continue;
    if (read.kind === 'damaged') {
      onDamaged({ file, problem: read.problem });
      await setAside(file).catch(() => unlink(file).catch(() => undefined));
      continue;
    }
    await unlink(file).catch((err: unknown) => {
      if (!isErrno(err, 'ENOENT')) throw err;
    });
    out.push(read.value);
  }
  return out;
}
