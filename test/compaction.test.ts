/**
 * The full collection after deploys (src/compaction.ts), with a recording
 * gc() in place of V8's: every N deploys at once, else after the agent has
 * been idle for a while, and nothing left armed after stop().
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Compactor, type GcFunction } from '../src/compaction.js';
import { waitFor } from './helpers.js';

function recording(): { gc: GcFunction; calls: unknown[] } {
  const calls: unknown[] = [];
  return { gc: (o) => calls.push(o), calls };
}

test('a full, asynchronous collection every N deploys', () => {
  const { gc, calls } = recording();
  const c = new Compactor({ everyDeploys: 3, idleMs: 60_000, gc });
  for (let i = 0; i < 7; i++) c.noteDeploy();
  assert.deepEqual(calls, [{ type: 'major', execution: 'async' }, { type: 'major', execution: 'async' }]);
  c.stop();
});

test('one collection once the deploys stop, however many came before', async () => {
  const { gc, calls } = recording();
  const c = new Compactor({ everyDeploys: 100, idleMs: 50, gc });
  for (let i = 0; i < 5; i++) c.noteDeploy();
  assert.equal(calls.length, 0, 'not while deploys keep coming');
  await waitFor('the idle collection', () => calls.length === 1);
  c.noteDeploy();
  c.stop();
  // A second compactor armed after it is the clock: once that one has
  // collected, the stopped one's idle period has passed too.
  const control = recording();
  const other = new Compactor({ everyDeploys: 100, idleMs: 50, gc: control.gc });
  other.noteDeploy();
  await waitFor('the control collection', () => control.calls.length === 1);
  other.stop();
  assert.equal(calls.length, 1);
});

test('without --expose-gc (no global gc) it does nothing', () => {
  assert.equal(typeof (globalThis as { gc?: unknown }).gc, 'undefined', 'the test runner has no --expose-gc');
  const c = new Compactor({ everyDeploys: 1, idleMs: 10 });
  c.noteDeploy();
  c.noteDeploy();
  // everyDeploys 1: with a gc() this would have collected twice.
  assert.equal(c.runs, 0);
  c.stop();
});
