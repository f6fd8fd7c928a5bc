/**
 * An open-loop load at a fixed rate, for latency: request i is due at
 * start + i / rate whatever happened to the ones before, and its latency
 * runs from when it was due (not from when it could be sent) to the end of
 * the reply. wrk is closed-loop (each connection sends its next request
 * when the last is answered): at full speed its latency is the length of
 * the queue it keeps full, and a stall is seen by one request per
 * connection only ("coordinated omission", wrk2's README). Every request
 * is a new connection with `Connection: close`, as wrk's are in the bench.
 *
 * Run as its own process (so its work is not the bench's event loop):
 *   node --import tsx bench/lib/openload.ts PORT RATE_PER_SECOND
 * It stops on SIGINT or when stdin closes and prints one JSON line
 * (OpenLoadResult) on stdout.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export interface OpenLoadResult {
  /** Requests that came due. */
  readonly due: number;
  readonly answered: number;
  readonly seconds: number;
  /** Connections refused or reset before a reply, and other socket errors. */
  readonly connect: number;
  readonly read: number;
  /** No whole reply within 2 s of being due. */
  readonly timeout: number;
  readonly non2xx: number;
  /** Latency of the answered requests, ms, from when each was due: nearest-rank percentiles. */
  readonly latency: { readonly p50: number; readonly p90: number; readonly p99: number; readonly max: number };
}

const TIMEOUT_MS = 2_000;

function run(port: number, rate: number): void {
  const start = performance.now();
  const latencies: number[] = [];
  let due = 0;
  let connect = 0;
  let read = 0;
  let timeout = 0;
  let non2xx = 0;
  let stopped = false;
  let open = 0;
  const request = (dueAt: number): void => {
    open += 1;
    let head = '';
    let connected = false;
    let settled = false;
    const s = net.connect(port, '127.0.0.1');
    const settle = (f: () => void): void => {
      if (settled) return;
      settled = true;
      open -= 1;
      clearTimeout(timer);
      f();
      s.destroy();
    };
    const timer = setTimeout(() => settle(() => { timeout += 1; }), Math.max(1, dueAt + TIMEOUT_MS - performance.now()));
    s.setNoDelay(true);
    s.on('connect', () => {
      connected = true;
      s.write(`GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
    });
    s.on('data', (c: Buffer) => { if (head.length < 16) head += c.toString('latin1', 0, Math.min(c.length, 16)); });
    s.on('error', () => settle(() => { if (connected) read += 1; else connect += 1; }));
    s.on('close', () => settle(() => {
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
      if (m === null) {
        read += 1;
        return;
      }
      if (Number(m[1]) < 200 || Number(m[1]) >= 400) non2xx += 1;
      latencies.push(performance.now() - dueAt);
    }));
  };
  const tick = setInterval(() => {
    if (stopped) return;
    const now = performance.now();
    const target = Math.floor(((now - start) * rate) / 1000);
    for (; due < target; due++) request(start + (due * 1000) / rate);
  }, 1);
  const finish = (): void => {
    if (stopped) return;
    stopped = true;
    clearInterval(tick);
    const seconds = (performance.now() - start) / 1000;
    // Those still open get their time to finish (up to the 2 s timeout).
    const done = setInterval(() => {
      if (open > 0) return;
      clearInterval(done);
      const sorted = latencies.sort((a, b) => a - b);
      const at = (q: number): number => (sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.ceil((q / 100) * sorted.length) - 1)]!);
      const result: OpenLoadResult = {
        due, answered: sorted.length, seconds, connect, read, timeout, non2xx,
        latency: { p50: at(50), p90: at(90), p99: at(99), max: sorted.at(-1) ?? Number.NaN },
      };
      process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
    }, 10);
  };
  process.once('SIGINT', finish);
  process.stdin.once('end', finish).once('close', finish).resume();
}

const port = Number(process.argv[2]);
const rate = Number(process.argv[3]);
if (!Number.isInteger(port) || !(rate > 0)) {
  process.stderr.write('usage: openload.ts PORT RATE_PER_SECOND\n');
  process.exit(2);
}
run(port, rate);
