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
  /**
   * No connection was made: no process of the generation judged was seen
   * waiting for connections yet, so one of an older generation sharing the
   * socket would have taken it (src/effects.ts). Not counted either way.
   */
  readonly notSent?: boolean;
  /**
   * The connection was accepted by a process of the generation judged
   * (attributed probes only): a failure is that generation's own answer,
   * whatever other probes an older generation took.
   */
  readonly judged?: boolean;
  /**
   * The connection was accepted by a process that is not the app's while
   * the generation judged listens on nothing (attributed probes only): it
   * answers for the app (a program holding the app's port), and fails.
   */
  readonly foreign?: boolean;
}

/**
 * Who accepted a probe's connection, by the inode of its server-side socket
 * (src/proc.ts acceptedInode): "judged" (a process of the generation being
 * judged), "older" (a process of an older generation of the app), or
 * "unknown" (anyone else: a proxy, another host). Undefined: no attribution.
 */
export type Acceptor = (inode: string) => Accepted | Promise<Accepted>;

/**
 * "judged", "older", "unknown" (a process not the app's: a proxy in front
 * of it, counted as the app's answer), or "foreign" (a process not the
 * app's answering for it: a failure, src/effects.ts says by whom).
 */
export type Accepted = 'judged' | 'older' | 'unknown' | 'foreign';



export function describeProbe(probe: Probe): string {
  return 'url' in probe ? `GET ${probe.url}` : `TCP ${probe.tcp}`;
}

export function probeOnce(probe: Probe, timeoutMs: number, acceptor?: Acceptor): Promise<ProbeResult> {
  if (acceptor !== undefined) return attributedProbe(probe, timeoutMs, acceptor);
  return 'url' in probe ? httpProbe(probe.url, timeoutMs) : tcpProbe(probe.tcp, timeoutMs);
}

/** How often a TCP probe looks whether its connection was accepted yet (ms). */
const ACCEPTED_POLL_MS = 20;

/**
 * When a probe first looks who accepted its connection (ms after connect):
 * each look is an `ss`, and one made as the connection is established
 * finds it still in the accept queue. The server holds it open meanwhile
 * (the request is not complete).
 */
const FIRST_LOOK_MS = 5;

/** The host and port a probe connects to (an http URL without a port: 80); undefined for a `tcp` that is not host:port. */
function probeTarget(probe: Probe): { host: string; port: number } | undefined {
  if (!('url' in probe)) return parseHostPort(probe.tcp);
  const u = new URL(probe.url);
  return { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(u.port || 80) };
}

/** The TCP port a probe connects to; undefined without a probe. */
export function probePort(probe: Probe | undefined): number | undefined {
  return probe === undefined ? undefined : probeTarget(probe)?.port;
}

/**
 * A probe that knows who answered it. With a listening socket shared by
 * two generations (the agent's held sockets, or an app's own upgrade) a
 * plain probe may be answered by the old one, which proves nothing about
 * the new. So the connection is made first; once a process has accepted it
 * (looked at after 5, 10, 20, 20 ... ms), which one holds its server
 * side is asked (src/proc.ts acceptedInode, then `acceptor`); only then is
 * the request sent. Accepted by an older generation: `older`, not counted
 * either way. Never accepted within the timeout: a failure.
 */
function attributedProbe(probe: Probe, timeoutMs: number, acceptor: Acceptor): Promise<ProbeResult> {
  const target = probeTarget(probe);
  if (target === undefined) return Promise.resolve({ ok: false, detail: 'not host:port' });
  return new Promise((resolve) => {
    const sock = net.connect(target);
    let settled = false;
    /** Accepted by a process of the generation judged: whatever follows (an answer, a timeout) is that generation's. */
    let judged = false;
    const done = (r: ProbeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(judged ? { ...r, judged } : r);
    };
    const timer = setTimeout(() => done({ ok: false, detail: `timeout after ${timeoutMs} ms` }), timeoutMs);
    sock.once('error', (err: NodeJS.ErrnoException) => done({ ok: false, detail: err.code ?? err.message }));
    /** Who holds the server side now; undefined: not accepted yet. */
    const whose = async (): Promise<Accepted | undefined> => {
      const inode = await acceptedInode(target.port, sock.localPort ?? 0, sock.remoteFamily === 'IPv6' ? 6 : 4);
      if (inode === '0') return undefined;
      return inode === undefined ? 'unknown' : await acceptor(inode);
    };
    sock.once('connect', () => {
      // Who accepted it is asked before the request is complete: the server
      // holds the connection open, waiting for the rest (one that answers and
      // closes at once could otherwise be gone before it is asked about).
      // The request's first bytes go out at once: a listener with deferred
      // accept (TCP_DEFER_ACCEPT: unicorn's default, nginx's "deferred")
      // hands a connection to accept() only once data has arrived.
      if ('url' in probe) sock.write('GET ');
      let waitMs = FIRST_LOOK_MS * 2;
      const look = async (): Promise<void> => {
        const who = await whose();
        if (settled) return;
        if (who === undefined) {
          setTimeout(() => void look(), waitMs);
          waitMs = Math.min(waitMs * 2, ACCEPTED_POLL_MS);
          return;
        }
        judged = who === 'judged';
        if (who === 'older') done({ ok: false, detail: 'accepted by an older generation', older: true });
        else if (who === 'foreign') done({ ok: false, detail: 'accepted by a process that is not the app\'s', foreign: true });
        else if (!('url' in probe)) done({ ok: true, detail: 'connected' });
        else request(probe.url);
      };
      setTimeout(() => void look(), FIRST_LOOK_MS);
    });
    // The request by hand on the connection made (a plain HTTP/1.1 GET);
    // only the status line is read.
    const request = (url: string): void => {
      const u = new URL(url);
      let head = '';
      sock.on('data', (chunk: Buffer) => {
        head += chunk.toString('latin1');
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
        if (m !== null) done({ ok: Number(m[1]) >= 200 && Number(m[1]) < 300, detail: `HTTP ${m[1]}` });
        else if (head.includes('\r\n') || head.length > 1024) done({ ok: false, detail: 'not an HTTP answer' });
      });
      sock.once('end', () => done({ ok: false, detail: 'closed without an answer' }));
      sock.write(`${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nConnection: close\r\nUser-Agent: relink-health\r\n\r\n`);
    };
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
 * When the app first answered its probe (ms since the epoch; any HTTP
 * status counts), trying every 10 ms until `deadlineMs` (Date.now() ms);
 * undefined if it did not by then or there is no probe (a connection to a
 * held socket succeeds at once, so it measures nothing). What a restart's
 * gap is measured with (journal `outageMs`, `queuedMs`).
 */
export async function firstAnswer(probe: Probe | undefined, deadlineMs: number): Promise<number | undefined> {
  if (probe === undefined) return undefined;
  while (Date.now() < deadlineMs) {
    const r = await probeOnce(probe, Math.max(1, Math.min(1_000, deadlineMs - Date.now())));
    if (r.ok || r.detail.startsWith('HTTP ')) return Date.now();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return undefined;
}
