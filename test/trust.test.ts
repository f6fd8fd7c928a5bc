/**
 * Trust checks (issue 4), like sshd's StrictModes: a deploy is refused when
 * current.conf, the releases folder, a release file or any folder above
 * them could be written by a user other than root and the app's user. Real
 * files, real owners (users made with useradd), real modes.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { chmod, chown, mkdir, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { parseConfig, type AppConfig } from '../src/config.js';
import { loadCurrent, readCurrent, validateCurrent } from '../src/current.js';
import { get } from '../src/demo/demo.js';
import { makeApp, setCurrent, writeConfig } from '../src/demo/layout.js';
import { RelinkError, RelinkErrors } from '../src/errors.js';
import { readHistory } from '../src/history.js';
import { checkAgentProgram, checkFolderForRoot } from '../src/trust.js';
import { readerOf } from '../src/safefs.js';
import { resolveRunAs } from '../src/user.js';
import { needProgram, openUp, rootOnly, testGroup, testUser } from './accounts.js';
import { defer, MAIN, reapAppsAfter, RELINK, relinkCli, ROOT, startAgent, tmpDir, waitFor } from './helpers.js';

const run = promisify(execFile);

interface Layout {
  readonly root: string;
  readonly dir: string;
  readonly releases: string;
  readonly current: string;
  readonly bin: string;
  readonly cfg: string;
  app(extra?: Record<string, unknown>): AppConfig;
}

/** <root>/web/release/{app.1.0 (0755), cfg.1.0 (0644), current.conf naming them}, all root's (or the runner's). */
async function layout(t: TestContext): Promise<Layout> {
  const root = await tmpDir(t, 'relink-trust-');
  const dir = path.join(root, 'web');
  const releases = path.join(dir, 'release');
  await mkdir(releases, { recursive: true, mode: 0o755 });
  const bin = path.join(releases, 'app.1.0');
  const cfg = path.join(releases, 'cfg.1.0');
  await writeFile(bin, '#!/bin/sh\n');
  await chmod(bin, 0o755);
  await writeFile(cfg, 'port=1\n');
  await chmod(cfg, 0o644);
  const current = path.join(releases, 'current.conf');
  await writeFile(current, '{"bin.file": "app.1.0", "cfg.file": "cfg.1.0"}\n');
  await chmod(current, 0o644);
  await openUp(releases);
  const app = (extra: Record<string, unknown> = {}): AppConfig =>
    parseConfig(JSON.stringify({ apps: [{ name: 'web', dir, ...extra }] }), path.join(root, 'config.json')).apps[0]!;
  return { root, dir, releases, current, bin, cfg, app };
}

async function refusals(app: AppConfig): Promise<RelinkError[]> {
  const err = await loadCurrent(app).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof RelinkErrors, `expected a refusal, got ${String(err)}`);
  for (const p of err.problems) assert.equal(p.code, 'UNTRUSTED_PATH', p.message);
  return [...err.problems];
}

async function refusal(app: AppConfig): Promise<RelinkError> {
  const problems = await refusals(app);
  assert.equal(problems.length, 1, problems.map((p) => p.message).join('\n'));
  return problems[0]!;
}

const RULE_ROOT = "must be writable by nobody but root (like sshd's StrictModes)";

test('a layout only root can write is accepted (the control for every refusal below)', async (t) => {
  const l = await layout(t);
  const { release } = await loadCurrent(l.app());
  assert.deepEqual({ ...release }, { bin: l.bin, cfg: l.cfg });
});

test('a release binary owned by another user is refused, naming the file, the key, the owner and the mode', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const other = await testUser(t);
  await chown(l.bin, other.uid, other.gid);
  const p = await refusal(l.app());
  assert.equal(p.file, l.current);
  assert.equal(p.key, 'bin.file');
  assert.equal(p.rule, RULE_ROOT);
  assert.equal(p.found, `${l.bin} is owned by ${other.name} (uid ${other.uid}), mode 0755`);
  assert.equal(p.message, `${l.current}: "bin.file": ${RULE_ROOT} (found: ${l.bin} is owned by ${other.name} (uid ${other.uid}), mode 0755)`);
});

test('a world-writable release config is refused', async (t) => {
  const l = await layout(t);
  await chmod(l.cfg, 0o666);
  const p = await refusal(l.app());
  assert.equal(p.key, 'cfg.file');
  assert.equal(p.found, `${l.cfg} is writable by every user, mode 0666`);
});

