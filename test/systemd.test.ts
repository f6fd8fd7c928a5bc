/**
 * The systemd unit (issue 4): systemd's own tools judge it, without a
 * running systemd. `systemd-analyze verify` exits 0 even for an unknown key
 * or a bad value, so its output must be empty; `systemd-analyze security
 * --offline` scores the hardening. Each check is also run on a broken copy
 * to prove it can fail. The end-to-end test under a booted systemd is
 * test/systemd-e2e/.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { STOP_BUDGET } from '../src/app.js';
import { missingSocketError } from '../src/listenfds.js';
import { promisify } from 'node:util';
import { ROOT, tmpDir } from './helpers.js';

const run = promisify(execFile);
const UNIT = path.join(ROOT, 'systemd', 'relink.service');
const SOCKET = path.join(ROOT, 'systemd', 'relink-web.socket');

/** Skip with the reason when systemd-analyze is missing; in CI it must be there (.ci/run installs it). */
function needAnalyze(t: TestContext): boolean {
  if (spawnSync('systemd-analyze', ['--version']).status === 0) return true;
  if (process.env['CI']) assert.fail('systemd-analyze is missing: .ci/run must install the systemd package');
  t.skip('systemd-analyze not installed (apt-get install systemd)');
  return false;
}

/** The unit under `name` in a fresh folder (verify reads the unit name from the file name). */
async function unitCopy(t: TestContext, edit: (text: string) => string = (s) => s, name = 'relink.service'): Promise<string> {
  const dir = await tmpDir(t, 'relink-unit-');
  const file = path.join(dir, name);
  await writeFile(file, edit(await readFile(UNIT, 'utf8')));
  return file;
}

async function verify(...files: string[]): Promise<{ code: number; output: string }> {
  const r = await run('systemd-analyze', ['verify', '--man=no', ...files]).then(
    (ok) => ({ code: 0, output: ok.stdout + ok.stderr }),
    (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, output: err.stdout + err.stderr }),
  );
  // verify loads every unit installed on the host to resolve dependencies,
  // and says so about the host's own broken ones (Debian's unicorn.service:
  // "Invalid environment assignment"): those lines are not about ours.
  const hosts = /^\/(?:usr\/)?lib\/systemd\/system\/|^\/etc\/systemd\/system\//;
  const output = r.output.split('\n').filter((l) => !hosts.test(l) || files.some((f) => l.startsWith(f))).join('\n');
  return { code: r.code, output };
}

test('systemd-analyze verify accepts the unit without a single warning', async (t) => {
  if (!needAnalyze(t)) return;
  const ok = await verify(await unitCopy(t));
  assert.deepEqual(ok, { code: 0, output: '' });
  // The same check on a typo: verify still exits 0, only its output tells.
  const bad = await verify(await unitCopy(t, (s) => s.replace('KillMode=process', 'KillMode=proces')));
  assert.match(bad.output, /kill mode/i);
});

interface Directive {
  readonly section: string;
  readonly key: string;
  readonly value: string;
  /** The line just above is a comment. */
  readonly commented: boolean;
}

function directives(text: string): Directive[] {
  const out: Directive[] = [];
  let section = '';
  let prev = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const m = /^\[(\w+)\]$/.exec(line);
    if (m) section = m[1]!;
    else if (/^\w+=/.test(line)) {
      const i = line.indexOf('=');
      out.push({ section, key: line.slice(0, i), value: line.slice(i + 1), commented: prev.startsWith('#') });
    }
    prev = line;
  }
  return out;
}

test('the unit runs the agent the way the issue asks, and says why on every line that is not obvious', async () => {
  const all = directives(await readFile(UNIT, 'utf8'));
  const get = (key: string, section = 'Service'): Directive => {
    const found = all.filter((d) => d.section === section && d.key === key);
    assert.equal(found.length, 1, `[${section}] ${key}= must be set exactly once`);
    return found[0]!;
  };
  assert.match(get('ExecStart').value, / relink agent --config \/etc\/relink\/config\.json$/);
  assert.equal(get('StateDirectory').value, 'relink');
  assert.equal(get('StandardOutput').value, 'journal');
  assert.equal(get('Restart').value, 'on-failure');
  assert.ok(Number(get('StartLimitBurst', 'Unit').value) > 0);
  // Stopping or restarting the agent must leave the apps running.
  assert.equal(get('KillMode').value, 'process');
  // A deploy interrupted by the stop is verified or rolled back before systemd's SIGKILL (issue 9, item 11).
  const stopS = Number(/^(\d+)s$/.exec(get('TimeoutStopSec').value)?.[1]);
  assert.ok(stopS * 1000 >= STOP_BUDGET.waitMs + 5_000, `TimeoutStopSec=${stopS}s leaves no margin over the stop budget (${STOP_BUDGET.waitMs} ms)`);
  assert.ok(STOP_BUDGET.verifyMs < STOP_BUDGET.rollbackMs && STOP_BUDGET.rollbackMs < STOP_BUDGET.waitMs);
  assert.ok(get('TimeoutStopSec').commented);
  assert.ok(Number(get('LimitNOFILE').value) >= 65_536, 'not the 1024 default the apps would inherit');
  assert.equal(get('NoNewPrivileges').value, 'yes');
  assert.equal(get('ProtectSystem').value, 'strict');
  assert.equal(get('ProtectHome').value, 'yes');
  assert.deepEqual(get('ReadWritePaths').value.split(/\s+/), ['/srv', '/tmp', '/var/tmp']);
  // A private /tmp is deleted when the unit stops, under the apps that outlive it.
  assert.equal(get('PrivateTmp').value, 'no');
  // The powers the agent needs for apps that run as their own users.
  const caps = get('CapabilityBoundingSet').value.split(/\s+/);
  for (const cap of ['CAP_SETUID', 'CAP_SETGID', 'CAP_SYS_RESOURCE', 'CAP_KILL', 'CAP_SYS_PTRACE', 'CAP_DAC_OVERRIDE']) assert.ok(caps.includes(cap), `${cap} missing`);
  assert.ok(!caps.includes('CAP_SYS_ADMIN'));
  // Node's JIT needs writable executable memory.
  assert.equal(all.find((d) => d.key === 'MemoryDenyWriteExecute'), undefined);
  for (const key of ['ExecStart', 'StateDirectory', 'KillMode', 'LimitNOFILE', 'CapabilityBoundingSet', 'NoNewPrivileges', 'ProtectSystem', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'RestrictAddressFamilies', 'SystemCallFilter']) {
    assert.ok(get(key).commented, `${key}= needs a comment saying why, on the line above`);
  }
});

