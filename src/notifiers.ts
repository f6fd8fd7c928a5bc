/**
 * Sending one notification, once (src/notifications.ts queues and retries):
 * an HTTP POST of the payload as JSON to a notifier's URL, or its command
 * run with the payload as JSON on stdin.
 *
 * Who a command runs as. Nothing runs as root that an app's user could
 * have written:
 * - A global notifier's command comes from root's config and runs as the
 *   agent (root under systemd), in `/`, with the agent's environment: it
 *   may page with credentials only root can read. Its program is named by
 *   absolute path (checked by the config) and, like sshd's StrictModes,
 *   must be writable, with every folder above it, by root only (checked
 *   before every run: UNTRUSTED_PATH otherwise, not run).
 * - An app's own notifier's command runs exactly as the app's hooks do
 *   (src/launch.ts planCommand: the app's user, groups, limits and
 *   environment, in its `dir`; root only with allowRoot). Its program may
 *   be a script in the app's folder, which the app's user can write, and
 *   its stdin carries text the app's user wrote (a rejected current.conf,
 *   the app's last output in a reason): as that user it gains nothing the
 *   app's user does not already have.
 * Neither carries the app's lineage marker (src/proc.ts MARKER): it is not
 * one of the app's processes.
 */
import { stat } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { runCommand } from './command.js';
import type { AgentConfig } from './config.js';
import { describeError, fileError, isErrno, type RelinkError } from './errors.js';
import { agentIdentity, planCommand } from './launch.js';
import type { AttemptResult, NotifyPayload, Send, Target } from './notifications.js';
import { NOTIFY_STOP_MS } from './notifications.js';
import { MARKER } from './proc.js';
import { checkAgentProgram } from './trust.js';
import { VERSION } from './version.js';

/** A command exiting with this (sysexits.h EX_TEMPFAIL, as a mail delivery agent says "try again later") is retried; any other failure is not. */
export const EX_TEMPFAIL = 75;

/** The answer's first characters kept for the log: enough for an error's message. */
const DETAIL_CHARS = 200;

/** The real sending, as the agent does it. */
export const realSend: Send = (target, payload, signal) => (target.kind === 'url' ? postJson(target, payload, signal) : runNotifier(target, payload, signal));

/**
 * POST `payload` as JSON to the target's URL (http or https, Node's own
 * client: no redirect followed, a new connection each time). Within the
 * notifier's timeoutMs for the whole exchange. 2xx: delivered; 5xx, a
 * connection error or the timeout: worth retrying; anything else (4xx, a
 * redirect): not. Never throws.
 */
export function postJson(target: Target, payload: NotifyPayload, signal: AbortSignal): Promise<AttemptResult> {
  const url = new URL(target.notifier.url ?? '');
  const body = `${JSON.stringify(payload)}\n`;
  const timeoutMs = target.notifier.timeoutMs;
  return new Promise((resolve) => {
    let settled = false;
    const finish = (r: AttemptResult) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      resolve(r);
    };
    const client = url.protocol === 'https:' ? https : http;
    const req = client.request(url, {
      method: 'POST',
      // One connection per attempt: nothing kept open between deploys, nothing for close() to wait on.
      agent: false,
      headers: {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        'user-agent': `relink/${VERSION}`,
        'x-relink-event': payload.event,
      },
    }, (res) => {
      const code = res.statusCode ?? 0;
      const status = `HTTP ${code}`;
      if (code >= 200 && code < 300) {
        finish({ ok: true, retry: false, status });
        // The body is not needed; the timer below ends a connection that never ends it.
        res.resume();
        return;
      }
      let detail = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        detail = (detail + chunk).slice(0, DETAIL_CHARS);
        if (detail.length >= DETAIL_CHARS) res.destroy();
      });
      const verdict = (): AttemptResult => ({
        ok: false,
        retry: code >= 500,
        status: code >= 300 && code < 400 ? `${status} (a redirect: not followed)` : status,
        detail: detail.replace(/\s+/g, ' ').trim() || undefined,
      });
      res.on('end', () => finish(verdict()));
      res.on('close', () => finish(verdict()));
    });
    const timer = setTimeout(() => {
      finish({ ok: false, retry: true, status: `no answer within ${timeoutMs} ms (timeoutMs)` });
      req.destroy();
    }, timeoutMs);
    req.on('close', () => clearTimeout(timer));
    req.on('error', (err: Error) => finish({ ok: false, retry: true, status: isErrno(err) ? err.code ?? err.message : err.message }));
    const onAbort = () => {
      finish({ ok: false, retry: false, status: 'abandoned: the agent is stopping' });
      req.destroy();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    else req.end(body);
  });
}

