/**
 * 5. The journal at 200,000 entries (issue 9, item 17): the peak memory
 * (VmHWM) and the wall time of each command that reads it, for relink
 * before issue 9 (one history.jsonl of every app, read whole by every
 * reader, re-read every 50 ms by `--wait`) and relink now (a journal per
 * app, read from its end, or only what was appended since `--wait` wrote
 * current.conf), on the same 200,000 entries, alternating, in one run.
 *
 * The agent's part in `deploy --wait` / `rollback --wait` is played by this
 * process: both versions' agent.json name it (a live PID with its start
 * time is all the CLI checks), and it answers each write of current.conf
 * with a `deployed` entry in the journal, VERDICT_MS later, as a real agent
 * would after verifying. So the figures are the CLI's own: a real agent
 * would also need a real app, and its own memory is section 3's.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { appendFile, mkdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { readProc } from '../src/proc.js';
import { shebangFlags } from './lib/agent.js';
import { buildAgentAt } from './lib/build.js';
import { pick, type Context } from './lib/context.js';
import { sleep } from './lib/procs.js';
import { summarize, type Summary } from './lib/stats.js';

/** relink before issue 9: the last commit before the per-app journal. */
export const BEFORE_COMMIT = '235fbfb';
/** What the issue measured at 200,000 entries (88 MB) with that version. */
export const ISSUE_FIGURES = { releasesMb: 634, rollbackWaitMb: 919, bytes: 88_000_000 } as const;

const ENTRIES = 200_000;
/** The agent's delay between the write of current.conf and its verdict: a few of the waiter's 50 ms polls. */
const VERDICT_MS = 300;
/** The new layout keeps all 200,000 entries, as with `history.maxBytes` at 32 MiB: 3 files (the default, 4 MiB x 3, would keep about 27,000). */
const SPLIT_BYTES = 32 * 1024 * 1024;
/** Releases still on disk: the newest deployed ones, and one upload never deployed (so releases and prune read the whole journal). */
const ON_DISK = 20;

export type Version = 'before' | 'now';
/** `--version` reads nothing: the runtime and the CLI's start-up, for scale. */
export const COMMANDS = ['--version', 'history --limit 20', 'releases', 'prune --dry-run', 'rollback --to R --wait', 'deploy R --wait'] as const;
export type JournalCommand = (typeof COMMANDS)[number];

export interface JournalRow {
  readonly command: JournalCommand;
  readonly version: Version;
  /** Peak resident memory of the CLI process (VmHWM), MB. */
  readonly peakMb: Summary;
  /** From spawn to exit, including node's start-up, ms. */
  readonly ms: Summary;
  /** Exit codes seen (0 expected). */
  readonly codes: number[];
  /** First lines of stderr of a run that did not exit 0. */
  readonly errors: string[];
}

export interface JournalResult {
  readonly entries: number;
  /** Size of the one file before; of the 3 files now (the same entries). */
  readonly bytes: number;
  readonly files: { readonly before: number; readonly now: number };
  readonly runs: number;
  readonly verdictMs: number;
  readonly beforeCommit: string;
  readonly rows: JournalRow[];
}

