import type { Janitor } from './procs.js';
import type { Tools } from './tools.js';

/** What every section gets from run.ts. */
export interface Context {
  readonly j: Janitor;
  /** A fresh temp folder for this run (apps, state, configs); removed at the end. */
  readonly root: string;
  readonly quick: boolean;
  readonly tools: Tools;
  /** dist/cli/main.js of the agent built from this tree. */
  readonly agentMain: string;
  readonly log: (line: string) => void;
}

/** `full` normally, `quick` with --quick. */
export function pick<T>(ctx: Context, full: T, quick: T): T {
  return ctx.quick ? quick : full;
}
