/**
 * 7. What the metrics and the status page cost a deploy (issue 13, item 4):
 * two agents side by side, each on a stamp app of its own (section 1's:
 * it reloads in place, and stamps CLOCK_MONOTONIC in its SIGHUP handler),
 * one without "metrics" and one with a listener and a textfile while a
 * scraper fetches /metrics every second and the page every 5 s. Their
 * deploys alternate, one at a time (off, on, off, on ...), so both see the
 * same machine at the same moments; for each, the reaction (the write of
 * current.conf to the app's SIGHUP) and the verdict (the write to the
 * agent's "deployed" log line). Also each agent's idle cost before its
 * deploys (RSS, CPU, wake-ups), not scraped, and the one with metrics again
 * while it is scraped.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { freePort } from '../src/demo/layout.js';
import { AgentProcess, appBase, currentText, makeLayout, writeAgentConfig, type AppLayout } from './lib/agent.js';
import { buildStamp } from './lib/build.js';
import { pick, type Context } from './lib/context.js';
import { catches, killUnder, measureIdle, processesUnder, sleep, waitFor, type Idle } from './lib/procs.js';
import { summarize, type Summary } from './lib/stats.js';
import { readStamps, waitDeployed, writeNow } from './reaction.js';

export interface MetricsSide {
  readonly label: 'off' | 'on';
  /** Write to SIGHUP, ms. */
  readonly reaction: Summary;
  /** Write to the "deployed" log line, ms. */
  readonly verdict: Summary;
  /** Deploys with no signal or no verdict in time. */
  readonly missing: number;
  readonly idle: Idle;
}

export interface MetricsResult {
  readonly off: MetricsSide;
  readonly on: MetricsSide;
  /** The agent with metrics, idle while scraped (/metrics every second, the page every 5 s). */
  readonly scraped: Idle;
  /** Scrapes of /metrics and of the page made during the run, and how many failed. */
  readonly scrapes: { readonly metrics: number; readonly pages: number; readonly failed: number };
  readonly spacingMs: number;
}

const SPACING_MS = 250;

interface Side {
  readonly label: 'off' | 'on';
  readonly app: AppLayout;
  readonly agent: AgentProcess;
  readonly stamps: string;
  signals: number;
  readonly reaction: number[];
  readonly verdict: number[];
  missing: number;
}

export async function runMetrics(ctx: Context): Promise<MetricsResult> {
  const stamp = await buildStamp(ctx.j);
  const port = await freePort();
  const dir = path.join(ctx.root, 'metrics');
  await mkdir(path.join(dir, 'textfile'), { recursive: true, mode: 0o755 });
  const sides: Side[] = [];
  let scraper: Scraper | undefined;
  try {
    for (const label of ['off', 'on'] as const) {
      const stamps = path.join(dir, label, 'stamps');
      const app = await makeLayout(path.join(dir, label, 'stamp'), 'stamp', 0, stamp, { '1.0': `stamp=${stamps}\n`, '2.0': `stamp=${stamps}\n` });
      await writeFile(app.currentFile, currentText('1.0'));
      const config = await writeAgentConfig(path.join(dir, label, 'config.json'), {
        stateDir: path.join(dir, label, 'state'),
        ...(label === 'on' ? { metrics: { listen: `127.0.0.1:${port}`, textfile: path.join(dir, 'textfile', 'relink.prom') } } : {}),
        apps: [{ ...appBase(), name: 'stamp', dir: app.dir, reload: { strategy: 'inplace' }, health: { settleMs: 0 } }],
      });
      const agent = new AgentProcess(ctx.j, ctx.agentMain, config);
      sides.push({ label, app, agent, stamps, signals: 0, reaction: [], verdict: [], missing: 0 });
      const first = await agent.outcome(1);
      if (first.outcome !== 'deployed') throw new Error(`${label}: the stamp app did not start: ${first.reason ?? first.msg}`);
      await waitFor(`${label}: the stamp app to catch SIGHUP`, async () => {
        const [pid] = await processesUnder(app.releasesDir);
        return pid !== undefined && (await catches(pid, 'SIGHUP'));
      }, 5_000);
    }
    await sleep(pick(ctx, 3_000, 500));
    const idle = new Map<string, Idle>();
    for (const s of sides) idle.set(s.label, await measureIdle(s.agent.pid, pick(ctx, 10, 2)));
    scraper = new Scraper(port);
    await waitFor('the metrics listener', () => scraper!.metrics > 0, 10_000);
    const scraped = await measureIdle(sides[1]!.agent.pid, pick(ctx, 10, 2));

    const rounds = pick(ctx, 200, 15);
    ctx.log(`  metrics: ${rounds} deploys each, off and on alternating, ${SPACING_MS} ms apart; a scrape of /metrics every 1 s and of the page every 5 s`);
    for (let k = 0; k < rounds; k++) {
      for (const s of sides) {
        const r = k % 2 === 0 ? '2.0' : '1.0';
        const seen = s.agent.outcomes.length;
        const t0 = writeNow(s.app, r, k % 4 < 2 ? 'rename' : 'inplace');
        const deployed = await waitDeployed(s.agent, seen, 10_000);
        const lines = deployed.line === undefined ? readStamps(s.stamps) : await waitFor('the SIGHUP stamp', () => {
          const l = readStamps(s.stamps);
          return l.length > s.signals ? l : undefined;
        }, 5_000, 2).catch(() => readStamps(s.stamps));
        if (deployed.line === undefined || lines.length <= s.signals) {
          s.missing += 1;
          s.signals = lines.length;
          continue;
        }
        s.reaction.push(lines[s.signals]! - t0);
        s.verdict.push(deployed.line.receivedAt - t0);
        s.signals = lines.length;
        await sleep(SPACING_MS);
      }
    }
    const side = (s: Side): MetricsSide => ({ label: s.label, reaction: summarize(s.reaction), verdict: summarize(s.verdict), missing: s.missing, idle: idle.get(s.label)! });
    const scrapes = scraper.stop();
    return { off: side(sides[0]!), on: side(sides[1]!), scraped, scrapes, spacingMs: SPACING_MS };
  } finally {
    scraper?.stop();
    for (const s of sides) {
      await s.agent.stop();
      await killUnder(s.app.releasesDir);
    }
  }
}

/** Fetches /metrics every second and / every fifth, as Prometheus and a person with the page open would (harder than either). */
class Scraper {
  metrics = 0;
  pages = 0;
  failed = 0;
  readonly #timer: NodeJS.Timeout;
  #n = 0;

  constructor(port: number) {
    this.#timer = setInterval(() => {
      const page = this.#n++ % 5 === 4;
      http.get({ host: '127.0.0.1', port, path: page ? '/' : '/metrics', agent: false }, (res) => {
        res.resume();
        res.on('end', () => {
          if (res.statusCode !== 200) this.failed += 1;
          else if (page) this.pages += 1;
          else this.metrics += 1;
        });
      }).on('error', () => { this.failed += 1; }).setTimeout(5_000);
    }, 1_000);
  }

  stop(): { metrics: number; pages: number; failed: number } {
    clearInterval(this.#timer);
    return { metrics: this.metrics, pages: this.pages, failed: this.failed };
  }
}
