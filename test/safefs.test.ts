/**
 * src/safefs.ts on real files, real owners (users and groups made with
 * useradd) and real FIFOs: which symlinks are followed and which refused,
 * that nothing but a regular file is opened and nothing blocks, who may
 * read, what is chowned, and that an open folder stays the folder that was
 * checked when its path is swapped afterwards.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { chmod, chown, lchown, link, lstat, mkdir, open, readdir, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { writeFileAtomic } from '../src/atomicWrite.js';
import { openAppend, readerOf, readSmallFile, SafeFsError, withFolder, type Reader, type SafeFsProblem } from '../src/safefs.js';
import { rootOnly, openUp, testGroup, testUser, type TestUser } from './accounts.js';
import { defer, tmpDir } from './helpers.js';

const run = promisify(execFile);

async function refusal(p: Promise<unknown>, problem: SafeFsProblem): Promise<SafeFsError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof SafeFsError, `expected a SafeFsError (${problem}), got ${String(err)}`);
  assert.equal(err.problem, problem, err.message);
  assert.ok(err.file !== undefined && err.message.startsWith(`${err.file}: ${err.rule}`), err.message);
  return err;
}

async function mkfifo(t: TestContext, p: string): Promise<void> {
  await run('mkfifo', [p]);
  // Should a test fail by blocking on it, open the other end so the process can end.
  defer(t, async () => {
    for (const flags of [fsConstants.O_RDONLY | fsConstants.O_NONBLOCK, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK]) {
      await (await open(p, flags).catch(() => undefined))?.close();
    }
  });
}

/** `p` settles within `ms` or the test fails: the code under test blocked. */
async function within<T>(what: string, ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} blocked (no answer within ${ms / 1000} s)`)), ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** A folder tree other users may traverse: <root> (root's, 0755). */
async function openRoot(t: TestContext): Promise<string> {
  const root = await tmpDir(t, 'relink-safefs-');
  await openUp(root);
  return root;
}

/** <root>/<name>: a folder owned by `user`, as an app's folder is. */
async function usersFolder(root: string, name: string, user: TestUser): Promise<string> {
  const dir = path.join(root, name);
  await mkdir(dir, { mode: 0o755 });
  await chown(dir, user.uid, user.gid);
  return dir;
}

// --- reading: never blocks, nothing but regular files -----------------------

test('readSmallFile reads a regular file whole; a FIFO is refused at once without being opened', async (t) => {
  const root = await openRoot(t);
  const file = path.join(root, 'a.conf');
  await writeFile(file, 'hello\n');
  const r = await readSmallFile(file, { maxBytes: 64 });
  assert.equal(r.bytes.toString('utf8'), 'hello\n');
  assert.ok(r.stats.isFile());

  const fifo = path.join(root, 'fifo');
  await mkfifo(t, fifo);
  const err = await within('reading a FIFO', 10_000, refusal(readSmallFile(fifo, { maxBytes: 64 }), 'not-regular'));
  assert.equal(err.code, 'UNSAFE_PATH');
  assert.equal(err.message, `${fifo}: must be a regular file (found: a FIFO)`);
});

test('readSmallFile refuses a device behind a followed link, a folder, a missing file, and more than maxBytes', async (t) => {
  const root = await openRoot(t);
  const dev = path.join(root, 'dev');
  await symlink('/dev/zero', dev);
  const e1 = await refusal(readSmallFile(dev, { maxBytes: 64, links: 'follow', codes: { 'not-regular': 'CURRENT_UNREADABLE' } }), 'not-regular');
  assert.equal(e1.code, 'CURRENT_UNREADABLE');
  assert.equal(e1.found, 'a character device');
  assert.equal((await refusal(readSmallFile(root, { maxBytes: 64 }), 'not-regular')).found, 'a directory');
  const missing = await refusal(readSmallFile(path.join(root, 'nope'), { maxBytes: 64 }), 'missing');
  assert.equal(missing.message, `${path.join(root, 'nope')}: must exist (found: no such file)`);
  const deep = await refusal(readSmallFile(path.join(root, 'no', 'such'), { maxBytes: 64 }), 'missing');
  assert.match(deep.message, /found: no such file or folder .*\/no\)$/);

  const big = path.join(root, 'big');
  await writeFile(big, 'x'.repeat(65));
  assert.equal((await readSmallFile(big, { maxBytes: 65 })).bytes.length, 65);
  const tooLarge = await refusal(readSmallFile(big, { maxBytes: 64, codes: { 'too-large': 'CURRENT_TOO_LARGE' } }), 'too-large');
  assert.equal(tooLarge.code, 'CURRENT_TOO_LARGE');
  assert.equal(tooLarge.message, `${big}: must be at most 64 bytes (found: 65 bytes)`);
  const underFile = await refusal(readSmallFile(path.join(big, 'x'), { maxBytes: 64 }), 'not-directory');
  assert.match(underFile.message, /is a regular file\)$/);
});

// --- which symlinks are followed ---------------------------------------------

test('a symlink in a folder another user can write is refused, naming it, that user and the target; one in a root folder is followed', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const root = await openRoot(t);
  const secret = path.join(root, 'secret');
  await writeFile(secret, 'root only\n', { mode: 0o600 });

  const theirs = await usersFolder(root, 'theirs', user);
  const planted = path.join(theirs, 'app.log');
  await symlink(secret, planted);
  await lchown(planted, user.uid, user.gid);
  const err = await refusal(readSmallFile(planted, { maxBytes: 64 }), 'symlink');
  assert.equal(err.code, 'UNSAFE_PATH');
  assert.equal(err.message, `${planted}: must not be a symlink (a link in a folder ${user.name} can write is not followed as root) (found: symlink to ${secret})`);
  // 'follow' is for reads judged otherwise (current.conf: by who may read it).
  assert.equal((await readSmallFile(planted, { maxBytes: 64, links: 'follow' })).bytes.toString(), 'root only\n');

  // The admin's link in a folder only root can write: followed.
  const adminLink = path.join(root, 'alias');
  await symlink('secret', adminLink);
  assert.equal((await readSmallFile(adminLink, { maxBytes: 64 })).bytes.toString(), 'root only\n');
});

test('a folder on the path swapped for a symlink is refused; an admin\'s folder link in a root folder is followed', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const root = await openRoot(t);
  const etc = path.join(root, 'etc');
  await mkdir(etc);
  await writeFile(path.join(etc, 'app.log'), 'root only\n');
  const theirs = await usersFolder(root, 'web', user);
  const logs = path.join(theirs, 'logs');
  await symlink(etc, logs);
  await lchown(logs, user.uid, user.gid);
  const err = await refusal(readSmallFile(path.join(logs, 'app.log'), { maxBytes: 64 }), 'symlink');
  assert.equal(err.file, logs);
  assert.equal(err.found, `symlink to ${etc}`);

  // /srv -> /data/srv, made by the admin: followed, also for writes.
  await symlink(etc, path.join(root, 'srv'));
  assert.equal((await readSmallFile(path.join(root, 'srv', 'app.log'), { maxBytes: 64 })).bytes.toString(), 'root only\n');
  await withFolder(path.join(root, 'srv'), async (dir) => {
    assert.equal(dir.path, etc);
    await writeFile(dir.at('new'), 'x');
  });
  assert.equal(await readFile(path.join(etc, 'new'), 'utf8'), 'x');
});

test('in a sticky world-writable folder only root\'s own links are followed; a group-writable folder names its group', async (t) => {
  if (!rootOnly(t)) return;
  const group = await testGroup(t);
  const user = await testUser(t, [group]);
  const root = await openRoot(t);
  await writeFile(path.join(root, 'target'), 'target\n');
  const tmp = path.join(root, 'tmp');
  await mkdir(tmp);
  await chmod(tmp, 0o1777);
  const rootsLink = path.join(tmp, 'roots');
  await symlink(path.join(root, 'target'), rootsLink);
  assert.equal((await readSmallFile(rootsLink, { maxBytes: 64 })).bytes.toString(), 'target\n');
  const usersLink = path.join(tmp, 'users');
  await symlink(path.join(root, 'target'), usersLink);
  await lchown(usersLink, user.uid, user.gid);
  assert.match((await refusal(readSmallFile(usersLink, { maxBytes: 64 }), 'symlink')).message, /a link in a folder every user can write is not followed as root/);

  const shared = path.join(root, 'shared');
  await mkdir(shared);
  await chown(shared, 0, group.gid);
  await chmod(shared, 0o775);
  const groupLink = path.join(shared, 'l');
  await symlink(path.join(root, 'target'), groupLink);
  assert.match((await refusal(readSmallFile(groupLink, { maxBytes: 64 }), 'symlink')).message, new RegExp(`a link in a folder the group ${group.name} can write`));
});

// --- reading on a user's behalf ---------------------------------------------

test('with a reader, a file that user could not read is refused unread: mode bits, owner class first, supplementary groups, folders on the way', async (t) => {
  if (!rootOnly(t)) return;
  const group = await testGroup(t);
  const user = await testUser(t, [group]);
  const reader: Reader = await readerOf({ user: user.name, uid: user.uid, gid: user.gid });
  assert.ok(reader.groups.includes(group.gid), `id -G gives the supplementary group: ${reader.groups.join(' ')}`);
  const root = await openRoot(t);
  const file = async (name: string, owner: [number, number], mode: number): Promise<string> => {
    const p = path.join(root, name);
    await writeFile(p, `${name}\n`);
    await chown(p, ...owner);
    await chmod(p, mode);
    return p;
  };
  const secret = await file('secret', [0, 0], 0o600);
  const err = await refusal(readSmallFile(secret, { maxBytes: 64, reader, codes: { permission: 'CURRENT_UNREADABLE' } }), 'permission');
  assert.equal(err.code, 'CURRENT_UNREADABLE');
  assert.equal(err.message, `${secret}: must be readable by the app's user ${user.name} (uid ${user.uid}), for whom the agent reads it (found: ${secret} is owned by root (uid 0), group root, mode 0600)`);

  assert.equal((await readSmallFile(await file('group', [0, group.gid], 0o640), { maxBytes: 64, reader })).bytes.toString(), 'group\n');
  assert.equal((await readSmallFile(await file('world', [0, 0], 0o644), { maxBytes: 64, reader })).bytes.toString(), 'world\n');
  // The owner class decides alone, as in the kernel: no read for the owner, whatever the group may.
  await refusal(readSmallFile(await file('own', [user.uid, group.gid], 0o040), { maxBytes: 64, reader }), 'permission');

  // Through a link into a folder the user may not search.
  const vault = path.join(root, 'vault');
  await mkdir(vault, { mode: 0o700 });
  await chmod(vault, 0o700);
  await writeFile(path.join(vault, 'open'), 'open\n', { mode: 0o644 });
  const viaLink = path.join(root, 'via');
  await symlink(path.join(vault, 'open'), viaLink);
  const folderErr = await refusal(readSmallFile(viaLink, { maxBytes: 64, reader, links: 'follow' }), 'permission');
  assert.equal(folderErr.file, viaLink);
  assert.equal(folderErr.found, `the folder ${vault} is owned by root (uid 0), group root, mode 0700`);
  // Root reads anything.
  const rootReader = await readerOf({ user: 'root', uid: 0, gid: 0 });
  assert.equal((await readSmallFile(viaLink, { maxBytes: 64, reader: rootReader, links: 'follow' })).bytes.toString(), 'open\n');
});

