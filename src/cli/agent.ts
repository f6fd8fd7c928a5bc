import { Agent } from '../agent.js';
import { createLogger } from '../log.js';
import { EXIT, loadFor, parse, type IO } from './io.js';
import type { Command } from './main.js';

const HELP = `Usage: relink agent [--config FILE]

Run the resident agent in the foreground (systemd runs it this way). It
watches each app's current.conf, validates every change, relinks app.bin and
app.cfg atomically, and starts the app or sends it its reload signal. JSON
log lines go to stdout. SIGTERM or SIGINT stop the agent; the apps keep
running and the next agent adopts them. SIGHUP (systemctl reload relink, or
relink reload) re-reads the config: an invalid file changes nothing.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  -h, --help      this text

It refuses to run as PID 1 (a container's entrypoint): the successors its
apps start when they re-execute are re-parented to PID 1 and would stay
zombies, one per deploy. Run it under an init that reaps them: docker run
--init, or tini.

Exit codes: 0 stopped by a signal, 1 bad config, another agent runs, or PID 1; 2 usage error.
`;

/**
 * Why the agent must not run as `pid`, or undefined. As PID 1 it would be
 * the parent of every orphan in its PID namespace (an app's successor once
 * the old process exits), and Node reaps only the children it spawned.
 */
export function pidOneRefusal(pid: number): string | undefined {
  if (pid !== 1) return undefined;
  return 'relink agent: refusing to run as PID 1 (a container entrypoint): the processes your apps re-execute into would be re-parented to it and never reaped (a zombie per deploy). Run it under an init that reaps orphans: `docker run --init ...`, or tini as the entrypoint (ENTRYPOINT ["/usr/bin/tini", "--", "relink", "agent"])\n';
}

export const agentCommand: Command = {
  async run(args: string[], io: IO, stop: Promise<string>): Promise<number> {
    const { values } = parse(args, { config: { type: 'string', short: 'c' } });
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
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
