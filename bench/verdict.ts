/**
 * 4. Time to a verdict: from the edit of current.conf to the agent's
 * outcome, for a healthy release ("deployed": handed over, settled, probe
 * passed) and for broken ones ("rolled_back": the old release serves again
 * and current.conf names it again). Broken in three ways, each caught by a
 * different rule, so each verdict is dominated by a different setting:
 * - dies: takes over, then exits 300 ms later       -> health.settleMs
 * - sick: takes over, /healthz answers 503 forever  -> health.deadlineMs
 * - crash: exits at once, never takes over           -> reload.timeoutMs
 * A prober runs throughout, so what a bad release costs the users is shown
 * beside how long it takes to be told.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buildDemoApp } from '../src/demo/build.js';
import { freePort } from '../src/demo/layout.js';
import { AgentProcess, appBase, currentText, makeLayout, writeAgentConfig, writeCurrent, type AppLayout } from './lib/agent.js';
import { pick, type Context } from './lib/context.js';
import { Prober, type ProbeResult } from './lib/load.js';
import { httpGet, killUnder, nowMs, sleep } from './lib/procs.js';
import { summarize, type Summary } from './lib/stats.js';

export type VerdictKind = 'healthy' | 'dies' | 'sick' | 'crash';

export interface VerdictRow {
  readonly kind: VerdictKind;
  readonly expected: 'deployed' | 'rolled_back';
  readonly ms: Summary;
  /** Runs whose outcome was not the expected one. */
  readonly unexpected: string[];
  /** Runs after which the good release was not the one answering. */
  readonly notServing: number;
  readonly probe: ProbeResult;
}

export interface VerdictResult {
  readonly rows: VerdictRow[];
  readonly settings: { readonly settleMs: number; readonly deadlineMs: number; readonly intervalMs: number; readonly reloadTimeoutMs: number; readonly stabilityMs: number };
  /** `relink deploy RELEASE --wait`, wall time including the CLI's own start-up (ms). */
  readonly cli: Summary;
}

const SETTINGS = { settleMs: 1_000, deadlineMs: 5_000, intervalMs: 100, reloadTimeoutMs: 5_000, stabilityMs: 50 };

const CFG_EXTRA: Record<string, string> = { dies: 'exit_after_ms=300\n', sick: 'unhealthy=1\n', crash: 'fail_start=1\n' };

export async function runVerdict(ctx: Context): Promise<VerdictResult> {
  const dir = path.join(ctx.root, 'verdict');
  const port = await freePort();
  const cfg = (r: string): string => `port=${port}\nmode=reexec\nmessage=verdict ${r}\n${CFG_EXTRA[r] ?? ''}`;
  const app = await makeLayout(path.join(dir, 'web'), 'web', port, await buildDemoApp(), {
    '1.0': cfg('1.0'), '2.0': cfg('2.0'), dies: cfg('dies'), sick: cfg('sick'), crash: cfg('crash'),
  });
  await writeFile(app.currentFile, currentText('1.0'));
  const config = await writeAgentConfig(path.join(dir, 'config.json'), {
    stateDir: path.join(dir, 'state'),
    apps: [{
      ...appBase(),
      name: 'web',
      dir: app.dir,
      reload: { timeoutMs: SETTINGS.reloadTimeoutMs },
      health: { url: `http://127.0.0.1:${port}/healthz`, settleMs: SETTINGS.settleMs, deadlineMs: SETTINGS.deadlineMs, intervalMs: SETTINGS.intervalMs },
    }],
  });
  const agent = new AgentProcess(ctx.j, ctx.agentMain, config);
  const rows: VerdictRow[] = [];
  let cli = summarize([]);
  try {
    const first = await agent.outcome(1, 30_000);
    if (first.outcome !== 'deployed') throw new Error(`the app did not start: ${first.reason ?? first.msg}`);
    let live = '1.0';
    const plan: Array<[VerdictKind, number]> = [['healthy', pick(ctx, 10, 2)], ['dies', pick(ctx, 5, 1)], ['sick', pick(ctx, 3, 1)], ['crash', pick(ctx, 3, 1)]];
    for (const [kind, runs] of plan) {
      ctx.log(`  verdict: ${kind}, ${runs} run${runs === 1 ? '' : 's'}`);
      const expected = kind === 'healthy' ? 'deployed' : 'rolled_back';
      const times: number[] = [];
      const unexpected: string[] = [];
      let notServing = 0;
      const prober = new Prober(port);
      for (let k = 0; k < runs; k++) {
        const target = kind === 'healthy' ? (live === '1.0' ? '2.0' : '1.0') : kind;
        const seen = agent.outcomes.length;
        const t0 = nowMs();
        await writeCurrent(app, target);
        const o = await agent.outcome(seen + 1, 60_000);
        times.push(o.receivedAt - t0);
        if (o.outcome !== expected) unexpected.push(`${o.outcome}: ${o.reason ?? ''}`.slice(0, 200));
        if (o.outcome === 'deployed') live = target;
        // Deployed: the new release answers. Rolled back: the old one does, and current.conf names it again.
        const good = o.outcome === 'deployed' ? target : live;
        const res = await httpGet(port, '/', 1_000);
        const conf = await readFile(app.currentFile, 'utf8');
        if (!('status' in res && res.body.includes(`"app.${good}"`)) || conf !== currentText(good)) notServing += 1;
        await sleep(200);
      }
      rows.push({ kind, expected, ms: summarize(times), unexpected, notServing, probe: await prober.stop() });
    }
    cli = await timeCli(ctx, app, config, agent, live, pick(ctx, 3, 1));
  } finally {
    await agent.stop();
    await killUnder(app.releasesDir);
  }
  return { rows, settings: SETTINGS, cli };
}

/** What a CI job sees: `relink deploy R --wait` from start to exit. */
async function timeCli(ctx: Context, app: AppLayout, config: string, agent: AgentProcess, live: string, runs: number): Promise<ReturnType<typeof summarize>> {
  ctx.log(`  verdict: relink deploy --wait, ${runs} run${runs === 1 ? '' : 's'}`);
  const times: number[] = [];
  let current = live;
  for (let k = 0; k < runs; k++) {
    const next = current === '1.0' ? '2.0' : '1.0';
    const seen = agent.outcomes.length;
    const r = await ctx.j.run(process.execPath, [ctx.agentMain, 'deploy', '--config', config, '--app', app.name, next, '--wait', '--timeout', '30'], { timeoutMs: 60_000 });
    if (r.code === 0) {
      times.push(r.ms);
      current = next;
    } else {
      ctx.log(`    relink deploy --wait exited ${r.code}: ${r.stderr.trim().slice(0, 200)}`);
    }
    await agent.outcome(seen + 1, 30_000).catch(() => undefined);
    await sleep(200);
  }
  return summarize(times);
}
