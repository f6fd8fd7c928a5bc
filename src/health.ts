/**
 * Health probes: an HTTP GET that must answer 2xx, or a TCP connect that
 * must be accepted. One probe is one attempt with its own timeout; the
 * orchestrator retries them until its deadline.
 */
import http from 'node:http';
import net from 'node:net';
import { acceptedInode } from './proc.js';

export type Probe = { readonly url: string } | { readonly tcp: string };

export interface ProbeResult {
  readonly ok: boolean;
  /** "HTTP 200", "HTTP 503", "ECONNREFUSED", "timeout after 1000 ms", "connected". */
  readonly detail: string;
  /**
   * The connection was accepted by a process of an older generation (one
   * sharing the listening socket with the generation judged): the answer
   * says nothing about the new one, and is not counted either way.
   */
  readonly older?: boolean;
}

/**
 * Who accepted a probe's connection, by the inode of its server-side socket
 * (src/proc.ts acceptedInode): "judged" (a process of the generation being
 * judged), "older" (a process of an older generation of the app), or
 * "unknown" (anyone else: a proxy, another host). Undefined: no attribution.
 */
export type Acceptor = (inode: string) => 'judged' | 'older' | 'unknown';

/** How long a probe waits for its connection to be accepted before it says who did (ms between looks). */
const ACCEPT_POLL_MS = 5;

export function describeProbe(probe: Probe): string {
  return 'url' in probe ? `GET ${probe.url}` : `TCP ${probe.tcp}`;
}

export function probeOnce(probe: Probe, timeoutMs: number, acceptor?: Acceptor): Promise<ProbeResult> {
  if (acceptor !== undefined) return attributedProbe(probe, timeoutMs, acceptor);
  return 'url' in probe ? httpProbe(probe.url, timeoutMs) : tcpProbe(probe.tcp, timeoutMs);
}

/** "::1" -> "0:0:0:0:0:0:0:1", as /proc/net/tcp6 spells it (src/proc.ts procAddress); IPv4 unchanged. */
function procSpelling(ip: string, port: number): string {
  if (!ip.includes(':')) return `${ip}:${port}`;
  const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (v4 !== null) return `${v4[1]}:${port}`;
  const [head, tail] = ip.split('::') as [string, string | undefined];
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return `[${groups.map((g) => Number.parseInt(g, 16).toString(16)).join(':')}]:${port}`;
}

/**
 * A probe that knows who answered it. With a listening socket shared by
 * two generations (the agent's held sockets, or an app's own upgrade) a
 * plain probe may be answered by the old one, which proves nothing about
 * the new. So the connection is made first; once a process has accepted it
 * (its server-side socket has an inode) the acceptor is asked who that is;
 * only then is the request sent. Accepted by an older generation: `older`,
 * not counted. Never accepted within the timeout: a failure ("not accepted").
 */
function attributedProbe(probe: Probe, timeoutMs: number, acceptor: Acceptor): Promise<ProbeResult> {
  const target = 'url' in probe ? (() => {
    const u = new URL(probe.url);
    return { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(u.port || 80) };
  })() : parseHostPort(probe.tcp);
  if (target === undefined) return Promise.resolve({ ok: false, detail: 'not host:port' });
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve) => {
    const sock = net.connect(target);
    let settled = false;
    const done = (r: ProbeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ ok: false, detail: `timeout after ${timeoutMs} ms` }), timeoutMs);
    sock.once('error', (err: NodeJS.ErrnoException) => done({ ok: false, detail: err.code ?? err.message }));
    sock.once('connect', () => {
      const server = procSpelling(sock.remoteAddress ?? '', sock.remotePort ?? 0);
      const client = procSpelling(sock.localAddress ?? '', sock.localPort ?? 0);
      const look = (): void => {
        if (settled) return;
        const inode = acceptedInode(server, client);
        if (inode === '0') {
          if (Date.now() >= deadline) done({ ok: false, detail: `not accepted within ${timeoutMs} ms` });
          else setTimeout(look, ACCEPT_POLL_MS);
          return;
        }
        const who = inode === undefined ? 'unknown' : acceptor(inode);
        if (who === 'older') {
          done({ ok: false, detail: 'accepted by an older generation', older: true });
          return;
        }
        if (!('url' in probe)) {
          done({ ok: true, detail: 'connected' });
          return;
        }
        // The request by hand on the connection already made (a plain
        // HTTP/1.1 GET; only the status line is read).
        const u = new URL(probe.url);
        let head = '';
        sock.on('data', (chunk: Buffer) => {
          head += chunk.toString('latin1');
          const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
          if (m !== null) done({ ok: Number(m[1]) >= 200 && Number(m[1]) < 300, detail: `HTTP ${m[1]}` });
          else if (head.includes('\r\n') || head.length > 1024) done({ ok: false, detail: 'not an HTTP answer' });
        });
        sock.once('end', () => done({ ok: false, detail: 'closed without an answer' }));
        sock.write(`GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nConnection: close\r\nUser-Agent: relink-health\r\n\r\n`);
      };
      look();
    });
  });
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

/**
 * When a connection to `target` ("host:port") is first accepted by a
 * process (ms since the epoch), trying every few ms until `deadlineMs`
 * (Date.now() ms); undefined if none was by then. Each try connects, waits
 * until a process has accepted the connection (src/proc.ts acceptedInode),
 * and closes it: what a restart's gap is measured with (journal `outageMs`,
 * `queuedMs`). A refused connection is tried again 5 ms later.
 */
export async function firstAccepted(target: string, deadlineMs: number): Promise<number | undefined> {
  const to = parseHostPort(target);
  if (to === undefined) return undefined;
  while (Date.now() < deadlineMs) {
    const at = await new Promise<number | undefined>((resolve) => {
      const sock = net.connect(to);
      const done = (r: number | undefined) => {
        sock.destroy();
        resolve(r);
      };
      sock.once('error', () => done(undefined));
      sock.once('connect', () => {
        const server = procSpelling(sock.remoteAddress ?? '', sock.remotePort ?? 0);
        const client = procSpelling(sock.localAddress ?? '', sock.localPort ?? 0);
        const look = (): void => {
          const inode = acceptedInode(server, client);
          if (inode !== '0') done(Date.now());
          else if (Date.now() >= deadlineMs) done(undefined);
          else setTimeout(look, ACCEPT_POLL_MS);
        };
        look();
      });
    });
    if (at !== undefined) return at;
    await new Promise((r) => setTimeout(r, ACCEPT_POLL_MS));
  }
  return undefined;
}
