/**
 * The agent config: defaults filled once, the result frozen, and every
 * mistake listed at once with the file and the key path.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig, parseConfig, pickApp } from '../src/config.js';
import { RelinkError, RelinkErrors } from '../src/errors.js';
import { ROOT, tmpDir } from './helpers.js';

/** The config must be refused; returns the problems, each checked to name the file. */
function refused(text: string, file: string): readonly RelinkError[] {
  let err: unknown;
  try {
    parseConfig(text, file);
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof RelinkErrors, `expected RelinkErrors, got ${String(err)}`);
  for (const p of err.problems) {
    assert.equal(p.file, path.resolve(file));
    assert.ok(p.message.startsWith(`${path.resolve(file)}:`), p.message);
  }
  return err.problems;
}

function one(problems: readonly RelinkError[], key: string): RelinkError {
  const found = problems.filter((p) => p.key === key);
  assert.equal(found.length, 1, `one problem for ${key} in:\n${problems.map((p) => p.message).join('\n')}`);
  const p = found[0]!;
  assert.ok(p.message.includes(JSON.stringify(key)), `message names the key: ${p.message}`);
  return p;
}

test('defaults are filled in and paths resolved', async (t) => {
  const root = await tmpDir(t);
  const file = path.join(root, 'etc', 'relink.json');
  const cfg = parseConfig(JSON.stringify({ stateDir: 'state', apps: [{ name: 'web', dir: '/srv/web' }] }), file);
  assert.equal(cfg.file, file);
  // stateDir is relative to the config file's folder, not the process cwd.
  assert.equal(cfg.stateDir, path.join(root, 'etc', 'state'));
  assert.equal(cfg.logLevel, 'info');
  assert.equal(cfg.reconcileMs, 5_000);
  assert.deepEqual({ ...cfg.watch }, { stabilityMs: 50, pollMs: 10 });
  assert.equal(cfg.apps.length, 1);
  const app = cfg.apps[0]!;
  assert.equal(app.name, 'web');
  assert.equal(app.dir, '/srv/web');
  assert.equal(app.releasesDir, '/srv/web/release');
  assert.equal(app.currentFile, '/srv/web/release/current.conf');
  assert.deepEqual({ ...app.links }, { bin: '/srv/web/app.bin', cfg: '/srv/web/app.cfg' });
  assert.equal(app.logFile, '/srv/web/app.log');
  assert.equal(app.pidFile, undefined);
  assert.deepEqual([...app.command], ['./app.bin', '-c', 'app.cfg']);
  assert.deepEqual({ ...app.env }, {});
  assert.deepEqual({ ...app.reload }, { signal: 'SIGHUP', mode: 'reexec', timeoutMs: 15_000 });
});

