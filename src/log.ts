/**
 * The agent's logger: JSON lines on stdout (journald keeps them). The
 * destination is synchronous: the agent logs little, and pino's default
 * asynchronous one lost all but one of 20,000 lines on an unhandled SIGTERM
 * (measured, DESIGN.md). Fields about the app's process are `appPid`, since
 * `pid` is pino's own (the agent's).
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, dest: DestinationStream = pino.destination({ dest: 1, sync: true })): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, dest);
}
