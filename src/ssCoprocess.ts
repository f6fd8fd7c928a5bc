/**
 * `ss` asked through one small long-lived shell instead of a spawn per
 * question.
 *
 * A spawn from the agent forks the agent first (libuv: fork, then exec),
 * and forking a Node process of ~55 MB RSS costs it 25-35 ms of CPU each
 * time (measured with --cpu-prof over 21 gunicorn deploys: 1.6 s of the
 * agent's 5.9 s busy, all of it asking `ss` who accepted a health probe's
 * connection, src/proc.ts acceptedInode). That CPU is taken from the app
 * while it is busiest (a new generation booting beside the serving one).
 * Here the agent forks once, a /bin/sh that reads one question a line
 * (four integers, checked before they are written) and runs `ss` itself:
 * the fork per question is the shell's, a few hundred kilobytes.
 *
 * The shell is started on the first question and ends by itself after
 * IDLE_MS without one (its stdin is closed), so nothing runs between
 * deploys; it never holds the agent's event loop open. Any failure (no
 * /bin/sh, `ss` missing or failing, no answer within the timeout) answers
 * undefined, and the shell is stopped: the caller falls back as it did
 * when a spawn of `ss` failed.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

/** How long the shell waits for the next question before it is told to end (ms). */
const IDLE_MS = 10_000;
/** How long one answer may take (ms): as the spawn of `ss` it replaces. */
const ANSWER_MS = 2_000;

/** A line no output of `ss` starts with: the end of one answer, then its exit status. */
const END = '__relink_ss_end';

/** Reads `fam sport dport`; -4/-6 only when fam is 4 or 6. POSIX sh: dash and bash alike. */
const SCRIPT = `while read -r fam sport dport; do
  f=''; [ "$fam" = 4 ] && f=-4; [ "$fam" = 6 ] && f=-6
  ss $f -tnHe state connected "( sport = :$sport and dport = :$dport )"
  echo "${END} $?"
done`;

interface Pending {
  readonly resolve: (out: string | undefined) => void;
  readonly timer: NodeJS.Timeout;
}

export class SsCoprocess {
  readonly #idleMs: number;
  readonly #path: string;
  #child: ChildProcessWithoutNullStreams | undefined;
  #buffer = '';
  #lines: string[] = [];
  /** Questions asked, answered in order (the shell runs them one after another). */
  readonly #pending: Pending[] = [];
  #idle: NodeJS.Timeout | undefined;

  /**
   * `idleMs`: how long the shell waits for the next question before it is
   * told to end (default 10 s). `path`: the PATH it finds `ss` in (default
   * the agent's own).
   */
  constructor(opts: { readonly idleMs?: number; readonly path?: string } = {}) {
    this.#idleMs = opts.idleMs ?? IDLE_MS;
    this.#path = opts.path ?? process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin';
  }

  /** The shell's PID while it runs. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /**
   * `ss -tnHe state connected '( sport = :SPORT and dport = :DPORT )'`,
   * with `-4` or `-6` when `family` says so. Resolves with its standard
   * output, or undefined when it could not be had (see the module's
   * comment). Never rejects.
   */
  connected(family: 4 | 6 | undefined, sport: number, dport: number): Promise<string | undefined> {
    if (![sport, dport].every((n) => Number.isInteger(n) && n >= 0 && n <= 65_535)) return Promise.resolve(undefined);
    const child = this.#start();
    if (child === undefined) return Promise.resolve(undefined);
    clearTimeout(this.#idle);
    this.#idle = undefined;
    return new Promise((resolve) => {
      // Held while a question waits (a command with nothing else to do must not exit before its answer).
      const timer = setTimeout(() => this.#stop(), ANSWER_MS);
      this.#held(child, true);
      this.#pending.push({ resolve, timer });
      child.stdin.write(`${family ?? 0} ${sport} ${dport}\n`);
    });
  }

  /** Stop the shell now; questions still waiting are answered undefined. */
  close(): void {
    this.#stop();
  }

  #start(): ChildProcessWithoutNullStreams | undefined {
    if (this.#child !== undefined) return this.#child;
    let child: ChildProcessWithoutNullStreams;
    try {
      child = spawn('/bin/sh', ['-c', SCRIPT], { cwd: '/', env: { PATH: this.#path, LC_ALL: 'C' }, stdio: 'pipe' });
    } catch {
      return undefined;
    }
    this.#child = child;
    this.#buffer = '';
    this.#lines = [];
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => this.#read(child, chunk));
    child.stderr.resume();
    // A failed spawn (ENOENT) or a write to a shell that has ended.
    child.on('error', () => this.#ended(child));
    child.stdin.on('error', () => this.#ended(child));
    child.on('exit', () => this.#ended(child));
    // Never what keeps the agent running between questions.
    this.#held(child, false);
    return child;
  }

  /** Whether the shell keeps the event loop alive: only while a question waits for its answer. */
  #held(child: ChildProcessWithoutNullStreams, held: boolean): void {
    if (held) child.ref();
    else child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr] as unknown as Array<{ ref?: () => void; unref?: () => void }>) {
      if (held) s.ref?.();
      else s.unref?.();
    }
  }

  #read(child: ChildProcessWithoutNullStreams, chunk: string): void {
    if (child !== this.#child) return;
    this.#buffer += chunk;
    for (let nl = this.#buffer.indexOf('\n'); nl >= 0; nl = this.#buffer.indexOf('\n')) {
      const line = this.#buffer.slice(0, nl);
      this.#buffer = this.#buffer.slice(nl + 1);
      if (!line.startsWith(`${END} `)) {
        this.#lines.push(line);
        continue;
      }
      const out = this.#lines.join('\n');
      this.#lines = [];
      const p = this.#pending.shift();
      if (p === undefined) continue;
      clearTimeout(p.timer);
      p.resolve(line === `${END} 0` ? (out === '' ? '' : `${out}\n`) : undefined);
    }
    if (this.#pending.length === 0) this.#held(child, false);
    if (this.#pending.length === 0 && this.#idle === undefined) {
      this.#idle = setTimeout(() => this.#stop(false), this.#idleMs);
      this.#idle.unref();
    }
  }

  #ended(child: ChildProcessWithoutNullStreams): void {
    if (child !== this.#child) return;
    this.#stop();
  }

  /** Stop the shell: told to end (stdin closed) when idle, killed when it failed or hangs. */
  #stop(kill = true): void {
    const child = this.#child;
    this.#child = undefined;
    clearTimeout(this.#idle);
    this.#idle = undefined;
    for (const p of this.#pending.splice(0)) {
      clearTimeout(p.timer);
      p.resolve(undefined);
    }
    if (child !== undefined) {
      child.stdin.end();
      if (kill && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }
}
