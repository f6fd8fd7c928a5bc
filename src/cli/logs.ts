import { spawn } from 'node:child_process';
import { lstat } from 'node:fs/promises';
import { HOST_JOURNAL } from '../appoutput.js';
import type { AppConfig } from '../config.js';
import { RelinkError } from '../errors.js';
import { journalPresent } from '../journalstream.js';
import { follow, logParts, Printer, readLast } from '../logfollow.js';
import { detachedWriters } from '../logorphan.js';
import { readStat } from '../proc.js';
import { readAppState } from '../state.js';
import { resolveRunAs } from '../user.js';
import type { SpecOf } from './commands.js';
import { EXIT, loadFor, selectApp, UsageError, type IO } from './io.js';
import type { Command } from './spec.js';

/** How often -f looks at the log files (ms); tail -F looks every second. */
const POLL_MS = 250;

export const logsCommand: Command<SpecOf<'logs'>> = {
  async run({ values, positionals }, io, stop) {
    const named = positionals.APP;
    if (named !== undefined && values.app !== undefined && values.app !== named) throw new UsageError(`--app ${values.app} and ${named} name two apps`);
    const lines = values.lines;
    const sinceMs = values.since === undefined ? undefined : parseSince(values.since, Date.now());
    const config = await loadFor(values.config, io);
    const app = selectApp(config, values.app ?? named);
    const want = { lines: lines ?? (sinceMs === undefined ? 10 : Infinity), sinceMs, follow: values.follow === true };
    if (app.log.journal && await journalPresent(HOST_JOURNAL.socket)) return fromJournal(app, want, io, stop);
    return fromFiles(app, config.stateDir, want, io, stop);
  },
};

interface Want {
  readonly lines: number;
  readonly sinceMs: number | undefined;
  readonly follow: boolean;
}

/** journalctl -t NAME, only lines the app's user wrote (an identifier is anybody's to use). */
async function fromJournal(app: AppConfig, want: Want, io: IO, stop: Promise<string>): Promise<number> {
  const uid = (await resolveRunAs(app)).uid;
  const args = ['-t', app.name, `_UID=${uid}`, '-o', 'cat', '--no-pager',
    ...(want.lines === Infinity ? [] : ['-n', String(want.lines)]),
    ...(want.sinceMs === undefined ? [] : [`--since=@${Math.floor(want.sinceMs / 1000)}`]),
    ...(want.follow ? ['-f'] : [])];
  // A start journald refused wrote to the file: say there is one.
  const file = await lstat(app.logFile).catch(() => undefined);
  if (file?.isFile() && file.size > 0) io.stderr(`relink logs: note: ${app.logFile} holds output too (of a start journald did not take); relink logs reads the journal\n`);
  return new Promise<number>((resolve, reject) => {
    const child = spawn('journalctl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.setEncoding('utf8').on('data', (c: string) => io.stdout(c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => io.stderr(c));
    let stopped = false;
    void stop.then(() => {
      stopped = true;
      child.kill('SIGTERM');
    });
    child.once('error', (err) => reject(new RelinkError('FILE_UNREADABLE', `cannot run journalctl: ${(err as NodeJS.ErrnoException).code ?? err.message}`, { rule: 'journalctl (systemd) must be installed', found: (err as NodeJS.ErrnoException).code ?? err.message })));
    child.once('close', (code) => resolve(stopped || code === 0 ? EXIT.ok : EXIT.failed));
  });
}

async function fromFiles(app: AppConfig, stateDir: string, want: Want, io: IO, stop: Promise<string>): Promise<number> {
  const file = app.logFile;
  const notice = (text: string) => io.stderr(`relink logs: ${text}\n`);
  await noteDetached(app, stateDir, notice);
  if (!want.follow && (await logParts(file)).length === 0) {
    notice(`nothing logged yet (no ${file})`);
    return EXIT.ok;
  }
  // One printer for the rotated files and the log: a character split by a rotation's cut comes out whole.
  const printer = new Printer(io.stdout);
  const at = await readLast(file, want, printer, (ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  await follow(file, at, printer, want.follow ? stop : undefined, { pollMs: POLL_MS, notice });
  return EXIT.ok;
}

/**
 * A process of the app (as its state file knows them) writing to the log
 * deleted or renamed under it (src/logorphan.ts): what it writes is not in
 * the files read here. Said before them; /proc shows a process's
 * descriptors to root and to its own user only (README "App logs").
 */
async function noteDetached(app: AppConfig, stateDir: string, notice: (text: string) => void): Promise<void> {
  const saved = await readAppState(stateDir, app.name).catch(() => undefined);
  const live = (saved?.lineage?.members ?? []).filter((m) => readStat(m.pid)?.startTime === m.startTime).map((m) => m.pid);
  for (const d of detachedWriters(live, app.logFile)) {
    notice(`note: pid ${d.pid} writes its output to ${d.name} (${app.logFile} was ${d.deleted ? 'deleted' : 'renamed'} while it ran), which is not read here; relink restart ${app.name} makes the app write to ${app.logFile} again`);
  }
}

const UNITS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * --since: an ISO 8601 date and time (local unless it says Z or an
 * offset), a date (local midnight), @EPOCH_SECONDS, or a duration ago
 * (90s, 10m, 2h, 3d; a leading "-" allowed). Epoch ms; UsageError otherwise.
 */
export function parseSince(text: string, now: number): number {
  const t = text.trim();
  const ago = /^-?(\d{1,9})\s*([smhd])$/.exec(t);
  if (ago !== null) return now - Number(ago[1]) * UNITS[ago[2]!]!;
  const epoch = /^@(\d{1,12}(?:\.\d{1,6})?)$/.exec(t);
  if (epoch !== null) return Math.round(Number(epoch[1]) * 1000);
  const date = /^(\d{4})-(\d{2})-(\d{2})$/.exec(t);
  if (date !== null) {
    const d = new Date(Number(date[1]), Number(date[2]) - 1, Number(date[3]));
    if (d.getMonth() === Number(date[2]) - 1) return d.getTime();
  }
  // Date.parse reads a date-time without a zone as local time, with Z or an offset as given.
  if (/^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:?\d{2})?$/.test(t)) {
    const ms = Date.parse(t.replace(' ', 'T'));
    if (!Number.isNaN(ms)) return ms;
  }
  throw new UsageError(`--since must be a time such as 2026-11-30T14:05, 2026-11-30, @1764511500 or 10m (ago) (found: ${JSON.stringify(text)})`);
}
