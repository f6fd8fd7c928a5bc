/**
 * `relink reload`: have the running agent re-read its config file (SIGHUP to
 * it, what `systemctl reload relink` sends), after checking the file here
 * first; `--wait` reads the outcome the agent records in agent.json.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from '../config.js';
import { hashText } from '../current.js';
import { isErrno, RelinkError, RelinkErrors } from '../errors.js';
import { runningAgent, type AgentConfigRecord } from '../state.js';
import type { SpecOf } from './commands.js';
import { configPath, EXIT } from './io.js';
import { signalExitCode } from './request.js';
import type { Command, Input, IO } from './spec.js';
import { damageWarner } from './warn.js';

const POLL_MS = 50;

/** What --timeout means when it is not given (its help says so: src/cli/commands.ts). */
const DEFAULT_TIMEOUT_S = 30;

export const reloadCommand: Command<SpecOf<'reload'>> = {
  async run(input, io, stop) {
    try {
      return await reload(input, io, stop);
    } catch (err) {
      // --json promises one JSON object whatever happens: a script must not parse prose.
      if (input.values.json !== true || !(err instanceof RelinkError)) throw err;
      const invalid = err instanceof RelinkErrors;
      const message = invalid ? err.problems.map((p) => p.message).join('; ') : err.message;
      io.stdout(`${JSON.stringify({ outcome: invalid ? 'invalid' : 'error', code: err.code, message })}\n`);
      return EXIT.failed;
    }
  },
};

async function reload({ values }: Input<SpecOf<'reload'>>, io: IO, stop: Promise<string>): Promise<number> {
    const timeoutMs = (values.timeout ?? DEFAULT_TIMEOUT_S) * 1000;
    const file = configPath(values.config, io);
    // Its problems, as the agent would find them; nothing is asked of it.
    const config = await loadConfig(file);
    const text = await readFile(file, 'utf8');
    const onDamaged = damageWarner(io, 'reload');
    const agent = await runningAgent(config.stateDir, { onDamaged });
    if (agent === undefined) {
      throw new RelinkError('NO_AGENT', `no relink agent is running on ${file}'s stateDir (${config.stateDir}): start it (systemctl start relink), it reads the config as it starts; if an agent runs with another stateDir, a reload cannot move it there: restart that agent`,
        { file, key: 'stateDir', rule: 'an agent must be running on the file\'s stateDir to reload it' });
    }
    if (path.resolve(agent.configFile) !== path.resolve(file)) {
      throw new RelinkError('CONFIG_INVALID', `the agent (pid ${agent.pid}) runs on ${agent.configFile}, not ${file}: it re-reads its own file on a reload; edit that one (or restart the agent with --config ${file})`,
        { file, rule: 'relink reload re-reads the file the agent runs on', found: agent.configFile });
    }
    const before = agent.config?.at;
    try {
      process.kill(agent.pid, 'SIGHUP');
    } catch (err) {
      if (!isErrno(err) || err.code !== 'EPERM') throw err;
      throw new RelinkError('NOT_ROOT', `only root may have the agent (pid ${agent.pid}, root's) reload: run it with sudo (or systemctl reload relink)`,
        { file, rule: 'the agent is signalled by root', found: `uid ${process.getuid?.() ?? '?'}` });
    }
    const say = (outcome: string, message: string, code: number, rec?: AgentConfigRecord): number => {
      if (values.json === true) io.stdout(`${JSON.stringify({ outcome, message, ...(rec === undefined ? {} : { config: rec }) })}\n`);
      else (code === EXIT.ok ? io.stdout : io.stderr)(`${message}\n`);
      return code;
    };
    if (values.wait !== true) return say('requested', `asked the agent (pid ${agent.pid}) to reload ${file}`, EXIT.ok);
    let stopped: string | undefined;
    void stop.then((signal) => { stopped = signal; });
    const hash = hashText(text);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (stopped !== undefined) return say('interrupted', `stopped waiting (${stopped}); the agent reloads anyway`, signalExitCode(stopped));
      const rec = (await runningAgent(config.stateDir, { onDamaged }))?.config;
      if (rec !== undefined && rec.at !== before && rec.error !== undefined && rec.refused === hash) {
        return say('refused', `the agent refused ${file}; its running config stays: ${rec.error}`, EXIT.failed, rec);
      }
      if (rec !== undefined && rec.at !== before && rec.error === undefined && rec.hash === hash) {
        const list = (what: string, names: readonly string[] | undefined): string => (names !== undefined && names.length > 0 ? `; ${what}: ${names.join(', ')}` : '');
        const warnings = (rec.warnings ?? []).map((w) => `\nwarning: ${w}`).join('');
        return say('reloaded', `reloaded ${file}${list('added', rec.added)}${list('no longer managed (left running)', rec.removed)}${list('changed (next generation)', rec.changed)}${list('unchanged', rec.unchanged)}${list('agent settings changed', rec.settings)}${warnings}`, EXIT.ok, rec);
      }
      if (Date.now() > deadline) {
        throw new RelinkError('WAIT_TIMEOUT', `the agent (pid ${agent.pid}) did not record a reload of ${file} within ${timeoutMs / 1000} s (the file changed again meanwhile, or agent.json cannot be written: see its log)`,
          { file, rule: 'the agent records each reload in agent.json' });
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
}

