/**
 * Deciding whether a start or a reload worked: the process part (the right
 * process, running the right binary) and the health part (it stays up for
 * the settle time and the probe answers at the end of it) within their
 * deadlines. Everything goes through Effects, so the clock is the fake one
 * in tests.
 *
 * Messages here end up in the journal entry of one app (which names the app)
 * and after the app's name in the CLI: they do not start with the app's name.
 */
import type { AppConfig } from './config.js';
import type { Release } from './current.js';
import type { Effects } from './effects.js';
import { RelinkError } from './errors.js';
import { describeProbe } from './health.js';
import type { ProcInfo } from './proc.js';

/** How often a process is looked at while waiting (ms); /proc reads are cheap. */
const POLL_MS = 20;

/**
 * When the agent is stopping, the moment (fx.now()) by which this
 * verification must end, whatever its own deadline; Infinity otherwise.
 * Called on every poll: the agent may be told to stop mid-verification.
 */
export type StopBy = () => number;

const NEVER: StopBy = () => Number.POSITIVE_INFINITY;

function stopping(fx: Effects, stopBy: StopBy, what: string): RelinkError | undefined {
  if (fx.now() < stopBy()) return undefined;
  return new RelinkError('AGENT_STOPPING', `the agent was told to stop before ${what}`, { rule: 'a deploy must be verified before the agent stops', found: 'agent stopping' });
}

/** What the started app printed before it exited, for the reason (its cause is usually there). */
export type OutputTail = () => Promise<string>;

/**
 * After a start: wait for a process of the app to show up (the command may be a wrapper).
 * `exited` says whether the started process has exited, and how; `output`
 * gives the last lines it wrote, quoted in the reason when it exits at once.
 */
export async function awaitStart(fx: Effects, app: AppConfig, pid: number, exited: () => string | undefined, output: OutputTail = async () => '', stopBy: StopBy = NEVER): Promise<ProcInfo> {
  const deadline = fx.now() + app.reload.timeoutMs;
  for (;;) {
    const found = await fx.discover();
    const mine = found.all.find((p) => p.pid === pid) ?? found.main;
    if (mine !== undefined) return mine;
    const how = exited();
    if (how !== undefined) {
      const said = await output().catch(() => '');
      throw new RelinkError('APP_EXITED', `the app exited right after start (${how})${said === '' ? `; nothing in ${app.logFile}` : `; its last output: ${said}`}`,
        { file: app.logFile, rule: 'must keep running', found: how });
    }
    const stop = stopping(fx, stopBy, 'the started app appeared');
    if (stop !== undefined) throw stop;
    if (fx.now() >= deadline) {
      throw new RelinkError('START_FAILED', `no process running a binary from ${app.releasesDir} appeared within ${app.reload.timeoutMs} ms of starting ${JSON.stringify(app.command)}`,
        { key: 'command', rule: 'must run a binary from the releases folder' });
    }
    await fx.sleep(POLL_MS);
  }
}

/**
 * How long a re-exec'ing app may go without a process running the new
 * binary after one of its children ended, before the deploy is judged
 * failed (see awaitHandoff).
 */
export const SUCCESSOR_GRACE_MS = 500;

/**
 * A re-exec'ing app (endless, tableflip, grace) answers the signal by
 * starting its successor and exiting once the successor is ready: the old
 * main has gone and a new main runs. Only then is the handoff over, so the
 * next deploy signals the successor and not a draining parent.
 *
 * A successor that dies before taking over (a bad binary, a config it
 * refuses) leaves the old main serving, as these libraries intend, and
 * without a hint the deploy could only be judged at reload.timeoutMs. The
 * hint is the old main reaping a child (its childFaults grow): if
 * SUCCESSOR_GRACE_MS later no process of the app runs the new binary, the
 * successor is taken to have failed. A worker the old main reaps while its
 * successor runs changes nothing, and neither does a successor that forks
 * and exits (its child runs the new binary).
 */
