import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { access, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { constants, existsSync } from 'node:fs';
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

/**
 * Compile app.c once per source hash and return the path of the executable.
 *
 * Output: `${os.tmpdir()}/relink-demo-app-<sha256[0..16]>/app`. Compiling into a
 * unique temp name and renaming it into place keeps concurrent test processes
 * from ever executing a half-written binary.
 */
export async function buildDemoApp(): Promise<string> {
  const source = await readFile(demoAppSource);
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const dir = path.join(os.tmpdir(), `relink-demo-app-${hash}`);
  const out = path.join(dir, 'app');
  if (await isExecutable(out)) return out;

  await mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `app.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
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

async function isExecutable(file: string): Promise<boolean> {
  try {
    await access(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
