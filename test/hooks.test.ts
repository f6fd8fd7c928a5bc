/**
 * Deploy hooks (issue 12, item 5): beforeSwitch, afterDeploy and
 * afterRollback, run by the real agent as real processes, as the app's
 * user, with the journal entry on stdin. Each hook here records what it saw
 * (stdin, uid, folder, variables) in a folder of the test's, one pair of
 * files per run, named by the time it ran.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chown, mkdir, readdir, readFile, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import pino from 'pino';
import { loadConfig, type AppConfig } from '../src/config.js';
import { buildDemoApp } from '../src/demo/build.js';
import { makeApp, setCurrent, writeConfig, writeRelease, type DemoApp } from '../src/demo/layout.js';
import { realEffects } from '../src/effects.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { DeployHooks, type HookEntry, type HookName } from '../src/hooks.js';
import type { CommandResult } from '../src/command.js';
import { openUp, rootOnly, testUser, type TestUser } from './accounts.js';
import { alive, defer, reapAppsAfter, recordedRuns, relinkCli, startAgent, tmpDir, waitFor, type AgentProc, type LogLine } from './helpers.js';

interface Reply {
  readonly release: string;
  readonly pid: number;
}

/** Appended to a hook's script: it records its stdin and what it saw as `<ns>.<hook>.json` / `.env` in $HOOK_OUT. */
const RECORD = `n=$(date +%s%N); f="$HOOK_OUT/$n.$RELINK_HOOK"
cat > "$f.json"
printf 'uid=%s pwd=%s app=%s outcome=%s bin=%s cfg=%s marker=%s\\n' "$(id -u)" "$(pwd)" "$RELINK_APP_NAME" "\${RELINK_OUTCOME-unset}" "$RELINK_RELEASE_BIN" "$RELINK_RELEASE_CFG" "\${RELINK_APP-unset}" > "$f.env"
`;

const sh = (script: string): string[] => ['/bin/sh', '-c', script, 'hook'];

interface World {
  readonly root: string;
  readonly app: DemoApp;
  readonly out: string;
  readonly stateDir: string;
  readonly configFile: string;
}

/**
 * The demo app (releases 1.0, 2.0 and crash, which exits at start),
 * current.conf on 1.0, `hooks` in its config, HOOK_OUT in its environment.
 */
async function world(t: TestContext, hooks: Record<string, unknown>, opts: { user?: TestUser; name?: string; root?: string } = {}): Promise<World> {
  const root = opts.root ?? await tmpDir(t, 'relink-hooks-');
  const app = await makeApp({ root, name: opts.name ?? 'web', releases: ['1.0', '2.0'] });
  reapAppsAfter(t, app.releasesDir);
  await writeRelease(app.releasesDir, 'crash', await buildDemoApp(), `port=${app.port}\nmode=reexec\nmessage=crash\nfail_start=1\n`);
  const out = path.join(root, `out-${app.name}`);
  await mkdir(out);
  if (opts.user !== undefined) {
    await chown(out, opts.user.uid, opts.user.gid);
    await openUp(app.releasesDir);
    await openUp(out);
  }
  await setCurrent(app, '1.0');
  const configFile = await writeConfig(root, [app], { reconcileMs: 60_000 }, appConfig(app, out, hooks, opts.user));
  return { root, app, out, stateDir: path.join(root, 'state'), configFile };
}

function appConfig(app: DemoApp, out: string, hooks: Record<string, unknown>, user?: TestUser): Record<string, unknown> {
  return {
    env: { HOOK_OUT: out },
    reload: { timeoutMs: 3_000 },
    health: { url: `${app.url}healthz`, settleMs: 300, deadlineMs: 3_000, intervalMs: 100, probeTimeoutMs: 500 },
    hooks,
    ...(user === undefined ? {} : { user: user.name, allowRoot: false }),
  };
}

async function nth(w: World, n: number, app = 'web'): Promise<HistoryEntry> {
  return waitFor(`${app}'s history entry #${n}`, async () => (await readHistory(w.stateDir, app))[n - 1], { timeoutMs: 20_000 });
}

async function ask(app: DemoApp): Promise<Reply> {
  const res = await fetch(app.url);
  return (await res.json()) as Reply;
}

interface Run {
  readonly hook: HookName;
  readonly entry: HookEntry;
  readonly env: Record<string, string>;
}

