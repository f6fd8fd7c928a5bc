/**
 * Finding the app's process, for real: the C demo app started the way an
 * operator starts it (`./app.bin -c app.cfg` through the links), decoys that
 * mention app.bin or run a copy of the same binary, real /proc, real signals.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readlinkSync, realpathSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, realpath, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { freePort, makeApp, type DemoApp } from '../src/demo/layout.js';
import { describeListener, descendantsOf, ofApp, listeningInodes, markerEnv, portListener, ProcessFinder, procTable, readMarker, readProc, readStat, sharesListener, socketInodes, socketTable, sendSignal, startedAtMs, ticksNow, type ProcIdentity, type ProcInfo } from '../src/proc.js';
import { swapLink } from '../src/relink.js';
import { alive, reapAppsAfter, waitFor } from './helpers.js';

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

interface Reply {
  readonly release: string;
  readonly pid: number;
  readonly generation: number;
}

interface Spawned {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

interface Setup {
  readonly root: string;
  readonly app: DemoApp;
  readonly finder: ProcessFinder;
}

/**
 * makeApp in a fresh folder, with app.bin/app.cfg linked to release 1.0.
 * Not helpers' tmpDir: after-hooks run in the order they were registered, so
 * its folder removal would run before reapAppsAfter, which then can no longer
 * resolve the releases folder and kills nothing.
 */
async function setup(t: TestContext, cfgExtra: (root: string) => string = () => ''): Promise<Setup> {
  const root = await realpath(await mkdtemp(path.join(os.tmpdir(), 'relink-proc-')));
  reapAppsAfter(t, path.join(root, 'web', 'release'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const app = await makeApp({ root, cfgExtra: cfgExtra(root) });
  assert.equal(app.releasesDir, path.join(root, 'web', 'release'));
  await symlink('release/app.1.0', path.join(app.dir, 'app.bin'));
  await symlink('release/cfg.1.0', path.join(app.dir, 'app.cfg'));
  return { root, app, finder: new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir }) };
}

/** A detached child in its own process group, SIGKILLed as a group after the test. */
function spawnTracked(t: TestContext, cmd: string, args: readonly string[], opts: { cwd?: string; argv0?: string; stdin?: 'pipe'; stdout?: 'pipe'; env?: NodeJS.ProcessEnv } = {}): Spawned {
  const child = spawn(cmd, args, {
    cwd: opts.cwd,
    env: opts.env,
    argv0: opts.argv0,
    detached: true,
    stdio: [opts.stdin ?? 'ignore', opts.stdout ?? 'ignore', 'ignore'],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  child.once('error', () => undefined); // a failed spawn shows as the missing pid below
  const pid = child.pid;
  assert.ok(pid !== undefined, `spawn ${cmd} failed`);
  // The group also holds re-exec'd generations, workers and a shell's children.
  t.after(() => killGroup(pid));
  return { child, pid, exited };
}

function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

function get(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error(`GET ${url} timed out`)));
  });
}

async function ask(url: string): Promise<Reply> {
  return JSON.parse(await get(url)) as Reply;
}

/** Wait until `url` is served by process `pid`. */
async function servedBy(url: string, pid: number): Promise<Reply> {
  return waitFor(`${url} to be served by pid ${pid}`, async () => {
    const reply = await ask(url);
    return reply.pid === pid ? reply : undefined;
  });
}

/** `./app.bin -c CFG` in the app's folder, as an operator starts it; resolves once it serves. */
async function startApp(t: TestContext, app: DemoApp, cfg = 'app.cfg', url = app.url): Promise<Spawned> {
  const s = spawnTracked(t, './app.bin', ['-c', cfg], { cwd: app.dir });
  await servedBy(url, s.pid);
  return s;
}

function pidsOf(list: readonly ProcInfo[]): number[] {
  return list.map((p) => p.pid).sort((a, b) => a - b);
}

function identity(p: ProcInfo): ProcIdentity {
  return { pid: p.pid, startTime: p.startTime };
}

async function mustRead(pid: number): Promise<ProcInfo> {
  const info = await readProc(pid);
  assert.ok(info !== undefined, `readProc(${pid}) found nothing`);
  return info;
}

/**
 * Clock ticks since boot, as /proc/uptime tells. It lags the clock start
 * times are taken from by up to a tick (measured), hence the slack of a
 * second where it bounds a start time from above: a misread field
 * (vsize, num_threads...) is off by far more.
 */
async function uptimeTicks(): Promise<number> {
  return Math.floor(Number.parseFloat(await readFile('/proc/uptime', 'utf8')) * CLK_TCK);
}

async function procState(pid: number): Promise<string | undefined> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return text?.slice(text.lastIndexOf(')') + 2).split(' ')[0];
}

test('readProc reads pid, parent, start time and the real executable of the running app', async (t) => {
  const { app } = await setup(t);
  const { pid } = await startApp(t, app);

  const info = await mustRead(pid);
  assert.equal(info.pid, pid);
  assert.equal(info.ppid, process.pid);
  assert.ok(info.startTime > 0, `startTime ${info.startTime}`);
  assert.ok(info.startTime <= (await uptimeTicks()) + CLK_TCK, `startTime ${info.startTime} is in the future`);
  assert.equal(info.exe, await realpath(path.join(app.releasesDir, 'app.1.0')));
  assert.equal(info.deleted, false);
  assert.equal(info.uid, process.getuid?.());
  assert.equal((await mustRead(pid)).startTime, info.startTime, 'start time is stable');
});

test('readProc parses /proc/PID/stat when the command name holds ") " and spaces', async (t) => {
  const { root } = await setup(t);
  // comm is the executable's file name: with the first ')' taken as its end, ppid would read as 9.
  const odd = path.join(root, 'x) 9 9 (y');
  await copyFile(await realpath('/bin/sleep'), odd);
  const s = spawnTracked(t, odd, ['300']);
  const info = await waitFor('the oddly named sleep', () => readProc(s.pid));
  assert.equal(info.ppid, process.pid);
  assert.equal(info.exe, odd);
  assert.ok(info.startTime > 0 && info.startTime <= (await uptimeTicks()) + CLK_TCK, `startTime ${info.startTime}`);
});

