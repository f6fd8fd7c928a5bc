/**
 * Listening sockets passed to the agent by systemd, and keeping every
 * socket the agent holds out of the children it was not meant for.
 *
 * The config names each app's sockets by address ("sockets":
 * ["127.0.0.1:8080", "[::1]:8080", "unix:/run/web/web.sock"]). Under
 * systemd they come from socket units, one per app, each naming the agent's
 * service (`Service=relink.service`) and the app (`FileDescriptorName=web`):
 * systemd keeps them open while the agent restarts, and passes them to
 * every new agent by the socket-activation protocol (sd_listen_fds(3):
 * LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES; fds from 3). The agent pairs each
 * configured address with a passed fd by its name and by the address the fd
 * really listens on (read from /proc, not trusted from the unit file).
 * systemd/relink-web.socket is the example unit; README, "Sockets held
 * across agent restarts (systemd)".
 *
 * Inheritance, measured on Node 20.20 (libuv 1.46) with test/listenfds.test.ts:
 * - systemd clears FD_CLOEXEC on the fds it passes, but Node's start-up
 *   (uv_disable_stdio_inheritance) sets it again on fds 0-15, and on every
 *   fd above 15 up to the first one not open. systemd passes fds 3, 4, ...
 *   without a gap, so in the agent they are all close-on-exec: a child
 *   spawned without them in its stdio array does not inherit them.
 * - An fd of the agent without FD_CLOEXEC (one inherited above such a gap)
 *   reaches every child at its own number: libuv's fork/exec closes
 *   nothing, and 'ignore' at a stdio index >= 3 leaves that fd number as it
 *   is (at 0-2 it opens /dev/null). Only an entry at that index replaces it.
 * - An fd given in the stdio array reaches the child at that index with
 *   FD_CLOEXEC cleared, whatever its flag in the agent; the agent's own copy
 *   (any number) is not inherited unless it lacks FD_CLOEXEC.
 * childStdio() builds the array from those facts.
 */
import { openSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { RelinkError } from './errors.js';
import { fdSocketInode, socketTable, type SocketEntry } from './proc.js';

/** A listen address of the config: an IP literal and a port, or a unix socket's path. */
export type ListenAddress =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number; readonly family: 4 | 6 }
  | { readonly kind: 'unix'; readonly path: string };

const EXAMPLES = '"127.0.0.1:8080", "[::1]:8080" or "unix:/run/web/web.sock"';

/**
 * The longest unix socket path bind(2) takes: sun_path holds 108 bytes on
 * Linux, one of them the terminating NUL.
 */
const UNIX_PATH_MAX = 107;

