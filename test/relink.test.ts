/**
 * Relinking on real symlinks: created when absent, replaced when present,
 * never a moment without app.bin (proved by a reader in another process),
 * a real file or folder in the way is refused and left untouched, and a
 * folder on the links' path that the app's user swapped for a symlink is
 * refused (a real second user).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { watch } from 'node:fs';
import { chmod, chown, lchown, link, lstat, mkdir, readdir, readFile, readlink, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import type { Release } from '../src/current.js';
import { RelinkError } from '../src/errors.js';
import { readLinks, readLinkTarget, relink, swapLink, type Links } from '../src/relink.js';
import { sameContent } from '../src/current.js';
import { rootOnly, openUp, testUser } from './accounts.js';
import { tmpDir, waitFor } from './helpers.js';

interface Layout {
  readonly dir: string;
  readonly links: Links;
  readonly a: Release;
  readonly b: Release;
}

/** <dir>/release/{app,cfg}.{1.0,2.0}; links <dir>/app.bin, <dir>/app.cfg (absent). */
async function layout(t: TestContext): Promise<Layout> {
  const dir = await tmpDir(t);
  const rel = path.join(dir, 'release');
  await mkdir(rel);
  for (const r of ['1.0', '2.0']) {
    await writeFile(path.join(rel, `app.${r}`), `#!/bin/sh\necho ${r}\n`);
    await chmod(path.join(rel, `app.${r}`), 0o755);
    await writeFile(path.join(rel, `cfg.${r}`), `release=${r}\n`);
  }
  return {
    dir,
    links: { bin: path.join(dir, 'app.bin'), cfg: path.join(dir, 'app.cfg') },
    a: { bin: path.join(rel, 'app.1.0'), cfg: path.join(rel, 'cfg.1.0') },
    b: { bin: path.join(rel, 'app.2.0'), cfg: path.join(rel, 'cfg.2.0') },
  };
}

async function assertSymlinkTo(link: string, target: string): Promise<void> {
  assert.ok((await lstat(link)).isSymbolicLink(), `${link} is a symlink`);
  assert.equal(await readlink(link), target);
}

/** Only the links and the releases folder: no `.app.bin.relink-*` left behind. */
async function assertNoTempFiles(dir: string): Promise<void> {
  assert.deepEqual((await readdir(dir)).sort(), ['app.bin', 'app.cfg', 'release']);
}

function assertNotSymlinkError(err: unknown, link: string, found: string): true {
  assert.ok(err instanceof RelinkError, String(err));
  assert.equal(err.code, 'LINK_NOT_SYMLINK');
  assert.equal(err.file, link);
  assert.equal(err.found, found);
  assert.ok(err.message.startsWith(`${link}:`) && err.message.includes('must be a symlink') && err.message.includes(found), err.message);
  return true;
}

test('relink creates both links when they are absent', async (t) => {
  const { dir, links, a } = await layout(t);
  assert.deepEqual(await readLinks(links), { bin: undefined, cfg: undefined });
  await relink(links, a);
  await assertSymlinkTo(links.bin, a.bin);
  await assertSymlinkTo(links.cfg, a.cfg);
  assert.deepEqual(await readLinks(links), { bin: a.bin, cfg: a.cfg });
  // Through the link, the release's content.
  assert.equal(await readFile(links.cfg, 'utf8'), 'release=1.0\n');
  await assertNoTempFiles(dir);
});

test('relink replaces existing links, back and forth, leaving no temp files', async (t) => {
  const { dir, links, a, b } = await layout(t);
  await relink(links, a);
  await relink(links, b);
  assert.deepEqual(await readLinks(links), { bin: b.bin, cfg: b.cfg });
  assert.equal(await readFile(links.cfg, 'utf8'), 'release=2.0\n');
  for (let i = 0; i < 20; i++) await relink(links, i % 2 === 0 ? a : b);
  assert.deepEqual(await readLinks(links), { bin: b.bin, cfg: b.cfg });
  // Relinking to what is already live is harmless.
  await relink(links, b);
  assert.deepEqual(await readLinks(links), { bin: b.bin, cfg: b.cfg });
  await assertNoTempFiles(dir);
});

test('relink replaces an existing relative or dangling symlink', async (t) => {
  const { dir, links, a } = await layout(t);
  await symlink('release/app.2.0', links.bin);
  await symlink('release/gone', links.cfg);
  await relink(links, a);
  assert.deepEqual(await readLinks(links), { bin: a.bin, cfg: a.cfg });
  await assertNoTempFiles(dir);
});

test('readLinks: relative targets are made absolute; absent or a regular file reads as undefined', async (t) => {
  const { dir, links, b } = await layout(t);
  await symlink('release/app.2.0', links.bin);
  await writeFile(links.cfg, 'not a link');
  assert.deepEqual(await readLinks(links), { bin: b.bin, cfg: undefined });
  assert.equal(await readLinkTarget(path.join(dir, 'nothing-here')), undefined);
});

