/**
 * Health probes: an HTTP GET that must answer 2xx, or a TCP connect that
 * must be accepted. One probe is one attempt with its own timeout; the
 * orchestrator retries them until its deadline.
 */
import http from 'node:http';
import net from 'node:net';

export type Probe = { readonly url: string } | { readonly tcp: string };

export interface ProbeResult {
  readonly ok: boolean;
  /** "HTTP 200", "HTTP 503", "ECONNREFUSED", "timeout after 1000 ms", "connected". */
  readonly detail: string;
}

export function describeProbe(probe: Probe): string {
  return 'url' in probe ? `GET ${probe.url}` : `TCP ${probe.tcp}`;
}

export function probeOnce(probe: Probe, timeoutMs: number): Promise<ProbeResult> {
  return 'url' in probe ? httpProbe(probe.url, timeoutMs) : tcpProbe(probe.tcp, timeoutMs);
}

function httpProbe(url: string, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    // A fresh connection each time (no keep-alive): the probe must reach
    // whichever process accepts now, not one that is draining.
    const req = http.get(url, { agent: false, headers: { connection: 'close', 'user-agent': 'relink-health' } }, (res) => {
      res.resume();
      const code = res.statusCode ?? 0;
      resolve({ ok: code >= 200 && code < 300, detail: `HTTP ${code}` });
    });
    req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error(`timeout after ${timeoutMs} ms`), { code: 'ETIMEDOUT_PROBE' })));
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ ok: false, detail: err.code === 'ETIMEDOUT_PROBE' ? err.message : err.code ?? err.message }));
  });
}

/** "host:port" or "[v6]:port". */
export function parseHostPort(spec: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(spec);
  if (m === null) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (m[1] ?? m[2]) as string, port };
}

function tcpProbe(spec: string, timeoutMs: number): Promise<ProbeResult> {
  const target = parseHostPort(spec);
  if (target === undefined) return Promise.resolve({ ok: false, detail: `not host:port: ${spec}` });
  return new Promise((resolve) => {
    const sock = net.connect(target);
    const done = (r: ProbeResult) => {
      sock.destroy();
      resolve(r);
    };
    sock.setTimeout(timeoutMs, () => done({ ok: false, detail: `timeout after ${timeoutMs} ms` }));
    sock.once('connect', () => done({ ok: true, detail: 'connected' }));
    sock.once('error', (err: NodeJS.ErrnoException) => done({ ok: false, detail: err.code ?? err.message }));
  });
}
