/**
 * The peers and tools the bench compares against, installed when missing
 * (Debian packages with apt-get, PM2 from npm into a cache folder, never
 * into the project), and the facts about the machine the figures come from.
 * A tool that cannot be had is reported, and what needs it is skipped.
 */
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Janitor } from './procs.js';

export const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
/** Builds and downloads the bench keeps between runs (npm ci clears it, and it is rebuilt). */
export const CACHE = path.join(ROOT, 'node_modules', '.cache', 'relink-bench');

/** PM2's version is pinned so that runs compare like with like. */
export const PM2_VERSION = '7.0.4';

const APT: Record<string, { packageName: string; check: () => Promise<boolean> }> = {
  go: { packageName: 'golang-go', check: () => onPath('go') },
  tableflip: { packageName: 'golang-github-cloudflare-tableflip-dev', check: () => exists('/usr/share/gocode/src/github.com/cloudflare/tableflip/upgrader.go') },
  nginx: { packageName: 'nginx-light', check: () => exists('/usr/sbin/nginx') },
  wrk: { packageName: 'wrk', check: () => onPath('wrk') },
  supervisor: { packageName: 'supervisor', check: async () => (await onPath('supervisord')) && (await onPath('supervisorctl')) },
  cc: { packageName: 'gcc', check: () => onPath('cc') },
  // Issue 11's rows: a plain Python server and gunicorn, and the socket-activated restart.
  python3: { packageName: 'python3', check: () => exists('/usr/bin/python3', constants.X_OK) },
  gunicorn: { packageName: 'gunicorn', check: () => exists('/usr/lib/python3/dist-packages/gunicorn/app/wsgiapp.py') },
  'socket-activate': { packageName: 'systemd', check: () => onPath('systemd-socket-activate') },
};

export type Tool = keyof typeof APT | 'pm2';

export interface Tools {
  readonly have: ReadonlySet<Tool>;
  /** Why a tool is missing, for the output and BENCHMARKS.md. */
  readonly missing: ReadonlyMap<Tool, string>;
  readonly pm2Bin: string;
  readonly versions: Readonly<Record<string, string>>;
}

async function exists(file: string, mode = constants.F_OK): Promise<boolean> {
  return access(file, mode).then(() => true, () => false);
}

async function onPath(cmd: string): Promise<boolean> {
  for (const dir of (process.env['PATH'] ?? '').split(':')) {
    if (dir !== '' && (await exists(path.join(dir, cmd), constants.X_OK))) return true;
  }
  return false;
}

export const pm2Bin = path.join(CACHE, 'pm2', 'node_modules', 'pm2', 'bin', 'pm2');

/**
 * Make sure the tools are there. apt-get runs only as root and only for
 * what is missing; while it runs, a policy-rc.d (if none exists) keeps the
 * packages from starting their services (nginx on port 80, a system-wide
 * supervisord) that this bench would then leave behind.
 */
export async function ensureTools(j: Janitor, log: (s: string) => void, install: boolean): Promise<Tools> {
  const missing = new Map<Tool, string>();
  const absent: string[] = [];
  for (const [tool, spec] of Object.entries(APT)) if (!(await spec.check())) absent.push(tool);
  if (absent.length > 0 && install) {
    if (process.getuid?.() !== 0) {
      for (const t of absent) missing.set(t as Tool, `not installed, and apt-get needs root (apt-get install ${APT[t]!.packageName})`);
    } else {
      const pkgs = absent.map((t) => APT[t]!.packageName);
      log(`installing ${pkgs.join(' ')} (apt-get)`);
      await aptInstall(j, pkgs, log);
    }
  }
  const have = new Set<Tool>();
  for (const [tool, spec] of Object.entries(APT)) {
    if (await spec.check()) have.add(tool as Tool);
    else if (!missing.has(tool as Tool)) missing.set(tool as Tool, install ? `apt-get install ${spec.packageName} failed (see above)` : `not installed (apt-get install ${spec.packageName}); --no-install given`);
  }

  if (!(await exists(pm2Bin)) && install) {
    log(`installing pm2@${PM2_VERSION} into ${path.relative(ROOT, path.join(CACHE, 'pm2'))} (npm)`);
    await mkdir(path.join(CACHE, 'pm2'), { recursive: true });
    const r = await j.run('npm', ['install', '--prefix', path.join(CACHE, 'pm2'), '--no-audit', '--no-fund', '--loglevel=error', `pm2@${PM2_VERSION}`], { timeoutMs: 300_000 });
    if (r.code !== 0) log(`npm install pm2 failed: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ')}`);
  }
  if (await exists(pm2Bin)) have.add('pm2');
  else missing.set('pm2', install ? `npm install pm2@${PM2_VERSION} failed (see above)` : `not installed; --no-install given`);

  return { have, missing, pm2Bin, versions: await versions(j, have) };
}

