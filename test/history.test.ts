/**
 * The deploy journal (issue 9, items 10 and 17): torn lines, rotation, and
 * readers that read from the end or only what was appended, on real files,
 * through the library and the CLI as real processes.
 */
import assert from 'node:assert/strict';
import { appendFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { Journal, newestEntries, newestFirst, readHistory, type HistoryEntry } from '../src/history.js';
import { JournalTail } from '../src/journalTail.js';
import { journalFile, type Damage } from '../src/stateDir.js';
import { entry } from './entries.js';
import { relinkCli, tmpDir } from './helpers.js';


/** A config with apps `names` (folders that need not exist: the journal commands read only the state folder). */
async function configFor(root: string, names: readonly string[] = ['web']): Promise<{ file: string; stateDir: string }> {
  const stateDir = path.join(root, 'state');
  const file = path.join(root, 'config.json');
  await writeFile(file, JSON.stringify({ stateDir, logLevel: 'silent', apps: names.map((name) => ({ name, dir: path.join(root, name) })) }));
  return { file, stateDir };
}

const numbers = (es: readonly HistoryEntry[]) => es.map((e) => e.durationMs);

test('a torn last line (power loss) does not swallow the next entry; readers skip it and say where', async (t) => {
  const root = await tmpDir(t);
  const { file: config, stateDir } = await configFor(root);
  const file = journalFile(stateDir, 'web');
  const before = new Journal(file);
  await before.append(entry('web', 1));
  await before.append(entry('web', 2));
  // The power went out half-way through the third line.
  await appendFile(file, JSON.stringify(entry('web', 3)).slice(0, 40));

  const damage: Damage[] = [];
  assert.deepEqual(numbers(await readHistory(stateDir, 'web', { onDamaged: (d) => damage.push(d) })), [1, 2]);
  assert.equal(damage.length, 1);
  assert.equal(damage[0]!.file, file);
  assert.equal(damage[0]!.line, 3);
  assert.match(damage[0]!.problem, /no newline \(cut short/);

  // The next run of the agent appends: the entry gets a line of its own, and the agent is told.
  const told: Damage[] = [];
  const running = new Journal(file, { onDamaged: (d) => told.push(d) });
  await running.append(entry('web', 4));
  assert.deepEqual(told.map((d) => [d.file, d.line]), [[file, 3]]);
  assert.match(told[0]!.problem, /cut short .*ended it/);
  damage.length = 0;
  assert.deepEqual(numbers(await readHistory(stateDir, 'web', { onDamaged: (d) => damage.push(d) })), [1, 2, 4]);
  assert.deepEqual(damage.map((d) => [d.file, d.line]), [[file, 3]]);
  const backwards: Damage[] = [];
  const newest: number[] = [];
  for await (const e of newestFirst(stateDir, 'web', { onDamaged: (d) => backwards.push(d) })) newest.push(e.durationMs);
  assert.deepEqual(newest, [4, 2, 1]);
  assert.deepEqual(backwards.map((d) => [d.file, d.line]), [[file, 3]], 'read from the end, the same line number');

  const cli = await relinkCli(['history', '--config', config, '--json']);
  assert.equal(cli.code, 0, cli.stderr);
  assert.deepEqual(numbers((JSON.parse(cli.stdout) as { history: HistoryEntry[] }).history), [1, 2, 4]);

  // Torn again while that journal is open (not only at the first append of a run): still a line of its own.
  await appendFile(file, '{"torn": ');
  await running.append(entry('web', 5));
  assert.deepEqual(numbers(await readHistory(stateDir, 'web')), [1, 2, 4, 5]);
  assert.equal(told.length, 2);
  // Where, and what was expected: never a quote of the line (a file's text stays out of warnings).
  assert.match(cli.stderr, new RegExp(`^relink history: warning: ${file.replaceAll('.', '\\.')}:3: is not valid JSON \\(expected .* at line 1, column \\d+ \\(found: [^)]*\\)\\); skipped\\n$`));
  assert.doesNotMatch(cli.stderr, /"app":"web"/);
});

test('damaged lines in the middle (garbage, the wrong shape) are skipped and reported with their line numbers', async (t) => {
  const root = await tmpDir(t);
  const stateDir = path.join(root, 'state');
  const file = journalFile(stateDir, 'web');
  const j = new Journal(file);
  await j.append(entry('web', 1));
  await appendFile(file, 'garbage\n');
  await appendFile(file, '{"time": "x", "app": "web"}\r\n');
  await j.append(entry('web', 2, { repeats: 11, outcome: 'refused', reason: 'nope', extraKeyFromANewerAgent: true } as Partial<HistoryEntry>));
  const damage: Damage[] = [];
  const all = await readHistory(stateDir, 'web', { onDamaged: (d) => damage.push(d) });
  assert.deepEqual(numbers(all), [1, 2]);
  assert.equal(all[1]!.repeats, 11);
  assert.equal((all[1] as unknown as Record<string, unknown>).extraKeyFromANewerAgent, true, 'unknown keys are kept');
  assert.deepEqual(damage.map((d) => d.line), [2, 3]);
  assert.match(damage[1]!.problem, /is not what relink writes: "outcome": /);
});

test('rotation: 300 entries into a tiny journal keep the newest, in at most backups + 1 files, and history --limit is still right', async (t) => {
  const root = await tmpDir(t);
  const { file: config, stateDir } = await configFor(root);
  const file = journalFile(stateDir, 'web');
  const maxBytes = 3_000;
  const j = new Journal(file, { maxBytes, backups: 2 });
  for (let n = 1; n <= 300; n++) await j.append(entry('web', n));

  assert.deepEqual((await readdir(path.dirname(file))).sort(), ['history.jsonl', 'history.jsonl.1', 'history.jsonl.2']);
  for (const f of [file, `${file}.1`, `${file}.2`]) assert.ok((await stat(f)).size <= maxBytes, `${f} is at most maxBytes`);
  const kept = numbers(await readHistory(stateDir, 'web'));
  assert.equal(kept.at(-1), 300, 'the newest entry is kept');
  assert.deepEqual(kept, Array.from({ length: kept.length }, (_, i) => 300 - kept.length + 1 + i), 'a contiguous run of the newest, oldest first');
  assert.ok(kept.length > 10 && kept.length < 300, `some rotated out (kept ${kept.length})`);

  const cli = await relinkCli(['history', '--config', config, '--app', 'web', '--limit', String(kept.length - 2), '--json']);
  assert.equal(cli.code, 0, cli.stderr);
  assert.deepEqual(numbers((JSON.parse(cli.stdout) as { history: HistoryEntry[] }).history), kept.slice(2), 'across the rotated files, newest last');
  const table = await relinkCli(['history', '--config', config, '--limit', '3']);
  assert.equal(table.code, 0, table.stderr);
  assert.deepEqual(table.stdout.trim().split('\n').slice(1).map((l) => l.split(/\s+/)[0]), [298, 299, 300].map((n) => entry('web', n).time));

  // Lowering backups later removes the files beyond it at the next rotation.
  const fewer = new Journal(file, { maxBytes, backups: 0 });
  for (let n = 301; n <= 330; n++) await fewer.append(entry('web', n));
  assert.deepEqual(await readdir(path.dirname(file)), ['history.jsonl']);
  assert.equal(numbers(await readHistory(stateDir, 'web')).at(-1), 330);
});

test('history without --app merges the apps\' journals by time, newest last, and shows repeats', async (t) => {
  const root = await tmpDir(t);
  const { file: config, stateDir } = await configFor(root, ['web', 'api']);
  const web = new Journal(journalFile(stateDir, 'web'));
  const api = new Journal(journalFile(stateDir, 'api'));
  // PIDs: a start (none before), a signal (10 -> 11), a refusal (the same process).
  for (const n of [1, 4, 5]) await web.append(entry('web', n, n === 1 ? { action: 'start', pidBefore: null, pidAfter: 13262 } : {}));
  for (const n of [2, 3, 6]) await api.append(entry('api', n, n === 6 ? { outcome: 'refused', repeats: 12, to: { bin: null, cfg: null } } : {}));
  const merged = await newestEntries(stateDir, ['web', 'api'], 4);
  assert.deepEqual(merged.entries.map((e) => `${e.app}${e.durationMs}`), ['api3', 'web4', 'web5', 'api6']);
  const cli = await relinkCli(['history', '--config', config]);
  assert.equal(cli.code, 0, cli.stderr);
  const rows = cli.stdout.trim().split('\n');
  assert.match(rows[0]!, /^TIME\s+APP\s+OUTCOME/);
  assert.deepEqual(rows.slice(1).map((r) => r.split(/\s{2,}/).slice(1, 3).join(' ')), ['web deployed', 'api deployed', 'api deployed', 'web deployed', 'web deployed', 'api refused x12']);
  // Before: a start read "-->13262".
  assert.deepEqual(rows.slice(1).map((r) => r.split(/\s{2,}/)[5]), ['13262', '10->11', '10->11', '10->11', '10->11', '10->11']);
  for (const bad of ['0', '1e3', '-1', 'x']) {
    const r = await relinkCli(['history', '--config', config, '--limit', bad]);
    assert.equal(r.code, 2, `--limit ${bad}`);
  }
});

test('JournalTail returns only what was appended since it was opened, across a rotation, and waits for a line being written', async (t) => {
  const root = await tmpDir(t);
  const stateDir = path.join(root, 'state');
  const file = journalFile(stateDir, 'web');
  const j = new Journal(file, { maxBytes: 2_000, backups: 3 });
  for (let n = 1; n <= 10; n++) await j.append(entry('web', n));
  const tail = await JournalTail.open(stateDir, 'web');
  assert.deepEqual(await tail.read(), []);
  await j.append(entry('web', 11));
  assert.deepEqual(numbers(await tail.read()), [11]);
  assert.deepEqual(await tail.read(), [], 'each entry once');
  // Enough to rotate twice before the next read.
  for (let n = 12; n <= 20; n++) await j.append(entry('web', n));
  assert.deepEqual(numbers(await tail.read()), [12, 13, 14, 15, 16, 17, 18, 19, 20]);
  // Half of a line: not returned until its newline is there.
  const line = JSON.stringify(entry('web', 21));
  await appendFile(file, line.slice(0, 30));
  assert.deepEqual(await tail.read(), []);
  await appendFile(file, `${line.slice(30)}\n`);
  assert.deepEqual(numbers(await tail.read()), [21]);

  // A journal that does not exist yet when the tail is opened.
  const fresh = await JournalTail.open(stateDir, 'api');
  await new Journal(journalFile(stateDir, 'api')).append(entry('api', 1));
  assert.deepEqual(numbers(await fresh.read()), [1]);
});

test('history --help names every outcome, rolled_back included, and repeats', async () => {
  const r = await relinkCli(['history', '--help']);
  assert.equal(r.code, 0);
  for (const outcome of ['deployed', 'refused', 'rolled_back', 'failed']) assert.match(r.stdout, new RegExp(`^  ${outcome}\\s`, 'm'), outcome);
  assert.match(r.stdout, /refused x12/);
});
