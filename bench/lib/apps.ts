/**
 * The three real programs deployed in the benchmarks, each with two
 * releases (1.0 and 2.0) that say which one answered:
 * - go: a Go server using cloudflare/tableflip (re-exec on SIGHUP, new PID);
 * - nginx: nginx-light reloading its config on SIGHUP (same master PID);
 * - c: the project's own demo app (src/demo/app.c: re-exec on SIGHUP,
 *   handing its listening socket over);
 * and, for the reload strategies of issue 11, two with no re-exec of their own:
 * - plain: test/apps/plainapp.py, a Python HTTP server with no graceful
 *   restart code (serves on fd 3 when LISTEN_FDS/LISTEN_PID say so, else
 *   binds its own port; on SIGTERM finishes what it accepted and exits);
 * - gunicorn: Debian's gunicorn (2 sync workers) serving
 *   test/apps/wsgiapp.py; takes LISTEN_FDS when LISTEN_PID is its own PID,
 *   starts a new master as its child on USR2.
 */
import { mkdir, symlink } from 'node:fs/promises';
import path from 'node:path';
import { buildDemoApp } from '../../src/demo/build.js';
import { makeLayout, type AppLayout } from './agent.js';
import { buildTableflip } from './build.js';
import type { Context } from './context.js';
import { ROOT } from './tools.js';

export type AppKind = 'go' | 'nginx' | 'c' | 'plain' | 'gunicorn';

export const APP_KINDS: readonly AppKind[] = ['go', 'nginx', 'c', 'plain', 'gunicorn'];
/** The apps of issue 11's rows (`npm run bench -- --only strategies`). */
export const STRATEGY_KINDS: readonly AppKind[] = ['plain', 'gunicorn'];

export interface AppSpec {
  readonly kind: AppKind;
  readonly label: string;
  /** `reload.strategy` of the "relink (SIGHUP)" row; absent: the app has no reload of its own. */
  readonly mode?: 'reexec' | 'inplace';
  /** The release every deploy runs the binary of, when releases change the config only (an app reloaded in place). */
  readonly fixedBin?: string;
  /** What a stop+start (and supervisord, PM2, the socket holder) sends to stop it gracefully. */
  readonly stopSignal: NodeJS.Signals;
  /** argv run in the app's folder (the links are relative to it). */
  command(app: AppLayout): string[];
  /** Lay the app out in `dir` on `port` with releases 1.0 and 2.0, links on 1.0. */
  make(dir: string, port: number): Promise<AppLayout>;
}

export const APP_LABELS: Record<AppKind, string> = {
  go: 'Go + tableflip (re-exec)',
  nginx: 'nginx (in-place reload)',
  c: 'C demo app (re-exec)',
  plain: 'plain Python server (no graceful code)',
  gunicorn: 'gunicorn (2 sync workers)',
};

