/**
 * 3. Footprint: the resident process of each manager (the relink agent, the
 * PM2 daemon, supervisord) managing 1 and then 20 copies of the same app
 * (the C demo app), each measured idle: RSS at the end of the window, CPU
 * time and wake-ups during it. Each manager gets a fresh instance. The
 * agent's growth over 1,000 deploys is measured in reaction.ts, on the
 * agent process that did them.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buildDemoApp } from '../src/demo/build.js';
import { freePort } from '../src/demo/layout.js';
import { AgentProcess, appBase, currentText, makeLayout, writeAgentConfig, type AppLayout } from './lib/agent.js';
import { pick, type Context } from './lib/context.js';
import { accepts, alive, killUnder, measureIdle, sampleProc, sleep, stopChild, waitFor, type Idle } from './lib/procs.js';
import { ROOT } from './lib/tools.js';

export type Manager = 'relink' | 'pm2' | 'supervisord';

export const MANAGER_LABELS: Record<Manager, string> = {
  relink: 'relink agent',
  pm2: 'PM2 daemon',
  supervisord: 'supervisord',
};

export interface FootprintRow {
  readonly manager: Manager;
  readonly apps: number;
  readonly idle: Idle;
}

export interface FootprintResult {
  readonly rows: FootprintRow[];
  /** RSS of an idle node that has imported one runtime dependency of relink (and all of them): what the agent is made of. */
  readonly modules: ReadonlyArray<{ readonly name: string; readonly rssMb: number }>;
  /** An idle `node` doing nothing, for scale: most of a Node.js manager is the runtime. */
  readonly bareNode: Idle | undefined;
  readonly skipped: string[];
  readonly windowSeconds: number;
}

export async function runFootprint(ctx: Context): Promise<FootprintResult> {
  const rows: FootprintRow[] = [];
  const skipped: string[] = [];
  const managers: Manager[] = ['relink'];
  if (ctx.tools.have.has('pm2')) managers.push('pm2');
  else skipped.push(`PM2: ${ctx.tools.missing.get('pm2')}`);
  if (ctx.tools.have.has('supervisor')) managers.push('supervisord');
  else skipped.push(`supervisord: ${ctx.tools.missing.get('supervisor')}`);
  // 20 s: the agent wakes once a second and re-checks every 5 s; 8 s windows at 10 ms tick resolution swung between 0.5 % and 1.25 % of a core for 1 app.
  const windowSeconds = pick(ctx, 20, 2);
  for (const n of [1, pick(ctx, 20, 3)]) {
    for (const m of managers) {
      ctx.log(`  footprint: ${MANAGER_LABELS[m]}, ${n} app${n === 1 ? '' : 's'}`);
      try {
        rows.push({ manager: m, apps: n, idle: await measure(ctx, m, n, windowSeconds) });
      } catch (err) {
        skipped.push(`${MANAGER_LABELS[m]} with ${n} apps: failed: ${(err as Error).message.split('\n')[0]}`);
        ctx.log(`    failed: ${(err as Error).message}`);
      }
    }
  }
  ctx.log('  footprint: a bare Node.js process, for scale');
  const bare = ctx.j.spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e9)']);
  let bareNode: Idle | undefined;
  try {
    await sleep(pick(ctx, 2_000, 500));
    bareNode = await measureIdle(bare.pid!, windowSeconds);
  } finally {
    await stopChild(bare);
  }
  ctx.log("  footprint: node with each of relink's runtime dependencies loaded");
  const modules = await moduleCosts(ctx);
  return { rows, bareNode, modules, skipped, windowSeconds };
}

