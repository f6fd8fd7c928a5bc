/**
 * CPU priority of whole processes, as nice values (setpriority(2),
 * PRIO_PROCESS; -20 highest, 19 lowest, 0 the default).
 *
 * On Linux a nice value belongs to a thread: setpriority(PRIO_PROCESS, pid)
 * changes the thread whose id is `pid` only (the main thread), and a new
 * thread or child takes its creator's value (sched(7), "The nice value").
 * So a process is reniced thread by thread, from /proc/PID/task.
 *
 * Raising a nice value above what the caller may lower it back to, and
 * renicing another user's process, need CAP_SYS_NICE.
 */
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';

/** CAP_SYS_NICE's bit in /proc/PID/status capability masks (linux/capability.h). */
const CAP_SYS_NICE = 23n;

let capable: boolean | undefined;

/**
 * Whether this process may renice any process both ways: CAP_SYS_NICE in
 * its effective set (read once from /proc/self/status). Root under a
 * systemd CapabilityBoundingSet= without CAP_SYS_NICE may not.
 */
export function mayRenice(): boolean {
  if (capable !== undefined) return capable;
  try {
    const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0';
    capable = ((BigInt(`0x${capEff}`) >> CAP_SYS_NICE) & 1n) === 1n;
  } catch {
    capable = false;
  }
  return capable;
}

/** The nice value of `pid`'s main thread (-20..19); undefined when it is gone. */
export function niceOf(pid: number): number | undefined {
  try {
    return os.getPriority(pid);
  } catch {
    return undefined;
  }
}

/**
 * Set every thread of `pid` to nice `to` (clamped to -20..19); with
 * `onlyAt`, only the threads whose nice value is `onlyAt` now (so one the
 * app set apart itself keeps its own). Returns how many threads were set:
 * 0 when the process is gone. A thread that ends meanwhile is skipped; a
 * refusal (EACCES, EPERM) is thrown as Node's SystemError.
 */
export function setNice(pid: number, to: number, onlyAt?: number): number {
  const nice = Math.max(-20, Math.min(19, Math.trunc(to)));
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return 0;
  }
  let set = 0;
  for (const tid of tids) {
    try {
      if (onlyAt !== undefined && os.getPriority(Number(tid)) !== onlyAt) continue;
      os.setPriority(Number(tid), nice);
      set += 1;
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { info?: { code?: string } };
      if ((e.info?.code ?? e.code) === 'ESRCH') continue;
      throw err;
    }
  }
  return set;
}
