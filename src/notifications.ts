/**
 * Notifications (issue 13, item 3): the operator is told of an app's events
 * (a journaled verdict, a crash loop given up on) by the notifiers of the
 * config: the global `notify` list and the app's own, each a command and/or
 * a URL (src/notifiers.ts sends one), for the events in its `on`.
 *
 * Nothing here ever holds a deploy back: emit() only queues, and each
 * notifier drains its own queue in the background, one event at a time, in
 * order, retrying what is worth retrying with exponential backoff. A
 * notifier that is slow or down holds up only itself: its queue is capped
 * (NOTIFY_QUEUE_MAX; the oldest waiting event is dropped, logged), and what
 * fails is logged with the notifier and the reason, never more. When the
 * agent stops, the queues get NOTIFY_STOP_MS.drainMs to empty; what is left
 * is abandoned, logged.
 *
 * The sending and the clock come in through a narrow interface (Send,
 * Clock), so the queue and backoff are tested against a fake clock, and the
 * real sending against real servers and commands.
 */
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { NOTIFY_MAX_DELAY_MS, type AgentConfig, type AppConfig, type Notifier, type NotifyEvent } from './config.js';
import { describeError } from './errors.js';
import type { HistoryEntry } from './history.js';
import { redactUrl } from './redact.js';

/**
 * Crash supervision gave up on an app (its state became `fatal`): not a
 * journal entry, but told in the same shape, so that one script reads
 * both. `from` and `to` are the release that keeps failing (the links).
 */
export interface FatalEvent {
  readonly time: string;
  readonly app: string;
  readonly outcome: 'fatal';
  readonly action: 'none';
  readonly from: { readonly bin: string | null; readonly cfg: string | null };
  readonly to: { readonly bin: string | null; readonly cfg: string | null };
  /** What failed, and what brings the app back. */
  readonly reason: string;
  /** CRASH_LOOP, or the code of the last start's failure when the app could not be started at all. */
  readonly code: string;
  readonly trigger: 'supervise';
  /** Restarts by the crash supervision since the last deploy. */
  readonly restarts: number;
  /** Quick failures in a row (each run shorter than supervise.stableMs). */
  readonly failures: number;
  /** supervise.maxRetries. */
  readonly maxRetries: number;
}

/** What an app's orchestrator reports: a journaled entry, or a crash loop given up on. */
export type AppEvent = HistoryEntry | FatalEvent;

/**
 * What a notifier receives, as JSON (a command on stdin, a URL as the POST
 * body): the event's fields as journaled, after `event` (the outcome, or
 * `fatal`) and `host` (this host's name: one receiver hears from many).
 */
export type NotifyPayload = { readonly event: NotifyEvent; readonly host: string } & AppEvent;

/** Events waiting per notifier, besides the one being sent; past it the oldest waiting one is dropped. */
export const NOTIFY_QUEUE_MAX = 100;

/**
 * When the agent stops, after its apps: the queues may take `drainMs` to
 * empty, then what is left is abandoned (a POST cut, a command sent SIGTERM
 * and SIGKILL `killMs` later). After the apps' own stop budget (src/app.ts
 * STOP_BUDGET.waitMs, 22 s) that is 26 s at worst, inside the unit's
 * TimeoutStopSec=30s (test/notifications.test.ts holds them together).
 */
export const NOTIFY_STOP_MS = { drainMs: 2_000, killMs: 2_000 } as const;

/** The delay before retry number `retry` (1-based), in ms: `backoffMs` doubled each time, at most NOTIFY_MAX_DELAY_MS. */
export function retryDelay(retry: number, backoffMs: number): number {
  return Math.min(backoffMs * 2 ** Math.max(0, retry - 1), NOTIFY_MAX_DELAY_MS);
}

/** Where one channel sends: one notifier's command or its URL. */
export interface Target {
  /** Its place in the config: `notify[0]`, `apps[2].notify[1]`. */
  readonly label: string;
  readonly kind: 'url' | 'command';
  readonly notifier: Notifier;
  /** For an app's own notifier: the app, whose user its command runs as. Undefined for the global list. */
  readonly app: AppConfig | undefined;
  /** The config file, named in a refusal of the command's program. */
  readonly configFile: string;
}

/** How one attempt ended. */
export interface AttemptResult {
  readonly ok: boolean;
  /** Worth another attempt: a connection error, a timeout, a 5xx answer, a command's exit 75. */
  readonly retry: boolean;
  /** "HTTP 503", "ECONNREFUSED", "exit 1", "killed after 10000 ms". */
  readonly status: string;
  /** The answer's first bytes, or the command's last output. */
  readonly detail?: string | undefined;
  /** An error code for the log (UNTRUSTED_PATH, ROOT_REFUSED, ...). */
  readonly code?: string | undefined;
}

/** Send `payload` once to `target`; `signal` cuts it short (the agent is stopping). May throw (a failure, not retried). */
export type Send = (target: Target, payload: NotifyPayload, signal: AbortSignal) => Promise<AttemptResult>;

