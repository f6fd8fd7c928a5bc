/**
 * The agent config: defaults filled once, the result frozen, and every
 * mistake listed at once with the file and the key path.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig, parseConfig, pickApp, releaseFiles, releaseOf, releasesAreFolders } from '../src/config.js';
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
  assert.deepEqual({ ...app.reload }, { strategy: 'reexec', signal: 'SIGHUP', mode: 'reexec', timeoutMs: 15_000, drainTimeoutMs: 60_000, quiesceSignal: undefined, resumeSignal: undefined, deprecatedMode: false });
  assert.deepEqual(app.sockets, []);
  assert.deepEqual({ ...app.stop }, { signal: 'SIGTERM', timeoutMs: 10_000 });
  assert.equal(app.health.readiness, 'probe');
  assert.deepEqual({ ...cfg.history }, { maxBytes: 4_194_304, backups: 2 });
  assert.equal(app.health.liveness, undefined);
});

test('stateDir defaults to /var/lib/relink; an absolute stateDir is kept', () => {
  assert.equal(parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web' }] }), '/etc/relink/config.json').stateDir, '/var/lib/relink');
  assert.equal(parseConfig(JSON.stringify({ stateDir: '/x/state', apps: [{ name: 'web', dir: '/srv/web' }] }), '/etc/relink/config.json').stateDir, '/x/state');
});

test('the result is frozen all the way down', () => {
  const cfg = parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', env: { A: '1' } }] }), '/etc/relink/config.json');
  const app = cfg.apps[0]!;
  for (const [what, obj] of Object.entries({ cfg, apps: cfg.apps, watch: cfg.watch, history: cfg.history, app, command: app.command, env: app.env, links: app.links, reload: app.reload, health: app.health })) {
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
      reload: { signal: 'SIGUSR2', mode: 'inplace', timeoutMs: 500, drainTimeoutMs: 60_000 },
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
  assert.deepEqual({ ...app.reload }, { strategy: 'inplace', signal: 'SIGUSR2', mode: 'inplace', timeoutMs: 500, drainTimeoutMs: 60_000, quiesceSignal: undefined, resumeSignal: undefined, deprecatedMode: true });
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
  assert.deepEqual({ ...r }, { strategy: 'inplace', signal: 'SIGHUP', mode: 'inplace', timeoutMs: 15_000, drainTimeoutMs: 60_000, quiesceSignal: undefined, resumeSignal: undefined, deprecatedMode: true });
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
  assert.equal(top.rule, 'is not a known key (did you mean "stateDir"?)');
  assert.equal(top.found, '"/x"');
  const deep = refused(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', reload: { signl: 'SIGHUP' }, link: {} }] }), '/c.json');
  assert.equal(deep.length, 2, deep.map((p) => p.message).join('\n'));
  assert.equal(one(deep, 'apps[0].reload.signl').rule, 'is not a known key (did you mean "signal"?)');
  assert.equal(one(deep, 'apps[0].link').rule, 'is not a known key (did you mean "links"?)');
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

test('a number past two bounds of one key is one problem, the tighter bound (not also an integer\'s safe range)', () => {
  const problems = refused(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', stop: { timeoutMs: 1e300 }, health: { settleMs: -1e300 } }] }), '/c.json');
  assert.deepEqual(problems.map((p) => p.key).sort(), ['apps[0].health.settleMs', 'apps[0].stop.timeoutMs']);
  assert.match(one(problems, 'apps[0].stop.timeoutMs').message, /must be at most 3600000/);
  assert.match(one(problems, 'apps[0].health.settleMs').message, /must be at least 0/);
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

test('invalid JSON is CONFIG_SYNTAX naming the file, the line and column and what was expected', () => {
  for (const [text, rule, found] of [
    ['{"apps": [', 'must be valid JSON: expected a value at line 1, column 11', 'the end of the file'],
    ['', 'must be valid JSON', 'an empty file'],
    ['apps: []', 'must be valid JSON: expected a value (an object such as {"key": "value"}) at line 1, column 1', 'a letter'],
    ['{\n  "apps": [],\n}\n', 'must be valid JSON: expected a key in double quotes (JSON allows no comma before "}") at line 3, column 1', '"}"'],
  ] as const) {
    const problems = refused(text, 'relative/config.json');
    assert.equal(problems.length, 1);
    const p = problems[0]!;
    assert.equal(p.code, 'CONFIG_SYNTAX');
    assert.equal(p.file, path.resolve('relative/config.json'));
    assert.equal(p.key, undefined);
    assert.equal(p.rule, rule);
    assert.equal(p.found, found);
    assert.equal(p.message, `${path.resolve('relative/config.json')}: ${rule} (found: ${found})`);
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

  for (const [what, target, found] of [['missing', path.join(root, 'absent.json'), 'no such file'], ['a directory', root, 'a directory']] as const) {
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
    assert.equal(p.rule, 'must be a readable regular file');
    assert.match(p.found ?? '', new RegExp(found));
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

// --- the JSON reader: what editors produce, duplicates, no quoting ------------------

test('a config saved with a UTF-8 byte order mark and CRLF line ends loads', async (t) => {
  const root = await tmpDir(t);
  const file = path.join(root, 'config.json');
  const text = JSON.stringify({ stateDir: 'state', apps: [{ name: 'web', dir: '/srv/web' }] }, null, 2).replaceAll('\n', '\r\n');
  await writeFile(file, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(`${text}\r\n`)]));
  const cfg = await loadConfig(file);
  assert.equal(cfg.apps[0]?.name, 'web');
  assert.equal(cfg.stateDir, path.join(root, 'state'));
});

test('a duplicate key is CONFIG_DUPLICATE_KEY, at the top and in nested objects, naming the key path and places', async (t) => {
  const problems = refused([
    '{',
    '  "stateDir": "/var/lib/a",',
    '  "apps": [{"name": "web", "dir": "/srv/web",',
    '            "reload": {"signal": "SIGHUP", "signal": "SIGUSR2"}}],',
    '  "stateDir": "/var/lib/b"',
    '}',
  ].join('\n'), '/c.json');
  // In the order the repeats appear.
  assert.deepEqual(problems.map((p) => [p.code, p.key, p.found]), [
    ['CONFIG_DUPLICATE_KEY', 'apps[0].reload.signal', '2 times: line 4, column 24; line 4, column 44'],
    ['CONFIG_DUPLICATE_KEY', 'stateDir', '2 times: line 2, column 3; line 5, column 3'],
  ]);
  for (const p of problems) assert.equal(p.rule, 'must appear only once in its object (otherwise the last one would silently win)');
  // The same through loadConfig, from a real file.
  const root = await tmpDir(t);
  const file = path.join(root, 'config.json');
  await writeFile(file, '{"apps": [{"name": "web", "dir": "/srv/web", "env": {"A": "1", "A": "2"}}]}');
  await assert.rejects(loadConfig(file), (err: unknown) => err instanceof RelinkErrors && err.code === 'CONFIG_DUPLICATE_KEY' && err.key === 'apps[0].env.A');
});

test('a config syntax error quotes none of the file (an env value may be a secret)', () => {
  const secret = 'Zq9-xW7kP3v';
  for (const text of [
    `{"apps": [{"name": "web", "dir": "/srv/web", "env": {"TOKEN": "${secret}}]}`,
    `{"apps": [{"name": "web", "dir": "/srv/web", "env": {"TOKEN": ${secret}}}]}`,
    `{"apps": [{"name": "web", "dir": "/srv/web", "env": {"TOKEN": "${secret}" "B": "x"}}]}`,
  ]) {
    const [p] = refused(text, '/c.json');
    assert.equal(p?.code, 'CONFIG_SYNTAX');
    for (let i = 0; i + 3 <= secret.length; i++) assert.ok(!p!.message.includes(secret.slice(i, i + 3)), `quotes the file: ${p!.message}`);
    assert.match(p!.message, /^\/c\.json: must be valid JSON: expected .+ at line 1, column \d+ \(found: .+\)$/);
  }
});

// --- messages: key, rule, found, for every kind of zod issue ---------------------

test('zod\'s texts never reach a message: every kind of issue reads as key, rule, found', () => {
  const top = refused(JSON.stringify({
    stateDir: '',
    logLevel: 'loud',
    reconcileMs: 5_000.5,
    watch: [],
    history: { maxBytes: 1, backups: 101 },
    apps: [{ name: 'web', dir: '/srv/web' }],
  }), '/c.json');
  const inApp = refused(JSON.stringify({
    apps: [{
      name: 'web',
      dir: '/srv/web',
      command: [],
      env: { A: 1 },
      pidFile: 3,
      reload: { timeoutMs: '15000', mode: 'restart' },
      health: { url: 'http://127.0.0.1:1/', probeTimeoutMs: 5, intervalMs: 60_001, liveness: { periodMs: 99, failureThreshold: 0 } },
      preflight: { command: 'nginx -t' },
      supervise: { enabled: 'yes' },
      releaseNames: { bin: 'app' },
      limits: { nofile: 'many', nproc: -1, core: 'lots' },
      allowRoot: 1,
    }],
  }), '/c.json');
  const problems = [...top, ...inApp];
  const rules = Object.fromEntries(problems.map((p) => [p.key ?? '', p.rule]));
  assert.deepEqual(rules, {
    stateDir: 'must be a non-empty path',
    logLevel: 'must be one of "trace", "debug", "info", "warn", "error", "fatal" or "silent"',
    reconcileMs: 'must be an integer from 200 to 3600000',
    watch: 'must be an object {...}',
    'history.maxBytes': 'must be at least 65536',
    'history.backups': 'must be at most 100',
    'apps[0].command': 'must have at least 1 item',
    'apps[0].env.A': 'must be a string',
    'apps[0].pidFile': 'must be a string, or null',
    'apps[0].reload.timeoutMs': 'must be an integer from 100 to 600000',
    'apps[0].reload.mode': 'must be "reexec" or "inplace" (deprecated: use "strategy")',
    'apps[0].health.probeTimeoutMs': 'must be at least 10',
    'apps[0].health.intervalMs': 'must be at most 60000',
    'apps[0].health.liveness.periodMs': 'must be at least 100',
    'apps[0].health.liveness.failureThreshold': 'must be at least 1',
    'apps[0].preflight.command': 'must be an array [...]',
    'apps[0].supervise.enabled': 'must be true or false',
    'apps[0].releaseNames.bin': 'must contain {release}',
    'apps[0].limits.nofile': 'must be an integer from 1 to 1073741816',
    // An integer out of range is told the range (zod picks the branch whose type matched).
    'apps[0].limits.nproc': 'must be an integer from 1 to 4194304',
    'apps[0].limits.core': 'must be an integer from 0 to 9007199254740991, or "unlimited"',
    'apps[0].allowRoot': 'must be true or false',
  });
  for (const p of problems) {
    assert.doesNotMatch(p.message, /Invalid (input|option|string|number|URL)|Too (small|big)|expected \w+, received|Unrecognized key/, p.message);
  }
  // The example from the field, exactly.
  assert.equal(one(problems, 'apps[0].reload.timeoutMs').message, '/c.json: "apps[0].reload.timeoutMs": must be an integer from 100 to 600000 (found: "15000")');
});

test('an unknown key suggests the nearest known key at that place, from the schema', () => {
  const problems = refused(JSON.stringify({
    stateDri: '/x',
    apps: [{ name: 'web', dir: '/srv/web', relaod: { mode: 'inplace' }, health: { URL: 'http://127.0.0.1:1/', livenes: null }, supervise: { maxRetires: 3 }, colour: 'blue' }],
  }), '/c.json');
  const rules = Object.fromEntries(problems.map((p) => [p.key ?? '', p.rule]));
  assert.deepEqual(rules, {
    stateDri: 'is not a known key (did you mean "stateDir"?)',
    'apps[0].relaod': 'is not a known key (did you mean "reload"?)',
    'apps[0].health.URL': 'is not a known key (did you mean "url"?)',
    'apps[0].health.livenes': 'is not a known key (did you mean "liveness"?)',
    'apps[0].supervise.maxRetires': 'is not a known key (did you mean "maxRetries"?)',
    // Nothing close: no guess.
    'apps[0].colour': 'is not a known key',
  });
  assert.equal(one(problems, 'apps[0].relaod').message, '/c.json: "apps[0].relaod": is not a known key (did you mean "reload"?) (found: {"mode":"inplace"})');
});

test('thousands of problems make a bounded message: the first 20, then how many more', () => {
  const keys = Object.fromEntries(Array.from({ length: 2_000 }, (_, i) => [`unknown${i}`, i]));
  let err: unknown;
  try {
    parseConfig(JSON.stringify({ ...keys, apps: [{ name: 'web', dir: '/srv/web' }] }), '/c.json');
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof RelinkErrors);
  assert.equal(err.problems.length, 21);
  assert.equal(err.problems[20]!.message, '/c.json: and 1980 more problems');
  assert.ok(err.message.length < 3_000, `${err.message.length} characters`);
});

// --- new keys -------------------------------------------------------------------------

test('"$schema" is accepted and ignored; history and health.liveness have their defaults', () => {
  const cfg = parseConfig(JSON.stringify({ $schema: './config.schema.json', apps: [{ name: 'web', dir: '/srv/web' }] }), '/c.json');
  assert.deepEqual({ ...cfg.history }, { maxBytes: 4_194_304, backups: 2 });
  assert.equal(cfg.apps[0]!.health.liveness, undefined);
  assert.ok(!('$schema' in cfg));
  const set = parseConfig(JSON.stringify({
    history: { maxBytes: 65_536, backups: 100 },
    apps: [{ name: 'web', dir: '/srv/web', health: { tcp: '127.0.0.1:8080', liveness: { periodMs: 100 } } }],
  }), '/c.json');
  assert.deepEqual({ ...set.history }, { maxBytes: 65_536, backups: 100 });
  assert.deepEqual({ ...set.apps[0]!.health.liveness }, { periodMs: 100, failureThreshold: 3 });
  assert.ok(Object.isFrozen(set.history) && Object.isFrozen(set.apps[0]!.health.liveness));
  assert.equal(one(refused(JSON.stringify({ history: { maxBytes: 2 ** 30 + 1 }, apps: [{ name: 'web', dir: '/srv/web' }] }), '/c.json'), 'history.maxBytes').rule, 'must be at most 1073741824');
  assert.equal(one(refused(JSON.stringify({ $schema: 1, apps: [{ name: 'web', dir: '/srv/web' }] }), '/c.json'), '$schema').rule, 'must be a string');
});

test('health.liveness is refused without health.url or health.tcp to probe', () => {
  const p = one(refused(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', health: { liveness: { periodMs: 1_000 } } }] }), '/c.json'), 'apps[0].health.liveness');
  assert.equal(p.code, 'CONFIG_INVALID');
  assert.equal(p.rule, 'needs "url" or "tcp" in health: liveness supervision repeats that probe');
  assert.equal(p.found, '{"periodMs":1000}');
  // null is off, and needs no probe.
  assert.equal(parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', health: { liveness: null } }] }), '/c.json').apps[0]!.health.liveness, undefined);
});

// --- files two apps must not share ------------------------------------------------------

test('two apps with the same current.conf, links or log are refused, naming both apps', () => {
  const shared = refused(JSON.stringify({ apps: [
    { name: 'web', dir: '/srv/web', currentFile: '/srv/deploy/current.conf' },
    { name: 'api', dir: '/srv/api', currentFile: '../deploy/current.conf', links: { bin: '/srv/web/app.bin' }, logFile: '/srv/web/app.log' },
  ] }), '/c.json');
  assert.deepEqual(shared.map((p) => p.message), [
    '/c.json: "apps[1].currentFile": must not be the same file as apps[0]\'s (two apps would both apply one current.conf) (found: /srv/deploy/current.conf)',
    '/c.json: "apps[1].links.bin": must not be the same file as apps[0]\'s (two apps would switch the same link) (found: /srv/web/app.bin)',
    '/c.json: "apps[1].logFile": must not be the same file as apps[0]\'s (two apps would write one log) (found: /srv/web/app.log)',
  ]);
  // Two apps in one dir share every default.
  const sameDir = refused(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web' }, { name: 'api', dir: '/srv/web/' }] }), '/c.json');
  assert.deepEqual(sameDir.map((p) => p.key), ['apps[1].currentFile', 'apps[1].links.bin', 'apps[1].links.cfg', 'apps[1].logFile']);
  // One file for two uses, in one app or across apps.
  const twoUses = refused(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', links: { bin: 'x', cfg: 'x' } }, { name: 'api', dir: '/srv/api', logFile: '/srv/web/release/current.conf' }] }), '/c.json');
  assert.deepEqual(twoUses.map((p) => [p.key, p.rule]), [
    ['apps[0].links.cfg', 'must not be the same file as apps[0].links.bin (one file cannot be both the config\'s link and the binary\'s link)'],
    ['apps[1].logFile', 'must not be the same file as apps[0].currentFile (one file cannot be both a log and a current.conf)'],
  ]);
  // Apps in a shared releases folder with their own current.conf and links are fine.
  parseConfig(JSON.stringify({ apps: [
    { name: 'web', dir: '/srv/web', releasesDir: '/srv/releases', currentFile: 'web.conf' },
    { name: 'api', dir: '/srv/api', releasesDir: '/srv/releases', currentFile: 'api.conf' },
  ] }), '/c.json');
});

test('loadConfig also refuses two apps whose files are the same only through a symlink', async (t) => {
  const root = await tmpDir(t);
  await mkdir(path.join(root, 'web', 'release'), { recursive: true });
  await symlink(path.join(root, 'web'), path.join(root, 'alias'));
  const file = path.join(root, 'config.json');
  await writeFile(file, JSON.stringify({ apps: [
    { name: 'web', dir: path.join(root, 'web'), links: { bin: 'web.bin', cfg: 'web.cfg' }, logFile: 'web.log' },
    { name: 'api', dir: path.join(root, 'alias'), links: { bin: 'api.bin', cfg: 'api.cfg' }, logFile: 'api.log' },
  ] }));
  // parseConfig sees two different paths; loadConfig looks at the real ones.
  parseConfig(await readFile(file, 'utf8'), file);
  const err = await loadConfig(file).then(() => assert.fail('accepted a shared current.conf'), (e: unknown) => e);
  assert.ok(err instanceof RelinkErrors);
  assert.equal(err.problems.length, 1, err.message);
  const p = err.problems[0]!;
  assert.equal(p.key, 'apps[1].currentFile');
  assert.equal(p.found, `${path.join(root, 'alias', 'release', 'current.conf')} -> ${path.join(root, 'web', 'release', 'current.conf')}`);
  // A current.conf that is itself a symlink to another app's.
  await writeFile(file, JSON.stringify({ apps: [
    { name: 'web', dir: path.join(root, 'web') },
    { name: 'api', dir: path.join(root, 'api'), currentFile: 'current.conf' },
  ] }));
  await mkdir(path.join(root, 'api'));
  await writeFile(path.join(root, 'web', 'release', 'current.conf'), '{}');
  await symlink(path.join(root, 'web', 'release', 'current.conf'), path.join(root, 'api', 'current.conf'));
  await assert.rejects(loadConfig(file), (e: unknown) => e instanceof RelinkErrors && e.key === 'apps[1].currentFile' && /two apps would both apply one current\.conf/.test(e.message));
});

test('reload.signal: never one that stops a server, nor stop.signal, under the strategies that send it (reexec, inplace, upgrade); "socket" and "restart" send none', () => {
  /** Each problem's key and rule; {} when the config is accepted. */
  const problems = (apps: unknown[]): Record<string, string> => {
    try {
      parseConfig(JSON.stringify({ apps }), '/c.json');
      return {};
    } catch (err) {
      return Object.fromEntries((err as RelinkErrors).problems.map((e) => [e.key ?? '', e.rule ?? '']));
    }
  };
  // Found by the helper trial: "reload.signal": "SIGTERM" under "upgrade", and stop.signal equal to reload.signal, were accepted.
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGTERM' }, stop: { signal: 'SIGQUIT' } }]), {
    'apps[0].reload.signal': 'must not be a signal that stops a server (SIGTERM) under "upgrade": it is sent to the serving app to start a new master (nginx, gunicorn: SIGHUP to reload, SIGUSR2 to upgrade; grace: SIGUSR2; tableflip, endless: SIGHUP)',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { signal: 'SIGQUIT' } }]), {
    'apps[0].reload.signal': 'must not be a signal that stops a server (SIGQUIT) under "reexec": it is sent to the serving app to reload (nginx, gunicorn: SIGHUP to reload, SIGUSR2 to upgrade; grace: SIGUSR2; tableflip, endless: SIGHUP)',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGUSR2' }, stop: { signal: 'SIGUSR2' } }]), {
    'apps[0].reload.signal': 'must differ from "stop.signal" (SIGUSR2): one signal cannot mean both reload and stop',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'inplace', signal: 'SIGHUP' }, stop: { signal: 'SIGHUP' } }]), {
    'apps[0].reload.signal': 'must differ from "stop.signal" (SIGHUP): one signal cannot mean both reload and stop',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', sockets: ['127.0.0.1:8080'], reload: { signal: 'SIGTERM' } }]), {}, 'the default strategy with sockets is "socket": no reload signal is sent');
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'restart', signal: 'SIGTERM' } }]), {});
});