async function measure(ctx: Context, m: Manager, n: number, seconds: number): Promise<Idle> {
  const dir = path.join(ctx.root, `footprint-${m}-${n}`);
  const binary = await buildDemoApp();
  const apps: AppLayout[] = [];
  for (let i = 0; i < n; i++) {
    const port = await freePort();
    apps.push(await makeLayout(path.join(dir, `app${i}`), `app${i}`, port, binary, { '1.0': `port=${port}\nmode=reexec\nmessage=footprint\n` }));
  }
  // Long enough for V8's memory reducer to run after start-up (it does about 8 s in).
  const settle = (): Promise<void> => sleep(pick(ctx, 10_000, 500));
  try {
    if (m === 'relink') {
      for (const a of apps) await writeFile(a.currentFile, currentText('1.0'));
      const config = await writeAgentConfig(path.join(dir, 'config.json'), {
        stateDir: path.join(dir, 'state'),
        apps: apps.map((a) => ({ ...appBase(), name: a.name, dir: a.dir })),
      });
      const agent = new AgentProcess(ctx.j, ctx.agentMain, config);
      try {
        await agent.outcome(n, 60_000);
        await allListening(apps);
        await settle();
        return await measureIdle(agent.pid, seconds);
      } finally {
        await agent.stop();
      }
    }
    if (m === 'pm2') {
      const env = { PM2_HOME: path.join(dir, 'pm2home') };
      const eco = path.join(dir, 'ecosystem.json');
      await writeFile(eco, JSON.stringify({
        apps: apps.map((a) => ({ name: a.name, script: path.join(a.releasesDir, 'app.1.0'), args: ['-c', path.join(a.releasesDir, 'cfg.1.0')], cwd: a.dir, interpreter: 'none', exec_mode: 'fork', autorestart: true })),
      }));
      const kill = (): Promise<unknown> => ctx.j.run(process.execPath, [ctx.tools.pm2Bin, 'kill'], { env, timeoutMs: 30_000 });
      ctx.j.defer('pm2 kill', kill);
      try {
        const r = await ctx.j.run(process.execPath, [ctx.tools.pm2Bin, 'start', eco], { env, timeoutMs: 120_000 });
        if (r.code !== 0) throw new Error(`pm2 start: ${r.stderr.slice(-300)}`);
        await allListening(apps);
        const pid = Number((await readFile(path.join(env.PM2_HOME, 'pm2.pid'), 'utf8')).trim());
        await settle();
        return await measureIdle(pid, seconds);
      } finally {
        await kill();
      }
    }
    const conf = path.join(dir, 'supervisord.conf');
    await writeFile(conf, [
      `[unix_http_server]\nfile=${dir}/supervisor.sock\n`,
      `[supervisord]\nnodaemon=true\nlogfile=${dir}/supervisord.log\npidfile=${dir}/supervisord.pid\nchildlogdir=${dir}\n`,
      `[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n`,
      `[supervisorctl]\nserverurl=unix://${dir}/supervisor.sock\n`,
      ...apps.map((a) => `[program:${a.name}]\ncommand=${path.join(a.releasesDir, 'app.1.0')} -c ${path.join(a.releasesDir, 'cfg.1.0')}\ndirectory=${a.dir}\nautorestart=true\nstartsecs=1\nredirect_stderr=true\nstdout_logfile=${a.dir}/app.log\n`),
    ].join('\n'));
    const daemon = ctx.j.spawn('supervisord', ['-c', conf], { cwd: dir });
    try {
      await allListening(apps);
      await settle();
      return await measureIdle(daemon.pid!, seconds);
    } finally {
      await ctx.j.run('supervisorctl', ['-c', conf, 'shutdown'], { timeoutMs: 30_000 });
      await waitFor('supervisord to exit', async () => !(await alive(daemon.pid!)), 20_000, 50).catch(() => undefined);
      await stopChild(daemon);
    }
  } finally {
    for (const a of apps) await killUnder(a.releasesDir);
  }
}

/** RSS of `node` idling after `import()` of each dependency in package.json, alone and all together. */
async function moduleCosts(ctx: Context): Promise<Array<{ name: string; rssMb: number }>> {
  const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
  const deps = Object.keys(pkg.dependencies ?? {}).sort();
  const out: Array<{ name: string; rssMb: number }> = [];
  for (const set of [[], ...deps.map((d) => [d]), deps]) {
    const code = `Promise.all(${JSON.stringify(set)}.map((m) => import(m))).then(() => setInterval(() => {}, 1e9));`;
    const child = ctx.j.spawn(process.execPath, ['-e', code], { cwd: ROOT });
    try {
      await sleep(pick(ctx, 1_500, 800));
      out.push({ name: set.length === 0 ? '(nothing)' : set.length === 1 ? set[0]! : 'all of them', rssMb: (await sampleProc(child.pid!)).rssKb / 1024 });
    } finally {
      await stopChild(child);
    }
  }
  return out;
}

async function allListening(apps: readonly AppLayout[]): Promise<void> {
  for (const a of apps) await waitFor(`${a.name} on port ${a.port}`, () => accepts(a.port), 30_000, 20);
}
