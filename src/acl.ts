/**
 * POSIX ACLs, for the trust checks (src/trust.ts, issue 15): with an
 * extended ACL a file's mode bits no longer say who may write it
 * (`setfacl -m u:mallory:rw app.2.0` on a 0644 file shows mode 0664).
 *
 * Node has no xattr API, so the ACLs are read with Debian's getfacl
 * (package acl), the tool an operator checks them with, spawned once for a
 * whole list of files. Only files whose group-write bit is set are asked
 * about: by acl(5) an ACL with named user or group entries must hold an
 * ACL_MASK entry, the group bits of st_mode then are that mask, and the
 * mask bounds every ACL_USER, ACL_GROUP_OBJ and ACL_GROUP entry ("the
 * maximum access rights that can be granted"); the owner's and the others'
 * entries are the owner and other bits. So with group write clear no ACL
 * entry grants write to anybody the mode bits do not already name.
 *
 * A default ACL (a folder's, inherited by entries made in it later) grants
 * nothing on the folder itself: what it gives a new file shows in that
 * file's own ACL, checked in its turn. Only the access ACL is judged.
 */
import { spawn } from 'node:child_process';

/** Debian's getfacl (package acl), by absolute path: the agent runs as root, and PATH is no part of a trust check. */
export const GETFACL = '/usr/bin/getfacl';

/** Why ACLs were not read when getfacl is not installed. */
export const GETFACL_MISSING = `${GETFACL} is missing`;

/** An ACL entry that can grant write beyond the owner: a named user, the owning group or a named group. */
export interface AclEntry {
  readonly tag: 'user' | 'group';
  /** The named user's or group's id; undefined for the owning group (`group::`). */
  readonly id: number | undefined;
  /** As getfacl prints them: `rw-`. */
  readonly perms: string;
  /** Whether it grants write after the mask. */
  readonly writes: boolean;
}

/** A file's extended access ACL. */
export interface Acl {
  readonly entries: readonly AclEntry[];
  /** The mask's perms (`rw-`), which are the group bits of the mode. */
  readonly mask: string | undefined;
}

/**
 * What readAcls found: each file's extended ACL (a file with only the mode
 * bits has none), and why each file it could not read was not read.
 */
export interface AclResult {
  readonly acls: ReadonlyMap<string, Acl>;
  readonly unreadable: ReadonlyMap<string, string>;
}

/** getfacl's `\ooo` and `\\` escapes in a `# file:` line, undone (on the bytes, as latin1 text). */
function unescape(name: string): string {
  const bytes = name.replace(/\\(\\|[0-7]{3})/g, (_, e: string) => (e === '\\' ? '\\' : String.fromCharCode(parseInt(e, 8))));
  return Buffer.from(bytes, 'latin1').toString('utf8');
}

/** getfacl's text (`-n`: numeric ids; `-s`: files with an extended ACL only), by file. */
export function parseGetfacl(text: string): Map<string, Acl> {
  const out = new Map<string, Acl>();
  for (const block of text.split(/\n\n+/)) {
    const lines = block.split('\n');
    const head = lines.find((l) => l.startsWith('# file: '));
    if (head === undefined) continue;
    let mask: string | undefined;
    const raw: { tag: 'user' | 'group'; id: number | undefined; perms: string }[] = [];
    for (const line of lines) {
      // `user:999:rw-\t#effective:r--`: the effective part is worked out below.
      const m = /^(user|group|mask|other):([^:]*):([rwx-]{3})/.exec(line);
      if (m === null) continue;
      const [, tag, id, perms] = m as unknown as [string, string, string, string];
      if (tag === 'mask') mask = perms;
      else if (tag === 'user' && id !== '') raw.push({ tag, id: Number(id), perms });
      else if (tag === 'group') raw.push({ tag, id: id === '' ? undefined : Number(id), perms });
    }
    const entries = raw.map((e) => ({ ...e, writes: e.perms[1] === 'w' && (mask === undefined || mask[1] === 'w') }));
    out.set(unescape(head.slice('# file: '.length)), { entries, mask });
  }
  return out;
}

/**
 * The extended access ACLs of `files` (absolute paths), with one getfacl
 * for all of them: their names on its stdin, one a line (a name holding a
 * newline is passed as an argument instead). Never rejects: when getfacl
 * is missing or fails, says why for each file it could not read (the trust
 * checks refuse those).
 */
export async function readAcls(files: readonly string[]): Promise<AclResult> {
  if (files.length === 0) return { acls: new Map(), unreadable: new Map() };
  const lines = files.filter((f) => !f.includes('\n'));
  const args = files.filter((f) => f.includes('\n'));
  const run = await new Promise<{ code: number | null; stdout: string; stderr: string; error?: NodeJS.ErrnoException }>((resolve) => {
    const child = spawn(GETFACL, ['--absolute-names', '--numeric', '--skip-base', '--', ...args, '-'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => undefined);
    child.on('error', (error: NodeJS.ErrnoException) => resolve({ code: null, stdout: '', stderr: '', error }));
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out).toString('latin1'), stderr: Buffer.concat(err).toString('utf8') }));
    child.stdin.end(lines.map((f) => `${f}\n`).join(''));
  });
  const all = (why: string): AclResult => ({ acls: new Map(), unreadable: new Map(files.map((f) => [f, why])) });
  if (run.error !== undefined) {
    return all(run.error.code === 'ENOENT' ? GETFACL_MISSING : `${GETFACL} could not be run (${run.error.code ?? run.error.message})`);
  }
  const acls = parseGetfacl(run.stdout);
  const asked = new Set(files);
  // A name read back otherwise than it was asked (an escape not undone):
  // nothing it said can be matched to the files for sure.
  const stray = [...acls.keys()].find((f) => !asked.has(f));
  if (stray !== undefined) return all(`${GETFACL} answered for ${JSON.stringify(stray)}, a file not asked about`);
  if (run.code === 0) return { acls, unreadable: new Map() };
  // A file getfacl could not read (gone, or no access) has no block: it
  // said why on stderr. Any other failure leaves every file unread.
  const errors = run.stderr.split('\n').filter((l) => l !== '');
  const unreadable = new Map<string, string>();
  for (const f of files) {
    if (acls.has(f)) continue;
    const said = errors.find((l) => l.startsWith(`getfacl: ${f}: `));
    if (said !== undefined) unreadable.set(f, said);
  }
  if (unreadable.size === 0) return all(`${GETFACL} exited with ${run.code}${errors[0] === undefined ? '' : `: ${errors[0]}`}`);
  return { acls, unreadable };
}
