/**
 * The three real programs deployed in the benchmarks, each with two
 * releases (1.0 and 2.0) that say which one answered:
 * - go: a Go server using cloudflare/tableflip (re-exec on SIGHUP, new PID);
 * - nginx: nginx-light reloading its config on SIGHUP (same master PID);
 * - c: the project's own demo app (src/demo/app.c: re-exec on SIGHUP,
 *   handing its listening socket over).
 */
import { mkdir, symlink } from 'node:fs/promises';
import path from 'node:path';
import { buildDemoApp } from '../../src/demo/build.js';
import { makeLayout, type AppLayout } from './agent.js';
import { buildTableflip } from './build.js';
import type { Context } from './context.js';

export type AppKind = 'go' | 'nginx' | 'c';

export interface AppSpec {
  readonly kind: AppKind;
  readonly label: string;
  readonly mode: 'reexec' | 'inplace';
  /** What a stop+start (and supervisord) sends to stop it gracefully. */
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
};

export async function appSpecs(ctx: Context): Promise<{ specs: AppSpec[]; skipped: Array<{ kind: AppKind; why: string }> }> {
  const specs: AppSpec[] = [];
  const skipped: Array<{ kind: AppKind; why: string }> = [];

  if (ctx.tools.have.has('go') && ctx.tools.have.has('tableflip')) {
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

  if (ctx.tools.have.has('nginx')) {
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
  return { specs, skipped };
}

/** app.bin and app.cfg pointing at release 1.0, for managers that start the app themselves. */
async function linked(app: AppLayout): Promise<AppLayout> {
  await symlink('release/app.1.0', path.join(app.dir, 'app.bin'));
  await symlink('release/cfg.1.0', path.join(app.dir, 'app.cfg'));
  return app;
}
