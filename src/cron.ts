/**
 * node-cron, loaded on first use. Only prune schedules need it, and none is
 * set by default: an agent without one does not pay for the module (about
 * 3 MB of RSS, BENCHMARKS.md section 3). Loaded through require() because a
 * config is validated synchronously; node-cron ships a CommonJS build, and
 * this is the one place that loads it, so there is never a second copy.
 */
import { createRequire } from 'node:module';
import type * as NodeCron from 'node-cron';

export type { Logger as CronLogger } from 'node-cron';

let loaded: typeof NodeCron | undefined;

export function nodeCron(): typeof NodeCron {
  loaded ??= createRequire(import.meta.url)('node-cron') as typeof NodeCron;
  return loaded;
}

/** Whether node-cron has been loaded in this process (for tests). */
export function nodeCronLoaded(): boolean {
  return loaded !== undefined;
}