test('readProc is undefined for a dead, a nonexistent or an invalid pid', async (t) => {
  const s = spawnTracked(t, 'true', []);
  assert.deepEqual(await s.exited, { code: 0, signal: null });
  assert.equal(await readProc(s.pid), undefined);
  const pidMax = Number(await readFile('/proc/sys/kernel/pid_max', 'utf8'));
  for (const pid of [pidMax + 1, 0, -1, Number.NaN, 1.5]) assert.equal(await readProc(pid), undefined, `pid ${pid}`);
});

test('readProc: childFaults grows when the process reaps a child, even one that lived a moment', async (t) => {
  // The shell waits on stdin, then runs /bin/true (a child it waits for), then waits again.
  const s = spawnTracked(t, 'sh', ['-c', 'read a; /bin/true; read b'], { stdin: 'pipe' });
  const before = await waitFor('the shell', () => readProc(s.pid));
  assert.equal(typeof before.childFaults, 'number');
  s.child.stdin!.write('go\n');
  const after = await waitFor('the reaped child to be counted', async () => {
    const now = await readProc(s.pid);
    return now !== undefined && now.childFaults! > before.childFaults! ? now : undefined;
  });
  assert.equal(after.startTime, before.startTime, 'the same shell');
  s.child.stdin!.end('\n');
});

test('readProc treats a zombie as gone', async (t) => {
  // `sleep 0` is reaped by nobody: its parent shell has become `sleep 300`.
  const s = spawnTracked(t, 'sh', ['-c', 'sleep 0 & echo $!; exec sleep 300'], { stdout: 'pipe' });
  const zombie = await new Promise<number>((resolve, reject) => {
    let out = '';
    s.child.stdout!.setEncoding('utf8').on('data', (c: string) => {
      out += c;
      if (out.includes('\n')) resolve(Number(out.trim()));
    });
    s.child.once('exit', () => reject(new Error('shell exited early')));
  });
  await waitFor(`pid ${zombie} to be a zombie`, async () => (await procState(zombie)) === 'Z');
  assert.equal(await readProc(zombie), undefined);
  assert.equal(await alive(zombie), false);
});

test('discover finds the app; verify pins it by pid and start time', async (t) => {
  const { app, finder } = await setup(t);
  const s = await startApp(t, app);

  const found = await finder.discover();
  assert.equal(found.main?.pid, s.pid);
  assert.deepEqual(pidsOf(found.all), [s.pid]);
  assert.deepEqual(found.strays, []);
  const main = found.main!;

  assert.deepEqual(await finder.verify(identity(main)), main);
  // PID reuse guard: same pid, another start time is another process.
  assert.equal(await finder.verify({ pid: main.pid, startTime: main.startTime + 1 }), undefined);
  assert.equal(await finder.verify({ pid: main.pid, startTime: main.startTime - 1 }), undefined);

  assert.equal(sendSignal(s.pid, 'SIGKILL'), true);
  await waitFor('verify to drop the killed app', async () => (await finder.verify(identity(main))) === undefined);
  const after = await finder.discover();
  assert.equal(after.main, undefined);
  assert.deepEqual(after.all, []);
});

test('decoys that mention app.bin or run a copy of its binary are never matched', async (t) => {
  const { root, app, finder } = await setup(t);
  const real = await startApp(t, app);

  const tail = spawnTracked(t, 'tail', ['-f', path.join(app.dir, 'app.bin')]);
  const shell = spawnTracked(t, 'sh', ['-c', 'sleep 300; : app.bin ./app.bin -c app.cfg'], { cwd: app.dir });
  // argv[0] is the release binary's own path; the process runs sleep.
  const liar = spawnTracked(t, 'sleep', ['300'], { argv0: path.join(app.releasesDir, 'app.1.0') });

  // The same binary outside the releases folder, in a sibling whose name starts
  // the same ("release-old"), started exactly like the app.
  const copyDir = path.join(app.dir, 'release-old');
  const decoyDir = path.join(root, 'decoy');
  await mkdir(copyDir);
  await mkdir(decoyDir);
  await copyFile(path.join(app.releasesDir, 'app.1.0'), path.join(copyDir, 'app.1.0'));
  const decoyPort = await freePort();
  await writeFile(path.join(decoyDir, 'app.cfg'), `port=${decoyPort}\nmode=reexec\n`);
  await symlink(path.join(copyDir, 'app.1.0'), path.join(decoyDir, 'app.bin'));
  const copy = spawnTracked(t, './app.bin', ['-c', 'app.cfg'], { cwd: decoyDir });
  await servedBy(`http://127.0.0.1:${decoyPort}/`, copy.pid);

  const sleepUnderShell = await waitFor('the shell decoy\'s sleep', async () => {
    const children = await readFile(`/proc/${shell.pid}/task/${shell.pid}/children`, 'utf8');
    return Number(children.trim().split(' ')[0]) || undefined;
  });
  const decoys = [tail.pid, shell.pid, sleepUnderShell, liar.pid, copy.pid];
  for (const pid of decoys) assert.ok(await alive(pid), `decoy ${pid} is running`);

  const found = await finder.discover();
  assert.equal(found.main?.pid, real.pid);
  assert.deepEqual(pidsOf(found.all), [real.pid]);
  assert.deepEqual(found.strays, []);
  for (const pid of decoys) {
    const info = await mustRead(pid);
    assert.equal(await finder.verify(identity(info)), undefined, `verify accepted decoy ${pid} (${info.exe})`);
    assert.equal(await finder.belongs(info), false, `decoy ${pid} (${info.exe}) belongs`);
  }
});

