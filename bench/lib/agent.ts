/**
 * The agent as a real process, run as systemd runs it (`relink agent`: node
 * with the flags on dist/cli/main.js's #! line), its JSON log lines, and the
 * layout of an app it manages. The bench waits on log lines, never on sleeps.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, rename, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { ConfigSchema } from '../../src/config.js';
import { nowMs, stopChild, type Janitor } from './procs.js';

export interface LogLine {
  readonly level: string;
  readonly msg: string;
  readonly time?: string;
  readonly outcome?: string;
  readonly code?: string | null;
  readonly reason?: string | null;
  readonly durationMs?: number;
  readonly [key: string]: unknown;
}

export class AgentProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  /** Log lines that carry a deploy outcome (one per apply attempt), in order. */
  readonly outcomes: Array<LogLine & { receivedAt: number }> = [];
  readonly #waiters = new Set<() => void>();
  readonly #exited: Promise<number | null>;

  /**
   * `nodeFlags` go to node itself, before the script (e.g. V8 heap
   * settings); by default those of the script's #! line, as installed.
   */
  constructor(j: Janitor, main: string, config: string, nodeFlags: readonly string[] = shebangFlags(main)) {
    this.child = j.spawn(process.execPath, [...nodeFlags, main, 'agent', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#exited = new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
    createInterface({ input: this.child.stdout! }).on('line', (l) => {
      const receivedAt = nowMs();
      let line: LogLine;
      try {
        line = JSON.parse(l) as LogLine;
      } catch {
        line = { level: 'raw', msg: l };
      }
      this.lines.push(line);
      if (typeof line.outcome === 'string') this.outcomes.push({ ...line, receivedAt });
      for (const w of this.#waiters) w();
    });
    createInterface({ input: this.child.stderr! }).on('line', (l) => this.lines.push({ level: 'stderr', msg: l }));
    this.child.once('exit', () => {
      for (const w of this.#waiters) w();
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The n-th outcome line (1-based), waiting up to `timeoutMs` for it. */
  outcome(n: number, timeoutMs = 30_000): Promise<LogLine & { receivedAt: number }> {
    return this.#until(`outcome #${n}`, () => this.outcomes[n - 1], timeoutMs);
  }

  /** The first log line from index `from` on that satisfies `pred`. */
  line(what: string, pred: (l: LogLine) => boolean, from = 0, timeoutMs = 30_000): Promise<LogLine> {
    return this.#until(what, () => this.lines.slice(from).find(pred), timeoutMs);
  }

  #until<T>(what: string, probe: () => T | undefined, timeoutMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const v = probe();
        if (v !== undefined) {
          finish();
          resolve(v);
        } else if (this.child.exitCode !== null || this.child.signalCode !== null) {
          finish();
          reject(new Error(`the agent exited (${this.child.exitCode ?? this.child.signalCode}) while waiting for ${what}; last lines:\n${this.tail()}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last lines:\n${this.tail()}`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      check();
    });
  }

  tail(n = 8): string {
    return this.lines.slice(-n).map((l) => `  ${l.level} ${l.msg}${l.reason ? `: ${l.reason}` : ''}`).join('\n');
  }

  async stop(): Promise<void> {
    await stopChild(this.child);
    await this.#exited;
  }
}

export interface AppLayout {
  readonly name: string;
  readonly dir: string;
  readonly releasesDir: string;
  readonly currentFile: string;
  readonly port: number;
}

/**
 * The original layout: <dir>/release/app.R (a copy of `binary`, so
 * /proc/PID/exe tells releases apart) and cfg.R for every release R.
 */
export async function makeLayout(dir: string, name: string, port: number, binary: string, cfgs: Readonly<Record<string, string>>): Promise<AppLayout> {
  const releasesDir = path.join(dir, 'release');
  await mkdir(releasesDir, { recursive: true });
  for (const [r, cfg] of Object.entries(cfgs)) {
    await copyFile(binary, path.join(releasesDir, `app.${r}`));
    await chmod(path.join(releasesDir, `app.${r}`), 0o755);
    await writeFile(path.join(releasesDir, `cfg.${r}`), cfg);
  }
  return { name, dir, releasesDir, currentFile: path.join(releasesDir, 'current.conf'), port };
}

/**
 * current.conf for release `r`; `bin` names the release whose binary it
 * runs (default `r`). An app reloaded in place keeps its executable, and the
 * agent refuses a new bin.file under "inplace" (issue 11): its releases
 * change the config only, so `bin` stays "1.0" for it.
 */
export function currentText(r: string, bin = r): string {
  return `${JSON.stringify({ 'bin.file': `app.${bin}`, 'cfg.file': `cfg.${r}` })}\n`;
}

/** current.conf the way `mv` after an upload writes it: a temp file renamed over. */
export async function writeCurrent(app: AppLayout, r: string, bin = r): Promise<void> {
  const tmp = path.join(app.releasesDir, `.current.conf.bench-${process.pid}`);
  await writeFile(tmp, currentText(r, bin));
  await rename(tmp, app.currentFile);
}

/** Point app.bin and app.cfg at release `r` by hand (for the peers, which know no current.conf): temp link + rename. */
export async function switchLinks(app: AppLayout, r: string, bin = r): Promise<void> {
  for (const [link, target] of [['app.cfg', `release/cfg.${r}`], ['app.bin', `release/app.${bin}`]] as const) {
    const tmp = path.join(app.dir, `.${link}.bench-${process.pid}`);
    await symlink(target, tmp);
    await rename(tmp, path.join(app.dir, link));
  }
}

export async function writeAgentConfig(file: string, config: Record<string, unknown>): Promise<string> {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, `${JSON.stringify(config, null, 2)}\n`);
  return file;
}

/**
 * Keys every benchmarked app gets. The bench runs as root (it installs
 * packages), and an agent running as root refuses to start an app as root
 * unless told to (when its config knows "allowRoot"): the apps here are
 * throw-away test servers on 127.0.0.1.
 */
export function appBase(): Record<string, unknown> {
  const probe = { apps: [{ name: 'probe', dir: '/probe', allowRoot: true }] };
  return process.getuid?.() === 0 && ConfigSchema.safeParse(probe).success ? { allowRoot: true } : {};
}

/** The node flags on a script's `#!/usr/bin/env -S node ...` line: what running it as a command passes. */
export function shebangFlags(main: string): string[] {
  const first = readFileSync(main, 'utf8').split('\n', 1)[0] ?? '';
  const m = /^#!\/usr\/bin\/env\s+(?:-S\s+)?node((?:\s+\S+)*)\s*$/.exec(first);
  return m?.[1]?.trim().split(/\s+/).filter(Boolean) ?? [];
}
