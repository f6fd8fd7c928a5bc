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
import path from 'node:path';
import type { AppConfig } from './config.js';
import type { Release } from './current.js';
import type { Effects } from './effects.js';
import { RelinkError, type ErrorCode, type ErrorDetail } from './errors.js';
import { describeProbe } from './health.js';
import { rootsOf, type ProcInfo } from './proc.js';
import { outputWhere } from './appoutput.js';

/** The error's `file` when the app's output is in its log file (not the journal). */
function logFileOf(app: AppConfig): { file?: string } {
  const where = outputWhere(app);
  return where === app.logFile ? { file: where } : {};
}

/**
 * A verdict on what the app did or failed to do (never found after its
 * start, never ready, never healthy, never handed over): the app's own
 * output usually says why, so the message ends by saying where it is
 * (its log file, with the file key, or the journal), and, given the
 * process the verdict is about (`about`: fx and its pid), the file it
 * writes its errors to when that is another (nginx points its stderr at
 * its error_log once daemonized: "app.log" alone sent the operator to a
 * file with nothing in it).
 */
function appFault(app: AppConfig, code: ErrorCode, message: string, detail: ErrorDetail, about?: { fx: Effects; pid: number }): RelinkError {
  const own = about === undefined ? undefined : about.fx.errorFile(about.pid);
  const also = own === undefined ? '' : `; pid ${about!.pid} writes its errors to ${own}`;
  return new RelinkError(code, `${message} (see ${outputWhere(app)}${also})`, { ...logFileOf(app), ...detail });
}

/**
 * Where the successor of `pid` wrote its errors, for the reason: its
 * stderr, inherited from `pid`, when that is not the app's output (nginx
 * points it at its error log, where a new master refusing its config says
 * why; a trial found app.log empty and the reason naming only it). "" when
 * it is the app's output.
 */
function inheritedErrors(fx: Effects, pid: number): string {
  const file = fx.errorFile(pid);
  return file === undefined ? '' : `; pid ${pid} writes its errors to ${file}, and so did the successor it started`;
}

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

/** How `exited` describes a started process that exited with code 0 (see describeExit). */
export const CLEAN_EXIT = 'exit code 0';

/** How a started process ended, as awaitStart's `exited` says it: "exit code N" or "killed by SIGNAME". */
export function describeExit(code: number | null, signal: NodeJS.Signals | null): string {
  return signal !== null ? `killed by ${signal}` : `exit code ${code ?? '?'}`;
}

/**
 * After a start: wait for a process of the app to show up (the command may be a wrapper).
 * `exited` says whether the started process has exited, and how; `output`
 * gives the last lines it wrote, quoted in the reason when it exits at once.
 */
export async function awaitStart(fx: Effects, app: AppConfig, pid: number, exited: () => string | undefined, output: OutputTail | undefined = async () => '', stopBy: StopBy = NEVER, gen?: number): Promise<ProcInfo> {
  const deadline = fx.now() + app.reload.timeoutMs;
  for (;;) {
    const found = await fx.discover();
    // The started process, or what it became (a wrapper's child): a process
    // of its own generation `gen`, never another one's. Falling back to the
    // app's main judged the generation serving beside it (under "socket")
    // in place of a release that had exited at once: "deployed and healthy"
    // (trial of issue 15).
    const mine = found.all.find((p) => p.pid === pid) ?? (gen === undefined ? found.main : rootsOf(found.all.filter((p) => p.gen === gen))[0]);
    if (mine !== undefined) return mine;
    const how = exited();
    // With a pidFile the app may daemonize: the started process exits 0
    // and its child, named by the PID file once written, serves on.
    if (how !== undefined && !(how === CLEAN_EXIT && app.pidFile !== undefined)) {
      // No `output`: not this process's alone to quote (a generation serving beside it writes there too).
      const said = output === undefined ? undefined : await output().catch(() => '');
      throw new RelinkError('APP_EXITED', `the app exited right after start (${how})${said === undefined ? ` (see ${outputWhere(app)})` : said === '' ? `; nothing in ${outputWhere(app)}` : `; its last output: ${said}`}${how === CLEAN_EXIT ? daemonHint(fx) : ''}`,
        { ...logFileOf(app), rule: 'must keep running', found: how });
    }
    const stop = stopping(fx, stopBy, 'the started app appeared');
    if (stop !== undefined) throw stop;
    if (fx.now() >= deadline) {
      if (how === CLEAN_EXIT && app.pidFile !== undefined) {
        throw appFault(app, 'START_FAILED', `the started process (pid ${pid}) exited 0 (it daemonized) and ${app.pidFile} named no new process of the app within ${app.reload.timeoutMs} ms: does the app write its PID there (nginx: its "pid" directive must name the same file as "pidFile")? A daemon it left may still run, unmanaged`,
          { key: 'pidFile', rule: 'a daemonizing app must write its PID to pidFile', found: 'no new process named' });
      }
      throw appFault(app, 'START_FAILED', `the started process (pid ${pid}) could not be found within ${app.reload.timeoutMs} ms of starting ${JSON.stringify(app.command)}`,
        { key: 'command', rule: 'the started app must keep running' });
    }
    await fx.sleep(POLL_MS);
  }
}

