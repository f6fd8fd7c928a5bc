/**
 * Shared test helpers: a temp folder per test (removed after it), waiting on
 * a condition with a deadline instead of sleeping, the agent as a real child
 * process, and cleanup that leaves no app process behind.
 */
import http from 'node:http';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { mkdtemp, readdir, readFile, readlink, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { scanJson } from '../src/json.js';
import { readMarker, readProc } from '../src/proc.js';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const MAIN = path.join(ROOT, 'src', 'cli', 'main.ts');

/** The compiled CLI, as the package ships it (npm run build; npm test builds it first). */
export const DIST_MAIN = path.join(ROOT, 'dist', 'cli', 'main.js');

/**
 * How the tests run relink (the agent and the CLI): `node dist/cli/main.js`,
 * the package as it ships, which starts in about a third of the CPU time
 * tsx takes to compile src/ at every spawn (the suite spawns relink hundreds
 * of times: minutes of CI on 2 cores). A dist/ older than any file in src/
 * is refused, naming the command that rebuilds it: a test never runs stale
 * code. (Tests that are about the TypeScript entry point itself spawn MAIN
 * with tsx.)
 */
export const RELINK: readonly string[] = [process.execPath, freshDist()];

function freshDist(): string {
  const built = statSync(DIST_MAIN, { throwIfNoEntry: false })?.mtimeMs;
  const newer = (dir: string): string | undefined => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      const found = e.isDirectory() ? newer(p) : e.name.endsWith('.ts') && statSync(p).mtimeMs > built! ? p : undefined;
      if (found !== undefined) return found;
    }
    return undefined;
  };
  if (built === undefined) throw new Error(`${DIST_MAIN} is missing: run \`npm run build\` (npm test does) before running a test file by itself`);
  const stale = newer(path.join(ROOT, 'src'));
  if (stale !== undefined) throw new Error(`${DIST_MAIN} is older than ${stale}: run \`npm run build\` (npm test does) before running a test file by itself`);
  return DIST_MAIN;
}

const deferred = new WeakMap<TestContext, Array<() => unknown>>();

/**
 * Run `fn` when the test ends, last registered first (like Go's defer):
 * t.after runs hooks in registration order, which would remove a temp
 * folder while the agent registered after it still writes into it, and one
 * failing hook would skip the rest and leave a process behind. Every
 * cleanup runs; the first error is reported after all of them.
 */
export function defer(t: TestContext, fn: () => unknown): void {
  let stack = deferred.get(t);
  if (stack === undefined) {
    const fns: Array<() => unknown> = [];
    stack = fns;
    deferred.set(t, fns);
    t.after(async () => {
      let first: unknown;
      while (fns.length > 0) {
        try {
          await fns.pop()!();
        } catch (err) {
          first ??= err;
        }
      }
      if (first !== undefined) throw first;
    });
  }
  stack.push(fn);
}

/** A fresh folder (real path), removed with everything in it when the test ends. */
export async function tmpDir(t: TestContext, prefix = 'relink-test-'): Promise<string> {
  const dir = await realpath(await mkdtemp(path.join(os.tmpdir(), prefix)));
  defer(t, () => rm(dir, { recursive: true, force: true, maxRetries: 5 }));
  return dir;
}

export interface WaitOptions {
  readonly timeoutMs?: number;
  readonly intervalMs?: number;
}

/** Poll `probe` until it returns something truthy; fail with `what` after the deadline. */
export async function waitFor<T>(what: string, probe: () => T | Promise<T>, opts: WaitOptions = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 20));
  }
}

/** Is the process alive (zombies count as dead: nobody may reap them for a while here)? */
export async function alive(pid: number): Promise<boolean> {
  return (await readProc(pid)) !== undefined;
}

/** Every live process whose executable lies under `dir` (also once `dir` is deleted). */
export async function processesUnder(dir: string): Promise<number[]> {
  const prefix = dir.endsWith(path.sep) ? dir : dir + path.sep;
  const pids = (await readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number);
  const infos = await Promise.all(pids.map((pid) => readProc(pid).catch(() => undefined)));
  return infos.filter((i) => i !== undefined && i.exe.startsWith(prefix)).map((i) => i!.pid);
}

/**
 * SIGKILL every process running a binary from `releasesDir` when the test
 * ends. /proc is scanned directly rather than through ProcessFinder, which
 * needs the folder: after hooks run in registration order, so the temp
 * folder may already be gone (the kernel then shows the exe as deleted).
 */
