import { RelinkError } from '../errors.js';
import { previousRelease } from '../releases.js';
import { DEFAULT_WAIT_S, type SpecOf } from './commands.js';
import { loadFor, releaseFilesOf, selectApp } from './io.js';
import type { Command } from './spec.js';
import { requestRelease } from './request.js';
import { damageWarner } from './warn.js';

export const rollbackCommand: Command<SpecOf<'rollback'>> = {
  async run({ values }, io, stop) {
    const timeoutMs = (values.timeout ?? DEFAULT_WAIT_S) * 1000;
    const config = await loadFor(values.config, io);
    const app = selectApp(config, values.app);
    const onDamaged = damageWarner(io, 'rollback');
    let wanted;
    if (values.to !== undefined) {
      wanted = await releaseFilesOf(app, values.to, '--to');
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
