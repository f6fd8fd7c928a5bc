/**
 * What the bench runs, built from source: the agent as `relink agent` runs
 * in production (compiled JavaScript, no tsx loader in the footprint), and
 * the two small test apps. Each build is cached by the hash of its sources.
 */
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Janitor } from './procs.js';
import { CACHE, ROOT } from './tools.js';

async function filesUnder(dir: string, ext: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p, ext)));
    else if (e.name.endsWith(ext)) out.push(p);
  }
  return out.sort();
}

async function hashFiles(files: readonly string[]): Promise<string> {
  const h = createHash('sha256');
  for (const f of files) h.update(f).update('\0').update(await readFile(f)).update('\0');
  return h.digest('hex').slice(0, 16);
}

const isFile = (p: string): Promise<boolean> => stat(p).then((s) => s.isFile(), () => false);

export interface AgentBuild {
  /** node + this file + `agent --config FILE` is the production agent. */
  readonly main: string;
  /** tsc's complaints about the working tree, if any (the build is used anyway). */
  readonly warnings: string;
}

/**
 * Compile src/ into the cache with the project's own build config. Other
 * people may be editing src/ right now: type errors are reported but do not
 * stop the run as long as JavaScript was emitted.
 */
export async function buildAgent(j: Janitor): Promise<AgentBuild> {
  const sources = [...(await filesUnder(path.join(ROOT, 'src'), '.ts')), path.join(ROOT, 'package.json'), path.join(ROOT, 'tsconfig.build.json')];
  const out = path.join(CACHE, `agent-${await hashFiles(sources)}`);
  const main = path.join(out, 'dist', 'cli', 'main.js');
  if (await isFile(main)) return { main, warnings: '' };
  const tmp = `${out}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  const version = (JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  // dist/version.js reads ../package.json; and outside the project's own
  // package.json scope the output needs "type": "module" to load as ESM.
  await writeFile(path.join(tmp, 'package.json'), `${JSON.stringify({ name: 'relink-bench-agent', private: true, version, type: 'module' })}\n`);
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = await j.run(process.execPath, [tsc, '-p', path.join(ROOT, 'tsconfig.build.json'), '--outDir', path.join(tmp, 'dist'), '--sourceMap', 'false'], { cwd: ROOT, timeoutMs: 300_000 });
  if (!(await isFile(path.join(tmp, 'dist', 'cli', 'main.js')))) {
    throw new Error(`building the agent failed:\n${r.stdout}${r.stderr}`);
  }
  await rm(out, { recursive: true, force: true });
  await rename(tmp, out);
  return { main, warnings: r.code === 0 ? '' : (r.stdout + r.stderr).trim() };
}

/** bench/apps/stamp.c, the signal-timestamping app. */
export async function buildStamp(j: Janitor): Promise<string> {
  const src = path.join(ROOT, 'bench', 'apps', 'stamp.c');
  const out = path.join(CACHE, `stamp-${await hashFiles([src])}`);
  if (await isFile(out)) return out;
  await mkdir(CACHE, { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  const r = await j.run(process.env['CC'] || 'cc', ['-O2', '-Wall', '-o', tmp, src]);
  if (r.code !== 0) throw new Error(`cc ${src} failed: ${r.stderr}`);
  await rename(tmp, out);
  return out;
}

/**
 * bench/apps/tableflip/main.go, built offline in GOPATH mode against
 * Debian's packaged tableflip (DESIGN.md): no module proxy, no network.
 */
export async function buildTableflip(j: Janitor): Promise<string> {
  const src = path.join(ROOT, 'bench', 'apps', 'tableflip', 'main.go');
  const out = path.join(CACHE, `tableflip-${await hashFiles([src])}`);
  if (await isFile(out)) return out;
  const work = path.join(CACHE, 'go', `src-${process.pid}`);
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  await copyFile(src, path.join(work, 'main.go'));
  const env = {
    GO111MODULE: 'off',
    GOPATH: `${path.join(CACHE, 'go', 'gopath')}:/usr/share/gocode`,
    GOPROXY: 'off',
    GOFLAGS: '',
    GOCACHE: path.join(CACHE, 'go', 'cache'),
    CGO_ENABLED: '0',
  };
  try {
    const r = await j.run('go', ['build', '-o', `${out}.tmp`, '.'], { cwd: work, env, timeoutMs: 300_000 });
    if (r.code !== 0) throw new Error(`go build (tableflip app) failed: ${r.stderr}`);
    await rename(`${out}.tmp`, out);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return out;
}

/**
 * The agent as it was at `commit` (for a before/after figure in one run):
 * its src/ and build config from git, compiled with this tree's TypeScript
 * into the cache, with that commit's own runtime dependencies installed
 * beside it (npm ci --omit=dev from its lock file): this tree's may differ
 * (chokidar was dropped in issue 9).
 */
export async function buildAgentAt(j: Janitor, commit: string): Promise<AgentBuild> {
  const out = path.join(CACHE, `agent-at-${commit}`);
  const main = path.join(out, 'dist', 'cli', 'main.js');
  if (await isFile(main)) return { main, warnings: '' };
  const tmp = `${out}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(path.join(tmp, 'tree'), { recursive: true });
  const archive = path.join(tmp, 'tree.tar');
  const git = await j.run('git', ['-C', ROOT, 'archive', '--output', archive, commit, 'src', 'package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json'], { timeoutMs: 60_000 });
  if (git.code !== 0) throw new Error(`git archive ${commit}: ${git.stderr}`);
  const tar = await j.run('tar', ['-x', '-f', archive, '-C', path.join(tmp, 'tree')], { timeoutMs: 60_000 });
  if (tar.code !== 0) throw new Error(`tar: ${tar.stderr}`);
  // Its own package.json (version, "type": "module", dependencies) and lock file, and its dependencies.
  await copyFile(path.join(tmp, 'tree', 'package.json'), path.join(tmp, 'package.json'));
  await copyFile(path.join(tmp, 'tree', 'package-lock.json'), path.join(tmp, 'package-lock.json'));
  const npm = await j.run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: tmp, timeoutMs: 300_000 });
  if (npm.code !== 0) throw new Error(`npm ci for the agent at ${commit}: ${npm.stderr}`);
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = await j.run(process.execPath, [tsc, '-p', path.join(tmp, 'tree', 'tsconfig.build.json'), '--outDir', path.join(tmp, 'dist'), '--sourceMap', 'false'], { cwd: ROOT, timeoutMs: 300_000 });
  if (!(await isFile(path.join(tmp, 'dist', 'cli', 'main.js')))) throw new Error(`building the agent at ${commit} failed:\n${r.stdout}${r.stderr}`);
  await rm(path.join(tmp, 'tree'), { recursive: true, force: true });
  await rm(archive, { force: true });
  await rm(out, { recursive: true, force: true });
  await rename(tmp, out);
  return { main, warnings: r.code === 0 ? '' : (r.stdout + r.stderr).trim() };
}