test('group write is refused when the group has another member, accepted when it holds only root', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const group = await testGroup(t);
  const member = await testUser(t, [group]);
  await chmod(l.cfg, 0o664);
  // gid 0 here has no member but root: nobody else can write.
  await chown(l.cfg, 0, 0);
  await loadCurrent(l.app());
  await chown(l.cfg, 0, group.gid);
  const p = await refusal(l.app());
  assert.equal(p.key, 'cfg.file');
  assert.equal(p.found, `${l.cfg} is writable by group ${group.name} (${member.name}), mode 0664`);
});

test('current.conf owned by another user is refused (key-less: the file itself)', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const other = await testUser(t);
  await chown(l.current, other.uid, other.gid);
  const p = await refusal(l.app());
  assert.equal(p.key, undefined);
  assert.equal(p.found, `${l.current} is owned by ${other.name} (uid ${other.uid}), mode 0644`);
});

test('a symlinked current.conf is checked where it points', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const other = await testUser(t);
  const target = path.join(l.root, 'live.conf');
  await writeFile(target, '{"bin.file": "' + l.bin + '", "cfg.file": "' + l.cfg + '"}\n');
  await chmod(target, 0o644);
  await rm(l.current);
  await symlink(target, l.current);
  await loadCurrent(l.app());
  await chown(target, other.uid, other.gid);
  assert.equal((await refusal(l.app())).found, `${target} is owned by ${other.name} (uid ${other.uid}), mode 0644`);
});

test('a world-writable releases folder is refused, with or without the sticky bit', async (t) => {
  const l = await layout(t);
  await chmod(l.releases, 0o777);
  assert.equal((await refusal(l.app())).found, `${l.releases} is writable by every user, mode 0777`);
  await chmod(l.releases, 0o1777);
  assert.equal((await refusal(l.app())).found, `${l.releases} is writable by every user, mode 1777`);
});

test('a folder above: world-writable refused, unless sticky (like /tmp); owned by another user refused', async (t) => {
  const l = await layout(t);
  await chmod(l.dir, 0o777);
  const p = await refusal(l.app());
  assert.equal(p.key, undefined);
  assert.equal(p.found, `${l.dir} is writable by every user, mode 0777`);
  // Others may add entries but not rename or remove ours.
  await chmod(l.dir, 0o1777);
  await loadCurrent(l.app());
  await chmod(l.dir, 0o755);
  if (!rootOnly(t)) return;
  const other = await testUser(t);
  await chown(l.dir, other.uid, other.gid);
  assert.equal((await refusal(l.app())).found, `${l.dir} is owned by ${other.name} (uid ${other.uid}), mode 0755`);
});

test('with "user", the app\'s user may own everything; a third user may not, and the rule names the app\'s user', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const web = await testUser(t);
  const other = await testUser(t);
  for (const p of [l.dir, l.releases, l.bin, l.cfg, l.current]) await chown(p, web.uid, web.gid);
  const app = l.app({ user: web.name });
  await loadCurrent(app);
  // The same files are not trusted for an app that runs as root.
  assert.match((await refusals(l.app()))[0]!.found ?? '', new RegExp(`is owned by ${web.name}`));

  await chown(l.bin, other.uid, other.gid);
  const p = await refusal(app);
  assert.equal(p.rule, `must be writable by nobody but root or the app's user ${web.name} (uid ${web.uid}) (like sshd's StrictModes)`);
  assert.equal(p.found, `${l.bin} is owned by ${other.name} (uid ${other.uid}), mode 0755`);
});

test('every untrusted path is listed at once', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const other = await testUser(t);
  await chown(l.bin, other.uid, other.gid);
  await chmod(l.cfg, 0o646);
  const problems = await refusals(l.app());
  assert.deepEqual(problems.map((p) => p.key), ['bin.file', 'cfg.file']);
});

test('the agent refuses an untrusted release and keeps serving the old one; relink validate says why', async (t) => {
  if (!rootOnly(t)) return;
  const root = await tmpDir(t, 'relink-trust-agent-');
  reapAppsAfter(t, path.join(root, 'web', 'release'));
  const app = await makeApp({ root, releases: ['1.0', '2.0'] });
  const other = await testUser(t);
  await setCurrent(app, '1.0');
  const configFile = await writeConfig(root, [app], { reconcileMs: 60_000 });
  const stateDir = path.join(root, 'state');
  startAgent(t, configFile);
  const first = await waitFor('the first deploy', async () => (await readHistory(stateDir, 'web'))[0]);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');

  // An upload by another account: the agent must not run what it wrote.
  const bin2 = path.join(app.releasesDir, 'app.2.0');
  await chown(bin2, other.uid, other.gid);
  const v = await relinkCli(['validate', '--config', configFile]);
  assert.equal(v.code, 0, `current.conf naming 1.0 is still fine: ${v.stderr}`);
  await setCurrent(app, '2.0');
  const second = await waitFor('the refusal', async () => (await readHistory(stateDir, 'web'))[1]);
  assert.equal(second.outcome, 'refused');
  assert.equal(second.code, 'UNTRUSTED_PATH');
  assert.equal(second.reason, `${app.currentFile}: "bin.file": ${RULE_ROOT} (found: ${bin2} is owned by ${other.name} (uid ${other.uid}), mode 0755)`);
  assert.equal(await readlink(path.join(app.dir, 'app.bin')), path.join(app.releasesDir, 'app.1.0'));
  assert.equal((JSON.parse(await get(app.url)) as { release: string }).release, 'app.1.0');

  const cli = await relinkCli(['validate', '--config', configFile]);
  assert.equal(cli.code, 1);
  assert.equal(cli.stderr, `${second.reason} [UNTRUSTED_PATH]\n`);
});