test('relink refuses when app.bin is a regular file: neither link changes, the file is intact', async (t) => {
  const { dir, links, a, b } = await layout(t);
  await relink(links, a);
  await unlink(links.bin);
  await writeFile(links.bin, 'somebody\'s data\n');
  await assert.rejects(relink(links, b), (err) => assertNotSymlinkError(err, links.bin, 'a regular file'));
  assert.equal(await readFile(links.bin, 'utf8'), 'somebody\'s data\n');
  assert.ok((await lstat(links.bin)).isFile());
  // app.cfg is swapped before app.bin: it must not have moved to the new release either.
  await assertSymlinkTo(links.cfg, a.cfg);
  await assertNoTempFiles(dir);
});

test('relink refuses when app.bin is a directory: neither link changes, the directory is intact', async (t) => {
  const { dir, links, a, b } = await layout(t);
  await relink(links, a);
  await unlink(links.bin);
  await mkdir(links.bin);
  await writeFile(path.join(links.bin, 'keep'), 'kept\n');
  await assert.rejects(relink(links, b), (err) => assertNotSymlinkError(err, links.bin, 'a directory'));
  assert.ok((await lstat(links.bin)).isDirectory());
  assert.deepEqual(await readdir(links.bin), ['keep']);
  assert.equal(await readFile(path.join(links.bin, 'keep'), 'utf8'), 'kept\n');
  await assertSymlinkTo(links.cfg, a.cfg);
  await assertNoTempFiles(dir);
});

test('relink refuses when app.cfg is a regular file: app.bin is not moved either', async (t) => {
  const { dir, links, a, b } = await layout(t);
  await relink(links, a);
  await unlink(links.cfg);
  await writeFile(links.cfg, 'hand-edited\n');
  await assert.rejects(relink(links, b), (err) => assertNotSymlinkError(err, links.cfg, 'a regular file'));
  assert.equal(await readFile(links.cfg, 'utf8'), 'hand-edited\n');
  await assertSymlinkTo(links.bin, a.bin);
  await assertNoTempFiles(dir);
});

test('swapLink refuses a regular file and leaves it and the folder as they were', async (t) => {
  const { dir, links, a } = await layout(t);
  await writeFile(links.bin, 'data');
  await writeFile(links.cfg, 'data');
  await assert.rejects(swapLink(links.bin, a.bin), (err) => assertNotSymlinkError(err, links.bin, 'a regular file'));
  assert.equal(await readFile(links.bin, 'utf8'), 'data');
  await assertNoTempFiles(dir);
});

test('swapLink into a folder that does not exist is LINK_FAILED and leaves nothing behind', async (t) => {
  const { dir, a } = await layout(t);
  const link = path.join(dir, 'missing', 'app.bin');
  await assert.rejects(swapLink(link, a.bin), (err: unknown) => {
    assert.ok(err instanceof RelinkError, String(err));
    assert.equal(err.code, 'LINK_FAILED');
    assert.equal(err.file, link);
    assert.ok(err.message.includes(link) && err.message.includes(a.bin), err.message);
    return true;
  });
  assert.deepEqual((await readdir(dir)).sort(), ['release']);
});

test('a links folder swapped for a symlink by the app\'s user is refused: no link or temp file is made where it points', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const { dir, a } = await layout(t);
  await openUp(dir);
  // The app's folder is the app user's; the links are configured in its subfolder bin/.
  const web = path.join(dir, 'web');
  await mkdir(web);
  await chown(web, user.uid, user.gid);
  const etc = path.join(dir, 'etc');
  await mkdir(etc);
  const bin = path.join(web, 'bin');
  await symlink(etc, bin);
  await lchown(bin, user.uid, user.gid);
  const links = { bin: path.join(bin, 'app.bin'), cfg: path.join(bin, 'app.cfg') };
  for (const attempt of [() => relink(links, a), () => swapLink(links.bin, a.bin)]) {
    await assert.rejects(attempt(), (err: unknown) => {
      assert.ok(err instanceof RelinkError, String(err));
      assert.equal(err.code, 'UNSAFE_PATH');
      assert.equal(err.message, `${bin}: must not be a symlink (a link in a folder ${user.name} can write is not followed as root) (found: symlink to ${etc})`);
      return true;
    });
  }
  assert.deepEqual(await readdir(etc), []);
});

// --- the atomicity proof ----------------------------------------------------

/**
 * A reader in its own process: readlinkSync on both links in a tight loop
 * until the stop file appears (or a bounded number of iterations). It prints
 * "ready" after its first clean pass, "E" on every ENOENT, "c" whenever
 * app.bin's target changes, and a JSON summary last.
 */
