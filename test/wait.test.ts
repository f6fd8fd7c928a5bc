/**
 * `relink deploy --wait` / `rollback --wait` as real processes, with this
 * test process standing in for the agent (its agent.json names this
 * process): Ctrl-C and SIGTERM end the wait at once (issue 9, item 13), a
 * refusal names the release asked for (item 21), and a verdict found only
 * in the state file is taken (a repeated refusal is not journaled again).
 * Also: a command that does not handle the signal itself ends with 130/143.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { hashText } from '../src/current.js';
import { appendHistory, type HistoryEntry } from '../src/history.js';
import { claimAgent, releaseAgent, writeAppState } from '../src/state.js';
import { defer, RELINK, ROOT, tmpDir, waitFor } from './helpers.js';

const run = promisify(execFile);

interface Setup {
  readonly config: string;
  readonly stateDir: string;
  readonly rel: string;
  readonly current: string;
}

/** App "web" with releases 1.0 and 2.0, and this process as its stateDir's agent. */
async function setup(t: TestContext): Promise<Setup> {
  const root = await tmpDir(t);
  const rel = path.join(root, 'web', 'release');
  await mkdir(rel, { recursive: true });
  for (const r of ['1.0', '2.0']) {
    await writeFile(path.join(rel, `app.${r}`), '#!/bin/sh\nsleep 1000\n', { mode: 0o755 });
    await writeFile(path.join(rel, `cfg.${r}`), `release=${r}\n`);
  }
  const stateDir = path.join(root, 'state');
  const config = path.join(root, 'config.json');
  await writeFile(config, JSON.stringify({ stateDir, logLevel: 'silent', apps: [{ name: 'web', dir: path.join(root, 'web') }] }));
  await claimAgent(stateDir, config, 'test');
  defer(t, () => releaseAgent(stateDir));
  return { config, stateDir, rel, current: path.join(rel, 'current.conf') };
}

interface Cli {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout: string;
  stderr: string;
}

function cli(t: TestContext, args: readonly string[]): Cli {
  const child = spawn(RELINK[0]!, [...RELINK.slice(1), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const c: Cli = {
    child,
    exited: new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal }))),
    stdout: '',
    stderr: '',
  };
  child.stdout!.setEncoding('utf8').on('data', (s: string) => { c.stdout += s; });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { c.stderr += s; });
  defer(t, async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await c.exited;
  });
  return c;
}

