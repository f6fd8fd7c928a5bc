/**
 * Resource limits of a process, as the kernel reports them in
 * /proc/PID/limits, and the prlimit(1) arguments that set an app's.
 *
 * Children inherit limits: an app started by an agent under a 1024 nofile
 * limit runs out of sockets whatever the OS is tuned to (the Supervisord
 * trap in the seeds). So what status shows is read from the running app
 * itself, never assumed from the config.
 */
import { readFile } from 'node:fs/promises';
import type { LimitName, Limits, LimitValue } from './config.js';
import { LIMIT_NAMES } from './config.js';
import { isErrno } from './errors.js';

/** The row of /proc/PID/limits and the prlimit(1) option for each limit relink sets. */
const ROWS: Record<LimitName, { row: string; option: string }> = {
  nofile: { row: 'Max open files', option: '--nofile' },
  nproc: { row: 'Max processes', option: '--nproc' },
  core: { row: 'Max core file size', option: '--core' },
};

export interface LimitPair {
  readonly soft: LimitValue;
  readonly hard: LimitValue;
}

export type ProcLimits = Readonly<Record<LimitName, LimitPair>>;

function value(s: string): LimitValue {
  return s === 'unlimited' ? 'unlimited' : Number(s);
}

/** Parse the text of /proc/PID/limits. */
export function parseLimits(text: string): ProcLimits {
  const out: Partial<Record<LimitName, LimitPair>> = {};
  for (const line of text.split('\n')) {
    // Names hold single spaces; columns are separated by runs of them.
    const m = /^(Max [A-Za-z ]+?)\s{2,}(\S+)\s+(\S+)/.exec(line);
    if (m === null) continue;
    const name = LIMIT_NAMES.find((n) => ROWS[n].row === m[1]);
    if (name !== undefined) out[name] = { soft: value(m[2]!), hard: value(m[3]!) };
  }
  for (const n of LIMIT_NAMES) {
    if (out[n] === undefined) throw new Error(`/proc limits: no "${ROWS[n].row}" row`);
  }
  return out as ProcLimits;
}

/** The limits of a running process (or of this one, "self"); undefined if it is gone. */
export async function readLimits(pid: number | 'self'): Promise<ProcLimits | undefined> {
  try {
    return parseLimits(await readFile(`/proc/${pid}/limits`, 'utf8'));
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ESRCH')) return undefined;
    throw err;
  }
}

/** a < b, with "unlimited" above every number. */
export function lower(a: LimitValue, b: LimitValue): boolean {
  if (a === 'unlimited') return false;
  return b === 'unlimited' || a < b;
}

/** The configured limits, as [name, value] pairs, skipping the unset ones. */
export function configuredLimits(limits: Limits): Array<[LimitName, LimitValue]> {
  return LIMIT_NAMES.flatMap((n) => (limits[n] === undefined ? [] : [[n, limits[n]] as [LimitName, LimitValue]]));
}

/** prlimit(1) options setting soft and hard limit to the configured value: ["--nofile=65536:65536", ...]. */
export function prlimitOptions(limits: Limits): string[] {
  return configuredLimits(limits).map(([n, v]) => `${ROWS[n].option}=${v}:${v}`);
}
