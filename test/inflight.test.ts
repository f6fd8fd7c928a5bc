/**
 * What the next agent makes of a deploy the previous one left in flight
 * (src/inflight.ts): whether its verdict is already journaled, and how the
 * new release is brought up to be judged. The whole recovery runs for real
 * in crashsafe.test.ts and against the fake world in app.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { HistoryEntry } from '../src/history.js';
import { inflightFor, journaled, newestRoot, recoveredAttempt, recoveryPlan } from '../src/inflight.js';
import type { Discovery, ProcInfo } from '../src/proc.js';

const proc = (pid: number, ppid: number, gen: number, startTime = 100): ProcInfo => ({ pid, ppid, startTime, exe: '/usr/bin/python3', deleted: false, uid: 0, gen });
const found = (all: ProcInfo[], main?: ProcInfo): Discovery => ({ main, strays: [], all });

const attempt = { trigger: 'watch:change', started: 1_000, snapshot: { text: '{"bin.file":"app.2"}', hash: 'h2', mtimeMs: 5 }, from: { bin: '/r/app.1', cfg: '/r/cfg.1' }, pidBefore: 10 };
const inf = inflightFor(attempt, { bin: '/r/app.2', cfg: '/r/cfg.2' }, proc(10, 1, 1), { bin: '/r/app.1', cfg: '/r/cfg.1' }, 500);

test('the in-flight record keeps what the journal entry needs, and the recovered attempt is the original one, marked', () => {
  assert.equal(inf.phase, 'deploy');
  assert.equal(inf.switchedTick, 500);
  const a = recoveredAttempt(inf);
  assert.equal(a.trigger, 'watch:change:recovered');
  assert.equal(a.snapshot.hash, 'h2');
  assert.equal(a.started, 1_000);
  assert.deepEqual(a.from, { bin: '/r/app.1', cfg: '/r/cfg.1' });
  assert.equal(a.pidBefore, 10);
});

test('a verdict is taken as journaled only for the same content, journaled after the deploy began', () => {
  const entry = (hash: string, ms: number): HistoryEntry => ({
    time: new Date(ms).toISOString(), app: 'web', outcome: 'deployed', action: 'signal', from: { bin: null, cfg: null }, to: { bin: null, cfg: null },
    reason: null, code: null, pidBefore: null, pidAfter: null, durationMs: 0, currentHash: hash, trigger: 'x',
  });
  assert.equal(journaled(inf, entry('h2', 2_000)), true);
  assert.equal(journaled(inf, entry('h2', 500)), false, 'the same content deployed earlier is not this deploy');
  assert.equal(journaled(inf, entry('h1', 2_000)), false);
  assert.equal(journaled(inf, undefined), false);
});

test('the plan: a successor of the opened generation is judged as it runs; an old main is signalled; nothing running is started', () => {
  const old = proc(10, 1, 1, 100);
  const successor = proc(20, 10, 2, 600);
  const worker = proc(21, 20, 2, 601);
  assert.deepEqual(recoveryPlan(inf, found([old, successor, worker], old), 1, 'reexec'), { kind: 'judge', proc: successor });
  assert.deepEqual(recoveryPlan(inf, found([old], old), 1, 'reexec'), { kind: 'signal', proc: old });
  // A successor adopted by its marker into the serving generation, started after the switch.
  const adopted = proc(30, 1, 1, 700);
  assert.deepEqual(recoveryPlan(inf, found([adopted], adopted), 1, 'reexec'), { kind: 'judge', proc: adopted });
  // In place: the master is signalled again whatever its new workers.
  assert.deepEqual(recoveryPlan(inf, found([old, proc(22, 10, 2, 600)], old), 1, 'inplace'), { kind: 'signal', proc: old });
  assert.deepEqual(recoveryPlan(inf, found([]), 1, 'reexec'), { kind: 'start' });
  assert.equal(newestRoot([old, successor, worker])?.pid, 20);
  assert.equal(newestRoot([]), undefined);
});
