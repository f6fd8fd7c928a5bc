import path from 'node:path';
import { DEFAULT_WAIT_S, type SpecOf } from './commands.js';
import { loadFor, releaseFilesOf, selectApp, UsageError } from './io.js';
import type { Command } from './spec.js';
import { requestRelease } from './request.js';
import { damageWarner } from './warn.js';

export const deployCommand: Command<SpecOf<'deploy'>> = {
  async run({ values, positionals }, io, stop) {
    const byRelease = positionals.RELEASE !== undefined;
    const byFiles = values.bin !== undefined || values.cfg !== undefined;
    if (byRelease === byFiles) throw new UsageError('name the release either as RELEASE or as --bin PATH --cfg PATH');
    if (byFiles && (values.bin === undefined || values.cfg === undefined)) throw new UsageError('--bin and --cfg go together');
    const timeoutMs = (values.timeout ?? DEFAULT_WAIT_S) * 1000;
    const config = await loadFor(values.config, io);
    const app = selectApp(config, values.app);
    const wanted = positionals.RELEASE !== undefined ? await releaseFilesOf(app, positionals.RELEASE, 'RELEASE') : { bin: path.resolve(values.bin as string), cfg: path.resolve(values.cfg as string) };
    const sha256 = { bin: values['bin-sha256'], cfg: values['cfg-sha256'] };
    return requestRelease(config, app, wanted, { wait: values.wait === true, timeoutMs, json: values.json === true, verb: 'deploy', stop, onDamaged: damageWarner(io, 'deploy'), sha256 }, io);
  },
};