/**
 * For a started process that exited 0 at once with no pidFile set: it may
 * have daemonized (forked, and the child serves on: nginx's default "daemon
 * on"), which the agent cannot follow without a PID file. The process now
 * listening on the health probe's port, when one does, is named: left
 * running, it is unmanaged, and the next start fails on its port.
 */
function daemonHint(fx: Effects): string {
  const taken = fx.probePortTaken();
  const who = taken?.pid === undefined ? '' : ` pid ${taken.pid}${taken.exe === undefined ? '' : ` (${taken.exe})`} now listens on the health probe's port ${taken.port}, unmanaged: is it the app's daemon?`;
  return `; an app that exits 0 at once may have daemonized (nginx's default "daemon on"):${who} set "pidFile" to the file it writes its PID to (the agent follows the daemon by it), or run it in the foreground`;
}

/**
 * How long a re-exec'ing app may go without a process of the new
 * generation after one of its children ended, before the deploy is judged
 * failed (see awaitHandoff).
 */
export const SUCCESSOR_GRACE_MS = 500;

/** The `found` of a STRATEGY_MISMATCH for an app that reloaded in place when a successor was expected: its rollback reloads it in place too. */
export const IN_PLACE_FOUND = 'reloaded in place';

/** Under "upgrade", how long without a new master before reload.signal is sent again (ms). */
const UPGRADE_RESEND_MS = 1_500;

/**
 * How long an app that re-executed itself in place (same PID, new image) is
 * given to start, until it waits for work, before it is judged anyway (ms).
 */
const REEXEC_START_MAX_MS = 5_000;

/** How often awaitHandoff scans the process table for the successor (ms); the old main is re-checked every POLL_MS. */
const SCAN_MS = 100;

/**
 * A re-exec'ing app (endless, tableflip, grace, gunicorn's re-exec, a
 * python app that execs itself) answers the signal by starting its
 * successor, the main process of generation `gen` (src/proc.ts: a child of
 * the old main started after the signal), or by re-executing in place
 * (same PID, a new executable or a new stack: execve). The handoff is done
 * when the successor runs and the old main has handed over: exited, or
 * stopped listening on the socket it passed on (it may go on draining its
 * in-flight requests for as long as reload.drainTimeoutMs allows; that is
 * not waited for). A successor that never becomes ready leaves the old
 * main listening, and the deploy ends in HANDOFF_TIMEOUT.
 *
 * A successor that dies before taking over (a bad binary, a config it
 * refuses) leaves the old main serving, as these libraries intend. It is
 * seen at once when its parent does not reap it (a zombie, as
 * facebookgo/grace leaves it), else through the old main reaping a child
 * (its childFaults grow): if SUCCESSOR_GRACE_MS later no process of the new
 * generation runs, the successor failed.
 */