const READER = `
const fs = require('node:fs');
const [bin, cfg, stop, maxArg] = process.argv.slice(1);
const max = Number(maxArg);
let reads = 0, enoent = 0, other = 0, changes = 0, last, ready = false;
const targets = new Set();
for (let i = 0; i < max; i++) {
  if ((i & 1023) === 0 && fs.existsSync(stop)) break;
  for (const link of [bin, cfg]) {
    try {
      const t = fs.readlinkSync(link);
      reads++;
      if (link === bin) {
        targets.add(t);
        if (last !== undefined && t !== last) { changes++; process.stdout.write('c'); }
        last = t;
      }
    } catch (err) {
      if (err.code === 'ENOENT') { enoent++; process.stdout.write('E'); }
      else other++;
    }
  }
  if (!ready && enoent === 0 && other === 0) { ready = true; process.stdout.write('ready'); }
}
process.stdout.write('\\n' + JSON.stringify({ reads, enoent, other, changes, targets: [...targets] }) + '\\n');
`;

interface ReaderResult {
  readonly reads: number;
  readonly enoent: number;
  readonly other: number;
  readonly changes: number;
  readonly targets: readonly string[];
}

interface Reader {
  /** Everything the reader printed so far. */
  out(): string;
  /** ENOENTs seen so far. */
  enoents(): number;
  /** app.bin target changes seen so far. */
  changes(): number;
  /** Create the stop file and wait for the summary. */
  finish(): Promise<ReaderResult>;
}

async function startReader(t: TestContext, dir: string, links: Links): Promise<Reader> {
  const stop = path.join(dir, '.stop-reader');
  const child = spawn(process.execPath, ['-e', READER, links.bin, links.cfg, stop, String(20_000_000)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => { out += c; });
  child.stderr.setEncoding('utf8').on('data', (c: string) => { err += c; });
  const closed = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  // Always ended, even when an assertion fails first.
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await closed;
  });
  await waitFor('the reader to start reading', () => out.includes('ready') || child.exitCode !== null);
  assert.ok(out.includes('ready'), `reader did not start: ${out} ${err}`);
  const count = (ch: string): number => out.split('\n')[0]!.split(ch).length - 1;
  return {
    out: () => out,
    enoents: () => count('E'),
    changes: () => count('c'),
    async finish() {
      await writeFile(stop, '');
      const code = await closed;
      assert.equal(code, 0, `reader exited ${code}: ${err}`);
      const last = out.trim().split('\n').at(-1);
      assert.ok(last, 'reader printed a summary');
      return JSON.parse(last) as ReaderResult;
    },
  };
}

test('THE ATOMICITY PROOF: a reader in another process never sees app.bin or app.cfg missing during 300+ relinks', async (t) => {
  const { dir, links, a, b } = await layout(t);
  await relink(links, a);
  const reader = await startReader(t, dir, links);
  // At least 300 relinks, and more until the reader has watched the target
  // change many times, so the reads provably overlapped the renames.
  let n = 0;
  while (n < 300 || (reader.changes() < 50 && n < 20_000)) {
    await relink(links, n % 2 === 0 ? b : a);
    n++;
  }
  const result = await reader.finish();
  t.diagnostic(`${n} relinks; reader: ${result.reads} reads, ${result.changes} target changes, ${result.enoent} ENOENT`);
  assert.equal(result.enoent, 0, `reader saw a missing link ${result.enoent} times in ${result.reads} reads`);
  assert.equal(result.other, 0);
  assert.ok(result.reads > 1_000, `reader made only ${result.reads} reads`);
  assert.ok(result.changes >= 50, `reader saw app.bin change only ${result.changes} times over ${n} relinks`);
  assert.deepEqual([...result.targets].sort(), [a.bin, b.bin]);
  // The loop leaves the links on whichever release came last, and nothing else behind.
  const last = (n - 1) % 2 === 0 ? b : a;
  assert.deepEqual(await readLinks(links), { bin: last.bin, cfg: last.cfg });
  await unlink(path.join(dir, '.stop-reader'));
  await assertNoTempFiles(dir);
});

test('control: the same reader does catch the gap of the naive rm + ln -s swap', async (t) => {
  // Without this, a reader that could not see a gap would make the proof above vacuous.
  const { dir, links, a, b } = await layout(t);
  await relink(links, a);
  const reader = await startReader(t, dir, links);
  let n = 0;
  while (reader.enoents() === 0 && n < 20_000) {
    const to = n % 2 === 0 ? b : a;
    await unlink(links.bin);
    await symlink(to.bin, links.bin);
    n++;
  }
  const result = await reader.finish();
  t.diagnostic(`${n} naive swaps; reader: ${result.reads} reads, ${result.enoent} ENOENT`);
  assert.ok(result.enoent > 0, `the reader never saw the naive swap's gap in ${n} swaps, ${result.reads} reads`);
});