test('the README\'s validate example as written: a candidate made with mktemp in /tmp (sticky, world-writable) is checked, not refused for its folder', async (t) => {
  const l = await layout(t);
  const configFile = path.join(l.root, 'config.json');
  await writeFile(configFile, JSON.stringify({ stateDir: path.join(l.root, 'state'), apps: [{ name: 'web', dir: l.dir, ...(rootOnlyAllowed()) }] }));
  // The README's lines, with this layout's paths and this checkout's relink.
  const script = `f=$(mktemp) && chmod 644 "$f" && echo "{\\"bin.file\\": \\"${l.bin}\\", \\"cfg.file\\": \\"${l.cfg}\\"}" > "$f" && ` +
    `relink validate --app web "$f"; rc=$?; rm -f "$f"; exit $rc`;
  const bin = path.join(l.root, 'bin');
  await mkdir(bin);
  await writeFile(path.join(bin, 'relink'), `#!/bin/sh\nexec ${process.execPath} --import tsx ${MAIN} "$@"\n`, { mode: 0o755 });
  const ok = await run('/bin/sh', ['-c', script], { cwd: ROOT, env: { ...process.env, PATH: `${bin}:${process.env['PATH'] ?? ''}`, RELINK_CONFIG: configFile, TMPDIR: '/tmp' } })
    .then((r) => ({ code: 0, ...r }), (e: { code: number; stdout: string; stderr: string }) => e);
  assert.equal(ok.stderr, '');
  assert.equal(ok.code, 0);
  assert.match(ok.stdout, /^\/tmp\/tmp\.\w+: OK for app web/);
  // The file itself is still checked strictly.
  const next = path.join('/tmp', `relink-next-${process.pid}-${Date.now()}.conf`);
  defer(t, () => rm(next, { force: true }));
  await writeFile(next, `{"bin.file": "${l.bin}", "cfg.file": "${l.cfg}"}\n`);
  await chmod(next, 0o666);
  const bad = await relinkCli(['validate', '--config', configFile, '--app', 'web', next]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, new RegExp(`${next.replaceAll('.', '\\.')} is writable by every user, mode 0666`));
});

