/**
 * `npm run demo` is the README's first command: the scripted tour must run
 * to the end on a fresh machine, deploy, refuse the typo, roll back, and
 * clean up after itself.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { processesUnder, relinkCli, waitFor } from './helpers.js';

test('relink demo --exit runs the tour: start, deploy, refused typo, rollback, cleanup', async () => {
  const r = await relinkCli(['demo', '--exit']);
  assert.equal(r.code, 0, r.stderr);
  const out = r.stdout;
  assert.match(out, /agent: deployed app\.1\.0 \+ cfg\.1\.0 \(start/);
  assert.match(out, /agent: deployed app\.2\.0 \+ cfg\.2\.0 \(signal, pid \d+ -> \d+/);
  assert.match(out, /agent: refused[\s\S]*"cfg\.flie": is not a known key/);
  assert.match(out, /curl .* -> \{"release":"app\.2\.0"[\s\S]*4\. Rollback[\s\S]*agent: deployed app\.1\.0/);
  assert.match(out, /demo stopped and cleaned up/);
  const root = /in (\/\S+relink-demo-\S+) \.\.\./.exec(out)?.[1];
  assert.ok(root !== undefined, 'the demo names its folder');
  await waitFor('the demo app to stop', async () => (await processesUnder(root)).length === 0, { timeoutMs: 5_000 });
});