test('reload strategies: the default follows "sockets"; "mode" is an alias; a mismatch, "socket" without sockets and a shared or repeated address are refused', () => {
  const parse = (apps: unknown[]) => parseConfig(JSON.stringify({ apps }), '/c.json');
  const [plain, held, upgrade] = parse([
    { name: 'a', dir: '/srv/a' },
    { name: 'b', dir: '/srv/b', sockets: ['127.0.0.1:8080', '[::1]:8080', 'unix:/run/b/b.sock'] },
    { name: 'c', dir: '/srv/c', reload: { strategy: 'upgrade', signal: 'SIGUSR2' }, stop: { signal: 'SIGQUIT', timeoutMs: 30_000 } },
  ]).apps;
  assert.equal(plain!.reload.strategy, 'reexec');
  assert.equal(held!.reload.strategy, 'socket');
  assert.deepEqual(held!.sockets, ['127.0.0.1:8080', '[::1]:8080', 'unix:/run/b/b.sock']);
  assert.equal(upgrade!.reload.strategy, 'upgrade');
  assert.equal(upgrade!.reload.mode, 'reexec');
  assert.deepEqual({ ...upgrade!.stop }, { signal: 'SIGQUIT', timeoutMs: 30_000 });
  const problems = (apps: unknown[]): Record<string, string> => {
    try {
      parse(apps);
    } catch (err) {
      return Object.fromEntries((err as RelinkErrors).problems.map((e) => [e.key ?? '', e.rule ?? '']));
    }
    assert.fail('expected a refusal');
  };
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'socket' } }]), { 'apps[0].reload.strategy': '"socket" needs "sockets": the listen addresses the agent holds and passes to every generation' });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', mode: 'inplace' } }]), { 'apps[0].reload.mode': 'set "strategy" only ("mode" is its deprecated alias, and the two disagree)' });
  // reload.quiesceSignal and resumeSignal: both, and only under "upgrade".
  const quiesced = parse([{ name: 'n', dir: '/srv/n', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGWINCH', resumeSignal: 'SIGHUP' } }]).apps[0]!;
  assert.equal(quiesced.reload.quiesceSignal, 'SIGWINCH');
  assert.equal(quiesced.reload.resumeSignal, 'SIGHUP');
  // A type error elsewhere in the app no longer hides the cross-key rules
  // (zod skips an object's checks after one): every problem in one run.
  assert.deepEqual(problems([{ name: 'a', dir: '/a', health: { settleMs: 'x' }, reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGWINCH', resumeSignal: 'SIGHUP', timeoutMs: 'y' }, stop: { signal: 'SIGHUP' } }]), {
    'apps[0].health.settleMs': 'must be an integer from 0 to 600000',
    'apps[0].reload.timeoutMs': 'must be an integer from 100 to 600000',
    'apps[0].reload.resumeSignal': 'must differ from "stop.signal": the good old master would stop instead of accepting again',
  });
  // A wrong reload.signal (found by a trial) does not hold the rules that only compare with it.
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'inplace', signal: 12, quiesceSignal: 'SIGWINCH', resumeSignal: 'SIGWINCH' } }]), {
    'apps[0].reload.signal': 'must be a catchable signal name such as "SIGHUP" (not SIGKILL or SIGSTOP)',
    'apps[0].reload.quiesceSignal': 'only with "strategy": "upgrade" (an old master that keeps the socket while its workers stop)',
    'apps[0].reload.resumeSignal': 'must differ from "quiesceSignal" (it undoes it)',
  });
  // ...but a rule is held while a key it reads is itself wrong (one problem per key).
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGWINCH', resumeSignal: 'SIGHUP' }, stop: { signal: 'SIGHUP', timeoutMs: 'z' } }]), {
    'apps[0].stop.timeoutMs': 'must be an integer from 0 to 3600000',
    'apps[0].reload.resumeSignal': 'must differ from "stop.signal": the good old master would stop instead of accepting again',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGWINCH', resumeSignal: 'SIGHUP' }, stop: { signal: 7 } }]), {
    'apps[0].stop.signal': 'must be a catchable signal name such as "SIGTERM" (not SIGKILL or SIGSTOP)',
  });
  // null is "not set", as for the other optional keys (it was refused: "expected string, received null").
  const unset = parse([{ name: 'n', dir: '/srv/n', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: null, resumeSignal: null } }]).apps[0]!;
  assert.deepEqual([unset.reload.quiesceSignal, unset.reload.resumeSignal], [undefined, undefined]);
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', quiesceSignal: 'SIGWINCH', resumeSignal: null } }]), { 'apps[0].reload.resumeSignal': 'must be set with "quiesceSignal": an old master quiesced for a new generation that then fails must be told to accept again (nginx, gunicorn, unicorn: "SIGHUP")' });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', quiesceSignal: 'SIGWINCH' } }]), { 'apps[0].reload.resumeSignal': 'must be set with "quiesceSignal": an old master quiesced for a new generation that then fails must be told to accept again (nginx, gunicorn, unicorn: "SIGHUP")' });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', resumeSignal: 'SIGHUP' } }]), { 'apps[0].reload.quiesceSignal': 'must be set with "resumeSignal", which undoes it (nginx, gunicorn, unicorn: "SIGWINCH")' });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { quiesceSignal: 'SIGWINCH', resumeSignal: 'SIGHUP' } }]), { 'apps[0].reload.quiesceSignal': 'only with "strategy": "upgrade" (an old master that keeps the socket while its workers stop)' });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGUSR2', resumeSignal: 'SIGUSR2' } }]), {
    'apps[0].reload.quiesceSignal': 'must differ from "signal" (that one starts the new master)',
    'apps[0].reload.resumeSignal': 'must differ from "quiesceSignal" (it undoes it)',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGUSR1', resumeSignal: 'SIGHUP' }, stop: { signal: 'SIGUSR1' } }]), {
    'apps[0].reload.quiesceSignal': 'must differ from "stop.signal": the old master would stop, and a failed new generation would leave nothing to resume',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGTERM', resumeSignal: 'SIGHUP' }, stop: { signal: 'SIGQUIT' } }]), {
    'apps[0].reload.quiesceSignal': 'must not be a signal that stops a server (SIGTERM): a failed new generation would leave nothing to resume (nginx, gunicorn, unicorn: "SIGWINCH")',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', quiesceSignal: 'SIGKILL', resumeSignal: 'SIGHUP' } }]), { 'apps[0].reload.quiesceSignal': 'must be a catchable signal name such as "SIGWINCH" (not SIGKILL or SIGSTOP)' });
  // Found by the helper trial: a resume signal that stops the good old master (nginx died, the rollback restarted it, wrk saw 22 errors).
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGWINCH', resumeSignal: 'SIGTERM' }, stop: { signal: 'SIGQUIT' } }]), {
    'apps[0].reload.resumeSignal': 'must not be a signal that stops a server (SIGTERM): it goes to the good old master, to make it accept again (nginx, gunicorn, unicorn: "SIGHUP")',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGWINCH', resumeSignal: 'SIGHUP' }, stop: { signal: 'SIGHUP' } }]), {
    'apps[0].reload.resumeSignal': 'must differ from "stop.signal": the good old master would stop instead of accepting again',
  });
  // Found by the second helper trial: nginx ignored a resume that was its upgrade signal (5 s with no old worker accepting).
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'SIGUSR2', quiesceSignal: 'SIGWINCH', resumeSignal: 'SIGUSR2' }, stop: { signal: 'SIGQUIT' } }]), {
    'apps[0].reload.resumeSignal': 'must differ from "signal" (SIGUSR2, which starts a new master: an old master ignores it while its new one runs)',
  });
  // One problem per key: the first that applies.
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'inplace', quiesceSignal: 'SIGTERM', resumeSignal: 'SIGHUP' } }]), {
    'apps[0].reload.quiesceSignal': 'only with "strategy": "upgrade" (an old master that keeps the socket while its workers stop)',
  });
  // A near miss names the signal meant.
  assert.deepEqual(problems([{ name: 'a', dir: '/a', reload: { strategy: 'upgrade', signal: 'usr2', quiesceSignal: 'WINCH', resumeSignal: 'SIGhup' } }]), {
    'apps[0].reload.signal': 'must be a catchable signal name such as "SIGHUP" (not SIGKILL or SIGSTOP): did you mean "SIGUSR2"?',
    'apps[0].reload.quiesceSignal': 'must be a catchable signal name such as "SIGWINCH" (not SIGKILL or SIGSTOP): did you mean "SIGWINCH"?',
    'apps[0].reload.resumeSignal': 'must be a catchable signal name such as "SIGHUP" (not SIGKILL or SIGSTOP): did you mean "SIGHUP"?',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', sockets: ['localhost:80', '127.0.0.1:0', 'unix:run/x', 'web1:80', '127.0.0.1:99999'] }]), {
    'apps[0].sockets[0]': '"localhost" is a host name: write an IP address: for this host only (what "localhost" means) "127.0.0.1" or "[::1]"; a name could resolve differently later',
    'apps[0].sockets[3]': '"web1" is a host name: write an IP address ("127.0.0.1", "[::1]", "0.0.0.0" or "[::]"); a name could resolve differently later',
    'apps[0].sockets[4]': 'the port must be a number 1-65535',
    'apps[0].sockets[1]': 'port 0 would pick a different port at every bind: give the port (1-65535)',
    'apps[0].sockets[2]': 'a unix socket needs an absolute path: "unix:/run/web/web.sock"',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', sockets: ['[::1]:80'] }, { name: 'b', dir: '/b', sockets: ['127.0.0.1:81', '[0:0::1]:80', '127.0.0.1:81'] }]), {
    'apps[1].sockets[1]': 'must not be a socket apps[0] holds too (one listen address, one app)',
    'apps[1].sockets[2]': 'must not repeat sockets[0]',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', sockets: ['127.0.0.1:8090'] }, { name: 'b', dir: '/b', sockets: ['0.0.0.0:8090', '[::]:8090'] }]), {
    'apps[1].sockets[0]': 'must not be a socket apps[0] holds too (one listen address, one app)',
  });
  // A probe the held sockets would refuse ("[::]" is IPv6-only: a trial's first start failed with ECONNREFUSED alone).
  assert.deepEqual(problems([{ name: 'a', dir: '/a', sockets: ['[::]:8080'], health: { url: 'http://127.0.0.1:8080/healthz' } }]), {
    'apps[0].health.url': 'reaches 127.0.0.1:8080, but "sockets" holds port 8080 only on [::]:8080 ("[::]" is IPv6-only): the probe would be refused. Add "0.0.0.0:8080" (or "127.0.0.1:8080") to "sockets", or probe an address held',
  });
  assert.deepEqual(problems([{ name: 'a', dir: '/a', sockets: ['127.0.0.1:8080'], health: { tcp: '[::1]:8080' } }]), {
    'apps[0].health.tcp': 'reaches [::1]:8080, but "sockets" holds port 8080 only on 127.0.0.1:8080: the probe would be refused. Add "[::]:8080" (or "[::1]:8080") to "sockets", or probe an address held',
  });
  for (const ok of [
    { sockets: ['[::]:8080', '0.0.0.0:8080'], health: { url: 'http://127.0.0.1:8080/healthz' } },
    { sockets: ['[::]:8080'], health: { url: 'http://[::1]:8080/healthz' } },
    { sockets: ['[::]:8080'], health: { url: 'http://localhost:8080/healthz' } },
    { sockets: ['[::]:8080'], health: { url: 'http://127.0.0.1:9090/healthz' } },
  ]) assert.equal(parse([{ name: 'a', dir: '/a', ...ok }]).apps.length, 1, JSON.stringify(ok));
  assert.deepEqual(problems([{ name: 'a', dir: '/a', health: { readiness: 'sd_notify' } }]), { 'apps[0].health.readiness': 'must be "probe" (settle time, then the probe) or "notify" (the app says READY=1 through sd_notify, then the probe)' });
});

