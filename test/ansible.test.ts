/**
 * Issue 14: rolling deploys with the Ansible role (ansible/), run by the
 * real ansible-playbook against three inventory hosts on this machine
 * (local connection), each with its own app folder, agent config, agent
 * and port; relink is this checkout's (relink_command). A good release
 * rolls out to all, one host at a time; the same deploy again changes
 * nothing; the rollback play returns all to the previous release; a release
 * that fails on the second host stops the rollout there (the first host
 * reported, the second rolled back by its agent, the third untouched); a
 * named rollback puts the first back.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmod, copyFile, mkdir, readdir, readFile, readlink, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { loadConfig } from '../src/config.js';
import { freePort } from '../src/demo/layout.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { reapMarkedAfter, RELINK, relinkCli, ROOT, runProgram, startAgent, tmpDir } from './helpers.js';
import { configFor, FOLDERS_CONFIG, makeApp, PLAIN, servedBy, setCurrent, type App } from './plainapps.js';

const PLAYBOOKS = path.join(ROOT, 'ansible');
const APP = 'web';
/** In release 3.0's config: /healthz answers 503 where the agent gives the app this variable (host 2 only). */
const SICK = 'RELINK_TEST_SICK';

interface Host {
  readonly name: string;
  readonly root: string;
  readonly app: App;
  readonly config: string;
}

interface Report {
  host: string;
  app: string;
  action: string;
  release: string;
  before: string | null;
  after: string | null;
  verdict: string;
  reason: string;
}

interface Run {
  readonly code: number | null;
  readonly output: string;
  /** PLAY RECAP per host: ok, changed, unreachable, failed, skipped, rescued, ignored. */
  readonly recap: Record<string, Record<string, number>>;
  /** What the role reported per host, as printed; a host the rollout never reached has none. */
  readonly reports: Record<string, Report>;
}

/**
 * A temp folder for a test, and ansible-playbook's environment, its state
 * kept in that folder; undefined when ansible-playbook is not installed and
 * the test is skipped (under CI, which must not skip, a failure).
 */
async function ansibleSetup(t: TestContext, prefix: string): Promise<{ root: string; env: NodeJS.ProcessEnv } | undefined> {
  const r = await runProgram('ansible-playbook', ['--version']).catch((err: Error) => ({ code: -1, stdout: '', stderr: err.message }));
  if (r.code !== 0) {
    const missing = `ansible-playbook is not installed (apt-get install ansible-core): ${r.stderr.trim()}`;
    if (process.env.CI) assert.fail(missing);
    t.skip(missing);
    return undefined;
  }
  const root = await tmpDir(t, prefix);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ANSIBLE_HOME: path.join(root, 'ansible'),
    ANSIBLE_LOCAL_TEMP: path.join(root, 'ansible', 'tmp'),
    ANSIBLE_REMOTE_TEMP: path.join(root, 'ansible', 'remote'),
    ANSIBLE_HOST_KEY_CHECKING: 'False',
    ANSIBLE_RETRY_FILES_ENABLED: 'False',
    ANSIBLE_PIPELINING: 'True',
    ANSIBLE_FORKS: '5',
    ANSIBLE_NOCOLOR: '1',
    ANSIBLE_GATHERING: 'explicit',
  };
  return { root, env };
}

function parseRecap(output: string): Record<string, Record<string, number>> {
  const recap: Record<string, Record<string, number>> = {};
  const at = output.lastIndexOf('PLAY RECAP');
  if (at < 0) return recap;
  for (const line of output.slice(at).split('\n').slice(1)) {
    const m = /^(\S+)\s+:\s+(.*)$/.exec(line.trim());
    if (m === null) continue;
    recap[m[1]!] = Object.fromEntries([...m[2]!.matchAll(/(\w+)=(\d+)/g)].map((x) => [x[1]!, Number(x[2])]));
  }
  return recap;
}

/** The role's report task prints each host's relink_report as JSON: `ok: [h1] => {\n    "relink_report": {...}\n}`. */
function printedReports(output: string): Record<string, Report> {
  const reports: Record<string, Report> = {};
  for (const m of output.matchAll(/^ok: \[([^\]]+)\] => (\{\n {4}"relink_report": [\s\S]*?\n\})$/gm)) {
    reports[m[1]!] = (JSON.parse(m[2]!) as { relink_report: Report }).relink_report;
  }
  return reports;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

