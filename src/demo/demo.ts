/**
 * `relink demo`: the agent on a self-contained demo in a temp folder. Three
 * releases of the demo web app (3.0 fails its health check), the real agent,
 * a scripted deploy, a refused typo, an automatic rollback and a rollback by
 * hand, then (unless told to exit) the agent stays up for the reader to edit
 * current.conf by hand. Everything, the app's build included, lives in that
 * one folder and is removed at the end.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { Agent } from '../agent.js';
import { loadConfig } from '../config.js';
import { hashText } from '../current.js';
import { readHistory, type HistoryEntry } from '../history.js';
import { createLogger } from '../log.js';
import { sendSignal } from '../proc.js';
import { buildDemoApp } from './build.js';
import { makeApp, setCurrent, writeConfig, writeRelease } from './layout.js';

export interface DemoOptions {
  /** Stop after the scripted tour instead of waiting for `stop`. */
  readonly exitAfterTour: boolean;
  readonly port?: number | undefined;
  readonly print: (line: string) => void;
  readonly stop: Promise<unknown>;
}

export function get(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve(body.trim()));
    });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error(`GET ${url} timed out`)));
  });
}

/** Requests one after another until stopped (stop is idempotent): what a visitor sees during a deploy. */
function keepAsking(url: string): { stop(): Promise<{ failed: number; byRelease: Map<string, number> }> } {
  let stopped = false;
  const byRelease = new Map<string, number>();
  let failed = 0;
  const loop = (async () => {
    while (!stopped) {
      try {
        const { release } = JSON.parse(await get(url)) as { release: string };
        byRelease.set(release, (byRelease.get(release) ?? 0) + 1);
      } catch {
        failed += 1;
      }
      // Paced like a steady visitor, not a load test: the demo shares the machine.
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return { failed, byRelease };
    },
  };
}

export async function runDemo(opts: DemoOptions): Promise<void> {
  const say = opts.print;
  const root = await mkdtemp(path.join(os.tmpdir(), 'relink-demo-'));
  let agent: Agent | undefined;
  try {
    say(`Building the demo app and three releases in ${root} ...`);
    // Built inside the demo's own private folder: nothing of it stays in the
    // temp folder, and nothing another user left there is run.
    const binary = await buildDemoApp({ dir: path.join(root, 'build') });
    const app = await makeApp({ root, name: 'web', port: opts.port, binary });
    // 3.0 starts and serves, but its /healthz answers 503.
    await writeRelease(app.releasesDir, '3.0', binary, `port=${app.port}\nmode=reexec\nmessage=hello from web 3.0\nunhealthy=1\n`);
    const first = await setCurrent(app, '1.0');
    const configFile = await writeConfig(root, [app], {}, {
      health: { url: `${app.url}healthz`, settleMs: 500, deadlineMs: 3000, intervalMs: 100 },
    });
    const config = await loadConfig(configFile);
    const logFile = path.join(root, 'agent.log');
    await writeFile(logFile, '');
    agent = await Agent.start(config, createLogger('info', pino.destination({ dest: logFile, sync: true })));

    // The journal entry for a given content of current.conf (as deploy
    // --wait finds its verdict): an in-place write can be read twice with
    // two mtimes and journaled twice, so "the next entry" is not enough.
    let seen = 0;
    const verdictFor = async (text: string): Promise<HistoryEntry> => {
      const hash = hashText(text);
      const deadline = Date.now() + 15_000;
      for (;;) {
        const all = await readHistory(config.stateDir, app.name);
        const i = all.findIndex((e, n) => n >= seen && e.currentHash === hash);
        if (i >= 0) {
          seen = i + 1;
          return all[i] as HistoryEntry;
        }
        if (Date.now() > deadline) throw new Error(`the agent recorded nothing within 15 s; see ${logFile}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    const names = (r: { bin: string | null; cfg: string | null }) => `${path.basename(r.bin ?? '?')} + ${path.basename(r.cfg ?? '?')}`;
    const show = (e: HistoryEntry) => {
      const to = e.to.bin === null ? '' : ` ${names(e.to)}`;
      const back = e.rolledBackTo ? ` back to ${names(e.rolledBackTo)}` : '';
      const pids = e.pidBefore === e.pidAfter ? `pid ${e.pidAfter ?? '-'}` : `pid ${e.pidBefore ?? '-'} -> ${e.pidAfter ?? '-'}`;
      say(`  agent: ${e.outcome}${to}${back} (${e.action}, ${pids}, ${e.durationMs} ms)${e.reason ? `\n         ${e.reason}` : ''}`);
    };
    const curl = async () => say(`  curl ${app.url} -> ${await get(app.url)}`);

    say('\n1. The agent starts the app from current.conf (release 1.0):');
    show(await verdictFor(first));
    await curl();

    say('\n2. Deploy: current.conf now names release 2.0; the app re-executes itself on SIGHUP, PID changes, no request refused:');
    show(await verdictFor(await setCurrent(app, '2.0')));
    await curl();

    say('\n3. A typo in current.conf is refused, with the file, the key and the rule; 2.0 keeps serving:');
    const typo = '{"bin.file": "app.3.0", "cfg.flie": "cfg.3.0"}\n';
    await writeFile(app.currentFile, typo);
    show(await verdictFor(typo));
    await curl();

    say('\n4. Release 3.0 starts, but its health check (/healthz) answers 503: the agent rolls back to 2.0 by itself and rewrites current.conf; the site keeps answering:');
    const traffic = keepAsking(app.url);
    const verdict = await setCurrent(app, '3.0').then(verdictFor).finally(() => traffic.stop());
    const during = await traffic.stop();
    show(verdict);
    const answered = [...during.byRelease].map(([r, n]) => `${r} ${n}`).join(', ');
    say(`  meanwhile: ${[...during.byRelease.values()].reduce((a, b) => a + b, 0) + during.failed} requests, ${during.failed} failed (answered by ${answered || 'nobody'})`);
    await curl();

    say('\n5. Rollback by hand: current.conf back to 1.0:');
    show(await verdictFor(await setCurrent(app, '1.0')));
    await curl();

    if (opts.exitAfterTour) return;
    say(`
Your turn. The agent keeps running on this demo:
  edit      ${app.currentFile}
            e.g. {"bin.file": "app.2.0", "cfg.file": "cfg.2.0"}
            (app.3.0 + cfg.3.0 is rolled back again)
  curl      ${app.url}
  status    npx relink status --config ${configFile}
  history   npx relink history --config ${configFile}
  validate  npx relink validate --config ${configFile}
  agent log ${logFile}
Ctrl-C stops the demo, its app, and removes ${root}.
`);
    let stopped = false;
    void opts.stop.then(() => { stopped = true; });
    while (!stopped) {
      const all = await readHistory(config.stateDir, app.name);
      while (seen < all.length) show(all[seen++] as HistoryEntry);
      await Promise.race([opts.stop, new Promise((r) => setTimeout(r, 200))]);
    }
  } finally {
    await agent?.close();
    // Unlike a real deployment, the demo takes its app down with it.
    const pid = agent?.apps[0]?.mainPid;
    if (pid !== undefined) sendSignal(pid, 'SIGTERM');
    await rm(root, { recursive: true, force: true });
    say('demo stopped and cleaned up');
  }
}