// --- the log: opened for appending, handed to the app's user ---------------

test('openAppend creates the log (and its folders) and hands it to the app\'s user on the descriptor', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const root = await openRoot(t);
  const dir = await usersFolder(root, 'web', user);
  const log = path.join(dir, 'logs', 'app.log');
  const h = await openAppend(log, { owner: { uid: user.uid, gid: user.gid } });
  await h.write('one\n');
  await h.close();
  const st = await stat(log);
  assert.equal(st.uid, user.uid);
  assert.equal(st.gid, user.gid);
  assert.equal(st.mode & 0o777, 0o640);
  assert.equal((await stat(path.dirname(log))).uid, 0, 'a folder the agent made stays the agent\'s');

  // Again: appended, not truncated; already the user's, left as it is.
  const again = await openAppend(log, { owner: { uid: user.uid, gid: user.gid } });
  await again.write('two\n');
  await again.close();
  assert.equal(await readFile(log, 'utf8'), 'one\ntwo\n');

  // A root-owned log with one name (an app that ran as root before) is handed over.
  const old = path.join(dir, 'old.log');
  await writeFile(old, '');
  await (await openAppend(old, { owner: { uid: user.uid, gid: user.gid } })).close();
  assert.equal((await stat(old)).uid, user.uid);
});