// Found by a trial: a cfg.file only root could read passed relink validate
// (the agent, root, can read it), was deployed, and rolled back with the
// app's PermissionError in app.log only.
test('a release file the app\'s user cannot read or run, or reach through a folder, is refused naming that user, the file or folder, and its mode; an ACL granting it passes', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const web = await testUser(t);
  const app = l.app({ user: web.name });
  const reader = await readerOf(await resolveRunAs(app));
  const text = '{"bin.file": "app.1.0", "cfg.file": "cfg.1.0"}';
  const problems = async (): Promise<RelinkError[]> => validateCurrent(app, text, l.current, reader).then(() => [], (e: unknown) => {
    assert.ok(e instanceof RelinkErrors, String(e));
    return [...e.problems];
  });
  assert.deepEqual(await problems(), [], 'the control: root\'s files, 0755 and 0644');
  const who = `the app's user ${web.name} (uid ${web.uid})`;

  await chmod(l.cfg, 0o600);
  const [cfg] = await problems();
  assert.equal(cfg?.code, 'RELEASE_UNREADABLE');
  assert.equal(cfg?.message, `${l.current}: "cfg.file": must be readable by ${who}, whose app reads it (found: ${l.cfg} is owned by root (uid 0), group root, mode 0600)`);
  // An ACL entry for the app's user grants what the mode bits do not.
  if (!(await setfacl(t, '-m', `u:${web.name}:r`, l.cfg))) return;
  assert.deepEqual(await problems(), []);

  // A #! script must be readable too: its interpreter reads it as the app's user.
  await chmod(l.bin, 0o711);
  const [bin] = await problems();
  assert.equal(bin?.code, 'RELEASE_NOT_EXECUTABLE');
  assert.equal(bin?.message, `${l.current}: "bin.file": must be executable by ${who}, who runs it; a #! script must also be readable by that user, and its interpreter /bin/sh executable by it (found: ${l.bin} is owned by root (uid 0), group root, mode 0711)`);
  await chmod(l.bin, 0o755);

  // What the mode bits allow and an ACL denies, the kernel refuses: asked as the app's user.
  await run('/usr/bin/setfacl', ['-m', `u:${web.name}:---`, l.bin]);
  const [acl] = await problems();
  assert.equal(acl?.code, 'RELEASE_NOT_EXECUTABLE');
  // Named with its owner, group, mode and the ACL's entries (a trial found
  // "an ACL denies it" alone, and a folder's ACL blamed on the file).
  assert.equal(acl?.found, `${l.bin} is owned by root (uid 0), group root, mode 0755, ACL user:${web.uid}:---, mask::r-x; the user may not read it, though the mode bits allow it: an ACL denies it (getfacl ${l.bin})`);
  await run('/usr/bin/setfacl', ['-b', l.bin]);
  await run('/usr/bin/setfacl', ['-m', `u:${web.name}:---`, l.releases]);
  const [folderAcl, cfgToo] = await problems();
  assert.deepEqual([folderAcl?.key, cfgToo?.key], ['bin.file', 'cfg.file']);
  assert.equal(folderAcl?.found, `the folder ${l.releases} is owned by root (uid 0), group root, mode 0755, ACL user:${web.uid}:---, mask::r-x; the user may not search it, so ${l.bin} is not readable by it, though the mode bits allow it: an ACL denies it (getfacl ${l.releases})`);
  await run('/usr/bin/setfacl', ['-b', l.releases]);
  // A #! interpreter the app's user may not run.
  const interp = path.join(l.root, 'interp');
  await writeFile(interp, '#!/bin/sh\nexec /bin/sh "$@"\n', { mode: 0o700 });
  await writeFile(l.bin, `#!${interp}\n`);
  const [noInterp] = await problems();
  assert.equal(noInterp?.code, 'RELEASE_NOT_EXECUTABLE');
  assert.equal(noInterp?.found, `${interp} is owned by root (uid 0), group root, mode 0700`);
  await chmod(interp, 0o755);
  assert.deepEqual(await problems(), [], 'once the interpreter may be run');
  await writeFile(l.bin, '#!/bin/sh\n');

  await chmod(l.releases, 0o700);
  const both = await problems();
  assert.deepEqual(both.map((p) => [p.key, p.found]), [['bin.file', `the folder ${l.releases} is owned by root (uid 0), group root, mode 0700`], ['cfg.file', `the folder ${l.releases} is owned by root (uid 0), group root, mode 0700`]]);
  await chmod(l.releases, 0o755);

  // relink validate says it, as the agent would (it reads current.conf as the app's user).
  await chmod(l.cfg, 0o600);
  await run('/usr/bin/setfacl', ['-b', l.cfg]);
  const configFile = path.join(l.root, 'config.json');
  await writeFile(configFile, JSON.stringify({ stateDir: path.join(l.root, 'state'), apps: [{ name: 'web', dir: l.dir, user: web.name }] }));
  const v = await relinkCli(['validate', '--config', configFile, '--app', 'web']);
  assert.equal(v.code, 1, v.stdout);
  assert.equal(v.stderr, `${cfg?.message ?? ''} [RELEASE_UNREADABLE]\n`);
});

// Found by a trial: a current.conf linked to a root file whose ACL denies
// the app's user (mode 0644) was read by the agent as root, and its content
// quoted in a refusal the journal keeps, which that user may read.
test('a current.conf the app\'s user may not read because of an ACL is refused unread, naming the file and the ACL', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const web = await testUser(t);
  const secret = path.join(l.root, 'secret.json');
  await writeFile(secret, '{"bin.file": "SECRET-TOKEN-123", "cfg.file": "hunter2"}', { mode: 0o644 });
  if (!(await setfacl(t, '-m', `u:${web.name}:---`, secret))) return;
  await rm(l.current);
  await symlink(secret, l.current);
  const err = await readCurrent(l.current, await readerOf(await resolveRunAs(l.app({ user: web.name })))).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof RelinkError, String(err));
  assert.equal(err.code, 'CURRENT_UNREADABLE');
  assert.equal(err.message, `${l.current}: must be readable by the app's user ${web.name} (uid ${web.uid}), for whom the agent reads it (found: ${secret} is owned by root (uid 0), group root, mode 0644, ACL user:${web.uid}:---, mask::r--; the user may not read it, though the mode bits allow it: an ACL denies it (getfacl ${secret} and the folders above))`);
  assert.doesNotMatch(err.message, /SECRET|hunter2/);
  // relink validate says the same for a candidate file, and quotes nothing.
  const configFile = path.join(l.root, 'config.json');
  await writeFile(configFile, JSON.stringify({ stateDir: path.join(l.root, 'state'), apps: [{ name: 'web', dir: l.dir, user: web.name }] }));
  const v = await relinkCli(['validate', '--config', configFile, '--app', 'web', secret]);
  assert.equal(v.code, 1, v.stdout);
  assert.match(v.stderr, /an ACL denies it.*\[CURRENT_UNREADABLE\]/);
  assert.doesNotMatch(v.stderr + v.stdout, /SECRET|hunter2/);
  // Granted by an ACL entry, it is read.
  await run('/usr/bin/setfacl', ['-m', `u:${web.name}:r`, secret]);
  assert.match((await readCurrent(l.current, await readerOf(await resolveRunAs(l.app({ user: web.name }))))).text, /SECRET/);
});

