/**
 * The preflight runs exactly as the app runs (issue 9, item 1): its user,
 * groups, limits, environment and folder, with a timeout that takes
 * everything it started with it; never as root unless the app runs as root.
 * Real users, the real prlimit/setpriv chain, and real nginx (`nginx -t` as
 * root left root-owned files behind that the app's own start then tripped on).
 */
import assert from 'node:assert/strict';
import { chown, copyFile, chmod, mkdir, readdir, readFile, lstat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { loadConfig, type AppConfig } from '../src/config.js';
import { get } from '../src/demo/demo.js';
import { freePort, makeApp, writeConfig } from '../src/demo/layout.js';
import { realEffects } from '../src/effects.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { lookupUser } from '../src/user.js';
import { needProgram, openUp, rootOnly, testGroup, testUser, type TestUser } from './accounts.js';
import { alive, reapAppsAfter, startAgent, tmpDir, waitFor } from './helpers.js';

/** chown -R */
async function chownTree(dir: string, user: TestUser): Promise<void> {
  await chown(dir, user.uid, user.gid);
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await chownTree(p, user);
    else await chown(p, user.uid, user.gid);
  }
}

async function demoApp(t: TestContext, appExtra: Record<string, unknown>): Promise<{ app: AppConfig; stateDir: string }> {
  const root = await tmpDir(t, 'relink-preflight-');
  const demo = await makeApp({ root, releases: ['1.0'] });
  reapAppsAfter(t, demo.releasesDir);
  const configFile = await writeConfig(root, [demo], {}, appExtra);
  return { app: (await loadConfig(configFile)).apps[0]!, stateDir: path.join(root, 'state') };
}

const release = (app: AppConfig) => ({ bin: path.join(app.releasesDir, 'app.1.0'), cfg: path.join(app.releasesDir, 'cfg.1.0') });

test('the preflight runs as the app\'s user, with its groups, limits, environment and folder', async (t) => {
  if (!rootOnly(t)) return;
  const group = await testGroup(t);
  const user = await testUser(t, [group]);
  // Everything it reports goes to stdout, and a non-zero exit puts that in the verdict.
  const script = 'echo "uid=$(id -u) groups=$(id -G) nofile=$(ulimit -n) pwd=$(pwd) color=$APP_COLOR home=$HOME cfg=$1"; exit 3';
  const { app } = await demoApp(t, {
    user: user.name, allowRoot: false, limits: { nofile: 4321 }, env: { APP_COLOR: 'teal' },
    preflight: { command: ['/bin/sh', '-c', script, 'preflight', '{cfg}'], timeoutMs: 10_000 },
  });
  await openUp(app.releasesDir);
  const r = await realEffects(app, '/nonexistent').preflight(release(app));
  assert.equal(r?.ok, false);
  assert.equal(r?.status, 'exit 3');
  const m = /uid=(\d+) groups=([\d ]+) nofile=(\d+) pwd=(\S+) color=(\S+) home=(\S+) cfg=(\S+)/.exec(r?.output ?? '');
  assert.ok(m, `unexpected preflight output: ${r?.output}`);
  assert.equal(Number(m[1]), user.uid, 'never root');
  assert.ok(m[2]!.split(' ').map(Number).includes(group.gid), `supplementary group ${group.gid} missing: ${m[2]}`);
  assert.equal(m[3], '4321');
  assert.equal(m[4], app.dir);
  assert.equal(m[5], 'teal');
  assert.equal(m[6], (await lookupUser(user.name))?.home, 'HOME as for the app');
  assert.equal(m[7], release(app).cfg);
});

test('a preflight that outlives its timeout is killed with everything it started', async (t) => {
  const { app } = await demoApp(t, {
    // A background child holding the output pipe, and a foreground sleep: both must go.
    preflight: { command: ['/bin/sh', '-c', 'sleep 300 & echo "bg=$!"; sleep 300'], timeoutMs: 300 },
  });
  const r = await realEffects(app, '/nonexistent').preflight(release(app));
  assert.equal(r?.ok, false);
  assert.equal(r?.status, 'killed after 300 ms');
  const bg = Number(/bg=(\d+)/.exec(r?.output ?? '')?.[1]);
  assert.ok(bg > 0, `no background pid in ${JSON.stringify(r?.output)}`);
  await waitFor(`background child ${bg} to be gone`, async () => !(await alive(bg)));
});