test('procTable, the /proc walk discovery uses once lineage is recorded, lists a child with its parent, effective uid and real executable', async (t) => {
  const child = spawn('sleep', ['300'], { stdio: 'ignore' });
  t.after(() => child.kill('SIGKILL'));
  const row = await waitFor('the child to have exec\'d sleep', async () => procTable().find((r) => r.pid === child.pid && r.path?.endsWith('/sleep')));
  assert.deepEqual({ ppid: row.ppid, uid: row.uid }, { ppid: process.pid, uid: process.geteuid!() });
  assert.equal(row.path, await realpath(row.path!), 'the real path of the executable');
  assert.ok(procTable().some((r) => r.pid === process.pid && r.path === process.execPath), 'this process, by its executable');
});

test('sharesListener (not handed over yet): the old process still listens on what its successor holds, or the successor listens on nothing (a worker on its way out, taken for a successor); handed over once the old one listens on nothing', async (t) => {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  const started: ChildProcess[] = [];
  const run = (withSocket: boolean): ChildProcess => {
    const c = spawn('sleep', ['300'], { stdio: withSocket ? ['ignore', 'ignore', 'ignore', fd] : 'ignore' });
    started.push(c);
    return c;
  };
  t.after(() => { for (const c of started) c.kill('SIGKILL'); });
  const old = run(true);
  const successor = run(true);
  const bare = run(false);
  const oldNoSocket = run(false);
  server.close();
  const id = (c: ChildProcess) => ({ pid: c.pid!, startTime: 0 });
  await waitFor('the children to hold what they were given', async () => (socketInodes(old.pid!).size > 0 && socketInodes(successor.pid!).size > 0 ? true : undefined));
  assert.equal(sharesListener(id(old), id(successor)), true, 'both hold the listening socket: not handed over');
  assert.equal(sharesListener(id(old), id(bare)), true, 'the successor listens on nothing while the old one listens: nothing taken over');
  assert.equal(sharesListener(id(oldNoSocket), id(successor)), false, 'the old one listens on nothing: handed over');
});

test('listeningInodes reads the TCP tables only as far as their listeners go, and finds every one: IPv4, IPv6 and unix, beside established and TIME_WAIT connections', async (t) => {
  // Connections first, then more listeners: the kernel's order, not the
  // order of creation, puts listeners first.
  const early = net.createServer((s) => s.end());
  await new Promise<void>((r) => early.listen(0, '127.0.0.1', r));
  const port = (early.address() as net.AddressInfo).port;
  const open: net.Socket[] = [];
  for (let i = 0; i < 200; i++) {
    // The server ends each one first: its side is left in TIME_WAIT.
    const c = net.connect(port, '127.0.0.1');
    await new Promise<void>((r) => c.once('close', () => r()).on('error', () => r()));
  }
  const held = net.createServer();
  await new Promise<void>((r) => held.listen(0, '127.0.0.1', r));
  const kept = net.connect((held.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise<void>((r) => kept.once('connect', () => r()));
  open.push(kept);
  const six = net.createServer();
  await new Promise<void>((r) => six.listen(0, '::1', r));
  const dir = await mkdtemp(path.join(os.tmpdir(), 'relink-listen-'));
  const unix = net.createServer();
  await new Promise<void>((r) => unix.listen(path.join(dir, 's.sock'), r));
  t.after(async () => {
    for (const c of open) c.destroy();
    for (const s of [early, held, six, unix]) s.close();
    await rm(dir, { recursive: true, force: true });
  });
  const full = socketTable('self');
  const expected = new Set(full.filter((e) => e.listening).map((e) => e.inode));
  assert.ok(full.some((e) => !e.listening && e.table === 'tcp'), 'the table holds connections beside the listeners');
  const inodeOf = (h: net.Server | net.Socket): string =>
    readlinkSync(`/proc/self/fd/${(h as unknown as { _handle: { fd: number } })._handle.fd}`).replace(/^socket:\[(\d+)\]$/, '$1');
  const got = listeningInodes('self');
  assert.deepEqual([...got].sort(), [...expected].sort());
  for (const s of [early, held, six, unix]) assert.ok(got.has(inodeOf(s)), `a listener (${JSON.stringify(s.address())}) is found`);
  assert.ok(!got.has(inodeOf(kept)), 'a connection is not a listener');
});

test('a path from the process lister is only a hint: /proc has the last word', async (t) => {
  const { app } = await setup(t);
  const real = await startApp(t, app);
  const bin = path.join(app.releasesDir, 'app.1.0');
  // ps-list falls back to argv[0] when /proc/PID/exe is unreadable, so a process
  // started with the app's path as argv[0] can be listed with that path.
  const liar = spawnTracked(t, 'sleep', ['300'], { argv0: bin });
  const list = async (): Promise<{ pid: number; path: string }[]> => [
    { pid: liar.pid, path: bin },
    { pid: real.pid, path: bin },
  ];
  const found = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, list }).discover();
  assert.equal(found.main?.pid, real.pid);
  assert.deepEqual(pidsOf(found.all), [real.pid]);
  assert.ok(await alive(liar.pid), 'the decoy was still running while checked');
});

test('an app whose binary was deleted or replaced on disk is still found, marked deleted', async (t) => {
  const { app, finder } = await setup(t);
  const s = await startApp(t, app);
  const bin = path.join(app.releasesDir, 'app.1.0');
  const saved = path.join(app.dir, 'app.1.0.saved');
  await copyFile(bin, saved);

  await unlink(bin);
  const gone = await finder.discover();
  assert.equal(gone.main?.pid, s.pid);
  assert.equal(gone.main?.exe, bin);
  assert.equal(gone.main?.deleted, true);
  assert.deepEqual(pidsOf(gone.all), [s.pid]);
  assert.equal((await finder.verify(identity(gone.main!)))?.deleted, true);

  // Put a file back under the same name: the process still runs the old one.
  await copyFile(saved, bin);
  const back = await finder.discover();
  assert.equal(back.main?.pid, s.pid);
  assert.equal(back.main?.exe, bin);
  assert.equal(back.main?.deleted, true);
});

