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
 *
 * A request is not carried out late: it expires (`expiresAt`: the end of
 * the asker's --wait, else REQUEST_TTL_MS), and one the agent finds expired
 * is answered "refused" (REQUEST_EXPIRED) instead; an asker whose --wait
 * runs out withdraws it (deletes the file) if the agent has not taken it
 * yet. The agent takes a request by renaming it first, so a request is
 * either withdrawn or taken, never both (a stop that "got no answer" then
 * happened minutes later, once the app could be managed again: trial of
 * issue 12).
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, rename, unlink } from 'node:fs/promises';
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
  /** Not carried out after this (ISO time); absent in a request from before expiry existed. */
  readonly expiresAt?: string | undefined;
}

/** A request written without --wait expires this long after it was made (ms): an agent down or an app that cannot be managed for longer does not act on it later. */
export const REQUEST_TTL_MS = 15 * 60_000;

const RequestSchema = z.strictObject({
  command: z.enum(['stop', 'start', 'restart']),
  id: z.string().regex(/^[0-9a-f-]{36}$/),
  at: z.string(),
  expiresAt: z.string().optional(),
});

/** A request written, and the file that holds it until the agent takes it (RequestHandle.withdraw deletes it). */
export interface RequestHandle {
  readonly request: AppRequest;
  /**
   * Delete the request unless the agent has taken it: true when withdrawn
   * (it will not be carried out), false when the agent has it already.
   */
  withdraw(): Promise<boolean>;
}

/** Requests left unanswered beyond this many are refused by the writer: a loop of `relink restart` must not fill the disk. */
export const MAX_PENDING = 100;

export function requestsDir(stateDir: string, app: string): string {
  return path.join(appDir(stateDir, app), 'requests');
}

/**
 * Make a request for `app`, carried out only until `ttlMs` from `now`
 * (default REQUEST_TTL_MS). Returns it (its id is what to wait for) with the
 * way to withdraw it. Throws the errno error of a state folder that cannot
 * be written (EACCES for anyone but root), or a RangeError when MAX_PENDING
 * are already waiting.
 */
export async function writeRequest(stateDir: string, app: string, command: Command, now = new Date(), ttlMs = REQUEST_TTL_MS): Promise<RequestHandle> {
  const dir = requestsDir(stateDir, app);
  // The app's state folder is the agent's to make (its mode and group): only the requests folder is made here.
  await mkdir(dir, { mode: 0o700 }).catch((err: unknown) => {
    if (!isErrno(err, 'EEXIST')) throw err;
  });
  const pending = (await readdir(dir)).filter((f) => f.endsWith('.json')).length;
  if (pending >= MAX_PENDING) throw new RangeError(`${dir} already holds ${pending} requests nobody has answered: is the agent running?`);
  const req: AppRequest = { command, id: randomUUID(), at: now.toISOString(), expiresAt: new Date(now.getTime() + ttlMs).toISOString() };
  // Zero-padded milliseconds, then the id: sorted by name is sorted by time.
  const file = path.join(dir, `${String(now.getTime()).padStart(15, '0')}-${req.id}.json`);
  await writeFileAtomic(file, `${JSON.stringify(req)}\n`, { mode: 0o600 });
  return {
    request: req,
    withdraw: () => unlink(file).then(() => true, (err: unknown) => {
      if (isErrno(err, 'ENOENT')) return false;
      throw err;
    }),
  };
}

/** What takeRequests found: the requests to carry out, and those that expired first (to be answered "refused"). */
export interface TakenRequests {
  readonly due: AppRequest[];
  readonly expired: AppRequest[];
}

/**
 * Every request waiting for `app`, oldest first, each taken (renamed to
 * *.taken, read, deleted: one its asker withdraws first is gone, and one
 * taken can no longer be withdrawn) and sorted into due and expired (by
 * `nowMs`). A file that is not a request (damaged, foreign) is set aside
 * and told to `onDamaged`. Never throws for a missing folder.
 */
export async function takeRequests(stateDir: string, app: string, onDamaged: OnDamage = () => undefined, nowMs = Date.now()): Promise<TakenRequests> {
  const dir = requestsDir(stateDir, app);
  let names: string[];
  try {
    names = (await readdir(dir)).filter((f) => f.endsWith('.json')).sort();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { due: [], expired: [] };
    throw err;
  }
  const out: TakenRequests = { due: [], expired: [] };
  for (const name of names) {
    const file = path.join(dir, `${name}.taken`);
    try {
      await rename(path.join(dir, name), file);
    } catch (err) {
      // Withdrawn by its asker meanwhile.
      if (isErrno(err, 'ENOENT')) continue;
      throw err;
    }
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
    const expiresAt = read.value.expiresAt === undefined ? NaN : Date.parse(read.value.expiresAt);
    (expiresAt < nowMs ? out.expired : out.due).push(read.value);
  }
  return out;
}
