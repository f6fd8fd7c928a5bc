/**
 * Processes the bench starts, how they are measured, and how they are all
 * ended. Every child gets RELINK_BENCH_RUN=<token> in its environment, and
 * everything it starts inherits it (the agent passes its environment to the
 * apps, PM2's daemon and supervisord to theirs), so the final sweep finds
 * every process of this run by its environment, whoever started it, and
 * nothing else.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, readlink } from 'node:fs/promises';
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

export { sleep };

export const TOKEN_VAR = 'RELINK_BENCH_RUN';

export interface RunResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

export class Janitor {
  readonly token = `${process.pid}-${randomBytes(6).toString('hex')}`;
  readonly #tasks: Array<{ what: string; fn: () => Promise<unknown> }> = [];

  /** The environment for a child: ours, the run token, and `extra`. */
  env(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
    return { ...process.env, ...extra, [TOKEN_VAR]: this.token };
  }

  /** Run `fn` at cleanup (last registered, first run). */
  defer(what: string, fn: () => Promise<unknown>): void {
    this.#tasks.push({ what, fn });
  }

  /** Start a long-running child; it is killed at cleanup if still running. */
  spawn(cmd: string, args: readonly string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn(cmd, args, { stdio: 'ignore', ...opts, env: this.env(opts.env as Record<string, string> | undefined) });
    child.on('error', () => undefined);
    this.defer(`${cmd} (pid ${child.pid ?? '?'})`, () => stopChild(child));
    return child;
  }

  /** Run a command to completion (bounded by `timeoutMs`) and collect its output. */
  run(cmd: string, args: readonly string[], opts: SpawnOptions & { timeoutMs?: number } = {}): Promise<RunResult> {
    const started = performance.now();
    return new Promise((resolve) => {
      const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts, env: this.env(opts.env as Record<string, string> | undefined) });
      let stdout = '';
      let stderr = '';
      child.stdout?.setEncoding('utf8').on('data', (c: string) => { stdout += c; });
      child.stderr?.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
      const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
      child.once('error', (err) => {
        clearTimeout(timer);
        resolve({ code: null, signal: null, stdout, stderr: stderr + String(err), ms: performance.now() - started });
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout, stderr, ms: performance.now() - started });
      });
    });
  }

  /**
   * Run every deferred task, then end any process still carrying this run's
   * token (TERM, then KILL). Returns what was still running before the
   * sweep's KILL and what survived it (which should be nothing).
   */
  async cleanup(): Promise<{ swept: string[]; survivors: string[] }> {
    while (this.#tasks.length > 0) {
      const t = this.#tasks.pop()!;
      await Promise.race([t.fn().catch(() => undefined), sleep(15_000)]);
    }
    const swept = await this.find();
    for (const p of swept) kill(p.pid, 'SIGTERM');
    const deadline = Date.now() + 3_000;
    while (Date.now() < deadline && (await this.find()).length > 0) await sleep(50);
    for (const p of await this.find()) kill(p.pid, 'SIGKILL');
    await sleep(200);
    const survivors = await this.find();
    return { swept: swept.map((p) => `${p.pid} ${p.comm}`), survivors: survivors.map((p) => `${p.pid} ${p.comm}`) };
  }

  /** Live processes (not zombies) carrying this run's token. */
  async find(): Promise<Array<{ pid: number; comm: string }>> {
    const needle = `${TOKEN_VAR}=${this.token}\0`;
    const out: Array<{ pid: number; comm: string }> = [];
    for (const name of await readdir('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      if (pid === process.pid) continue;
      try {
        const env = await readFile(`/proc/${pid}/environ`, 'latin1');
        if (!env.includes(needle)) continue;
        const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
        if (/\) [ZX] /.test(stat)) continue;
        out.push({ pid, comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')) });
      } catch {
        // gone, or not ours to read
      }
    }
    return out;
  }
}

/** Monotonic milliseconds on CLOCK_MONOTONIC, the clock the stamp app reads. */
export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export function kill(pid: number, signal: NodeJS.Signals): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 1) return false;
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** TERM a child and wait for it; KILL after `graceMs`. */
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const done = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (!done) {
    child.kill('SIGKILL');
    await exited;
  }
}

/** Is `pid` alive (a zombie counts as gone)? */
export async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return !/\) [ZX] /.test(stat);
  } catch {
    return false;
  }
}

/** Has `pid` installed a handler for `signal` yet (SigCgt in /proc/PID/status)? */
export async function catches(pid: number, signal: NodeJS.Signals): Promise<boolean> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const mask = /^SigCgt:\s+([0-9a-f]+)/m.exec(status)?.[1];
  const num = osConstants.signals[signal];
  return mask !== undefined && ((BigInt(`0x${mask}`) >> BigInt(num - 1)) & 1n) === 1n;
}

