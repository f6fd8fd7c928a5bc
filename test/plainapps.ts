/**
 * What the tests of apps run by the real agent under load share
 * (test/strategies.test.ts, test/operate.test.ts): app folders whose
 * releases are copies of a test app, the agent config for them, the n-th
 * journal entry, and wrk with a new connection per request, whose socket
 * errors and non-2xx answers must all be 0.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { writeFileAtomic } from '../src/atomicWrite.js';
import { freePort } from '../src/demo/layout.js';
import { readHistory, type HistoryEntry } from '../src/history.js';
import { defer, get, ROOT, waitFor } from './helpers.js';

export const PLAIN = path.join(ROOT, 'test', 'apps', 'plainapp.py');
export const FDAPP = path.join(ROOT, 'test', 'apps', 'fdapp.cjs');

export interface App {
  readonly name: string;
  readonly dir: string;
  readonly releasesDir: string;
  readonly port: number;
  /** Releases in a folder each (release/R/app, release/R/app.cfg, release/R/static.txt: issue 15), else files (app.R, cfg.R). */
  readonly folders: boolean;
}

/** The app config keys of the folders layout: releaseNames, the `current` link, and a command run from it. */
export const FOLDERS_CONFIG = {
  releaseNames: { bin: '{release}/app', cfg: '{release}/app.cfg' },
  links: { dir: 'current' },
  command: ['./current/app', '-c', 'current/app.cfg'],
} as const;

export async function servedBy(port: number, release: string): Promise<{ release: string; pid: number; fds: number }> {
  return waitFor(`port ${port} to serve ${release}`, async () => {
    const r = await get(`http://127.0.0.1:${port}/`).then((x) => JSON.parse(x.body) as { release: string; pid: number; fds: number }, () => undefined);
    return r?.release === release ? r : undefined;
  }, { timeoutMs: 20_000 });
}

/** The files of release `r` of `app` (relative to its releases folder, as current.conf names them). */
export function filesOf(app: App, r: string): { bin: string; cfg: string } {
  return app.folders ? { bin: `${r}/app`, cfg: `${r}/app.cfg` } : { bin: `app.${r}`, cfg: `cfg.${r}` };
}

/**
 * An app folder whose releases are copies of `file`, each with its cfg
 * lines; with `folders`, each release in a folder of its own with a
 * static.txt saying "static R".
 */
export async function makeApp(root: string, name: string, file: string, rs: Record<string, string>, opts: { readonly folders?: boolean } = {}): Promise<App> {
  const dir = path.join(root, name);
  const releasesDir = path.join(dir, 'release');
  const port = await freePort();
  const app: App = { name, dir, releasesDir, port, folders: opts.folders === true };
  await mkdir(releasesDir, { recursive: true });
  for (const [r, extra] of Object.entries(rs)) {
    const f = filesOf(app, r);
    if (app.folders) {
      await mkdir(path.join(releasesDir, r));
      await writeFile(path.join(releasesDir, r, 'static.txt'), `static ${r}\n`);
    }
    await copyFile(file, path.join(releasesDir, f.bin));
    await chmod(path.join(releasesDir, f.bin), 0o755);
    await writeFile(path.join(releasesDir, f.cfg), `port=${port}\nmessage=${name} ${r}\n${extra}`);
  }
  return app;
}

export async function setCurrent(app: App, r: string): Promise<void> {
  const f = filesOf(app, r);
  await writeFileAtomic(path.join(app.releasesDir, 'current.conf'), `${JSON.stringify({ 'bin.file': f.bin, 'cfg.file': f.cfg })}\n`);
}

export async function configFor(root: string, app: App, extra: Record<string, unknown>): Promise<string> {
  const file = path.join(root, 'config.json');
  await writeFile(file, JSON.stringify({
    stateDir: path.join(root, 'state'),
    reconcileMs: 1_000,
    apps: [{
      name: app.name,
      dir: app.dir,
      ...(process.getuid?.() === 0 ? { allowRoot: true } : {}),
      reload: { timeoutMs: 5_000 },
      health: { url: `http://127.0.0.1:${app.port}/healthz`, settleMs: 200, deadlineMs: 4_000, intervalMs: 50 },
      supervise: { checkMs: 100, backoffMs: 100, maxBackoffMs: 400, stableMs: 3_000, maxRetries: 3 },
      stop: { signal: 'SIGTERM', timeoutMs: 5_000 },
      ...extra,
    }],
  }, null, 2));
  return file;
}

export async function nth(root: string, app: string, n: number): Promise<HistoryEntry> {
  let seen: readonly HistoryEntry[] = [];
  return waitFor(`${app}: journal entry #${n}`, async () => (seen = await readHistory(path.join(root, 'state'), app))[n - 1], { timeoutMs: 30_000 }).catch((err: unknown) => {
    // What was journaled by then, each entry's time and verdict.
    throw new Error(`${(err as Error).message}; journaled: ${seen.map((e) => `${e.time} ${e.outcome} ${e.code ?? ''}`.trim()).join(', ') || 'nothing'}`);
  });
}

export interface WrkResult {
  requests: number;
  connect: number;
  read: number;
  write: number;
  timeout: number;
  non2xx: number;
  text: string;
}

/** wrk with a new connection per request until stopped (SIGINT makes it print its summary). */
export function load(t: TestContext, port: number): { stop: () => Promise<WrkResult> } {
  const child = spawn('wrk', ['-t', '1', '-c', '8', '-d', '300s', '-H', 'Connection: close', `http://127.0.0.1:${port}/`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout.on('data', (d) => { text += String(d); });
  child.stderr.on('data', (d) => { text += String(d); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  defer(t, () => { child.kill('SIGKILL'); });
  return {
    stop: async () => {
      child.kill('SIGINT');
      await exited;
      const n = (re: RegExp): number => Number(re.exec(text)?.[1] ?? 0);
      const errs = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
      return {
        requests: n(/(\d+) requests in/),
        connect: Number(errs?.[1] ?? 0),
        read: Number(errs?.[2] ?? 0),
        write: Number(errs?.[3] ?? 0),
        timeout: Number(errs?.[4] ?? 0),
        non2xx: n(/Non-2xx or 3xx responses: (\d+)/),
        text,
      };
    },
  };
}

export function assertNoErrors(r: WrkResult): void {
  assert.ok(r.requests > 100, `wrk made too few requests to prove anything: ${r.text}`);
  assert.deepEqual({ connect: r.connect, read: r.read, write: r.write, timeout: r.timeout, non2xx: r.non2xx }, { connect: 0, read: 0, write: 0, timeout: 0, non2xx: 0 }, r.text);
}