export async function runJournal(ctx: Context): Promise<JournalResult> {
  ctx.log(`  journal: building relink at ${BEFORE_COMMIT} (before issue 9)`);
  const before = await buildAgentAt(ctx.j, BEFORE_COMMIT);
  const mains: Record<Version, string> = { before: before.main, now: ctx.agentMain };
  // Short paths: the entries come out at about the issue's 440 bytes each.
  const dir = path.join(ctx.root, 'j');
  const rel = path.join(dir, 'web', 'r');
  await mkdir(rel, { recursive: true });
  const releases = Math.ceil(ENTRIES / 10);
  const relName = (r: number): string => `${r}.0`;
  for (let r = releases - ON_DISK + 1; r <= releases; r++) await addRelease(rel, relName(r));
  await addRelease(rel, 'upload');
  const arrived = Date.now();
  await symlink(path.join(rel, `app.${relName(releases)}`), path.join(dir, 'web', 'app.bin'));
  await symlink(path.join(rel, `cfg.${relName(releases)}`), path.join(dir, 'web', 'app.cfg'));
  await writeFile(path.join(rel, 'current.conf'), currentText(relName(releases)));

  const stateDirs: Record<Version, string> = { before: path.join(dir, 'state-before'), now: path.join(dir, 'state-now') };
  const configs: Record<Version, string> = { before: path.join(dir, 'config-before.json'), now: path.join(dir, 'config-now.json') };
  const journals: Record<Version, string> = { before: path.join(stateDirs.before, 'history.jsonl'), now: path.join(stateDirs.now, 'apps', 'web', 'history.jsonl') };
  for (const v of ['before', 'now'] as const) {
    await mkdir(path.join(stateDirs[v], 'apps', 'web'), { recursive: true });
    await writeFile(configs[v], JSON.stringify({ stateDir: stateDirs[v], logLevel: 'silent', apps: [{ name: 'web', dir: path.join(dir, 'web'), releasesDir: 'r', allowRoot: true }] }));
  }
  ctx.log(`  journal: writing ${ENTRIES.toLocaleString('en')} entries`);
  const bytes = await writeJournal(journals.before, rel, releases, relName, arrived);
  const files = await splitInto(journals.before, journals.now);
  const state = JSON.stringify({
    app: 'web', state: 'running', pid: null, pidStart: null, since: null, bin: path.join(rel, `app.${relName(releases)}`), cfg: path.join(rel, `cfg.${relName(releases)}`),
    lastDeploy: null, lastGood: { bin: path.join(rel, `app.${relName(releases)}`), cfg: path.join(rel, `cfg.${relName(releases)}`), text: currentText(relName(releases)) }, restarts: 0, updatedAt: new Date().toISOString(),
  });
  await writeFile(path.join(stateDirs.before, 'apps', 'web.json'), state);
  await writeFile(path.join(stateDirs.now, 'apps', 'web', 'state.json'), state);
  const me = await readProc(process.pid);
  for (const v of ['before', 'now'] as const) {
    await writeFile(path.join(stateDirs[v], 'agent.json'), JSON.stringify({ pid: process.pid, startTime: me?.startTime ?? 0, configFile: configs[v], startedAt: new Date().toISOString(), version: 'bench stub' }));
  }
  const peakScript = path.join(dir, 'peak.mjs');
  await writeFile(peakScript, PEAK_SCRIPT);

  const stub = new StubAgent(path.join(rel, 'current.conf'));
  const stubRun = stub.run();
  const runs = pick(ctx, 5, 1);
  const samples = new Map<string, { peak: number[]; ms: number[]; codes: number[]; errors: string[] }>();
  try {
    for (let i = 0; i < runs; i++) {
      for (const command of COMMANDS) {
        // Alternate which version goes first, so neither always runs on a warmer page cache.
        const order: Version[] = i % 2 === 0 ? ['before', 'now'] : ['now', 'before'];
        for (const v of order) {
          const args = argsFor(command, configs[v], relName(releases - 1));
          stub.journal = journals[v];
          const peakFile = path.join(dir, `peak-${v}`);
          const r = await ctx.j.run(process.execPath, [...shebangFlags(mains[v]), '--import', peakScript, mains[v], ...args],
            { env: { RELINK_BENCH_PEAK_FILE: peakFile }, timeoutMs: 300_000 });
          const key = `${command}|${v}`;
          const s = samples.get(key) ?? { peak: [], ms: [], codes: [], errors: [] };
          samples.set(key, s);
          s.codes.push(r.code ?? -1);
          if (r.code !== 0) s.errors.push((r.stderr || r.stdout).trim().split('\n').slice(0, 2).join(' / '));
          s.ms.push(r.ms);
          s.peak.push(Number(await readFile(peakFile, 'utf8').catch(() => 'NaN')) / 1024);
          ctx.log(`    ${v.padEnd(6)} ${command.padEnd(24)} peak ${(s.peak.at(-1) ?? NaN).toFixed(0).padStart(4)} MB, ${r.ms.toFixed(0).padStart(5)} ms, exit ${r.code}`);
        }
      }
    }
  } finally {
    stub.stop();
    await stubRun;
  }
  const rows: JournalRow[] = [];
  for (const command of COMMANDS) {
    for (const v of ['before', 'now'] as const) {
      const s = samples.get(`${command}|${v}`)!;
      rows.push({ command, version: v, peakMb: summarize(s.peak), ms: summarize(s.ms), codes: s.codes, errors: [...new Set(s.errors)] });
    }
  }
  return { entries: ENTRIES, bytes, files: { before: 1, now: files }, runs, verdictMs: VERDICT_MS, beforeCommit: BEFORE_COMMIT, rows };
}

