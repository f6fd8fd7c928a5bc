import { releaseFiles } from '../config.js';
import { RelinkError } from '../errors.js';
import { previousRelease } from '../releases.js';
import { EXIT, loadFor, parse, selectApp, type IO } from './io.js';
import type { Command } from './main.js';
import { parseTimeout, requestRelease } from './request.js';
import { damageWarner } from './warn.js';

const HELP = `Usage: relink rollback [--config FILE] [--app NAME] [--to RELEASE] [--wait] [--timeout S] [--json]

Go back to the previous release, or to the named one, by rewriting
current.conf exactly as relink deploy does. The previous release is the
newest one the journal records as deployed, other than what runs now (the
app's links; where a link is missing, the last known-good release): the
same one \`relink releases\` flags as previous and prune keeps.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  --app NAME      the app (needed when the config has several)
  --to RELEASE    this release instead (e.g. 1.0 for app.1.0 + cfg.1.0)
  --wait          wait for the agent's verdict (Ctrl-C stops waiting, exit 130;
                  the rollback goes on in the agent)
  --timeout S     how long --wait waits (default 120)
  --json          one JSON object: {"outcome", "message", "entry"?}
  -h, --help      this text

Exit codes: 0 rolled back and healthy (or already live; without --wait:
written), 1 refused, failed, nothing to roll back to, no agent running, or
no verdict in time; 2 usage error; 130 (SIGINT) or 143 (SIGTERM) stopped
waiting.
`;

export const rollbackCommand: Command = {
  async run(args: string[], io: IO, stop: Promise<string>): Promise<number> {
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
    const onDamaged = damageWarner(io, 'rollback');
    let wanted;
    if (values.to !== undefined) {
      wanted = releaseFiles(app, values.to);
    } else {
      wanted = await previousRelease(config.stateDir, app, { onDamaged });
      if (wanted === undefined) {
        throw new RelinkError('UNKNOWN_RELEASE', `${app.name}: the journal has no earlier deployed release to roll back to; name one with --to RELEASE`,
          { file: app.currentFile, rule: 'a previous known-good release must exist' });
      }
    }
    return requestRelease(config, app, wanted, { wait: values.wait === true, timeoutMs, json: values.json === true, verb: 'rollback', stop, onDamaged }, io);
  },
};
