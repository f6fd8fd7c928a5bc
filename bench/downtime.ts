/**
 * 2. Zero downtime under load: wrk (Connection: close) and a prober against
 * each app on 127.0.0.1 while it is deployed N times in a row, by relink
 * (edit current.conf; the agent relinks and signals) and, on the same app,
 * by the alternatives: a hand-written stop + start, PM2's `reload` (fork
 * mode), and `supervisorctl restart`. For the alternatives the links are
 * switched first exactly as relink would, so every method deploys the same
 * release the same way and differs only in how the process is replaced.
 * A control cell with no deploys shows what the load alone produces.
 */
import type { ChildProcess } from 'node:child_process';
import { open, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort } from '../src/demo/layout.js';
import { AgentProcess, appBase, currentText, switchLinks, writeAgentConfig, writeCurrent, type AppLayout } from './lib/agent.js';
import { APP_LABELS, appSpecs, type AppKind, type AppSpec } from './lib/apps.js';
import { pick, type Context } from './lib/context.js';
import { failed, Prober, Wrk, type ProbeResult, type WrkResult } from './lib/load.js';
import { accepts, alive, httpGet, kill, killUnder, nowMs, sleep, stopChild, waitFor } from './lib/procs.js';
import { summarize, type Summary } from './lib/stats.js';

export type Method = 'control' | 'relink' | 'restart' | 'pm2' | 'supervisor';

export const METHOD_LABELS: Record<Method, string> = {
  control: 'no deploys (control)',
  relink: 'relink (SIGHUP)',
  restart: 'stop + start',
  pm2: 'PM2 reload (fork mode)',
  supervisor: 'supervisorctl restart',
};

export interface Cell {
  readonly app: AppKind;
  readonly method: Method;
  readonly deploys: number;
  /** Deploys after which the new release was not the one answering. */
  readonly wrongRelease: number;
  /** From the start of a deploy to the new release answering GET / (ms). */
  readonly deployMs: Summary;
  readonly wrk: Omit<WrkResult, 'raw'>;
  readonly failed: number;
  readonly probe: ProbeResult;
  readonly note?: string;
}

export interface DowntimeResult {
  readonly cells: Cell[];
  readonly skipped: string[];
  readonly settings: { readonly deploys: number; readonly pauseMs: number; readonly connections: number; readonly settleMs: number };
}

interface Manager {
  /** Deploy release `r`; resolves when the deploy is done by the manager's own account. */
  deploy(r: string): Promise<void>;
  close(): Promise<void>;
}

const PAUSE_MS = 250;
const CONNECTIONS = 4;
const SETTLE_MS = 300;

export async function runDowntime(ctx: Context): Promise<DowntimeResult> {
  const deploys = pick(ctx, 20, 3);
  const skipped: string[] = [];
  if (!ctx.tools.have.has('wrk')) {
    return { cells: [], skipped: [`all of it: wrk is missing (${ctx.tools.missing.get('wrk')})`], settings: { deploys, pauseMs: PAUSE_MS, connections: CONNECTIONS, settleMs: SETTLE_MS } };
  }
  const { specs, skipped: noApp } = await appSpecs(ctx);
  for (const s of noApp) skipped.push(`${APP_LABELS[s.kind]}: ${s.why}`);
  const cells: Cell[] = [];
  for (const spec of specs) {
    const methods: Method[] = ['control', 'relink', 'restart'];
    // nginx is run by systemd and reloaded, not put under a process manager.
    if (spec.kind !== 'nginx') methods.push('pm2', 'supervisor');
    for (const method of methods) {
      if (method === 'pm2' && !ctx.tools.have.has('pm2')) {
        skipped.push(`${METHOD_LABELS.pm2} on ${spec.label}: ${ctx.tools.missing.get('pm2')}`);
        continue;
      }
      if (method === 'supervisor' && !ctx.tools.have.has('supervisor')) {
        skipped.push(`${METHOD_LABELS.supervisor} on ${spec.label}: ${ctx.tools.missing.get('supervisor')}`);
        continue;
      }
      ctx.log(`  downtime: ${spec.label}, ${METHOD_LABELS[method]}`);
      try {
        cells.push(await runCell(ctx, spec, method, method === 'control' ? 0 : deploys));
      } catch (err) {
        skipped.push(`${METHOD_LABELS[method]} on ${spec.label}: failed: ${(err as Error).message.split('\n')[0]}`);
        ctx.log(`    failed: ${(err as Error).message}`);
      }
    }
  }
  return { cells, skipped, settings: { deploys, pauseMs: PAUSE_MS, connections: CONNECTIONS, settleMs: SETTLE_MS } };
}