test('openAppend refuses a hard link, anybody else\'s file, a FIFO and a planted link, touching none of them', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const other = await testUser(t);
  const root = await openRoot(t);
  const dir = await usersFolder(root, 'web', user);
  const owner = { uid: user.uid, gid: user.gid };
  const secret = path.join(root, 'secret');
  await writeFile(secret, 'root only\n', { mode: 0o600 });

  const hard = path.join(dir, 'hard.log');
  await link(secret, hard);
  const e1 = await refusal(openAppend(hard, { owner }), 'hard-link');
  assert.equal(e1.found, '2 names, owned by root (uid 0)');

  const theirs = path.join(dir, 'theirs.log');
  await writeFile(theirs, 'other\n');
  await chown(theirs, other.uid, other.gid);
  const e2 = await refusal(openAppend(theirs, { owner }), 'owner');
  assert.equal(e2.message, `${theirs}: must belong to the app's user ${user.name} (uid ${user.uid}) or to root (found: owned by ${other.name} (uid ${other.uid}))`);

  const fifo = path.join(dir, 'fifo.log');
  await mkfifo(t, fifo);
  await within('opening a FIFO log', 10_000, refusal(openAppend(fifo, { owner }), 'not-regular'));

  const planted = path.join(dir, 'planted.log');
  await symlink(secret, planted);
  await refusal(openAppend(planted, { owner }), 'symlink');

  const st = await stat(secret);
  assert.deepEqual([st.uid, st.gid, st.mode & 0o777, st.size], [0, 0, 0o600, 'root only\n'.length]);
  // The app's own file may have another name: it could write both anyway.
  const own = path.join(dir, 'own.log');
  await writeFile(own, '');
  await chown(own, user.uid, user.gid);
  await link(own, path.join(dir, 'own2.log'));
  await (await openAppend(own, { owner })).close();
});