/** The hook runs recorded in `out`, oldest first. */
async function runs(out: string): Promise<Run[]> {
  return (await recordedRuns(out)).map((r) => ({ hook: r.name.slice(r.name.indexOf('.') + 1) as HookName, entry: r.json as HookEntry, env: r.env }));
}

const forRelease = (r: Run, app: DemoApp, release: string): boolean => r.entry.to.cfg === path.join(app.releasesDir, `cfg.${release}`);

function logOf(agent: AgentProc, what: string, pred: (l: LogLine) => boolean): Promise<LogLine> {
  return agent.waitForLog(what, pred, { timeoutMs: 20_000 });
}

test('a beforeSwitch that exits 1 refuses the deploy: links and the running app untouched, HOOK_FAILED with its output in the reason', async (t) => {
  // It refuses 2.0 only (the first deploy, 1.0, goes through it too).
  const w = await world(t, {
    beforeSwitch: sh(`${RECORD}case "$RELINK_RELEASE_CFG" in *cfg.2.0) echo "migration 42 failed: table locked" >&2; exit 1;; esac`),
  });
  const agent = startAgent(t, w.configFile);
  const first = await nth(w, 1);
  assert.equal(first.outcome, 'deployed', first.reason ?? '');
  const before = await waitFor('the app to answer', () => ask(w.app));
  assert.equal(before.release, 'app.1.0');

  await setCurrent(w.app, '2.0');
  const refused = await nth(w, 2);
  assert.equal(refused.outcome, 'refused');
  assert.equal(refused.code, 'HOOK_FAILED');
  assert.equal(refused.action, 'none');
  assert.match(refused.reason ?? '', /^hook beforeSwitch ".*" refused \S*app\.2\.0 \+ \S*cfg\.2\.0: exit 1: migration 42 failed: table locked$/);
  // The same in the agent's log, with the key.
  const line = await logOf(agent, 'the refusal in the log', (l) => l.code === 'HOOK_FAILED');
  assert.equal(line.key, 'hooks.beforeSwitch');
  // Nothing switched, nothing signalled.
  assert.equal(await readlink(path.join(w.app.dir, 'app.bin')), path.join(w.app.releasesDir, 'app.1.0'));
  assert.equal(await readlink(path.join(w.app.dir, 'app.cfg')), path.join(w.app.releasesDir, 'cfg.1.0'));
  const after = await ask(w.app);
  assert.equal(after.pid, before.pid);
  assert.equal(after.release, 'app.1.0');
  assert.deepEqual((await runs(w.out)).map((r) => [r.hook, path.basename(r.entry.to.cfg ?? '')]), [['beforeSwitch', 'cfg.1.0'], ['beforeSwitch', 'cfg.2.0']]);
});

test('a beforeSwitch that outlives hooks.timeoutMs refuses the deploy naming the timeout; it is ended (SIGTERM, then SIGKILL) with what it started', async (t) => {
  // It ignores SIGTERM, as does its background child: only the SIGKILL that follows ends them.
  const w = await world(t, {
    beforeSwitch: sh(`case "$RELINK_RELEASE_CFG" in *cfg.2.0) trap "" TERM; echo $$ > "$HOOK_OUT/hook.pid"; sleep 300 & echo $! > "$HOOK_OUT/child.pid"; echo "waiting for the lock"; wait;; esac`),
    timeoutMs: 1_000,
  });
  startAgent(t, w.configFile);
  assert.equal((await nth(w, 1)).outcome, 'deployed');
  const before = await waitFor('the app to answer', () => ask(w.app));

  await setCurrent(w.app, '2.0');
  const refused = await nth(w, 2);
  assert.equal(refused.outcome, 'refused');
  assert.equal(refused.code, 'HOOK_FAILED');
  assert.match(refused.reason ?? '', /refused \S*app\.2\.0 \+ \S*cfg\.2\.0: killed after 1000 ms \(hooks\.timeoutMs\): waiting for the lock$/);
  for (const f of ['hook.pid', 'child.pid']) {
    const pid = Number(await readFile(path.join(w.out, f), 'utf8'));
    await waitFor(`${f} (${pid}) to be gone`, async () => !(await alive(pid)));
  }
  assert.equal(await readlink(path.join(w.app.dir, 'app.bin')), path.join(w.app.releasesDir, 'app.1.0'));
  assert.equal((await ask(w.app)).pid, before.pid);
});

