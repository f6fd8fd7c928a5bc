/**
 * Load during deploys: wrk with `Connection: close`, so every request is a
 * new connection and a refused connection shows as a socket error (with
 * keep-alive, a draining server's idle connections would show as read
 * errors even when nothing was refused; DESIGN.md). Beside it, a slow
 * prober (one request every 10 ms) that records when the app stopped and
 * started answering, so an outage is also given in milliseconds: wrk's
 * error counts depend on how fast it retries a refused connection.
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { OpenLoadResult } from './openload.js';
import { httpGet, nowMs, sleep, type Janitor } from './procs.js';

export interface WrkResult {
  readonly requests: number;
  readonly seconds: number;
  readonly connect: number;
  readonly read: number;
  readonly write: number;
  readonly timeout: number;
  readonly non2xx: number;
  /**
   * wrk's latency percentiles (--latency) over the requests that were
   * answered, in ms: from wrk writing the request to the whole reply,
   * so a connection left waiting in a listen backlog counts in it. NaN when
   * wrk printed none.
   */
  readonly latency: { readonly p50: number; readonly p90: number; readonly p99: number };
  readonly raw: string;
}

export function failed(w: WrkResult): number {
  return w.connect + w.read + w.write + w.timeout + w.non2xx;
}

export class Wrk {
  readonly #child: ChildProcess;
  #out = '';
  readonly #closed: Promise<void>;

  /** Start wrk on `url` for at most `maxSeconds`; stop() ends it earlier. */
  constructor(j: Janitor, url: string, maxSeconds: number, connections = 4) {
    this.#child = j.spawn('wrk', ['-t1', `-c${connections}`, `-d${maxSeconds}s`, '--timeout', '2s', '--latency', '-H', 'Connection: close', url], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child.stdout!.setEncoding('utf8').on('data', (c: string) => { this.#out += c; });
    this.#child.stderr!.setEncoding('utf8').on('data', (c: string) => { this.#out += c; });
    this.#closed = new Promise((resolve) => this.#child.once('close', () => resolve()));
  }

