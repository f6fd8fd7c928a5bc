import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import { existsSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Absolute path of the demo app's C source (next to this file). */
// From src/demo/ (tsx) it sits beside this file; from the compiled dist/demo/
// it is found in src/demo/, which the package ships (tsc copies no .c files).
export const demoAppSource: string = [new URL('./app.c', import.meta.url), new URL('../../src/demo/app.c', import.meta.url)]
  .map((u) => fileURLToPath(u))
  .find((p) => existsSync(p)) ?? fileURLToPath(new URL('./app.c', import.meta.url));

export interface BuildOptions {
  /**
   * Build into this folder (created 0700 if missing) instead of the shared
   * cache: `relink demo` builds inside its own temp folder, so nothing of it
   * stays in the temp folder after it cleaned up.
   */
  readonly dir?: string;
}

/**
 * Compile app.c and return the path of the executable.
 *
 * Without `dir`: once per source hash, cached in
 * `${os.tmpdir()}/relink-demo-app-<sha256[0..16]>/app` for the tests and
 * the bench. That name is predictable and the temp folder is everybody's,
 * and the tests run the binary as root: so the cache is used only if the
 * folder and the file are the caller's own, not symlinks, and writable by
 * nobody else. Otherwise (another user made that folder first) the app is
 * built into a fresh private folder (0700, removed when this process
 * exits) and the planted file is never run. Compiling into a unique temp
 * name and renaming it into place keeps concurrent test processes from ever
 * executing a half-written binary.
 *
 * Throws an Error naming the compiler's complaint when the build fails.
 */
export async function buildDemoApp(opts: BuildOptions = {}): Promise<string> {
  if (opts.dir !== undefined) {
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    return compile(path.join(opts.dir, 'app'));
  }
  const source = await readFile(demoAppSource);
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const dir = path.join(os.tmpdir(), `relink-demo-app-${hash}`);
  const out = path.join(dir, 'app');
  await mkdir(dir, { mode: 0o700 }).catch((err: unknown) => ((err as NodeJS.ErrnoException).code === 'EEXIST' ? undefined : Promise.reject(err)));
  if (!(await mineAlone(dir, 'folder'))) return privateBuild();
  const existing = await lstat(out).catch(() => undefined);
  if (existing !== undefined) {
    if (await mineAlone(out, 'file')) return out;
    // Our own folder, so only we could have put it there: replace it.
    await rm(out, { force: true, recursive: true });
  }
  return compile(out);
}

/**
 * Is `p` (not followed if a symlink) a folder or regular file owned by this
 * process's user, that nobody else may write?
 */
async function mineAlone(p: string, kind: 'folder' | 'file'): Promise<boolean> {
  const st = await lstat(p).catch(() => undefined);
  if (st === undefined) return false;
  const isKind = kind === 'folder' ? st.isDirectory() : st.isFile();
  return isKind && st.uid === (process.geteuid?.() ?? st.uid) && (st.mode & 0o022) === 0;
}

const privateDirs = new Set<string>();

async function privateBuild(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'relink-demo-app-private-'));
  if (privateDirs.size === 0) process.once('exit', () => { for (const d of privateDirs) rmSync(d, { recursive: true, force: true }); });
  privateDirs.add(dir);
  return compile(path.join(dir, 'app'));
}

async function compile(out: string): Promise<string> {
  const tmp = path.join(path.dirname(out), `app.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  const cc = process.env['CC'] || 'cc';
  try {
    await execFileAsync(cc, ['-O2', '-Wall', '-o', tmp, demoAppSource], { maxBuffer: 4 * 1024 * 1024 });
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { force: true });
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const detail = e.code === 'ENOENT' ? `'${cc}' not found` : (e.stderr?.trim() || e.message);
    throw new Error(
      `relink demo app: a C compiler is needed to build ${demoAppSource} (e.g. apt-get install gcc, or set CC): ${detail}`,
      { cause: err },
    );
  }
  return out;
}
