import path from 'node:path';
import { releaseFiles } from '../config.js';
import { EXIT, loadFor, parse, selectApp, UsageError, type IO } from './io.js';
import type { Command } from './main.js';
import { parseTimeout, requestRelease } from './request.js';
import { damageWarner } from './warn.js';

const HELP = `Usage: relink deploy [--config FILE] [--app NAME] (RELEASE | --bin PATH --cfg PATH) [--wait] [--timeout S] [--json]

Name a release in the app's current.conf, atomically, exactly as a hand
edit would; the running agent applies it (validate, relink, start or signal,
verify, roll back if unhealthy). RELEASE is a shorthand: "2.0" means the
app's releaseNames patterns, by default app.2.0 + cfg.2.0 in the releases
folder. The agent's validation runs first, the app's preflight included (as
the app runs): a release it would refuse is refused here and current.conf is
not touched. A release already live whose current.conf names something
else (a change not applied yet, a refused typo) is written again.

Options:
  --config FILE   agent config (default $RELINK_CONFIG, else /etc/relink/config.json)
  --app NAME      the app (needed when the config has several)
  --bin PATH      the binary (with --cfg, instead of RELEASE)
  --cfg PATH      the config file
  --wait          wait for the agent's verdict on this change (Ctrl-C stops
                  waiting, exit 130; the deploy goes on in the agent)
  --timeout S     how long --wait waits (default 120)
  --json          one JSON object: {"outcome", "message", "entry"?}
  -h, --help      this text

Exit codes: 0 deployed and healthy (or already live; without --wait: written),
1 refused, rolled back, failed, superseded, no agent running, or no verdict
in time; 2 usage error; 130 (SIGINT) or 143 (SIGTERM) stopped waiting.
`;

export const deployCommand: Command = {
  async run(args: string[], io: IO, stop: Promise<string>): Promise<number> {
    const { values, positionals } = parse(args, {
      config: { type: 'string', short: 'c' }, app: { type: 'string' }, bin: { type: 'string' }, cfg: { type: 'string' },
      wait: { type: 'boolean' }, timeout: { type: 'string' }, json: { type: 'boolean' },
    }, true);
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    const byRelease = positionals.length > 0;
    const byFiles = values.bin !== undefined || values.cfg !== undefined;
    if (positionals.length > 1) throw new UsageError(`expected one RELEASE, got ${positionals.length}: ${positionals.join(' ')}`);
    if (byRelease === byFiles) throw new UsageError('name the release either as RELEASE or as --bin PATH --cfg PATH');
    if (byFiles && (values.bin === undefined || values.cfg === undefined)) throw new UsageError('--bin and --cfg go together');
    const timeoutMs = parseTimeout(values.timeout, 120);
    const config = await loadFor(values.config, io);
    const app = selectApp(config, values.app);
    const wanted = byRelease ? releaseFiles(app, positionals[0] as string) : { bin: path.resolve(values.bin as string), cfg: path.resolve(values.cfg as string) };
    return requestRelease(config, app, wanted, { wait: values.wait === true, timeoutMs, json: values.json === true, verb: 'deploy', stop, onDamaged: damageWarner(io, 'deploy') }, io);
  },
};