/** As root the config must say the app may run as root (the layout is root's). */
function rootOnlyAllowed(): Record<string, unknown> {
  return process.getuid?.() === 0 ? { allowRoot: true } : {};
}

/**
 * Issue 15: <root>/web/release/2.0/{app, app.cfg, static/style.css}, with
 * `links.dir` linking the release's folder (all of it is then exposed
 * through `current/`).
 */
async function folderLayout(t: TestContext): Promise<Layout & { readonly folder: string; readonly asset: string }> {
  const l = await layout(t);
  const folder = path.join(l.releases, '2.0');
  await mkdir(path.join(folder, 'static'), { recursive: true, mode: 0o755 });
  await chmod(folder, 0o755);
  await chmod(path.join(folder, 'static'), 0o755);
  const bin = path.join(folder, 'app');
  const cfg = path.join(folder, 'app.cfg');
  const asset = path.join(folder, 'static', 'style.css');
  await writeFile(bin, '#!/bin/sh\n');
  await chmod(bin, 0o755);
  for (const f of [cfg, asset]) {
    await writeFile(f, 'x\n');
    await chmod(f, 0o644);
  }
  await writeFile(l.current, '{"bin.file": "2.0/app", "cfg.file": "2.0/app.cfg"}\n');
  const folders = { releaseNames: { bin: '{release}/app', cfg: '{release}/app.cfg' }, links: { dir: 'current' } };
  return { ...l, bin, cfg, folder, asset, app: (extra = {}) => l.app({ ...folders, ...extra }) };
}

test('issue 15: a release folder only root can write is accepted with links.dir (the control for the refusals below)', async (t) => {
  const l = await folderLayout(t);
  const { release } = await loadCurrent(l.app());
  assert.deepEqual({ ...release }, { bin: l.bin, cfg: l.cfg });
});

test('issue 15: with links.dir a world-writable file anywhere in the release folder is refused in one line naming it; without links.dir it is not exposed', async (t) => {
  const l = await folderLayout(t);
  await chmod(l.asset, 0o666);
  const p = await refusal(l.app());
  assert.equal(p.key, undefined);
  assert.equal(p.found, `${l.asset} is writable by every user, mode 0666`);
  assert.equal(p.message, `${l.current}: ${RULE_ROOT} (found: ${l.asset} is writable by every user, mode 0666)`);
  // Only the links' files are exposed without the folder link.
  await loadCurrent(l.app({ links: {} }));
});

test('issue 15: a world-writable folder in a release folder is refused, sticky or not', async (t) => {
  const l = await folderLayout(t);
  await chmod(path.join(l.folder, 'static'), 0o1777);
  const p = await refusal(l.app());
  assert.equal(p.found, `${path.join(l.folder, 'static')} is writable by every user, mode 1777`);
});

test('issue 15: a file of another user in a release folder is refused', async (t) => {
  if (!rootOnly(t)) return;
  const l = await folderLayout(t);
  const other = await testUser(t);
  await chown(l.asset, other.uid, other.gid);
  const p = await refusal(l.app());
  assert.equal(p.found, `${l.asset} is owned by ${other.name} (uid ${other.uid}), mode 0644`);
});

test('issue 15: a symlink in a release folder leading out of the releases folder is RELEASE_OUTSIDE; one to a file inside is fine', async (t) => {
  const l = await folderLayout(t);
  await symlink('../app.cfg', path.join(l.folder, 'static', 'same.cfg'));
  await loadCurrent(l.app());
  const link = path.join(l.folder, 'static', 'passwd');
  await symlink('/etc/passwd', link);
  const err = await loadCurrent(l.app()).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof RelinkErrors, String(err));
  assert.equal(err.problems.length, 1, err.message);
  const p = err.problems[0]!;
  assert.equal(p.code, 'RELEASE_OUTSIDE');
  assert.equal(p.message, `${l.current}: must be inside the releases folder ${l.releases}, with everything "links.dir" exposes (found: ${link} -> /etc/passwd)`);
});