/** <dir>/release/{1.0,2.0}/{app, app.cfg}; links app.bin, app.cfg and the folder link `current`, in <dir>. */
async function folderLayout(t: TestContext): Promise<{ dir: string; rel: string; links: Required<Links>; a: Release; b: Release }> {
  const dir = await tmpDir(t);
  const rel = path.join(dir, 'release');
  for (const r of ['1.0', '2.0']) {
    await mkdir(path.join(rel, r), { recursive: true });
    await writeFile(path.join(rel, r, 'app'), `#!/bin/sh\necho ${r}\n`, { mode: 0o755 });
    await writeFile(path.join(rel, r, 'app.cfg'), `release=${r}\n`);
  }
  const release = (r: string): Release => ({ bin: path.join(rel, r, 'app'), cfg: path.join(rel, r, 'app.cfg') });
  return { dir, rel, links: { bin: path.join(dir, 'app.bin'), cfg: path.join(dir, 'app.cfg'), dir: path.join(dir, 'current') }, a: release('1.0'), b: release('2.0') };
}

test('issue 15: links.dir is switched with the others, in the order cfg, dir, bin (the binary last: what runs it finds its config and folder already there)', async (t) => {
  const l = await folderLayout(t);
  await relink(l.links, l.a, l.rel);
  assert.deepEqual(await readLinks(l.links, l.rel), { ...l.a, dir: path.join(l.rel, '1.0'), dirStale: false });
  // The renames as inotify saw them, in order (one watch on the links' folder).
  const seen: string[] = [];
  const watcher = watch(l.dir, (_event, name) => {
    if (name !== null && ['app.bin', 'app.cfg', 'current'].includes(name) && seen.at(-1) !== name) seen.push(name);
  });
  t.after(() => watcher.close());
  await relink(l.links, l.b, l.rel);
  await waitFor('the three renames to be seen', () => (seen.length >= 3 ? seen : undefined));
  assert.deepEqual(seen, ['app.cfg', 'current', 'app.bin']);
  assert.deepEqual(await readLinks(l.links, l.rel), { ...l.b, dir: path.join(l.rel, '2.0'), dirStale: false });
  assert.deepEqual((await readdir(l.dir)).sort(), ['app.bin', 'app.cfg', 'current', 'release']);
});

test('issue 15: a folder link left elsewhere reads as stale; a real folder where the link goes is refused before anything is switched', async (t) => {
  const l = await folderLayout(t);
  await relink(l.links, l.a, l.rel);
  // An agent killed between the renames: cfg and dir on 2.0, bin still on 1.0.
  await swapLink(l.links.dir, path.join(l.rel, '2.0'));
  assert.equal((await readLinks(l.links, l.rel)).dirStale, true);
  await unlink(l.links.dir);
  assert.deepEqual(await readLinks(l.links, l.rel), { ...l.a, dir: undefined, dirStale: true });
  await mkdir(l.links.dir);
  await assert.rejects(relink(l.links, l.b, l.rel), (err) => assertNotSymlinkError(err, l.links.dir, 'a directory'));
  assert.deepEqual(await readLinks(l.links, l.rel), { ...l.a, dir: undefined, dirStale: true });
  // Without links.dir the folder link is neither read nor switched: as before.
  assert.deepEqual(await readLinks({ bin: l.links.bin, cfg: l.links.cfg }, l.rel), l.a);
});

test('sameContent: the same file (a hard link, a symlink to it) or equal bytes; a different byte, size, a missing file or a FIFO is not (and a FIFO does not block it)', async (t) => {
  const dir = await tmpDir(t);
  const big = Buffer.alloc(200_000, 7);
  const f = (n: string) => path.join(dir, n);
  await writeFile(f('a'), big);
  await writeFile(f('copy'), big);
  await link(f('a'), f('hard'));
  await symlink(f('a'), f('sym'));
  const off = Buffer.from(big);
  off[150_000] = 8; // one byte, far into the file
  await writeFile(f('off'), off);
  await writeFile(f('short'), big.subarray(0, 199_999));
  assert.equal(await sameContent(f('a'), f('copy')), true);
  assert.equal(await sameContent(f('a'), f('hard')), true);
  assert.equal(await sameContent(f('sym'), f('a')), true);
  assert.equal(await sameContent(f('a'), f('off')), false);
  assert.equal(await sameContent(f('a'), f('short')), false);
  assert.equal(await sameContent(f('a'), f('gone')), false);
  assert.equal(await sameContent(dir, dir), true, 'one inode');
  await mkdir(f('d'));
  assert.equal(await sameContent(f('d'), dir), false, 'folders are not files');
  execFileSync('mkfifo', [f('fifo')]);
  assert.equal(await sameContent(f('fifo'), f('a')), false, 'a FIFO is no release file, and is never opened (that would block)');
});
