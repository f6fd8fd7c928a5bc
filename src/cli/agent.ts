import { Agent } from '../agent.js';
import { createLogger } from '../log.js';
import { EXIT, loadFor, parse, type IO } from './io.js';
import type { Command } from './main.js';

const HELP = `Usage: relink agent [--config FILE]

Run the resident agent in the foreground (systemd runs it this way). It
watches each app's current.conf, validates every change, relinks app.bin and
app.cfg atomically, and starts the app or sends it its reload signal. JSON
log lines go to stdout. SIGTERM or SIGINT stop the agent; the apps keep
running and the next agent adopts them.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  -h, --help      this text

Exit codes: 0 stopped by a signal, 1 bad config or another agent runs, 2 usage error.
`;

export const agentCommand: Command = {
  async run(args: string[], io: IO, stop: Promise<string>): Promise<number> {
    const { values } = parse(args, { config: { type: 'string', short: 'c' } });
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    const config = await loadFor(values.config, io);
    const log = createLogger(config.logLevel);
    const agent = await Agent.start(config, log);
    const signal = await stop;
    log.info({ signal }, 'stopping');
    await agent.close();
    return EXIT.ok;
  },
};
