/**
 * The on-disk layout of the original design, built from the demo app: used
 * by `relink demo` and by the tests, so both exercise the same thing an
 * operator would set up by hand.
 *
 *   <root>/<name>/release/app.1.0, app.2.0, cfg.1.0, cfg.2.0, current.conf
 *   <root>/config.json, <root>/state/
 */
import { chmod, copyFile, mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { writeFileAtomic } from '../atomicWrite.js';
import { buildDemoApp } from './build.js';

export interface DemoApp {
  readonly name: string;
  readonly dir: string;
  readonly releasesDir: string;
  readonly currentFile: string;
  readonly port: number;
  readonly url: string;
}

export interface LayoutOptions {
  readonly root: string;
  readonly name?: string;
  readonly releases?: readonly string[];
  /** "reexec" (endless-style, PID changes) or "inplace" (nginx-style). */
  readonly mode?: 'reexec' | 'inplace';
  readonly port?: number;
  /** Extra key=value lines for every cfg file. */
  readonly cfgExtra?: string;
  /** The demo app's executable; default: buildDemoApp()'s shared build. */
  readonly binary?: string;
}

/** A free TCP port on 127.0.0.1 (asked of the kernel, then released). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export async function makeApp(opts: LayoutOptions): Promise<DemoApp> {
  const name = opts.name ?? 'web';
  const dir = path.join(opts.root, name);
  const releasesDir = path.join(dir, 'release');
  const port = opts.port ?? (await freePort());
  const binary = opts.binary ?? (await buildDemoApp());
  await mkdir(releasesDir, { recursive: true });
  for (const r of opts.releases ?? ['1.0', '2.0']) {
    await writeRelease(releasesDir, r, binary, `port=${port}\nmode=${opts.mode ?? 'reexec'}\nmessage=hello from ${name} ${r}\n${opts.cfgExtra ?? ''}`);
  }
  return { name, dir, releasesDir, currentFile: path.join(releasesDir, 'current.conf'), port, url: `http://127.0.0.1:${port}/` };
}

/** app.<r> (a copy of the binary, so /proc/PID/exe tells releases apart) and cfg.<r>. */
export async function writeRelease(releasesDir: string, r: string, binary: string, cfg: string): Promise<void> {
  await copyFile(binary, path.join(releasesDir, `app.${r}`));
  await chmod(path.join(releasesDir, `app.${r}`), 0o755);
  await writeFile(path.join(releasesDir, `cfg.${r}`), cfg);
}

/** Point current.conf at release `r`, the way `mv` after scp does (temp + rename); returns the text written. */
/** Point current.conf at release `r` (its binary from release `bin`, default `r`: an in-place reload changes the config only). */
export async function setCurrent(app: DemoApp, r: string, bin = r): Promise<string> {
  const text = `${JSON.stringify({ 'bin.file': `app.${bin}`, 'cfg.file': `cfg.${r}` })}\n`;
  await writeFileAtomic(app.currentFile, text);
  return text;
}

export async function writeConfig(root: string, apps: readonly DemoApp[], extra: Record<string, unknown> = {}, appExtra: Record<string, unknown> = {}): Promise<string> {
  const file = path.join(root, 'config.json');
  // The demo and the tests run the app as whoever runs them; as root, the
  // agent wants that said explicitly (see launch.ts).
  const allowRoot = process.getuid?.() === 0 ? { allowRoot: true } : {};
  const config = { stateDir: path.join(root, 'state'), ...extra, apps: apps.map((a) => ({ name: a.name, dir: a.dir, ...allowRoot, ...appExtra })) };
  await writeFile(file, `${JSON.stringify(config, null, 2)}\n`);
  return file;
}