/** The address, or the rule it breaks (a sentence for the operator). */
function parse(s: string): ListenAddress | string {
  if (typeof s !== 'string' || s.trim() === '') return `must be a listen address: ${EXAMPLES}`;
  if (s !== s.trim()) return 'must not begin or end with white space';
  if (s.startsWith('unix:')) {
    const p = s.slice('unix:'.length);
    if (!p.startsWith('/')) return 'a unix socket needs an absolute path: "unix:/run/web/web.sock"';
    if (p.includes('\0')) return 'a unix socket path cannot contain a NUL byte';
    if (p.endsWith('/')) return 'a unix socket path names a file, not a folder';
    if (path.posix.normalize(p) !== p) return `write the unix socket path without "//", "." or "..": "unix:${path.posix.normalize(p)}"`;
    if (Buffer.byteLength(p) > UNIX_PATH_MAX) return `a unix socket path is at most ${UNIX_PATH_MAX} bytes long (the kernel's limit)`;
    return { kind: 'unix', path: p };
  }
  const colon = s.lastIndexOf(':');
  if (colon <= 0) {
    return /^\d+$/.test(s.replace(/^:/, ''))
      ? 'needs an address before the port: "0.0.0.0:8080" for every IPv4 interface, "[::]:8080" for every IPv6 one, "127.0.0.1:8080" for this host only'
      : `must be a listen address: ${EXAMPLES}`;
  }
  const hostPart = s.slice(0, colon);
  const portPart = s.slice(colon + 1);
  let host: string;
  let family: 4 | 6;
  if (hostPart.startsWith('[') && hostPart.endsWith(']')) {
    const inner = hostPart.slice(1, -1);
    if (inner.includes('%')) return 'an IPv6 zone ("%eth0") is not supported: use a global or loopback address';
    if (!net.isIPv6(inner)) return `${JSON.stringify(inner)} is not an IPv6 address`;
    host = canonicalIPv6(inner);
    family = 6;
  } else if (hostPart.includes('[') || hostPart.includes(']')) {
    return `must be a listen address: ${EXAMPLES}`;
  } else if (hostPart.includes(':')) {
    return `an IPv6 address goes in brackets: "[${hostPart}]:${portPart}"`;
  } else if (net.isIPv4(hostPart)) {
    host = hostPart;
    family = 4;
  } else if (/^\d+(?:\.\d+)*$/.test(hostPart)) {
    return `${JSON.stringify(hostPart)} is not an IPv4 address in dotted decimal (four numbers 0-255, no leading zeros)`;
  } else {
    const local = /^localhost$/i.test(hostPart) ? ': for this host only (what "localhost" means) "127.0.0.1" or "[::1]"' : '';
    return `${JSON.stringify(hostPart)} is a host name: write an IP address${local || ' ("127.0.0.1", "[::1]", "0.0.0.0" or "[::]")'}; a name could resolve differently later`;
  }
  if (!/^[1-9]\d{0,4}$/.test(portPart) || Number(portPart) > 65_535) {
    return portPart === '0'
      ? 'port 0 would pick a different port at every bind: give the port (1-65535)'
      : `the port must be a number 1-65535${portPart === '' ? ' after the ":"' : ''}`;
  }
  return { kind: 'tcp', host, port: Number(portPart), family };
}

/** An IPv6 literal as inet_ntop(3) writes it (RFC 5952: lower case, the longest run of zero groups as "::"). */
function canonicalIPv6(literal: string): string {
  return new net.SocketAddress({ address: literal, family: 'ipv6' }).address;
}

/**
 * Parses one entry of an app's "sockets":
 *   "127.0.0.1:8080", "0.0.0.0:80"         -> { kind: 'tcp', host, port, family: 4 }
 *   "[::1]:8080", "[::]:8080"              -> { kind: 'tcp', host: '::1', port, family: 6 }
 *   "unix:/run/web/web.sock"               -> { kind: 'unix', path: '/run/web/web.sock' }
 * The host is an IP literal (a name could resolve to another address at the
 * next bind, or to several); the port 1-65535; a unix path absolute,
 * normalized, at most 107 bytes. An IPv6 literal is made canonical
 * ("[0:0::1]" is "::1"), so formatListenAddress() of the result is the one
 * spelling to compare addresses by.
 *
 * @throws RelinkError CONFIG_INVALID, key "sockets", whose `rule` says what
 *   the entry breaks (listenAddressProblem() gives the same sentence).
 */
export function parseListenAddress(s: string): ListenAddress {
  const r = parse(s);
  if (typeof r === 'string') {
    throw new RelinkError('CONFIG_INVALID', `"sockets": ${JSON.stringify(s)}: ${r}`, { key: 'sockets', rule: r, found: String(s) });
  }
  return r;
}

/** The rule a "sockets" entry breaks, in words; undefined when parseListenAddress() takes it (for a schema's refinement). */
export function listenAddressProblem(s: string): string | undefined {
  const r = parse(s);
  return typeof r === 'string' ? r : undefined;
}

/**
 * The canonical spelling: "127.0.0.1:8080", "[::1]:8080",
 * "unix:/run/web/web.sock" (what inheritedListeners() reports, and the key
 * to compare a configured address with a passed fd's).
 */
export function formatListenAddress(a: ListenAddress): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return a.family === 6 ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/**
 * The address as Server::Starter names it in SERVER_STARTER_PORT
 * ("127.0.0.1:8080=3;/run/web/web.sock=4"): host:port ("[::1]:8080" for
 * IPv6, as Go's net.JoinHostPort writes it), a unix socket by its bare path.
 */
export function serverStarterName(a: ListenAddress): string {
  return a.kind === 'unix' ? a.path : formatListenAddress(a);
}

