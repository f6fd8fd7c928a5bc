#!/usr/bin/env -S node --max-semi-space-size=2 --no-opt --no-sparkplug --expose-gc
/**
 * The only place that reads process.argv and the environment, and the only
 * place that exits. Every command returns an exit code or throws.
 *
 * The flags on the first line trade JavaScript speed the agent does not need
 * for memory it keeps for as long as it runs (BENCHMARKS.md section 3):
 * - --max-semi-space-size=2 caps V8's young generation at 2 MB per
 *   semi-space (16 MB by default): each burst of deploys let V8 grow it and
 *   keep the pages, +27 MB of RSS over 1,000 deploys; capped, RSS is flat;
 * - --no-opt --no-sparkplug leave the agent's JavaScript to the bytecode
 *   interpreter: a deploy pass is a few milliseconds of I/O either way, and
 *   the compilers' code and output stay out of memory (about 6 MB of RSS
 *   with 1 app, 10 MB with 20). Unlike --jitless, WebAssembly (and so
 *   fetch(), whose HTTP parser is WebAssembly) keeps working;
 * - --expose-gc lets the agent ask for a full collection after deploys
 *   (src/compaction.ts): V8 left each deploy's garbage in the old space.
 * They go here, where `relink` and the systemd unit run it, and not in
 * NODE_OPTIONS, which the apps the agent starts would inherit. (`env -S`:
 * coreutils 8.30, 2018.)
 */
import { constants as osConstants } from 'node:os';
import { isErrno, RelinkError, RelinkErrors } from '../errors.js';
import { VERSION } from '../version.js';
import { COMMANDS, commandNamed } from './commands.js';
import { commandList, DEFAULT_CONFIG, EXIT, helpText, parseCommand, type IO } from './spec.js';

/** The codes loadConfig throws for a config file that does not load (src/config.ts). */
const CONFIG_PROBLEMS: ReadonlySet<string> = new Set(['CONFIG_SYNTAX', 'CONFIG_DUPLICATE_KEY', 'CONFIG_INVALID']);

function usage(): string {
  return `relink ${VERSION}: on-host deploy agent (watch current.conf, relink, start or signal the app)

Usage: relink <command> [options]     relink <command> --help     relink --version

Commands:
${commandList(COMMANDS)}

The config file is --config FILE, else $RELINK_CONFIG, else ${DEFAULT_CONFIG}.
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
  const command = commandNamed(name);
  if (command === undefined) {
    io.stderr(`relink: unknown command ${JSON.stringify(name)}\n\n${usage()}`);
    return EXIT.usage;
  }
  // SIGTERM (systemd stop) and SIGINT (Ctrl-C): a command that owns `stop`
  // (its spec's ownsStop) ends itself gracefully and says what goes on; any other
  // ends at once with the shell's status for the signal (130, 143), as it
  // would without a handler. A second signal has no handler left: it kills.
  const stop = new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  try {
    // The command line is checked before the command's code is loaded, and
    // only the command run is loaded: the resident agent never holds the code
    // of the demo, the report commands or their dependencies (memory it would
    // keep for as long as it runs; BENCHMARKS.md section 3).
    const input = parseCommand(command, rest);
    if (input === 'help') {
      io.stdout(helpText(command));
      return EXIT.ok;
    }
    const run = (await command.load()).run(input, io, stop);
    if (command.ownsStop) return await run;
    return await Promise.race([run, stop.then((signal) => 128 + (osConstants.signals[signal as NodeJS.Signals] ?? 0))]);
  } catch (err) {
    if (err instanceof RelinkErrors) {
      io.stderr(`relink ${name}: ${err.total} problem${err.total === 1 ? '' : 's'}:\n${err.problems.map((p) => `  ${p.message} [${p.code}]`).join('\n')}\n`);
      // A config file being edited: the agent is not broken by it, and says so nowhere else.
      if (name !== 'agent' && err.problems.some((p) => CONFIG_PROBLEMS.has(p.code))) {
        io.stderr(`A running agent is not affected: it keeps the config it last loaded. If this is its config file, fix it, then relink reload (which checks it first and changes nothing while it is still invalid); to act meanwhile, give this command -c with a copy of the last good file.\n`);
      }
      return EXIT.failed;
    }
    if (err instanceof RelinkError) {
      // The code as validate, status and the journal give it (a refused deploy, a request the agent cannot take).
      io.stderr(`relink ${name}: ${err.message}${err.code === 'USAGE' ? '' : ` [${err.code}]`}\n`);
      if (err.code === 'USAGE') io.stderr(`Try: relink ${name} --help\n`);
      return err.code === 'USAGE' ? EXIT.usage : EXIT.failed;
    }
    // A file or folder that is missing, unreadable or full is an operator's
    // problem to fix, not a crash: one line with the path and the errno.
    // Anything else is a bug: one line too, and the stack trace on request.
    if (isErrno(err)) {
      io.stderr(`relink ${name}: ${err.path ?? ''}${err.path === undefined ? '' : ': '}${err.code === 'ENOENT' ? 'no such file or folder' : err.message} (${err.code})\n`);
      return EXIT.failed;
    }
    io.stderr(`relink ${name}: unexpected error: ${(err as Error).message ?? String(err)}\n`);
    if (io.env['RELINK_DEBUG']) io.stderr(`${(err as Error).stack ?? ''}\n`);
    else io.stderr('(a bug in relink: please report it; RELINK_DEBUG=1 shows the stack trace)\n');
    return EXIT.failed;
  }
}

// A reader that went away (`relink logs | head`, `relink history | less` quit
// early): the output is no longer wanted, which is no error; the shell's
// status for SIGPIPE, as `cat` would give.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(128 + osConstants.signals.SIGPIPE);
  throw err;
});
process.exitCode = await main(process.argv.slice(2));
// What is still queued for a slow reader (a pager, `| (sleep 2; wc -l)`) is
// written first: process.exit() drops it (a trial lost 4,000 of 4,590 lines).
const flushed = (s: NodeJS.WriteStream): Promise<void> => new Promise((resolve) => {
  s.write('', () => resolve());
});
await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
// Long-running commands have closed their watchers and timers by now; an
// explicit exit also ends a demo app's stray handles.
process.exit();