function argsFor(command: JournalCommand, config: string, previous: string): string[] {
  const base = ['--config', config, '--app', 'web'];
  switch (command) {
    case '--version': return ['--version'];
    case 'history --limit 20': return ['history', ...base, '--limit', '20'];
    case 'releases': return ['releases', ...base];
    case 'prune --dry-run': return ['prune', ...base, '--keep', '1', '--dry-run'];
    case 'rollback --to R --wait': return ['rollback', ...base, '--to', previous, '--wait', '--timeout', '120'];
    case 'deploy R --wait': return ['deploy', ...base, 'upload', '--wait', '--timeout', '120'];
  }
}

/** Written into the CLI's process by --import: its VmHWM, at exit, into $RELINK_BENCH_PEAK_FILE (kB). */
const PEAK_SCRIPT = `import { readFileSync, writeFileSync } from 'node:fs';
process.on('exit', () => {
  const m = /VmHWM:\\s+(\\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  if (m && process.env.RELINK_BENCH_PEAK_FILE) writeFileSync(process.env.RELINK_BENCH_PEAK_FILE, m[1]);
});
`;

async function addRelease(rel: string, r: string): Promise<void> {
  await writeFile(path.join(rel, `app.${r}`), '#!/bin/sh\nexec sleep 1000\n', { mode: 0o755 });
  await writeFile(path.join(rel, `cfg.${r}`), `release=${r}\n`);
}