test('an aborted preflight (the agent stopping) is killed at once and gives no verdict', async (t) => {
  const { app } = await demoApp(t, { preflight: { command: ['/bin/sh', '-c', 'echo started; sleep 300'], timeoutMs: 600_000 } });
  const ac = new AbortController();
  const running = realEffects(app, '/nonexistent').preflight(release(app), ac.signal);
  ac.abort();
  const r = await running;
  assert.equal(r?.ok, false);
  assert.equal(r?.aborted, true);
  assert.match(r?.status ?? '', /abandoned/);
});

test('as root, a preflight for an app that may not run as root is refused, not run as root', async (t) => {
  if (!rootOnly(t)) return;
  const { app } = await demoApp(t, { allowRoot: false, preflight: { command: ['/bin/sh', '-c', 'touch ran-as-root'] } });
  const err = await realEffects(app, '/nonexistent').preflight(release(app)).then(() => undefined, (e: unknown) => e as { code?: string });
  assert.equal(err?.code, 'ROOT_REFUSED');
  assert.equal(await lstat(path.join(app.dir, 'ran-as-root')).then(() => true, () => false), false);
});

/** nginx's config for the test: everything relative to its prefix, the app's folder. */
const nginxConf = (port: number, r: string): string => `daemon off;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path body_temp;
    server {
        listen 127.0.0.1:${port};
        location = /healthz { return 200 "ok\\n"; }
        location / { default_type text/plain; return 200 "nginx ${r}\\n"; }
    }
}
`;

test('real nginx: "nginx -t" as the preflight runs as the app\'s user, so its start finds files it can write (as root it left root-owned ones)', async (t) => {
  if (!rootOnly(t)) return;
  if (!(await needProgram(t, '/usr/sbin/nginx', 'nginx-light'))) return;
  const user = await testUser(t);
  const root = await tmpDir(t, 'relink-preflight-');
  const dir = path.join(root, 'ngx');
  const releasesDir = path.join(dir, 'release');
  reapAppsAfter(t, releasesDir);
  await mkdir(releasesDir, { recursive: true });
  const port = await freePort();
  for (const r of ['1.0', '2.0']) {
    await copyFile('/usr/sbin/nginx', path.join(releasesDir, `app.${r}`));
    await chmod(path.join(releasesDir, `app.${r}`), 0o755);
    await writeFile(path.join(releasesDir, `cfg.${r}`), nginxConf(port, r));
  }
  await writeFile(path.join(releasesDir, 'current.conf'), '{"bin.file": "app.1.0", "cfg.file": "cfg.1.0"}\n');
  await chownTree(dir, user);
  await openUp(dir);
  const prefix = ['-p', `${dir}/`, '-e', 'error.log'];
  const configFile = path.join(root, 'config.json');
  await writeFile(configFile, JSON.stringify({
    stateDir: path.join(root, 'state'),
    apps: [{
      name: 'ngx', dir, user: user.name,
      command: ['./app.bin', ...prefix, '-c', path.join(dir, 'app.cfg')],
      // As the README has it for nginx.
      preflight: { command: ['{bin}', '-t', ...prefix, '-c', '{cfg}'] },
      reload: { mode: 'inplace' },
      health: { url: `http://127.0.0.1:${port}/healthz`, settleMs: 300 },
    }],
  }));
  startAgent(t, configFile);
  const stateDir = path.join(root, 'state');
  const nth = (n: number): Promise<HistoryEntry> => waitFor(`history entry #${n}`, async () => (await readHistory(stateDir, 'ngx'))[n - 1], { timeoutMs: 30_000 });

  const first = await nth(1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  assert.equal(await get(`http://127.0.0.1:${port}/`), 'nginx 1.0');
  // What nginx -t and nginx made: all the app user's.
  for (const f of ['error.log', 'nginx.pid', 'body_temp']) {
    const st = await lstat(path.join(dir, f));
    assert.equal(st.uid, user.uid, `${f} is owned by uid ${st.uid}, not the app's user`);
  }

  await writeFile(path.join(releasesDir, 'current.conf'), '{"bin.file": "app.1.0", "cfg.file": "cfg.2.0"}\n');
  const second = await nth(2);
  assert.equal(second.outcome, 'deployed', second.reason ?? '');
  await waitFor('nginx to serve 2.0', async () => (await get(`http://127.0.0.1:${port}/`)) === 'nginx 2.0');
  assert.doesNotMatch(await readFile(path.join(dir, 'error.log'), 'utf8'), /Permission denied/);
});
