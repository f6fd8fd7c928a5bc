/**
 * The agent's side of socket activation, for test/listenfds.test.ts: started
 * by systemd-socket-activate (`node --import tsx listenprobe.ts MODE`), it
 * reads the passed sockets the way the agent does and prints one JSON line.
 *
 *   report    { pid, underSystemd, listeners, cloexec: { fd: boolean }, env }
 *             (env: the LISTEN_* variables left after forgetListenEnv())
 *   children  { listeners, parent, plain, ignored, covered }: three `sleep`
 *             children spawned while this process holds the passed sockets
 *             and, if PROBE_LEAKY_FD names one, an fd without FD_CLOEXEC:
 *               plain    stdio [ignore, ignore, ignore] only
 *               ignored  the fd named "api" at 3, then 'ignore' at every
 *                        index up to the leaky fd
 *               covered  childStdio(base, [the "api" fd], every held fd)
 *             each as { fd: what /proc/CHILD/fd/N links to } for N >= 3
 *             (parent: the same for this process).
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { readdirSync, readlinkSync } from 'node:fs';
import { childStdio, forgetListenEnv, inheritable, inheritedListeners, LISTEN_ENV, underSystemd } from '../../src/listenfds.js';

const mode = process.argv[2] ?? 'report';
const listeners = inheritedListeners(process.env, process.pid);
const systemd = underSystemd(process.env, process);
forgetListenEnv(process.env);

/** fd -> link target, fds 3 and up, of a process. */
function fdsOf(pid: number | 'self'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    if (Number(fd) < 3) continue;
    try {
      out[fd] = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      // the readdir's own fd, closed meanwhile
    }
  }
  return out;
}

if (mode === 'report') {
  const cloexec = Object.fromEntries(listeners.map((l) => [l.fd, !inheritable(l.fd)]));
  const env = Object.fromEntries(LISTEN_ENV.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]]));
  console.log(JSON.stringify({ pid: process.pid, underSystemd: systemd, listeners, cloexec, env }));
} else {
  const leaky = process.env['PROBE_LEAKY_FD'] === undefined ? undefined : Number(process.env['PROBE_LEAKY_FD']);
  const held = [...listeners.map((l) => l.fd), ...(leaky === undefined ? [] : [leaky])];
  const api = listeners.find((l) => l.name === 'api');
  if (api === undefined) throw new Error('no fd named "api" was passed');
  const base = ['ignore', 'ignore', 'ignore'] as const;
  const ignored: Array<string | number> = [...base, api.fd];
  while (leaky !== undefined && ignored.length <= leaky) ignored.push('ignore');
  const children: ChildProcess[] = [];
  const run = (stdio: StdioOptions): Record<string, string> => {
    // spawn() returns once the child has exec'd (libuv waits for the exec), so /proc shows what `sleep` got,
    // and, for a moment, what its dynamic loader opens after the exec (libc.so.6, at the lowest free fd: a
    // loaded host caught it there): looked at again until no shared object is open (2 s at most).
    const child = spawn('sleep', ['60'], { stdio });
    children.push(child);
    const until = Date.now() + 2_000;
    for (;;) {
      const fds = fdsOf(child.pid!);
      if (!Object.values(fds).some((f) => /\.so(\.\d+)*$/.test(f)) || Date.now() >= until) return fds;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
  };
  const out = {
    listeners,
    parent: fdsOf('self'),
    plain: run([...base]),
    ignored: run(ignored as StdioOptions),
    covered: run(childStdio([...base], [api.fd], held) as StdioOptions),
  };
  for (const c of children) c.kill('SIGKILL');
  console.log(JSON.stringify(out));
}
