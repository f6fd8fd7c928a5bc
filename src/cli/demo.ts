import { runDemo } from '../demo/demo.js';
import { EXIT, parse, UsageError, type IO } from './io.js';
import type { Command } from './main.js';

const HELP = `Usage: relink demo [--exit] [--port N]

Run the agent on a self-contained demo in a temp folder: three releases of
a small web app (built from C with the system's cc, inside that folder), a
deploy, a refused typo, a release that fails its health check and is rolled
back automatically, and a rollback by hand; then the agent stays up so you
can edit current.conf yourself. Ctrl-C stops it and removes the folder.

Options:
  --exit      stop after the scripted tour
  --port N    the demo app's port on 127.0.0.1 (default: a free one)
  -h, --help  this text
`;

export const demoCommand: Command = {
  async run(args: string[], io: IO, stop: Promise<string>): Promise<number> {
    const { values } = parse(args, { exit: { type: 'boolean' }, port: { type: 'string' } });
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    const port = values.port === undefined ? undefined : Number(values.port);
    if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) throw new UsageError(`--port must be 1-65535 (found: ${JSON.stringify(values.port)})`);
    await runDemo({ exitAfterTour: values.exit === true, port, print: (l) => io.stdout(`${l}\n`), stop });
    return EXIT.ok;
  },
};