/**
 * The address as a systemd socket unit's ListenStream= takes it:
 * "127.0.0.1:8080", "[::1]:8080", "/run/web/web.sock" (systemd.socket(5)).
 */
export function systemdListenStream(a: ListenAddress): string {
  return a.kind === 'unix' ? a.path : formatListenAddress(a);
}

/**
 * A socket's local address (socketTable() in src/proc.ts) in the canonical
 * spelling of formatListenAddress(): "127.0.0.1:8080", "[::1]:8080",
 * "unix:/run/web/web.sock" ("unix:@name" for an abstract socket, which no
 * config address names); undefined for an unbound unix socket.
 */
export function socketAddress(e: SocketEntry): string | undefined {
  if (e.table === 'unix') {
    if (e.local === '') return undefined;
    // An abstract socket is printed with a leading '@'; not a config address, but named truthfully.
    return `unix:${e.local}`;
  }
  const [hex, portHex] = e.local.split(':');
  if (hex === undefined || portHex === undefined) return undefined;
  // The address is printed as 32-bit words, each read in host byte order.
  const bytes = Buffer.alloc(hex.length / 2);
  for (let i = 0; i < hex.length / 8; i++) {
    const word = Number.parseInt(hex.slice(i * 8, i * 8 + 8), 16);
    if (os.endianness() === 'LE') bytes.writeUInt32LE(word, i * 4);
    else bytes.writeUInt32BE(word, i * 4);
  }
  const port = Number.parseInt(portHex, 16);
  if (e.table === 'tcp') return `${[...bytes].join('.')}:${port}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return `[${canonicalIPv6(groups.join(':'))}]:${port}`;
}

/** One fd passed by the socket-activation protocol. */
export interface InheritedListener {
  /** The fd number in this process (3, 4, ...). */
  readonly fd: number;
  /**
   * Its LISTEN_FDNAMES entry: the socket unit's FileDescriptorName= (by
   * default the unit's own name, "relink-web.socket"); "unknown" when
   * LISTEN_FDNAMES is unset or does not name every fd, as
   * sd_listen_fds_with_names(3) says.
   */
  readonly name: string;
  /**
   * The address the fd is really bound to, canonical (formatListenAddress):
   * "127.0.0.1:8080", "[::1]:8080", "unix:/run/web/web.sock"; undefined when
   * it is not a TCP or unix socket of this network namespace, or not bound.
   */
  readonly address: string | undefined;
  /** listen(2) was called on it (TCP state LISTEN; unix __SO_ACCEPTCON). */
  readonly listening: boolean;
}

/** sd_listen_fds(3): passed fds start at 3. */
const LISTEN_FDS_START = 3;
/** More fds than this is no real LISTEN_FDS (the protocol sets no limit; this one keeps a corrupt value from looping for long). */
const LISTEN_FDS_MAX = 65_536;

/**
 * The sockets systemd (or systemd-socket-activate, or any launcher speaking
 * the protocol) passed to this process, per sd_listen_fds(3):
 * LISTEN_PID must be this process's pid (else the variables were meant for
 * an ancestor and leaked through: nothing was passed to us), LISTEN_FDS=N
 * says fds 3 .. 3+N-1 were passed, LISTEN_FDNAMES their names separated by
 * ':'. Each fd's real local address is read from /proc/self/fd/N
 * ("socket:[inode]") and this network namespace's /proc/self/net/{tcp,tcp6,unix}.
 *
 * Empty when nothing was passed or LISTEN_PID/LISTEN_FDS are malformed.
 * Read-only: call forgetListenEnv() afterwards, so that no child the agent
 * starts sees the agent's variables (an app that reads LISTEN_FDS must get
 * only those the agent sets for it).
 */
export function inheritedListeners(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): InheritedListener[] {
  if (!/^[1-9]\d*$/.test(env['LISTEN_PID'] ?? '') || Number(env['LISTEN_PID']) !== pid) return [];
  if (!/^[1-9]\d*$/.test(env['LISTEN_FDS'] ?? '')) return [];
  const count = Number(env['LISTEN_FDS']);
  if (count > LISTEN_FDS_MAX) return [];
  const names = env['LISTEN_FDNAMES']?.split(':');
  const named = names !== undefined && names.length === count;
  let table: Map<string, SocketEntry> | undefined;
  const out: InheritedListener[] = [];
  for (let i = 0; i < count; i++) {
    const fd = LISTEN_FDS_START + i;
    const name = named ? names[i]! : 'unknown';
    const inode = fdSocketInode('self', fd);
    if (inode === undefined) {
      out.push({ fd, name, address: undefined, listening: false });
      continue;
    }
    table ??= new Map(socketTable('self').map((e) => [e.inode, e]));
    const entry = table.get(inode);
    out.push({ fd, name, address: entry === undefined ? undefined : socketAddress(entry), listening: entry?.listening ?? false });
  }
  return out;
}

/** The variables of the socket-activation protocol (sd_listen_fds(3)). */
export const LISTEN_ENV = ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES'] as const;

/**
 * Removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from `env` (as
 * sd_listen_fds(3) does when unset_environment is true): call it on process.env
 * once inheritedListeners() and underSystemd() have read them, so that no
 * child the agent starts inherits the agent's.
 */
export function forgetListenEnv(env: NodeJS.ProcessEnv = process.env): void {
  for (const name of LISTEN_ENV) delete env[name];
}

/**
 * Was this process started by systemd as a service? Then its apps'
 * sockets must come from socket units (a missing one is an error naming
 * the unit to add, missingSocketError()), never be bound by the agent
 * itself: those would die with the agent.
 *
 * True when
 * - LISTEN_PID is this pid and LISTEN_FDS is set: sockets were passed (by
 *   systemd, or by systemd-socket-activate, which speaks the same protocol
 *   and then stands in for it); or
 * - INVOCATION_ID is set (systemd >= 232 sets it for every process it
 *   starts for a unit: systemd.exec(5), "Environment variables in spawned
 *   processes") and the parent is the service manager: pid 1, or a process
 *   named "systemd" (a user manager, or systemd in a container). Every
 *   process a service starts inherits INVOCATION_ID, so the variable alone
 *   would also be true of `relink agent` run by hand from inside some
 *   service (a CI runner's job); its parent is not the manager.
 *
 * Read it before forgetListenEnv().
 */
export function underSystemd(env: NodeJS.ProcessEnv = process.env, self: { readonly pid: number; readonly ppid: number } = process): boolean {
  if (env['LISTEN_PID'] === String(self.pid) && env['LISTEN_FDS'] !== undefined) return true;
  if (env['INVOCATION_ID'] === undefined || env['INVOCATION_ID'] === '') return false;
  if (self.ppid === 1) return true;
  try {
    return readFileSync(`/proc/${self.ppid}/comm`, 'utf8').trim() === 'systemd';
  } catch {
    return false;
  }
}

/** FD_CLOEXEC as /proc/PID/fdinfo/N shows it: O_CLOEXEC (02000000 octal) in "flags:". */
const O_CLOEXEC = 0o2000000;

/**
 * Does fd `fd` of this process lack FD_CLOEXEC, so that every child would
 * inherit it at its own number? False when it is close-on-exec or not open.
 */
export function inheritable(fd: number): boolean {
  try {
    const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    return flags !== undefined && (Number.parseInt(flags, 8) & O_CLOEXEC) === 0;
  } catch {
    return false;
  }
}

let devNullFd: number | undefined;

/** One fd of /dev/null (read-write, close-on-exec), opened at the first call and kept: what covers an fd a child must not get. */
export function devNull(): number {
  devNullFd ??= openSync('/dev/null', 'r+');
  return devNullFd;
}

export interface ChildStdioOptions {
  /** Would the child inherit this fd unless covered? Default inheritable(): FD_CLOEXEC is clear. */
  readonly leaks?: (fd: number) => boolean;
  /** The fd that covers them; default devNull(). */
  readonly cover?: number;
}

/**
 * The stdio array for spawn() that gives a child `give` at fds 3, 4, ...
 * (in that order, FD_CLOEXEC cleared in the child, as LISTEN_FDS wants) and
 * none of `inheritedFds` (every fd the agent holds for any app: passed by
 * systemd or bound by itself) otherwise.
 *
 * Of `inheritedFds`, those at an index `give` does not fill and that would
 * leak (`leaks`, default: FD_CLOEXEC clear) get /dev/null at their index:
 * 'ignore' there would leave the fd in place (libuv opens /dev/null only at
 * 0-2). Those with FD_CLOEXEC set, which is all of them in the usual case
 * (see the top of this file), are closed by the exec and need nothing, so
 * the child gets exactly `base` and `give`.
 *
 * @param base stdin, stdout, stderr: exactly three entries, as spawn takes them.
 * @param give fds of this process, each open.
 * @throws TypeError when base is not three entries or an fd is not a non-negative integer.
 */
export function childStdio<T>(base: readonly T[], give: readonly number[], inheritedFds: readonly number[], opts: ChildStdioOptions = {}): Array<T | number | 'ignore'> {
  if (base.length !== 3) throw new TypeError(`childStdio: base must be stdin, stdout and stderr (found ${base.length} entries)`);
  for (const fd of [...give, ...inheritedFds]) {
    if (!Number.isSafeInteger(fd) || fd < 0) throw new TypeError(`childStdio: ${fd} is not an fd`);
  }
  const out: Array<T | number | 'ignore'> = [...base, ...give];
  const leaks = opts.leaks ?? inheritable;
  for (const fd of [...new Set(inheritedFds)].sort((a, b) => a - b)) {
    if (fd < out.length || !leaks(fd)) continue;
    while (out.length < fd) out.push('ignore');
    out.push(opts.cover ?? devNull());
  }
  return out;
}

/**
 * The error when the agent runs under systemd but no fd named `appName`
 * listening on `address` was passed to it: it names the socket unit to add,
 * line by line, and the commands that make systemd pass it.
 *
 * @param address the config's spelling ("127.0.0.1:8080", "unix:/run/web/web.sock").
 * @param configFile the agent config, for the error's `file`.
 * @param opts.user, opts.group the app's user and group (a unix socket is
 *   made theirs, mode 0660); opts.passed what was passed under that name,
 *   so the message can say what listens instead.
 * @returns RelinkError SOCKET_UNAVAILABLE, key "sockets".
 */
export function missingSocketError(appName: string, address: string, configFile: string,
  opts: { readonly user?: string | undefined; readonly group?: string | undefined; readonly passed?: readonly InheritedListener[] } = {}): RelinkError {
  const a = parseListenAddress(address);
  const unit = `/etc/systemd/system/relink-${appName}.socket`;
  const lines = ['[Socket]', `ListenStream=${systemdListenStream(a)}`, `FileDescriptorName=${appName}`, 'Service=relink.service'];
  // The agent binds "[::]" IPv6-only when started by hand; systemd would follow net.ipv6.bindv6only (dual-stack by default).
  if (a.kind === 'tcp' && a.host === '::') lines.push('BindIPv6Only=ipv6-only');
  if (a.kind === 'unix') lines.push(`SocketUser=${opts.user ?? 'root'}`, `SocketGroup=${opts.group ?? opts.user ?? 'root'}`, 'SocketMode=0660');
  lines.push('', '[Install]', 'WantedBy=sockets.target');
  const same = (opts.passed ?? []).filter((p) => p.name === appName);
  const found = same.length === 0
    ? `no fd named "${appName}" was passed`
    : `the fd${same.length === 1 ? '' : 's'} named "${appName}" listen${same.length === 1 ? 's' : ''} on ${same.map((p) => p.address ?? 'no TCP or unix address').join(', ')}`;
  const message = [
    `${configFile}: "sockets": ${appName}: the agent runs under systemd, so ${address} must come from a socket unit, and ${found}. Write ${unit}:`,
    ...lines.map((l) => (l === '' ? '' : `  ${l}`)),
    `then: systemctl daemon-reload && systemctl enable --now relink-${appName}.socket && systemctl restart relink`,
  ].join('\n');
  return new RelinkError('SOCKET_UNAVAILABLE', message, {
    file: configFile,
    key: 'sockets',
    rule: `under systemd, every address in "sockets" must be passed by a socket unit with FileDescriptorName=${appName} and Service=relink.service`,
    found,
  });
}