async function runCell(ctx: Context, spec: AppSpec, method: Method, deploys: number): Promise<Cell> {
  const dir = path.join(ctx.root, `downtime-${spec.kind}-${method}`);
  const port = await freePort();
  const app = await spec.make(path.join(dir, spec.kind), port);
  const manager = await startManager(ctx, spec, method, app, dir);
  try {
    await waitFor(`${spec.kind} to serve release 1.0`, async () => served(port, '1.0'), 20_000, 20);
    const wrk = new Wrk(ctx.j, `http://127.0.0.1:${port}/`, 600, CONNECTIONS);
    const prober = new Prober(port);
    await sleep(1_000);
    const times: number[] = [];
    let wrong = 0;
    if (deploys === 0) await sleep(pick(ctx, 5_000, 2_000));
    for (let k = 0; k < deploys; k++) {
      const r = k % 2 === 0 ? '2.0' : '1.0';
      const t0 = nowMs();
      const done = manager.deploy(r);
      const serving = waitFor(`release ${r} to answer`, () => served(port, r), 30_000, 5).then(() => nowMs(), () => undefined);
      await done;
      const t1 = await serving;
      if (t1 === undefined) wrong += 1;
      else times.push(t1 - t0);
      await sleep(PAUSE_MS);
    }
    await sleep(1_000);
    const probe = await prober.stop();
    const w = await wrk.stop();
    const { raw, ...wrkFigures } = w;
    if (!Number.isFinite(w.requests)) throw new Error(`could not read wrk's output: ${raw.slice(0, 300)}`);
    return { app: spec.kind, method, deploys, wrongRelease: wrong, deployMs: summarize(times), wrk: wrkFigures, failed: failed(w), probe };
  } finally {
    await manager.close();
    await killUnder(app.releasesDir);
  }
}

/** Does GET / come from release `r`? */
async function served(port: number, r: string): Promise<boolean> {
  const res = await httpGet(port, '/', 1_000);
  return 'status' in res && res.status === 200 && res.body.includes(`"app.${r}"`);
}

async function startManager(ctx: Context, spec: AppSpec, method: Method, app: AppLayout, dir: string): Promise<Manager> {
  switch (method) {
    case 'control':
    case 'restart':
      return direct(ctx, spec, app);
    case 'relink':
      return relinkManager(ctx, spec, app, dir);
    case 'pm2':
      return pm2Manager(ctx, spec, app, dir);
    case 'supervisor':
      return supervisorManager(ctx, spec, app, dir);
  }
}

async function relinkManager(ctx: Context, spec: AppSpec, app: AppLayout, dir: string): Promise<Manager> {
  await writeFile(app.currentFile, currentText('1.0'));
  const config = await writeAgentConfig(path.join(dir, 'config.json'), {
    stateDir: path.join(dir, 'state'),
    apps: [{
      ...appBase(),
      name: app.name,
      dir: app.dir,
      command: spec.command(app),
      reload: { mode: spec.mode, timeoutMs: 10_000 },
      health: { url: `http://127.0.0.1:${app.port}/healthz`, settleMs: SETTLE_MS, deadlineMs: 10_000, intervalMs: 50 },
    }],
  });
  const agent = new AgentProcess(ctx.j, ctx.agentMain, config);
  const first = await agent.outcome(1, 30_000);
  if (first.outcome !== 'deployed') throw new Error(`relink could not start ${spec.kind}: ${first.reason ?? first.msg}`);
  let n = 1;
  return {
    async deploy(r) {
      await writeCurrent(app, r);
      n += 1;
      const o = await agent.outcome(n, 30_000);
      if (o.outcome !== 'deployed') throw new Error(`deploy of ${r} was ${o.outcome}: ${o.reason ?? ''}`);
    },
    close: () => agent.stop(),
  };
}

