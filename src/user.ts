/**
 * Users and groups, and who an app runs as.
 *
 * Names are looked up with getent, so accounts from NSS (LDAP, sssd) work
 * as they do for systemd's User=; /etc/passwd and /etc/group are read
 * directly only where getent is missing. Node itself can name only the
 * current user (os.userInfo), hence the helper.
 */
import { execFile } from 'node:child_process';
import { readFile, stat } from 'node:fs/promises';
import type { AppConfig } from './config.js';
import { isErrno, RelinkError } from './errors.js';

export interface Account {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  readonly home: string;
}

export interface Group {
  readonly name: string;
  readonly gid: number;
  /** Supplementary members as listed in the group entry (not users whose primary group it is). */
  readonly members: readonly string[];
}

type Db = 'passwd' | 'group';

/**
 * Answers are kept while /etc/passwd and /etc/group are unchanged (useradd,
 * userdel and friends rewrite them), and at most a few seconds for accounts
 * from elsewhere (LDAP, sssd): the trust checks ask several times per deploy,
 * and a getent child process costs ~3 ms (measured, BENCHMARKS.md).
 */
const GETENT_TTL_MS = 10_000;
const getentCache = new Map<string, { at: number; files: string; answer: Promise<string[][]> }>();

async function accountFilesStamp(): Promise<string> {
  const m = await Promise.all(['/etc/passwd', '/etc/group'].map((f) => stat(f).then((st) => `${st.ino}:${st.mtimeMs}:${st.size}`, () => '-')));
  return m.join('|');
}

/** The entries of `db` matching `key` (all of them without a key), as split lines. */
async function getent(db: Db, key?: string): Promise<string[][]> {
  const k = `${db}\0${key ?? ''}`;
  const files = await accountFilesStamp();
  const hit = getentCache.get(k);
  if (hit !== undefined && hit.files === files && Date.now() - hit.at < GETENT_TTL_MS) return hit.answer;
  const answer = getentUncached(db, key);
  getentCache.set(k, { at: Date.now(), files, answer });
  // A failure is not remembered.
  answer.catch(() => getentCache.delete(k));
  return answer;
}

async function getentUncached(db: Db, key?: string): Promise<string[][]> {
  const text = await new Promise<string>((resolve, reject) => {
    execFile('getent', key === undefined ? [db] : [db, key], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }, (err, stdout) => {
      // getent exits 2 for "no such key": an answer, not a failure.
      if (err && (err as { code?: unknown }).code === 2) resolve('');
      else if (err) reject(err);
      else resolve(stdout);
    });
  }).catch(async (err: unknown) => {
    if (!isErrno(err, 'ENOENT')) throw err;
    const all = await readFile(db === 'passwd' ? '/etc/passwd' : '/etc/group', 'utf8').catch(() => '');
    if (key === undefined) return all;
    // Same matching as getent: by name, or by number when the key is numeric.
    const idField = 2;
    return all.split('\n').filter((l) => {
      const f = l.split(':');
      return f[0] === key || (/^\d+$/.test(key) && f[idField] === key);
    }).join('\n');
  });
  return text.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#')).map((l) => l.split(':'));
}

function toAccount(f: string[] | undefined): Account | undefined {
  if (f === undefined || f.length < 7) return undefined;
  return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
}

/** A user by name or numeric uid; undefined when there is none. */
export async function lookupUser(spec: string | number): Promise<Account | undefined> {
  return toAccount((await getent('passwd', String(spec)))[0]);
}

/** A group by name or numeric gid; undefined when there is none. */
export async function lookupGroup(spec: string | number): Promise<Group | undefined> {
  const f = (await getent('group', String(spec)))[0];
  if (f === undefined || f.length < 4) return undefined;
  return { name: f[0]!, gid: Number(f[2]), members: f[3]!.split(',').filter((m) => m !== '') };
}

/**
 * Every user who is in group `gid`: its listed members and the users whose
 * primary group it is. Undefined when the group is unknown. Enumerating
 * users sees only sources that allow enumeration (local files do).
 */
export async function usersInGroup(gid: number): Promise<string[] | undefined> {
  const group = await lookupGroup(gid);
  if (group === undefined) return undefined;
  const primary = (await getent('passwd')).map(toAccount).filter((a): a is Account => a !== undefined && a.gid === gid).map((a) => a.name);
  return [...new Set([...group.members, ...primary])].sort();
}

/** The account an app runs as, resolved. */
export interface RunAs {
  readonly user: string;
  readonly uid: number;
  readonly gid: number;
  readonly group: string;
  readonly home: string | undefined;
  /** False when `user` is unset: the app runs as whoever runs the agent. */
  readonly configured: boolean;
}

/** `uid 1234` for an id without a name. */
export function describeUser(r: { user: string; uid: number }): string {
  return r.user === String(r.uid) ? `uid ${r.uid}` : `${r.user} (uid ${r.uid})`;
}

/**
 * Who `app` runs as: its `user` (and `group`, else the user's primary
 * group), or, without `user`, the account running this process.
 */
export async function resolveRunAs(app: AppConfig): Promise<RunAs> {
  if (app.user === undefined) {
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const [me, group] = await Promise.all([lookupUser(uid), lookupGroup(gid)]);
    return { user: me?.name ?? String(uid), uid, gid, group: group?.name ?? String(gid), home: me?.home, configured: false };
  }
  const account = await lookupUser(app.user);
  if (account === undefined) {
    throw new RelinkError('USER_UNKNOWN', `"user": no such user ${JSON.stringify(app.user)} (create it: useradd --system --no-create-home ${app.user})`,
      { key: 'user', rule: 'must name an existing user (name or uid)', found: app.user });
  }
  let gid = account.gid;
  let groupName: string | undefined;
  if (app.group !== undefined) {
    const group = await lookupGroup(app.group);
    if (group === undefined) {
      throw new RelinkError('USER_UNKNOWN', `"group": no such group ${JSON.stringify(app.group)}`,
        { key: 'group', rule: 'must name an existing group (name or gid)', found: app.group });
    }
    gid = group.gid;
    groupName = group.name;
  }
  groupName ??= (await lookupGroup(gid))?.name ?? String(gid);
  return { user: account.name, uid: account.uid, gid, group: groupName, home: account.home, configured: true };
}
