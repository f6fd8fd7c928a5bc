/**
 * 2. Zero downtime under load: wrk (Connection: close) and a prober against
 * each app on 127.0.0.1 while it is deployed N times in a row, by relink
 * (edit current.conf; the agent relinks and signals, or, for apps with no
 * reload of their own, replaces them by one of issue 11's strategies) and,
 * on the same app, by the alternatives: a hand-written stop + start, PM2's
 * `reload` (fork mode), `supervisorctl restart`, and systemd's restart of a
 * service whose socket a .socket unit holds (bench/apps/sockholder.py with
 * systemd-socket-activate). For the alternatives the links are switched
 * first exactly as relink would, so every method deploys the same release
 * the same way and differs only in how the process is replaced. A control
 * cell with no deploys shows what the load alone produces, and is the base
 * of the p99 latency ratios.
 */
import type { ChildProcess } from 'node:child_process';
import { open, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { freePort } from '../src/demo/layout.js';
import { AgentProcess, appBase, currentText, switchLinks, writeAgentConfig, writeCurrent, type AppLayout } from './lib/agent.js';
import { APP_KINDS, APP_LABELS, appSpecs, STRATEGY_KINDS, type AppKind, type AppSpec } from './lib/apps.js';
import { pick, type Context } from './lib/context.js';
import { ROOT } from './lib/tools.js';
import { failed, OpenLoad, Prober, Wrk, type ProbeResult, type WrkResult } from './lib/load.js';
import { accepts, alive, cpuMs, httpGet, kill, killUnder, nowMs, sampleProc, sleep, stopChild, waitFor } from './lib/procs.js';
import { summarize, type Summary } from './lib/stats.js';

export type Method = 'control' | 'boot-beside' | 'relink' | 'relink-socket' | 'relink-upgrade' | 'relink-restart' | 'restart' | 'socket-activate' | 'pm2' | 'supervisor';

export const METHOD_LABELS: Record<Method, string> = {
  control: 'no deploys (control)',
  'boot-beside': 'no deploys, a second copy started and stopped beside (control)',
  relink: 'relink (SIGHUP)',
  'relink-socket': 'relink "socket"',
  'relink-upgrade': 'relink "upgrade" (USR2, then TERM)',
  'relink-restart': 'relink "restart", socket held',
  restart: 'stop + start',
  'socket-activate': 'socket-activated restart (systemd-socket-activate)',
  pm2: 'PM2 reload (fork mode)',
  supervisor: 'supervisorctl restart',
};

/** The relink rows, each held to 0 failed requests, except "restart" (issue 11). */
export const RELINK_METHODS: readonly Method[] = ['relink', 'relink-socket', 'relink-upgrade', 'relink-restart'];
export const isRelink = (m: Method): boolean => RELINK_METHODS.includes(m);
/** Rows with no deploy of the measured app: the control, and the control with a second copy started and stopped beside it. */
export const isControl = (m: Method): boolean => m === 'control' || m === 'boot-beside';
/** Relink rows with a zero-failure target: every strategy but "restart". */
export const isZeroTarget = (m: Method): boolean => isRelink(m) && m !== 'relink-restart';

/** The rows of each app, in table order. */
export const METHODS: Record<AppKind, readonly Method[]> = {
  go: ['control', 'relink', 'restart', 'pm2', 'supervisor'],
  // nginx is run by systemd and reloaded, not put under a process manager.
  nginx: ['control', 'relink', 'restart'],
  c: ['control', 'relink', 'restart', 'pm2', 'supervisor'],
  plain: ['control', 'boot-beside', 'relink-socket', 'relink-restart', 'restart', 'socket-activate', 'pm2', 'supervisor'],
  gunicorn: ['control', 'boot-beside', 'relink-socket', 'relink-upgrade', 'restart', 'socket-activate', 'pm2', 'supervisor'],
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
  /**
   * What the agent's outcome lines said about a "restart" (`outageMs`
   * without held sockets, `queuedMs` with them), one sample per deploy
   * that reported it; empty for the other rows.
   */
  readonly agentOutageMs?: Summary;
  readonly agentQueuedMs?: Summary;
  /** relink's rows: the agent's own CPU time per deploy (ms), over the row's deploys (the CPU the deploys take from the app and the load). */
  readonly agentCpuMsPerDeploy?: number;
  /**
   * Set when the row ran under the open-loop load at this fixed rate
   * (requests a second: half its app's control throughput under wrk)
   * instead of wrk; `wrk` then holds that load's figures.
   */
  readonly ratePerSecond?: number;
  readonly note?: string;
}

export interface DowntimeResult {
  readonly cells: Cell[];
  readonly skipped: string[];
  readonly settings: {
    readonly deploys: number;
    readonly pauseMs: number;
    readonly connections: number;
    readonly settleMs: number;
    /** A row stops deploying after capMs once it has done minDeploys. */
    readonly capMs: number;
    readonly minDeploys: number;
  };
}

interface Manager {
  /**
   * Deploy release `r`; resolves when the deploy is done by the manager's
   * own account, with what the agent reported of a restart's gap, if any.
   */
  deploy(r: string): Promise<{ outageMs?: number; queuedMs?: number; readyMs?: number } | void>;
  /** "boot-beside": deploys start a copy that never serves the measured port, so the loop does not wait for the release to answer there. */
  readonly beside?: true;
  /** relink's rows: the agent's CPU time so far (utime + stime, ms), to tell its own share of a deploy's cost. */
  agentCpuMs?(): Promise<number>;
  close(): Promise<void>;
}

const PAUSE_MS = 250;
const CONNECTIONS = 4;
const SETTLE_MS = 300;
/**
 * A peer's row stops deploying after this long (ms), once it has done
 * MIN_DEPLOYS: PM2 and supervisord take 3 to 12 s per restart of gunicorn
 * on this machine, and 20 of them would take minutes. relink's rows always
 * do all their deploys (the issues' targets say "during 20 deploys").
 */
const ROW_CAP_MS = 30_000;
const MIN_DEPLOYS = 5;
/** Load with no deploys for the control rows of issue 11's apps (ms). */
const CONTROL_MS_P99 = 20_000;

/** Every row of every app in `kinds` (default: all of them). */
export async function runDowntime(ctx: Context, kinds: readonly AppKind[] = APP_KINDS): Promise<DowntimeResult> {
  const deploys = pick(ctx, 20, 3);
  const skipped: string[] = [];
  if (!ctx.tools.have.has('wrk')) {
    return { cells: [], skipped: [`all of it: wrk is missing (${ctx.tools.missing.get('wrk')})`], settings: { deploys, pauseMs: PAUSE_MS, connections: CONNECTIONS, settleMs: SETTLE_MS, capMs: pick(ctx, ROW_CAP_MS, 20_000), minDeploys: Math.min(deploys, MIN_DEPLOYS) } };
  }
  const { specs, skipped: noApp } = await appSpecs(ctx, kinds);
  for (const s of noApp) skipped.push(`${APP_LABELS[s.kind]}: ${s.why}`);
  const cells: Cell[] = [];
  const needs: Partial<Record<Method, 'pm2' | 'supervisor' | 'socket-activate'>> = { pm2: 'pm2', supervisor: 'supervisor', 'socket-activate': 'socket-activate' };
  for (const spec of specs) {
    for (const method of METHODS[spec.kind]) {
      const tool = needs[method];
      if (tool !== undefined && !ctx.tools.have.has(tool)) {
        skipped.push(`${METHOD_LABELS[method]} on ${spec.label}: ${ctx.tools.missing.get(tool)}`);
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
    // Issue 11's apps again, for latency: wrk keeps the app saturated, so
    // its p99 is the queue it keeps full and any CPU a deploy takes shows
    // in it whole. The same rows under an open-loop load at a quarter of
    // the control's throughput, latency from when each request was due.
    const control = cells.find((c) => c.app === spec.kind && c.method === 'control' && c.ratePerSecond === undefined);
    if (STRATEGY_KINDS.includes(spec.kind) && control !== undefined && control.wrk.requests > 0 && control.wrk.seconds > 0) {
      const perSecond = Math.max(50, Math.round(control.wrk.requests / control.wrk.seconds / RATE_SHARE / 50) * 50);
      for (const method of METHODS[spec.kind].filter((m) => RATE_METHODS.includes(m))) {
        ctx.log(`  downtime: ${spec.label}, ${METHOD_LABELS[method]}, ${perSecond} requests/s open-loop`);
        try {
          cells.push(await runCell(ctx, spec, method, method === 'control' ? 0 : deploys, perSecond));
        } catch (err) {
          skipped.push(`${METHOD_LABELS[method]} on ${spec.label} at ${perSecond}/s: failed: ${(err as Error).message.split('\n')[0]}`);
          ctx.log(`    failed: ${(err as Error).message}`);
        }
      }
    }
  }
  return { cells, skipped, settings: { deploys, pauseMs: PAUSE_MS, connections: CONNECTIONS, settleMs: SETTLE_MS, capMs: pick(ctx, ROW_CAP_MS, 20_000), minDeploys: Math.min(deploys, MIN_DEPLOYS) } };
}

/**
 * The open-loop rows' rate is the wrk control's throughput divided by this.
 * A quarter leaves room for what a deploy takes on 2 shared cores: at half,
 * gunicorn's control alone ran at the edge of its capacity on a busy day
 * (p99 74 ms against 4 ms at p50), and an upgrade's health probe waited
 * 10 s in the queue.
 */
const RATE_SHARE = 4;

/** The rows run again under the open-loop load (issue 11's apps): the controls and relink's zero-downtime strategies. */
const RATE_METHODS: readonly Method[] = ['control', 'boot-beside', 'relink-socket', 'relink-upgrade'];

async function runCell(ctx: Context, spec: AppSpec, method: Method, deploys: number, perSecond?: number): Promise<Cell> {
  const dir = path.join(ctx.root, `downtime-${spec.kind}-${method}${perSecond === undefined ? '' : '-rate'}`);
  const port = await freePort();
  const app = await spec.make(path.join(dir, spec.kind), port);
  const manager = await startManager(ctx, spec, method, app, dir);
  try {
    await waitFor(`${spec.kind} to serve release 1.0`, async () => served(port, '1.0'), 20_000, 20);
    const wrk = perSecond === undefined ? new Wrk(ctx.j, `http://127.0.0.1:${port}/`, 600, CONNECTIONS) : new OpenLoad(ctx.j, port, perSecond);
    const prober = new Prober(port);
    await sleep(1_000);
    const times: number[] = [];
    const outages: number[] = [];
    const queued: number[] = [];
    let wrong = 0;
    // Issue 11's apps: their control's p99 is the base of a ratio, so it gets
    // as long a load as a row of deploys (a short one makes a noisy p99).
    if (deploys === 0) await sleep(STRATEGY_KINDS.includes(spec.kind) ? pick(ctx, CONTROL_MS_P99, 3_000) : pick(ctx, 5_000, 2_000));
    const loopStart = nowMs();
    const cpuBefore = await manager.agentCpuMs?.();
    let done = 0;
    for (let k = 0; k < deploys; k++) {
      // A slow peer (seconds per restart) stops at the time cap, once it has done enough deploys to count.
      if (!isRelink(method) && k >= Math.min(deploys, MIN_DEPLOYS) && nowMs() - loopStart > pick(ctx, ROW_CAP_MS, 20_000)) break;
      done += 1;
      const r = k % 2 === 0 ? '2.0' : '1.0';
      const t0 = nowMs();
      const deployed = manager.deploy(r);
      // Told by the prober's own requests (every 10 ms, in the control too): polling apart would load deploy rows only.
      const serving = manager.beside ? undefined : prober.servedBy(`"app.${r}"`, 30_000);
      const said = await deployed;
      if (typeof said?.outageMs === 'number') outages.push(said.outageMs);
      if (typeof said?.queuedMs === 'number') queued.push(said.queuedMs);
      if (serving === undefined) {
        if (typeof said?.readyMs === 'number') times.push(said.readyMs);
      } else {
        const t1 = await serving;
        if (t1 === undefined) wrong += 1;
        else times.push(t1 - t0);
      }
      await sleep(PAUSE_MS);
    }
    const cpuAfter = await manager.agentCpuMs?.();
    await sleep(1_000);
    const probe = await prober.stop();
    const w = await wrk.stop();
    const { raw, ...wrkFigures } = w;
    if (!Number.isFinite(w.requests)) throw new Error(`could not read wrk's output: ${raw.slice(0, 300)}`);
    return {
      app: spec.kind, method, deploys: done, wrongRelease: wrong, deployMs: summarize(times), wrk: wrkFigures, failed: failed(w), probe,
      ...(perSecond === undefined ? {} : { ratePerSecond: perSecond }),
      ...(outages.length > 0 ? { agentOutageMs: summarize(outages) } : {}),
      ...(queued.length > 0 ? { agentQueuedMs: summarize(queued) } : {}),
      ...(cpuBefore !== undefined && cpuAfter !== undefined && done > 0 ? { agentCpuMsPerDeploy: (cpuAfter - cpuBefore) / done } : {}),
    };
  } finally {
    await manager.close();
    // The agent leaves its apps running when it stops (a new agent adopts
    // them), and the Python apps' executable is python3: find them by their
    // working directory too, so no row's app runs on into the next row.
    await killUnder(app.dir, 'SIGTERM', 5_000, true);
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
    case 'boot-beside':
      return bootBeside(ctx, spec, app, dir);
    case 'relink':
    case 'relink-socket':
    case 'relink-upgrade':
    case 'relink-restart':
      return relinkManager(ctx, spec, method, app, dir);
    case 'socket-activate':
      return socketActivated(ctx, spec, app);
    case 'pm2':
      return pm2Manager(ctx, spec, app, dir);
    case 'supervisor':
      return supervisorManager(ctx, spec, app, dir);
  }
}

/**
 * The keys of issue 11's interface (/work/i11-spec.md) for each relink row:
 * `reload.strategy`, `sockets` (the agent holds 127.0.0.1:PORT and passes it
 * as fd 3 with LISTEN_FDS/LISTEN_PID) and `stop`.
 */
function relinkKeys(spec: AppSpec, method: Method, app: AppLayout): Record<string, unknown> {
  const stop = { signal: spec.stopSignal, timeoutMs: 10_000 };
  const sockets = [`127.0.0.1:${app.port}`];
  switch (method) {
    case 'relink':
      if (spec.mode === undefined) throw new Error(`${spec.label} has no reload of its own`);
      return { reload: { strategy: spec.mode, timeoutMs: 10_000 } };
    case 'relink-socket':
      return { sockets, reload: { strategy: 'socket', timeoutMs: 10_000 }, stop };
    case 'relink-restart':
      return { sockets, reload: { strategy: 'restart', timeoutMs: 10_000 }, stop };
    case 'relink-upgrade':
      // gunicorn: USR2 starts a new master (a child of the old one) on the inherited socket; TERM stops the old one gracefully.
      return { reload: { strategy: 'upgrade', signal: 'SIGUSR2', timeoutMs: 10_000 }, stop };
    default:
      throw new Error(`${method} is not a relink row`);
  }
}

async function relinkManager(ctx: Context, spec: AppSpec, method: Method, app: AppLayout, dir: string): Promise<Manager> {
  await writeFile(app.currentFile, currentText('1.0'));
  const config = await writeAgentConfig(path.join(dir, 'config.json'), {
    stateDir: path.join(dir, 'state'),
    apps: [{
      ...appBase(),
      name: app.name,
      dir: app.dir,
      command: spec.command(app),
      ...relinkKeys(spec, method, app),
      health: { url: `http://127.0.0.1:${app.port}/healthz`, settleMs: SETTLE_MS, deadlineMs: 10_000, intervalMs: 50 },
    }],
  });
  const agent = new AgentProcess(ctx.j, ctx.agentMain, config);
  const first = await agent.outcome(1, 30_000);
  if (first.outcome !== 'deployed') throw new Error(`relink could not start ${spec.kind}: ${first.reason ?? first.msg}`);
  let n = 1;
  return {
    async deploy(r) {
      await writeCurrent(app, r, spec.fixedBin);
      n += 1;
      const o = await agent.outcome(n, 30_000);
      if (o.outcome !== 'deployed') throw new Error(`deploy of ${r} was ${o.outcome}: ${o.reason ?? ''}`);
      return {
        ...(typeof o['outageMs'] === 'number' ? { outageMs: o['outageMs'] } : {}),
        ...(typeof o['queuedMs'] === 'number' ? { queuedMs: o['queuedMs'] } : {}),
      };
    },
    agentCpuMs: async () => cpuMs(await sampleProc(agent.pid)),
    close: () => agent.stop(),
  };
}

/** The app started by hand; a deploy is switch links, stop (graceful signal, wait), start, wait for the port. */
/** Start the app by hand in its folder, its output appended to its app.log. */
async function startByHand(ctx: Context, spec: AppSpec, app: AppLayout): Promise<ChildProcess> {
  const log = await open(path.join(app.dir, 'app.log'), 'a');
  try {
    const [file, ...args] = spec.command(app) as [string, ...string[]];
    return ctx.j.spawn(file, args, { cwd: app.dir, stdio: ['ignore', log.fd, log.fd], detached: true });
  } finally {
    await log.close();
  }
}

async function direct(ctx: Context, spec: AppSpec, app: AppLayout): Promise<Manager> {
  const start = (): Promise<ChildProcess> => startByHand(ctx, spec, app);
  let child = await start();
  await waitFor(`${spec.kind} to listen`, () => accepts(app.port), 20_000, 5);
  return {
    async deploy(r) {
      await switchLinks(app, r, spec.fixedBin);
      await stopChild(child, spec.stopSignal, 15_000);
      child = await start();
      await waitFor(`${spec.kind} to listen again`, () => accepts(app.port), 20_000, 2);
    },
    close: () => stopChild(child, spec.stopSignal),
  };
}

/**
 * The app started by hand and never touched; a "deploy" starts a second
 * copy of release `r` in a folder of its own on another port, waits for it
 * to answer there, and stops it (its graceful signal, waiting for the
 * exit). What the row measures is the cost any zero-downtime method pays
 * on this machine, relink or not: a new release starting (an interpreter,
 * gunicorn's master and workers) and an old one stopping, beside the one
 * that serves, with nothing switched. Its time is to the copy's first answer.
 */
async function bootBeside(ctx: Context, spec: AppSpec, app: AppLayout, dir: string): Promise<Manager> {
  const serving = await direct(ctx, spec, app);
  const port = await freePort();
  const copy = await spec.make(path.join(dir, 'beside'), port);
  return {
    beside: true,
    async deploy(r) {
      await switchLinks(copy, r, spec.fixedBin);
      const t0 = nowMs();
      const child = await startByHand(ctx, spec, copy);
      await waitFor(`the copy of ${spec.kind} to answer`, async () => served(port, r), 20_000, 2);
      const readyMs = nowMs() - t0;
      await stopChild(child, spec.stopSignal, 15_000);
      await killUnder(copy.dir, 'SIGTERM', 5_000, true);
      return { readyMs };
    },
    close: async () => {
      await serving.close();
      await killUnder(copy.dir, 'SIGTERM', 5_000, true);
    },
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
    // kill_signal: the app's graceful stop signal, as supervisord's stopsignal (PM2's default is SIGINT).
    apps: [{ name: app.name, script: path.resolve(app.dir, file), args, cwd: app.dir, interpreter: 'none', exec_mode: 'fork', autorestart: true, kill_signal: spec.stopSignal }],
  }, null, 2));
  ctx.j.defer('pm2 kill', () => ctx.j.run(process.execPath, [ctx.tools.pm2Bin, 'kill'], { env, timeoutMs: 30_000 }));
  await pm2('start', eco);
  return {
    async deploy(r) {
      await switchLinks(app, r, spec.fixedBin);
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
      await switchLinks(app, r, spec.fixedBin);
      await ctl('restart', app.name);
    },
    async close() {
      await ctx.j.run('supervisorctl', ['-c', conf, 'shutdown'], { timeoutMs: 30_000 });
      await waitFor('supervisord to exit', async () => daemon.exitCode !== null || daemon.signalCode !== null || !(await alive(daemon.pid!)), 20_000, 50).catch(() => kill(daemon.pid!, 'SIGTERM'));
      await stopChild(daemon);
    },
  };
}

/**
 * systemd's restart of a service whose listening socket a .socket unit
 * holds, without a booted systemd: bench/apps/sockholder.py binds the port
 * once and keeps it (never accepting), and starts the app through
 * systemd-socket-activate with the socket passed in (fd 3, LISTEN_FDS,
 * LISTEN_PID), which passes it on. A deploy is switch links, then
 * `restart`: the stop signal, wait for the exit (SIGKILL after 15 s), start
 * again on the same socket. Meanwhile connections wait in the backlog.
 */
async function socketActivated(ctx: Context, spec: AppSpec, app: AppLayout): Promise<Manager> {
  const log = await open(path.join(app.dir, 'app.log'), 'a');
  let holder: ChildProcess;
  try {
    holder = ctx.j.spawn('/usr/bin/python3', [path.join(ROOT, 'bench', 'apps', 'sockholder.py'), String(app.port), spec.stopSignal, '15', '--', ...spec.command(app)], {
      cwd: app.dir,
      stdio: ['pipe', 'pipe', log.fd],
    });
  } finally {
    await log.close();
  }
  const said: string[] = [];
  createInterface({ input: holder.stdout! }).on('line', (l) => said.push(l));
  const started = (n: number): Promise<void> => waitFor(`the socket holder to start the app (${n})`, () => said.filter((l) => l.startsWith('started ')).length >= n || holder.exitCode !== null, 30_000, 5)
    .then(() => {
      if (holder.exitCode !== null) throw new Error(`the socket holder exited ${holder.exitCode}; see ${app.dir}/app.log`);
    });
  await started(1);
  let n = 1;
  return {
    async deploy(r) {
      await switchLinks(app, r, spec.fixedBin);
      holder.stdin!.write('restart\n');
      n += 1;
      await started(n);
    },
    async close() {
      holder.stdin!.end();
      await waitFor('the socket holder to exit', () => holder.exitCode !== null || holder.signalCode !== null, 20_000, 20).catch(() => undefined);
      await stopChild(holder);
    },
  };
}