/** The app started by hand; a deploy is switch links, stop (graceful signal, wait), start, wait for the port. */
async function direct(ctx: Context, spec: AppSpec, app: AppLayout): Promise<Manager> {
  const start = async (): Promise<ChildProcess> => {
    const log = await open(path.join(app.dir, 'app.log'), 'a');
    try {
      const [file, ...args] = spec.command(app) as [string, ...string[]];
      return ctx.j.spawn(file, args, { cwd: app.dir, stdio: ['ignore', log.fd, log.fd], detached: true });
    } finally {
      await log.close();
    }
  };
  let child = await start();
  await waitFor(`${spec.kind} to listen`, () => accepts(app.port), 20_000, 5);
  return {
    async deploy(r) {
      await switchLinks(app, r);
      await stopChild(child, spec.stopSignal, 15_000);
      child = await start();
      await waitFor(`${spec.kind} to listen again`, () => accepts(app.port), 20_000, 2);
    },
    close: () => stopChild(child, spec.stopSignal),
  };
}

async function pm2Manager(ctx: Context, spec: AppSpec, app: AppLayout, dir: string): Promise<Manager> {
  const env = { PM2_HOME: path.join(dir, 'pm2home') };
  const pm2 = async (...args: string[]): Promise<void> => {
    const r = await ctx.j.run(process.execPath, [ctx.tools.pm2Bin, ...args], { env, timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(`pm2 ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(-400)}`);
  };
  const [file, ...args] = spec.command(app) as [string, ...string[]];
  const eco = path.join(dir, 'ecosystem.json');
  await writeFile(eco, JSON.stringify({
    apps: [{ name: app.name, script: path.resolve(app.dir, file), args, cwd: app.dir, interpreter: 'none', exec_mode: 'fork', autorestart: true }],
  }, null, 2));
  ctx.j.defer('pm2 kill', () => ctx.j.run(process.execPath, [ctx.tools.pm2Bin, 'kill'], { env, timeoutMs: 30_000 }));
  await pm2('start', eco);
  return {
    async deploy(r) {
      await switchLinks(app, r);
      await pm2('reload', app.name);
    },
    async close() {
      await ctx.j.run(process.execPath, [ctx.tools.pm2Bin, 'kill'], { env, timeoutMs: 30_000 });
    },
  };
}

async function supervisorManager(ctx: Context, spec: AppSpec, app: AppLayout, dir: string): Promise<Manager> {
  const conf = path.join(dir, 'supervisord.conf');
  const [file, ...args] = spec.command(app) as [string, ...string[]];
  await writeFile(conf, `[unix_http_server]
file=${dir}/supervisor.sock

[supervisord]
nodaemon=true
logfile=${dir}/supervisord.log
pidfile=${dir}/supervisord.pid
childlogdir=${dir}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://${dir}/supervisor.sock

[program:${app.name}]
command=${path.resolve(app.dir, file)} ${args.join(' ')}
directory=${app.dir}
autostart=true
autorestart=true
startsecs=1
stopsignal=${spec.stopSignal.replace(/^SIG/, '')}
stopwaitsecs=15
redirect_stderr=true
stdout_logfile=${app.dir}/app.log
`);
  const daemon = ctx.j.spawn('supervisord', ['-c', conf], { cwd: dir });
  const ctl = async (...a: string[]): Promise<void> => {
    const r = await ctx.j.run('supervisorctl', ['-c', conf, ...a], { timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(`supervisorctl ${a.join(' ')} exited ${r.code}: ${(r.stdout + r.stderr).trim().slice(-400)}`);
  };
  return {
    async deploy(r) {
      await switchLinks(app, r);
      await ctl('restart', app.name);
    },
    async close() {
      await ctx.j.run('supervisorctl', ['-c', conf, 'shutdown'], { timeoutMs: 30_000 });
      await waitFor('supervisord to exit', async () => daemon.exitCode !== null || daemon.signalCode !== null || !(await alive(daemon.pid!)), 20_000, 50).catch(() => kill(daemon.pid!, 'SIGTERM'));
      await stopChild(daemon);
    },
  };
}
