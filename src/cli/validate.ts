import path from 'node:path';
import { loadCurrent, sameContent } from '../current.js';
import { preflightRefusal, preflightRelease } from '../preflight.js';
import { signalExitCode } from './request.js';
import { RelinkError, RelinkErrors } from '../errors.js';
import { readLinks } from '../relink.js';
import { readerOf } from '../safefs.js';
import { resolveRunAs } from '../user.js';
import { readAppState } from '../state.js';
import { strategyMismatch } from '../verify.js';
import { EXIT, loadFor, selectApp } from './io.js';
import type { SpecOf } from './commands.js';
import type { Command } from './spec.js';

export const validateCommand: Command<SpecOf<'validate'>> = {
  async run({ values, positionals }, io, stop) {
    const config = await loadFor(values.config, io);
    const app = selectApp(config, values.app);
    const file = positionals.CURRENT_CONF === undefined ? app.currentFile : path.resolve(positionals.CURRENT_CONF);
    try {
      // Read as the app's user could: a root-only file is refused unread.
      const { release } = await loadCurrent(app, file, await readerOf(await resolveRunAs(app)));
      const links = await readLinks(app.links, app.releasesDir);
      const live = links.bin === release.bin && links.cfg === release.cfg && links.dirStale !== true;
      // The agent refuses a new binary under "inplace" while the app runs: so does this.
      if ((await readAppState(config.stateDir, app.name))?.state === 'running') {
        const misfit = await strategyMismatch(app, links.bin, release, sameContent);
        if (misfit !== undefined) throw misfit;
      }
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