test('hooks run as the app\'s user in its folder: beforeSwitch reads the entry about to be journaled, afterDeploy the deployed entry', async (t) => {
  if (!rootOnly(t)) return;
  const user = await testUser(t);
  const w = await world(t, { beforeSwitch: sh(RECORD), afterDeploy: sh(RECORD) }, { user });
  startAgent(t, w.configFile);
  assert.equal((await nth(w, 1)).outcome, 'deployed');
  const before = await waitFor('the app to answer', () => ask(w.app));

  const text = await setCurrent(w.app, '2.0');
  const deployed = await nth(w, 2);
  assert.equal(deployed.outcome, 'deployed', deployed.reason ?? '');
  const all = await waitFor('afterDeploy of 2.0', async () => {
    const r = await runs(w.out);
    return r.some((x) => x.hook === 'afterDeploy' && forRelease(x, w.app, '2.0')) ? r : undefined;
  });
  assert.deepEqual(all.map((r) => [r.hook, path.basename(r.entry.to.cfg ?? '')]),
    [['beforeSwitch', 'cfg.1.0'], ['afterDeploy', 'cfg.1.0'], ['beforeSwitch', 'cfg.2.0'], ['afterDeploy', 'cfg.2.0']]);
  const bin = (r: string) => path.join(w.app.releasesDir, `app.${r}`);
  const cfg = (r: string) => path.join(w.app.releasesDir, `cfg.${r}`);

  const beforeSwitch = all[2]!;
  // Never root, and never carrying the app's lineage marker (it would be taken for the app).
  assert.deepEqual(beforeSwitch.env, { uid: String(user.uid), pwd: w.app.dir, app: 'web', outcome: 'unset', bin: bin('2.0'), cfg: cfg('2.0'), marker: 'unset' });
  const pending = beforeSwitch.entry;
  assert.equal(pending.outcome, null, 'no verdict yet');
  assert.equal(pending.app, 'web');
  assert.equal(pending.action, 'signal');
  assert.equal(pending.strategy, 'reexec');
  assert.deepEqual(pending.from, { bin: bin('1.0'), cfg: cfg('1.0') });
  assert.deepEqual(pending.to, { bin: bin('2.0'), cfg: cfg('2.0') });
  assert.equal(pending.currentHash, createHash('sha256').update(text).digest('hex'));
  assert.equal(pending.currentHash, deployed.currentHash);
  assert.equal(pending.pidBefore, before.pid);
  assert.equal(pending.pidAfter, null);
  assert.equal(pending.reason, null);
  assert.equal(pending.code, null);
  assert.equal(typeof pending.trigger, 'string');

  const afterDeploy = all[3]!;
  assert.deepEqual(afterDeploy.env, { uid: String(user.uid), pwd: w.app.dir, app: 'web', outcome: 'deployed', bin: bin('2.0'), cfg: cfg('2.0'), marker: 'unset' });
  assert.deepEqual(afterDeploy.entry, deployed, 'the journaled entry, as journaled');
  // What the hooks wrote is the app user's, as what the app writes is.
  assert.equal((await stat(path.join(w.out, (await readdir(w.out)).sort()[0]!))).uid, user.uid);
});

test('a failing afterDeploy is logged and changes nothing; afterRollback reads the rolled_back entry of an automatic rollback', async (t) => {
  const w = await world(t, {
    afterDeploy: sh(`${RECORD}echo "cache warm-up failed for $RELINK_RELEASE_CFG" >&2; exit 3`),
    afterRollback: sh(RECORD),
  });
  const agent = startAgent(t, w.configFile);
  assert.equal((await nth(w, 1)).outcome, 'deployed');

  await setCurrent(w.app, '2.0');
  const deployed = await nth(w, 2);
  assert.equal(deployed.outcome, 'deployed', deployed.reason ?? '');
  const line = await logOf(agent, 'afterDeploy of 2.0 failing in the log', (l) => l.hook === 'afterDeploy' && String(l.output).includes('cfg.2.0'));
  assert.equal(line.level, 'warn');
  assert.equal(line.status, 'exit 3');
  assert.equal(line.code, 'HOOK_FAILED');
  assert.match(line.msg, /hook afterDeploy failed \(exit 3\); the verdict stands \(deployed\)/);
  // The verdict stands: still deployed, serving 2.0, nothing more journaled.
  assert.equal((await ask(w.app)).release, 'app.2.0');
  assert.equal((await readHistory(w.stateDir, 'web')).length, 2);
  assert.equal(await readlink(path.join(w.app.dir, 'app.bin')), path.join(w.app.releasesDir, 'app.2.0'));

  await setCurrent(w.app, 'crash');
  const rolledBack = await nth(w, 3);
  assert.equal(rolledBack.outcome, 'rolled_back');
  const all = await waitFor('afterRollback', async () => {
    const r = await runs(w.out);
    return r.some((x) => x.hook === 'afterRollback') ? r : undefined;
  });
  const afterRollback = all.find((r) => r.hook === 'afterRollback')!;
  assert.deepEqual(afterRollback.entry, rolledBack);
  assert.deepEqual(afterRollback.entry.rolledBackTo, { bin: path.join(w.app.releasesDir, 'app.2.0'), cfg: path.join(w.app.releasesDir, 'cfg.2.0') });
  assert.equal(afterRollback.env.outcome, 'rolled_back');
  assert.equal(afterRollback.env.cfg, path.join(w.app.releasesDir, 'cfg.crash'), 'the release asked for');
  // No afterDeploy for the rollback.
  assert.deepEqual(all.map((r) => [r.hook, path.basename(r.entry.to.cfg ?? '')]), [['afterDeploy', 'cfg.1.0'], ['afterDeploy', 'cfg.2.0'], ['afterRollback', 'cfg.crash']]);
});