test('issue 15: a sticky world-writable release folder is refused even without links.dir (anybody could add files to the release; only folders above the releases folder may be sticky)', async (t) => {
  const l = await folderLayout(t);
  await chmod(l.folder, 0o1777);
  for (const app of [l.app(), l.app({ links: {} })]) {
    const p = await refusal(app);
    assert.equal(p.key, 'bin.file');
    assert.equal(p.found, `${l.folder} is writable by every user, mode 1777`);
  }
});

test('issue 15: what a symlink in a release folder leads to elsewhere in the releases folder (a shared/ folder) is checked too: a world-writable file there is refused; a link loop ends', async (t) => {
  const l = await folderLayout(t);
  const shared = path.join(l.releases, 'shared');
  await mkdir(path.join(shared, 'uploads'), { recursive: true, mode: 0o755 });
  await chmod(shared, 0o755);
  await chmod(path.join(shared, 'uploads'), 0o755);
  const upload = path.join(shared, 'uploads', 'logo.png');
  await writeFile(upload, 'x\n');
  await chmod(upload, 0o644);
  await symlink('../../shared', path.join(l.folder, 'static', 'shared'));
  // A loop back into the release folder and one to itself: walked once; a
  // dangling link inside the releases folder leads nowhere (nothing to check).
  await symlink('../2.0', path.join(shared, 'back'));
  await symlink('.', path.join(shared, 'self'));
  await symlink('../4.0/static', path.join(shared, 'next'));
  await loadCurrent(l.app());
  await chmod(upload, 0o666);
  const p = await refusal(l.app());
  assert.equal(p.found, `${upload} is writable by every user, mode 0666`);
});

/**
 * Issue 15: POSIX ACLs. With an extended ACL the group bits of the mode are
 * the ACL's mask, so `setfacl -m u:mallory:rw` on a 0644 file shows 0664,
 * which the mode check passes when the group holds nobody but root. Real
 * ACLs (Debian's setfacl, package acl) on real users.
 */
async function setfacl(t: TestContext, ...args: string[]): Promise<boolean> {
  if (!(await needProgram(t, '/usr/bin/setfacl', 'acl'))) return false;
  await run('/usr/bin/setfacl', args);
  return true;
}

test('issue 15: a release binary another user can write through an ACL entry is refused, naming the user and the entry; one naming root passes', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const mallory = await testUser(t);
  if (!(await setfacl(t, '-m', 'u:root:rwx', l.bin))) return;
  await loadCurrent(l.app());
  await run('/usr/bin/setfacl', ['-m', `u:${mallory.name}:rw`, l.bin]);
  const p = await refusal(l.app());
  assert.equal(p.key, 'bin.file');
  assert.equal(p.found, `${l.bin} is writable by user ${mallory.name} (uid ${mallory.uid}) through an ACL (user:${mallory.name}:rw-), mode 0775`);
  assert.equal(p.message, `${l.current}: "bin.file": ${RULE_ROOT} (found: ${p.found})`);
});

test('issue 15: an ACL entry for the app\'s own user passes; one for another user names the app\'s user in the rule', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const web = await testUser(t);
  const mallory = await testUser(t);
  const app = l.app({ user: web.name });
  if (!(await setfacl(t, '-m', `u:${web.name}:rw`, l.cfg))) return;
  await loadCurrent(app);
  await run('/usr/bin/setfacl', ['-m', `u:${mallory.name}:rw`, l.cfg]);
  const p = await refusal(app);
  assert.equal(p.rule, `must be writable by nobody but root or the app's user ${web.name} (uid ${web.uid}) (like sshd's StrictModes)`);
  assert.equal(p.found, `${l.cfg} is writable by user ${mallory.name} (uid ${mallory.uid}) through an ACL (user:${mallory.name}:rw-), mode 0664`);
});

test('issue 15: a named group ACL entry granting write is refused when the group holds another user; one holding nobody else passes', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const empty = await testGroup(t);
  const group = await testGroup(t);
  const member = await testUser(t, [group]);
  if (!(await setfacl(t, '-m', `g:${empty.name}:rw`, l.cfg))) return;
  await loadCurrent(l.app());
  await run('/usr/bin/setfacl', ['-m', `g:${group.name}:rw`, l.cfg]);
  const p = await refusal(l.app());
  assert.equal(p.key, 'cfg.file');
  assert.equal(p.found, `${l.cfg} is writable by group ${group.name} (${member.name}) through an ACL (group:${group.name}:rw-), mode 0664`);
});

