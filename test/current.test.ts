/**
 * current.conf, rule by rule, on real files: every refusal names the file,
 * the key, the rule and what was found, with a stable code.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, chown, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { parseConfig, type AppConfig } from '../src/config.js';
import { loadCurrent, readCurrent, validateCurrent } from '../src/current.js';
import { RelinkError, RelinkErrors } from '../src/errors.js';
import { tmpDir } from './helpers.js';

interface Layout {
  readonly root: string;
  readonly app: AppConfig;
  readonly releases: string;
  readonly current: string;
}

/** <root>/web/release/{app.1.0 (0755), cfg.1.0}, and the AppConfig for it. */
async function layout(t: TestContext): Promise<Layout> {
  const root = await tmpDir(t);
  const dir = path.join(root, 'web');
  const releases = path.join(dir, 'release');
  await mkdir(releases, { recursive: true });
  await writeFile(path.join(releases, 'app.1.0'), '#!/bin/sh\n', { mode: 0o755 });
  await chmod(path.join(releases, 'app.1.0'), 0o755);
  await writeFile(path.join(releases, 'cfg.1.0'), 'port=1\n');
  const config = parseConfig(JSON.stringify({ stateDir: path.join(root, 'state'), apps: [{ name: 'web', dir }] }), path.join(root, 'config.json'));
  const app = config.apps[0];
  assert.ok(app);
  assert.equal(app.releasesDir, releases);
  return { root, app, releases, current: app.currentFile };
}

function conf(bin: unknown, cfg: unknown): string {
  return `${JSON.stringify({ 'bin.file': bin, 'cfg.file': cfg })}\n`;
}

interface Expected {
  readonly code: string;
  readonly file: string;
  readonly key?: string;
  /** Text of the rule as it must appear in the message. */
  readonly rule: string;
  /** Text of what was found, as it must appear in the message. */
  readonly found: string;
}

/** One problem: code, file, key, and a message naming all four parts. */
function assertProblem(p: RelinkError | undefined, e: Expected): void {
  assert.ok(p instanceof RelinkError, 'expected a RelinkError');
  assert.equal(p.code, e.code, p.message);
  assert.equal(p.file, e.file);
  assert.equal(p.key, e.key);
  assert.ok(p.message.startsWith(`${e.file}:`), `message names the file: ${p.message}`);
  if (e.key !== undefined) assert.ok(p.message.includes(JSON.stringify(e.key)), `message names the key: ${p.message}`);
  assert.ok(p.rule?.includes(e.rule), `rule ${JSON.stringify(p.rule)} contains ${JSON.stringify(e.rule)}`);
  assert.ok(p.message.includes(e.rule), `message names the rule: ${p.message}`);
  assert.ok(p.found?.includes(e.found), `found ${JSON.stringify(p.found)} contains ${JSON.stringify(e.found)}`);
  assert.ok(p.message.includes(e.found), `message shows what was found: ${p.message}`);
}

/** Run `fn`, expect RelinkErrors with exactly one problem matching `e`. */
async function rejectsWith(fn: () => Promise<unknown>, e: Expected): Promise<RelinkErrors> {
  const err = await fn().then(
    (v) => assert.fail(`expected a refusal, got ${JSON.stringify(v)}`),
    (x: unknown) => x,
  );
  assert.ok(err instanceof RelinkErrors, `expected RelinkErrors, got ${String(err)}`);
  assert.equal(err.problems.length, 1, err.message);
  assertProblem(err.problems[0], e);
  // The aggregate carries the first problem's code, file and key for log fields.
  assert.equal(err.code, e.code);
  assert.equal(err.file, e.file);
  assert.equal(err.key, e.key);
  return err;
}

async function homeOf(uid: number): Promise<string | undefined> {
  for (const line of (await readFile('/etc/passwd', 'utf8')).split('\n')) {
    const f = line.split(':');
    if (f.length >= 7 && Number(f[2]) === uid && f[5]) return f[5];
  }
  return undefined;
}

// --- reading the file -------------------------------------------------------

test('a missing current.conf is CURRENT_MISSING, naming the file', async (t) => {
  const { app, current } = await layout(t);
  const err = await readCurrent(current).then(() => assert.fail('read a missing file'), (e: unknown) => e);
  assertProblem(err as RelinkError, { code: 'CURRENT_MISSING', file: current, rule: 'must exist', found: 'no such file' });
  const viaLoad = await loadCurrent(app).then(() => assert.fail('loaded a missing file'), (e: unknown) => e);
  assertProblem(viaLoad as RelinkError, { code: 'CURRENT_MISSING', file: current, rule: 'must exist', found: 'no such file' });
});

