/**
 * End to end under a real systemd (issue 4): a debootstrapped Debian booted
 * with systemd-nspawn, relink installed in it the way the README says (the
 * npm package, the unit from systemd/, a config, `systemctl enable --now`),
 * an app run as its own user. It deploys, restarts and stops the agent's
 * unit under a request loop, and proves the app kept serving, was adopted
 * and never started twice, and runs inside the unit's sandbox. The apps'
 * output goes to the container's journald (no logFile set): stdout at
 * priority 6, stderr at 3, `journalctl -t NAME` and `relink logs` show it,
 * and the streams outlive agent restarts.
 *
 * Opt-in, being heavy (a Debian image, a boot): `npm run test:systemd`
 * (root; apt-get install debootstrap systemd-container). The image is built
 * once with debootstrap and cached (RELINK_E2E_CACHE, default
 * /var/tmp/relink-e2e); each run boots a copy of it. The container shares
 * the host's network, so the app's port is probed from here.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { access, chmod, chown, copyFile, mkdir, readFile, readdir, readlink, rename, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { buildDemoApp } from '../../src/demo/build.js';
import { freePort } from '../../src/demo/layout.js';
import { readHistory, type HistoryEntry } from '../../src/history.js';
import { defer, ROOT, waitFor } from '../helpers.js';

const run = promisify(execFile);
const CACHE = process.env['RELINK_E2E_CACHE'] ?? '/var/tmp/relink-e2e';
const SUITE = 'bookworm';
// What boots, and the README's install steps: procps (ps, for ps-list), util-linux (prlimit, setpriv), iproute2 (ss), acl (getfacl).
const PACKAGES = ['systemd', 'systemd-sysv', 'dbus', 'procps', 'util-linux', 'iproute2', 'acl'];
const PATH_INSIDE = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

interface Reply {
  readonly release: string;
  readonly pid: number;
}

function why(): string | undefined {
  if (process.env['RELINK_E2E_SYSTEMD'] !== '1') return 'opt-in: boots Debian under systemd-nspawn; run `npm run test:systemd`';
  return undefined;
}

/** The cached base image, built by debootstrap on first use (about a minute, from Debian's mirror). */
async function baseImage(): Promise<string> {
  const image = path.join(CACHE, `${SUITE}-${PACKAGES.join('_')}`);
  if (await access(path.join(image, 'usr/lib/systemd/systemd')).then(() => true, () => false)) return image;
  await mkdir(CACHE, { recursive: true });
  const tmp = `${image}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  const args = ['--variant=minbase', `--include=${PACKAGES.join(',')}`, SUITE, tmp];
  // debootstrap's own default mirror unless one is given.
  if (process.env['RELINK_E2E_MIRROR']) args.push(process.env['RELINK_E2E_MIRROR']);
  await run('debootstrap', args, { maxBuffer: 64 * 1024 * 1024 });
  await rename(tmp, image);
  return image;
}

/** uid and gid of `name` in the image's /etc/passwd. */
async function idsIn(root: string, name: string): Promise<{ uid: number; gid: number }> {
  const line = (await readFile(path.join(root, 'etc/passwd'), 'utf8')).split('\n').find((l) => l.startsWith(`${name}:`));
  assert.ok(line, `no ${name} in the image`);
  const f = line.split(':');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

async function chownTree(p: string, uid: number, gid: number): Promise<void> {
  await chown(p, uid, gid);
  for (const e of await readdir(p, { withFileTypes: true }).catch(() => [])) {
    const child = path.join(p, e.name);
    if (e.isDirectory()) await chownTree(child, uid, gid);
    else await chown(child, uid, gid);
  }
}

/** A plain GET on a fresh connection (Connection: close): a refused connection is an error here. */
function get(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, headers: { connection: 'close' }, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => { body += c; }).on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

interface Container {
  readonly root: string;
  /** PID (on the host) of the container's systemd. */
  readonly init: number;
  /** Run a command inside (all its namespaces), as root. */
  sh(command: string): Promise<{ code: number; stdout: string; stderr: string }>;
}

async function boot(t: TestContext, root: string): Promise<Container> {
  const log: string[] = [];
  const nspawn = spawn('systemd-nspawn', ['--register=no', '--keep-unit', '--quiet', '-M', `relink-e2e-${process.pid}`, '-D', root, '-b'], { stdio: ['ignore', 'pipe', 'pipe'] });
  nspawn.stdout.setEncoding('utf8').on('data', (c: string) => log.push(c));
  nspawn.stderr.setEncoding('utf8').on('data', (c: string) => log.push(c));
  const exited = new Promise<void>((resolve) => nspawn.once('exit', () => resolve()));
  defer(t, async () => {
    // SIGTERM asks the container's systemd to power off; SIGKILL if it hangs.
    nspawn.kill('SIGTERM');
    const timer = setTimeout(() => nspawn.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(timer);
  });
  const init = await waitFor('the container\'s systemd to start', async () => {
    if (nspawn.exitCode !== null) throw new Error(`systemd-nspawn exited ${nspawn.exitCode}: ${log.join('')}`);
    const children = (await readFile(`/proc/${nspawn.pid}/task/${nspawn.pid}/children`, 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean).map(Number);
    for (const pid of children) {
      if ((await readlink(`/proc/${pid}/exe`).catch(() => '')).endsWith('/systemd')) return pid;
    }
    return undefined;
  }, { timeoutMs: 60_000 });
  const sh = (command: string): Promise<{ code: number; stdout: string; stderr: string }> =>
    run('nsenter', ['-t', String(init), '-a', '--', 'env', '-i', PATH_INSIDE, 'sh', '-c', command], { maxBuffer: 16 * 1024 * 1024 }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }),
    );
  await waitFor('the container to finish booting', async () => {
    const r = await sh('systemctl is-system-running');
    return ['running', 'degraded'].includes(r.stdout.trim());
  }, { timeoutMs: 90_000, intervalMs: 200 });
  return { root, init, sh };
}

async function ok(c: Container, command: string): Promise<string> {
  const r = await c.sh(command);
  assert.equal(r.code, 0, `${command}: exit ${r.code}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

test('under a booted systemd: install, deploy as the app\'s user, restart and stop the agent while the app keeps serving, adoption, rollback', async (t) => {
  const skip = why();
  if (skip !== undefined) return t.skip(skip);
  assert.equal(process.getuid?.(), 0, 'the systemd end-to-end test needs root (debootstrap, nspawn)');
  for (const tool of ['debootstrap', 'systemd-nspawn', 'nsenter']) {
    assert.equal(spawnSync('sh', ['-c', `command -v ${tool}`]).status, 0, `${tool} missing: apt-get install debootstrap systemd-container`);
  }

  // --- the image and the install, as the README's "Install" says -------------
  const image = await baseImage();
  const root = path.join(CACHE, `run-${process.pid}`);
  await rm(root, { recursive: true, force: true });
  defer(t, () => rm(root, { recursive: true, force: true }));
  await run('cp', ['-a', image, root]);

  // Node: the host's own (the same glibc); npm installs relink from the packed package.
  await copyFile(process.execPath, path.join(root, 'usr/local/bin/node'));
  await chmod(path.join(root, 'usr/local/bin/node'), 0o755);
  const packDir = path.join(root, 'root');
  const { stdout: packed } = await run('npm', ['pack', '--silent', '--pack-destination', packDir], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 });
  const tarball = path.join(packDir, packed.trim().split('\n').pop()!);
  await run('npm', ['install', '--global', '--prefix', path.join(root, 'usr/local'), '--no-audit', '--no-fund', tarball], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 });

  await run('chroot', [root, 'useradd', '--system', '--user-group', '--home-dir', '/srv/web', '--no-create-home', '--shell', '/usr/sbin/nologin', 'web']);
  const web = await idsIn(root, 'web');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}/`;
  const releases = path.join(root, 'srv/web/release');
  await mkdir(releases, { recursive: true });
  const binary = await buildDemoApp();
  for (const r of ['1.0', '2.0']) {
    await copyFile(binary, path.join(releases, `app.${r}`));
    await chmod(path.join(releases, `app.${r}`), 0o755);
    await writeFile(path.join(releases, `cfg.${r}`), `port=${port}\nmode=reexec\nmessage=hello from web ${r}\n`);
  }
  await writeFile(path.join(releases, 'current.conf'), '{"bin.file": "app.1.0", "cfg.file": "cfg.1.0"}\n');
  await chownTree(path.join(root, 'srv/web'), web.uid, web.gid);
  // A second app that writes to stdout and stderr, and a tick a second: where its output goes.
  const talk = path.join(root, 'srv/talk/release');
  await mkdir(talk, { recursive: true });
  await writeFile(path.join(talk, 'app.1.0'), '#!/bin/sh\necho "talk out: hello"\necho "talk err: oops" >&2\nwhile :; do echo "talk tick"; sleep 1; done\n');
  await chmod(path.join(talk, 'app.1.0'), 0o755);
  await writeFile(path.join(talk, 'cfg.1.0'), '');
  await writeFile(path.join(talk, 'current.conf'), '{"bin.file": "app.1.0", "cfg.file": "cfg.1.0"}\n');
  await chownTree(path.join(root, 'srv/talk'), web.uid, web.gid);
  await mkdir(path.join(root, 'etc/relink'), { recursive: true });
  await writeFile(path.join(root, 'etc/relink/config.json'), `${JSON.stringify({
    apps: [
      { name: 'web', dir: '/srv/web', user: 'web', limits: { nofile: 4096 }, health: { url: `${url}healthz`, settleMs: 500 } },
      { name: 'talk', dir: '/srv/talk', user: 'web', command: ['./app.bin'], health: { settleMs: 300 } },
    ],
  }, null, 2)}\n`);
  await copyFile(path.join(ROOT, 'systemd/relink.service'), path.join(root, 'etc/systemd/system/relink.service'));

  const c = await boot(t, root);
  await ok(c, 'systemctl enable --now relink');

  // --- first deploy: started as web, inside the unit's sandbox ----------------
  const stateDir = path.join(root, 'var/lib/relink');
  const nth = (n: number): Promise<HistoryEntry> => waitFor(`history entry #${n}`, async () => (await readHistory(stateDir, 'web'))[n - 1], { timeoutMs: 60_000 });
  const first = await nth(1);
  assert.equal(first.outcome, 'deployed', `${first.reason ?? ''}\n${(await c.sh('journalctl -u relink -o cat --no-pager')).stdout}`);
  const v1 = JSON.parse(await get(url)) as Reply;
  assert.equal(v1.release, 'app.1.0');

  const status = JSON.parse(await ok(c, 'relink status --json')) as { apps: Array<Record<string, unknown>> };
  const s = status.apps[0]!;
  assert.equal(s['state'], 'running');
  assert.equal(s['pid'], v1.pid);
  assert.deepEqual(s['user'], { name: 'web', uid: web.uid });
  assert.deepEqual((s['limits'] as Record<string, unknown>)['nofile'], { soft: 4096, hard: 4096, configured: 4096 });
  assert.deepEqual(s['warnings'], []);
  const procStatus = await ok(c, `cat /proc/${v1.pid}/status`);
  assert.match(procStatus, /^NoNewPrivs:\s+1$/m, 'the app inherits NoNewPrivileges');
  assert.match(procStatus, /^CapEff:\s+0+$/m, 'the app has no capability');
  assert.match(procStatus, /^Seccomp:\s+2$/m, 'the app inherits the system call filter');
  // ProtectSystem=strict reaches the app; /tmp stays writable (no PrivateTmp).
  // Probed as root in the app's mount namespace, so only the mount can say no.
  const etc = await c.sh(`nsenter -t ${v1.pid} -m -- sh -c 'touch /srv/web/.probe && rm /srv/web/.probe && echo > /etc/relink-probe'`);
  assert.notEqual(etc.code, 0);
  assert.match(etc.stderr, /Read-only file system/);

  // --- the apps' output, in the journal (no logFile set) ---------------------
  interface Entry { MESSAGE: string; PRIORITY: string; _UID: string; _PID: string; _SYSTEMD_UNIT?: string }
  const journal = async (id: string): Promise<Entry[]> => (await ok(c, `journalctl -t ${id} -o json --no-pager`)).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Entry);
  const talked = await waitFor('talk\'s output in the journal', async () => {
    const e = await journal('talk');
    return e.some((x) => x.MESSAGE === 'talk out: hello') && e.some((x) => x.MESSAGE === 'talk err: oops') ? e : undefined;
  }, { timeoutMs: 30_000 });
  assert.equal(talked.find((x) => x.MESSAGE === 'talk out: hello')?.PRIORITY, '6', 'stdout at priority 6 (info)');
  assert.equal(talked.find((x) => x.MESSAGE === 'talk err: oops')?.PRIORITY, '3', 'stderr at priority 3 (err)');
  assert.ok(talked.every((x) => x._UID === String(web.uid)), 'written by the app\'s user');
  const talkPid = talked[0]!._PID;
  const webLines = await journal('web');
  assert.ok(webLines.some((x) => x.PRIORITY === '3' && x.MESSAGE.includes(`listening on 127.0.0.1:${port}`)), JSON.stringify(webLines));
  assert.match(await ok(c, 'relink logs talk -n 3'), /talk tick\n$/);
  assert.match(await ok(c, 'relink logs web -n 20'), new RegExp(`release=app\\.1\\.0 pid=${v1.pid} .*listening on 127\\.0\\.0\\.1:${port}`));
  assert.equal((await c.sh('ls /srv/web/app.log /srv/talk/app.log')).code, 2, 'no log file was made');

  // --- deploy 2.0 with the CLI as the app's user, as `ssh web@host` would ----
  await ok(c, 'setpriv --reuid=web --regid=web --init-groups -- relink deploy --app web 2.0 --wait');
  assert.equal((await stat(path.join(releases, 'current.conf'))).uid, web.uid, 'written by web, and trusted');
  const v2 = JSON.parse(await get(url)) as Reply;
  assert.equal(v2.release, 'app.2.0');
  assert.notEqual(v2.pid, v1.pid);

  // --- restart, then stop and start the agent's unit, under a request loop ----
  let stop = false;
  let served = 0;
  const failures: string[] = [];
  const pids = new Set<number>();
  const loop = (async () => {
    while (!stop) {
      try {
        pids.add((JSON.parse(await get(url)) as Reply).pid);
        served += 1;
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
  })();
  const agentPid = async (): Promise<number> => Number((await ok(c, 'systemctl show relink -p MainPID --value')).trim());
  const adoptions = async (): Promise<number> => (await ok(c, 'journalctl -u relink -o cat --no-pager')).split('\n').filter((l) => l.includes('"adopted running app"') && l.includes('"app":"web"')).length;
  try {
    const agent1 = await agentPid();
    await ok(c, 'systemctl restart relink');
    await waitFor('the restarted agent to adopt the app', async () => (await adoptions()) >= 1, { timeoutMs: 30_000 });
    const agent2 = await agentPid();
    assert.notEqual(agent2, agent1, 'the agent was really restarted');

    await ok(c, 'systemctl stop relink');
    assert.equal((await c.sh('systemctl is-active relink')).stdout.trim(), 'inactive');
    const whileStopped = served;
    await waitFor('requests served while the agent is stopped', () => served >= whileStopped + 20);
    await ok(c, 'systemctl start relink');
    await waitFor('the started agent to adopt the app', async () => (await adoptions()) >= 2, { timeoutMs: 30_000 });
    const atEnd = served;
    await waitFor('requests served after the restart', () => served >= atEnd + 20);
  } finally {
    stop = true;
    await loop;
  }
  assert.deepEqual(failures, [], `requests failed while the agent restarted (${served} served)`);
  assert.deepEqual([...pids], [v2.pid], 'the same app process served throughout: adopted, never restarted');
  const running = (await ok(c, 'for p in /proc/[0-9]*; do readlink $p/exe; done; true')).split('\n').filter((l) => l.startsWith('/srv/web/release/'));
  assert.deepEqual(running, ['/srv/web/release/app.2.0'], 'exactly one copy of the app runs');
  // Its /tmp survived the restarts (a PrivateTmp=yes unit would have deleted it).
  await ok(c, `nsenter -t ${v2.pid} -m -- sh -c 'echo ok > /tmp/relink-e2e-probe'`);

  // talk's streams are its own: its ticks go on into the journal after the restarts, from the same process.
  const ticksNow = (await journal('talk')).filter((x) => x.MESSAGE === 'talk tick').length;
  const later = await waitFor('talk ticking after the agent restarts', async () => {
    const e = (await journal('talk')).filter((x) => x.MESSAGE === 'talk tick');
    return e.length >= ticksNow + 2 ? e : undefined;
  }, { timeoutMs: 30_000 });
  assert.ok(later.every((x) => x._PID === talkPid), 'the same talk process, never restarted');

  // --- rollback, and the journald view of the outcomes ------------------------
  await ok(c, 'relink rollback --app web --wait');
  assert.equal((JSON.parse(await get(url)) as Reply).release, 'app.1.0');
  const outcomes = (await ok(c, 'journalctl -u relink -o cat --no-pager | grep \'"outcome"\' | grep \'"app":"web"\'')).trim().split('\n').map((l) => (JSON.parse(l) as { outcome: string }).outcome);
  assert.deepEqual(outcomes, ['deployed', 'deployed', 'deployed']);
});