test('no hook runs when the agent adopts the running app at start, for a pass that changes nothing, nor for relink restart', async (t) => {
  const w = await world(t, { beforeSwitch: sh(RECORD), afterDeploy: sh(RECORD) });
  const first = startAgent(t, w.configFile);
  assert.equal((await nth(w, 1)).outcome, 'deployed');
  await waitFor('afterDeploy of 1.0', async () => (await runs(w.out)).length === 2);
  assert.equal(await first.stop(), 0);

  const second = startAgent(t, w.configFile);
  await logOf(second, 'the app adopted', (l) => l.msg === 'adopted running app');
  // current.conf saved again unchanged: read, found to name what runs (the state file's "matched" moves on).
  const stateFile = path.join(w.stateDir, 'apps', 'web', 'state.json');
  const matchedAt = async () => (JSON.parse(await readFile(stateFile, 'utf8')) as { matched: { at: string } | null }).matched?.at;
  const adoptedAt = await waitFor('the adoption to match current.conf', matchedAt);
  await setCurrent(w.app, '1.0');
  await waitFor('the re-saved current.conf to be judged', async () => (await matchedAt()) !== adoptedAt);
  // A marker: the next deploy's hooks run after any the adoption or the re-save would have run.
  await setCurrent(w.app, '2.0');
  assert.equal((await nth(w, 2)).outcome, 'deployed');
  const all = await waitFor('afterDeploy of 2.0', async () => {
    const r = await runs(w.out);
    return r.some((x) => x.hook === 'afterDeploy' && forRelease(x, w.app, '2.0')) ? r : undefined;
  });
  assert.deepEqual(all.map((r) => [r.hook, path.basename(r.entry.to.cfg ?? '')]),
    [['beforeSwitch', 'cfg.1.0'], ['afterDeploy', 'cfg.1.0'], ['beforeSwitch', 'cfg.2.0'], ['afterDeploy', 'cfg.2.0']]);

  // An operator's restart is not a deploy; the next deploy is the marker again.
  const restart = await relinkCli(['restart', 'web', '--wait', '--config', w.configFile]);
  assert.equal(restart.code, 0, restart.stderr);
  assert.equal((await nth(w, 3)).command, 'restart');
  await setCurrent(w.app, '1.0');
  assert.equal((await nth(w, 4)).outcome, 'deployed');
  const later = await waitFor('afterDeploy of 1.0 again', async () => {
    const r = await runs(w.out);
    return r.length === 6 ? r : undefined;
  });
  assert.deepEqual(later.slice(4).map((r) => [r.hook, path.basename(r.entry.to.cfg ?? '')]), [['beforeSwitch', 'cfg.1.0'], ['afterDeploy', 'cfg.1.0']]);
});