test('a current.conf that is a directory is refused as unreadable', async (t) => {
  const { current } = await layout(t);
  await mkdir(current);
  const err = await readCurrent(current).then(() => assert.fail('read a directory'), (e: unknown) => e);
  assertProblem(err as RelinkError, { code: 'CURRENT_UNREADABLE', file: current, rule: 'must be a regular file', found: 'directory' });
});

test('a current.conf over 64 KiB is CURRENT_TOO_LARGE; exactly 64 KiB is read', async (t) => {
  const { app, current } = await layout(t);
  const body = conf('app.1.0', 'cfg.1.0');
  await writeFile(current, body + ' '.repeat(64 * 1024 - Buffer.byteLength(body)));
  const { release } = await loadCurrent(app);
  assert.equal(release.bin, path.join(app.releasesDir, 'app.1.0'));

  await writeFile(current, body + ' '.repeat(64 * 1024 + 1 - Buffer.byteLength(body)));
  const err = await readCurrent(current).then(() => assert.fail('read an oversized file'), (e: unknown) => e);
  assertProblem(err as RelinkError, { code: 'CURRENT_TOO_LARGE', file: current, rule: 'must be at most 65536 bytes', found: '65537 bytes' });
});

test('readCurrent returns the text, its sha256 and the mtime; the hash follows the content', async (t) => {
  const { current } = await layout(t);
  await writeFile(current, conf('app.1.0', 'cfg.1.0'));
  const a = await readCurrent(current);
  assert.equal(a.text, conf('app.1.0', 'cfg.1.0'));
  assert.match(a.hash, /^[0-9a-f]{64}$/);
  assert.ok(a.mtimeMs > 0);
  await writeFile(current, conf('app.1.0', 'cfg.2.0'));
  const b = await readCurrent(current);
  assert.notEqual(b.hash, a.hash);
  await writeFile(current, conf('app.1.0', 'cfg.1.0'));
  assert.equal((await readCurrent(current)).hash, a.hash);
});

// --- syntax and shape -------------------------------------------------------

test('an empty current.conf is CURRENT_SYNTAX "an empty file"', async (t) => {
  const { app, current } = await layout(t);
  await writeFile(current, '');
  await rejectsWith(() => loadCurrent(app), { code: 'CURRENT_SYNTAX', file: current, rule: 'must be valid JSON', found: 'an empty file' });
  await writeFile(current, '  \n');
  await rejectsWith(() => loadCurrent(app), { code: 'CURRENT_SYNTAX', file: current, rule: 'must be valid JSON', found: 'an empty file' });
});

test('invalid JSON is CURRENT_SYNTAX with the line, the column and what was expected', async (t) => {
  const { app, current } = await layout(t);
  await writeFile(current, '{"bin.file": "app.1.0",');
  const err = await rejectsWith(() => loadCurrent(app), { code: 'CURRENT_SYNTAX', file: current, rule: 'must be valid JSON: expected a key in double quotes at line 1, column 24', found: 'the end of the file' });
  assert.doesNotMatch(err.message, /an empty file/);
});

for (const [what, text, found] of [
  ['an array', '["app.1.0", "cfg.1.0"]', '["app.1.0","cfg.1.0"]'],
  ['a string', '"app.1.0"', '"app.1.0"'],
  ['null', 'null', 'null'],
  ['a number', '42', '42'],
] as const) {
  test(`current.conf holding ${what} is CURRENT_INVALID "must be a JSON object"`, async (t) => {
    const { app, current } = await layout(t);
    await rejectsWith(() => validateCurrent(app, text), { code: 'CURRENT_INVALID', file: current, rule: 'must be a JSON object', found });
  });
}

test('a missing key is CURRENT_INVALID "is required"', async (t) => {
  const { app, current } = await layout(t);
  await rejectsWith(() => validateCurrent(app, JSON.stringify({ 'bin.file': 'app.1.0' })),
    { code: 'CURRENT_INVALID', file: current, key: 'cfg.file', rule: 'is required', found: 'the key is missing' });
  await rejectsWith(() => validateCurrent(app, JSON.stringify({ 'cfg.file': 'cfg.1.0' })),
    { code: 'CURRENT_INVALID', file: current, key: 'bin.file', rule: 'is required', found: 'the key is missing' });
});

