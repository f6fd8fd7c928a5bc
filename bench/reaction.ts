/**
 * 1. Deploy reaction time: from the final write of current.conf to the
 * app's process receiving the signal, for a rename (`mv`, what `relink
 * deploy` does) and an in-place write (`>`, `sed -i` style truncate+write),
 * interleaved, under three watcher settings. Also the footprint of the same
 * agent process before and after all of its deploys, and the floor: what the
 * kernel and Node take for the pieces the agent cannot avoid.
 *
 * The time origin is process.hrtime (CLOCK_MONOTONIC) read just before the
 * rename()/write() system call; the end is CLOCK_MONOTONIC read inside the
 * stamp app's SIGHUP handler (bench/apps/stamp.c). Same clock, same machine.
 */
import { readFileSync, renameSync, watch, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import psList from 'ps-list';
import { writeFileAtomic } from '../src/atomicWrite.js';
import { AgentProcess, appBase, currentText, makeLayout, shebangFlags, writeAgentConfig, type AppLayout } from './lib/agent.js';
import { buildStamp } from './lib/build.js';
import { pick, type Context } from './lib/context.js';
import { catches, kill, killUnder, measureIdle, nowMs, processesUnder, sampleProc, sleep, waitFor, type Idle } from './lib/procs.js';
import { summarize, type Summary } from './lib/stats.js';

export type WriteKind = 'rename' | 'inplace';

export interface ReactionVariant {
  readonly label: string;
  /** How the deploys were spaced: "spaced" (gapMs after each verdict) or "back-to-back". */
  readonly spacing: 'spaced' | 'back-to-back';
  readonly gapMs: number;
  readonly stabilityMs: number;
  readonly pollMs: number;
  readonly write: WriteKind;
  /** Reaction times in ms, one per deploy that was signalled. */
  readonly samples: number[];
  readonly summary: Summary;
  /** Edit to the agent's "deployed" log line, ms. */
  readonly verdict: Summary;
  /** Deploys that produced no signal within the deadline. */
  readonly missing: number;
  /** "refused" outcomes on the way (a half-written file read too early). */
  readonly refusals: number;
  /** What asked for each refused pass, and the refusal's code ("recheck CURRENT_SYNTAX"). */
  readonly refusalCauses: readonly string[];
  /** Deploys the agent's periodic re-check (reconcileMs) applied before the watcher reported. */
  readonly byRecheck: number;
  readonly nodeFlags: readonly string[];
  /** Run as installed (the flags of dist/cli/main.js's #! line), not with flags of the bench's choosing. */
  readonly installed: boolean;
}

export interface Soak {
  readonly label: string;
  readonly nodeFlags: readonly string[];
  readonly installed: boolean;
  readonly deploys: number;
  /** RSS sampled every tenth of the deploys, the last right after the last deploy. */
  readonly rss: ReadonlyArray<{ readonly deploys: number; readonly rssMb: number }>;
  /** Idle before the first deploy and after the last (the default-settings agent only). */
  readonly before?: Idle;
  readonly after?: Idle;
}

export interface ReactionResult {
  readonly variants: ReactionVariant[];
  /** The default-settings agent: idle before its deploys and after all of them, and its RSS along the way. */
  readonly soak: Soak | undefined;
  /** Every agent's RSS along its deploys. */
  readonly soaks: Soak[];
  readonly floor: {
    readonly watchEvent: Summary;
    readonly fsyncWrite: Summary;
    readonly psList: Summary;
    readonly signal: Summary;
    readonly getent: Summary;
  };
}

/** A run of deploys on one agent, spaced `gapMs` after each verdict. */
interface Phase {
  readonly spacing: 'spaced' | 'back-to-back';
  readonly gapMs: number;
  readonly deploys: number;
}

interface Setting {
  readonly label: string;
  readonly stabilityMs: number;
  readonly pollMs: number;
  readonly phases: readonly Phase[];
  /** Measure idle CPU and RSS before and after (the default-settings agent). */
  readonly soak: boolean;
  /** node's flags; by default those of dist/cli/main.js's #! line, as `relink agent` runs. */
  readonly nodeFlags?: readonly string[];
}

/**
 * Spaced deploys are what an operator does; back-to-back ones (the next
 * write 10 ms after the verdict) show what happens to a write that lands
 * while the watcher is still busy with the previous one. 250 ms is more than
 * the default quiet period plus the watcher's polled tail after a report.
 */
const SPACED_MS = 250;
const B2B_MS = 10;

export async function runReaction(ctx: Context): Promise<ReactionResult> {
  const stamp = await buildStamp(ctx.j);
  const settings: Setting[] = [
    {
      label: 'default (stabilityMs 50, pollMs 10)', stabilityMs: 50, pollMs: 10, soak: true,
      phases: [{ spacing: 'spaced', gapMs: SPACED_MS, deploys: pick(ctx, 300, 20) }, { spacing: 'back-to-back', gapMs: B2B_MS, deploys: pick(ctx, 700, 20) }],
    },
    // No quiet period at all: what the pass itself costs.
    { label: 'stabilityMs 0 (no quiet period)', stabilityMs: 0, pollMs: 1, soak: false, phases: [{ spacing: 'back-to-back', gapMs: B2B_MS, deploys: pick(ctx, 400, 20) }] },
    // Default settings under a plain `node dist/cli/main.js agent`, without the
    // #! line's V8 flag: what the flag does to RSS along the deploys.
    { label: 'default, plain `node` (no #! flags)', stabilityMs: 50, pollMs: 10, soak: false, nodeFlags: [], phases: [{ spacing: 'back-to-back', gapMs: B2B_MS, deploys: pick(ctx, 600, 20) }] },
  ];
  const variants: ReactionVariant[] = [];
  const soaks: Soak[] = [];
  for (const [i, s] of settings.entries()) {
    ctx.log(`  reaction: ${s.label}: ${s.phases.map((ph) => `${ph.deploys} ${ph.spacing}`).join(', ')} (rename and in-place, interleaved)`);
    const r = await oneAgent(ctx, stamp, s, i);
    variants.push(...r.variants);
    soaks.push(r.soak);
  }
  ctx.log('  reaction: the floor (watch event, fsync, ps-list, signal delivery, getent)');
  const floor = await measureFloor(ctx, stamp);
  return { variants, soak: soaks.find((x) => x.before !== undefined), soaks, floor };
}

async function oneAgent(ctx: Context, stamp: string, s: Setting, i: number): Promise<{ variants: ReactionVariant[]; soak: Soak }> {
  const dir = path.join(ctx.root, `reaction-${i}`);
  const stamps = path.join(dir, 'stamps');
  const app = await makeLayout(path.join(dir, 'stamp'), 'stamp', 0, stamp, { '1.0': `stamp=${stamps}\n`, '2.0': `stamp=${stamps}\n` });
  await writeFile(app.currentFile, currentText('1.0'));
  const config = await writeAgentConfig(path.join(dir, 'config.json'), {
    stateDir: path.join(dir, 'state'),
    watch: { stabilityMs: s.stabilityMs, pollMs: s.pollMs },
    apps: [{
      ...appBase(),
      name: 'stamp',
      dir: app.dir,
      // The stamp app keeps its PID on SIGHUP (like nginx), so the agent's
      // verdict is immediate and the next deploy is not held up by a handoff.
      reload: { strategy: 'inplace' },
      health: { settleMs: 0 },
    }],
  });
  const installed = s.nodeFlags === undefined;
  const nodeFlags = s.nodeFlags ?? shebangFlags(ctx.agentMain);
  const agent = new AgentProcess(ctx.j, ctx.agentMain, config, nodeFlags);
  try {
    const first = await agent.outcome(1);
    if (first.outcome !== 'deployed') throw new Error(`stamp app did not start: ${first.reason ?? first.msg}`);
    // A SIGHUP before the handler is installed would kill it (health.settleMs
    // covers this in production; here the app is simply asked).
    await waitFor('the stamp app to catch SIGHUP', async () => {
      const [pid] = await processesUnder(app.releasesDir);
      return pid !== undefined && (await catches(pid, 'SIGHUP'));
    }, 5_000);
    let before: Idle | undefined;
    if (s.soak) {
      await sleep(pick(ctx, 4_000, 500));
      before = await measureIdle(agent.pid, pick(ctx, 8, 2));
    }
    type Slot = { samples: number[]; verdicts: number[]; missing: number; refusals: string[]; byRecheck: number };
    const slots = new Map<string, Slot>();
    const slot = (ph: Phase, write: WriteKind): Slot => {
      const key = `${ph.spacing}:${write}`;
      let v = slots.get(key);
      if (v === undefined) slots.set(key, (v = { samples: [], verdicts: [], missing: 0, refusals: [], byRecheck: 0 }));
      return v;
    };
    let signals = 0;
    const total = s.phases.reduce((a, ph) => a + ph.deploys, 0);
    const rss: Array<{ deploys: number; rssMb: number }> = [];
    const every = Math.max(1, Math.round(total / 10));
    let k = 0;
    for (const ph of s.phases) {
      for (let n = 0; n < ph.deploys; n++, k++) {
        if (k % every === 0) rss.push({ deploys: k, rssMb: (await sampleProc(agent.pid)).rssKb / 1024 });
        const write: WriteKind = k % 2 === 0 ? 'rename' : 'inplace';
        const r = k % 2 === 0 ? '2.0' : '1.0';
        const seen = agent.outcomes.length;
        const t0 = writeNow(app, r, write);
        const deployed = await waitDeployed(agent, seen, 10_000);
        const into = slot(ph, write);
        into.refusals.push(...deployed.refusals);
        // kill() only makes the signal pending: on a busy machine the app may
        // run its handler after the agent has already logged its verdict.
        const lines = deployed.line === undefined ? readStamps(stamps) : await waitFor('the SIGHUP stamp', () => {
          const l = readStamps(stamps);
          return l.length > signals ? l : undefined;
        }, 5_000, 2).catch(() => readStamps(stamps));
        if (deployed.line === undefined || lines.length <= signals) {
          into.missing += 1;
          signals = lines.length;
          continue;
        }
        if (deployed.line.trigger === 'recheck') into.byRecheck += 1;
        into.samples.push(lines[signals]! - t0);
        into.verdicts.push(deployed.line.receivedAt - t0);
        signals = lines.length;
        await sleep(ph.gapMs);
      }
    }
    rss.push({ deploys: total, rssMb: (await sampleProc(agent.pid)).rssKb / 1024 });
    let soak: Soak = { label: s.label, nodeFlags, installed, deploys: total, rss };
    if (s.soak && before !== undefined) {
      await sleep(pick(ctx, 4_000, 500));
      soak = { ...soak, before, after: await measureIdle(agent.pid, pick(ctx, 8, 2)) };
    }
    const variants = s.phases.flatMap((ph) => (['rename', 'inplace'] as const).map((write): ReactionVariant => {
      const v = slot(ph, write);
      return {
        label: s.label,
        spacing: ph.spacing,
        gapMs: ph.gapMs,
        stabilityMs: s.stabilityMs,
        pollMs: s.pollMs,
        write,
        samples: v.samples,
        summary: summarize(v.samples),
        verdict: summarize(v.verdicts),
        missing: v.missing,
        refusals: v.refusals.length,
        refusalCauses: v.refusals,
        byRecheck: v.byRecheck,
        nodeFlags,
        installed,
      };
    }));
    return { variants, soak };
  } finally {
    await agent.stop();
    // The agent leaves its apps running by design.
    await killUnder(app.releasesDir);
  }
}

/** Write current.conf now; returns the monotonic time taken just before the final system call. */
export function writeNow(app: AppLayout, r: string, kind: WriteKind): number {
  // The stamp app reloads in place: a release changes its config only (the agent refuses a new bin.file under "inplace").
  const text = currentText(r, '1.0');
  if (kind === 'rename') {
    const tmp = path.join(app.releasesDir, '.current.conf.bench');
    writeFileSync(tmp, text);
    const t0 = nowMs();
    renameSync(tmp, app.currentFile);
    return t0;
  }
  const t0 = nowMs();
  writeFileSync(app.currentFile, text);
  return t0;
}

/** The next "deployed" outcome after index `seen`, counting refusals met on the way. */
export async function waitDeployed(agent: AgentProcess, seen: number, timeoutMs: number): Promise<{ line: (typeof agent.outcomes)[number] | undefined; refusals: string[] }> {
  const deadline = nowMs() + timeoutMs;
  let n = seen;
  const refusals: string[] = [];
  while (nowMs() < deadline) {
    const line = await agent.outcome(n + 1, Math.max(1, deadline - nowMs())).catch(() => undefined);
    if (line === undefined) break;
    n += 1;
    if (line.outcome === 'deployed') return { line, refusals };
    if (line.outcome === 'refused') refusals.push(`${String(line.trigger)} ${line.code ?? ''}`.trim());
  }
  return { line: undefined, refusals };
}

export function readStamps(file: string): number[] {
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return text.split('\n').filter((l) => l !== '').map((l) => Number(BigInt(l)) / 1e6);
}

/** The pieces no agent can avoid, measured on their own. */
async function measureFloor(ctx: Context, stamp: string): Promise<ReactionResult['floor']> {
  const dir = path.join(ctx.root, 'floor');
  await mkdir(dir, { recursive: true });
  const n = pick(ctx, 200, 30);

  // inotify -> libuv -> a JS callback, for a rename into a watched folder.
  const watchEvent: number[] = [];
  let pending: ((t: number) => void) | undefined;
  const w = watch(dir, (_e, name) => {
    if (name === 'target' && pending !== undefined) pending(nowMs());
  });
  try {
    for (let k = 0; k < n; k++) {
      writeFileSync(path.join(dir, 'tmp'), String(k));
      const got = new Promise<number>((resolve) => { pending = resolve; });
      const t0 = nowMs();
      renameSync(path.join(dir, 'tmp'), path.join(dir, 'target'));
      const t1 = await Promise.race([got, sleep(1_000).then(() => Number.NaN)]);
      pending = undefined;
      if (Number.isFinite(t1)) watchEvent.push(t1 - t0);
      await sleep(5);
    }
  } finally {
    w.close();
  }

  // What the agent's state file costs when written before the signal: temp + fsync + rename.
  const fsyncWrite: number[] = [];
  for (let k = 0; k < Math.min(n, 100); k++) {
    const t0 = nowMs();
    await writeFileAtomic(path.join(dir, 'state.json'), `${JSON.stringify({ k, pad: 'x'.repeat(600) })}\n`);
    fsyncWrite.push(nowMs() - t0);
  }

  // A full process-table scan with ps-list: what finding the PID afresh would cost.
  const scans: number[] = [];
  for (let k = 0; k < pick(ctx, 30, 5); k++) {
    const t0 = nowMs();
    await psList();
    scans.push(nowMs() - t0);
  }

  // One account lookup in a child process, as src/user.ts does it (getent).
  const getent: number[] = [];
  for (let k = 0; k < pick(ctx, 30, 5); k++) {
    const r = await ctx.j.run('getent', ['passwd', '0'], { timeoutMs: 5_000 });
    if (r.code === 0) getent.push(r.ms);
  }

  // kill() to the handler's clock_gettime, with nothing else in between.
  const stamps = path.join(dir, 'stamps');
  await writeFile(path.join(dir, 'cfg'), `stamp=${stamps}\n`);
  const child = ctx.j.spawn(stamp, ['-c', path.join(dir, 'cfg')]);
  const signal: number[] = [];
  try {
    await waitFor('the stamp app to catch SIGHUP', () => catches(child.pid!, 'SIGHUP'), 5_000);
    for (let k = 0; k < n; k++) {
      const t0 = nowMs();
      kill(child.pid!, 'SIGHUP');
      const got = await waitFor('stamp', () => {
        const s = readStamps(stamps);
        return s.length > k ? s[k] : undefined;
      }, 2_000, 1);
      signal.push(got - t0);
      await sleep(5);
    }
  } finally {
    kill(child.pid!, 'SIGTERM');
  }
  return { watchEvent: summarize(watchEvent), fsyncWrite: summarize(fsyncWrite), psList: summarize(scans), signal: summarize(signal), getent: summarize(getent) };
}
