/**
 * CurrentWatcher on the real filesystem, against every way current.conf is
 * changed in practice: in place, renamed over (scp-then-mv, `sed -i`), vim in
 * both backup modes, deleted and recreated, bursts, a writer that writes in
 * chunks, a current.conf that is itself a symlink, and its folder (or its
 * link target's) deleted and recreated, swapped, re-pointed or not there yet
 * (issue 9, item 14). The file is consumed
 * as the orchestrator consumes it (re-read on every event, reads coalesced),
 * and the claims are: the final content always ends up applied, and a
 * half-written file is never read.
 */
import assert from 'node:assert/strict';
import { renameSync, writeFileSync } from 'node:fs';
import fsp, { copyFile, mkdir, open, rename, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { setImmediate as nextTurn, setTimeout as pause } from 'node:timers/promises';
import { readCurrent } from '../src/current.js';
import { RelinkError } from '../src/errors.js';
import { CurrentWatcher } from '../src/watch.js';
import { tmpDir, waitFor } from './helpers.js';

/** The agent's defaults (config.ts). */
const WATCH = { stabilityMs: 50, pollMs: 10 } as const;

/**
 * A current.conf in the real format. Every proper prefix of it is invalid
 * JSON, so a read of a half-written file always shows up as unparseable.
 */
function conf(tag: string): string {
  return `${JSON.stringify({ 'bin.file': `app.${tag}`, 'cfg.file': `cfg.${tag}` }, null, 2)}\n`;
}

/** The orchestrator's way of consuming events (app.ts), reduced to reading and parsing. */
class Consumer {
  /** Every event name passed to onChange, in order. */
  readonly events: string[] = [];
  /** Every text read, parsed or not. */
  readonly seen: string[] = [];
  /** Texts read that were not valid JSON: a half-written file. */
  readonly unparseable: string[] = [];
  /** Codes of reads that failed (CURRENT_MISSING while the file is briefly absent). */
  readonly readErrors: string[] = [];
  readonly watchErrors: Error[] = [];
  /** onFolder calls, in order, as "missing DIR" and "back DIR". */
  readonly folders: string[] = [];
  /** The last content that parsed: what the agent would have acted on. */
  applied: string | undefined;
  #reading = false;
  #pending = false;
  readonly #file: string;

  constructor(file: string) {
    this.#file = file;
  }

  readonly onChange = (event: string): void => {
    this.events.push(event);
    this.trigger();
  };

  readonly onError = (err: Error): void => {
    this.watchErrors.push(err);
  };

  readonly onFolder = (event: string, dir: string): void => {
    this.folders.push(`${event} ${dir}`);
  };

  /** A read that is asked for while one runs is coalesced into one more read after it. */
  trigger(): void {
    if (this.#reading) {
      this.#pending = true;
      return;
    }
    void this.#drain();
  }

  async #drain(): Promise<void> {
    this.#reading = true;
    try {
      do {
        this.#pending = false;
        try {
          const { text } = await readCurrent(this.#file);
          this.seen.push(text);
          try {
            JSON.parse(text);
            this.applied = text;
          } catch {
            this.unparseable.push(text);
          }
        } catch (err) {
          this.readErrors.push(err instanceof RelinkError ? err.code : String(err));
        }
      } while (this.#pending);
    } finally {
      this.#reading = false;
    }
  }
}

interface Watched {
  readonly watcher: CurrentWatcher;
  readonly c: Consumer;
}

/** Start a watcher as the agent does (armed first, then one explicit read); closed after the test. */
async function watched(t: TestContext, file: string, opts: { stabilityMs: number; pollMs: number } = WATCH): Promise<Watched> {
  const c = new Consumer(file);
  const watcher = await CurrentWatcher.start({ file, ...opts, onChange: c.onChange, onError: c.onError, onFolder: c.onFolder });
  t.after(() => watcher.close());
  c.trigger();
  return { watcher, c };
}

/**
 * Wait until `final` is what was applied; no half-written file may have been
 * read on the way, unless `pausingWriter`: a writer that pauses between
 * in-place rewrites ends the quiet period whenever a pause outlasts
 * stabilityMs (a starved CPU makes a 30 ms pause 60 ms), and its next
 * truncation can then meet the read that the report asked for. No watcher
 * can tell that pause from the end of the writing; the agent refuses what it
 * read (CURRENT_SYNTAX), the next write is reported in turn, and "the final
 * content wins" is what still holds.
 */
async function finalWins(c: Consumer, final: string, what: string, { pausingWriter = false } = {}): Promise<void> {
  try {
    await waitFor(`${what}: the final content to be applied`, () => c.applied === final);
  } catch (err) {
    assert.fail(`${what}: final content never applied; applied ${JSON.stringify(c.applied)}, wanted ${JSON.stringify(final)}, ` +
      `${c.events.length} events, last reads ${JSON.stringify(c.seen.slice(-3))} (${(err as Error).message})`);
  }
  if (!pausingWriter) assert.deepEqual(c.unparseable, [], `${what}: a half-written current.conf was read`);
  assert.deepEqual(c.watchErrors, [], `${what}: the watcher reported errors`);
}

/** Write to a temp name in the same folder, then rename over: scp-then-mv, `sed -i`, `install`. */
async function replace(file: string, text: string, tmpName = `${path.basename(file)}.new`): Promise<void> {
  const tmp = path.join(path.dirname(file), tmpName);
  await writeFile(tmp, text);
  await rename(tmp, file);
}

/** One writer, five write() calls 5 ms apart (well under stabilityMs), then close. */
async function writeInChunks(file: string, text: string, chunks = 5, gapMs = 5): Promise<void> {
  const fh = await open(file, 'w');
  try {
    const size = Math.ceil(text.length / chunks);
    for (let i = 0; i < chunks; i++) {
      await fh.write(text.slice(i * size, (i + 1) * size));
      if (i < chunks - 1) await pause(gapMs);
    }
  } finally {
    await fh.close();
  }
}

async function setup(t: TestContext, initial = conf('initial')): Promise<{ dir: string; file: string } & Watched> {
  const dir = await tmpDir(t, 'relink-watch-');
  const file = path.join(dir, 'current.conf');
  await writeFile(file, initial);
  const w = await watched(t, file);
  await finalWins(w.c, initial, 'initial read');
  return { dir, file, ...w };
}

test('an in-place write (fs.writeFile over the file) is seen, every time', async (t) => {
  const { file, c } = await setup(t);
  for (let i = 0; i < 5; i++) {
    const text = conf(`inplace.${i}`);
    await writeFile(file, text);
    await finalWins(c, text, `in-place write ${i}`);
  }
});

test('an atomic replace (temp file renamed over, as scp-then-mv and sed -i do) is seen, every time', async (t) => {
  const { file, c } = await setup(t);
  for (let i = 0; i < 5; i++) {
    const text = conf(`rename.${i}`);
    // scp-then-mv uses a visible temp name; sed -i a random one.
    await replace(file, text, i % 2 === 0 ? 'current.conf.upload' : `sed${i}Xy7Qz`);
    await finalWins(c, text, `atomic replace ${i}`);
  }
});

test('vim with its default backup (rename to current.conf~, write a new file, delete the backup) is seen', async (t) => {
  const { dir, file, c } = await setup(t);
  for (let i = 0; i < 5; i++) {
    const text = conf(`vim.${i}`);
    // vim first checks that it may create files in the folder.
    await writeFile(path.join(dir, '4913'), '');
    await unlink(path.join(dir, '4913'));
    await rename(file, `${file}~`);
    await writeFile(file, text);
    await unlink(`${file}~`);
    await finalWins(c, text, `vim save ${i}`);
  }
});

test('vim with backupcopy=yes (copy to current.conf~, truncate and write in place) is seen', async (t) => {
  const { file, c } = await setup(t);
  for (let i = 0; i < 5; i++) {
    const text = conf(`vimcopy.${i}`);
    await copyFile(file, `${file}~`);
    const fh = await open(file, 'w'); // O_TRUNC: same inode, empty for a moment
    try {
      await fh.write(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await unlink(`${file}~`);
    await finalWins(c, text, `vim backupcopy save ${i}`);
  }
});

test('delete then recreate is seen, with the deletion reported in between and without', async (t) => {
  const { file, c } = await setup(t);
  for (let i = 0; i < 3; i++) {
    const eventsBefore = c.events.length;
    const missingBefore = c.readErrors.filter((code) => code === 'CURRENT_MISSING').length;
    await unlink(file);
    // A real gap: the watcher has reported the deletion and the consumer has found no file.
    await waitFor(`deletion ${i} to be reported`, () => c.events.slice(eventsBefore).includes('unlink'));
    await waitFor(`deletion ${i} to be read as missing`, () => c.readErrors.filter((code) => code === 'CURRENT_MISSING').length > missingBefore);
    const text = conf(`recreated.${i}`);
    await writeFile(file, text);
    await finalWins(c, text, `recreate after reported deletion ${i}`);
  }
  for (let i = 0; i < 3; i++) {
    // No gap: the deletion and the new file may well be reported as one change.
    await unlink(file);
    const text = conf(`recreated.fast.${i}`);
    await writeFile(file, text);
    await finalWins(c, text, `immediate recreate ${i}`);
  }
});

test('a tight burst of 50 writes (alternately in place and renamed over), 5 times: the last one wins', async (t) => {
  const { file, c } = await setup(t);
  for (let round = 0; round < 5; round++) {
    let last = '';
    for (let i = 0; i < 50; i++) {
      last = conf(`burst.${round}.${i}`);
      if (i % 2 === 0) await writeFile(file, last);
      else await replace(file, last);
    }
    await finalWins(c, last, `burst ${round}`);
  }
});

test('a burst of 50 synchronous writes with no event handled in between, 5 times: the last one wins', async (t) => {
  const { file, c } = await setup(t);
  const tmp = `${file}.new`;
  for (let round = 0; round < 5; round++) {
    let last = '';
    // Synchronous calls: the event loop, and so the watcher, only sees the aftermath.
    for (let i = 0; i < 50; i++) {
      last = conf(`syncburst.${round}.${i}`);
      if (i % 2 === 0) {
        writeFileSync(file, last);
      } else {
        writeFileSync(tmp, last);
        renameSync(tmp, file);
      }
    }
    await finalWins(c, last, `synchronous burst ${round}`);
  }
});

test('50 writes 10-30 ms apart (alternately in place and renamed over), 5 times: the last one wins', async (t) => {
  const { file, c } = await setup(t);
  for (let round = 0; round < 5; round++) {
    let last = '';
    for (let i = 0; i < 50; i++) {
      last = conf(`spaced.${round}.${i}`);
      if (i % 2 === 0) await writeFile(file, last);
      else await replace(file, last);
      await pause(10 + ((i * 7 + round * 3) % 21)); // the writer's own pace, not a wait on the watcher
    }
    await finalWins(c, last, `spaced burst ${round}`, { pausingWriter: true });
  }
  // Seen only with every core busy (see finalWins); reported, not failed.
  if (c.unparseable.length > 0) t.diagnostic(`half-written reads during spaced in-place writes: ${JSON.stringify(c.unparseable)}`);
});

test('a writer that writes in 5 chunks 5 ms apart is never read half-way, and its last write wins', async (t) => {
  const { file, c } = await setup(t);
  for (let i = 0; i < 10; i++) {
    const text = conf(`chunked.${i}`);
    await writeInChunks(file, text);
    await finalWins(c, text, `chunked write ${i}`);
  }
  // Every read after the initial one saw a whole file (finalWins checked unparseable each time).
  assert.ok(c.seen.length >= 11, `expected a read per chunked write, saw ${c.seen.length}`);
});

test('a writer stalled between truncating and writing (scp on a slow link) is not read as an empty file', async (t) => {
  const { file, c } = await setup(t);
  for (let i = 0; i < 3; i++) {
    const text = conf(`stalled.${i}`);
    const fh = await open(file, 'w');
    try {
      await pause(4 * WATCH.stabilityMs); // the writer's stall, well past the quiet period
      await fh.write(text);
    } finally {
      await fh.close();
    }
    await finalWins(c, text, `stalled write ${i}`);
  }
});

test('a current.conf emptied on purpose is still reported, and the next write wins', async (t) => {
  const { file, c } = await setup(t);
  await writeFile(file, '');
  await waitFor('the emptied file to be read', () => c.seen.at(-1) === '');
  assert.deepEqual(c.unparseable, [''], 'the empty file is read, once');
  const text = conf('refilled');
  await writeFile(file, text);
  await waitFor('the refilled file to be applied', () => c.applied === text);
  assert.deepEqual(c.unparseable, [''], 'nothing else unparseable was read');
});

test('current.conf as a symlink: edits of the target, in place and renamed over, and a re-pointed link are seen', async (t) => {
  const base = await tmpDir(t, 'relink-watch-link-');
  const releases = path.join(base, 'release');
  const targets = path.join(base, 'targets');
  const third = path.join(base, 'elsewhere');
  await Promise.all([mkdir(releases), mkdir(targets), mkdir(third)]);
  const file = path.join(releases, 'current.conf');
  const a = path.join(targets, 'a.conf');
  const b = path.join(third, 'b.conf');
  await writeFile(a, conf('link.0'));
  await symlink(a, file);
  const { c } = await watched(t, file);
  await finalWins(c, conf('link.0'), 'initial read through the link');

  await writeFile(a, conf('link.1'));
  await finalWins(c, conf('link.1'), 'target edited in place');

  await replace(a, conf('link.2'));
  await finalWins(c, conf('link.2'), 'target renamed over');

  // The link is swapped atomically (ln -s to a temp name, mv -T over) to a file in a third folder.
  await writeFile(b, conf('link.3'));
  await symlink(b, `${file}.tmp`);
  await rename(`${file}.tmp`, file);
  await finalWins(c, conf('link.3'), 'link re-pointed');

  // The new target is followed: edits to it are seen, and so are edits after a second swap back.
  await writeFile(b, conf('link.4'));
  await finalWins(c, conf('link.4'), 'new target edited in place');
  await replace(b, conf('link.5'));
  await finalWins(c, conf('link.5'), 'new target renamed over');

  await symlink(a, `${file}.tmp`);
  await rename(`${file}.tmp`, file);
  await finalWins(c, conf('link.2'), 'link re-pointed back');
  await writeFile(a, conf('link.6'));
  await finalWins(c, conf('link.6'), 'old target edited after the link came back to it');
});

test('other files in the folder (a 5 MB release uploaded in chunks, temp files) do not call onChange', async (t) => {
  const { dir, file, c } = await setup(t);
  // A witness on the last of those files, with a longer quiet period: once it
  // has reported, a watcher that reacted to any of them would have reported too.
  const notes = path.join(dir, 'notes.txt');
  const witness = await watched(t, notes, { stabilityMs: 3 * WATCH.stabilityMs, pollMs: WATCH.pollMs });
  const eventsBefore = c.events.length;

  const part = path.join(dir, 'app.9.0.part');
  const fh = await open(part, 'w');
  try {
    const chunk = Buffer.alloc(256 * 1024, 0x90);
    for (let i = 0; i < 20; i++) {
      await fh.write(chunk);
      if (i % 4 === 3) await pause(5);
    }
  } finally {
    await fh.close();
  }
  await rename(part, path.join(dir, 'app.9.0'));
  await writeFile(path.join(dir, 'cfg.9.0'), 'listen: 8080\n');
  await replace(path.join(dir, 'cfg.9.0'), 'listen: 8081\n', 'cfg.9.0.new');
  await writeFile(path.join(dir, '.upload.tmp'), 'x');
  await unlink(path.join(dir, '.upload.tmp'));
  const last = '{"last": true}\n';
  await writeFile(notes, last);
  await waitFor('the witness to report the last of the other files', () => witness.c.applied === last);
  assert.deepEqual(c.events.slice(eventsBefore), [], 'onChange was called for files other than current.conf');

  // And each real edit is reported once.
  await writeFile(file, conf('other.1'));
  await finalWins(c, conf('other.1'), 'first edit after the upload');
  await replace(file, conf('other.2'));
  await finalWins(c, conf('other.2'), 'second edit after the upload');
  assert.deepEqual(c.events.slice(eventsBefore), ['change', 'change'], 'only the two edits of current.conf may be reported');
});

test('close() returns the same promise every time and no event is reported after it', async (t) => {
  const { file, watcher, c } = await setup(t);
  // A write still inside its stability window when close() is called.
  await writeFile(file, conf('close.1'));
  const closing = watcher.close();
  assert.equal(watcher.close(), closing, 'close() must return the same promise');
  await closing;
  assert.equal(watcher.close(), closing, 'close() after it resolved must return the same promise');
  const eventsAtClose = c.events.length;

  // A second watcher with a longer stability window is the witness: by the
  // time it reports the last edit, the closed one would have reported all of them.
  const witness = await watched(t, file, { stabilityMs: 200, pollMs: 10 });
  await finalWins(witness.c, conf('close.1'), 'witness initial read');
  await writeFile(file, conf('close.2'));
  await replace(file, conf('close.3'));
  await unlink(file);
  await writeFile(file, conf('close.4'));
  await finalWins(witness.c, conf('close.4'), 'witness sees the edits made after close');
  assert.equal(c.events.length, eventsAtClose, `events after close: ${JSON.stringify(c.events.slice(eventsAtClose))}`);
});

test('an event still being handled when close() is called is not reported, and does not re-arm the watcher', async (t) => {
  const base = await tmpDir(t, 'relink-watch-close-');
  const releases = path.join(base, 'release');
  const later = path.join(base, 'later');
  await Promise.all([mkdir(releases), mkdir(later)]);
  const file = path.join(releases, 'current.conf');
  await writeFile(path.join(releases, 'a.conf'), conf('race.0'));
  await writeFile(path.join(later, 'b.conf'), conf('race.1'));
  await symlink(path.join(releases, 'a.conf'), file);

  // Hold the watcher's own realpath() of current.conf (made for every event,
  // to follow a re-pointed link) until close() has been called.
  const realRealpath = fsp.realpath;
  let armed = false;
  let held = false;
  let answered = false;
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  fsp.realpath = (async (p: Parameters<typeof realRealpath>[0], opts?: Parameters<typeof realRealpath>[1]) => {
    // Only the watcher's own call: a watching library may call realpath on the same path.
    if (!armed || p !== file || !new Error().stack?.includes(`${path.sep}src${path.sep}watch.ts`)) return realRealpath(p, opts);
    armed = false;
    held = true;
    await gate;
    try {
      return await realRealpath(p, opts);
    } finally {
      answered = true;
    }
  }) as typeof realRealpath;
  syncBuiltinESMExports();
  t.after(() => {
    release();
    fsp.realpath = realRealpath;
    syncBuiltinESMExports();
  });

  const watchesBefore = fsEventHandles();
  const { watcher, c } = await watched(t, file);
  await finalWins(c, conf('race.0'), 'initial read');
  const eventsBefore = c.events.length;

  armed = true;
  await symlink(path.join(later, 'b.conf'), `${file}.tmp`);
  await rename(`${file}.tmp`, file);
  await waitFor('the event to reach the symlink check', () => held);
  const closing = watcher.close(); // may wait for the check in progress: not awaited before the gate opens
  release();
  await closing;
  await waitFor('the held check to be answered', () => answered);
  await nextTurn(); // what is chained on the answer runs in microtasks, before this

  assert.deepEqual(c.events.slice(eventsBefore), [], 'onChange was called after close()');
  // Watching the new target's folder after close() would leave an fs.watch open: the run would never end.
  await waitFor('every fs.watch handle of the closed watcher to be released', () => fsEventHandles() <= watchesBefore);
});

function fsEventHandles(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'FSEventWrap').length;
}

/**
 * A watcher with a long quiet period (so "before it ends" is a matter of
 * order, not of timing) recording its calls in order: "early" and the
 * reported event names. `then` runs after each report.
 */
async function recorded(t: TestContext, tag: string, then?: (calls: string[]) => void): Promise<{ file: string; calls: string[] }> {
  const dir = await tmpDir(t);
  const file = path.join(dir, 'current.conf');
  await writeFile(file, conf(`${tag}.0`));
  const calls: string[] = [];
  const watcher = await CurrentWatcher.start({
    file, stabilityMs: 1_000, pollMs: 10,
    onEarly: () => calls.push('early'),
    onChange: (e) => {
      calls.push(e);
      then?.(calls);
    },
    onError: (err) => { throw err; },
  });
  t.after(() => watcher.close());
  return { file, calls };
}

/** Consecutive early calls as one: one write may make two events, read twice at most pollMs apart. */
const collapsed = (calls: readonly string[]): string[] => calls.filter((c, i) => !(c === 'early' && calls[i - 1] === 'early'));

test('onEarly comes before the quiet period ends, and at most once per pollMs during a burst', async (t) => {
  const { file, calls } = await recorded(t, 'early');
  const started = performance.now();
  for (let i = 1; i <= 5; i++) await writeFile(file, conf(`early.${i}`));
  const burstMs = performance.now() - started;
  await waitFor('the early call', () => calls.includes('early'));
  await waitFor('the report after the quiet period', () => calls.includes('change'), { timeoutMs: 10_000 });
  const early = calls.filter((c) => c === 'early').length;
  assert.deepEqual(collapsed(calls), ['early', 'change'], 'every early call came before the one report for the whole burst');
  // 5 writes make up to 15 events (inotify reports each truncation and each
  // write: 10 for 5 writeFile calls, measured), so a burst slowed down by a
  // busy CPU may be offered more often than it has writes; what is bounded
  // is the rate: with pollMs 10, by the burst's length (one call per 10 ms,
  // one held back to the end of the window, one for a change seen by polling).
  assert.ok(early <= Math.floor(burstMs / 10) + 3, `${early} early calls for a burst of ${burstMs.toFixed(1)} ms`);
});

test('a write right after a report opens a new round: onEarly again, before its quiet period', async (t) => {
  // Back to back: the next deploy lands while the watcher is still in the
  // previous round's tail (where chokidar's throttle may drop events).
  const { file, calls } = await recorded(t, 'next', (c) => {
    if (c.filter((x) => x === 'change').length === 1) writeFileSync(file, conf('next.2'));
  });
  await writeFile(file, conf('next.1'));
  await waitFor('an early call after the first report', () => collapsed(calls).length >= 3, { timeoutMs: 10_000 });
  assert.deepEqual(collapsed(calls), ['early', 'change', 'early'], 'the second round was read early, before its quiet period ended');
  await waitFor('the second report', () => collapsed(calls).length === 4, { timeoutMs: 10_000 });
  assert.deepEqual(collapsed(calls), ['early', 'change', 'early', 'change']);
});

test('a write during the quiet period of the previous one is read early too (back-to-back deploys)', async (t) => {
  const { file, calls } = await recorded(t, 'b2b');
  await writeFile(file, conf('b2b.1'));
  await waitFor('the first early call', () => calls.includes('early'));
  // The agent has acted on b2b.1; the next deploy comes long before the quiet period (1 s) ends.
  calls.push('second write');
  await writeFile(file, conf('b2b.2'));
  await waitFor('an early call for the second write', () => calls.indexOf('early', calls.indexOf('second write')) > 0);
  assert.equal(calls.includes('change'), false, 'read early, before the quiet period ended');
  await waitFor('the report', () => calls.includes('change'), { timeoutMs: 10_000 });
  assert.equal(calls.filter((c) => c === 'change').length, 1);
});

/** Deleting a folder the way `rm -rf` does. */
const rmRf = (dir: string): Promise<void> => rm(dir, { recursive: true, force: true });

/** Each recreation of `dir`, as onFolder reports it: the loss, then the recovery. */
const lostAndBack = (dir: string, times = 1): string[] => Array.from({ length: times }, () => [`missing ${dir}`, `back ${dir}`]).flat();

// Issue 9, item 14: with the folder watched through its inode, `rm -rf
// deploy; mkdir deploy` left the watch on the deleted folder, and every
// deploy after it waited for the agent's periodic re-check.
test('current.conf\'s folder deleted and recreated (rm -rf; mkdir): the next write is seen, the loss and the recovery reported once each', async (t) => {
  const base = await tmpDir(t, 'relink-watch-recreate-');
  const dir = path.join(base, 'deploy');
  const file = path.join(dir, 'current.conf');
  await mkdir(dir);
  await writeFile(file, conf('folder.0'));
  const { c } = await watched(t, file);
  await finalWins(c, conf('folder.0'), 'initial read');
  const handles = fsEventHandles();
  for (let i = 1; i <= 3; i++) {
    // By hand: the deletion is reported before the folder comes back.
    await rmRf(dir);
    await waitFor(`deletion ${i} of the folder to be reported`, () => c.folders.at(-1) === `missing ${dir}`);
    await mkdir(dir);
    await writeFile(file, conf(`folder.${i}`));
    await finalWins(c, conf(`folder.${i}`), `write in the folder recreated by hand (${i})`);
  }
  for (let i = 4; i <= 6; i++) {
    // A script: back to back, the file possibly written before the watch is re-armed.
    await rmRf(dir);
    await mkdir(dir);
    await writeFile(file, conf(`folder.${i}`));
    await finalWins(c, conf(`folder.${i}`), `write in the folder recreated by a script (${i})`);
  }
  // Heard through the new watch, not only read once after re-arming.
  await replace(file, conf('folder.7'));
  await finalWins(c, conf('folder.7'), 'edit in the recreated folder');
  assert.deepEqual(c.folders, lostAndBack(dir, 6), 'one "missing" and one "back" per recreation');
  assert.equal(fsEventHandles(), handles, 'the watch on each deleted folder was released');
});

test('current.conf\'s folder renamed away and another moved in: the new folder\'s file is read and its edits are heard', async (t) => {
  const base = await tmpDir(t, 'relink-watch-swap-');
  const dir = path.join(base, 'deploy');
  const file = path.join(dir, 'current.conf');
  await mkdir(dir);
  await writeFile(file, conf('swap.0'));
  const { c } = await watched(t, file);
  await finalWins(c, conf('swap.0'), 'initial read');
  const handles = fsEventHandles();
  for (let i = 1; i <= 3; i++) {
    const next = path.join(base, `deploy.next.${i}`);
    await mkdir(next);
    await writeFile(path.join(next, 'current.conf'), conf(`swap.${i}`));
    await rename(dir, path.join(base, `deploy.old.${i}`));
    await rename(next, dir);
    await finalWins(c, conf(`swap.${i}`), `folder swapped (${i})`);
    await writeFile(file, conf(`swap.${i}.edit`));
    await finalWins(c, conf(`swap.${i}.edit`), `edit in the swapped-in folder (${i})`);
  }
  assert.deepEqual(c.folders, lostAndBack(dir, 3), 'one "missing" and one "back" per swap');
  assert.equal(fsEventHandles(), handles, 'the watch on each folder moved away was released');
});

test('a folder that does not exist yet: start() succeeds, says so, and reads the file once the folder and the file appear', async (t) => {
  const base = await tmpDir(t, 'relink-watch-later-');
  const dir = path.join(base, 'srv', 'deploy');
  const file = path.join(dir, 'current.conf');
  const { c } = await watched(t, file);
  assert.deepEqual(c.folders, [`missing ${dir}`], 'the missing folder is reported by start()');
  await waitFor('the initial read to find no file', () => c.readErrors.includes('CURRENT_MISSING'));
  // mkdir -p, then the file at once: it may be written before the watch is armed.
  await mkdir(dir, { recursive: true });
  await writeFile(file, conf('later.1'));
  await finalWins(c, conf('later.1'), 'file in the folder that appeared');
  assert.deepEqual(c.folders, lostAndBack(dir), 'the recovery is reported once');
  await replace(file, conf('later.2'));
  await finalWins(c, conf('later.2'), 'edit in the folder that appeared');
  assert.deepEqual(c.folders, lostAndBack(dir));
});

test('close() while waiting for a missing folder leaves no timer or watch behind, and nothing is reported after it', async (t) => {
  const base = await tmpDir(t, 'relink-watch-later-close-');
  const dir = path.join(base, 'deploy');
  const file = path.join(dir, 'current.conf');
  const timers = activeTimers();
  const handles = fsEventHandles();
  const c = new Consumer(file);
  const watcher = await CurrentWatcher.start({ file, ...WATCH, onChange: c.onChange, onError: c.onError, onFolder: c.onFolder });
  assert.deepEqual(c.folders, [`missing ${dir}`]);
  await watcher.close();
  assert.equal(activeTimers(), timers, 'a timer of the closed watcher is still running');
  assert.equal(fsEventHandles(), handles, 'an fs.watch of the closed watcher is still open');
  // A witness sees the folder and the file appear; by then the closed one would have too.
  await mkdir(dir);
  const witness = await watched(t, file);
  await writeFile(file, conf('closed.1'));
  await finalWins(witness.c, conf('closed.1'), 'witness');
  assert.deepEqual(c.folders, [`missing ${dir}`], 'onFolder after close()');
  assert.deepEqual(c.events, [], 'onChange after close()');
});

test('a symlinked current.conf whose target\'s folder is deleted and recreated: the new target is read and heard', async (t) => {
  const base = await tmpDir(t, 'relink-watch-link-recreate-');
  const releases = path.join(base, 'release');
  const targets = path.join(base, 'targets');
  await Promise.all([mkdir(releases), mkdir(targets)]);
  const file = path.join(releases, 'current.conf');
  const target = path.join(targets, 'a.conf');
  await writeFile(target, conf('target.0'));
  await symlink(target, file);
  const { c } = await watched(t, file);
  await finalWins(c, conf('target.0'), 'initial read through the link');

  await rmRf(targets);
  await waitFor('the deletion of the target\'s folder to be reported', () => c.folders.at(-1) === `missing ${targets}`);
  await mkdir(targets);
  await writeFile(target, conf('target.1'));
  await finalWins(c, conf('target.1'), 'target written in its recreated folder');

  await rmRf(targets);
  await mkdir(targets);
  await writeFile(target, conf('target.2'));
  await finalWins(c, conf('target.2'), 'target folder recreated by a script');
  await writeFile(target, conf('target.3'));
  await finalWins(c, conf('target.3'), 'target edited in place in its recreated folder');
  assert.deepEqual(c.folders, lostAndBack(targets, 2));
});

test('current.conf\'s folder as a symlink, re-pointed (ln -sfn): the new folder\'s file is read and its edits are heard', async (t) => {
  const base = await tmpDir(t, 'relink-watch-dirlink-');
  const v1 = path.join(base, 'v1');
  const v2 = path.join(base, 'v2');
  await Promise.all([mkdir(v1), mkdir(v2)]);
  await writeFile(path.join(v1, 'current.conf'), conf('dirlink.1'));
  await writeFile(path.join(v2, 'current.conf'), conf('dirlink.2'));
  const dir = path.join(base, 'deploy');
  await symlink('v1', dir);
  const file = path.join(dir, 'current.conf');
  const { c } = await watched(t, file);
  await finalWins(c, conf('dirlink.1'), 'initial read through the folder link');

  const repoint = async (to: string): Promise<void> => {
    await symlink(to, `${dir}.tmp`);
    await rename(`${dir}.tmp`, dir);
  };
  await repoint('v2');
  await finalWins(c, conf('dirlink.2'), 'folder link re-pointed');
  await writeFile(file, conf('dirlink.3'));
  await finalWins(c, conf('dirlink.3'), 'edit in the newly linked folder');
  await repoint('v1');
  await finalWins(c, conf('dirlink.1'), 'folder link re-pointed back');
  await replace(path.join(v1, 'current.conf'), conf('dirlink.4'));
  await finalWins(c, conf('dirlink.4'), 'edit after the link came back');
  assert.deepEqual(c.folders, lostAndBack(dir, 2));
});

test('two watchers on one folder (two apps sharing a releases folder), the folder recreated: both hear the next writes', async (t) => {
  const base = await tmpDir(t, 'relink-watch-shared-');
  const dir = path.join(base, 'release');
  await mkdir(dir);
  const web = path.join(dir, 'web.conf');
  const api = path.join(dir, 'api.conf');
  await writeFile(web, conf('web.0'));
  await writeFile(api, conf('api.0'));
  const w = await watched(t, web);
  const a = await watched(t, api);
  await finalWins(w.c, conf('web.0'), 'web: initial read');
  await finalWins(a.c, conf('api.0'), 'api: initial read');
  for (let i = 1; i <= 3; i++) {
    await rmRf(dir);
    await mkdir(dir);
    await writeFile(web, conf(`web.${i}`));
    await finalWins(w.c, conf(`web.${i}`), `web: write in the recreated folder (${i})`);
    await writeFile(api, conf(`api.${i}`));
    await finalWins(a.c, conf(`api.${i}`), `api: write in the recreated folder (${i})`);
  }
  assert.deepEqual(w.c.folders, lostAndBack(dir, 3));
  assert.deepEqual(a.c.folders, lostAndBack(dir, 3));
});

test('check() re-arms on a folder whose ancestor was renamed away and rebuilt, which no inotify event tells', async (t) => {
  const base = await tmpDir(t, 'relink-watch-ancestor-');
  const dir = path.join(base, 'srv', 'deploy');
  const file = path.join(dir, 'current.conf');
  await mkdir(dir, { recursive: true });
  await writeFile(file, conf('ancestor.0'));
  const { watcher, c } = await watched(t, file);
  await finalWins(c, conf('ancestor.0'), 'initial read');
  // A reinstall: the old tree kept aside, a new one made (the folder watched moved along with srv).
  await rename(path.join(base, 'srv'), path.join(base, 'srv.old'));
  await mkdir(dir, { recursive: true });
  await writeFile(file, conf('ancestor.1'));
  await watcher.check();
  await finalWins(c, conf('ancestor.1'), 'file in the rebuilt tree, after check()');
  await writeFile(file, conf('ancestor.2'));
  await finalWins(c, conf('ancestor.2'), 'edit in the rebuilt tree');
  assert.deepEqual(c.folders, lostAndBack(dir));
});

function activeTimers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}