/** "Overall exposure level for relink.service: 3.6 OK" -> 3.6 */
async function exposure(file: string): Promise<number> {
  const { stdout } = await run('systemd-analyze', ['security', '--offline=true', '--no-pager', file]).catch((err: { stdout: string }) => ({ stdout: err.stdout }));
  const m = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(stdout);
  assert.ok(m, `no exposure level in: ${stdout.slice(-300)}`);
  return Number(m[1]);
}

test('systemd-analyze security rates the hardening at most 4.0 (OK); the unit without it is far worse', async (t) => {
  if (!needAnalyze(t)) return;
  const hardened = await exposure(await unitCopy(t));
  assert.ok(hardened <= 4.0, `exposure ${hardened}`);
  const bare = await exposure(await unitCopy(t, (s) => s.slice(0, s.indexOf('# --- Hardening')) + '\n[Install]\nWantedBy=multi-user.target\n'));
  assert.ok(bare > 8, `exposure without hardening ${bare}`);
});

/** relink.service and a socket unit side by side in a fresh folder (verify finds the Service= it names there). */
async function socketPair(t: TestContext, socketText: string, name = 'relink-web.socket'): Promise<string> {
  const service = await unitCopy(t);
  const file = path.join(path.dirname(service), name);
  await writeFile(file, socketText);
  return file;
}

test('systemd-analyze verify accepts the example socket unit together with relink.service', async (t) => {
  if (!needAnalyze(t)) return;
  const text = await readFile(SOCKET, 'utf8');
  const file = await socketPair(t, text);
  assert.deepEqual(await verify(file, path.join(path.dirname(file), 'relink.service')), { code: 0, output: '' });
  // Service= must name a unit that exists: verify says so of a typo.
  const bad = await verify(await socketPair(t, text.replace('Service=relink.service', 'Service=relinkd.service')));
  assert.match(bad.output, /relinkd\.service not loaded/);
});

test('the socket unit passes one named socket to relink.service and says why on every line', async () => {
  const all = directives(await readFile(SOCKET, 'utf8'));
  const get = (key: string, section = 'Socket'): Directive => {
    const found = all.filter((d) => d.section === section && d.key === key);
    assert.equal(found.length, 1, `[${section}] ${key}= must be set exactly once`);
    return found[0]!;
  };
  assert.equal(get('ListenStream').value, '127.0.0.1:8080');
  // The agent finds the app's sockets by this name (LISTEN_FDNAMES): the app's name.
  assert.equal(get('FileDescriptorName').value, 'web');
  assert.equal(get('Service').value, 'relink.service');
  assert.equal(get('Accept').value, 'no');
  assert.ok(Number(get('Backlog').value) >= 4096);
  assert.equal(get('WantedBy', 'Install').value, 'sockets.target');
  for (const key of ['ListenStream', 'FileDescriptorName', 'Service', 'Accept', 'Backlog']) assert.ok(get(key).commented, `${key}= needs a comment saying why`);
  // systemd passes the fds of every socket unit whose Service= names relink.service; Sockets= is not needed there.
  assert.equal(directives(await readFile(UNIT, 'utf8')).find((d) => d.key === 'Sockets'), undefined);
});

test('relink.service keeps what passed sockets need: its network namespace and /proc/PID/net', async () => {
  const all = directives(await readFile(UNIT, 'utf8'));
  // The agent reads each passed fd's address in its own namespace's /proc/self/net: a private
  // network namespace would not list the sockets systemd made in the host's.
  for (const key of ['PrivateNetwork', 'NetworkNamespacePath', 'ProcSubset']) assert.equal(all.find((d) => d.key === key), undefined, `${key}=`);
});

test('the socket unit a missing-socket error asks for is one systemd-analyze verify accepts (TCP, IPv6 any, unix)', async (t) => {
  if (!needAnalyze(t)) return;
  for (const [app, address] of [['web', '127.0.0.1:8080'], ['api', '[::]:8081'], ['docs', 'unix:/run/docs/docs.sock']] as const) {
    const message = missingSocketError(app, address, '/etc/relink/config.json', { user: app, group: 'www-data' }).message;
    const lines = message.split('\n');
    const unit = lines.slice(1, lines.findIndex((l) => l.startsWith('then: '))).map((l) => l.trim()).join('\n') + '\n';
    const file = await socketPair(t, unit, `relink-${app}.socket`);
    assert.deepEqual(await verify(file, path.join(path.dirname(file), 'relink.service')), { code: 0, output: '' }, `${address}:\n${unit}`);
  }
});