test('stateDir defaults to /var/lib/relink; an absolute stateDir is kept', () => {
  assert.equal(parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web' }] }), '/etc/relink/config.json').stateDir, '/var/lib/relink');
  assert.equal(parseConfig(JSON.stringify({ stateDir: '/x/state', apps: [{ name: 'web', dir: '/srv/web' }] }), '/etc/relink/config.json').stateDir, '/x/state');
});

test('the result is frozen all the way down', () => {
  const cfg = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', env: { A: '1' } }] }), '/etc/relink/config.json');
  const app = cfg.apps[0]!;
  for (const [what, obj] of Object.entries({ cfg, apps: cfg.apps, watch: cfg.watch, app, command: app.command, env: app.env, links: app.links, reload: app.reload })) {
    assert.ok(Object.isFrozen(obj), `${what} is frozen`);
  }
  assert.throws(() => { (cfg as { stateDir: string }).stateDir = '/tmp'; }, TypeError);
  assert.throws(() => { (app.reload as { signal: string }).signal = 'SIGKILL'; }, TypeError);
  assert.throws(() => { (app.command as string[]).push('--evil'); }, TypeError);
});

test('overrides are honoured, relative app paths resolved against the app dir', () => {
  const cfg = parseConfig(JSON.stringify({
    stateDir: '/var/lib/x',
    logLevel: 'debug',
    reconcileMs: 1_000,
    watch: { stabilityMs: 0, pollMs: 5 },
    apps: [{
      name: 'api.v2',
      dir: '/srv/api',
      command: ['/usr/sbin/nginx', '-c', '/srv/api/app.cfg'],
      env: { GOMAXPROCS: '2' },
      releasesDir: 'releases',
      currentFile: '/etc/api/current.conf',
      links: { bin: 'bin/app', cfg: '/etc/api/app.conf' },
      logFile: 'logs/app.log',
      pidFile: 'run/app.pid',
      reload: { signal: 'SIGUSR2', mode: 'inplace', timeoutMs: 500 },
    }],
  }), '/etc/relink/config.json');
  assert.equal(cfg.logLevel, 'debug');
  assert.equal(cfg.reconcileMs, 1_000);
  assert.deepEqual({ ...cfg.watch }, { stabilityMs: 0, pollMs: 5 });
  const app = cfg.apps[0]!;
  assert.equal(app.name, 'api.v2');
  assert.deepEqual([...app.command], ['/usr/sbin/nginx', '-c', '/srv/api/app.cfg']);
  assert.deepEqual({ ...app.env }, { GOMAXPROCS: '2' });
  assert.equal(app.releasesDir, '/srv/api/releases');
  assert.equal(app.currentFile, '/etc/api/current.conf');
  assert.deepEqual({ ...app.links }, { bin: '/srv/api/bin/app', cfg: '/etc/api/app.conf' });
  assert.equal(app.logFile, '/srv/api/logs/app.log');
  assert.equal(app.pidFile, '/srv/api/run/app.pid');
  assert.deepEqual({ ...app.reload }, { signal: 'SIGUSR2', mode: 'inplace', timeoutMs: 500 });
});

test('relative app paths resolve against dir; currentFile defaults into releasesDir; one link overridden keeps the other default', () => {
  const app = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', currentFile: 'live.conf', links: { cfg: 'nginx.conf' } }] }), '/c.json').apps[0]!;
  assert.equal(app.currentFile, '/srv/web/live.conf');
  const moved = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', releasesDir: '/data/rel' }] }), '/c.json').apps[0]!;
  assert.equal(moved.currentFile, '/data/rel/current.conf');
  assert.equal(parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', pidFile: null }] }), '/c.json').apps[0]!.pidFile, undefined);
  assert.deepEqual({ ...app.links }, { bin: '/srv/web/app.bin', cfg: '/srv/web/nginx.conf' });
  // A partial reload block keeps the other defaults.
  const r = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', reload: { mode: 'inplace' } }] }), '/c.json').apps[0]!.reload;
  assert.deepEqual({ ...r }, { signal: 'SIGHUP', mode: 'inplace', timeoutMs: 15_000 });
});

test('three mistakes are three problems, each with the file and its key path', () => {
  const problems = refused(JSON.stringify({
    logLevel: 'loud',
    apps: [{ name: 'web', dir: 'srv/web', reload: { signal: 'SIGFOO' } }],
  }), '/etc/relink/config.json');
  assert.equal(problems.length, 3, problems.map((p) => p.message).join('\n'));
  for (const p of problems) assert.equal(p.code, 'CONFIG_INVALID');
  const level = one(problems, 'logLevel');
  assert.ok(level.message.includes('"loud"'), level.message);
  const dir = one(problems, 'apps[0].dir');
  assert.equal(dir.rule, 'must be an absolute path');
  assert.equal(dir.found, '"srv/web"');
  const sig = one(problems, 'apps[0].reload.signal');
  assert.ok(sig.message.includes('must be a catchable signal name'), sig.message);
  assert.equal(sig.found, '"SIGFOO"');
});

test('the aggregate error reads as one line per problem', () => {
  let err: unknown;
  try {
    parseConfig(JSON.stringify({ reconcileMs: 1, apps: [{ name: '-bad', dir: '/x' }] }), '/c.json');
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof RelinkErrors);
  assert.equal(err.code, 'CONFIG_INVALID');
  assert.equal(err.problems.length, 2);
  assert.deepEqual(err.message.split('\n'), err.problems.map((p) => p.message));
});

test('an unknown key is refused by name, at any depth', () => {
  const top = one(refused(JSON.stringify({ stateDri: '/x', apps: [{ name: 'web', dir: '/srv/web' }] }), '/c.json'), 'stateDri');
  assert.equal(top.code, 'CONFIG_INVALID');
  assert.equal(top.rule, 'is not a known key');
  assert.equal(top.found, '"/x"');
  const deep = refused(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', reload: { signl: 'SIGHUP' }, link: {} }] }), '/c.json');
  assert.equal(deep.length, 2, deep.map((p) => p.message).join('\n'));
  assert.equal(one(deep, 'apps[0].reload.signl').rule, 'is not a known key');
  assert.equal(one(deep, 'apps[0].link').rule, 'is not a known key');
});

test('a bad signal name is refused; a real one is accepted', () => {
  // SIGKILL and SIGSTOP exist but cannot be caught: as a "reload" they would kill or freeze the app.
  for (const signal of ['SIGFOO', 'HUP', 'sighup', 1, 'SIGKILL', 'SIGSTOP']) {
    const p = one(refused(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', reload: { signal } }] }), '/c.json'), 'apps[0].reload.signal');
    assert.equal(p.code, 'CONFIG_INVALID');
    assert.match(p.message, /must be a catchable signal name such as "SIGHUP"/);
    assert.equal(p.found, JSON.stringify(signal));
  }
  const app = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', reload: { signal: 'SIGUSR1' } }] }), '/c.json').apps[0]!;
  assert.equal(app.reload.signal, 'SIGUSR1');
});

test('a bad reload mode and an out-of-range timeout are refused', () => {
  const problems = refused(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', reload: { mode: 'restart', timeoutMs: 50 } }] }), '/c.json');
  assert.equal(problems.length, 2);
  assert.match(one(problems, 'apps[0].reload.mode').message, /must be "reexec".*or "inplace"/);
  assert.equal(one(problems, 'apps[0].reload.timeoutMs').found, '50');
});

test('a relative app dir is refused', () => {
  const p = one(refused(JSON.stringify({ apps: [{ name: 'web', dir: './web' }] }), '/c.json'), 'apps[0].dir');
  assert.equal(p.code, 'CONFIG_INVALID');
  assert.equal(p.rule, 'must be an absolute path');
  assert.equal(p.found, '"./web"');
});

test('duplicate app names are refused, naming both entries', () => {
  const problems = refused(JSON.stringify({ apps: [{ name: 'web', dir: '/a' }, { name: 'api', dir: '/b' }, { name: 'web', dir: '/c' }] }), '/c.json');
  assert.equal(problems.length, 1);
  const p = one(problems, 'apps[2].name');
  assert.equal(p.code, 'CONFIG_INVALID');
  assert.match(p.message, /must be unique \(apps\[0\] has the same name\)/);
  assert.equal(p.found, '"web"');
});

test('a duplicate name is still listed when other keys are wrong too (every problem at once)', () => {
  // zod skips refinements after an aborting issue (bad enum, wrong type) unless told otherwise.
  const problems = refused(JSON.stringify({
    logLevel: 3,
    apps: [{ name: 'web', dir: '/a', reload: { signal: 'SIGFOO' } }, { name: 'web', dir: '/b' }],
  }), '/c.json');
  assert.equal(problems.length, 3, problems.map((p) => p.message).join('\n'));
  one(problems, 'logLevel');
  one(problems, 'apps[0].reload.signal');
  assert.match(one(problems, 'apps[1].name').message, /must be unique/);
  // Entries that are not objects, or have no string name, do not confuse the check.
  const odd = refused(JSON.stringify({ apps: [null, { name: 3, dir: '/x' }, { name: 'a', dir: '/a' }, { name: 'a', dir: 'rel' }] }), '/c.json');
  assert.match(one(odd, 'apps[3].name').message, /must be unique \(apps\[2\] has the same name\)/);
  one(odd, 'apps[0]');
  one(odd, 'apps[1].name');
  one(odd, 'apps[3].dir');
});

test('an app name that is not a plain identifier is refused', () => {
  for (const name of ['', '../etc', 'a b', '.hidden', 'x'.repeat(64)]) {
    const p = one(refused(JSON.stringify({ apps: [{ name, dir: '/srv/web' }] }), '/c.json'), 'apps[0].name');
    assert.match(p.message, /must be 1-63 letters/);
  }
});

test('an empty apps list, or none at all, is refused', () => {
  const empty = one(refused(JSON.stringify({ apps: [] }), '/c.json'), 'apps');
  assert.equal(empty.rule, 'must list at least one app');
  assert.equal(empty.found, '[]');
  const none = one(refused(JSON.stringify({ stateDir: '/x' }), '/c.json'), 'apps');
  assert.equal(none.rule, 'is required');
});

test('invalid JSON is CONFIG_SYNTAX naming the file', () => {
  for (const text of ['{"apps": [', '', 'apps: []']) {
    const problems = refused(text, 'relative/config.json');
    assert.equal(problems.length, 1);
    const p = problems[0]!;
    assert.equal(p.code, 'CONFIG_SYNTAX');
    assert.equal(p.file, path.resolve('relative/config.json'));
    assert.equal(p.key, undefined);
    assert.equal(p.rule, 'must be valid JSON');
    assert.ok(p.found && p.message.includes(p.found), p.message);
  }
});

test('a config that is not an object is refused', () => {
  for (const text of ['[]', 'null', '"x"']) {
    const problems = refused(text, '/c.json');
    assert.equal(problems.length, 1, problems.map((p) => p.message).join('\n'));
    assert.equal(problems[0]!.code, 'CONFIG_INVALID');
  }
});

test('loadConfig reads the file; a missing or unreadable file is CONFIG_UNREADABLE', async (t) => {
  const root = await tmpDir(t);
  const file = path.join(root, 'config.json');
  await writeFile(file, JSON.stringify({ stateDir: 'state', apps: [{ name: 'web', dir: '/srv/web' }] }));
  const cfg = await loadConfig(file);
  assert.equal(cfg.file, file);
  assert.equal(cfg.stateDir, path.join(root, 'state'));

  for (const [what, target, found] of [['missing', path.join(root, 'absent.json'), 'ENOENT'], ['a directory', root, 'EISDIR']] as const) {
    let err: unknown;
    try {
      await loadConfig(target);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof RelinkErrors, `${what}: ${String(err)}`);
    assert.equal(err.problems.length, 1);
    const p = err.problems[0]!;
    assert.equal(p.code, 'CONFIG_UNREADABLE');
    assert.equal(p.file, target);
    assert.equal(p.rule, 'must be a readable file');
    assert.equal(p.found, found);
    assert.ok(p.message.startsWith(`${target}:`) && p.message.includes(found), p.message);
  }
});

test('loadConfig reports syntax errors in the file it read', async (t) => {
  const root = await tmpDir(t);
  const file = path.join(root, 'config.json');
  await writeFile(file, '{"apps": [}');
  await assert.rejects(loadConfig(file), (err: unknown) => err instanceof RelinkErrors && err.code === 'CONFIG_SYNTAX' && err.file === file);
});

test('pickApp: by name, or the only app when no name is given', () => {
  const one = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/a' }] }), '/c.json');
  assert.equal(pickApp(one, undefined)?.name, 'web');
  assert.equal(pickApp(one, 'web')?.name, 'web');
  assert.equal(pickApp(one, 'api'), undefined);
  const two = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/a' }, { name: 'api', dir: '/b' }] }), '/c.json');
  assert.equal(pickApp(two, undefined), undefined);
  assert.equal(pickApp(two, 'api')?.dir, '/b');
});

test('config.sample.json at the repo root parses', async (t) => {
  const sample = path.join(ROOT, 'config.sample.json');
  try {
    await access(sample);
  } catch {
    t.skip('config.sample.json is not written yet');
    return;
  }
  // Parse a copy placed elsewhere too: relative paths in the sample must not depend on the repo.
  const cfg = await loadConfig(sample);
  assert.ok(cfg.apps.length >= 1);
  const root = await tmpDir(t);
  await mkdir(path.join(root, 'etc'));
  const copy = path.join(root, 'etc', 'config.json');
  await writeFile(copy, await readFile(sample, 'utf8'));
  assert.equal((await loadConfig(copy)).apps.length, cfg.apps.length);
});

test('node-cron is loaded only when an app has a prune schedule (the agent does not carry it otherwise)', async () => {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  // A fresh process: this one may have loaded node-cron for another test.
  const script = `
    import { parseConfig } from './src/config.ts';
    import { nodeCronLoaded } from './src/cron.ts';
    await import('./src/agent.ts');
    const app = { name: 'web', dir: '/srv/web' };
    parseConfig(JSON.stringify({ stateDir: '/x', apps: [app] }), '/etc/relink/config.json');
    const before = nodeCronLoaded();
    parseConfig(JSON.stringify({ stateDir: '/x', apps: [{ ...app, prune: { schedule: '0 3 * * *' } }] }), '/etc/relink/config.json');
    process.stdout.write(JSON.stringify({ before, after: nodeCronLoaded() }));`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT });
  assert.deepEqual(JSON.parse(stdout), { before: false, after: true });
  // And a bad expression is still refused by node-cron itself.
  const bad = refused(JSON.stringify({ stateDir: '/x', apps: [{ name: 'web', dir: '/srv/web', prune: { schedule: '61 * * * *' } }] }), '/etc/relink/config.json');
  assert.ok(bad.some((p) => p.key?.endsWith('prune.schedule')), bad.map((p) => p.key).join(', '));
});
