import path from 'node:path';
import { loadCurrent } from '../current.js';
import { preflightRefusal, preflightRelease } from '../preflight.js';
import { signalExitCode } from './request.js';
import { RelinkError, RelinkErrors } from '../errors.js';
import { readLinks } from '../relink.js';
import { readerOf } from '../safefs.js';
import { resolveRunAs } from '../user.js';
import { EXIT, loadFor, parse, selectApp, UsageError, type IO } from './io.js';
import type { Command } from './main.js';

const HELP = `Usage: relink validate [--config FILE] [--app NAME] [--json] [CURRENT_CONF]

Check a current.conf exactly as the agent would (a regular file the app's
user may read, JSON, keys, that both files exist inside the app's releases
folder, the binary is executable, who could have written them, and the
app's preflight, run as the app runs, for a release that is not live yet)
and apply nothing. CURRENT_CONF defaults
to the app's own current.conf; relative paths inside it resolve against the
folder holding it.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  --app NAME      the app (needed when the config has several)
  --json          {"ok": true|false, "file", "bin", "cfg", "live", "problems": [...]}
  -h, --help      this text

Exit codes: 0 the agent would deploy it, 1 it would refuse it (reasons on stderr), 2 usage error.
`;

export const validateCommand: Command = {
  async run(args: string[], io: IO, stop: Promise<string>): Promise<number> {
    const { values, positionals } = parse(args, { config: { type: 'string', short: 'c' }, app: { type: 'string' }, json: { type: 'boolean' } }, true);
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    if (positionals.length > 1) throw new UsageError(`expected at most one CURRENT_CONF, got ${positionals.length}`);
    const config = await loadFor(values.config, io);
    const app = selectApp(config, values.app);
    const file = positionals[0] === undefined ? app.currentFile : path.resolve(positionals[0]);
    try {
      // Read as the app's user could: a root-only file is refused unread.
      const { release } = await loadCurrent(app, file, await readerOf(await resolveRunAs(app)));
      const links = await readLinks(app.links);
      const live = links.bin === release.bin && links.cfg === release.cfg;
      // The agent runs the app's preflight on a release that is not live yet: so does this, as the app runs.
      if (!live) {
        // Ctrl-C (or SIGTERM) kills the preflight with everything it started, then ends.
        let stopped: string | undefined;
        const ac = new AbortController();
        void stop.then((signal) => {
          stopped = signal;
          ac.abort();
        });
        const pre = await preflightRelease(app, release, ac.signal);
        if (pre?.aborted === true && stopped !== undefined) {
          io.stderr(`relink validate: stopped (${stopped}) during the preflight; nothing was judged\n`);
          return signalExitCode(stopped);
        }
        if (pre !== undefined && !pre.ok) throw preflightRefusal(app, release, pre);
      }
      if (values.json) io.stdout(`${JSON.stringify({ ok: true, app: app.name, file, bin: release.bin, cfg: release.cfg, live, problems: [] })}\n`);
      else io.stdout(`${file}: OK for app ${app.name}${live ? ' (already live)' : ''}\n  bin.file  ${release.bin}\n  cfg.file  ${release.cfg}\n`);
      return EXIT.ok;
    } catch (err) {
      if (!(err instanceof RelinkError)) throw err;
      const problems = err instanceof RelinkErrors ? err.problems : [err];
      if (values.json) io.stdout(`${JSON.stringify({ ok: false, app: app.name, file, problems: problems.map((p) => p.toJSON()) })}\n`);
      else io.stderr(`${problems.map((p) => `${p.message} [${p.code}]`).join('\n')}\n`);
      return EXIT.failed;
    }
  },
};