// --- an open folder stays the folder that was checked ----------------------

test('withFolder: entries are reached through the open folder, not its path, even after the path is swapped', async (t) => {
  const root = await openRoot(t);
  const dir = path.join(root, 'app');
  await mkdir(dir);
  const elsewhere = path.join(root, 'elsewhere');
  await mkdir(elsewhere);
  await withFolder(dir, async (f) => {
    assert.throws(() => f.at('..'), RangeError);
    assert.throws(() => f.at('a/b'), RangeError);
    // The folder is moved away and a symlink put in its place mid-operation.
    await rename(dir, path.join(root, 'moved'));
    await symlink(elsewhere, dir);
    await writeFile(f.at('written'), 'x');
    await symlink('target', f.at('link'));
    assert.ok((await lstat(f.at('link'))).isSymbolicLink());
  });
  assert.deepEqual((await readdir(path.join(root, 'moved'))).sort(), ['link', 'written']);
  assert.deepEqual(await readdir(elsewhere), []);
});

// --- atomic writes ------------------------------------------------------------

test('writeFileAtomic keeps the owner, group and mode of the app user\'s file it replaces, only that user\'s', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const root = await openRoot(t);
  const dir = await usersFolder(root, 'release', user);
  const file = path.join(dir, 'current.conf');
  await writeFile(file, 'old\n');
  await chown(file, user.uid, user.gid);
  await chmod(file, 0o640);
  await writeFileAtomic(file, 'new\n', { keepOwner: user.uid });
  const st = await stat(file);
  assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [user.uid, user.gid, 0o640]);
  assert.equal(await readFile(file, 'utf8'), 'new\n');

  // A root-owned file stays root's (as before); without keepOwner nothing is kept.
  await chown(file, 0, 0);
  await writeFileAtomic(file, 'newer\n', { keepOwner: user.uid });
  assert.equal((await stat(file)).uid, 0);
  await chown(file, user.uid, user.gid);
  await writeFileAtomic(file, 'newest\n');
  assert.equal((await stat(file)).uid, 0);
  assert.deepEqual((await readdir(dir)).sort(), ['current.conf'], 'no temp file left');

  // A symlink of the user's (a symlinked current.conf) is replaced, not followed, by a file of the user's.
  const target = path.join(root, 'elsewhere.conf');
  await writeFile(target, 'target\n');
  await rm(file);
  await symlink(target, file);
  await lchown(file, user.uid, user.gid);
  await writeFileAtomic(file, 'rolled back\n', { keepOwner: user.uid });
  const after = await lstat(file);
  assert.ok(after.isFile());
  assert.deepEqual([after.uid, after.gid, after.mode & 0o7777], [user.uid, user.gid, 0o644]);
  assert.equal(await readFile(target, 'utf8'), 'target\n', 'the link target is untouched');
});

test('writeFileAtomic refuses a folder swapped for a symlink and writes nothing there', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const root = await openRoot(t);
  const web = await usersFolder(root, 'web', user);
  const etc = path.join(root, 'etc');
  await mkdir(etc);
  const release = path.join(web, 'release');
  await symlink(etc, release);
  await lchown(release, user.uid, user.gid);
  const err = await refusal(writeFileAtomic(path.join(release, 'current.conf'), '{}\n'), 'symlink');
  assert.equal(err.code, 'UNSAFE_PATH');
  assert.equal(err.file, release);
  assert.deepEqual(await readdir(etc), []);
});
