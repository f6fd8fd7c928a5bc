/**
 * `npm run bench`: relink measured side by side with the alternatives, on
 * this machine, in one run (issue 5). See BENCHMARKS.md for the figures and
 * bench/report.ts for how they are judged.
 *
 *   npm run bench                       everything; rewrites BENCHMARKS.md and bench/results/
 *   npm run bench -- --quick            a smoke run; writes to a temp folder
 *   npm run bench -- --only a,b         some of: reaction, downtime, footprint, verdict, journal, flood, metrics
 *   npm run bench -- --only strategies  section 2's rows of issue 11 alone (its apps: plain Python, gunicorn)
 *   npm run bench -- --out DIR          write the report there instead
 *   npm run bench -- --no-install       never apt-get or npm install; skip what is missing
 *
 * This is the bench's only entry point: the only file that reads argv and
 * exits. Not part of `npm test`.
 */
import { mkdir, mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { runDowntime, type DowntimeResult } from './downtime.js';
import { runFootprint, type FootprintResult } from './footprint.js';
import { runFlood, type FloodResult } from './flood.js';
import { runJournal, type JournalResult } from './journal.js';
import { STRATEGY_KINDS } from './lib/apps.js';
import { buildAgent } from './lib/build.js';
import type { Context } from './lib/context.js';
import { Janitor } from './lib/procs.js';
import { ensureTools, machine, ROOT } from './lib/tools.js';
import { charts } from './charts.js';
import { markdown, type Results } from './report.js';
import { runReaction, type ReactionResult } from './reaction.js';
import { runVerdict, type VerdictResult } from './verdict.js';
import { runMetrics, type MetricsResult } from './metrics.js';

// "strategies" is part of "downtime" (the same table): alone, it runs only issue 11's apps.
const SECTIONS = ['reaction', 'footprint', 'downtime', 'strategies', 'verdict', 'journal', 'flood', 'metrics'] as const;
type Section = (typeof SECTIONS)[number];

const USAGE = `Usage: npm run bench [-- --quick] [--only ${SECTIONS.join(',')}] [--out DIR] [--no-install]`;

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: process.argv.slice(2),
      options: { quick: { type: 'boolean' }, only: { type: 'string' }, out: { type: 'string' }, 'no-install': { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }).values;
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const only = args.only === undefined ? [...SECTIONS] : args.only.split(',').map((s) => s.trim());
  const unknown = only.filter((s) => !(SECTIONS as readonly string[]).includes(s));
  if (unknown.length > 0) {
    process.stderr.write(`unknown section(s): ${unknown.join(', ')}\n${USAGE}\n`);
    return 2;
  }
  const quick = args.quick === true;
  const complete = !quick && only.length === SECTIONS.length;
  if (process.platform !== 'linux') {
    process.stderr.write('the bench needs Linux (/proc, inotify)\n');
    return 1;
  }

  const started = performance.now();
  const log = (line: string): void => {
    process.stdout.write(`[${((performance.now() - started) / 1000).toFixed(0).padStart(4)} s] ${line}\n`);
  };
  const j = new Janitor();
  const root = await realpath(await mkdtemp(path.join(os.tmpdir(), 'relink-bench-')));
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    log(`${sig}: cleaning up`);
    void j.cleanup().finally(() => rm(root, { recursive: true, force: true })).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const errors: Record<string, string> = {};
  let reaction: ReactionResult | undefined;
  let downtime: DowntimeResult | undefined;
  let footprint: FootprintResult | undefined;
  let verdict: VerdictResult | undefined;
  let journal: JournalResult | undefined;
  let flood: FloodResult | undefined;
  let metrics: MetricsResult | undefined;
  let results: Results | undefined;
  try {
    log(`relink bench${quick ? ' (--quick)' : ''}: ${only.join(', ')}; temp folder ${root}`);
    const tools = await ensureTools(j, log, args['no-install'] !== true);
    for (const [t, why] of tools.missing) log(`  missing ${t}: ${why}`);
    const mach = await machine(j, root);
    log('building the agent (tsc) and the test apps');
    const build = await buildAgent(j);
    if (build.warnings) log(`  tsc reported problems in the working tree (the emitted JavaScript is used):\n${build.warnings.split('\n').slice(0, 10).join('\n')}`);
    const ctx: Context = { j, root, quick, tools, agentMain: build.main, log };

    const run = async <T>(name: Section, fn: () => Promise<T>): Promise<T | undefined> => {
      if (!only.includes(name)) return undefined;
      const t0 = performance.now();
      log(`${name}`);
      try {
        return await fn();
      } catch (err) {
        errors[name] = (err as Error).message.split('\n')[0] ?? String(err);
        log(`  ${name} failed: ${(err as Error).stack ?? String(err)}`);
        return undefined;
      } finally {
        log(`  ${name}: ${((performance.now() - t0) / 1000).toFixed(0)} s`);
      }
    };
    // Reaction first, while nothing else of ours runs; its agent also gives the 1,000-deploy soak.
    reaction = await run('reaction', () => runReaction(ctx));
    footprint = await run('footprint', () => runFootprint(ctx));
    downtime = only.includes('downtime') ? await run('downtime', () => runDowntime(ctx)) : await run('strategies', () => runDowntime(ctx, STRATEGY_KINDS));
    verdict = await run('verdict', () => runVerdict(ctx));
    // Last: its CLI runs of the version before issue 9 take up to a GB each.
    journal = await run('journal', () => runJournal(ctx));
    flood = await run('flood', () => runFlood(ctx));
    metrics = await run('metrics', () => runMetrics(ctx));

    log('cleaning up');
    const cleanup = await j.cleanup();
    results = {
      machine: mach,
      versions: tools.versions,
      quick,
      argv: process.argv.slice(2),
      seconds: (performance.now() - started) / 1000,
      loadAfter: os.loadavg().map((x) => Math.round(x * 100) / 100),
      buildWarnings: build.warnings,
      ...(reaction ? { reaction } : {}),
      ...(downtime ? { downtime } : {}),
      ...(footprint ? { footprint } : {}),
      ...(verdict ? { verdict } : {}),
      ...(journal ? { journal } : {}),
      ...(flood ? { flood } : {}),
      ...(metrics ? { metrics } : {}),
      errors,
      missingTools: [...tools.missing].map(([t, why]) => `${t}: ${why}`),
      cleanup,
    };
  } finally {
    if (results === undefined) await j.cleanup();
    await rm(root, { recursive: true, force: true });
  }

  // A complete run replaces the published figures; anything else goes elsewhere.
  const outDir = args.out !== undefined ? path.resolve(args.out) : complete ? ROOT : await mkdtemp(path.join(os.tmpdir(), 'relink-bench-report-'));
  const chartDir = outDir === ROOT ? 'bench/results' : 'results';
  await mkdir(path.join(outDir, chartDir), { recursive: true });
  for (const [name, svg] of Object.entries(charts(results))) await writeFile(path.join(outDir, chartDir, name), svg);
  // Samples stay out of the JSON: it is for diffing runs, not for re-plotting.
  const { reaction: rx, ...rest } = results;
  const slim = { ...rest, reaction: rx === undefined ? undefined : { ...rx, variants: rx.variants.map(({ samples: _samples, ...v }) => v) } };
  await writeFile(path.join(outDir, chartDir, 'latest.json'), `${JSON.stringify(slim, null, 2)}\n`);
  const md = markdown(results, chartDir);
  await writeFile(path.join(outDir, 'BENCHMARKS.md'), md);
  process.stdout.write(`\n${md}\n`);
  log(`wrote ${path.join(outDir, 'BENCHMARKS.md')} and ${path.join(outDir, chartDir)}/`);
  if (results.cleanup.survivors.length > 0) {
    log(`processes left behind: ${results.cleanup.survivors.join(', ')}`);
    return 1;
  }
  return Object.keys(errors).length > 0 ? 1 : 0;
}

main().then((code) => process.exit(code), (err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