  /** SIGINT makes wrk stop and print its summary for the time it ran. */
  async stop(): Promise<WrkResult> {
    if (this.#child.exitCode === null) this.#child.kill('SIGINT');
    await Promise.race([this.#closed, sleep(10_000)]);
    return parseWrk(this.#out);
  }
}

export function parseWrk(out: string): WrkResult {
  const num = (re: RegExp): number => Number(re.exec(out)?.[1] ?? 0);
  const req = /(\d+) requests in ([\d.]+)(m?s|m)\b/.exec(out);
  const dur = req === null ? Number.NaN : Number(req[2]) * (req[3] === 'ms' ? 0.001 : req[3] === 'm' ? 60 : 1);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    requests: req === null ? Number.NaN : Number(req[1]),
    seconds: dur,
    connect: Number(sock?.[1] ?? 0),
    read: Number(sock?.[2] ?? 0),
    write: Number(sock?.[3] ?? 0),
    timeout: Number(sock?.[4] ?? 0),
    non2xx: num(/Non-2xx or 3xx responses: (\d+)/),
    latency: { p50: percentile(out, 50), p90: percentile(out, 90), p99: percentile(out, 99) },
    raw: out,
  };
}

/** One line of wrk's "Latency Distribution" (`     99%    2.86ms`), in ms. */
function percentile(out: string, q: number): number {
  const m = new RegExp(`^\\s*${q}%\\s+([\\d.]+)(us|ms|s|m|h)\\s*$`, 'm').exec(out);
  if (m === null) return Number.NaN;
  const scale: Record<string, number> = { us: 0.001, ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };
  return Number(m[1]) * scale[m[2]!]!;
}

export interface ProbeResult {
  readonly probes: number;
  readonly failures: number;
  /** Longest stretch from a failed probe to the next answered one (ms). */
  readonly longestOutageMs: number;
  /** All such stretches added up (ms). */
  readonly totalOutageMs: number;
}

export class Prober {
  readonly #port: number;
  #stop = false;
  readonly #done: Promise<ProbeResult>;
  /** Waiting for a reply whose body holds `needle` (servedBy). */
  #waiters: Array<{ readonly needle: string; readonly resolve: (atMs: number) => void }> = [];

  constructor(port: number, intervalMs = 10) {
    this.#port = port;
    this.#done = this.#loop(intervalMs);
  }

  async #loop(intervalMs: number): Promise<ProbeResult> {
    let probes = 0;
    let failures = 0;
    let longest = 0;
    let total = 0;
    let downSince: number | undefined;
    while (!this.#stop) {
      const t = nowMs();
      const r = await httpGet(this.#port, '/', 2_000);
      probes += 1;
      const ok = 'status' in r && r.status >= 200 && r.status < 300;
      if (ok && this.#waiters.length > 0) {
        const at = nowMs();
        this.#waiters = this.#waiters.filter((w) => {
          if (!r.body.includes(w.needle)) return true;
          w.resolve(at);
          return false;
        });
      }
      if (!ok) {
        failures += 1;
        downSince ??= t;
      } else if (downSince !== undefined) {
        longest = Math.max(longest, t - downSince);
        total += t - downSince;
        downSince = undefined;
      }
      await sleep(intervalMs);
    }
    if (downSince !== undefined) {
      const open = nowMs() - downSince;
      longest = Math.max(longest, open);
      total += open;
    }
    return { probes, failures, longestOutageMs: longest, totalOutageMs: total };
  }

  /**
   * When a probe's reply first holds `needle` (ms, nowMs()), after this
   * call; undefined after `timeoutMs`. The probes already sent every
   * intervalMs tell it: no extra requests, so a row with deploys carries
   * the same measuring load as its control (a separate 5 ms poll for the
   * new release added 200 requests a second to deploy rows only).
   */
  servedBy(needle: string, timeoutMs: number): Promise<number | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        resolve(undefined);
      }, timeoutMs);
      const waiter = { needle, resolve: (at: number) => { clearTimeout(timer); resolve(at); } };
      this.#waiters.push(waiter);
    });
  }

  stop(): Promise<ProbeResult> {
    this.#stop = true;
    return this.#done;
  }
}

/**
 * The open-loop load at a fixed rate (bench/lib/openload.ts, its own
 * process), read back in wrk's shape: `requests` are the answered ones,
 * `write` is always 0 (a request is written once connected), latency from
 * when each request was due.
 */
export class OpenLoad {
  readonly #child: ChildProcess;
  #out = '';
  #err = '';
  readonly #closed: Promise<void>;

  constructor(j: Janitor, port: number, perSecond: number) {
    const script = fileURLToPath(new URL('./openload.ts', import.meta.url));
    this.#child = j.spawn(process.execPath, ['--import', 'tsx', script, String(port), String(perSecond)], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child.stdout!.setEncoding('utf8').on('data', (c: string) => { this.#out += c; });
    this.#child.stderr!.setEncoding('utf8').on('data', (c: string) => { this.#err += c; });
    this.#closed = new Promise((resolve) => this.#child.once('close', () => resolve()));
  }

  /** Stop sending; the requests still open get up to their 2 s timeout. */
  async stop(): Promise<WrkResult> {
    this.#child.stdin!.end();
    await Promise.race([this.#closed, sleep(10_000)]);
    let r: OpenLoadResult;
    try {
      r = JSON.parse(this.#out.trim().split('\n').at(-1) ?? '') as OpenLoadResult;
    } catch {
      throw new Error(`could not read the open-loop load's output: ${(this.#out + this.#err).slice(0, 300)}`);
    }
    return {
      requests: r.answered, seconds: r.seconds, connect: r.connect, read: r.read, write: 0, timeout: r.timeout, non2xx: r.non2xx,
      latency: { p50: r.latency.p50, p90: r.latency.p90, p99: r.latency.p99 }, raw: this.#out,
    };
  }
}
