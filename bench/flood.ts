/**
 * 6. A writer loop against current.conf (issue 9, item 5): the app's user
 * writes a 46 KB current.conf the agent must refuse (2,000 unknown keys,
 * each write a little different, so each is read again) 300 times as fast
 * as it can, then a good one. The issue measured, with relink before issue
 * 9: +50 MB of journal, +234 MB of agent log, a full core, RSS 60 -> 97 MB.
 * Paced as the was (300 writes in 4.4 s).
 *
 * For relink before issue 9 (commit 235fbfb) and relink now, alternating, in
 * one run: what the loop adds to the journal and to the agent's log, the
 * agent's CPU time and peak memory over it, how long the loop takes (the
 * agent competes for the same two cores), and how long after the good write
 * the agent reports it deployed (is it still responsive).
 */
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buildDemoApp } from '../src/demo/build.js';
import { AgentProcess, appBase, currentText, makeLayout, writeAgentConfig, writeCurrent } from './lib/agent.js';
import { buildAgentAt } from './lib/build.js';
import { pick, type Context } from './lib/context.js';
import { freePort } from '../src/demo/layout.js';
import { killUnder, nowMs, sampleProc, sleep } from './lib/procs.js';
import { summarize, type Summary } from './lib/stats.js';
import { BEFORE_COMMIT, type Version } from './journal.js';

const WRITES = 300;
/** The writer: 300 writes in 4.4 s. Paced, so that each write lands on its own, not coalesced into the next. */
const EVERY_MS = 15;
const KEYS = 2000;
const CLK_TCK = 100;

export interface FloodRow {
  readonly version: Version;
  /** Bytes added to the journal (every history.jsonl* under the state folder). */
  readonly journalBytes: Summary;
  /** Bytes the agent printed to its log (stdout) during the loop and the good deploy. */
  readonly logBytes: Summary;
  /** Refusal lines in the log. */
  readonly refusalLines: Summary;
  /** Agent CPU time over the loop and the good deploy, ms. */
  readonly cpuMs: Summary;
  /** Agent RSS before the loop and its peak (VmHWM) after, MB. */
  readonly rssBeforeMb: Summary;
  readonly peakMb: Summary;
  /** Wall time of the 300 writes, ms. */
  readonly loopMs: Summary;
  /** From the good write (after the loop) to the agent's `deployed` log line, ms. */
  readonly goodDeployMs: Summary;
}

export interface FloodResult {
  readonly writes: number;
  readonly bytesPerWrite: number;
  readonly runs: number;
  readonly beforeCommit: string;
  readonly rows: FloodRow[];
}

async function journalBytes(stateDir: string): Promise<number> {
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.startsWith('history.jsonl')) total += (await stat(p)).size;
    }
  };
  await walk(stateDir);
  return total;
}

async function peakKb(pid: number): Promise<number> {
  return Number(/^VmHWM:\s+(\d+)/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN);
}