test('a slow afterDeploy does not delay another app\'s deploy; the same app\'s next deploy waits for it', async (t) => {
  const root = await tmpDir(t, 'relink-hooks-');
  // Blocks, for 2.0 only, until the test lets it go.
  const slowHooks = {
    afterDeploy: sh(`case "$RELINK_RELEASE_CFG" in *cfg.2.0) echo $$ > "$HOOK_OUT/slow.pid"; while [ ! -e "$HOOK_OUT/go" ]; do sleep 0.05; done; echo "let go";; esac`),
    timeoutMs: 600_000,
  };
  const slow = await world(t, slowHooks, { root, name: 'web' });
  const other = await world(t, {}, { root, name: 'api' });
  // One agent for both apps (each world wrote a config of its own app only).
  const configFile = await writeConfig(root, [slow.app, other.app], { reconcileMs: 60_000 });
  const config = JSON.parse(await readFile(configFile, 'utf8')) as { apps: Array<Record<string, unknown>> };
  config.apps[0] = { ...config.apps[0], ...appConfig(slow.app, slow.out, slowHooks) };
  config.apps[1] = { ...config.apps[1], ...appConfig(other.app, other.out, {}) };
  await writeFile(configFile, JSON.stringify(config, null, 2));
  const agent = startAgent(t, configFile);
  defer(t, () => writeFile(path.join(slow.out, 'go'), ''));
  assert.equal((await nth(slow, 1, 'web')).outcome, 'deployed');
  assert.equal((await nth(other, 1, 'api')).outcome, 'deployed');

  await setCurrent(slow.app, '2.0');
  assert.equal((await nth(slow, 2, 'web')).outcome, 'deployed');
  const hookPid = Number(await waitFor('the slow afterDeploy to run', () => readFile(path.join(slow.out, 'slow.pid'), 'utf8').catch(() => '')));

  await setCurrent(other.app, '2.0');
  const otherDeployed = await nth(other, 2, 'api');
  assert.equal(otherDeployed.outcome, 'deployed', otherDeployed.reason ?? '');
  assert.equal((await ask(other.app)).release, 'app.2.0');
  assert.ok(await alive(hookPid), 'the other app\'s deploy went through while the hook still ran');

  // The slow app's own next deploy waits for it.
  await setCurrent(slow.app, '1.0');
  await logOf(agent, 'the next deploy waiting for the hook', (l) => l.app === 'web' && /^waiting for hook afterDeploy to end before the next deploy/.test(l.msg));
  assert.equal((await readHistory(slow.stateDir, 'web')).length, 2);
  await writeFile(path.join(slow.out, 'go'), '');
  assert.equal((await nth(slow, 3, 'web')).outcome, 'deployed');
  const ended = agent.lines.findIndex((l) => l.app === 'web' && l.hook === 'afterDeploy' && l.status === 'exit 0' && l.output === 'let go');
  const next = agent.lines.findLastIndex((l) => l.app === 'web' && l.outcome === 'deployed' && String((l.to as { cfg?: string }).cfg).endsWith('cfg.1.0'));
  assert.ok(ended >= 0 && next > ended, `the hook ended (line ${ended}) before the next deploy's verdict (line ${next})`);
});

test('a hook whose program is missing: afterDeploy logs it and beforeSwitch refuses, each naming its key', async (t) => {
  const w = await world(t, { beforeSwitch: ['./hooks/check-migrations'], afterDeploy: ['notify-deploy-nonexistent'] });
  // Links already on 1.0: the first deploy starts the app without switching, so beforeSwitch is not run then.
  await symlink(path.join(w.app.releasesDir, 'app.1.0'), path.join(w.app.dir, 'app.bin'));
  await symlink(path.join(w.app.releasesDir, 'cfg.1.0'), path.join(w.app.dir, 'app.cfg'));
  const agent = startAgent(t, w.configFile);
  assert.equal((await nth(w, 1)).outcome, 'deployed');
  const line = await logOf(agent, 'afterDeploy not run', (l) => l.hook === 'afterDeploy');
  assert.equal(line.level, 'error');
  assert.equal(line.code, 'HOOK_FAILED');
  assert.match(line.msg, /^hook afterDeploy could not run: "hooks\.afterDeploy": must name a program that exists \(found: notify-deploy-nonexistent is in no folder of PATH \(.+\)\); the verdict stands \(deployed\)$/);

  await setCurrent(w.app, '2.0');
  const refused = await nth(w, 2);
  assert.equal(refused.outcome, 'refused');
  assert.equal(refused.code, 'HOOK_FAILED');
  assert.equal(refused.reason, `"hooks.beforeSwitch": must name a program that exists (found: ${path.join(w.app.dir, 'hooks', 'check-migrations')} does not exist or is not a file)`);
  assert.equal(await readlink(path.join(w.app.dir, 'app.bin')), path.join(w.app.releasesDir, 'app.1.0'));
});