async function statusOf(h: Host): Promise<{ release: string | null; state: string }> {
  const r = await relinkCli(['status', '--config', h.config, '--app', APP, '--json']);
  return (JSON.parse(r.stdout) as { apps: Array<{ release: string | null; state: string }> }).apps[0]!;
}

async function journal(h: Host): Promise<HistoryEntry[]> {
  return readHistory(path.join(h.root, 'state'), APP);
}

test('ansible/: rolling deploy, idempotence, rollback and a rollout stopped at the first unhealthy host, on three hosts', async (t: TestContext) => {
  const setup = await ansibleSetup(t, 'relink-ansible-');
  if (setup === undefined) return;
  const { root, env } = setup;

  // The release files on the control node, named as releaseNames says (the default: app.R, cfg.R).
  const files = path.join(root, 'files');
  await mkdir(files);
  const cfgText: Record<string, string> = { '1.0': 'message=web 1.0\n', '2.0': 'message=web 2.0\n', '3.0': `message=web 3.0\nunhealthy_env=${SICK}\n`, '4.0': 'message=web 4.0\n' };
  for (const [r, text] of Object.entries(cfgText)) {
    await copyFile(PLAIN, path.join(files, `app.${r}`));
    await chmod(path.join(files, `app.${r}`), 0o700);
    await writeFile(path.join(files, `cfg.${r}`), text);
  }

  // Three hosts, each its own app folder (empty: the role uploads), port (a socket its agent holds) and agent.
  const hosts: Host[] = [];
  for (const name of ['h1', 'h2', 'h3']) {
    const hostRoot = path.join(root, name);
    // Release 1.0 is there already and deployed below, by hand (as before the fleet used Ansible).
    const app = await makeApp(hostRoot, APP, PLAIN, { '1.0': '' });
    reapMarkedAfter(t, app.dir);
    // Supervision's /proc check at its default (1 s), not the 100 ms the strategy tests use: three agents share the cores with Ansible.
    const config = await configFor(hostRoot, app, { sockets: [`127.0.0.1:${app.port}`], env: name === 'h2' ? { [SICK]: '1' } : {}, supervise: { checkMs: 1_000 } });
    const agent = startAgent(t, config);
    await agent.waitForLog(`${name}'s agent to start`, (l) => l.msg === 'agent started');
    hosts.push({ name, root: hostRoot, app, config });
  }
  const [h1, h2, h3] = hosts as [Host, Host, Host];
  await Promise.all(hosts.map(async (h) => {
    const r = await relinkCli(['deploy', '--config', h.config, '--app', APP, '1.0', '--wait']);
    assert.equal(r.code, 0, r.stderr);
  }));

  const inventory = path.join(root, 'inventory.json');
  await writeFile(inventory, JSON.stringify({
    all: {
      children: { web: { hosts: Object.fromEntries(hosts.map((h) => [h.name, { relink_config: h.config }])) } },
      vars: {
        ansible_connection: 'local',
        ansible_python_interpreter: '/usr/bin/python3',
        // This checkout's relink, run from any folder.
        relink_command: RELINK.join(' '),
      },
    },
  }));
  const playbook = async (file: string, args: readonly string[], inv = inventory): Promise<Run> => {
    const r = await runProgram('ansible-playbook', ['-i', inv, path.join(PLAYBOOKS, file), ...args], { cwd: root, env, timeoutMs: 300_000 });
    return { code: r.code, output: r.stdout + r.stderr, recap: parseRecap(r.stdout), reports: printedReports(r.stdout) };
  };
  const deployArgs = (release: string, dir = files): string[] => ['-e', `relink_app=${APP}`, '-e', `relink_release=${release}`, '-e', `relink_files_dir=${dir}`];
  const deploy = (release: string, ...more: string[]): Promise<Run> => playbook('deploy.yml', [...deployArgs(release), ...more]);
  /** An inventory of these hosts, in this order, with the same group vars. */
  const inventoryOf = async (name: string, hostVars: Record<string, Record<string, unknown>>): Promise<string> => {
    const file = path.join(root, `inventory-${name}.json`);
    const all = JSON.parse(await readFile(inventory, 'utf8')) as { all: { vars: unknown } };
    await writeFile(file, JSON.stringify({ all: { children: { web: { hosts: hostVars } }, vars: all.all.vars } }));
    return file;
  };
  // The interface as scripts use it, with the files' folder relative to where ansible-playbook runs.
  const deployFromHere = (release: string): Promise<Run> => playbook('deploy.yml', deployArgs(release, path.relative(root, files)));
  const rollback = (...more: string[]): Promise<Run> => playbook('rollback.yml', ['-e', `relink_app=${APP}`, ...more]);
  const verdicts = (run: Run): Record<string, [string | null, string | null, string]> =>
    Object.fromEntries(Object.entries(run.reports).map(([h, r]) => [h, [r.before, r.after, r.verdict]]));

  await t.test('every playbook passes --syntax-check', async () => {
    const r = await runProgram('ansible-playbook', ['-i', inventory, '--syntax-check', ...['deploy.yml', 'rollback.yml', 'install.yml'].map((f) => path.join(PLAYBOOKS, f))],
      { cwd: root, env });
    assert.equal(r.code, 0, r.stdout + r.stderr);
  });

  await t.test('relink_serial that Ansible would read as every host at once (0, [0], []) or crash on ("abc") is refused on the control node, no host touched', async () => {
    for (const bad of ['"abc"', '0', '[0]', '[]']) {
      const run = await deploy('2.0', '-e', `{"relink_serial": ${bad}}`);
      assert.notEqual(run.code, 0, run.output);
      assert.match(run.output, new RegExp(`relink_serial must be a batch size .*; found ${bad.replace(/[[\]]/g, '\\$&').replace(/"/g, '\\\\"')}`), run.output);
      assert.deepEqual(run.reports, {}, 'no host reported: none was touched');
    }
    for (const h of hosts) assert.equal((await servedBy(h.app.port, 'app.1.0')).release, 'app.1.0');
  });

  await t.test('a good release rolls out to every host, one host at a time, with the control node\'s hashes in current.conf', async () => {
    const run = await deployFromHere('2.0');
    assert.equal(run.code, 0, run.output);
    assert.deepEqual(verdicts(run), { h1: ['1.0', '2.0', 'deployed'], h2: ['1.0', '2.0', 'deployed'], h3: ['1.0', '2.0', 'deployed'] }, run.output);
    for (const h of hosts) {
      assert.equal((await servedBy(h.app.port, 'app.2.0')).release, 'app.2.0');
      // The modes the role gives (relink_bin_mode, relink_cfg_mode), whatever the control node's files have.
      assert.deepEqual([(await stat(path.join(h.app.releasesDir, 'app.2.0'))).mode & 0o777, (await stat(path.join(h.app.releasesDir, 'cfg.2.0'))).mode & 0o777], [0o755, 0o644]);
      assert.deepEqual(JSON.parse(await readFile(path.join(h.app.releasesDir, 'current.conf'), 'utf8')), {
        'bin.file': 'app.2.0', 'cfg.file': 'cfg.2.0', 'bin.sha256': sha256(await readFile(PLAIN, 'utf8')), 'cfg.sha256': sha256(cfgText['2.0']!),
      });
    }
    // serial [1, "25%"] on three hosts: batches of one; each host's deploy began after the one before had its verdict.
    const spans = await Promise.all(hosts.map(async (h) => {
      const e = (await journal(h)).at(-1)!;
      return { start: Date.parse(e.time) - e.durationMs, end: Date.parse(e.time) };
    }));
    assert.ok(spans[0]!.end <= spans[1]!.start && spans[1]!.end <= spans[2]!.start, `one at a time: ${JSON.stringify(spans)}`);
  });

  await t.test('the same deploy again changes nothing', async () => {
    const before = await Promise.all(hosts.map(journal));
    const run = await deploy('2.0');
    assert.equal(run.code, 0, run.output);
    for (const h of hosts) assert.equal(run.recap[h.name]?.changed, 0, `${h.name}: ${JSON.stringify(run.recap[h.name])}\n${run.output}`);
    assert.deepEqual(verdicts(run), { h1: ['2.0', '2.0', 'unchanged'], h2: ['2.0', '2.0', 'unchanged'], h3: ['2.0', '2.0', 'unchanged'] });
    assert.deepEqual(await Promise.all(hosts.map(journal)), before, 'no journal entry: the agents were asked for nothing');
  });

  await t.test('a file that does not match the hash relink deploy is given is refused, current.conf untouched', async () => {
    const current = await readFile(path.join(h1.app.releasesDir, 'current.conf'), 'utf8');
    const r = await relinkCli(['deploy', '--config', h1.config, '--app', APP, '1.0', '--bin-sha256', '0'.repeat(64), '--cfg-sha256', sha256(cfgText['1.0']!)]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /bin\.sha256.*an upload may be unfinished/);
    assert.equal(await readFile(path.join(h1.app.releasesDir, 'current.conf'), 'utf8'), current);
  });

  await t.test('the rollback play returns every host to its previous release', async () => {
    const run = await rollback();
    assert.equal(run.code, 0, run.output);
    assert.deepEqual(verdicts(run), { h1: ['2.0', '1.0', 'deployed'], h2: ['2.0', '1.0', 'deployed'], h3: ['2.0', '1.0', 'deployed'] }, run.output);
    for (const h of hosts) await servedBy(h.app.port, 'app.1.0');
  });

  await t.test('a release that fails on the second host stops the rollout there: the first reported, the second rolled back by its agent, the third untouched', async () => {
    const third = await journal(h3);
    // Batches of two, then one: host 2 fails beside host 1, which deploys.
    // Ansible ends the rollout when a batch's failed hosts exceed
    // max_fail_percentage (50% > 0); with the default batches of one, a
    // batch whose every host failed ends it anyway.
    // Not made beforehand: the role makes it on the control node before any host is touched.
    const reportDir = path.join(root, 'reports', 'run-1');
    const run = await deploy('3.0', '-e', '{"relink_serial": [2, 1]}', '-e', `relink_report_dir=${reportDir}`);
    assert.notEqual(run.code, 0, run.output);
    assert.deepEqual(verdicts(run), { h1: ['1.0', '3.0', 'deployed'], h2: ['1.0', '1.0', 'rolled_back'] }, run.output);
    // For scripts, the same reports as files on the control node.
    assert.deepEqual((await readdir(reportDir)).sort(), ['h1.json', 'h2.json']);
    for (const h of ['h1', 'h2']) assert.deepEqual(JSON.parse(await readFile(path.join(reportDir, `${h}.json`), 'utf8')), run.reports[h]);
    assert.match(run.reports.h2!.reason, /rolled back/);
    assert.match(run.output, /web on h2: rolled_back/);
    assert.equal(run.recap.h1?.failed, 0);
    assert.equal(run.recap.h2?.failed, 1);
    assert.equal(run.recap.h3, undefined, `h3 is not in the recap: the rollout never reached it\n${run.output}`);

    await servedBy(h1.app.port, 'app.3.0');
    const back = (await journal(h2)).at(-1)!;
    assert.equal(back.outcome, 'rolled_back', back.reason ?? '');
    assert.match(back.reason ?? '', /health/);
    await servedBy(h2.app.port, 'app.1.0');
    assert.deepEqual(await journal(h3), third, 'the third host\'s agent was asked for nothing');
    assert.equal((await statusOf(h3)).release, '1.0');
    assert.deepEqual((await readdir(h3.app.releasesDir)).filter((n) => n.endsWith('3.0')), [], 'nothing of 3.0 was uploaded to the third host');
  });

  await t.test('a candidate relink validate refuses stops the rollout on the first host, before anything is switched', async () => {
    const first = await journal(h1);
    // Uploaded without its executable bit: the agent's checks refuse the binary.
    const run = await deploy('4.0', '-e', 'relink_bin_mode=0644');
    assert.notEqual(run.code, 0, run.output);
    assert.deepEqual(verdicts(run), { h1: ['3.0', '3.0', 'refused'] }, run.output);
    assert.match(run.reports.h1!.reason, /relink validate.*"bin.file": must be executable.*app\.4\.0 has mode 0644/);
    assert.deepEqual(await journal(h1), first, 'the agent was asked for nothing');
    assert.deepEqual([run.recap.h2, run.recap.h3], [undefined, undefined], run.output);
    await servedBy(h1.app.port, 'app.3.0');
  });

  await t.test('a rollback to a named release, on the first host only (--limit), puts it back beside the others', async () => {
    const run = await rollback('-e', 'relink_release=1.0', '--limit', 'h1');
    assert.equal(run.code, 0, run.output);
    assert.deepEqual(verdicts(run), { h1: ['3.0', '1.0', 'deployed'] }, run.output);
    for (const h of hosts) assert.equal((await statusOf(h)).release, '1.0');
  });

  await t.test('a host unreachable beside a healthy one stops the rollout at the end of their batch, deploy and rollback alike: the next batch untouched', async () => {
    // ssh to a port nothing listens on: refused at once, so Ansible marks the host unreachable at its first task.
    const closed = await freePort();
    const inv = await inventoryOf('unreachable', {
      h1: { relink_config: h1.config },
      down: { ansible_connection: 'ssh', ansible_host: '127.0.0.1', ansible_port: closed, relink_config: h2.config },
      h3: { relink_config: h3.config },
    });
    const third = await journal(h3);
    // deploy.yml takes h1 to 2.0, rollback.yml back to 1.0: each stops after the batch of h1 and down.
    for (const [file, args, from, to] of [
      ['deploy.yml', deployArgs('2.0'), '1.0', '2.0'],
      ['rollback.yml', ['-e', `relink_app=${APP}`, '-e', 'relink_release=1.0'], '2.0', '1.0'],
    ] as const) {
      const run = await playbook(file, [...args, '-e', '{"relink_serial": [2, 1]}'], inv);
      assert.notEqual(run.code, 0, run.output);
      assert.deepEqual(verdicts(run), { h1: [from, to, 'deployed'] }, run.output);
      assert.equal(run.recap.down?.unreachable, 1, run.output);
      assert.match(run.output, /unreachable in this batch: down; the rollout stops here/);
      assert.equal(run.recap.h3, undefined, `${file}: h3 is not in the recap: the rollout never reached it\n${run.output}`);
      await servedBy(h1.app.port, `app.${to}`);
    }
    assert.deepEqual(await journal(h3), third, 'the third host\'s agent was asked for nothing');
  });

  await t.test('a host whose relink_config is wrong is reported with relink\'s reason, and so is the healthy host of its batch; the next batch untouched', async () => {
    const nowhere = path.join(root, 'nowhere', 'config.json');
    const inv = await inventoryOf('wrong-config', { h1: { relink_config: h1.config }, h2: { relink_config: nowhere }, h3: { relink_config: h3.config } });
    const [second, third] = [await journal(h2), await journal(h3)];
    const run = await playbook('deploy.yml', [...deployArgs('2.0'), '-e', '{"relink_serial": [2, 1]}'], inv);
    assert.notEqual(run.code, 0, run.output);
    assert.deepEqual(verdicts(run), { h1: ['1.0', '2.0', 'deployed'], h2: [null, null, 'error'] }, run.output);
    assert.match(run.reports.h2!.reason, /^Ask relink where web's releases go, whose they are, and what runs: relink status: 1 problem:\s+\S*nowhere\/config\.json: must be a readable regular file/);
    assert.deepEqual([run.recap.h1?.failed, run.recap.h2?.failed, run.recap.h3], [0, 1, undefined], run.output);
    await servedBy(h1.app.port, 'app.2.0');
    assert.deepEqual([await journal(h2), await journal(h3)], [second, third], 'the agents of h2 and h3 were asked for nothing');
  });

  await t.test('issue 15: a release folder (releaseNames "{release}/app", links.dir "current") is uploaded whole, its assets included, and goes live', async () => {
    const hostRoot = path.join(root, 'h4');
    const app = await makeApp(hostRoot, APP, PLAIN, { '1.0': '' }, { folders: true });
    reapMarkedAfter(t, app.dir);
    await setCurrent(app, '1.0');
    const config = await configFor(hostRoot, app, { ...FOLDERS_CONFIG, sockets: [`127.0.0.1:${app.port}`], supervise: { checkMs: 1_000 } });
    startAgent(t, config);
    const h4: Host = { name: 'h4', root: hostRoot, app, config };
    await servedBy(app.port, 'app');
    // On the control node: release 2.0's folder, with a template the app does not name in current.conf.
    const folders = path.join(root, 'folders');
    await mkdir(path.join(folders, '2.0', 'templates'), { recursive: true });
    await copyFile(PLAIN, path.join(folders, '2.0', 'app'));
    await chmod(path.join(folders, '2.0', 'app'), 0o700);
    await writeFile(path.join(folders, '2.0', 'app.cfg'), `port=${app.port}\nmessage=web 2.0\n`);
    await writeFile(path.join(folders, '2.0', 'static.txt'), 'static 2.0\n', { mode: 0o664 });
    await writeFile(path.join(folders, '2.0', 'templates', 'page.html'), '<p>2.0</p>\n');
    const inv = await inventoryOf('h4', { h4: { relink_config: config } });
    // What an upload that stopped half-way left: the role starts it afresh, under that dot name, and renames it into place once complete.
    await mkdir(path.join(app.releasesDir, '.2.0.part'));
    await writeFile(path.join(app.releasesDir, '.2.0.part', 'stale.txt'), 'from an upload that stopped\n');
    const run = await playbook('deploy.yml', deployArgs('2.0', folders), inv);
    assert.equal(run.code, 0, run.output);
    assert.deepEqual(verdicts(run), { h4: ['1.0', '2.0', 'deployed'] }, run.output);
    const live = path.join(app.releasesDir, '2.0');
    assert.equal(await readlink(path.join(app.dir, 'current')), live);
    assert.deepEqual((await readdir(live)).sort(), ['app', 'app.cfg', 'static.txt', 'templates']);
    assert.deepEqual((await readdir(app.releasesDir)).filter((n) => n.startsWith('.')), [], 'no upload left under a dot name');
    assert.equal(await readFile(path.join(live, 'static.txt'), 'utf8'), 'static 2.0\n');
    assert.equal(await readFile(path.join(live, 'templates', 'page.html'), 'utf8'), '<p>2.0</p>\n');
    // Nothing in the folder writable by group or others (relink refuses such a release), the binary still executable.
    assert.equal((await stat(path.join(live, 'static.txt'))).mode & 0o777, 0o644);
    assert.equal((await stat(path.join(live, 'app'))).mode & 0o777, 0o755);
    assert.equal((await statusOf(h4)).release, '2.0');
    const again = await playbook('deploy.yml', deployArgs('2.0', folders), inv);
    assert.equal(again.code, 0, again.output);
    assert.equal(again.recap.h4?.changed, 0, again.output);
  });
});

test('ansible/install.yml into an image\'s root (relink_root): Node.js from a tarball, the unit, the config from its template, the app\'s folders; a second run changes nothing', async (t: TestContext) => {
  const setup = await ansibleSetup(t, 'relink-ansible-install-');
  if (setup === undefined) return;
  const { root, env } = setup;
  const image = path.join(root, 'image');
  await mkdir(image);
  // A stand-in for nodejs.org's tarball: its node answers --version as Node 20 does.
  const nodeDir = path.join(root, 'node-v20.19.0-linux-x64');
  await mkdir(path.join(nodeDir, 'bin'), { recursive: true });
  for (const bin of ['node', 'npm', 'npx']) {
    await writeFile(path.join(nodeDir, 'bin', bin), '#!/bin/sh\necho v20.19.0\n');
    await chmod(path.join(nodeDir, 'bin', bin), 0o755);
  }
  const tarball = `${nodeDir}.tar.xz`;
  const tar = await runProgram('tar', ['-cJf', tarball, '-C', root, path.basename(nodeDir)]);
  assert.equal(tar.code, 0, tar.stderr);
  const pkg = path.join(root, 'relink-0.1.0.tgz');
  await writeFile(pkg, 'a stand-in: npm install is left out (--skip-tags relink_npm), it needs the registry\n');
  const agentConfig = { stateDir: '/var/lib/relink', apps: [{ name: 'web', dir: '/srv/web', health: { url: 'http://127.0.0.1:8080/healthz' } }] };
  const vars = path.join(root, 'vars.json');
  await writeFile(vars, JSON.stringify({
    relink_root: image, relink_node_source: 'tarball', relink_node_tarball: tarball, relink_package: pkg, relink_agent_config: agentConfig,
  }));
  const inventory = path.join(root, 'inventory.ini');
  await writeFile(inventory, 'img ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n');
  const install = () => runProgram('ansible-playbook', ['-i', inventory, path.join(PLAYBOOKS, 'install.yml'), '--skip-tags', 'relink_npm', '-e', `@${vars}`], { cwd: root, env, timeoutMs: 300_000 });

  const first = await install();
  assert.equal(first.code, 0, first.stdout + first.stderr);
  assert.ok((parseRecap(first.stdout).img?.changed ?? 0) > 0, first.stdout);
  assert.equal(await readFile(path.join(image, 'etc/systemd/system/relink.service'), 'utf8'), await readFile(path.join(ROOT, 'systemd/relink.service'), 'utf8'));
  const written = path.join(image, 'etc/relink/config.json');
  assert.deepEqual(JSON.parse(await readFile(written, 'utf8')), agentConfig);
  // What relink makes of the rendered file: a valid config.
  assert.equal((await loadConfig(written)).apps[0]?.name, 'web');
  for (const dir of ['srv/web/release', 'var/cache/relink']) assert.ok((await stat(path.join(image, dir))).isDirectory(), dir);
  assert.equal(await readlink(path.join(image, 'usr/local/bin/node')), '/usr/local/lib/nodejs/node-v20.19.0-linux-x64/bin/node');

  const second = await install();
  assert.equal(second.code, 0, second.stdout + second.stderr);
  assert.equal(parseRecap(second.stdout).img?.changed, 0, second.stdout);
});
