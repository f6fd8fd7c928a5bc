/**
 * Launch settings (src/settings.ts): what `relink status` compares to say
 * "restart to apply", kept as digests.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { changedSettings, launchSettings } from '../src/settings.js';

const base = {
  command: ['./app.bin'], user: 'web', group: undefined as string | undefined, sockets: [] as string[], env: { A: '1' }, limits: { nofile: undefined, nproc: undefined, core: undefined },
  dir: '/srv/web', logFile: '/srv/web/app.log', log: { journal: false, maxBytes: 52_428_800, backups: 10 },
};

test('sockets and group count as launch settings: a generation started on other sockets, or as another group, needs a restart', () => {
  const started = launchSettings({ ...base, sockets: ['127.0.0.1:8080'] });
  assert.deepEqual(changedSettings(started, launchSettings({ ...base, sockets: ['127.0.0.1:8080', 'unix:/run/web.sock'] })), ['sockets']);
  assert.deepEqual(changedSettings(started, launchSettings({ ...base, sockets: [] })), ['sockets']);
  assert.deepEqual(changedSettings(started, launchSettings({ ...base, sockets: ['127.0.0.1:8080'], group: 'www' })), ['group']);
  assert.deepEqual(changedSettings(started, launchSettings({ ...base, sockets: ['127.0.0.1:8080'], env: { A: '2' } })), ['env.A']);
});

test('an app with no sockets and no group has no such keys: a generation recorded before they counted is not flagged', () => {
  const keys = Object.keys(launchSettings(base)).sort();
  assert.deepEqual(keys, ['command', 'env.A', 'user']);
  // No value is kept in the clear (env holds secrets).
  assert.ok(Object.values(launchSettings({ ...base, env: { SECRET: 'hunter2' } })).every((v) => /^[0-9a-f]{16}$/.test(v)));
});

test('where the output goes is a launch setting: a generation keeps writing to the file it was started with (no longer rotated) until restarted; the default file has no key', () => {
  const started = launchSettings(base);
  assert.deepEqual(changedSettings(started, launchSettings({ ...base, logFile: '/srv/web/logs/app.log' })), ['logFile']);
  assert.deepEqual(changedSettings(started, launchSettings({ ...base, log: { ...base.log, journal: true } })), ['logFile']);
  assert.deepEqual(changedSettings(launchSettings({ ...base, logFile: '/srv/web/logs/app.log' }), started), ['logFile']);
  assert.deepEqual(changedSettings(started, launchSettings({ ...base, log: { ...base.log, maxBytes: 65_536 } })), [], 'rotation settings apply at once');
});
