/**
 * `npm run demo` is the README's first command: the scripted tour must run
 * to the end on a fresh machine, deploy, refuse the typo, roll a release
 * that fails its health check back by itself with no request failing, roll
 * back by hand, and leave nothing behind in the temp folder once it says it
 * cleaned up (its app build included).
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { test } from 'node:test';
import { processesUnder, relinkCli, tmpDir, waitFor } from './helpers.js';

test('relink demo --exit runs the tour: start, deploy, refused typo, automatic rollback, rollback, nothing left behind', async (t) => {
  // A temp folder of its own, so "nothing left behind" can be checked exactly.
  const tmp = await tmpDir(t, 'relink-demo-tmp-');
  const r = await relinkCli(['demo', '--exit'], { TMPDIR: tmp });
  assert.equal(r.code, 0, r.stderr);
  const out = r.stdout;
  assert.match(out, /agent: deployed app\.1\.0 \+ cfg\.1\.0 \(start/);
  assert.match(out, /agent: deployed app\.2\.0 \+ cfg\.2\.0 \(signal, pid \d+ -> \d+/);
  assert.match(out, /agent: refused[\s\S]*"cfg\.flie": is not a known key/);
  assert.match(out, /4\. Release 3\.0[\s\S]*agent: rolled_back app\.3\.0 \+ cfg\.3\.0 back to app\.2\.0 \+ cfg\.2\.0 \(signal[\s\S]*healthz did not pass/);
  assert.match(out, /meanwhile: [1-9]\d* requests, 0 failed \(answered by [^)]*app\.2\.0/);
  assert.match(out, /meanwhile: .*\n  curl .* -> \{"release":"app\.2\.0"/);
  assert.match(out, /curl .* -> \{"release":"app\.2\.0"[\s\S]*5\. Rollback[\s\S]*agent: deployed app\.1\.0/);
  assert.match(out, /demo stopped and cleaned up/);
  const root = /in (\/\S+relink-demo-\S+) \.\.\./.exec(out)?.[1];
  assert.ok(root !== undefined, 'the demo names its folder');
  assert.ok(root.startsWith(`${tmp}/`), `the demo works in the temp folder it was given: ${root}`);
  await waitFor('the demo app to stop', async () => (await processesUnder(root)).length === 0, { timeoutMs: 5_000 });
  // tsx-N is the compile cache of tsx, the loader this test runs relink with, not the demo's.
  const left = (await readdir(tmp)).filter((n) => !/^tsx-\d+$/.test(n));
  assert.deepEqual(left, [], 'the demo left something in the temp folder (a build cache?)');
});