test('issue 15: an ACL whose mask takes write away passes (the entry grants read only, and the mode shows no group write)', async (t) => {
  if (!rootOnly(t)) return;
  const l = await layout(t);
  const mallory = await testUser(t);
  const group = await testGroup(t);
  await testUser(t, [group]);
  if (!(await setfacl(t, '-m', `u:${mallory.name}:rw,g:${group.name}:rwx,m::r`, l.bin))) return;
  const { stdout } = await run('/usr/bin/getfacl', ['-p', l.bin]);
  assert.match(stdout, new RegExp(`^user:${mallory.name}:rw-\t+#effective:r--$`, 'm'));
  await loadCurrent(l.app());
  // A mask with write, an entry without: still nobody else can write.
  await run('/usr/bin/setfacl', ['-m', `u:${mallory.name}:r,g:${group.name}:r,m::rwx`, l.bin]);
  await loadCurrent(l.app());
});

test('issue 15: with links.dir, a file deep in the release folder that another user can write through an ACL is refused in one line naming it', async (t) => {
  if (!rootOnly(t)) return;
  const l = await folderLayout(t);
  const mallory = await testUser(t);
  if (!(await setfacl(t, '-m', `u:${mallory.name}:rw`, l.asset))) return;
  const p = await refusal(l.app());
  assert.equal(p.key, undefined);
  assert.equal(p.message, `${l.current}: ${RULE_ROOT} (found: ${l.asset} is writable by user ${mallory.name} (uid ${mallory.uid}) through an ACL (user:${mallory.name}:rw-), mode 0664)`);
  // Only the links' files are exposed without the folder link.
  await loadCurrent(l.app({ links: {} }));
});

test('issue 15: ACLs of many files are read with one getfacl, and names with a newline, a backslash or spaces are matched back to their files', async (t) => {
  if (!rootOnly(t)) return;
  const l = await folderLayout(t);
  const mallory = await testUser(t);
  const staticDir = path.join(l.folder, 'static');
  const names = ['plain.css', ' lead.css', 'trail.css ', 'back\\slash.css', 'new\nline.css', 'tab\t.css'];
  for (const n of names) await writeFile(path.join(staticDir, n), 'x\n', { mode: 0o664 });
  // Group-writable (umask 002 uploads), the owning group root's: all asked about, none refused.
  for (const n of names) await chmod(path.join(staticDir, n), 0o664);
  await loadCurrent(l.app());
  for (const n of names.slice(1)) {
    const file = path.join(staticDir, n);
    if (!(await setfacl(t, '-m', `u:${mallory.name}:rw`, file))) return;
    assert.equal((await refusal(l.app())).found, `${file} is writable by user ${mallory.name} (uid ${mallory.uid}) through an ACL (user:${mallory.name}:rw-), mode 0664`, JSON.stringify(n));
    await run('/usr/bin/setfacl', ['-b', file]);
  }
  await loadCurrent(l.app());
});

test('issue 15: a folder with an ACL letting another user write it is refused: in a release folder, and above the releases folder', async (t) => {
  if (!rootOnly(t)) return;
  const l = await folderLayout(t);
  const mallory = await testUser(t);
  const staticDir = path.join(l.folder, 'static');
  if (!(await setfacl(t, '-m', `u:${mallory.name}:rwx`, staticDir))) return;
  assert.equal((await refusal(l.app())).found, `${staticDir} is writable by user ${mallory.name} (uid ${mallory.uid}) through an ACL (user:${mallory.name}:rwx), mode 0775`);
  await run('/usr/bin/setfacl', ['-b', staticDir]);
  await loadCurrent(l.app());
  await run('/usr/bin/setfacl', ['-m', `u:${mallory.name}:rwx`, l.dir]);
  const p = await refusal(l.app({ links: {} }));
  assert.equal(p.found, `${l.dir} is writable by user ${mallory.name} (uid ${mallory.uid}) through an ACL (user:${mallory.name}:rwx), mode 0775`);
});

test('issue 15: a default ACL grants nothing on its folder (passes); a file made in it later carries the entry and is refused', async (t) => {
  if (!rootOnly(t)) return;
  const l = await folderLayout(t);
  const mallory = await testUser(t);
  const staticDir = path.join(l.folder, 'static');
  if (!(await setfacl(t, '-d', '-m', `u:${mallory.name}:rwx`, staticDir))) return;
  await loadCurrent(l.app());
  const made = path.join(staticDir, 'later.css');
  await writeFile(made, 'x\n', { mode: 0o644 });
  const { stdout } = await run('/usr/bin/getfacl', ['-p', made]);
  assert.match(stdout, new RegExp(`^user:${mallory.name}:rwx\t+#effective:r--$`, 'm'), 'the open mode 0644 masks the inherited entry');
  await loadCurrent(l.app());
  await chmod(made, 0o664);
  assert.equal((await refusal(l.app())).found, `${made} is writable by user ${mallory.name} (uid ${mallory.uid}) through an ACL (user:${mallory.name}:rwx), mode 0664`);
});

