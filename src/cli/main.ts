#!/usr/bin/env node
/**
 * The only place that reads process.argv and the environment, and the only
 * place that exits. Every command returns an exit code or throws.
 */
import { RelinkError, RelinkErrors } from '../errors.js';
import { VERSION } from '../version.js';
import { agentCommand } from './agent.js';
import { demoCommand } from './demo.js';
import { deployCommand } from './deploy.js';
import { historyCommand } from './history.js';
import { EXIT, type IO } from './io.js';
import { pruneCommand } from './prune.js';
import { releasesCommand } from './releases.js';
import { rollbackCommand } from './rollback.js';
import { statusCommand } from './status.js';
import { validateCommand } from './validate.js';

export interface Command {
  readonly summary: string;
  readonly run: (args: string[], io: IO, stop: Promise<string>) => Promise<number>;
}

const COMMANDS: Record<string, Command> = {
  agent: agentCommand,
  status: statusCommand,
  validate: validateCommand,
  history: historyCommand,
  releases: releasesCommand,
  prune: pruneCommand,
  deploy: deployCommand,
  rollback: rollbackCommand,
  demo: demoCommand,
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`);
  return `relink ${VERSION}: on-host deploy agent (watch current.conf, relink, start or signal the app)

Usage: relink <command> [options]     relink <command> --help

Commands:
${lines.join('\n')}

The config file is --config FILE, else $RELINK_CONFIG, else /etc/relink/config.json.
Exit codes: 0 success, 1 refused or failed, 2 usage error.
`;
}

async function main(argv: string[]): Promise<number> {
  const io: IO = {
    stdout: (t) => process.stdout.write(t),
    stderr: (t) => process.stderr.write(t),
    env: process.env,
  };
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.stdout(usage());
    return name === undefined ? EXIT.usage : EXIT.ok;
  }
  if (name === '--version' || name === '-v') {
    io.stdout(`${VERSION}\n`);
    return EXIT.ok;
  }
  const command = COMMANDS[name];
  if (command === undefined) {
    io.stderr(`relink: unknown command ${JSON.stringify(name)}\n\n${usage()}`);
    return EXIT.usage;
  }
  // SIGTERM (systemd stop) and SIGINT (Ctrl-C) end long-running commands
  // gracefully; commands that finish quickly ignore the promise.
  const stop = new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  try {
    return await command.run(rest, io, stop);
  } catch (err) {
    if (err instanceof RelinkErrors) {
      io.stderr(`relink ${name}: ${err.problems.length} problem${err.problems.length === 1 ? '' : 's'}:\n${err.problems.map((p) => `  ${p.message}`).join('\n')}\n`);
      return EXIT.failed;
    }
    if (err instanceof RelinkError) {
      io.stderr(`relink ${name}: ${err.message}\n`);
      if (err.code === 'USAGE') io.stderr(`Try: relink ${name} --help\n`);
      return err.code === 'USAGE' ? EXIT.usage : EXIT.failed;
    }
    io.stderr(`relink ${name}: unexpected error: ${(err as Error).stack ?? String(err)}\n`);
    return EXIT.failed;
  }
}

process.exitCode = await main(process.argv.slice(2));
// Long-running commands have closed their watchers and timers by now; an
// explicit exit also ends a demo app's stray handles.
process.exit();