test('a process that leaves the command\'s group holding its output does not hold back the verdict (preflight and hooks share the runner)', async (t) => {
  const root = await tmpDir(t, 'relink-hooks-');
  const app = await makeApp({ root, releases: ['1.0'] });
  // setsid: the sleep leaves the process group (not killed with it) and keeps stdout open;
  // the command exits once it has left (its PID written), not before.
  const script = (pidFile: string) => `rm -f ${pidFile}; setsid /bin/sh -c 'echo $$ > ${pidFile}; exec sleep 300' & while [ ! -s ${pidFile} ]; do sleep 0.01; done; echo "bg=$(cat ${pidFile})"; exit 1`;
  const pidFiles = { preflight: path.join(root, 'preflight.pid'), beforeSwitch: path.join(root, 'hook.pid') };
  for (const f of Object.values(pidFiles)) {
    defer(t, async () => {
      const pid = Number(await readFile(f, 'utf8').catch(() => ''));
      if (pid > 0 && await alive(pid)) process.kill(pid, 'SIGKILL');
    });
  }
  const configFile = await writeConfig(root, [app], {}, { preflight: { command: sh(script(pidFiles.preflight)) }, hooks: { beforeSwitch: sh(script(pidFiles.beforeSwitch)) } });
  const cfg: AppConfig = (await loadConfig(configFile)).apps[0]!;
  const fx = realEffects(cfg, path.join(root, 'state'));
  const release = { bin: path.join(app.releasesDir, 'app.1.0'), cfg: path.join(app.releasesDir, 'cfg.1.0') };
  const entry = { to: release } as unknown as HookEntry;
  for (const [what, run] of [['preflight', () => fx.preflight(release)], ['beforeSwitch', () => fx.hook('beforeSwitch', entry)]] as const) {
    let deadline: NodeJS.Timeout | undefined;
    const r = await Promise.race([run(), new Promise<never>((_, reject) => {
      deadline = setTimeout(() => reject(new Error(`${what}: no verdict 20 s after the command exited`)), 20_000);
    })]).finally(() => clearTimeout(deadline));
    assert.equal(r?.status, 'exit 1', what);
    const bg = Number(/bg=(\d+)/.exec(r?.output ?? '')?.[1]);
    assert.ok(bg > 0 && await alive(bg), `${what}: the setsid child ran on (${r?.output})`);
  }
});

/** The orchestration alone, against a fake hook runner: order, waiting, and the agent stopping. */
test('after-hooks run one at a time in the order of the verdicts; idle() waits for them; close() ends the running one and skips the queued', async (t) => {
  const root = await tmpDir(t, 'relink-hooks-');
  const configFile = await writeConfig(root, [{ name: 'web', dir: root } as DemoApp], {}, { hooks: { afterDeploy: ['x'], afterRollback: ['y'] } });
  const app = (await loadConfig(configFile)).apps[0]!;
  const started: string[] = [];
  const gates: Array<{ name: string; release: (r: CommandResult) => void; signal: AbortSignal | undefined }> = [];
  const fx = {
    now: () => Date.now(),
    hook: (name: HookName, entry: HookEntry, signal?: AbortSignal) => new Promise<CommandResult | undefined>((resolve) => {
      started.push(`${name} ${entry.to.cfg}`);
      gates.push({ name, release: resolve, signal });
      signal?.addEventListener('abort', () => resolve({ ok: false, status: 'abandoned: the agent is stopping', output: '', aborted: true }));
    }),
  };
  const log = pino({ level: 'silent' });
  const hooks = new DeployHooks(app, fx, log);
  const verdict = (outcome: HistoryEntry['outcome'], cfg: string) => ({ outcome, to: { bin: null, cfg } }) as unknown as HistoryEntry;
  hooks.after(verdict('deployed', 'a'));
  hooks.after(verdict('refused', 'b'));
  hooks.after(verdict('rolled_back', 'c'));
  await waitFor('the first hook to start', () => gates.length === 1);
  let idle = false;
  void hooks.idle().then(() => { idle = true; });
  gates[0]!.release({ ok: true, status: 'exit 0', output: '' });
  await waitFor('the second hook to start', () => gates.length === 2);
  assert.deepEqual(started, ['afterDeploy a', 'afterRollback c'], 'none for a refusal; in order, one at a time');
  assert.equal(idle, false);
  hooks.after(verdict('deployed', 'd'));
  const closed = hooks.close();
  assert.equal(gates[1]!.signal?.aborted, true, 'the running one is told to end');
  await closed;
  await waitFor('idle() to resolve', () => idle);
  assert.deepEqual(started, ['afterDeploy a', 'afterRollback c'], 'the queued one never ran');
});
