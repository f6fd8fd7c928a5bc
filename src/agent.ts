/**
 * The resident agent: one orchestrator and one watcher per app, a periodic
 * re-check as the safety net for any file event a watcher missed, the prune
 * schedules, and a claim on the stateDir so that two agents never manage
 * the same apps.
 */
import type { Logger } from 'pino';
import { AppAgent, EARLY_TRIGGER } from './app.js';
import { Compactor } from './compaction.js';
import type { AgentConfig } from './config.js';
import { realEffects } from './effects.js';
import { schedulePrune, type PruneSchedule } from './releases.js';
import { claimAgent, releaseAgent } from './state.js';
import { VERSION } from './version.js';
import { CurrentWatcher } from './watch.js';

/** A full collection every 50 journal entries, or 5 s after the last (src/compaction.ts). */
const COMPACTION = { everyDeploys: 50, idleMs: 5_000 } as const;

export class Agent {
  readonly config: AgentConfig;
  readonly apps: readonly AppAgent[];
  readonly #watchers: CurrentWatcher[] = [];
  readonly #prunes: PruneSchedule[] = [];
  readonly #log: Logger;
  readonly #compactor: Compactor;
  #timer: NodeJS.Timeout | undefined;
  #closing: Promise<void> | undefined;

  private constructor(config: AgentConfig, apps: AppAgent[], log: Logger, compactor: Compactor) {
    this.config = config;
    this.apps = apps;
    this.#log = log;
    this.#compactor = compactor;
  }

  /** Claim the stateDir, adopt or start every app, and begin watching. */
  static async start(config: AgentConfig, log: Logger): Promise<Agent> {
    await claimAgent(config.stateDir, config.file, VERSION);
    const compactor = new Compactor(COMPACTION);
    const apps = config.apps.map((app) => {
      const fx = realEffects(app, config.stateDir);
      const record: typeof fx.record = async (entry) => {
        await fx.record(entry);
        compactor.noteDeploy();
      };
      return new AppAgent(app, { ...fx, record }, log.child({ app: app.name }));
    });
    const agent = new Agent(config, apps, log, compactor);
    try {
      for (const app of apps) {
        const applog = log.child({ app: app.app.name });
        const watcher = await CurrentWatcher.start({
          file: app.app.currentFile,
          stabilityMs: config.watch.stabilityMs,
          pollMs: config.watch.pollMs,
          onChange: (event) => app.trigger(`watch:${event}`),
          onEarly: () => app.trigger(EARLY_TRIGGER),
          onError: (err) => applog.error({ err }, 'watcher error'),
        });
        agent.#watchers.push(watcher);
        // After the watcher is armed: an edit made while the agent was down,
        // or between start and ready, is seen by this first read.
        await app.start();
        const prune = schedulePrune(config, app.app, applog);
        if (prune !== undefined) agent.#prunes.push(prune);
      }
      agent.#timer = setInterval(() => {
        for (const app of apps) app.trigger('recheck');
      }, config.reconcileMs);
    } catch (err) {
      await agent.close();
      throw err;
    }
    log.info({ version: VERSION, config: config.file, stateDir: config.stateDir, apps: config.apps.map((a) => a.name) }, 'agent started');
    return agent;
  }

  /** Resolves when every app has finished the passes asked of it so far. */
  async idle(): Promise<void> {
    await Promise.all(this.apps.map((a) => a.idle()));
  }

  /**
   * Stop watching, let an apply in progress finish, release the stateDir.
   * The apps keep running. The same promise every time.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      clearInterval(this.#timer);
      this.#compactor.stop();
      // node-cron tasks keep the process alive until destroyed.
      await Promise.allSettled(this.#prunes.map((p) => p.stop()));
      await Promise.allSettled(this.#watchers.map((w) => w.close()));
      await Promise.allSettled(this.apps.map((a) => a.close()));
      await releaseAgent(this.config.stateDir).catch(() => undefined);
      this.#log.info('agent stopped; apps left running');
    })();
    return this.#closing;
  }
}