test('a non-string value is CURRENT_INVALID "must be a string path", showing the value', async (t) => {
  const { app, current } = await layout(t);
  await rejectsWith(() => validateCurrent(app, conf(42, 'cfg.1.0')),
    { code: 'CURRENT_INVALID', file: current, key: 'bin.file', rule: 'must be a string path', found: '42' });
  await rejectsWith(() => validateCurrent(app, conf('app.1.0', null)),
    { code: 'CURRENT_INVALID', file: current, key: 'cfg.file', rule: 'must be a string path', found: 'null' });
  await rejectsWith(() => validateCurrent(app, conf('app.1.0', ['cfg.1.0'])),
    { code: 'CURRENT_INVALID', file: current, key: 'cfg.file', rule: 'must be a string path', found: '["cfg.1.0"]' });
});

test('an empty string is CURRENT_INVALID "must be a non-empty path"', async (t) => {
  const { app, current } = await layout(t);
  await rejectsWith(() => validateCurrent(app, conf('', 'cfg.1.0')),
    { code: 'CURRENT_INVALID', file: current, key: 'bin.file', rule: 'must be a non-empty path', found: '""' });
});

test('a typo "cfg.flie" is CURRENT_UNKNOWN_KEY naming the typo exactly, then the missing key', async (t) => {
  const { app, current } = await layout(t);
  await writeFile(current, JSON.stringify({ 'bin.file': 'app.1.0', 'cfg.flie': 'cfg.1.0' }));
  const err = await loadCurrent(app).then(() => assert.fail('accepted a typo'), (e: unknown) => e);
  assert.ok(err instanceof RelinkErrors);
  // The typo is the cause: it is the headline code and key.
  assert.equal(err.code, 'CURRENT_UNKNOWN_KEY');
  assert.equal(err.key, 'cfg.flie');
  assert.equal(err.problems.length, 2, err.message);
  assertProblem(err.problems[0], { code: 'CURRENT_UNKNOWN_KEY', file: current, key: 'cfg.flie', rule: 'is not a known key (did you mean "cfg.file"?)', found: '"cfg.1.0"' });
  assertProblem(err.problems[1], { code: 'CURRENT_INVALID', file: current, key: 'cfg.file', rule: 'is required', found: 'the key is missing' });
});

test('an unknown key suggests the nearest known key only when one is close and not already there', async (t) => {
  const { app, current } = await layout(t);
  for (const [typo, near] of [['bin.flie', 'bin.file'], ['Bin.File', 'bin.file'], ['cfg.sha265', 'cfg.sha256'], ['bin.file ', 'bin.file']] as const) {
    const err = await validateCurrent(app, JSON.stringify({ [typo]: 'app.1.0', 'cfg.file': 'cfg.1.0' })).then(() => assert.fail('accepted'), (e: unknown) => e);
    assert.ok(err instanceof RelinkErrors);
    assertProblem(err.problems[0], { code: 'CURRENT_UNKNOWN_KEY', file: current, key: typo, rule: `is not a known key (did you mean ${JSON.stringify(near)}?)`, found: '"app.1.0"' });
  }
  // Far from every known key, or near one that is already set: no guess.
  for (const extra of ['env.file', 'cfg.flie']) {
    const err = await validateCurrent(app, JSON.stringify({ 'bin.file': 'app.1.0', 'cfg.file': 'cfg.1.0', [extra]: 'x' })).then(() => assert.fail('accepted'), (e: unknown) => e);
    assert.ok(err instanceof RelinkErrors);
    assert.equal(err.problems[0]?.rule, 'is not a known key', err.message);
  }
});

test('a current.conf with thousands of unknown keys gets a bounded message: 20 problems, then how many more', async (t) => {
  const { app, current } = await layout(t);
  // 2,000 unknown keys in a 46 KB file: the refusal once made a 200 KB message, journaled and logged per write.
  const keys = Object.fromEntries(Array.from({ length: 2_000 }, (_, i) => [`k${String(i).padStart(4, '0')}`, 'x'.repeat(10)]));
  await writeFile(current, JSON.stringify({ 'bin.file': 'app.1.0', 'cfg.file': 'cfg.1.0', ...keys }));
  const err = await loadCurrent(app).then(() => assert.fail('accepted'), (e: unknown) => e);
  assert.ok(err instanceof RelinkErrors);
  assert.equal(err.problems.length, 21);
  assert.equal(err.problems[0]?.key, 'k0000');
  assert.equal(err.problems[20]?.message, `${current}: and 1980 more problems`);
  assert.equal(err.message.split('\n').length, 21);
  assert.ok(err.message.length < 4_000, `${err.message.length} characters`);
});

