import { releaseFiles } from '../config.js';
import { RelinkError } from '../errors.js';
import { readHistory } from '../history.js';
import { readLinks } from '../relink.js';
import { readAppState } from '../state.js';
import { EXIT, loadFor, parse, selectApp, type IO } from './io.js';
import type { Command } from './main.js';
import { parseTimeout, requestRelease } from './request.js';

const HELP = `Usage: relink rollback [--config FILE] [--app NAME] [--to RELEASE] [--wait] [--timeout S] [--json]

Go back to the previous known-good release (the newest deployed release in
the journal other than what runs now), or to the named one, by rewriting
current.conf exactly as relink deploy does.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  --app NAME      the app (needed when the config has several)
  --to RELEASE    this release instead (e.g. 1.0 for app.1.0 + cfg.1.0)
  --wait          wait for the agent's verdict
  --timeout S     how long --wait waits (default 120)
  --json          one JSON object: {"outcome", "message", "entry"?}
  -h, --help      this text

Exit codes: 0 rolled back and healthy (or already live; without --wait:
written), 1 refused, failed, nothing to roll back to, no agent running, or
no verdict in time; 2 usage error.
`;

export const rollbackCommand: Command = {
  async run(args: string[], io: IO): Promise<number> {
    const { values } = parse(args, {
      config: { type: 'string', short: 'c' }, app: { type: 'string' }, to: { type: 'string' },
      wait: { type: 'boolean' }, timeout: { type: 'string' }, json: { type: 'boolean' },
    });
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    const timeoutMs = parseTimeout(values.timeout, 120);
    const config = await loadFor(values.config, io);
    const app = selectApp(config, values.app);
    let wanted;
    if (values.to !== undefined) {
      wanted = releaseFiles(app, values.to);
    } else {
      const links = await readLinks(app.links);
      const saved = await readAppState(config.stateDir, app.name);
      const live = { bin: links.bin ?? saved?.lastGood?.bin, cfg: links.cfg ?? saved?.lastGood?.cfg };
      const previous = (await readHistory(config.stateDir, app.name)).reverse()
        .find((e) => e.outcome === 'deployed' && e.to.bin !== null && e.to.cfg !== null && !(e.to.bin === live.bin && e.to.cfg === live.cfg));
      if (previous === undefined) {
        throw new RelinkError('UNKNOWN_RELEASE', `${app.name}: the journal has no earlier deployed release to roll back to; name one with --to RELEASE`,
          { file: app.currentFile, rule: 'a previous known-good release must exist' });
      }
      wanted = { bin: previous.to.bin as string, cfg: previous.to.cfg as string };
    }
    return requestRelease(config, app, wanted, { wait: values.wait === true, timeoutMs, json: values.json === true, verb: 'rollback' }, io);
  },
};