test('with workers the main is the parent and the workers are neither main nor strays', async (t) => {
  const { app, finder } = await setup(t, () => 'workers=2\n');
  const s = await startApp(t, app);

  const found = await waitFor('the app and its 2 workers', async () => {
    const d = await finder.discover();
    return d.all.length >= 3 ? d : undefined;
  });
  assert.equal(found.all.length, 3);
  assert.equal(found.main?.pid, s.pid);
  assert.deepEqual(found.strays, []);
  const workers = found.all.filter((p) => p.pid !== s.pid);
  assert.equal(workers.length, 2);
  for (const w of workers) {
    assert.equal(w.ppid, s.pid);
    assert.equal(w.exe, path.join(app.releasesDir, 'app.1.0'));
  }
  // Asked to prefer a worker, discover still answers with the main process.
  assert.equal((await finder.discover(identity(workers[0]!))).main?.pid, s.pid);
});

test('a reload signal opens a generation: the successor is found in it, even after its parent has exited unseen, and followed once nothing older runs', async (t) => {
  const { app, finder } = await setup(t);
  const old = await startApp(t, app);
  const before = await finder.discover();
  assert.equal(before.main?.pid, old.pid);
  assert.equal(before.main?.gen, 1);
  const oldId = identity(before.main!);

  await swapLink(path.join(app.dir, 'app.cfg'), 'release/cfg.2.0');
  await swapLink(path.join(app.dir, 'app.bin'), 'release/app.2.0');
  const gen = finder.open(oldId);
  assert.equal(gen, 2);
  assert.equal(sendSignal(old.pid, 'SIGHUP'), true);

  // Looked at only once the old main is gone, as a slow agent would.
  await waitFor(`old main ${old.pid} to exit`, async () => !(await alive(old.pid)));
  const after = await finder.discover();
  const successor = after.all.find((p) => p.gen === gen);
  assert.ok(successor !== undefined, JSON.stringify(after.all));
  assert.equal(successor.exe, path.join(app.releasesDir, 'app.2.0'));
  // Nothing of generation 1 is left: generation 2 is what runs, its root the main.
  assert.equal(after.main?.pid, successor.pid);
  assert.deepEqual(after.followed, { from: old.pid, to: successor.pid });
  assert.equal(finder.serving, gen);
  finder.promote(gen, successor);
  const promoted = await finder.discover();
  assert.equal(promoted.main?.pid, successor.pid);
  assert.deepEqual(pidsOf(promoted.all), [successor.pid]);
  assert.deepEqual(promoted.strays, []);
  assert.equal(await finder.verify(oldId), undefined);
  assert.equal((await finder.verify(identity(successor)))?.gen, gen);

  const reply = await ask(app.url);
  assert.equal(reply.pid, successor.pid);
  assert.equal(reply.release, 'app.2.0');
});

test('before lineage (nothing recorded): copies found by their binary, the oldest main; once known, the main stays and a later copy is not the app\'s', async (t) => {
  const { root, app, finder } = await setup(t, (r) => `pidfile=${path.join(r, 'first.pid')}\n`);
  const first = await startApp(t, app);
  const firstInfo = await mustRead(first.pid);
  // Start times count clock ticks: make sure the second copy cannot share the first's.
  await waitFor('a clock tick after the first copy started', async () => (await uptimeTicks()) > firstInfo.startTime + 1);

  const port2 = await freePort();
  const pidFile2 = path.join(root, 'second.pid');
  await writeFile(path.join(app.dir, 'second.cfg'), `port=${port2}\nmode=reexec\npidfile=${pidFile2}\n`);
  const second = await startApp(t, app, 'second.cfg', `http://127.0.0.1:${port2}/`);
  const secondInfo = await mustRead(second.pid);
  assert.ok(secondInfo.startTime > firstInfo.startTime);

  // A first look with nothing recorded: both are adopted, the preferred one is main.
  const preferred = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir }).discover(identity(secondInfo));
  assert.equal(preferred.main?.pid, second.pid);
  assert.deepEqual(pidsOf(preferred.strays), [first.pid]);

  const found = await finder.discover();
  assert.equal(found.main?.pid, first.pid);
  assert.deepEqual(pidsOf(found.strays), [second.pid]);
  assert.deepEqual(pidsOf(found.all), [first.pid, second.pid].sort((a, b) => a - b));
  // Once known, the main stays whatever is preferred.
  assert.equal((await finder.discover(identity(secondInfo))).main?.pid, first.pid);

  // The PID file names the younger copy: known from it, the app is that one alone.
  await waitFor('the second copy\'s pid file', () => readFile(pidFile2, 'utf8'));
  const byPidFile = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile: pidFile2 }).discover();
  assert.equal(byPidFile.main?.pid, second.pid);
  assert.deepEqual(byPidFile.strays, []);
  assert.deepEqual(pidsOf(byPidFile.all), [second.pid]);
});

test('a PID file naming the app finds it even without a process-table scan', async (t) => {
  const { root, app } = await setup(t, (r) => `pidfile=${path.join(r, 'app.pid')}\n`);
  const pidFile = path.join(root, 'app.pid');
  const s = await startApp(t, app);
  assert.equal(Number((await waitFor('the app\'s pid file', () => readFile(pidFile, 'utf8'))).trim()), s.pid);

  const noScan = async (): Promise<{ pid: number }[]> => [];
  const blind = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, list: noScan }).discover();
  assert.equal(blind.main, undefined, 'control: without the PID file an empty scan finds nothing');

  const viaFile = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile, list: noScan }).discover();
  assert.equal(viaFile.main?.pid, s.pid);
  assert.deepEqual(pidsOf(viaFile.all), [s.pid]);

  const both = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile }).discover();
  assert.equal(both.main?.pid, s.pid);
  assert.deepEqual(pidsOf(both.all), [s.pid], 'the app is listed once, not once per source');
});