// --- what editors and hand edits produce ----------------------------------------

test('a current.conf saved with a UTF-8 byte order mark is accepted (RFC 8259 §8.1)', async (t) => {
  const { app, releases, current } = await layout(t);
  await writeFile(current, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(conf('app.1.0', 'cfg.1.0'))]));
  const { release } = await loadCurrent(app);
  assert.deepEqual({ ...release }, { bin: path.join(releases, 'app.1.0'), cfg: path.join(releases, 'cfg.1.0') });
});

test('a current.conf with CRLF line ends (and a BOM) is accepted; a syntax error in one names the right line', async (t) => {
  const { app, releases, current } = await layout(t);
  await writeFile(current, '\ufeff{\r\n  "bin.file": "app.1.0",\r\n  "cfg.file": "cfg.1.0"\r\n}\r\n');
  assert.equal((await loadCurrent(app)).release.bin, path.join(releases, 'app.1.0'));
  await writeFile(current, '\ufeff{\r\n  "bin.file": "app.1.0"\r\n  "cfg.file": "cfg.1.0"\r\n}\r\n');
  await rejectsWith(() => loadCurrent(app), { code: 'CURRENT_SYNTAX', file: current, rule: 'must be valid JSON: expected "," or "}" at line 3, column 3', found: '"\\""' });
});

test('a duplicate key is CURRENT_DUPLICATE_KEY naming the key and both places, not the last one silently', async (t) => {
  const { app, current } = await layout(t);
  await writeFile(current, '{"bin.file": "app.1.0",\n "cfg.file": "cfg.1.0",\n "bin.file": "app.1.0"}\n');
  await rejectsWith(() => loadCurrent(app), {
    code: 'CURRENT_DUPLICATE_KEY', file: current, key: 'bin.file',
    rule: 'must appear only once in its object', found: '2 times: line 1, column 2; line 3, column 2',
  });
  // Even when the repeat would be harmless or the values differ, and for every duplicated key.
  const err = await validateCurrent(app, '{"bin.file": "app.1.0", "cfg.file": "cfg.1.0", "cfg.file": "cfg.2.0", "bin.file": "app.2.0"}')
    .then(() => assert.fail('accepted duplicates'), (e: unknown) => e);
  assert.ok(err instanceof RelinkErrors);
  assert.deepEqual(err.problems.map((p) => [p.code, p.key]), [['CURRENT_DUPLICATE_KEY', 'cfg.file'], ['CURRENT_DUPLICATE_KEY', 'bin.file']]);
});

test('current.conf linked to a root-only file: the syntax refusal quotes none of its content', async (t) => {
  const { app, root, current } = await layout(t);
  const secret = 'Zq9-xW7kP3v';
  const shadow = path.join(root, 'shadow');
  await writeFile(shadow, `root:$y$${secret}:19000:0:99999:7:::\n`, { mode: 0o600 });
  await chmod(shadow, 0o600);
  await symlink(shadow, current);
  for (const text of [undefined, `{"bin.file": "${secret}\n"}`, `{"bin.file": ${secret}}`]) {
    if (text !== undefined) await writeFile(shadow, text);
    const err = await loadCurrent(app).then(() => assert.fail('accepted'), (e: unknown) => e);
    assert.ok(err instanceof RelinkErrors);
    assert.equal(err.code, 'CURRENT_SYNTAX', err.message);
    for (let i = 0; i + 3 <= secret.length; i++) assert.ok(!err.message.includes(secret.slice(i, i + 3)), `quotes the file: ${err.message}`);
    assert.match(err.message, /at line \d+, column \d+/);
  }
});

test('an extra unknown key beside two valid ones is refused by name', async (t) => {
  const { app, current } = await layout(t);
  await rejectsWith(() => validateCurrent(app, JSON.stringify({ 'bin.file': 'app.1.0', 'cfg.file': 'cfg.1.0', 'env.file': 'x' })),
    { code: 'CURRENT_UNKNOWN_KEY', file: current, key: 'env.file', rule: 'is not a known key', found: '"x"' });
});

// --- the release files ------------------------------------------------------

