/**
 * The node flags on relink's #! line (src/cli/main.ts, copied to dist by
 * tsc): `relink` and the systemd unit run node with them, so a flag node
 * refuses or warns about would stop the agent from starting, or put a V8
 * warning in front of every command's output. Run here through the same
 * node, with the same flags, as the installed command.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { MAIN, ROOT } from './helpers.js';

const run = promisify(execFile);

function shebang(): { interpreter: string; flags: string[] } {
  const first = readFileSync(MAIN, 'utf8').split('\n', 1)[0] ?? '';
  const m = /^#!(\/usr\/bin\/env -S node)((?: --[a-z0-9-]+(?:=\S+)?)*)$/.exec(first);
  assert.ok(m, `the #! line must be "#!/usr/bin/env -S node --flag ...": ${first}`);
  return { interpreter: m[1]!, flags: m[2]!.trim().split(' ').filter(Boolean) };
}

test('node accepts the #! line flags silently, and relink runs under them', async () => {
  const { flags } = shebang();
  assert.ok(flags.includes('--max-semi-space-size=2'), flags.join(' '));
  const r = await run(process.execPath, [...flags, '--import', 'tsx', MAIN, '--version'], { cwd: ROOT });
  assert.match(r.stdout, /^\d+\.\d+\.\d+\n$/);
  assert.equal(r.stderr, '', 'no V8 or node warning in front of the output');
});

test('under the #! line flags the young generation is capped, gc() is exposed and WebAssembly (fetch) still works', async () => {
  const { flags } = shebang();
  // Churn through short-lived objects, as a burst of deploys does, and
  // watch how large V8 lets the young generation grow (32 MB by default).
  const script = `
    const v8 = require('node:v8');
    let youngMax = 0, keep = [];
    for (let i = 0; i < 3e6; i++) {
      keep.push({ i, s: 'x' + i });
      if (keep.length > 20000) keep = [];
      if (i % 10000 === 0) youngMax = Math.max(youngMax, v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size);
    }
    process.stdout.write(JSON.stringify({ wasm: typeof WebAssembly, gc: typeof gc, youngMb: youngMax / 1048576 }));`;
  const plain = JSON.parse((await run(process.execPath, ['-e', script])).stdout) as { youngMb: number };
  const r = await run(process.execPath, [...flags, '-e', script]);
  const out = JSON.parse(r.stdout) as { wasm: string; gc: string; youngMb: number };
  assert.equal(out.gc, 'function', 'the agent asks for a full collection after deploys (src/compaction.ts)');
  assert.equal(out.wasm, 'object', 'fetch() parses HTTP with WebAssembly: --jitless or --lite-mode would break it');
  assert.ok(out.youngMb <= 4, `young generation grew to ${out.youngMb} MB under the #! flags`);
  assert.ok(plain.youngMb > out.youngMb, `without the flags it grows further (${plain.youngMb} MB): the churn tests something`);
  assert.equal(r.stderr, '');
});