export async function awaitHandoff(fx: Effects, app: AppConfig, old: ProcInfo, gen: number, stopBy: StopBy = NEVER, handover = true): Promise<ProcInfo> {
  const { signal, timeoutMs } = app.reload;
  const deadline = fx.now() + timeoutMs;
  /** When the signal went out (clock ticks since boot, the unit of a start time): the opening's, else now. */
  const signalledAt = fx.lineage()?.openings?.find((o) => o.gen === gen)?.fromTick ?? fx.ticks();
  let reaped = old.childFaults;
  /** Since when a child of the old main has ended with no successor running. */
  let orphanedAt: number | undefined;
  let nextScan = fx.now();
  /** A successor found while the old main still listens beside it (not handed over yet). */
  let waiting: ProcInfo | undefined;
  /**
   * The old main's children of older generations (its workers), every one
   * known since the signal: from the lineage known before it, so a worker
   * reaped before the first scan is not taken for a dead successor.
   */
  const oldKids = new Map((fx.lineage()?.members ?? []).filter((m) => m.gen < gen && m.pid !== old.pid).map((m) => [m.pid, m.startTime]));
  /**
   * Old children gone that were workers: started before the signal. A
   * child forked after it and seen before its exec (counted in the old
   * generation) that is gone may be the successor, dead before it was seen
   * exec'd (a bad release on a loaded host): its exit is not explained by a
   * replaced worker.
   */
  const goneWorkers = (alive: ReadonlySet<number>): number[] => [...oldKids].filter(([pid, start]) => !alive.has(pid) && start < signalledAt).map(([pid]) => pid);
  /**
   * Old children whose exit was matched to a growth of the old main's
   * childFaults. Each exit explains one growth only: a worker seen gone by
   * a scan before the counter was read again must still explain the growth
   * its reaping caused (gunicorn on SIGHUP was judged a dead successor).
   */
  const explained = new Set<number>();
  /** An old worker of the old main exited after the signal (in-place reloaders replace theirs). */
  let workersReplaced = false;
  /** The last scan's processes. */
  let last: readonly ProcInfo[] = [];
  /** Under "upgrade": when the signal is sent again if no new master appeared (see below). */
  let resendAt = fx.now() + UPGRADE_RESEND_MS;
  for (;;) {
    const same = await fx.verify(old);
    // Some apps execve() themselves in place: same PID, and a new binary or
    // (an interpreter re-running its script) a new stack.
    if (same !== undefined && (same.exe !== old.exe || (same.startStack !== undefined && old.startStack !== undefined && same.startStack !== old.startStack))) {
      // Re-executed in place: its new image is still starting (haproxy -W
      // reads its config and forks its new workers for tens of ms, more on
      // a loaded host, with the old workers answering meanwhile). It is
      // judged once it waits for work, its event loop running: a reload
      // signal sent while it starts is lost (the next deploy's SIGUSR2 to a
      // loading haproxy master went unanswered: HANDOFF_TIMEOUT). One whose
      // waiting the kernel does not show goes on after REEXEC_START_MAX_MS.
      for (const until = Math.min(deadline, fx.now() + REEXEC_START_MAX_MS); fx.now() < until;) {
        const waits = fx.waitingForWork(same.pid);
        if (waits !== false) break;
        await fx.sleep(POLL_MS);
      }
      return { ...((await fx.verify(same)) ?? same), gen };
    }
    if (same?.childFaults !== undefined && reaped !== undefined && same.childFaults > reaped) {
      reaped = same.childFaults;
      // A child of the old main ended. A worker of the old generation that
      // was seen before (haproxy's, after its master re-executed itself) is
      // not a successor that died: only a child not accounted for that way is.
      const alive = new Set((await fx.discover(old)).all.map((p) => p.pid));
      const gone = goneWorkers(alive).filter((pid) => !explained.has(pid));
      if (gone.length > 0) {
        workersReplaced = true;
        for (const pid of gone) explained.add(pid);
      } else {
        orphanedAt ??= fx.now();
        nextScan = fx.now();
      }
    }
    if (same === undefined || fx.now() >= nextScan) {
      nextScan = fx.now() + SCAN_MS;
      const found = await fx.discover(old);
      const kidsNow = new Map(found.all.filter((p) => p.ppid === old.pid && (p.gen ?? 0) < gen).map((p) => [p.pid, p.startTime]));
      // A child seen as the old main's image has since exec'd into the new
      // generation: the successor, caught between its fork and its exec (on
      // a loaded host), not a worker that was replaced.
      for (const p of found.all) if ((p.gen ?? 0) >= gen) oldKids.delete(p.pid);
      if (goneWorkers(new Set(kidsNow.keys())).length > 0) workersReplaced = true;
      for (const [pid, start] of kidsNow) oldKids.set(pid, start);
      last = found.all;
      const zombie = found.zombies?.find((z) => z.gen === gen);
      if (zombie !== undefined) {
        throw new RelinkError('APP_EXITED', `the new release did not take over: its process (pid ${zombie.pid}, started by pid ${old.pid} after ${signal}) died and was left unreaped (a zombie); pid ${old.pid} still serves the old release (see ${outputWhere(app)})`,
          { ...logFileOf(app), key: 'bin.file', rule: 'the successor must start and take over', found: `pid ${zombie.pid} is a zombie` });
      }
      // (A child of the old main that has not exec'd, a worker it forked
      // after the signal, is of the old generation: src/proc.ts #descend.)
      const successor = rootsOf(found.all.filter((p) => p.gen === gen))[0];
      // A process of the new generation runs: the child that ended was not
      // the only one it had (an in-place reloader's replaced worker).
      if (successor !== undefined) orphanedAt = undefined;
      // Nor when, under "reexec", the old main forked new children since the
      // signal (an in-place reloader replacing its workers: counted in its
      // own generation, they are no successor; the deadline tells it).
      else if (handover && found.all.some((p) => p.ppid === old.pid && p.startTime >= signalledAt && p.gen !== gen)) orphanedAt = undefined;
      // Handed over: the old main is gone, or has stopped listening on the
      // socket it passed on. Still listening, it may be the only one
      // accepting (the successor not ready yet): wait.
      // Under "upgrade" the old master serves on until the agent stops it:
      // the new one is all that is waited for.
      if (successor !== undefined && (!handover || same === undefined || !fx.sharesListener(old, successor))) {
        return successor;
      }
      if (successor !== undefined) waiting = successor;
      else if (waiting !== undefined) {
        throw new RelinkError('APP_EXITED', `the new release did not take over: its process (pid ${waiting.pid}) exited before pid ${old.pid} handed over to it; pid ${old.pid} still serves the old release (see ${outputWhere(app)}${inheritedErrors(fx, old.pid)})`,
          { ...logFileOf(app), key: 'bin.file', rule: 'the successor must start and take over', found: `pid ${waiting.pid} exited` });
      }
      // A master that was itself started by an upgrade ignores the signal
      // until it has noticed that its parent exited (gunicorn checks about
      // once a second: "USR2 signal ignored. Parent exists."). Sent again
      // while no new master runs; one that has started one ignores it too.
      if (!handover && successor === undefined && waiting === undefined && orphanedAt === undefined && same !== undefined && fx.now() >= resendAt) {
        resendAt = fx.now() + UPGRADE_RESEND_MS;
        fx.signal(old.pid, signal);
      }
      if (same === undefined) {
        throw new RelinkError('STRATEGY_MISMATCH', `pid ${old.pid} exited after ${signal} and no successor runs: the app does not restart itself on ${signal} (reload.strategy "${app.reload.strategy}"). An app without graceful-restart code deploys with reload.strategy "socket" (and "sockets": the agent holds its listening socket) or "restart"; or set reload.signal to the one its graceful restart uses (grace: SIGUSR2) (see ${outputWhere(app)})`,
          { ...logFileOf(app), key: 'reload.strategy', rule: 'a successor must take over', found: `pid ${old.pid} exited, no successor` });
      }
      if (orphanedAt !== undefined && fx.now() - orphanedAt >= SUCCESSOR_GRACE_MS) {
        throw new RelinkError('APP_EXITED', `the new release did not take over: a child of pid ${old.pid} exited after ${signal} and no new process of the app runs; pid ${old.pid} still serves the old release (see ${outputWhere(app)}${inheritedErrors(fx, old.pid)})`,
          { ...logFileOf(app), key: 'bin.file', rule: 'the successor must start and take over', found: 'successor exited' });
      }
    }
    const stop = stopping(fx, stopBy, `pid ${old.pid} handed over`);
    if (stop !== undefined) throw stop;
    if (fx.now() >= deadline) {
      // New workers of the same master, its old ones gone, and the master
      // listening on: it reloaded in place (gunicorn and nginx on SIGHUP).
      // (Forked, not exec'd, they are counted in the old master's generation: src/proc.ts #descend.)
      const newKids = last.filter((p) => p.ppid === old.pid && (p.gen === gen || p.startTime >= signalledAt));
      if (workersReplaced && newKids.length > 0 && !newKids.some((k) => last.some((p) => p.ppid === k.pid))) {
        throw new RelinkError('STRATEGY_MISMATCH', `pid ${old.pid} reloaded in place on ${signal} (it replaced its workers and kept running): reload.strategy "${app.reload.strategy}" waits for a successor that takes over. Use reload.strategy "inplace" for config changes, or "upgrade" (gunicorn, unicorn: SIGUSR2) or "socket" to change binaries`,
          { key: 'reload.strategy', rule: 'the app must start a successor that takes over', found: IN_PLACE_FOUND });
      }
      if (waiting !== undefined) {
        throw appFault(app, 'HANDOFF_TIMEOUT', `pid ${old.pid} still listens on the socket it shares with its successor (pid ${waiting.pid}) ${timeoutMs} ms after ${signal}: the successor never became ready, or the old process does not stop listening when it hands over (a new master that waits to be told to stop, as gunicorn, unicorn and nginx start on SIGUSR2, needs reload.strategy "upgrade")`,
          { key: 'reload.timeoutMs', rule: 'the old process must hand over (stop listening) once its successor is ready', found: `pid ${old.pid} still listening` }, { fx, pid: old.pid });
      }
      if (app.reload.strategy === 'upgrade') {
        // A master ignores the upgrade signal while the process that started
        // it runs: nginx run in the foreground ("daemon off;") by the agent
        // (its parent then) ignores SIGUSR2 for good; and while a new master
        // of its own runs. Said for what was found, not "inplace fits".
        const agentsChild = fx.parentOf(old.pid) === process.pid;
        throw appFault(app, 'HANDOFF_TIMEOUT', `no new master of the app started within ${timeoutMs} ms of ${signal} to pid ${old.pid} (reload.strategy "upgrade"): ${agentsChild
          ? `pid ${old.pid} is the agent's own child (it runs in the foreground), and a master ignores the upgrade signal while the process that started it runs (nginx with "daemon off;"): run it daemonized (nginx: "daemon on;", its "pid" file named by the app's pidFile), or use reload.strategy "socket"`
          : 'a master ignores the upgrade signal while a new master of its own still runs, or while its own parent does (a master started by an earlier upgrade: gunicorn logs "USR2 signal ignored. Parent exists."); its output says which'}`,
          { key: 'reload.strategy', rule: 'the master must start a new master on reload.signal', found: `pid ${old.pid} started none${agentsChild ? ', a child of the agent' : ''}` }, { fx, pid: old.pid });
      }
      throw appFault(app, 'HANDOFF_TIMEOUT', `no new process of the app started within ${timeoutMs} ms of ${signal} to pid ${old.pid} (reload.strategy is "${app.reload.strategy}"; "inplace" fits an app that reloads without a new process, "socket" or "restart" one that has no reload at all)`,
        { key: 'reload.strategy', rule: 'the app must start a successor (or re-execute itself)', found: `pid ${old.pid} started none` }, { fx, pid: old.pid });
    }
    await fx.sleep(POLL_MS);
  }
}