test('a valid current.conf returns frozen real paths of both files', async (t) => {
  const { app, releases, current } = await layout(t);
  await writeFile(current, conf('app.1.0', 'cfg.1.0'));
  const { snapshot, release } = await loadCurrent(app);
  assert.deepEqual({ ...release }, { bin: path.join(releases, 'app.1.0'), cfg: path.join(releases, 'cfg.1.0') });
  assert.ok(Object.isFrozen(release));
  assert.throws(() => { (release as { bin: string }).bin = '/x'; }, TypeError);
  assert.equal(snapshot.text, conf('app.1.0', 'cfg.1.0'));
  // Absolute paths inside the releases folder are fine too.
  const abs = await validateCurrent(app, conf(path.join(releases, 'app.1.0'), path.join(releases, 'cfg.1.0')));
  assert.deepEqual({ ...abs }, { ...release });
});

test('a bin or cfg that does not exist is RELEASE_MISSING with the resolved path', async (t) => {
  const { app, releases, current } = await layout(t);
  await rejectsWith(() => validateCurrent(app, conf('app.9.9', 'cfg.1.0')),
    { code: 'RELEASE_MISSING', file: current, key: 'bin.file', rule: 'must name an existing file', found: `${path.join(releases, 'app.9.9')}: no such file` });
  await rejectsWith(() => validateCurrent(app, conf('app.1.0', 'cfg.9.9')),
    { code: 'RELEASE_MISSING', file: current, key: 'cfg.file', rule: 'must name an existing file', found: `${path.join(releases, 'cfg.9.9')}: no such file` });
});

test('a dangling symlink in the releases folder is RELEASE_MISSING', async (t) => {
  const { app, releases, current } = await layout(t);
  await symlink(path.join(releases, 'gone'), path.join(releases, 'app.dangling'));
  await rejectsWith(() => validateCurrent(app, conf('app.dangling', 'cfg.1.0')),
    { code: 'RELEASE_MISSING', file: current, key: 'bin.file', rule: 'must name an existing file', found: path.join(releases, 'app.dangling') });
});

test('a bin or cfg that is a directory is RELEASE_NOT_FILE', async (t) => {
  const { app, releases, current } = await layout(t);
  await mkdir(path.join(releases, 'app.dir'));
  await mkdir(path.join(releases, 'cfg.dir'));
  await rejectsWith(() => validateCurrent(app, conf('app.dir', 'cfg.1.0')),
    { code: 'RELEASE_NOT_FILE', file: current, key: 'bin.file', rule: 'must be a regular file', found: `${path.join(releases, 'app.dir')} is a directory` });
  await rejectsWith(() => validateCurrent(app, conf('app.1.0', 'cfg.dir')),
    { code: 'RELEASE_NOT_FILE', file: current, key: 'cfg.file', rule: 'must be a regular file', found: `${path.join(releases, 'cfg.dir')} is a directory` });
});

test('an absolute path outside the releases folder is RELEASE_OUTSIDE', async (t) => {
  const { root, app, releases, current } = await layout(t);
  const elsewhere = path.join(root, 'app.elsewhere');
  await writeFile(elsewhere, '#!/bin/sh\n');
  await chmod(elsewhere, 0o755);
  await rejectsWith(() => validateCurrent(app, conf(elsewhere, 'cfg.1.0')),
    { code: 'RELEASE_OUTSIDE', file: current, key: 'bin.file', rule: `must be inside the releases folder ${releases}`, found: elsewhere });
  // A sibling folder whose name merely starts with the releases folder's name is outside too.
  await mkdir(`${releases}-old`);
  await writeFile(`${releases}-old/cfg.1.0`, 'x');
  await rejectsWith(() => validateCurrent(app, conf('app.1.0', `${releases}-old/cfg.1.0`)),
    { code: 'RELEASE_OUTSIDE', file: current, key: 'cfg.file', rule: 'must be inside the releases folder', found: `${releases}-old/cfg.1.0` });
});

test('a "../" escape out of the releases folder is RELEASE_OUTSIDE', async (t) => {
  const { app, current } = await layout(t);
  await writeFile(path.join(app.dir, 'cfg.escape'), 'x');
  await rejectsWith(() => validateCurrent(app, conf('app.1.0', '../cfg.escape')),
    { code: 'RELEASE_OUTSIDE', file: current, key: 'cfg.file', rule: 'must be inside the releases folder', found: path.join(app.dir, 'cfg.escape') });
  // "../release/x" that comes back in is fine: containment is judged on the resolved path.
  const ok = await validateCurrent(app, conf('../release/app.1.0', 'cfg.1.0'));
  assert.equal(ok.bin, path.join(app.releasesDir, 'app.1.0'));
});

