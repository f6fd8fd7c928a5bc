import { Agent } from '../agent.js';
import { createLogger } from '../log.js';
import { EXIT, loadFor } from './io.js';
import type { SpecOf } from './commands.js';
import type { Command } from './spec.js';

/**
 * Why the agent must not run as `pid`, or undefined. As PID 1 it would be
 * the parent of every orphan in its PID namespace (an app's successor once
 * the old process exits), and Node reaps only the children it spawned.
 */
export function pidOneRefusal(pid: number): string | undefined {
  if (pid !== 1) return undefined;
  return 'relink agent: refusing to run as PID 1 (a container entrypoint): the processes your apps re-execute into would be re-parented to it and never reaped (a zombie per deploy). Run it under an init that reaps orphans: `docker run --init ...`, or tini as the entrypoint (ENTRYPOINT ["/usr/bin/tini", "--", "relink", "agent"])\n';
}

export const agentCommand: Command<SpecOf<'agent'>> = {
  async run({ values }, io, stop) {
    const refusal = pidOneRefusal(process.pid);
    if (refusal !== undefined) {
      io.stderr(refusal);
      return EXIT.failed;
    }
    const config = await loadFor(values.config, io);
    const log = createLogger(config.logLevel);
    // SIGHUP re-reads the config (Agent.reload). Until the agent has
    // started, one is remembered, not fatal (SIGHUP's default action).
    let hup: (() => void) | undefined;
    let early = false;
    const onHup = (): void => {
      if (hup === undefined) early = true;
      else hup();
    };
    process.on('SIGHUP', onHup);
    try {
      const agent = await Agent.start(config, log);
      hup = () => {
        log.info({ file: agent.config.file }, 'SIGHUP: reloading the config');
        // Its outcome is logged (and recorded in agent.json) by reload itself.
        agent.reload().catch(() => undefined);
      };
      if (early) hup();
      const signal = await stop;
      log.info({ signal }, 'stopping');
      await agent.close();
      return EXIT.ok;
    } finally {
      process.off('SIGHUP', onHup);
    }
  },
};