/** An in-place reloader (nginx) keeps its PID: it must simply still be there. */
export async function confirmInPlace(fx: Effects, app: AppConfig, main: ProcInfo): Promise<ProcInfo> {
  const same = await fx.verify(main);
  if (same === undefined) {
    throw new RelinkError('APP_EXITED', `pid ${main.pid} exited after ${app.reload.signal} (see ${outputWhere(app)})`, { ...logFileOf(app), rule: 'must survive the reload signal' });
  }
  return same;
}

/**
 * Does a process started (or re-executed) after the switch run `release`?
 * An ELF release is its executable. A script or a wrapper runs an
 * interpreter from outside the releases folder, started from the link: it
 * does. A process running another release's executable does not.
 */
export function runsRelease(app: AppConfig, proc: ProcInfo, release: Release): boolean {
  if (proc.exe === release.bin) return true;
  // The releases folder as resolved (release.bin is a real path; releasesDir
  // may lead through a link): one folder up from a release file, or, in the
  // folders layout ("{release}/app", issue 15), as many as the pattern is deep.
  let releasesReal = release.bin;
  for (let i = app.releaseNames.bin.split('/').length; i > 0; i--) releasesReal = path.dirname(releasesReal);
  const inReleases = proc.exe.startsWith(app.releasesDir + path.sep) || proc.exe.startsWith(path.dirname(release.bin) + path.sep) || proc.exe.startsWith(releasesReal + path.sep);
  return !inReleases;
}

