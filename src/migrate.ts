/**
 * The state folder before issue 9 -> after, once, when the agent starts
 * (after it has claimed the stateDir, before any app records anything):
 *
 *   <stateDir>/history.jsonl (every app, 0644)  -> <stateDir>/apps/NAME/history.jsonl (+ rotated), 0640 root:GROUP
 *   <stateDir>/apps/NAME.json (0644)            -> <stateDir>/apps/NAME/state.json, 0640 root:GROUP
 *
 * The old journal's entries go into each app's journal oldest first, before
 * anything already there, through the same rotation (the newest kept), and
 * the old file is removed. It is first renamed to history.jsonl.migrating, so
 * a crash half-way is finished by the next start; an app whose journal
 * already ends with the old journal's last entry for it was done by that
 * crashed run and is not done twice.
 */
import { constants as fsConstants } from 'node:fs';
import { open, readdir, rename, rm, unlink } from 'node:fs/promises';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { isErrno } from './errors.js';
import { Journal, newestFirst, oldestFirst, HistoryEntrySchema, type JournalOptions } from './history.js';
import { AppStateSchema } from './state.js';
import {
  appDir, appsDir, appStateFile, ensureAppDir, isAppName, journalFile, legacyJournalFile, parseJson, readJsonFile, setAside,
  writeAppFile, writeFailed, type OnDamage,
} from './stateDir.js';

export interface MigrateApp {
  readonly name: string;
  /** The gid the app runs as (its folder's group). Apps in the old files but not here get the agent's own group. */
  readonly gid?: number;
}

export interface MigrateOptions extends Pick<JournalOptions, 'maxBytes' | 'backups'> {
  /** Told of every damaged line of the old journal (skipped) and every damaged old state file (set aside). */
  readonly onDamaged?: OnDamage;
}

export interface MigrateResult {
  /** Entries moved into each app's journal. */
  readonly journals: Readonly<Record<string, number>>;
  /** Apps whose old state file became apps/NAME/state.json. */
  readonly states: readonly string[];
  /** Old files removed. */
  readonly removed: readonly string[];
}

/** Lines written per append while splitting: one write per batch, not per entry. */
const BATCH = 512;

/** Move a state folder of the layout before issue 9 to the per-app layout. Idempotent; a no-op on a new layout. Throws a StateWriteError. */
export async function migrateStateDir(stateDir: string, apps: readonly MigrateApp[], opts: MigrateOptions = {}): Promise<MigrateResult> {
  const gids = new Map(apps.map((a) => [a.name, a.gid]));
  const removed: string[] = [];
  const states = await migrateStates(stateDir, gids, removed, opts);
  const journals: Record<string, number> = {};
  const old = legacyJournalFile(stateDir);
  const pending = `${old}.migrating`;
  for (;;) {
    if (!(await exists(pending))) {
      if (!(await exists(old))) break;
      try {
        await rename(old, pending);
      } catch (err) {
        throw writeFailed(old, err, 'move the old journal aside for migration');
      }
    }
    for (const [app, n] of Object.entries(await splitJournal(stateDir, pending, gids, opts))) journals[app] = (journals[app] ?? 0) + n;
    try {
      await unlink(pending);
    } catch (err) {
      throw writeFailed(pending, err, 'remove the migrated journal');
    }
    removed.push(old);
  }
  return { journals, states, removed };
}

async function migrateStates(stateDir: string, gids: ReadonlyMap<string, number | undefined>, removed: string[], opts: MigrateOptions): Promise<string[]> {
  let names: string[];
  try {
    names = (await readdir(appsDir(stateDir), { withFileTypes: true })).filter((d) => d.isFile() && d.name.endsWith('.json')).map((d) => d.name.slice(0, -'.json'.length));
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw writeFailed(appsDir(stateDir), err, 'list the old state files');
  }
  const moved: string[] = [];
  for (const name of names.filter(isAppName)) {
    const legacy = path.join(appsDir(stateDir), `${name}.json`);
    const target = appStateFile(stateDir, name);
    if (!(await exists(target))) {
      const r = await readJsonFile(legacy, AppStateSchema);
      if (r.kind === 'damaged') {
        const aside = await setAside(legacy);
        opts.onDamaged?.({ file: legacy, problem: `${r.problem}; set aside as ${aside}` });
        continue;
      }
      if (r.kind === 'missing') continue;
      await ensureAppDir(appDir(stateDir, name), gids.get(name));
      await writeAppFile(target, `${JSON.stringify(r.value, null, 2)}\n`, gids.get(name), 'write the state file');
      moved.push(name);
    }
    try {
      await unlink(legacy);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw writeFailed(legacy, err, 'remove the old state file');
    }
    removed.push(legacy);
  }
  return moved;
}