test('a PID file naming a process that does not run the app\'s binary is not trusted', async (t) => {
  const { root, app } = await setup(t);
  const s = await startApp(t, app);
  const decoy = spawnTracked(t, 'sleep', ['300'], { argv0: path.join(app.releasesDir, 'app.1.0') });
  const pidFile = path.join(root, 'decoy.pid');
  await writeFile(pidFile, `${decoy.pid}\n`);

  const found = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile }).discover();
  assert.equal(found.main?.pid, s.pid);
  assert.deepEqual(pidsOf(found.all), [s.pid]);
  assert.ok(!found.strays.some((p) => p.pid === decoy.pid));

  const blind = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile, list: async () => [] }).discover();
  assert.equal(blind.main, undefined);
  assert.deepEqual(blind.all, []);
  assert.ok(await alive(decoy.pid), 'the decoy was still running while checked');
});

test('a garbage, empty, missing or stale PID file is ignored and the scan still finds the app', async (t) => {
  const { root, app } = await setup(t);
  const s = await startApp(t, app);
  const dead = spawnTracked(t, 'true', []);
  await dead.exited;

  const pidFile = path.join(root, 'app.pid');
  for (const content of ['garbage\n', '', '0\n', '-1\n', `${dead.pid}\n`, undefined]) {
    await rm(pidFile, { force: true });
    if (content !== undefined) await writeFile(pidFile, content);
    const found = await new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile }).discover();
    assert.equal(found.main?.pid, s.pid, `pid file ${JSON.stringify(content)}`);
    assert.deepEqual(pidsOf(found.all), [s.pid], `pid file ${JSON.stringify(content)}`);
  }
});

/**
 * A release of nginx (a copy of /usr/sbin/nginx, app.ngx) that daemonizes
 * ("daemon on") and writes its master's PID to `pidFile`, serving "ngx" on
 * `port`; `start()` runs it as the agent would, from the releases folder.
 */
async function nginxDaemon(t: TestContext, root: string, app: DemoApp): Promise<{ port: number; pidFile: string; start: () => Spawned }> {
  if (!existsSync('/usr/sbin/nginx')) {
    assert.fail('nginx is not installed (apt-get install nginx-light): .ci/run installs it');
  }
  await copyFile('/usr/sbin/nginx', path.join(app.releasesDir, 'app.ngx'));
  const port = await freePort();
  const pidFile = path.join(root, 'ngx.pid');
  const conf = path.join(root, 'ngx.conf');
  await writeFile(conf, `daemon on;\nworker_processes 1;\npid ${pidFile};\nerror_log ${root}/error.log notice;\nevents { worker_connections 64; }\n`
    + `http {\n  access_log off;\n  client_body_temp_path ${root}/body_temp;\n  server { listen 127.0.0.1:${port}; location / { return 200 "ngx\\n"; } }\n}\n`);
  return { port, pidFile, start: () => spawnTracked(t, path.join(app.releasesDir, 'app.ngx'), ['-p', `${root}/`, '-e', 'error.log', '-c', conf]) };
}

test('an app that daemonizes and overwrites its environment (nginx, daemon on) is followed through its PID file once its started process exits 0', async (t) => {
  const { root, app } = await setup(t);
  // nginx's own way: the started process forks the master and exits 0, the
  // master calls setsid(), overwrites its environment (and the agent's
  // marker with it) with its process title, then writes its PID file.
  const { port, pidFile, start } = await nginxDaemon(t, root, app);
  const finder = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile });
  const from = ticksNow();
  const started = start();
  const gen = await finder.launched(started.pid, true, from);
  // What an agent saves right after the start (before it learns how the started process ended).
  const atLaunch = finder.record();
  assert.deepEqual(await started.exited, { code: 0, signal: null }, 'nginx daemonized: its started process exited 0');
  finder.exited(started.pid, true);
  const master = Number((await waitFor('nginx\'s pid file', () => readFile(pidFile, 'utf8'))).trim());
  assert.equal(await get(`http://127.0.0.1:${port}/`), 'ngx\n');
  assert.equal(readMarker(master), undefined, 'control: the master\'s environment carries no marker');

  const found = await finder.discover();
  assert.equal(found.main?.pid, master);
  assert.equal(found.main?.gen, gen);
  assert.deepEqual(found.followed, { from: started.pid, to: master });
  assert.equal(found.all.length, 2, 'the master and its worker');
  assert.deepEqual(found.leftovers, []);

  // An agent killed right after that start: the next one, from the record
  // saved then, never saw the started process exit; gone, it is taken as
  // daemonized, and the master its PID file names is the app's (found by
  // the helper trial: a second nginx was started beside the first).
  const next = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile });
  next.restore(atLaunch);
  const adopted = await next.discover();
  assert.equal(adopted.main?.pid, master, 'the next agent adopts the daemon');
  assert.equal(adopted.main?.gen, gen);

  // Not trusted: the same PID file when the cleanly exited main the agent
  // started is younger than the process it names.
  const masterStart = found.main!.startTime;
  await waitFor('a clock tick after the master started', () => ticksNow() > masterStart + 1 || undefined);
  const later = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile });
  const fromTrue = ticksNow();
  const other = spawnTracked(t, 'true', []);
  await later.launched(other.pid, true, fromTrue);
  await other.exited;
  later.exited(other.pid, true);
  const refused = await later.discover();
  assert.equal(refused.main, undefined, 'a process older than the started main is not its daemon');
  assert.deepEqual(refused.all, []);
});