/**
 * A deploy the strategy cannot carry out honestly, refused before anything
 * is switched (by the agent, `relink validate` and `relink deploy` alike):
 * "inplace" reloads the running process, which keeps its executable, so a
 * bin.file other than `linkedBin` (what app.bin points at) would never
 * run. A bin.file that is a byte-for-byte copy of it (`same`:
 * current.ts sameContent) is no new binary: in the folder layout every
 * release has a path of its own for the same nginx. Returns the
 * STRATEGY_MISMATCH error, or undefined when the deploy fits.
 */
export async function strategyMismatch(app: AppConfig, linkedBin: string | undefined, release: Release, same: (a: string, b: string) => Promise<boolean>): Promise<RelinkError | undefined> {
  if (app.reload.strategy !== 'inplace' || linkedBin === undefined || linkedBin === release.bin) return undefined;
  if (await same(linkedBin, release.bin)) return undefined;
  return new RelinkError('STRATEGY_MISMATCH',
    `"bin.file" changes (${linkedBin} -> ${release.bin}), but reload.strategy "inplace" reloads the running process, which keeps its executable: the new binary would never run. Binaries change under "upgrade" (nginx, gunicorn, unicorn: a new master on SIGUSR2), "socket" (with "sockets") or "restart"; under "inplace" deploy a new cfg.file only (or a bin.file with the same bytes as the running one)`,
    { file: app.currentFile, key: 'bin.file', rule: 'reload.strategy "inplace" changes cfg.file only', found: release.bin });
}