export async function runFlood(ctx: Context): Promise<FloodResult> {
  ctx.log(`  flood: building relink at ${BEFORE_COMMIT} (before issue 9)`);
  const before = await buildAgentAt(ctx.j, BEFORE_COMMIT);
  const mains: Record<Version, string> = { before: before.main, now: ctx.agentMain };
  const binary = await buildDemoApp();
  const keys = Array.from({ length: KEYS }, (_, i) => `"unknown.key.${String(i).padStart(4, '0')}": 1`).join(', ');
  const bad = (i: number): string => `{"bin.file": "app.2.0", "cfg.file": "cfg.2.0", ${keys}}${' '.repeat(i)}\n`;
  const runs = pick(ctx, 3, 1);
  const samples: Record<Version, Record<keyof Omit<FloodRow, 'version'>, number[]>> = {
    before: { journalBytes: [], logBytes: [], refusalLines: [], cpuMs: [], rssBeforeMb: [], peakMb: [], loopMs: [], goodDeployMs: [] },
    now: { journalBytes: [], logBytes: [], refusalLines: [], cpuMs: [], rssBeforeMb: [], peakMb: [], loopMs: [], goodDeployMs: [] },
  };
  for (let i = 0; i < runs; i++) {
    const order: Version[] = i % 2 === 0 ? ['before', 'now'] : ['now', 'before'];
    for (const v of order) {
      const dir = path.join(ctx.root, `flood-${v}-${i}`);
      const port = await freePort();
      const cfg = (r: string): string => `port=${port}\nmode=reexec\nmessage=flood ${r}\n`;
      const app = await makeLayout(path.join(dir, 'web'), 'web', port, binary, { '1.0': cfg('1.0'), '2.0': cfg('2.0') });
      await writeCurrent(app, '1.0');
      const stateDir = path.join(dir, 'state');
      const config = await writeAgentConfig(path.join(dir, 'config.json'), {
        stateDir, reconcileMs: 60_000, apps: [{ name: 'web', dir: app.dir, ...appBase(), health: { settleMs: 200 } }],
      });
      const agent = new AgentProcess(ctx.j, mains[v], config);
      try {
        await agent.outcome(1);
        const linesBefore = agent.lines.length;
        const journal0 = await journalBytes(stateDir);
        const a = await sampleProc(agent.pid);
        const t0 = nowMs();
        for (let w = 0; w < WRITES; w++) {
          await writeFile(app.currentFile, bad(w));
          const next = t0 + (w + 1) * EVERY_MS;
          if (next > nowMs()) await sleep(next - nowMs());
        }
        const loopMs = nowMs() - t0;
        const goodAt = nowMs();
        await writeFile(app.currentFile, currentText('2.0'));
        await agent.line('the good deploy', (l) => l.outcome === 'deployed' && String((l['to'] as { bin?: string } | undefined)?.bin ?? '').endsWith('app.2.0'), linesBefore, 120_000);
        const goodMs = nowMs() - goodAt;
        const b = await sampleProc(agent.pid);
        const logged = agent.lines.slice(linesBefore);
        const s = samples[v];
        s.journalBytes.push((await journalBytes(stateDir)) - journal0);
        s.logBytes.push(logged.reduce((n, l) => n + JSON.stringify(l).length + 1, 0));
        s.refusalLines.push(logged.filter((l) => l.outcome === 'refused').length);
        s.cpuMs.push(((b.cpuTicks - a.cpuTicks) * 1000) / CLK_TCK);
        s.rssBeforeMb.push(a.rssKb / 1024);
        s.peakMb.push((await peakKb(agent.pid)) / 1024);
        s.loopMs.push(loopMs);
        s.goodDeployMs.push(goodMs);
        ctx.log(`    ${v.padEnd(6)} journal +${(s.journalBytes.at(-1)! / 1e6).toFixed(2)} MB, log +${(s.logBytes.at(-1)! / 1e6).toFixed(2)} MB, ` +
          `cpu ${s.cpuMs.at(-1)!.toFixed(0)} ms, peak ${s.peakMb.at(-1)!.toFixed(0)} MB, good deploy after ${goodMs.toFixed(0)} ms`);
      } finally {
        await agent.stop();
        await killUnder(app.releasesDir);
      }
    }
  }
  const rows = (['before', 'now'] as const).map((version): FloodRow => {
    const s = samples[version];
    return {
      version,
      journalBytes: summarize(s.journalBytes), logBytes: summarize(s.logBytes), refusalLines: summarize(s.refusalLines), cpuMs: summarize(s.cpuMs),
      rssBeforeMb: summarize(s.rssBeforeMb), peakMb: summarize(s.peakMb), loopMs: summarize(s.loopMs), goodDeployMs: summarize(s.goodDeployMs),
    };
  });
  return { writes: WRITES, bytesPerWrite: bad(0).length, runs, beforeCommit: BEFORE_COMMIT, rows };
}