/** Resolves with the exit status, or fails after `ms` (a liveness bound, not a timing assertion). */
async function exitOf(c: Cli, ms = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`still running ${ms} ms later; stderr: ${c.stderr}`)), ms); });
  try {
    return await Promise.race([c.exited, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** The current.conf text `relink deploy` writes for release `r`, once it has written it. */
async function written(s: Setup, r: string): Promise<string> {
  return waitFor(`current.conf to name app.${r}`, async () => {
    const text = await readFile(s.current, 'utf8').catch(() => '');
    return text.includes(`"app.${r}"`) ? text : undefined;
  });
}

function refusal(text: string, time = new Date(), reason = 'current.conf: "bin.file": must be executable'): HistoryEntry {
  return {
    time: time.toISOString(), app: 'web', outcome: 'refused', action: 'none', from: { bin: null, cfg: null }, to: { bin: null, cfg: null },
    reason, code: 'RELEASE_NOT_EXECUTABLE', pidBefore: null, pidAfter: null, durationMs: 3,
    currentHash: hashText(text), trigger: 'watch:change',
  };
}

for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
  test(`deploy --wait stops waiting at once on ${signal} (exit ${code}) and says the deploy goes on in the agent`, async (t) => {
    const s = await setup(t);
    const c = cli(t, ['deploy', '--config', s.config, '2.0', '--wait', '--timeout', '600']);
    await written(s, '2.0');
    // The CLI is in its wait loop once it has written current.conf; nothing answers it.
    c.child.kill(signal);
    assert.deepEqual(await exitOf(c), { code, signal: null });
    assert.equal(c.stderr, `web: stopped waiting (${signal}); the deploy of app.2.0 + cfg.2.0 goes on in the agent: follow it with relink status --app web or relink history --app web --limit 5\n`);
  });
}

test('rollback --wait --json stops waiting on SIGINT too', async (t) => {
  const s = await setup(t);
  const c = cli(t, ['rollback', '--config', s.config, '--to', '1.0', '--wait', '--json']);
  await written(s, '1.0');
  c.child.kill('SIGINT');
  assert.equal((await exitOf(c)).code, 130);
  assert.equal((JSON.parse(c.stdout) as { outcome: string }).outcome, 'interrupted');
});

test('a refused deploy --wait names the release that was asked for, not "? + ?"', async (t) => {
  const s = await setup(t);
  const c = cli(t, ['deploy', '--config', s.config, '2.0', '--wait', '--timeout', '60']);
  const text = await written(s, '2.0');
  await appendHistory(s.stateDir, refusal(text));
  assert.equal((await exitOf(c)).code, 1);
  assert.equal(c.stderr, 'web: app.2.0 + cfg.2.0 refused: current.conf: "bin.file": must be executable\n');
});

test('deploy --wait takes a verdict found only in the state file (a repeated refusal is not journaled again), but not an older one', async (t) => {
  const s = await setup(t);
  const state = (lastDeploy: HistoryEntry) => writeAppState(s.stateDir, {
    app: 'web', state: 'running', pid: null, pidStart: null, since: null, bin: null, cfg: null, lastDeploy, lastGood: null, restarts: 0, updatedAt: lastDeploy.time,
  });
  const text = `${JSON.stringify({ 'bin.file': 'app.2.0', 'cfg.file': 'cfg.2.0' })}\n`;
  // The same content refused an hour ago: not this request's verdict (taking it would end the wait with "stale").
  await state(refusal(text, new Date(Date.now() - 3_600_000), 'stale'));
  const c = cli(t, ['deploy', '--config', s.config, '2.0', '--wait', '--timeout', '60']);
  assert.equal(await written(s, '2.0'), text);
  await state(refusal(text, new Date(), 'fresh'));
  assert.equal((await exitOf(c)).code, 1);
  assert.equal(c.stderr, 'web: app.2.0 + cfg.2.0 refused: fresh\n');
});

test('validate blocked in a long preflight ends with 143 on SIGTERM and kills the preflight; a FIFO as the config is refused at once', async (t) => {
  const root = await tmpDir(t);
  const dir = path.join(root, 'web');
  const rel = path.join(dir, 'release');
  await mkdir(rel, { recursive: true });
  await writeFile(path.join(rel, 'app.1.0'), '#!/bin/sh\nsleep 1000\n', { mode: 0o755 });
  await writeFile(path.join(rel, 'cfg.1.0'), 'x\n');
  const marker = path.join(root, 'preflight.pid');
  const config = path.join(root, 'config.json');
  await writeFile(config, JSON.stringify({ stateDir: path.join(root, 'state'), apps: [{ name: 'web', dir, ...(process.getuid?.() === 0 ? { allowRoot: true } : {}),
    preflight: { command: ['/bin/sh', '-c', `echo $$ > ${marker}; exec sleep 300`] } }] }));
  await writeFile(path.join(rel, 'current.conf'), '{"bin.file": "app.1.0", "cfg.file": "cfg.1.0"}\n');
  const c = cli(t, ['validate', '--config', config]);
  const pid = Number(await waitFor('the preflight running', async () => (await readFile(marker, 'utf8').catch(() => '')).trim()));
  c.child.kill('SIGTERM');
  assert.deepEqual(await exitOf(c), { code: 143, signal: null });
  assert.match(c.stderr, /stopped \(SIGTERM\) during the preflight/);
  await waitFor('the preflight killed', async () => { try { process.kill(pid, 0); return false; } catch { return true; } });

  // Nothing a command reads blocks: a FIFO named as the config is refused, not waited on.
  const fifo = path.join(root, 'fifo.json');
  await run('mkfifo', [fifo]);
  const h = cli(t, ['history', '--config', fifo]);
  assert.deepEqual(await exitOf(h), { code: 1, signal: null });
  assert.match(h.stderr, /fifo\.json: must be a readable regular file \(found: a FIFO\)/);
});