export async function awaitHandoff(fx: Effects, app: AppConfig, old: ProcInfo, release: Release, stopBy: StopBy = NEVER): Promise<ProcInfo> {
  const { signal, timeoutMs } = app.reload;
  const deadline = fx.now() + timeoutMs;
  let reaped = old.childFaults;
  /** A process of the app running the new binary, once found: re-verified cheaply. */
  let successor: ProcInfo | undefined;
  /** Since when a child of the old main has ended with no known successor running. */
  let orphanedAt: number | undefined;
  for (;;) {
    const same = await fx.verify(old);
    if (same === undefined) {
      const found = await fx.discover();
      if (found.main !== undefined) return found.main;
      throw new RelinkError('APP_EXITED', `pid ${old.pid} exited after ${signal} and no successor runs (see ${app.logFile})`, { file: app.logFile, rule: 'a successor must take over' });
    }
    // Some apps execve() themselves in place: same PID, new binary.
    if (same.exe === release.bin && old.exe !== release.bin) return same;
    if (successor !== undefined && (await fx.verify(successor)) === undefined) successor = undefined;
    if (same.childFaults !== undefined && reaped !== undefined && same.childFaults > reaped) {
      reaped = same.childFaults;
      if (successor === undefined) orphanedAt ??= fx.now();
    }
    // One process-table scan at the end of the grace period, not one per poll.
    if (orphanedAt !== undefined && fx.now() - orphanedAt >= SUCCESSOR_GRACE_MS) {
      successor = (await fx.discover(old)).all.find((p) => p.exe === release.bin && p.pid !== old.pid);
      if (successor === undefined) {
        throw new RelinkError('APP_EXITED', `the new release did not take over: a child of pid ${old.pid} exited after ${signal} and no process runs ${release.bin}; pid ${old.pid} still serves the old release (see ${app.logFile})`,
          { file: app.logFile, key: 'bin.file', rule: 'the successor must start and take over', found: 'successor exited' });
      }
      orphanedAt = undefined;
    }
    const stop = stopping(fx, stopBy, `pid ${old.pid} handed over`);
    if (stop !== undefined) throw stop;
    if (fx.now() >= deadline) {
      throw new RelinkError('HANDOFF_TIMEOUT', `pid ${old.pid} still runs ${timeoutMs} ms after ${signal} (reload.mode is "reexec"; use "inplace" for an app that reloads without a new process)`,
        { key: 'reload.mode', rule: 'the old process must hand over and exit', found: `pid ${old.pid} still running` });
    }
    await fx.sleep(POLL_MS);
  }
}

/** An in-place reloader (nginx) keeps its PID: it must simply still be there. */
export async function confirmInPlace(fx: Effects, app: AppConfig, main: ProcInfo): Promise<ProcInfo> {
  const same = await fx.verify(main);
  if (same === undefined) {
    throw new RelinkError('APP_EXITED', `pid ${main.pid} exited after ${app.reload.signal} (see ${app.logFile})`, { file: app.logFile, rule: 'must survive the reload signal' });
  }
  return same;
}

/** A started or re-exec'd process must run the deployed binary, not some other release. */
export function assertBinary(app: AppConfig, proc: ProcInfo, release: Release): void {
  if (proc.exe !== release.bin) {
    throw new RelinkError('WRONG_BINARY', `pid ${proc.pid} runs ${proc.exe}, not the deployed ${release.bin}`,
      { rule: 'the new process must run the deployed bin.file', found: proc.exe });
  }
}

/**
 * Health: the process stays up for health.settleMs (Supervisor's startsecs)
 * and, if a probe is configured, the probe passes at the end of the settle
 * time or after it (retried every intervalMs); both before health.deadlineMs
 * runs out. A probe that passes at once proves little: right after an
 * in-place reload it is answered by the old workers, and a release whose new
 * workers die a moment later would be judged healthy (issue 9, item 20). So
 * no probe is sent before the settle time is over.
 */
export async function awaitHealthy(fx: Effects, app: AppConfig, proc: ProcInfo, stopBy: StopBy = NEVER): Promise<void> {
  const { probe, deadlineMs, settleMs, intervalMs } = app.health;
  const start = fx.now();
  const deadline = start + deadlineMs;
  const settledAt = start + settleMs;
  let last = '';
  let nextProbe = settledAt;
  for (;;) {
    if ((await fx.verify(proc)) === undefined) {
      throw new RelinkError('APP_EXITED', `pid ${proc.pid} exited ${fx.now() - start} ms after the deploy, before the settle time of ${settleMs} ms (see ${app.logFile})`,
        { file: app.logFile, key: 'health.settleMs', rule: 'the app must stay up', found: `exited after ${fx.now() - start} ms` });
    }
    if (fx.now() >= settledAt) {
      if (probe === undefined) return;
      if (fx.now() >= nextProbe) {
        const r = await fx.probe();
        if (r.ok) return;
        last = r.detail;
        nextProbe = fx.now() + intervalMs;
      }
    }
    const stop = stopping(fx, stopBy, 'the release was judged healthy');
    if (stop !== undefined) throw stop;
    if (fx.now() >= deadline) {
      const what = probe === undefined ? 'the settle time' : describeProbe(probe);
      throw new RelinkError('UNHEALTHY', `${what} did not pass within ${deadlineMs} ms (checked from the end of the settle time of ${settleMs} ms; last: ${last || 'no answer'})`,
        { key: 'health', rule: 'must answer 2xx (or accept) at the end of the settle time, within the deadline', found: last || 'no answer' });
    }
    const until = Math.min(fx.now() >= settledAt ? nextProbe : settledAt, deadline) - fx.now();
    await fx.sleep(Math.max(1, Math.min(POLL_MS * 2, until)));
  }
}