test('a symlink inside the releases folder pointing outside is RELEASE_OUTSIDE, showing both ends', async (t) => {
  const { root, app, releases, current } = await layout(t);
  const outside = path.join(root, 'evil.bin');
  await writeFile(outside, '#!/bin/sh\n');
  await chmod(outside, 0o755);
  await symlink(outside, path.join(releases, 'app.link'));
  const err = await rejectsWith(() => validateCurrent(app, conf('app.link', 'cfg.1.0')),
    { code: 'RELEASE_OUTSIDE', file: current, key: 'bin.file', rule: 'must be inside the releases folder', found: `${path.join(releases, 'app.link')} -> ${outside}` });
  assert.ok(err.message.includes(outside));
});

test('a symlink inside pointing to another file inside is accepted and resolved to the real path', async (t) => {
  const { app, releases } = await layout(t);
  await symlink('app.1.0', path.join(releases, 'app.latest'));
  await mkdir(path.join(releases, 'sub'));
  await symlink('../cfg.1.0', path.join(releases, 'sub', 'cfg.latest'));
  const release = await validateCurrent(app, conf('app.latest', 'sub/cfg.latest'));
  assert.equal(release.bin, path.join(releases, 'app.1.0'));
  assert.equal(release.cfg, path.join(releases, 'cfg.1.0'));
});

test('a bin that is not executable is RELEASE_NOT_EXECUTABLE showing mode 0644; cfg need not be', async (t) => {
  const { app, releases, current } = await layout(t);
  await writeFile(path.join(releases, 'app.2.0'), '#!/bin/sh\n');
  await chmod(path.join(releases, 'app.2.0'), 0o644);
  await rejectsWith(() => validateCurrent(app, conf('app.2.0', 'cfg.1.0')),
    { code: 'RELEASE_NOT_EXECUTABLE', file: current, key: 'bin.file', rule: 'must be executable', found: `${path.join(releases, 'app.2.0')} has mode 0644` });
  // cfg.1.0 is 0644 and accepted; the executable bit only matters for bin.
  await chmod(path.join(releases, 'app.2.0'), 0o755);
  const release = await validateCurrent(app, conf('app.2.0', 'cfg.1.0'));
  assert.equal(release.bin, path.join(releases, 'app.2.0'));
});

test('both keys bad at once: both problems are listed', async (t) => {
  const { app, releases, current } = await layout(t);
  await writeFile(path.join(releases, 'app.2.0'), 'x');
  await chmod(path.join(releases, 'app.2.0'), 0o644);
  await writeFile(current, conf('app.2.0', 'cfg.9.9'));
  const err = await loadCurrent(app).then(() => assert.fail('accepted two bad keys'), (e: unknown) => e);
  assert.ok(err instanceof RelinkErrors);
  assert.equal(err.problems.length, 2, err.message);
  const byKey = new Map(err.problems.map((p) => [p.key, p]));
  assertProblem(byKey.get('bin.file'), { code: 'RELEASE_NOT_EXECUTABLE', file: current, key: 'bin.file', rule: 'must be executable', found: 'mode 0644' });
  assertProblem(byKey.get('cfg.file'), { code: 'RELEASE_MISSING', file: current, key: 'cfg.file', rule: 'must name an existing file', found: path.join(releases, 'cfg.9.9') });
  // The combined message lists both, one per line.
  assert.equal(err.message.split('\n').length, 2);
});

test('a missing releases folder is RELEASE_MISSING naming the folder', async (t) => {
  const root = await tmpDir(t);
  const dir = path.join(root, 'web');
  const app = parseConfig(JSON.stringify({ stateDir: path.join(root, 'state'), apps: [{ name: 'web', dir }] }), path.join(root, 'config.json')).apps[0];
  assert.ok(app);
  await rejectsWith(() => validateCurrent(app, conf('app.1.0', 'cfg.1.0')),
    { code: 'RELEASE_MISSING', file: app.currentFile, rule: `the releases folder ${path.join(dir, 'release')} must exist`, found: 'ENOENT' });
});

// --- where relative paths and "~/" lead --------------------------------------

test('relative paths resolve against the folder of current.conf, not the process cwd', async (t) => {
  const { app, releases } = await layout(t);
  const cwd = process.cwd();
  assert.notEqual(cwd, releases);
  const release = await validateCurrent(app, conf('./app.1.0', 'cfg.1.0'));
  assert.equal(release.bin, path.join(releases, 'app.1.0'));
  assert.equal(release.cfg, path.join(releases, 'cfg.1.0'));
});