// Found by a trial (issue 11): an agent killed mid-upgrade and restarted
// filed every later new master, named by nginx's PID file before a process
// table scan had seen it, in the long-dead generation the previous agent had
// recorded (taken as "daemonized" from it): HANDOFF_TIMEOUT on every deploy.
test('nginx binary upgrade after an agent restart: a new master its PID file names before any scan has seen it is of the generation the reload signal opened, never of a dead main the previous agent recorded', async (t) => {
  const { root, app } = await setup(t);
  const { pidFile, start } = await nginxDaemon(t, root, app);
  const pidIn = async (what: string, not: number): Promise<number> => waitFor(what, async () => {
    const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
    return Number.isSafeInteger(pid) && pid > 1 && pid !== not && (await readProc(pid)) !== undefined ? pid : undefined;
  });
  const first = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile });
  const from = ticksNow();
  const started = start();
  await first.launched(started.pid, true, from);
  await started.exited;
  first.exited(started.pid, true);
  const m1 = await pidIn('the first master', 0);
  assert.equal((await first.discover()).main?.pid, m1);
  const m1Info = await mustRead(m1);

  // A binary upgrade; the agent is killed right after its signal.
  const gen2 = first.open(identity(m1Info));
  const atKill = first.record();
  assert.equal(sendSignal(m1, 'SIGUSR2'), true);
  const m2 = await pidIn('the second master', m1);

  // The next agent (its process table can be held back, below): the new
  // master found in the opened generation, promoted; the old master stopped.
  let frozen: Awaited<ReturnType<typeof procTable>> | undefined;
  const next = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, pidFile, list: async () => frozen ?? procTable() });
  next.restore(atKill);
  const recovered = await next.discover();
  assert.equal(recovered.all.find((p) => p.pid === m2)?.gen, gen2, JSON.stringify(recovered.all));
  next.promote(gen2, (await next.verify(identity(await mustRead(m2))))!);
  next.settle();
  assert.equal(sendSignal(m1, 'SIGQUIT'), true);
  await waitFor(`the old master ${m1} to exit`, async () => (await readProc(m1)) === undefined);
  await next.discover();

  // The next upgrade, looked at with a process table taken before it (a
  // table is reused for a moment): only the PID file names the new master.
  frozen = await procTable();
  const gen3 = next.open(identity(await mustRead(m2)));
  assert.equal(sendSignal(m2, 'SIGUSR2'), true);
  const m3 = await pidIn('the third master', m2);
  const early = await next.discover();
  const filed = early.all.find((p) => p.pid === m3)?.gen;
  assert.ok(filed === undefined || filed === gen3, `the new master is in no generation but the one opened (${gen3}): found in ${filed}`);
  frozen = undefined;
  const seen = await next.discover();
  assert.equal(seen.all.find((p) => p.pid === m3)?.gen, gen3, JSON.stringify(seen.all));
});

test('a process the agent spawned is the app\'s while it is still root in its exec chain (prlimit, setpriv); one only recorded must run as the app\'s user', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('needs root: the chain starts as root');
    return;
  }
  const { app } = await setup(t);
  // What launch.ts spawns runs as root until setpriv has switched to the
  // app's user: a verify() in that window judged the start dead (and a
  // failed generation caught there was never stopped).
  const chain = spawnTracked(t, 'sleep', ['300']);
  const info = await waitFor('the spawned process', () => readProc(chain.pid));
  const finder = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, user: 'nobody' });
  const gen = await finder.launched(chain.pid);
  assert.equal((await finder.verify(info))?.gen, gen, 'the agent\'s own start, still root, is the app\'s');
  assert.equal(await finder.belongs(info), true);

  // The same root process known only from a record (a state file): not the app's, whose user is nobody.
  const recorded = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir, user: 'nobody' });
  recorded.restore({ members: [{ pid: info.pid, startTime: info.startTime, gen: 1 }], mains: [{ pid: info.pid, startTime: info.startTime, gen: 1 }], serving: 1, lastGen: 1 });
  assert.equal(await recorded.verify(info), undefined);
  assert.equal(await recorded.belongs(info), false);
});

test('a generation left with zombies alone has nothing running: the app started after them is found by its marker (the agent killed mid-rollback, the crash-safe test\'s seed 290600)', async (t) => {
  const { app } = await setup(t);
  // The serving generation's main and the failed release's both died and
  // were reaped by nobody (their parent gone, PID 1 not reaping at once):
  // here a child of a python3 that never waits. (A `sleep 0` whose shell
  // became `sleep 300` was reaped by the shell itself when it exited before
  // the exec, as it did once on a loaded host.)
  const shell = spawnTracked(t, 'python3', ['-c', 'import os, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint(pid, flush=True)\ntime.sleep(300)'], { stdout: 'pipe' });
  const zombie = await new Promise<number>((resolve) => {
    let out = '';
    shell.child.stdout!.setEncoding('utf8').on('data', (c: string) => {
      out += c;
      if (out.includes('\n')) resolve(Number(out.trim()));
    });
  });
  await waitFor(`pid ${zombie} to be a zombie`, async () => (await procState(zombie)) === 'Z');
  const dead = readStat(zombie)!;
  // The good release the previous agent started for the rollback, in a session of its own, never recorded.
  const started = spawnTracked(t, 'sleep', ['300'], { env: { ...process.env, ...markerEnv(app) } });
  await waitFor('the started app to run', () => readProc(started.pid));
  const finder = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir });
  finder.restore({ members: [{ pid: zombie, startTime: dead.startTime, gen: 2 }], mains: [{ pid: zombie, startTime: dead.startTime, gen: 2, sid: shell.pid, cmd: 'app.bin -c app.cfg' }], serving: 2, lastGen: 2 });
  const found = await finder.discover();
  assert.deepEqual(found.zombies, [{ pid: zombie, gen: 2 }], 'the zombie is reported');
  assert.equal(found.main?.pid, started.pid, 'what runs is the app\'s main: not "nothing runs" (a second copy was started, and failed on the port)');
});

test('sendSignal delivers to a live process and returns false for a dead one', async (t) => {
  const live = spawnTracked(t, 'sleep', ['300']);
  await waitFor('sleep to run', () => alive(live.pid));
  assert.equal(sendSignal(live.pid, 'SIGTERM'), true);
  assert.deepEqual(await live.exited, { code: null, signal: 'SIGTERM' });

  // Reaped by us: the pid names no process any more.
  assert.equal(sendSignal(live.pid, 'SIGTERM'), false);
});