/** A started or re-exec'd process must run the deployed release, not some other one (see runsRelease). */
export function assertBinary(app: AppConfig, proc: ProcInfo, release: Release): void {
  if (!runsRelease(app, proc, release)) {
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
 * no probe is sent before the settle time is over. Returns the process
 * judged: the one given, or the child it daemonized into.
 */
/** A process the agent started itself: how it ended and what it wrote, for the reason when it exits before its verdict. */
export interface StartedProcess {
  readonly pid: number;
  /** How it ended ("exit code 3", "killed by SIGSEGV": describeExit), resolved once it has exited. */
  readonly ended: Promise<string>;
  /** Its last output; undefined when it is not its own to quote (a generation serving beside it writes to the same log). */
  readonly output: OutputTail | undefined;
}

/**
 * How long a probe of a generation that shares its socket with an older one
 * is held back at most while none of its processes has been seen waiting
 * for connections (ms; Effects.probe `onlyIfAccepting`): a server whose
 * waiting the kernel does not show is still probed, after 250 ms, then,
 * each such probe having been taken by the older generation, after twice
 * as long, up to 1 s. Before, a probe answered by the older generation was
 * sent again at once: 5 to 7 `ss` per gunicorn deploy, most while the new
 * generation was starting.
 */
const HELD_PROBE_MS = { first: 250, max: 1_000 } as const;

/** How long a started process's exit status is waited for once it is gone from /proc (ms): it is reaped at about the same moment. */
const EXIT_STATUS_WAIT_MS = 500;
/** How long the daemon of a started process that exited 0 is looked for (ms). */
const DAEMON_GRACE_MS = 1_000;

export async function awaitHealthy(fx: Effects, app: AppConfig, proc: ProcInfo, stopBy: StopBy = NEVER, since?: number, alreadyReady = false, started?: StartedProcess): Promise<ProcInfo> {
  const { probe, deadlineMs, settleMs, intervalMs, readiness } = app.health;
  const start = fx.now();
  const deadline = start + deadlineMs;
  const settledAt = start + settleMs;
  let last = '';
  let nextProbe = settledAt;
  /** Readiness "notify": READY=1 received (from when the generation was started or signalled). */
  let ready = readiness !== 'notify' || alreadyReady;
  /** Probe connections accepted by an older generation sharing the socket (not counted). */
  let older = 0;
  /** Probe connections accepted by the generation judged, which failed all the same (its own answers: HTTP 503, a timeout). */
  let judgedFailed = 0;
  /** The last probe answered by another program holding the app's port while the app listened on nothing (ProbeResult.foreign). */
  let foreign = '';
  /** When a probe was last sent (or the settle time ended): one held back longer than `heldMs` is sent anyway. */
  let sentAt = settledAt;
  let heldMs: number = HELD_PROBE_MS.first;
  /** Why the last probe held back was (the verdict's "last" when no probe was sent). */
  let held = '';
  for (;;) {
    if ((await fx.verify(proc)) === undefined) {
      // An app that daemonizes: its main exits and its one child serves on.
      // From the deploy's start (the signal, the launch) when known: a
      // successor found and judged a moment before it died read "exited 0
      // ms after the deploy" (a trial).
      const ms = fx.now() - (since ?? start);
      let found = await fx.discover(proc);
      // One the agent started: how it ended (its exit event comes a moment
      // after /proc shows it a zombie: Node reaps it, so it is never "left
      // unreaped").
      const own = started?.pid === proc.pid ? started : undefined;
      let how: string | undefined;
      if (found.followed?.from !== proc.pid && own !== undefined) {
        how = await Promise.race([own.ended, fx.sleep(EXIT_STATUS_WAIT_MS).then(() => undefined)]);
        // One that exited 0 may have daemonized: its daemon is looked for
        // again for DAEMON_GRACE_MS (the first look, at the main's exit,
        // missed it in 1 run of 6 of the daemon test).
        for (const until = fx.now() + DAEMON_GRACE_MS; how === 'exit code 0' && found.followed?.from !== proc.pid && fx.now() < until;) {
          await fx.sleep(POLL_MS * 5);
          found = await fx.discover(proc);
        }
      }
      // (The generation judged may be the serving one, a first start, or a
      // newer one beside it: "socket"; its followed process is in `all`.)
      const next = found.followed?.from === proc.pid ? found.all.find((p) => p.pid === found.followed?.to) : undefined;
      if (next !== undefined) {
        proc = next;
        continue;
      }
      if (own === undefined && found.zombies?.some((z) => z.pid === proc.pid) === true) {
        throw new RelinkError('APP_EXITED', `pid ${proc.pid} died ${ms} ms after the deploy, before it was judged healthy (health.settleMs ${settleMs} ms, then the probe), and was left unreaped by its parent (a zombie) (see ${outputWhere(app)})`,
          { ...logFileOf(app), key: 'health.settleMs', rule: 'the app must stay up', found: `pid ${proc.pid} is a zombie` });
      }
      // When its own, what it said last ("pid N exited 40 ms after the
      // deploy" alone sent the operator to the log).
      const said = own?.output === undefined ? '' : await own.output().catch(() => '');
      const daemon = how === CLEAN_EXIT && app.pidFile === undefined ? daemonHint(fx) : '';
      // Not the agent's own child (a new master started by the old one): its
      // errors went where its parent's stderr goes (nginx: its error log).
      const inherited = own === undefined && proc.ppid > 1 ? inheritedErrors(fx, proc.ppid) : '';
      // Its probes answered by the program holding its port: said, it is why.
      const squatted = foreign === '' ? '' : `; the probe was ${foreign}`;
      throw new RelinkError('APP_EXITED', `pid ${proc.pid} exited ${ms} ms after the deploy, before it was judged healthy (health.settleMs ${settleMs} ms, then the probe)${how === undefined ? '' : `, ${how}`}${said === '' ? ` (see ${outputWhere(app)}${inherited})` : `; its last output: ${said}`}${squatted}${daemon}`,
        { ...logFileOf(app), key: 'health.settleMs', rule: 'the app must stay up', found: how ?? `exited after ${ms} ms` });
    }
    if (!ready) ready = await fx.notifiedReady(since ?? start, fx.now());
    if (ready && fx.now() >= settledAt) {
      if (probe === undefined) return proc;
      if (fx.now() >= nextProbe) {
        // Judged on the generation of `proc`: an answer from an older one
        // sharing the socket is not counted, and is asked again at once.
        const forced = fx.now() - sentAt >= heldMs;
        const r = await fx.probe(proc, { onlyIfAccepting: !forced });
        if (r.ok) return proc;
        if (r.notSent === true) {
          held = r.detail;
          nextProbe = fx.now() + POLL_MS;
        } else if (r.older === true) {
          sentAt = fx.now();
          if (forced) heldMs = Math.min(heldMs * 2, HELD_PROBE_MS.max);
          // (A generation that takes connections is never held: effects.ts takesConnections.)
          older += 1;
          nextProbe = fx.now();
        } else {
          sentAt = fx.now();
          last = r.detail;
          if (r.foreign === true) foreign = r.detail;
          if (r.judged === true) judgedFailed += 1;
          nextProbe = fx.now() + intervalMs;
        }
      }
    }
    const stop = stopping(fx, stopBy, 'the release was judged healthy');
    if (stop !== undefined) throw stop;
    if (fx.now() >= deadline) {
      if (!ready) {
        throw appFault(app, 'NOT_READY', `pid ${proc.pid} did not say READY=1 through sd_notify within ${deadlineMs} ms (health.readiness is "notify"; NOTIFY_SOCKET was set in its environment)`,
          { key: 'health.readiness', rule: 'the new generation must send READY=1 to $NOTIFY_SOCKET within health.deadlineMs', found: 'no READY=1' }, { fx, pid: proc.pid });
      }
      // Where the new generation's socket comes from: the agent ("socket",
      // LISTEN_FDS), else the old master it inherits it from ("upgrade").
      const takes = app.reload.strategy === 'socket' ? 'does it take LISTEN_FDS?' : 'does it listen on the socket it inherits, not an address of its own?';
      if (last === '' && held !== '' && older === 0) last = held;
      if (last === '' && older > 0) {
        throw appFault(app, 'UNHEALTHY', `every one of ${older} probe connections in ${deadlineMs} ms was accepted by an older generation sharing the socket, none by pid ${proc.pid}: the new generation does not accept on the shared socket (${takes}), or the old one takes every connection first (a process blocked in a blocking accept() does; servers sharing a socket accept non-blocking)`,
          { key: 'health', rule: 'the new generation must accept and answer a probe', found: `${older} probes answered by the older generation` }, { fx, pid: proc.pid });
      }
      const what = probe === undefined ? 'the settle time' : describeProbe(probe);
      // The last attempt timing out must not hide that the others all went
      // to the old generation; but once the new one took probes and failed
      // them itself (HTTP 503), those the old one took are no fault: both
      // accept on the shared socket until the old one is stopped.
      const others = `${older} other probe connection${older === 1 ? ' was' : 's were'}`;
      const alsoOlder = older === 0 ? ''
        : judgedFailed > 0 ? `; ${others} accepted by the older generation, which shares the socket until it is stopped (not counted)`
          : `; ${others} accepted by an older generation sharing the socket, not by pid ${proc.pid} (${takes})`;
      throw appFault(app, 'UNHEALTHY', `${what} did not pass within ${deadlineMs} ms (checked from the end of the settle time of ${settleMs} ms; last: ${last || 'no answer'}${alsoOlder})`,
        { key: 'health', rule: 'must answer 2xx (or accept) at the end of the settle time, within the deadline', found: last || 'no answer' }, { fx, pid: proc.pid });
    }
    const until = Math.min(fx.now() >= settledAt && ready ? nextProbe : fx.now() >= settledAt ? fx.now() + POLL_MS : settledAt, deadline) - fx.now();
    await fx.sleep(Math.max(1, Math.min(POLL_MS * 2, until)));
  }
}