/**
 * The variables a notifier's command gets besides its environment:
 * RELINK_EVENT, RELINK_APP_NAME and RELINK_NOTIFIER (its place in the
 * config); the app's lineage marker removed.
 */
export function notifierEnv(target: Target, payload: NotifyPayload): Record<string, string | undefined> {
  return { [MARKER.name]: undefined, [MARKER.dir]: undefined, RELINK_EVENT: payload.event, RELINK_APP_NAME: payload.app, RELINK_NOTIFIER: target.label };
}

/**
 * Run the target's command with `payload` as JSON on stdin (see the
 * module's comment for whose user), within the notifier's timeoutMs
 * (then SIGTERM to its process group, SIGKILL NOTIFY_STOP_MS.killMs
 * later). Exit 0: delivered; EX_TEMPFAIL: worth retrying; anything else:
 * not. Throws what planCommand throws for an app's command (ROOT_REFUSED,
 * USER_UNKNOWN, ...).
 */
export async function runNotifier(target: Target, payload: NotifyPayload, signal: AbortSignal): Promise<AttemptResult> {
  const argv = target.notifier.command ?? [];
  const key = `${target.label}.command`;
  let plan: { file: string; args: readonly string[]; env: Readonly<Record<string, string | undefined>> };
  let cwd: string;
  if (target.app === undefined) {
    // Checked again before each run, as when the config was loaded (it may have changed since).
    const problem = await programProblem(argv[0] ?? '', target.configFile, key, true);
    if (problem !== undefined) return { ok: false, retry: false, status: `not run: ${problem.message}`, code: problem.code };
    plan = { file: argv[0]!, args: argv.slice(1), env: process.env };
    cwd = '/';
  } else {
    plan = await planCommand(target.app, await agentIdentity(), argv);
    cwd = target.app.dir;
  }
  const r = await runCommand({ ...plan, env: { ...plan.env, ...notifierEnv(target, payload) } },
    { cwd, timeoutMs: target.notifier.timeoutMs, signal, input: `${JSON.stringify(payload)}\n`, killGraceMs: NOTIFY_STOP_MS.killMs });
  const status = r.timedOut === true ? `${r.status} (timeoutMs)` : r.status;
  return { ok: r.ok, retry: !r.ok && r.status === `exit ${EX_TEMPFAIL}`, status, detail: r.output || undefined };
}

/**
 * The notifiers' programs as the config names them, checked when the agent
 * starts and at each reload, so that a typo is said then rather than at
 * 3 a.m. when the first event finds it: a global one must exist, be an
 * executable file and pass the root-only trust check it gets before each
 * run; an app's own one named with a `/` (resolved against the app's
 * `dir`) must exist and be an executable file (a bare name is looked up in
 * PATH as the app's user when it runs: not checked). One problem per
 * notifier (code NOTIFY_FAILED or UNTRUSTED_PATH), naming the config file,
 * the key, the rule and what was found. Never throws. Nothing refuses the
 * config for it: the other notifiers and the apps are not affected, and
 * the program may be installed later (it is checked again before each run).
 */
export async function notifierProgramProblems(config: AgentConfig): Promise<RelinkError[]> {
  const checks: Array<Promise<RelinkError | undefined>> = [];
  config.notify.forEach((n, i) => {
    const program = n.command?.[0];
    if (program !== undefined) checks.push(programProblem(program, config.file, `notify[${i}].command`, true));
  });
  config.apps.forEach((a, ai) => a.notify.forEach((n, i) => {
    const program = n.command?.[0];
    if (program !== undefined && program.includes('/')) checks.push(programProblem(path.resolve(a.dir, program), config.file, `apps[${ai}].notify[${i}].command`, false));
  }));
  return (await Promise.all(checks)).filter((p) => p !== undefined);
}

/**
 * What is wrong with a notifier's program (absolute path), if anything:
 * missing, not a file, not executable, and for a global one (run as root)
 * writable by anyone but root (trust.ts checkAgentProgram). The one check,
 * when the config is loaded and before each run. Never throws.
 */
async function programProblem(program: string, configFile: string, key: string, global: boolean): Promise<RelinkError | undefined> {
  const refuse = (rule: string, found: string) => fileError('NOTIFY_FAILED', configFile, key, rule, found);
  try {
    const st = await stat(program);
    if (!st.isFile()) return refuse('must name a program file', `${program} is not a file`);
    if ((st.mode & 0o111) === 0) return refuse('must name an executable program', `${program} has no execute permission, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}`);
    return global ? await checkAgentProgram(program, configFile, key) : undefined;
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return refuse('must name a program that exists', `${program} does not exist`);
    return refuse('must name a program the agent can look at', `${program}: ${describeError(err).message}`);
  }
}