test('a process found by its marker that started before the serving generation\'s main is not of that generation: a leftover of an older one, never judged as the new release (its main had exited at once)', async (t) => {
  const { app } = await setup(t);
  const env = { ...process.env, ...markerEnv(app) };
  const finder = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir });
  const first = spawnTracked(t, 'sleep', ['30'], { env });
  const gen1 = await finder.launched(first.pid, true, ticksNow());
  // An orphan of the old generation (a stopped shell's `sleep`): it carries the marker, no member is its parent.
  const leftover = spawnTracked(t, 'sleep', ['30'], { env });
  // The new main starts after it, by the clock of start times too (ticksNow
  // and the kernel's start time may round a loaded machine's tick apart).
  const leftoverStart = (await waitFor('the leftover to run', () => readProc(leftover.pid))).startTime;
  await waitFor('the next clock tick', async () => (ticksNow() > leftoverStart ? true : undefined));
  const from = ticksNow();
  const failed = spawnTracked(t, 'true', [], { env });
  const gen2 = await finder.launched(failed.pid, true, from);
  assert.ok(gen2 > gen1);
  await failed.exited;
  finder.exited(failed.pid, true);
  const found = await finder.discover();
  const seen = found.all.find((p) => p.pid === leftover.pid);
  assert.ok(seen !== undefined, 'control: the leftover is found by its marker');
  assert.equal(seen.gen, gen1, 'it joins the older generation, not the one whose main it predates');
  assert.notEqual(found.main?.pid, leftover.pid, 'never the new generation\'s main');
});

test('startedAtMs: a process\'s start as a date, to the clock tick (10 ms), not up to a second early', async (t) => {
  // Found by the helper trial: status's "started" times were ~0.4 s early
  // (the boot time was /proc/stat's btime, whole seconds).
  for (let i = 0; i < 5; i++) {
    const before = Date.now();
    const child = spawn('sleep', ['5'], { stdio: 'ignore' });
    t.after(() => child.kill('SIGKILL'));
    const after = Date.now();
    const info = await waitFor('the child in /proc', () => readProc(child.pid!));
    const at = startedAtMs(info);
    assert.ok(at >= before - 20 && at <= after + 20, `started at ${at}, spawned between ${before} and ${after}`);
    child.kill('SIGKILL');
  }
});

test('portListener: the process listening on a TCP port, IPv4 or IPv6, other than the agent itself and those excepted; undefined on a free port', async (t) => {
  const port = await freePort();
  assert.equal(portListener(port), undefined, 'a free port');
  // A listener of our own: the agent's held sockets are never "someone else".
  const own = net.createServer();
  await new Promise<void>((resolve) => own.listen(port, '127.0.0.1', resolve));
  t.after(() => { if (own.listening) own.close(); });
  assert.equal(portListener(port), undefined, 'the agent\'s own listener');
  await new Promise<void>((resolve) => own.close(() => resolve()));
  // Another process, on the IPv6 wildcard (which takes IPv4 too).
  const other = spawn('/usr/bin/python3', ['-c', `import socket,sys,time\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(("::", ${port}))\ns.listen()\nprint("up", flush=True)\ntime.sleep(60)`], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => other.kill('SIGKILL'));
  await new Promise<void>((resolve) => other.stdout!.once('data', () => resolve()));
  const found = portListener(port);
  assert.equal(found?.pid, other.pid);
  assert.equal(found?.exe, realpathSync('/usr/bin/python3'));
  assert.equal(describeListener(found), `pid ${other.pid} (${realpathSync('/usr/bin/python3')})`);
  assert.deepEqual(portListener(port, new Set([other.pid!])), {}, 'excepted: a listener whose holder is not named');
  assert.equal(describeListener({}), undefined);
  assert.equal(portListener(port === 65535 ? port - 1 : port + 1)?.pid === other.pid, false, 'another port');
});

test('descendantsOf: the tree below a process from the kernel\'s children lists, with each parent; undefined once the process is gone', async (t) => {
  // sh forks two sleeps, one of them a sh with a sleep of its own; it waits for them all.
  const top = spawn('/bin/sh', ['-c', 'sleep 60 & /bin/sh -c "sleep 60 & wait" & wait'], { stdio: 'ignore' });
  const seen = new Set<number>();
  t.after(() => {
    top.kill('SIGKILL');
    for (const pid of seen) sendSignal(pid, 'SIGKILL');
  });
  const tree = await waitFor('three processes below the shell', () => {
    const d = descendantsOf(top.pid!);
    for (const p of d ?? []) seen.add(p.pid);
    return d !== undefined && d.length === 3 ? d : undefined;
  });
  const direct = tree.filter((p) => p.ppid === top.pid);
  assert.equal(direct.length, 2, JSON.stringify(tree));
  const grandchild = tree.find((p) => p.ppid !== top.pid);
  assert.ok(grandchild !== undefined && direct.some((p) => p.pid === grandchild.ppid), 'the third is a child of one of the two');
  for (const p of tree) assert.equal(readStat(p.pid)?.ppid, p.ppid, `pid ${p.pid}: the parent /proc/PID/stat names`);
  assert.deepEqual(descendantsOf(grandchild.pid), [], 'a sleep has no children');
  const exited = new Promise((resolve) => top.once('exit', resolve));
  top.kill('SIGKILL');
  await exited;
  assert.equal(descendantsOf(top.pid!), undefined, 'gone');
});

/**
 * A python parent, known to a fresh finder as generation 1's main, whose
 * reload (SIGHUP, after the finder opened generation 2 on it) forks a child
 * that waits for SIGUSR1 before it execs `exec` (python list-literal argv):
 * the finder can be made to see the child between its fork and its exec, the
 * moment a loaded host makes long. The parent never reaps it. Resolves once
 * the child's PID is known, the child seen unexec'd in generation 1.
 */