test('a current.conf passed as another path resolves relative to THAT file, and must still point into the releases folder', async (t) => {
  const { root, app, releases } = await layout(t);
  // As `relink validate /elsewhere/current.conf` does.
  const elsewhere = path.join(root, 'staging');
  await mkdir(elsewhere);
  const other = path.join(elsewhere, 'current.conf');

  // "app.1.0" next to the other file: it exists there, but is not in the releases folder.
  await writeFile(path.join(elsewhere, 'app.1.0'), '#!/bin/sh\n');
  await chmod(path.join(elsewhere, 'app.1.0'), 0o755);
  await writeFile(path.join(elsewhere, 'cfg.1.0'), 'x');
  await writeFile(other, conf('app.1.0', 'cfg.1.0'));
  const err = await loadCurrent(app, other).then(() => assert.fail('accepted files outside the releases folder'), (e: unknown) => e);
  assert.ok(err instanceof RelinkErrors);
  assert.equal(err.problems.length, 2, err.message);
  for (const [key, name] of [['bin.file', 'app.1.0'], ['cfg.file', 'cfg.1.0']] as const) {
    assertProblem(err.problems.find((p) => p.key === key), { code: 'RELEASE_OUTSIDE', file: other, key, rule: `must be inside the releases folder ${releases}`, found: path.join(elsewhere, name) });
  }

  // Relative to the other file's folder, leading into the releases folder: accepted.
  await writeFile(other, conf('../web/release/app.1.0', '../web/release/cfg.1.0'));
  const { release } = await loadCurrent(app, other);
  assert.equal(release.bin, path.join(releases, 'app.1.0'));
  assert.equal(release.cfg, path.join(releases, 'cfg.1.0'));

  // A name that only exists in the releases folder is looked up next to the other file: missing.
  await writeFile(path.join(releases, 'cfg.only-in-releases'), 'x');
  await rejectsWith(() => validateCurrent(app, conf('../web/release/app.1.0', 'cfg.only-in-releases'), other),
    { code: 'RELEASE_MISSING', file: other, key: 'cfg.file', rule: 'must name an existing file', found: path.join(elsewhere, 'cfg.only-in-releases') });
});

test('"~/" resolves to the home of the owner of current.conf (root here), shown expanded', async (t) => {
  const { app, current } = await layout(t);
  const uid = process.getuid?.();
  if (uid !== 0) return t.skip('needs root to own current.conf as root and chown it');
  const home = await homeOf(0);
  assert.ok(home, 'root has a home in /etc/passwd');
  const name = `relink-test-absent-${process.pid}-${Date.now()}`;
  await writeFile(current, conf(`~/${name}/app.1.0`, 'cfg.1.0'));
  await rejectsWith(() => loadCurrent(app), {
    code: 'RELEASE_MISSING', file: current, key: 'bin.file', rule: 'must name an existing file',
    found: `${path.join(home, name, 'app.1.0')}: no such file`,
  });
});

test('"~/" follows the owner of current.conf, not the user running the agent', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to chown current.conf');
  const { app, current } = await layout(t);
  // Any non-root account with a home other than root's (daemon, nobody, ...).
  const rootHome = await homeOf(0);
  let owner: { uid: number; home: string } | undefined;
  for (const line of (await readFile('/etc/passwd', 'utf8')).split('\n')) {
    const f = line.split(':');
    if (f.length >= 7 && Number(f[2]) > 0 && f[5] && f[5] !== rootHome && f[5] !== '/') { owner = { uid: Number(f[2]), home: f[5] }; break; }
  }
  if (owner === undefined) return t.skip('no non-root account with a home in /etc/passwd');
  await writeFile(current, conf('~/relink-test-absent/app.1.0', 'cfg.1.0'));
  await chown(current, owner.uid, 0);
  await rejectsWith(() => loadCurrent(app), {
    code: 'RELEASE_MISSING', file: current, key: 'bin.file', rule: 'must name an existing file',
    found: path.join(owner.home, 'relink-test-absent', 'app.1.0'),
  });
});