function currentText(r: string): string {
  return `${JSON.stringify({ 'bin.file': `app.${r}`, 'cfg.file': `cfg.${r}` })}\n`;
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/**
 * 200,000 entries as the agent writes them, oldest first: ten attempts per
 * release (deployed, now and then a refusal with its reason, or a rollback
 * with the rejected current.conf), about 440 bytes each on average (the
 * issue's 88 MB). The attempts of the releases still on disk come after
 * they `arrived`, as they would; the others a minute apart before that.
 */
async function writeJournal(file: string, rel: string, releases: number, relName: (r: number) => string, arrived: number): Promise<number> {
  const out = createWriteStream(file);
  const firstOnDisk = (releases - ON_DISK) * 10;
  const timeOf = (i: number): number => (i < firstOnDisk ? arrived - (firstOnDisk - i) * 60_000 : arrived + 1_000 + (i - firstOnDisk) * 10);
  let bytes = 0;
  let chunk = '';
  for (let i = 0; i < ENTRIES; i++) {
    const r = Math.floor(i / 10) + 1;
    const kind = i % 10;
    const to = { bin: path.join(rel, `app.${relName(r)}`), cfg: path.join(rel, `cfg.${relName(r)}`) };
    const prev = { bin: path.join(rel, `app.${relName(Math.max(1, r - 1))}`), cfg: path.join(rel, `cfg.${relName(Math.max(1, r - 1))}`) };
    const text = currentText(relName(r));
    const e = {
      time: new Date(timeOf(i)).toISOString(), app: 'web',
      outcome: kind === 3 ? 'refused' : kind === 6 ? 'rolled_back' : 'deployed',
      action: kind === 3 ? 'none' : 'signal', from: prev, to: kind === 3 ? { bin: null, cfg: null } : to,
      reason: kind === 3 ? `${path.join(rel, 'current.conf')}: "bin.file": ${to.bin} is not executable (mode 0644)`
        : kind === 6 ? `the app exited 312 ms after SIGHUP, during health.settleMs (exit code 1); see ${path.join(rel, '..', 'app.log')}` : null,
      code: kind === 3 ? 'RELEASE_NOT_EXECUTABLE' : kind === 6 ? 'APP_EXITED' : null,
      pidBefore: 4000 + i, pidAfter: kind === 3 ? 4000 + i : 4001 + i, durationMs: 900 + (i % 300), currentHash: sha(`${text}${i}`), trigger: 'watch:change',
      ...(kind === 6 ? { rolledBackTo: prev, rejected: text } : {}),
    };
    chunk += `${JSON.stringify(e)}\n`;
    if (chunk.length > 1 << 20) {
      bytes += Buffer.byteLength(chunk);
      await write(out, chunk);
      chunk = '';
    }
  }
  bytes += Buffer.byteLength(chunk);
  await write(out, chunk);
  await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
  return bytes;
}

function write(out: WriteStream, s: string): Promise<void> {
  return new Promise((resolve, reject) => out.write(s, (err) => (err ? reject(err) : resolve())));
}

/** The same lines as the per-app journal: history.jsonl (newest), .1, .2, at most SPLIT_BYTES each, split at line ends. */
async function splitInto(from: string, to: string): Promise<number> {
  const size = (await stat(from)).size;
  const cuts: number[] = [size];
  const text = await readFile(from);
  while (cuts[cuts.length - 1]! > 0) {
    const end = cuts[cuts.length - 1]!;
    const start = end - SPLIT_BYTES <= 0 ? 0 : text.indexOf(0x0a, end - SPLIT_BYTES) + 1;
    cuts.push(start);
  }
  // cuts: [size, start of newest, start of next, ..., 0]
  let files = 0;
  for (let k = 0; k + 1 < cuts.length; k++) {
    const target = k === 0 ? to : `${to}.${k}`;
    await pipeline(createReadStream(from, { start: cuts[k + 1]!, end: cuts[k]! - 1 }), createWriteStream(target));
    files++;
  }
  return files;
}

/** The agent's part: each write of current.conf (a new inode or mtime) gets a `deployed` entry VERDICT_MS later. */
class StubAgent {
  journal = '';
  #stopped = false;
  readonly #current: string;

  constructor(current: string) {
    this.#current = current;
  }

  stop(): void {
    this.#stopped = true;
  }

  async run(): Promise<void> {
    let seen = await this.#id();
    while (!this.#stopped) {
      await sleep(10);
      const now = await this.#id();
      if (now === seen) continue;
      seen = now;
      const text = await readFile(this.#current, 'utf8');
      await sleep(VERDICT_MS);
      const named = JSON.parse(text) as Record<string, string>;
      const rel = path.dirname(this.#current);
      const to = { bin: path.join(rel, named['bin.file']!), cfg: path.join(rel, named['cfg.file']!) };
      await appendFile(this.journal, `${JSON.stringify({
        time: new Date().toISOString(), app: 'web', outcome: 'deployed', action: 'signal', from: to, to, reason: null, code: null,
        pidBefore: 1, pidAfter: 2, durationMs: VERDICT_MS, currentHash: sha(text), trigger: 'watch:change',
      })}\n`);
    }
  }

  async #id(): Promise<string> {
    const s = await stat(this.#current).catch(() => undefined);
    return s === undefined ? '' : `${s.ino}:${s.mtimeMs}`;
  }
}