/** Poll `probe` until truthy; throw naming `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => T | Promise<T>, timeoutMs = 15_000, intervalMs = 10): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v as NonNullable<T>;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** Does 127.0.0.1:port accept a connection right now? */
export function accepts(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** One HTTP/1.1 GET with Connection: close over a fresh socket: status and body, or an error. */
export function httpGet(port: number, pathname = '/', timeoutMs = 1_000): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    let settled = false;
    const done = (r: { status: number; body: string } | { error: string }): void => {
      if (settled) return;
      settled = true;
      s.destroy();
      resolve(r);
    };
    s.setEncoding('utf8');
    s.setTimeout(timeoutMs, () => done({ error: 'timeout' }));
    s.once('connect', () => s.write(`GET ${pathname} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`));
    s.on('data', (c: string) => { buf += c; });
    s.once('error', (err: NodeJS.ErrnoException) => done({ error: err.code ?? err.message }));
    s.once('end', () => {
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(buf);
      if (m === null) return done({ error: buf === '' ? 'empty reply' : 'bad reply' });
      const i = buf.indexOf('\r\n\r\n');
      done({ status: Number(m[1]), body: i < 0 ? '' : buf.slice(i + 4) });
    });
  });
}

export interface ProcSample {
  readonly rssKb: number;
  /**
   * Private_Clean + Private_Dirty (/proc/PID/smaps_rollup): the pages no
   * other process maps. RSS also counts the node binary's code pages, which
   * every Node.js process on the machine shares.
   */
  readonly privateKb: number;
  /** utime + stime of all threads, in clock ticks. */
  readonly cpuTicks: number;
  /** Voluntary + involuntary context switches of all threads: how often it woke up. */
  readonly switches: number;
  readonly at: number;
}

const CLK_TCK = 100; // Linux on x86-64 and arm64: sysconf(_SC_CLK_TCK)

/** A sample's CPU time (utime + stime) in ms. */
export function cpuMs(s: ProcSample): number {
  return (s.cpuTicks * 1000) / CLK_TCK;
}

export async function sampleProc(pid: number): Promise<ProcSample> {
  const [status, stat] = await Promise.all([readFile(`/proc/${pid}/status`, 'utf8'), readFile(`/proc/${pid}/stat`, 'utf8')]);
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const cpuTicks = Number(rest[11]) + Number(rest[12]);
  const rssKb = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? Number.NaN);
  const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => '');
  const privateKb = rollup === '' ? Number.NaN
    : Number(/^Private_Clean:\s+(\d+)/m.exec(rollup)?.[1] ?? Number.NaN) + Number(/^Private_Dirty:\s+(\d+)/m.exec(rollup)?.[1] ?? Number.NaN);
  let switches = 0;
  for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const t = await readFile(`/proc/${pid}/task/${tid}/status`, 'utf8').catch(() => '');
    switches += Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(t)?.[1] ?? 0) + Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(t)?.[1] ?? 0);
  }
  return { rssKb, privateKb, cpuTicks, switches, at: performance.now() };
}

export interface Idle {
  readonly rssMb: number;
  /** Memory no other process shares (see ProcSample.privateKb). */
  readonly privateMb: number;
  /** CPU time used per minute of wall time, in ms (1 % of one core = 600 ms/min). */
  readonly cpuMsPerMin: number;
  readonly wakeupsPerSec: number;
  readonly seconds: number;
}

/**
 * RSS at the end, CPU and wake-ups over `seconds` of doing nothing. Sampling
 * itself reads a few /proc files at the start and the end only.
 */
export async function measureIdle(pid: number, seconds: number): Promise<Idle> {
  const a = await sampleProc(pid);
  await sleep(seconds * 1000);
  const b = await sampleProc(pid);
  const wall = (b.at - a.at) / 1000;
  return {
    rssMb: b.rssKb / 1024,
    privateMb: b.privateKb / 1024,
    cpuMsPerMin: (((b.cpuTicks - a.cpuTicks) * 1000) / CLK_TCK / wall) * 60,
    wakeupsPerSec: (b.switches - a.switches) / wall,
    seconds: wall,
  };
}

/**
 * Every live process whose executable lies under `dir`, or, with `cwd`, also
 * every one working in `dir` or below it (an interpreted app's executable is
 * its interpreter: /usr/bin/python3 for the Python apps and gunicorn).
 */
export async function processesUnder(dir: string, cwd = false): Promise<number[]> {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const inside = (p: string): boolean => p.startsWith(prefix) || p === dir;
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const exe = await readlink(`/proc/${name}/exe`);
      const hit = exe.startsWith(prefix) || (cwd && inside(await readlink(`/proc/${name}/cwd`)));
      if (hit && (await alive(Number(name)))) out.push(Number(name));
    } catch {
      // gone or kernel thread
    }
  }
  return out;
}

/** TERM every process running a binary from `dir` (with `cwd`: or working in it), KILL what is left after `graceMs`. */
export async function killUnder(dir: string, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5_000, cwd = false): Promise<void> {
  for (const pid of await processesUnder(dir, cwd)) kill(pid, signal);
  const deadline = performance.now() + graceMs;
  while (performance.now() < deadline && (await processesUnder(dir, cwd)).length > 0) await sleep(20);
  for (const pid of await processesUnder(dir, cwd)) kill(pid, 'SIGKILL');
}
