/**
 * Starting the app. It runs detached in its own session so that it outlives
 * the agent: an agent restart or upgrade must never take the app down, and
 * the next agent adopts it (see proc.ts). Its stdout and stderr are two
 * journald streams or its log file (src/appoutput.ts), opened by the agent
 * and inherited by the app, so nothing of the app's output passes through
 * (or depends on) the agent, and the app's user needs no write access to
 * the log.
 *
 * The app runs as its own user with its own limits through an exec chain of
 * two util-linux tools, each of which replaces itself (same PID) with the
 * next:
 *
 *   prlimit --nofile=N:N -- setpriv --reuid=U --regid=G --init-groups -- ./app.bin -c app.cfg
 *
 * Why not Node's spawn({uid, gid}): libuv clears the supplementary groups
 * (an app in group ssl-cert could no longer read its key), and the limits
 * must be raised while still privileged (a hard limit above the agent's
 * needs CAP_SYS_RESOURCE) and before the app's first instruction: Go raises
 * its soft nofile limit to the hard one at start-up, so a limit set on the
 * PID afterwards (`prlimit --pid`) comes too late for it and races its
 * first accept(). The chain keeps one PID, so awaitStart still knows the
 * app by the PID spawned here.
 */
import { spawn } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { AppConfig } from './config.js';
import { RelinkError } from './errors.js';
import { configuredLimits, lower, prlimitOptions, readLimits, type ProcLimits } from './limits.js';
import { childStdio, parseListenAddress, serverStarterName } from './listenfds.js';
import { markerEnv } from './proc.js';
import { HOST_JOURNAL, openSink, type JournalTarget, type Sink } from './appoutput.js';
import { describeUser, resolveRunAs, type RunAs } from './user.js';

export interface Launched {
  readonly pid: number;
  /** Resolves with the exit code (or signal) if the app exits while this agent runs. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** What launch() tells besides the process: where its output goes, and the uid it runs as. */
export interface Started extends Launched {
  readonly sink: Sink;
  readonly uid: number;
}

// Capability numbers (linux/capability.h).
const CAP_SETGID = 6n;
const CAP_SETUID = 7n;
const CAP_SYS_RESOURCE = 24n;

/** What the agent itself may do, which decides what it can do for the app. */
export interface AgentIdentity {
  readonly uid: number;
  readonly gid: number;
  /** Effective capabilities (CapEff): root under a systemd CapabilityBoundingSet= has fewer than all. */
  readonly caps: bigint;
  readonly limits: ProcLimits;
  /** fs.nr_open: the kernel's ceiling for nofile. */
  readonly nrOpen: number;
}

export async function agentIdentity(): Promise<AgentIdentity> {
  const [status, limits, nrOpen] = await Promise.all([
    readFile('/proc/self/status', 'utf8'),
    readLimits('self'),
    readFile('/proc/sys/fs/nr_open', 'utf8').then(Number, () => 1_048_576),
  ]);
  const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1] ?? '0';
  return {
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    caps: BigInt(`0x${capEff}`),
    limits: limits!,
    nrOpen,
  };
}

const has = (caps: bigint, cap: bigint): boolean => ((caps >> cap) & 1n) === 1n;

export interface LaunchPlan {
  readonly file: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly runAs: RunAs;
  /** The app runs as another user or group than the agent. */
  readonly switching: boolean;
}

/**
 * How `app` is to be started by an agent that is `agent`, or a typed
 * refusal: the app would run as root without "allowRoot", the agent cannot
 * become the app's user, or cannot grant a limit.
 */
