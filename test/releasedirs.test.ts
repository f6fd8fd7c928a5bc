/**
 * Issue 15, release folders: both layouts (a file per release, app.2.0 +
 * cfg.2.0; a folder per release, 2.0/app + 2.0/app.cfg + its assets, with a
 * `current` link to the live folder) through the real agent and the real
 * CLI: deploy RELEASE, the automatic rollback, the reconcile putting back a
 * link moved by hand, rollback --to, releases and prune. In the folders
 * layout the app is started from current/ and serves its own static file,
 * which changes with the release.
 */
import assert from 'node:assert/strict';
import { access, readlink, realpath, symlink, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { get, reapMarkedAfter, relinkCli, startAgent, tmpDir, waitFor } from './helpers.js';
import { configFor, filesOf, FOLDERS_CONFIG, makeApp, nth, PLAIN, setCurrent, type App } from './plainapps.js';

/** What the app serves at /static.txt (through current/), once it says `want`. */
async function staticIs(app: App, want: string): Promise<void> {
  await waitFor(`port ${app.port} to serve static.txt "${want}"`, async () => {
    const r = await get(`http://127.0.0.1:${app.port}/static.txt`).catch(() => undefined);
    return r?.status === 200 && r.body === `${want}\n` ? true : undefined;
  }, { timeoutMs: 20_000 });
}

/** Where the app's links point, relative to its releases folder ("2.0/app"); `dir` only in the folders layout. */
async function linked(app: App): Promise<{ bin: string; cfg: string; dir?: string }> {
  const real = await realpath(app.releasesDir);
  const rel = async (name: string) => path.relative(real, await readlink(path.join(app.dir, name)));
  return { bin: await rel('app.bin'), cfg: await rel('app.cfg'), ...(app.folders ? { dir: await rel('current') } : {}) };
}

/** `s` as a regular expression matching itself. */
const literal = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const expectLinked = (app: App, r: string) => ({ ...filesOf(app, r), ...(app.folders ? { dir: r } : {}) });

async function bothLayouts(t: TestContext, folders: boolean): Promise<void> {
  const root = await tmpDir(t);
  const app = await makeApp(root, 'shop', PLAIN, { '0.9': '', '1.0': '', '2.0': '', '3.0': 'unhealthy=1\n' }, { folders });
  reapMarkedAfter(t, app.dir);
  await setCurrent(app, '1.0');
  const config = await configFor(root, app, { reload: { strategy: 'restart' }, ...(folders ? FOLDERS_CONFIG : {}) });
  const agent = startAgent(t, config);
  const first = await nth(root, app.name, 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  assert.deepEqual(await linked(app), expectLinked(app, '1.0'));
  if (folders) await staticIs(app, 'static 1.0');
  const cli = (args: readonly string[]) => relinkCli([...args, '--config', config]);

  // deploy RELEASE finds 2.0/app + 2.0/app.cfg in the folders layout.
  const deployed = await cli(['deploy', '2.0', '--wait']);
  assert.equal(deployed.code, 0, deployed.stderr);
  const shown = (r: string) => `${filesOf(app, r).bin} + ${filesOf(app, r).cfg}`;
  assert.match(deployed.stdout, new RegExp(`^shop: ${literal(shown('2.0'))} deployed and healthy`));
  assert.deepEqual(await linked(app), expectLinked(app, '2.0'));
  if (folders) await staticIs(app, 'static 2.0');

  // 3.0 fails its health check: all links, `current` too, go back to 2.0.
  const failed = await cli(['deploy', '3.0', '--wait']);
  assert.equal(failed.code, 1, failed.stdout);
  assert.match(failed.stderr, new RegExp(`rolled back to ${literal(shown('2.0'))}`));
  assert.deepEqual(await linked(app), expectLinked(app, '2.0'));
  if (folders) await staticIs(app, 'static 2.0');

  // A link moved by hand is put back by the reconcile (the folder link in
  // the folders layout, app.cfg in the files layout).
  const moved = path.join(app.dir, folders ? 'current' : 'app.cfg');
  const tmp = `${moved}.hand`;
  await symlink(path.join(app.releasesDir, folders ? '0.9' : 'cfg.0.9'), tmp);
  await rename(tmp, moved);
  await waitFor('the reconcile to put the moved link back', async () => {
    const now = await linked(app).catch(() => undefined);
    return now !== undefined && JSON.stringify(now) === JSON.stringify(expectLinked(app, '2.0')) ? true : undefined;
  }, { timeoutMs: 15_000 });
  await agent.waitForLog('the drift warning', (l) => typeof l.msg === 'string' && l.msg.startsWith('links drifted from current.conf'));
  if (folders) await staticIs(app, 'static 2.0');
  // and one removed, too.
  await unlink(moved);
  await waitFor('the reconcile to make the removed link again', async () => {
    const now = await linked(app).catch(() => undefined);
    return now !== undefined && JSON.stringify(now) === JSON.stringify(expectLinked(app, '2.0')) ? true : undefined;
  }, { timeoutMs: 15_000 });

  const back = await cli(['rollback', '--to', '1.0', '--wait']);
  assert.equal(back.code, 0, back.stderr);
  assert.deepEqual(await linked(app), expectLinked(app, '1.0'));
  if (folders) await staticIs(app, 'static 1.0');

  // relink status shows the folder link of an app with one, and no such key otherwise.
  const status = JSON.parse((await cli(['status', '--json'])).stdout) as { apps: Array<Record<string, unknown>> };
  if (folders) assert.equal(status.apps[0]!.dir, path.join(await realpath(app.releasesDir), '1.0'));
  else assert.equal('dir' in status.apps[0]!, false);
  assert.equal((await cli(['status'])).stdout.includes('\n  dir '), folders);

  const listed = await cli(['releases', '--json']);
  assert.equal(listed.code, 0, listed.stderr);
  const rs = (JSON.parse(listed.stdout) as { apps: Array<{ releases: Array<{ release: string; current: boolean; previous: boolean; failed: boolean; folder: { path: string } | null }> }> }).apps[0]!.releases;
  assert.deepEqual(rs.map((r) => r.release), ['0.9', '1.0', '2.0', '3.0']);
  assert.deepEqual(rs.filter((r) => r.current).map((r) => r.release), ['1.0']);
  assert.deepEqual(rs.filter((r) => r.previous).map((r) => r.release), ['2.0']);
  assert.deepEqual(rs.filter((r) => r.failed).map((r) => r.release), ['3.0']);
  assert.deepEqual(rs.map((r) => r.folder?.path ?? null), rs.map((r) => (folders ? path.join(app.releasesDir, r.release) : null)));
  const table = await cli(['releases']);
  assert.match(table.stdout, new RegExp(`^1\\.0 +${literal(filesOf(app, '1.0').bin)} +${literal(filesOf(app, '1.0').cfg)} `, 'm'));

  // keep 1: 3.0 is the newest, 1.0 current and last known-good, 2.0 the
  // rollback target; 0.9 goes (in the folders layout its whole folder).
  const pruned = await cli(['prune', '--keep', '1']);
  assert.equal(pruned.code, 0, pruned.stderr);
  assert.match(pruned.stdout, folders ? /^shop: removed 1 release folder, 3 kept$/m : /^shop: removed 2 files, 6 kept$/m);
  const gone = folders ? [path.join(app.releasesDir, '0.9')] : [path.join(app.releasesDir, 'app.0.9'), path.join(app.releasesDir, 'cfg.0.9')];
  for (const f of gone) await assert.rejects(access(f), { code: 'ENOENT' });
  for (const r of ['1.0', '2.0', '3.0']) await access(path.join(app.releasesDir, filesOf(app, r).bin));
  if (folders) await staticIs(app, 'static 1.0');
  assert.equal(await agent.stop(), 0);
}

test('issue 15: a folder per release with a `current` link: an app started from current/ serves its own static file through deploy RELEASE, an automatic rollback, the reconcile, rollback --to, releases and prune', async (t) => {
  await bothLayouts(t, true);
});

test('issue 15: the file per release layout goes through the same deploy RELEASE, rollback, reconcile, releases and prune as before', async (t) => {
  await bothLayouts(t, false);
});