test('a notifier\'s URL that does not parse and a command\'s arguments are never echoed in a refusal: they may hold a token', () => {
  const text = JSON.stringify({ stateDir: '/tmp/s', notify: [{ on: ['deployed'], url: 'https//hooks.example.com/services/T0/B0/SECRETSECRET42' }, { on: ['deployed'], command: ['page-me', '--token', 'ARGSECRET77'] }], apps: [{ name: 'x', dir: '/tmp' }] });
  assert.throws(() => parseConfig(text, '/etc/relink/config.json'), (err: unknown) => {
    const message = (err as Error).message;
    assert.doesNotMatch(message, /SECRET/);
    assert.match(message, /"notify\[0\]\.url": .*\(the rest not shown\)/);
    assert.match(message, /"notify\[1\]\.command": .*"page-me" and 2 arguments \(not shown\)/);
    return true;
  });
});

test('issue 15: releaseNames may name files in a folder per release; links.dir needs that layout; bad folder patterns are refused', () => {
  const file = '/etc/relink/config.json';
  const app = (extra: Record<string, unknown>) => JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web', ...extra }] });
  const ok = parseConfig(app({ releaseNames: { bin: '{release}/bin/app', cfg: '{release}/app.cfg' }, links: { dir: 'current' } }), file).apps[0]!;
  assert.deepEqual(ok.links, { bin: '/srv/web/app.bin', cfg: '/srv/web/app.cfg', dir: '/srv/web/current' });
  assert.deepEqual(releaseFiles(ok, '2.0'), { bin: '/srv/web/release/2.0/bin/app', cfg: '/srv/web/release/2.0/app.cfg' });
  assert.equal(releasesAreFolders(ok), true);
  assert.equal(releaseOf(ok, '2.0'), '2.0');
  assert.equal(releasesAreFolders(parseConfig(app({}), file).apps[0]!), false);

  const shape = 'must be a file name ("app.{release}"), or a path in a folder per release whose first part alone holds {release} ("{release}/app", "{release}/bin/app"), with no "", "." or ".." part';
  assert.equal(one(refused(app({ releaseNames: { bin: 'bin/{release}', cfg: '{release}/app.cfg' } }), file), 'apps[0].releaseNames.bin').rule, shape);
  assert.equal(one(refused(app({ releaseNames: { bin: '{release}/../app', cfg: '{release}/app.cfg' } }), file), 'apps[0].releaseNames.bin').rule, shape);
  assert.equal(one(refused(app({ releaseNames: { bin: '{release}/app', cfg: 'cfg.{release}' } }), file), 'apps[0].releaseNames.cfg').rule,
    'must be in the same folder per release as "bin" (both file names, or both "FOLDER/..." with the same FOLDER)');
  assert.equal(one(refused(app({ links: { dir: 'current' } }), file), 'apps[0].links.dir').rule,
    'needs "releaseNames" in a folder per release, e.g. {"bin": "{release}/app", "cfg": "{release}/app.cfg"}: the link points at the live release\'s folder');
  // Two apps cannot switch one folder link.
  const two = JSON.stringify({ apps: ['a', 'b'].map((name) => ({ name, dir: '/srv/web', releaseNames: { bin: '{release}/app', cfg: '{release}/app.cfg' }, links: { bin: `${name}.bin`, cfg: `${name}.cfg`, dir: 'current' } })) });
  assert.match(one(refused(two, file), 'apps[1].links.dir').message, /must not be the same file as apps\[0\]'s \(two apps would switch the same link\)/);
});