export async function planLaunch(app: AppConfig, agent: AgentIdentity, env: NodeJS.ProcessEnv = process.env, passing: Passing = {}): Promise<LaunchPlan> {
  const sockets = passing.sockets ?? 0;
  // LISTEN_PID must be the app's own PID, unknown before the fork: the last
  // step of the exec chain, a shell, sets it to its own ($$) and execs the
  // app in its place (the same PID), as sd_listen_fds(3) expects.
  const argv = sockets > 0 ? [SH, '-c', 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', 'sh', ...app.command] : app.command;
  const plan = await planCommand(app, agent, argv, env);
  // The lineage marker (src/proc.ts), inherited by every child, and the
  // socket-passing variables: last, so the app's own "env" cannot change them.
  return { ...plan, env: { ...plan.env, ...socketEnv(app, sockets), ...(passing.notifySocket === undefined ? {} : { NOTIFY_SOCKET: passing.notifySocket }), ...markerEnv(app) } };
}

/** What a start passes to the app besides its command: its held sockets (fds 3 on) and the sd_notify socket. */
export interface Passing {
  /** How many listening sockets are passed, at fds 3, 4, ... in the order of app.sockets. Default 0. */
  readonly sockets?: number;
  /** NOTIFY_SOCKET: the datagram socket the agent reads READY=1 from (readiness "notify"). */
  readonly notifySocket?: string | undefined;
}

const SH = '/bin/sh';

/**
 * The variables that tell an app which sockets it was given, in the three
 * conventions servers read: systemd's (sd_listen_fds(3): LISTEN_FDS,
 * LISTEN_FDNAMES; LISTEN_PID is set by the exec chain), einhorn's
 * (EINHORN_FD_COUNT, EINHORN_FD_<i>) and Server::Starter's
 * (SERVER_STARTER_PORT "addr=fd;path=fd"). Any left over from the agent's
 * own environment are removed when none are passed.
 */
export function socketEnv(app: AppConfig, count: number): Record<string, string | undefined> {
  if (count === 0) {
    return { LISTEN_FDS: undefined, LISTEN_PID: undefined, LISTEN_FDNAMES: undefined, EINHORN_FD_COUNT: undefined, SERVER_STARTER_PORT: undefined };
  }
  const fds = app.sockets.slice(0, count).map((a, i) => ({ address: a, fd: 3 + i }));
  return {
    LISTEN_FDS: String(count),
    LISTEN_FDNAMES: fds.map(() => app.name).join(':'),
    EINHORN_FD_COUNT: String(count),
    ...Object.fromEntries(fds.map((f, i) => [`EINHORN_FD_${i}`, String(f.fd)])),
    SERVER_STARTER_PORT: fds.map((f) => `${serverStarterName(parseListenAddress(f.address))}=${f.fd}`).join(';'),
  };
}

/**
 * How to run `argv` exactly as the app runs: its user, groups, limits and
 * environment (the caller runs it in the app's `dir`). Everything relink
 * runs on an app's behalf (its start, its preflight) goes through here, so
 * a release file the app's user uploaded never runs as root unless the app
 * itself does ("allowRoot"). Throws what planLaunch throws.
 */
export async function planCommand(app: AppConfig, agent: AgentIdentity, argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<LaunchPlan> {
  const runAs = await resolveRunAs(app);
  if (runAs.uid === 0 && !app.allowRoot) {
    const found = runAs.configured ? `"user": ${JSON.stringify(app.user)}` : 'no "user" set, and the agent runs as root';
    throw new RelinkError('ROOT_REFUSED',
      `refusing to run the app as root (${found}): set "user" to the account it should run as, or "allowRoot": true if it must run as root`,
      { key: 'user', rule: 'must not run as root unless "allowRoot": true', found });
  }
  const switching = runAs.uid !== agent.uid || runAs.gid !== agent.gid;
  if (switching && !(has(agent.caps, CAP_SETUID) && has(agent.caps, CAP_SETGID))) {
    const found = `the agent runs as uid ${agent.uid} (gid ${agent.gid}) without CAP_SETUID/CAP_SETGID`;
    throw new RelinkError('USER_SWITCH_DENIED',
      `cannot start the app as ${describeUser(runAs)} group ${runAs.group}: ${found}; run the agent as root (the systemd unit does) or as that user`,
      { key: 'user', rule: 'the agent must be able to switch to the app\'s user', found });
  }
  for (const [name, want] of configuredLimits(app.limits)) {
    if (name === 'nofile' && typeof want === 'number' && want > agent.nrOpen) {
      throw new RelinkError('LIMIT_DENIED', `"limits.nofile": ${want} is above the kernel's fs.nr_open (${agent.nrOpen})`,
        { key: 'limits.nofile', rule: `must be at most fs.nr_open (${agent.nrOpen})`, found: String(want) });
    }
    const hard = agent.limits[name].hard;
    if (lower(hard, want) && !has(agent.caps, CAP_SYS_RESOURCE)) {
      throw new RelinkError('LIMIT_DENIED',
        `"limits.${name}": ${want} is above the agent's own hard limit (${hard}), and the agent lacks CAP_SYS_RESOURCE, the capability that raises it${agent.uid === 0 ? ' (root without it: the unit\'s CapabilityBoundingSet= must keep CAP_SYS_RESOURCE)' : ''}; or raise the agent's own limit (for nofile: LimitNOFILE= in the unit)`,
        { key: `limits.${name}`, rule: `must be at most the agent's hard limit (${hard}) unless the agent has CAP_SYS_RESOURCE`, found: String(want) });
    }
  }

  const chain: string[] = [];
  const limits = prlimitOptions(app.limits);
  if (limits.length > 0) chain.push(await tool('prlimit', env), ...limits, '--');
  if (switching) {
    // --init-groups needs a passwd entry; a bare uid gets no supplementary groups.
    const groups = runAs.user === String(runAs.uid) ? '--clear-groups' : '--init-groups';
    chain.push(await tool('setpriv', env), `--reuid=${runAs.uid}`, `--regid=${runAs.gid}`, groups, '--');
  }
  chain.push(...argv);
  // As systemd's User= does; the app's own env still wins.
  const identity = switching ? { HOME: runAs.home ?? '/', USER: runAs.user, LOGNAME: runAs.user } : {};
  const [file, ...args] = chain as [string, ...string[]];
  return { file, args, env: { ...env, ...identity, ...app.env }, runAs, switching };
}

/** A helper from util-linux, by absolute path so an app's own PATH in "env" cannot hide it. */
async function tool(name: string, env: NodeJS.ProcessEnv): Promise<string> {
  const dirs = [...(env['PATH'] ?? '').split(':').filter((d) => d !== ''), '/usr/bin', '/bin'];
  for (const dir of dirs) {
    const p = path.join(dir, name);
    try {
      await access(p, fsConstants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  throw new RelinkError('START_FAILED', `${name} (util-linux) was not found in PATH; it is needed to set the app's user or limits`,
    { rule: `${name} must be installed`, found: `not in ${dirs.join(':')}` });
}

/**
 * ENOENT from exec of a file that exists: its `#!` interpreter is missing
 * (`#!/usr/bin/python3` on a host without python3). The file and the
 * interpreter, or undefined when that is not the cause.
 */
async function missingInterpreter(app: AppConfig): Promise<{ file: string; interpreter: string } | undefined> {
  const first = app.command[0];
  if (first === undefined) return undefined;
  const file = path.resolve(app.dir, first);
  const head = await readFile(file).then((b) => b.subarray(0, 256).toString('latin1'), () => undefined);
  const m = head === undefined ? null : /^#!\s*(\S+)/.exec(head);
  if (m === null) return undefined;
  const interpreter = m[1]!;
  return (await access(interpreter, fsConstants.X_OK).then(() => true, () => false)) ? undefined : { file, interpreter };
}

/**
 * Start the app (see the module's comment). `fds`: the listening sockets to
 * pass, at 3, 4, ... in order; `cover`: other fds of the agent a child would
 * inherit (systemd's, which are not close-on-exec) and must not, put out of
 * its reach; `journal`: the journald the output goes to when the app's
 * logFile is unset (default the host's; null: the file). Throws RelinkError
 * (START_FAILED and planLaunch's refusals) and src/safefs.ts's refusals of
 * the log file.
 */
export async function launch(app: AppConfig, agent?: AgentIdentity, fds: readonly number[] = [], opts: { notifySocket?: string | undefined; cover?: readonly number[]; journal?: JournalTarget | null } = {}): Promise<Started> {
  const plan = await planLaunch(app, agent ?? await agentIdentity(), process.env, { sockets: fds.length, notifySocket: opts.notifySocket });
  // The log lies in a folder the app's user can write: no planted symlink
  // (of the file or of a folder on its path), FIFO or hard link is opened,
  // written or chowned as root. A log the agent created belongs to the
  // app's user, so whoever deploys as that user can read it.
  const out = await openSink(app, plan.switching ? { uid: plan.runAs.uid, gid: plan.runAs.gid } : undefined, opts.journal === null ? undefined : opts.journal ?? HOST_JOURNAL);
  try {
    const child = spawn(plan.file, plan.args, {
      cwd: app.dir,
      env: plan.env,
      detached: true,
      stdio: childStdio(['ignore', out.stdout, out.stderr], fds, opts.cover ?? []),
    });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid as number));
      child.once('error', reject);
    }).catch(async (err: unknown) => {
      const e = err as NodeJS.ErrnoException;
      const interp = e.code === 'ENOENT' ? await missingInterpreter(app) : undefined;
      if (interp !== undefined) {
        throw new RelinkError('START_FAILED', `could not start ${JSON.stringify(app.command)} in ${app.dir}: ${interp.file} names the interpreter ${interp.interpreter} in its #! line, which does not exist`,
          { key: 'command', rule: 'the #! interpreter of the release must exist', found: interp.interpreter }, { cause: err });
      }
      throw new RelinkError('START_FAILED', `could not start ${JSON.stringify(app.command)} in ${app.dir}: ${e.code ?? e.message}`,
        { key: 'command', rule: 'must start', found: e.code ?? e.message }, { cause: err });
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    // The agent must not wait for the app before it can exit itself.
    child.unref();
    return { pid, exited, sink: out.sink, uid: plan.runAs.uid };
  } finally {
    // The child holds its own copies of the descriptors.
    await out.close();
  }
}