export interface Clock {
  now(): number;
  /** Resolves after `ms`, or at once when `signal` fires. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const realClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) => new Promise((resolve) => {
    if (signal?.aborted === true) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  }),
};

/** The log's fields naming a target: never a URL's secrets, nor a command's arguments (they may hold a token). */
export function describeTarget(t: Target): Record<string, string> {
  return t.kind === 'url' ? { notifier: t.label, url: redactUrl(t.notifier.url ?? '') } : { notifier: t.label, command: t.notifier.command?.[0] ?? '' };
}

/** One target's queue: events sent one at a time, in order, each retried as its notifier says. */
export class Channel {
  #target: Target;
  readonly #send: Send;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #queue: NotifyPayload[] = [];
  #sending: NotifyPayload | undefined;
  #draining: Promise<void> | undefined;
  readonly #abort = new AbortController();

  constructor(target: Target, send: Send, clock: Clock, log: Logger) {
    this.#target = target;
    this.#send = send;
    this.#clock = clock;
    this.#log = log;
  }

  get target(): Target {
    return this.#target;
  }

  /** A reload kept this notifier: later sends use the app's new settings (its user). */
  retarget(target: Target): void {
    this.#target = target;
  }

  /** Events waiting or being sent. */
  get pending(): number {
    return this.#queue.length + (this.#sending === undefined ? 0 : 1);
  }

  /** Queue `payload`; never waits. Past NOTIFY_QUEUE_MAX waiting, the oldest waiting one is dropped (logged). */
  push(payload: NotifyPayload): void {
    if (this.#abort.signal.aborted) return;
    if (this.#queue.length >= NOTIFY_QUEUE_MAX) {
      const dropped = this.#queue.shift()!;
      this.#log.warn({ ...describeTarget(this.#target), app: dropped.app, event: dropped.event, eventTime: dropped.time, code: 'NOTIFY_FAILED', waiting: NOTIFY_QUEUE_MAX },
        `notifier ${this.#target.label} is ${NOTIFY_QUEUE_MAX} events behind: the oldest waiting one (${dropped.event} of ${dropped.app} at ${dropped.time}) is dropped`);
    }
    this.#queue.push(payload);
    this.#draining ??= this.#drain();
  }

  /** Resolves once nothing waits or is being sent. */
  async idle(): Promise<void> {
    while (this.#draining !== undefined) await this.#draining;
  }

  /** Stop: what is being sent is cut short, nothing waiting is sent. Logs what is abandoned. */
  abandon(why: string): void {
    if (this.pending > 0 && !this.#abort.signal.aborted) {
      const events = [...(this.#sending === undefined ? [] : [this.#sending]), ...this.#queue].map((p) => `${p.event} of ${p.app}`);
      this.#log.warn({ ...describeTarget(this.#target), code: 'NOTIFY_FAILED', abandoned: events.length },
        `${why}: ${events.length} notification${events.length === 1 ? '' : 's'} to ${this.#target.label} abandoned (${events.join(', ')})`);
    }
    this.#queue.length = 0;
    this.#abort.abort();
  }

  async #drain(): Promise<void> {
    try {
      for (let p = this.#queue.shift(); p !== undefined && !this.#abort.signal.aborted; p = this.#queue.shift()) {
        this.#sending = p;
        await this.#deliver(p);
        this.#sending = undefined;
      }
    } finally {
      this.#sending = undefined;
      this.#draining = undefined;
    }
  }

  async #deliver(p: NotifyPayload): Promise<void> {
    const signal = this.#abort.signal;
    const started = this.#clock.now();
    for (let attempt = 1; ; attempt++) {
      const target = this.#target;
      let r: AttemptResult;
      try {
        r = await this.#send(target, p, signal);
      } catch (err) {
        const { code, message } = describeError(err);
        r = { ok: false, retry: false, status: message, code };
      }
      if (signal.aborted) return;
      const fields = { ...describeTarget(target), app: p.app, event: p.event, eventTime: p.time, attempts: attempt, status: r.status, ...(r.detail ? { detail: r.detail } : {}) };
      if (r.ok) {
        this.#log.info({ ...fields, durationMs: this.#clock.now() - started }, `notified ${target.label} of ${p.event} of ${p.app} (${r.status})`);
        return;
      }
      if (!r.retry || attempt > target.notifier.retries) {
        const why = r.retry ? `gave up after ${attempt} attempts` : attempt === 1 ? 'not retried' : `not retried after ${attempt} attempts`;
        this.#log.warn({ ...fields, code: r.code ?? 'NOTIFY_FAILED' }, `notifier ${target.label} failed for ${p.event} of ${p.app}: ${r.status} (${why}); nothing else is affected`);
        return;
      }
      const delayMs = retryDelay(attempt, target.notifier.backoffMs);
      this.#log.info({ ...fields, delayMs }, `notifier ${target.label} failed for ${p.event} of ${p.app}: ${r.status}; retrying in ${delayMs} ms`);
      await this.#clock.sleep(delayMs, signal);
      if (signal.aborted) return;
    }
  }
}

export interface NotificationsOptions {
  /** Sends one attempt (src/notifiers.ts realSend in the agent). */
  readonly send: Send;
  readonly clock?: Clock;
  /** This host's name in every payload; default os.hostname(). */
  readonly host?: string;
}

/**
 * The agent's notifiers, global and per app, as the config in force says.
 * emit() never waits and never throws; configure() applies a reloaded
 * config; close() stops within NOTIFY_STOP_MS.
 */
export class Notifications {
  readonly #log: Logger;
  readonly #send: Send;
  readonly #clock: Clock;
  readonly #host: string;
  /** The channels in force, by target key (label, kind and definition): a reload keeps those it did not change, with their queues. */
  #channels = new Map<string, Channel>();
  /** Which channels hear which app: the global ones, then the app's own. */
  #routes = new Map<string, Channel[]>();
  #global: Channel[] = [];
  /** Channels a reload removed, finishing what they had queued. */
  readonly #retired = new Set<Channel>();
  #closing: Promise<void> | undefined;