test('issue 15: a global notifier\'s program another user can write through an ACL is refused', async (t) => {
  if (!rootOnly(t)) return;
  const dir = await tmpDir(t, 'relink-trust-prog-');
  await openUp(dir);
  const program = path.join(dir, 'page-me');
  await writeFile(program, '#!/bin/sh\n', { mode: 0o755 });
  await chmod(program, 0o755);
  const mallory = await testUser(t);
  assert.equal(await checkAgentProgram(program, '/etc/relink/config.json', 'notify[0].command'), undefined);
  if (!(await setfacl(t, '-m', `u:${mallory.name}:rwx`, program))) return;
  const p = await checkAgentProgram(program, '/etc/relink/config.json', 'notify[0].command');
  assert.equal(p?.message, `/etc/relink/config.json: "notify[0].command": ${RULE_ROOT} (found: ${program} is writable by user ${mallory.name} (uid ${mallory.uid}) through an ACL (user:${mallory.name}:rwx), mode 0775)`);
});

test('issue 15: the metrics textfile\'s folder is refused when an ACL lets an app\'s user, or a group holding one, write it', async (t) => {
  if (!rootOnly(t)) return;
  const dir = await tmpDir(t, 'relink-trust-textfile-');
  await chmod(dir, 0o755);
  const web = await testUser(t);
  const other = await testUser(t);
  const group = await testGroup(t);
  await testUser(t, [group]);
  const writers = [{ app: 'web', user: web.name, uid: web.uid, gid: web.gid }];
  const check = (d: string) => checkFolderForRoot(d, writers, '/etc/relink/config.json', 'metrics.textfile');
  // Another account (the prometheus user) may write it, through an ACL too.
  if (!(await setfacl(t, '-m', `u:${other.name}:rwx`, dir))) return;
  assert.equal(await check(dir), undefined);
  await run('/usr/bin/setfacl', ['-m', `u:${web.name}:rwx`, dir]);
  assert.match((await check(dir))?.message ?? '', new RegExp(`found: ${dir} is writable by ${web.name} \\(uid ${web.uid}\\), the user of app web, through an ACL \\(user:${web.name}:rwx\\), mode 0775\\)$`));
  await run('/usr/bin/setfacl', ['-b', dir]);
  await run('/usr/bin/setfacl', ['-m', `g:${web.name}:rwx`, dir]);
  assert.match((await check(dir))?.message ?? '', new RegExp(`found: ${dir} is writable by group ${web.name}, which holds ${web.name} \\(uid ${web.uid}\\), the user of app web, through an ACL \\(group:${web.name}:rwx\\), mode 0775\\)$`));
});

test('issue 15: where getfacl is missing, a group-writable release file is refused, saying what to do; one without group write passes', async (t) => {
  if (!rootOnly(t)) return;
  if (!(await needProgram(t, '/usr/bin/unshare', 'util-linux'))) return;
  const l = await layout(t);
  const configFile = path.join(l.root, 'config.json');
  await writeFile(configFile, JSON.stringify({ stateDir: path.join(l.root, 'state'), apps: [{ name: 'web', dir: l.dir, allowRoot: true }] }));
  // relink validate in a mount namespace of its own whose /usr/bin is a
  // copy without getfacl: its other programs are linked from the real one,
  // mounted aside.
  const aside = path.join(l.root, 'usr-bin');
  await mkdir(aside);
  const script = 'set -e; mount --make-rprivate /; mount --bind /usr/bin "$1"; mount -t tmpfs tmpfs /usr/bin; ' +
    'for f in "$1"/*; do [ "${f##*/}" = getfacl ] || "$1"/ln -s "$f" /usr/bin/; done; shift; exec "$@"';
  const validate = () => run('/usr/bin/unshare', ['--mount', '/bin/sh', '-c', script, 'sh', aside, ...RELINK, 'validate', '--config', configFile], { cwd: ROOT })
    .then((r) => ({ code: 0, ...r }), (e: { code: number; stdout: string; stderr: string }) => e);
  const ok = await validate();
  assert.equal(ok.stderr, '');
  assert.equal(ok.code, 0);
  await chmod(l.cfg, 0o664);
  const bad = await validate();
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr, `${l.current}: "cfg.file": ${RULE_ROOT} (found: ${l.cfg} is group-writable, mode 0664, and its ACL (which could let other users write it) cannot be read: /usr/bin/getfacl is missing; install it (apt-get install acl), or clear the group write bit (chmod g-w ${l.cfg})) [UNTRUSTED_PATH]\n`);
});