/** Each app's entries of the old journal into a rotating journal in a temp folder, then into place. */
async function splitJournal(stateDir: string, file: string, gids: ReadonlyMap<string, number | undefined>, opts: MigrateOptions): Promise<Record<string, number>> {
  const staged = new Map<string, { journal: Journal; batch: string[]; count: number; last: string }>();
  const gidOf = (app: string): number | undefined => gids.get(app);
  const stage = async (app: string) => {
    let s = staged.get(app);
    if (s === undefined) {
      await ensureAppDir(appDir(stateDir, app), gidOf(app));
      const tmp = path.join(appDir(stateDir, app), '.migrating');
      await rm(tmp, { recursive: true, force: true }); // a crashed run's leftovers: redone from the old file
      s = { journal: new Journal(path.join(tmp, 'history.jsonl'), { maxBytes: opts.maxBytes, backups: opts.backups, gid: gidOf(app) }), batch: [], count: 0, last: '' };
      staged.set(app, s);
    }
    return s;
  };
  const handle = await open(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  try {
    let lineNo = 0;
    let carry = '';
    const buf = Buffer.alloc(64 * 1024);
    const decoder = new StringDecoder('utf8');
    const take = async (line: string) => {
      lineNo++;
      const text = line.replace(/\r$/, '');
      if (text.trim() === '') return;
      const r = parseJson(text, HistoryEntrySchema);
      if (!r.ok || !isAppName(r.value.app)) {
        opts.onDamaged?.({ file, line: lineNo, problem: `${r.ok ? `app ${JSON.stringify(r.value.app)} is not an app name` : r.problem}; not migrated` });
        return;
      }
      const s = await stage(r.value.app);
      // Re-serialised: a BOM or CR of the old file stays behind; unknown keys are kept.
      const line2 = JSON.stringify(r.value);
      s.batch.push(line2);
      s.count++;
      s.last = line2;
      if (s.batch.length >= BATCH) await s.journal.appendLines(s.batch.splice(0));
    };
    for (;;) {
      const { bytesRead } = await handle.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      carry += decoder.write(buf.subarray(0, bytesRead));
      let nl: number;
      while ((nl = carry.indexOf('\n')) >= 0) {
        const line = carry.slice(0, nl);
        carry = carry.slice(nl + 1);
        await take(line);
      }
    }
    carry += decoder.end();
    if (carry !== '') await take(carry);
  } finally {
    await handle.close();
  }
  const out: Record<string, number> = {};
  for (const [app, s] of staged) {
    if (s.batch.length > 0) await s.journal.appendLines(s.batch.splice(0));
    const live = journalFile(stateDir, app);
    const it = newestFirst(stateDir, app);
    const newest = await it.next();
    await it.return(undefined);
    // Both sides as the schema outputs them (the same key order).
    const already = !newest.done && JSON.stringify(newest.value) === s.last;
    if (!already) {
      // Anything already in the new journal is newer than the old file: after it.
      const lines: string[] = [];
      for await (const e of oldestFirst(stateDir, app, { onDamaged: opts.onDamaged })) {
        lines.push(JSON.stringify(e));
        if (lines.length >= BATCH) await s.journal.appendLines(lines.splice(0));
      }
      if (lines.length > 0) await s.journal.appendLines(lines);
      await replaceJournal(live, s.journal.file);
      out[app] = s.count;
    }
    await rm(path.dirname(s.journal.file), { recursive: true, force: true });
  }
  return out;
}

/** The staged journal (and its rotated files) over the live one. */
async function replaceJournal(live: string, staged: string): Promise<void> {
  try {
    for (let k = 0; ; k++) {
      const f = k === 0 ? live : `${live}.${k}`;
      try {
        await unlink(f);
      } catch (err) {
        if (isErrno(err, 'ENOENT') && k > 0) break;
        if (!isErrno(err, 'ENOENT')) throw err;
      }
    }
    for (let k = 1; await exists(`${staged}.${k}`); k++) await rename(`${staged}.${k}`, `${live}.${k}`);
    if (await exists(staged)) await rename(staged, live);
  } catch (err) {
    throw writeFailed(live, err, 'put the migrated journal in place');
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await (await open(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK)).close();
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}