/** The apps of `kinds` that can be had on this machine, and why the others cannot. */
export async function appSpecs(ctx: Context, kinds: readonly AppKind[] = APP_KINDS): Promise<{ specs: AppSpec[]; skipped: Array<{ kind: AppKind; why: string }> }> {
  const specs: AppSpec[] = [];
  const skipped: Array<{ kind: AppKind; why: string }> = [];

  if (!kinds.includes('go')) {
    // not asked for
  } else if (ctx.tools.have.has('go') && ctx.tools.have.has('tableflip')) {
    const binary = await buildTableflip(ctx.j);
    specs.push({
      kind: 'go',
      label: APP_LABELS.go,
      mode: 'reexec',
      stopSignal: 'SIGTERM',
      command: () => ['./app.bin', '-c', 'app.cfg'],
      make: async (dir, port) => linked(await makeLayout(dir, 'go', port, binary, {
        '1.0': `port=${port}\nmessage=go 1.0\n`,
        '2.0': `port=${port}\nmessage=go 2.0\n`,
      })),
    });
  } else {
    skipped.push({ kind: 'go', why: ctx.tools.missing.get('go') ?? ctx.tools.missing.get('tableflip') ?? 'Go or tableflip missing' });
  }

  if (!kinds.includes('nginx')) {
    // not asked for
  } else if (ctx.tools.have.has('nginx')) {
    // nginx resolves a relative -c against its compiled-in prefix: absolute paths.
    const nginxConf = (dir: string, port: number, r: string): string => `# relink bench: nginx release ${r}
daemon off;
master_process on;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    server {
        listen 127.0.0.1:${port};
        location = /healthz { return 200 "ok\\n"; }
        location / { default_type application/json; return 200 '{"release":"app.${r}"}\\n'; }
    }
}
`;
    specs.push({
      kind: 'nginx',
      label: APP_LABELS.nginx,
      mode: 'inplace',
      // A reload keeps the master's executable: releases differ in nginx.conf only.
      fixedBin: '1.0',
      // nginx: TERM is a fast shutdown that cuts connections; QUIT is the graceful one.
      stopSignal: 'SIGQUIT',
      command: (app) => ['./app.bin', '-p', `${app.dir}/`, '-e', path.join(app.dir, 'error.log'), '-c', path.join(app.dir, 'app.cfg')],
      make: async (dir, port) => {
        await mkdir(dir, { recursive: true });
        return linked(await makeLayout(dir, 'nginx', port, '/usr/sbin/nginx', { '1.0': nginxConf(dir, port, '1.0'), '2.0': nginxConf(dir, port, '2.0') }));
      },
    });
  } else {
    skipped.push({ kind: 'nginx', why: ctx.tools.missing.get('nginx') ?? 'nginx missing' });
  }

  if (kinds.includes('c')) {
    const demo = await buildDemoApp();
    specs.push({
      kind: 'c',
      label: APP_LABELS.c,
      mode: 'reexec',
      stopSignal: 'SIGTERM',
      command: () => ['./app.bin', '-c', 'app.cfg'],
      make: async (dir, port) => linked(await makeLayout(dir, 'c', port, demo, {
        '1.0': `port=${port}\nmode=reexec\nmessage=c 1.0\n`,
        '2.0': `port=${port}\nmode=reexec\nmessage=c 2.0\n`,
      })),
    });
  }

  const python = ctx.tools.have.has('python3') ? undefined : ctx.tools.missing.get('python3') ?? 'python3 missing';
  if (!kinds.includes('plain')) {
    // not asked for
  } else if (python === undefined) {
    specs.push({
      kind: 'plain',
      label: APP_LABELS.plain,
      stopSignal: 'SIGTERM',
      command: () => ['./app.bin', '-c', 'app.cfg'],
      // A release is a copy of the script: it answers with its own file name (app.R).
      make: async (dir, port) => linked(await makeLayout(dir, 'plain', port, path.join(ROOT, 'test', 'apps', 'plainapp.py'), {
        '1.0': `port=${port}\nmessage=plain 1.0\n`,
        '2.0': `port=${port}\nmessage=plain 2.0\n`,
      })),
    });
  } else {
    skipped.push({ kind: 'plain', why: python });
  }

  if (!kinds.includes('gunicorn')) {
    // not asked for
  } else if (python === undefined && ctx.tools.have.has('gunicorn')) {
    const cfg = (port: number, r: string): string => [
      '# relink bench: gunicorn release ' + r,
      `bind = "127.0.0.1:${port}"`,
      'workers = 2',
      `pythonpath = ${JSON.stringify(path.join(ROOT, 'test', 'apps'))}`,
      'wsgi_app = "wsgiapp:application"',
      `raw_env = ["RELEASE=app.${r}"]`,
      'graceful_timeout = 10',
      '',
    ].join('\n');
    specs.push({
      kind: 'gunicorn',
      label: APP_LABELS.gunicorn,
      // gunicorn: TERM is its graceful shutdown (workers finish their request), QUIT and INT the fast one.
      stopSignal: 'SIGTERM',
      command: () => ['./app.bin', '-c', 'app.cfg'],
      make: async (dir, port) => linked(await makeLayout(dir, 'gunicorn', port, path.join(ROOT, 'bench', 'apps', 'gunicorn_release.py'), {
        '1.0': cfg(port, '1.0'),
        '2.0': cfg(port, '2.0'),
      })),
    });
  } else {
    skipped.push({ kind: 'gunicorn', why: python ?? ctx.tools.missing.get('gunicorn') ?? 'gunicorn missing' });
  }
  return { specs, skipped };
}

/** app.bin and app.cfg pointing at release 1.0, for managers that start the app themselves. */
async function linked(app: AppLayout): Promise<AppLayout> {
  await symlink('release/app.1.0', path.join(app.dir, 'app.bin'));
  await symlink('release/cfg.1.0', path.join(app.dir, 'app.cfg'));
  return app;
}