  constructor(config: AgentConfig, log: Logger, opts: NotificationsOptions) {
    this.#log = log;
    this.#send = opts.send;
    this.#clock = opts.clock ?? realClock;
    this.#host = opts.host ?? hostname();
    this.configure(config, false);
  }

  /**
   * Apply `config`'s notify lists (a reload). A notifier whose place and
   * definition are unchanged keeps its queue; one removed finishes what it
   * has queued and hears nothing new. Logged when `say` and something changed.
   */
  configure(config: AgentConfig, say = true): void {
    const targets: Target[] = [];
    const add = (label: string, list: readonly Notifier[], app: AppConfig | undefined) => {
      list.forEach((n, i) => {
        for (const kind of ['command', 'url'] as const) {
          if ((kind === 'url' ? n.url : n.command) !== undefined) targets.push({ label: `${label}[${i}]`, kind, notifier: n, app, configFile: config.file });
        }
      });
    };
    add('notify', config.notify, undefined);
    config.apps.forEach((a, i) => add(`apps[${i}].notify`, a.notify, a));
    const next = new Map<string, Channel>();
    for (const t of targets) {
      const key = `${t.label}\0${t.kind}\0${t.app?.name ?? ''}\0${JSON.stringify(t.notifier)}`;
      const kept = this.#channels.get(key);
      if (kept !== undefined) kept.retarget(t);
      next.set(key, kept ?? new Channel(t, this.#send, this.#clock, this.#log));
    }
    const removed = [...this.#channels].filter(([key]) => !next.has(key)).map(([, c]) => c);
    for (const c of removed) this.#retire(c);
    const added = [...next.keys()].filter((k) => !this.#channels.has(k)).length;
    this.#channels = next;
    this.#global = [...next.values()].filter((c) => c.target.app === undefined);
    this.#routes = new Map(config.apps.map((a) => [a.name, [...this.#global, ...[...next.values()].filter((c) => c.target.app?.name === a.name)]]));
    if (say && (added > 0 || removed.length > 0)) {
      this.#log.info({ notifiers: [...next.values()].map((c) => describeTarget(c.target)), added, removed: removed.length }, `notifiers: ${next.size} in force (${added} new, ${removed.length} removed)`);
    }
  }

  #retire(c: Channel): void {
    if (c.pending === 0) return;
    this.#retired.add(c);
    void c.idle().then(() => this.#retired.delete(c));
  }

  /**
   * `event` happened to its app: queue it for every notifier (global, then
   * the app's own) whose `on` names it. Never waits, never throws. After
   * close() nothing more is queued.
   */
  emit(event: AppEvent): void {
    if (this.#closing !== undefined) {
      this.#log.warn({ app: event.app, event: event.outcome }, `the agent is stopping: ${event.outcome} of ${event.app} is not notified`);
      return;
    }
    const channels = this.#routes.get(event.app) ?? this.#global;
    const hearing = channels.filter((c) => c.target.notifier.on.includes(event.outcome));
    if (hearing.length === 0) return;
    const payload = { event: event.outcome, host: this.#host, ...event } as NotifyPayload;
    for (const c of hearing) c.push(payload);
  }

  /** Resolves once every notifier has sent (or given up on) what it was given. */
  async idle(): Promise<void> {
    await Promise.all([...this.#channels.values(), ...this.#retired].map((c) => c.idle()));
  }

  /**
   * The agent is stopping (after its apps, whose last verdicts are queued
   * by then): the queues get `drainMs` to empty; then what is still being
   * sent is cut short (a command gets SIGTERM, SIGKILL NOTIFY_STOP_MS.killMs
   * later) and what waits is dropped, logged per notifier. The same promise
   * every time.
   */
  close(drainMs: number = NOTIFY_STOP_MS.drainMs): Promise<void> {
    this.#closing ??= (async () => {
      const all = [...this.#channels.values(), ...this.#retired];
      if (all.every((c) => c.pending === 0)) return;
      const stop = new AbortController();
      const drained = this.idle().then(() => true);
      const inTime = await Promise.race([drained, this.#clock.sleep(drainMs, stop.signal).then(() => false)]);
      stop.abort();
      if (inTime) return;
      for (const c of all) c.abandon(`the agent is stopping and ${c.target.label} did not finish within ${drainMs} ms`);
      await drained;
    })();
    return this.#closing;
  }
}