async function aptInstall(j: Janitor, pkgs: readonly string[], log: (s: string) => void): Promise<void> {
  const policy = '/usr/sbin/policy-rc.d';
  const ownPolicy = !(await exists(policy));
  if (ownPolicy) await writeFile(policy, '#!/bin/sh\n# relink bench: do not start services while installing\nexit 101\n', { mode: 0o755 });
  try {
    const env = { DEBIAN_FRONTEND: 'noninteractive' };
    const up = await j.run('apt-get', ['update'], { env, timeoutMs: 300_000 });
    if (up.code !== 0) log(`apt-get update failed: ${up.stderr.trim().split('\n').slice(-2).join(' | ')}`);
    const all = await j.run('apt-get', ['install', '-y', '--no-install-recommends', ...pkgs], { env, timeoutMs: 600_000 });
    if (all.code === 0) return;
    // One unavailable package fails the whole command: try them one by one.
    for (const p of pkgs) {
      const one = await j.run('apt-get', ['install', '-y', '--no-install-recommends', p], { env, timeoutMs: 600_000 });
      if (one.code !== 0) log(`apt-get install ${p} failed: ${one.stderr.trim().split('\n').slice(-2).join(' | ')}`);
    }
  } finally {
    if (ownPolicy) await rm(policy, { force: true });
  }
}

async function versions(j: Janitor, have: ReadonlySet<Tool>): Promise<Record<string, string>> {
  const v: Record<string, string> = { node: process.version };
  const dpkg = async (pkg: string): Promise<string> => (await j.run('dpkg-query', ['-W', '-f', '${Version}', pkg])).stdout.trim() || 'unknown';
  if (have.has('nginx')) v['nginx-light'] = await dpkg('nginx-light');
  if (have.has('go')) v['golang-go'] = (await j.run('go', ['version'])).stdout.trim().replace(/^go version /, '');
  if (have.has('tableflip')) v['tableflip (Debian)'] = await dpkg('golang-github-cloudflare-tableflip-dev');
  if (have.has('wrk')) v['wrk'] = await dpkg('wrk');
  if (have.has('supervisor')) v['supervisor'] = await dpkg('supervisor');
  if (have.has('python3')) v['python3'] = await dpkg('python3');
  if (have.has('gunicorn')) v['gunicorn'] = await dpkg('gunicorn');
  if (have.has('socket-activate')) v['systemd (systemd-socket-activate)'] = await dpkg('systemd');
  if (have.has('pm2')) {
    const pkg = JSON.parse(await readFile(path.join(CACHE, 'pm2', 'node_modules', 'pm2', 'package.json'), 'utf8')) as { version: string };
    v['pm2'] = pkg.version;
  }
  return v;
}

export interface Machine {
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly kernel: string;
  readonly os: string;
  readonly fs: string;
  readonly commit: string;
  readonly date: string;
  readonly loadBefore: readonly number[];
}

export async function machine(j: Janitor, dir: string): Promise<Machine> {
  const osRelease = await readFile('/etc/os-release', 'utf8').catch(() => '');
  const head = (await j.run('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT })).stdout.trim() || 'unknown';
  const dirty = (await j.run('git', ['status', '--porcelain', '--untracked-files=no', '--', 'src'], { cwd: ROOT })).stdout.trim() !== '';
  const df = (await j.run('df', ['--output=fstype', dir])).stdout.trim().split('\n').pop() ?? 'unknown';
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    os: /^PRETTY_NAME="?([^"\n]*)/m.exec(osRelease)?.[1] ?? os.type(),
    fs: df,
    commit: dirty ? `${head} + uncommitted changes in src/` : head,
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    loadBefore: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}