export function reapAppsAfter(t: TestContext, releasesDir: string): void {
  defer(t, async () => {
    for (const pid of await processesUnder(releasesDir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

/**
 * SIGKILL every process whose lineage marker (src/proc.ts) names an app in
 * `dir`, or whose working folder lies in it, when the test ends: apps whose
 * executable is an interpreter or a system binary (nginx), which
 * reapAppsAfter cannot tell by their executable.
 */
export function reapMarkedAfter(t: TestContext, dir: string): void {
  defer(t, async () => {
    for (const name of await readdir('/proc')) {
      const pid = Number(name);
      if (!Number.isSafeInteger(pid) || pid <= 1 || pid === process.pid) continue;
      // By its marker, or by its working folder: nginx clears its environment,
      // and its master and workers run in the app's folder (shown
      // " (deleted)" once the test has removed it).
      const marker = readMarker(pid);
      const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => '');
      const inDir = (p: string): boolean => p === dir || p.startsWith(dir + path.sep);
      if (!(marker !== undefined && inDir(marker.dir)) && !inDir(cwd.replace(/ \(deleted\)$/, ''))) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

export interface LogLine {
  readonly level: string;
  readonly msg: string;
  readonly [key: string]: unknown;
}

export interface AgentProc {
  readonly child: ChildProcess;
  readonly lines: LogLine[];
  /** The stdout lines as printed (before parsing: a duplicated key is still there). */
  readonly raw: string[];
  readonly stderr: string[];
  /** Resolves with the first log line (already seen or to come) matching `pred`. */
  waitForLog(what: string, pred: (l: LogLine) => boolean, opts?: WaitOptions): Promise<LogLine>;
  /** SIGTERM and wait for exit; resolves with the exit code. Idempotent. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** The real agent, as systemd would run it, in a child process. Stopped after the test. */
export function startAgent(t: TestContext, configFile: string, opts: { readonly listen?: { readonly fds: readonly number[]; readonly names: readonly string[] } } = {}): AgentProc {
  const argv = [...RELINK, 'agent', '--config', configFile];
  // `listen`: sockets passed the way systemd passes them (sd_listen_fds(3):
  // fds from 3, LISTEN_FDNAMES, LISTEN_PID the agent's own, set by a shell that execs it).
  const child = opts.listen === undefined
    ? spawn(argv[0]!, argv.slice(1), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn('/bin/sh', ['-c', 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', 'sh', ...argv], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe', ...opts.listen.fds],
      env: { ...process.env, LISTEN_FDS: String(opts.listen.fds.length), LISTEN_FDNAMES: opts.listen.names.join(':') },
    });
  const lines: LogLine[] = [];
  const raw: string[] = [];
  const stderr: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => {
    raw.push(l);
    try {
      lines.push(JSON.parse(l) as LogLine);
    } catch {
      lines.push({ level: 'raw', msg: l });
    }
  });
  createInterface({ input: child.stderr! }).on('line', (l) => stderr.push(l));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let stopping: Promise<number | null> | undefined;
  const proc: AgentProc = {
    child,
    lines,
    raw,
    stderr,
    // Timed out: the agent's last lines say what it did instead.
    waitForLog: (what, pred, opts) => waitFor(what, () => lines.find(pred), opts).catch((err: unknown) => {
      const tail = lines.slice(-15).map((l) => `  ${l.level} ${String(l.msg)}`).join('\n');
      throw new Error(`${(err as Error).message}\n--- the agent's last ${Math.min(15, lines.length)} lines (exit ${child.exitCode ?? child.signalCode ?? 'none yet'}):\n${tail}${stderr.length > 0 ? `\n--- its stderr:\n${stderr.slice(-10).join('\n')}` : ''}`);
    }),
    stop(signal = 'SIGTERM') {
      stopping ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        // A graceful stop that hangs is a bug the test reports; it must not
        // also hang the run, so SIGKILL after a generous grace period.
        const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
        try {
          return await exited;
        } finally {
          clearTimeout(timer);
        }
      })();
      return stopping;
    },
  };
  defer(t, () => proc.stop());
  return proc;
}

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Run `relink ARGS...` as a real process; as another user (its own group
 * only) with `as`; SIGTERMed after `timeoutMs` when given (a command that
 * wrongly runs on, as a demo started by an accepted bad flag, then fails on
 * its exit code instead of hanging the test).
 */
/** A program run to its end: its exit code and output. `input` goes to its stdin; after `timeoutMs` it gets `killSignal` (default SIGKILL). */
export function runProgram(cmd: string, args: readonly string[], opts: { readonly input?: string; readonly timeoutMs?: number; readonly killSignal?: NodeJS.Signals; readonly cwd?: string; readonly env?: NodeJS.ProcessEnv; readonly as?: { readonly uid: number; readonly gid: number } } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd, env: opts.env, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], ...(opts.as === undefined ? {} : { uid: opts.as.uid, gid: opts.as.gid }),
      ...(opts.timeoutMs === undefined ? {} : { timeout: opts.timeoutMs, killSignal: opts.killSignal ?? 'SIGKILL' }),
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (c: string) => { stdout += c; });
    child.stderr!.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

export function relinkCli(args: readonly string[], env: Record<string, string> = {}, as?: { readonly uid: number; readonly gid: number }, timeoutMs?: number): Promise<CliResult> {
  return runProgram(RELINK[0]!, [...RELINK.slice(1), ...args], { cwd: ROOT, env: { ...process.env, ...env }, as, timeoutMs, killSignal: 'SIGTERM' });
}

/**
 * What a recording script (a hook's, a notifier's) left in `out`, oldest
 * first: per run `<name>.json` (its stdin) and `<name>.env` (space-separated
 * KEY=VALUE pairs).
 */
export async function recordedRuns(out: string): Promise<Array<{ readonly name: string; readonly json: unknown; readonly env: Record<string, string> }>> {
  const names = (await readdir(out)).filter((n) => n.endsWith('.env')).sort();
  return Promise.all(names.map(async (n) => {
    const name = n.slice(0, -'.env'.length);
    const env = Object.fromEntries((await readFile(path.join(out, n), 'utf8')).trim().split(' ').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
    return { name, json: JSON.parse(await readFile(path.join(out, `${name}.json`), 'utf8')) as unknown, env };
  }));
}

/**
 * Every log line of the agent is one JSON object with each key once
 * (issue 9, item 18: `time` and `app` were printed twice in every line).
 */
export function assertOneKeyOnce(agent: AgentProc): void {
  for (const line of agent.raw) {
    const dup = scanJson(line);
    if (dup.length > 0) throw new Error(`duplicate key ${dup.map((d) => JSON.stringify(d.key)).join(', ')} in log line ${line}`);
  }
}

/** GET `url` on a new connection (no keep-alive): status and body; fails after 5 s. */
export function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.setTimeout(5_000, () => req.destroy(new Error(`GET ${url} timed out`)));
  });
}