test('"~/" when the owner of current.conf has no entry in /etc/passwd is HOME_UNKNOWN', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to chown current.conf');
  const { app, current } = await layout(t);
  const passwd = await readFile('/etc/passwd', 'utf8');
  let uid = 54_321;
  while (passwd.split('\n').some((l) => Number(l.split(':')[2]) === uid)) uid += 1;
  await writeFile(current, conf('~/app.1.0', 'cfg.1.0'));
  await chown(current, uid, 0);
  await rejectsWith(() => loadCurrent(app), {
    code: 'HOME_UNKNOWN', file: current, key: 'bin.file', rule: 'a "~/" path needs the owner of current.conf to have a home folder', found: '~/app.1.0',
  });
});

test('"~/" in a current.conf that has vanished since it was read is a typed refusal, not a raw ENOENT', async (t) => {
  const { app, current } = await layout(t);
  // validateCurrent is given text whose file no longer exists (deleted between read and check).
  await rejectsWith(() => validateCurrent(app, conf('~/app.1.0', 'cfg.1.0'), current), {
    code: 'CURRENT_UNREADABLE', file: current, key: 'bin.file', rule: 'a "~/" path needs current.conf to exist', found: 'ENOENT',
  });
});

// --- issue 15: links.dir needs one folder per release ----------------------

test('issue 15: with links.dir, bin and cfg in two release folders, or bin in the releases folder itself, are RELEASE_NOT_IN_FOLDER', async (t) => {
  const { root, releases, current } = await layout(t);
  for (const r of ['1.0', '2.0']) {
    await mkdir(path.join(releases, r, 'bin'), { recursive: true });
    await writeFile(path.join(releases, r, 'bin', 'app'), '#!/bin/sh\n', { mode: 0o755 });
    await writeFile(path.join(releases, r, 'app.cfg'), 'port=1\n');
  }
  const app = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: path.dirname(releases), links: { dir: 'current' }, releaseNames: { bin: '{release}/bin/app', cfg: '{release}/app.cfg' } }] }), path.join(root, 'config.json')).apps[0]!;
  // The release's folder is the first one below the releases folder: 1.0, not 1.0/bin.
  assert.deepEqual({ ...(await validateCurrent(app, conf('1.0/bin/app', '1.0/app.cfg'))) }, { bin: path.join(releases, '1.0', 'bin', 'app'), cfg: path.join(releases, '1.0', 'app.cfg') });
  const why = '("links.dir" links to the live release\'s folder)';
  await rejectsWith(() => validateCurrent(app, conf('1.0/bin/app', '2.0/app.cfg')),
    { code: 'RELEASE_NOT_IN_FOLDER', file: current, key: 'cfg.file', rule: `must be in the release folder of "bin.file", ${path.join(releases, '1.0')} ${why}`, found: path.join(releases, '2.0', 'app.cfg') });
  await rejectsWith(() => validateCurrent(app, conf('app.1.0', '1.0/app.cfg')),
    { code: 'RELEASE_NOT_IN_FOLDER', file: current, key: 'bin.file', rule: `must be in a folder per release inside ${releases} ${why}`, found: path.join(releases, 'app.1.0') });
  // Without links.dir nothing is linked by folder: any two files will do, as before.
  const plain = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: path.dirname(releases) }] }), path.join(root, 'config.json')).apps[0]!;
  await validateCurrent(plain, conf('1.0/bin/app', '2.0/app.cfg'));
});

test('a release file under a dot name (an upload in progress, .2.0.part/, or a hidden file) is RELEASE_HIDDEN, however current.conf names it', async (t) => {
  const { app, releases, current } = await layout(t);
  await mkdir(path.join(releases, '.2.0.part'));
  await writeFile(path.join(releases, '.2.0.part', 'app'), '#!/bin/sh\n');
  await chmod(path.join(releases, '.2.0.part', 'app'), 0o755);
  await rejectsWith(() => validateCurrent(app, conf('.2.0.part/app', 'cfg.1.0')),
    { code: 'RELEASE_HIDDEN', file: current, key: 'bin.file', rule: 'must not lie under a name starting with "." (an upload in progress, renamed into place when complete, or a release being pruned)', found: path.join(releases, '.2.0.part', 'app') });
  // Named through a symlink that is not hidden: judged on where it leads.
  await symlink(path.join(releases, '.2.0.part', 'app'), path.join(releases, 'app.2.0'));
  await rejectsWith(() => validateCurrent(app, conf('app.2.0', 'cfg.1.0')),
    { code: 'RELEASE_HIDDEN', file: current, key: 'bin.file', rule: 'must not lie under a name starting with "." (an upload in progress, renamed into place when complete, or a release being pruned)', found: path.join(releases, '.2.0.part', 'app') });
});