async function forkingParent(t: TestContext, exec: string): Promise<{ finder: ProcessFinder; gen: number; child: number }> {
  const { app } = await setup(t);
  const script = [
    'import os, signal, sys, time',
    'signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])',
    'def reload(*_):',
    '    pid = os.fork()',
    '    if pid == 0:',
    '        signal.sigwait([signal.SIGUSR1])',
    `        os.execv(${exec})`,
    '    sys.stdout.write(f"{pid}\\n"); sys.stdout.flush()',
    'signal.signal(signal.SIGHUP, reload)',
    'sys.stdout.write("up\\n"); sys.stdout.flush()',
    'while True: time.sleep(60)',
  ].join('\n');
  const parent = spawnTracked(t, '/usr/bin/python3', ['-c', script], { stdout: 'pipe' });
  const lines: string[] = [];
  let out = '';
  parent.child.stdout!.setEncoding('utf8').on('data', (c: string) => {
    out += c;
    const parts = out.split('\n');
    out = parts.pop()!;
    lines.push(...parts);
  });
  await waitFor('the parent to be up', () => lines.includes('up'));
  const info = await mustRead(parent.pid);
  const finder = new ProcessFinder({ name: app.name, dir: app.dir, releasesDir: app.releasesDir });
  finder.restore({ members: [{ pid: info.pid, startTime: info.startTime, gen: 1 }], mains: [{ pid: info.pid, startTime: info.startTime, gen: 1 }], serving: 1, lastGen: 1 });
  const gen = finder.open(identity(info));
  assert.equal(gen, 2);
  assert.equal(sendSignal(parent.pid, 'SIGHUP'), true);
  const child = Number(await waitFor('the child\'s pid', () => lines.find((l) => /^\d+$/.test(l))));
  assert.equal((await finder.discover()).all.find((p) => p.pid === child)?.gen, 1, 'not exec\'d yet: counted in its parent\'s generation');
  return { finder, gen, child };
}

test('a successor seen before its exec that then dies unreaped is reported as a zombie of the generation the signal opened, not of its parent\'s', async (t) => {
  // facebookgo/grace's way: the successor exits at once and is never reaped.
  const { finder, gen, child } = await forkingParent(t, '"/bin/sh", ["sh", "-c", "exit 3"]');
  assert.equal(sendSignal(child, 'SIGUSR1'), true);
  await waitFor(`pid ${child} to be a zombie`, async () => (await procState(child)) === 'Z');
  const after = await finder.discover();
  assert.deepEqual(after.zombies, [{ pid: child, gen }], 'it exec\'d and died: the successor the signal asked for, failed');
  assert.deepEqual((await finder.discover()).zombies, [{ pid: child, gen }], 'and stays so on the next look');
});

test('a successor seen before its exec, whose new image then forks a worker: the worker is of the successor\'s new generation, not of the old one its parent was counted in', async (t) => {
  // nginx's binary upgrade: the old master forks, the child execs the new
  // binary and forks its worker. Seen between the fork and the exec, the
  // new master was counted in the old generation; its worker, found in the
  // scan that saw it exec'd, took that generation from it and kept it (every
  // probe the new worker answered was taken for the old generation's).
  const { finder, gen, child } = await forkingParent(t, '"/usr/bin/python3", ["python3", "-c", "import os, time\\nif os.fork() == 0:\\n    time.sleep(60)\\ntime.sleep(60)"]');
  assert.equal(sendSignal(child, 'SIGUSR1'), true);
  const worker = await waitFor('the new image\'s worker', () => descendantsOf(child)?.[0]?.pid);
  await waitFor(`pid ${worker} to run`, () => readProc(worker));
  const after = await finder.discover();
  assert.equal(after.all.find((p) => p.pid === child)?.gen, gen, 'exec\'d: the generation the signal opened');
  assert.equal(after.all.find((p) => p.pid === worker)?.gen, gen, 'its worker too');
});

test('ofApp: a process is the app\'s by its marker, or, when it overwrote the marker (nginx), by an executable in the app\'s releases folder; never another user\'s', async (t) => {
  const root = await realpath(await mkdtemp(path.join(os.tmpdir(), 'relink-ofapp-')));
  t.after(() => rm(root, { recursive: true, force: true }));
  const releasesDir = path.join(root, 'web', 'release');
  await mkdir(releasesDir, { recursive: true });
  await copyFile('/bin/sleep', path.join(releasesDir, 'app.1.0'));
  await chmod(path.join(releasesDir, 'app.1.0'), 0o755);
  const app = { name: 'web', dir: path.join(root, 'web'), releasesDir };
  const start = (exe: string, env: Record<string, string>): ChildProcess => {
    const child = spawn(exe, ['60'], { stdio: 'ignore', env });
    t.after(() => { child.kill('SIGKILL'); });
    return child;
  };
  const uid = process.getuid!();
  const unmarked = start(path.join(releasesDir, 'app.1.0'), {});
  const marked = start('/bin/sleep', markerEnv(app));
  const other = start(path.join(releasesDir, 'app.1.0'), markerEnv({ name: 'api', dir: path.join(root, 'api') }));
  const stranger = start('/bin/sleep', {});
  await waitFor('the processes to have exec\'d', async () => (await Promise.all([unmarked, marked, other, stranger].map((c) => readProc(c.pid!)))).every((p) => p !== undefined && !p.exe.endsWith('/node')) || undefined);
  assert.equal(await ofApp(unmarked.pid!, app, uid), true, 'a release binary, marker overwritten');
  assert.equal(await ofApp(marked.pid!, app, uid), true, 'marked for the app');
  assert.equal(await ofApp(other.pid!, app, uid), false, 'marked for another app: the marker decides');
  assert.equal(await ofApp(stranger.pid!, app, uid), false, 'neither');
  assert.equal(await ofApp(unmarked.pid!, app, uid + 1), false, 'not the app\'s user');
  assert.equal(await ofApp(unmarked.pid!, app, undefined), false, 'user unknown');
});
