/**
 * An app with good and bad releases, and the real agent on it, for the
 * health, rollback and supervision tests. Release names say what they do:
 *   1.0, 2.0   healthy
 *   crash      the binary exits at once (fail_start)
 *   sick       runs, but /healthz answers 503 forever
 *   dies       takes over, then exits 300 ms later (crashes right after the handoff)
 *   flaky      healthy for 1.5 s, then exits (a crash loop once deployed)
 *   pre        its config fails the preflight
 *   stay       reloads in place (mode=inplace): under reload.mode "reexec" it never hands over
 */
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { writeFileAtomic } from '../src/atomicWrite.js';
import { buildDemoApp } from '../src/demo/build.js';
import { get } from '../src/demo/demo.js';
import { freePort, writeRelease, writeConfig, type DemoApp } from '../src/demo/layout.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { reapAppsAfter, startAgent, tmpDir, waitFor, type AgentProc } from './helpers.js';

export interface Reply {
  release: string;
  message: string;
  pid: number;
  generation: number;
}

export interface Fixture {
  readonly root: string;
  readonly app: DemoApp;
  readonly config: string;
  readonly stateDir: string;
  agent: AgentProc;
}

const EXTRA: Record<string, string> = {
  crash: 'fail_start=1\n',
  sick: 'unhealthy=1\n',
  dies: 'exit_after_ms=300\n',
  flaky: 'exit_after_ms=1500\n',
  pre: 'preflight_fail=1\n',
  stay: 'mode=inplace\n',
};

export const PREFLIGHT = ['/bin/sh', '-c', 'if grep -q "^preflight_fail=1" "$1"; then echo "emerg: preflight_fail=1 in $1" >&2; exit 1; fi', 'preflight', '{cfg}'];

export async function fixture(t: TestContext, opts: { start?: string; supervise?: Record<string, unknown>; agent?: boolean } = {}): Promise<Fixture> {
  const root = await tmpDir(t);
  const binary = await buildDemoApp();
  const port = await freePort();
  const dir = path.join(root, 'web');
  const releasesDir = path.join(dir, 'release');
  reapAppsAfter(t, releasesDir);
  await mkdir(releasesDir, { recursive: true });
  for (const r of ['1.0', '2.0', 'crash', 'sick', 'dies', 'flaky', 'pre', 'stay']) {
    await writeRelease(releasesDir, r, binary, `port=${port}\nmode=reexec\nmessage=hello from web ${r}\n${EXTRA[r] ?? ''}`);
  }
  const app: DemoApp = { name: 'web', dir, releasesDir, currentFile: path.join(releasesDir, 'current.conf'), port, url: `http://127.0.0.1:${port}/` };
  await setCurrentText(app, opts.start ?? '1.0');
  const config = await writeConfig(root, [app], { reconcileMs: 1_000 }, {
    reload: { timeoutMs: 3_000 },
    health: { url: `${app.url}healthz`, settleMs: 500, deadlineMs: 3_000, intervalMs: 100, probeTimeoutMs: 500 },
    preflight: { command: PREFLIGHT, timeoutMs: 5_000 },
    supervise: { checkMs: 100, backoffMs: 100, maxBackoffMs: 400, stableMs: 3_000, maxRetries: 2, ...opts.supervise },
  });
  const f: Fixture = { root, app, config, stateDir: path.join(root, 'state'), agent: undefined as unknown as AgentProc };
  if (opts.agent !== false) {
    f.agent = startAgent(t, config);
    await nthEntry(f, 1);
  }
  return f;
}

export async function setCurrentText(app: DemoApp, r: string, extra: Record<string, string> = {}): Promise<string> {
  const text = `${JSON.stringify({ 'bin.file': `app.${r}`, 'cfg.file': `cfg.${r}`, ...extra })}\n`;
  await writeFileAtomic(app.currentFile, text);
  return text;
}

export async function ask(app: DemoApp): Promise<Reply> {
  return JSON.parse(await get(app.url)) as Reply;
}

/** Wait until the app answers from release `r`: by binary for re-exec apps, by config message for in-place ones. */
export async function servedBy(app: DemoApp, r: string, by: 'release' | 'message' = 'release'): Promise<Reply> {
  return waitFor(`${app.url} to serve ${r}`, async () => {
    const reply = await ask(app);
    const ok = by === 'release' ? reply.release === `app.${r}` : reply.message.endsWith(` ${r}`);
    return ok ? reply : undefined;
  });
}

/** Wait until the app answers from a process other than `oldPid` (a restart or a handoff). */
export async function servedByNewProcess(app: DemoApp, oldPid: number): Promise<Reply> {
  return waitFor(`a process other than ${oldPid} to answer`, async () => {
    const r = await ask(app).catch(() => undefined);
    return r !== undefined && r.pid !== oldPid ? r : undefined;
  });
}

export async function nthEntry(f: Fixture, n: number): Promise<HistoryEntry> {
  return waitFor(`history entry #${n}`, async () => (await readHistory(f.stateDir, 'web'))[n - 1], { timeoutMs: 20_000 });
}

export async function currentConf(app: DemoApp): Promise<Record<string, string>> {
  return JSON.parse(await readFile(app.currentFile, 'utf8')) as Record<string, string>;
}
