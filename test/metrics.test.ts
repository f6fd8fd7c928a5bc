/**
 * Issue 13, items 1 and 2: the agent's Prometheus metrics and status page,
 * with the real agent on the demo app (test/fixture.ts), real deploys, a
 * rollback and a crash loop. What it serves is checked by Prometheus's own
 * promtool and read with a Prometheus text-format parser; the textfile by
 * promtool and by a real node_exporter's textfile collector, and under a
 * concurrent reader; the page in headless Chromium (Debian's), with a
 * screenshot kept in test-artifacts/.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, chown, link, lstat, stat, mkdir, open, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import parsePrometheus, { type Family } from 'parse-prometheus-text-format';
import { parseConfig } from '../src/config.js';
import type { HistoryEntry } from '../src/history.js';
import { Metrics } from '../src/metrics.js';
import { renderStatusPage } from '../src/statusPage.js';
import { freePort, makeApp, type DemoApp } from '../src/demo/layout.js';
import { buildDemoApp } from '../src/demo/build.js';
import { checkFolderForRoot } from '../src/trust.js';
import { writeFileAtomic } from '../src/atomicWrite.js';
import { needProgram, rootOnly, testGroup, testUser } from './accounts.js';
import { fixture, nthEntry, servedBy, setCurrentText, type Fixture } from './fixture.js';
import { defer, get, RELINK, relinkCli, runProgram, reapAppsAfter, ROOT, startAgent, tmpDir, waitFor } from './helpers.js';

const PROMTOOL = '/usr/bin/promtool';
const CHROMIUM = '/usr/bin/chromium';
const NODE_EXPORTER = '/usr/bin/prometheus-node-exporter';

/** Where the page's screenshot is kept (gitignored), for a person to look at. */
const ARTIFACTS = path.join(ROOT, 'test-artifacts');

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run a program to its end (SIGKILL after `timeoutMs`), `input` on its stdin. */
function run(cmd: string, args: readonly string[], input = '', timeoutMs = 60_000): Promise<Run> {
  return runProgram(cmd, args, { input, timeoutMs });
}

/**
 * promtool's verdict on an exposition: exit 0 (clean), or 3 (lint problems
 * only, listed one per line on stdout); anything else is a parse error.
 */
async function promtool(text: string): Promise<{ code: number | null; problems: string[] }> {
  const r = await run(PROMTOOL, ['check', 'metrics'], text);
  assert.ok(r.code === 0 || r.code === 3, `promtool check metrics failed (exit ${r.code}): ${r.stdout}${r.stderr}`);
  return { code: r.code, problems: `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.trim() !== '') };
}

/**
 * An exposition read with the parser: every sample as a family of its own
 * name (a histogram's `_count` and `_bucket` lines included: the parser
 * folds the samples of a labelled histogram into one otherwise), and each
 * metric's declared type.
 */
interface Exposition {
  readonly samples: Family[];
  readonly types: ReadonlyMap<string, Family['type']>;
}

function read(text: string): Exposition {
  const types = new Map(parsePrometheus(text).map((f) => [f.name, f.type]));
  return { samples: parsePrometheus(text.replace(/^# (?:TYPE|HELP) .*\n/gm, '')), types };
}

/** The value of the sample `name` whose labels include `labels`; fails when there is none. */
function value(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const s = series(e, name).find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
  assert.ok(s !== undefined, `no series ${name}${JSON.stringify(labels)}`);
  return Number(s.value);
}

/** Every sample named `name` (a histogram's label sets interleave its _bucket, _sum and _count lines: the flat view has one family per run). */
function series(e: Exposition, name: string): Family['metrics'] {
  return e.samples.filter((f) => f.name === name).flatMap((f) => f.metrics);
}

async function scrape(base: string): Promise<Exposition> {
  const r = await get(`${base}/metrics`);
  assert.equal(r.status, 200, r.body);
  return read(r.body);
}

/** Add "metrics" to the fixture's config, then start its agent (not started by fixture()). */
async function startWithMetrics(t: TestContext, f: Fixture, metrics: Record<string, unknown>): Promise<void> {
  const config = JSON.parse(await readFile(f.config, 'utf8')) as Record<string, unknown>;
  await writeFile(f.config, `${JSON.stringify({ ...config, metrics }, null, 2)}\n`);
  f.agent = startAgent(t, f.config);
  await nthEntry(f, 1);
}

/** An HTTP request with any method, on a new connection: status, headers, body. */
function request(method: string, url: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.setTimeout(5_000, () => req.destroy(new Error(`${method} ${url} timed out`)));
    req.end(method === 'POST' || method === 'PUT' ? 'x=1' : undefined);
  });
}

test('metrics after real deploys, a rollback, a refusal and a crash loop: valid to promtool, the values the journal says; the textfile too', async (t) => {
  if (!(await needProgram(t, PROMTOOL, 'prometheus'))) return;
  const f = await fixture(t, { agent: false, supervise: { stableMs: 4_000, maxRetries: 2, backoffMs: 200, maxBackoffMs: 400 } });
  const port = await freePort();
  const folder = path.join(f.root, 'textfile');
  await mkdir(folder, { mode: 0o755 });
  const textfile = path.join(folder, 'relink.prom');
  await startWithMetrics(t, f, { listen: `127.0.0.1:${port}`, textfile });
  const base = `http://127.0.0.1:${port}`;
  await f.agent.waitForLog('the listener', (l) => l.msg.startsWith('serving the metrics at'));

  await setCurrentText(f.app, '2.0');
  assert.equal((await nthEntry(f, 2)).outcome, 'deployed');
  await setCurrentText(f.app, 'sick');
  assert.equal((await nthEntry(f, 3)).outcome, 'rolled_back');
  await writeFileAtomic(f.app.currentFile, '{"bin.file": "app.2.0", "cfg.flie": "cfg.2.0"}\n');
  assert.equal((await nthEntry(f, 4)).outcome, 'refused');
  // flaky passes its verdict, then exits 1.5 s after every start: two quick restarts, then fatal.
  await setCurrentText(f.app, 'flaky');
  const flaky = await nthEntry(f, 5);
  assert.equal(flaky.outcome, 'deployed', flaky.reason ?? '');
  await f.agent.waitForLog('fatal', (l) => l.msg.startsWith('app keeps crashing; marked fatal'), { timeoutMs: 30_000 });

  const m = await waitFor('the scrape to show the fatal state', async () => {
    const fams = await scrape(base);
    return value(fams, 'relink_app_state', { app: 'web', state: 'fatal' }) === 1 ? fams : undefined;
  });
  const web = { app: 'web' };
  assert.deepEqual(['deployed', 'rolled_back', 'refused', 'failed', 'stopped'].map((outcome) => value(m, 'relink_deploys_total', { ...web, outcome })), [3, 1, 1, 0, 0],
    '1.0 (started), 2.0 and flaky deployed, sick rolled back, the typo refused');
  // Each attempt that started or signalled the app is timed: 1.0's start, 2.0, sick (with its rollback), flaky.
  assert.equal(value(m, 'relink_deploy_duration_seconds_count', web), 4);
  // Time to verdict: the writes of current.conf only (not the agent's first pass on 1.0).
  assert.equal(value(m, 'relink_deploy_verdict_seconds_count', { ...web, outcome: 'deployed' }), 2);
  assert.equal(value(m, 'relink_deploy_verdict_seconds_count', { ...web, outcome: 'rolled_back' }), 1);
  assert.equal(value(m, 'relink_deploy_verdict_seconds_count', { ...web, outcome: 'refused' }), 1);
  assert.equal(value(m, 'relink_app_restarts_total', web), 2, 'maxRetries restarts, then fatal');
  assert.equal(value(m, 'relink_app_crash_loop', web), 1);
  assert.equal(value(m, 'relink_app_up', web), 0);
  assert.equal(series(m, 'relink_app_state').filter((s) => s.labels?.['app'] === 'web' && s.value === '1').length, 1, 'one state at a time');
  assert.deepEqual(series(m, 'relink_release_info').map((s) => s.labels), [{ app: 'web', bin: path.join(f.app.releasesDir, 'app.flaky'), cfg: path.join(f.app.releasesDir, 'cfg.flaky') }]);
  assert.equal(value(m, 'relink_last_successful_deploy_timestamp_seconds', web), Date.parse(flaky.time) / 1000);
  assert.equal(series(m, 'relink_build_info').length, 1);
  assert.deepEqual(Object.fromEntries([...m.types].filter(([name]) => name.startsWith('relink_'))), {
    relink_deploys_total: 'COUNTER', relink_deploy_duration_seconds: 'HISTOGRAM', relink_deploy_verdict_seconds: 'HISTOGRAM', relink_app_up: 'GAUGE',
    relink_app_state: 'GAUGE', relink_app_crash_loop: 'GAUGE', relink_app_restarts_total: 'COUNTER', relink_release_info: 'GAUGE',
    relink_last_successful_deploy_timestamp_seconds: 'GAUGE', relink_build_info: 'GAUGE',
  });
  // The agent's own process, from prom-client's collectDefaultMetrics.
  assert.ok(value(m, 'process_resident_memory_bytes') > 0);
  assert.ok(series(m, 'nodejs_heap_size_used_bytes').length > 0);

  // The next deploy ends the crash loop.
  await setCurrentText(f.app, '2.0');
  assert.equal((await nthEntry(f, 6)).outcome, 'deployed');
  await servedBy(f.app, '2.0');
  const after = await waitFor('the scrape to show 2.0 running', async () => {
    const fams = await scrape(base);
    return value(fams, 'relink_app_up', web) === 1 && series(fams, 'relink_release_info')[0]?.labels?.['bin']?.endsWith('app.2.0') ? fams : undefined;
  });
  assert.equal(value(after, 'relink_app_crash_loop', web), 0);
  assert.equal(value(after, 'relink_app_state', { ...web, state: 'running' }), 1);
  assert.equal(value(after, 'relink_deploys_total', { ...web, outcome: 'deployed' }), 4);

  // promtool: the whole exposition passes its lint, prom-client's own
  // process and nodejs_ series included (it names three gauges *_total:
  // left out).
  const exposition = (await get(`${base}/metrics`)).body;
  const lint = await promtool(exposition);
  assert.deepEqual(lint, { code: 0, problems: [] });

  // The textfile: the same relink_ values, clean to promtool, and no process
  // metrics (node_exporter has its own process_* series).
  const file = await waitFor('the textfile to have the last deploy', async () => {
    const text = await readFile(textfile, 'utf8');
    return value(read(text), 'relink_deploys_total', { ...web, outcome: 'deployed' }) === 4 ? text : undefined;
  });
  assert.deepEqual(await promtool(file), { code: 0, problems: [] });
  const fams = read(file);
  assert.deepEqual([...fams.types.keys()].filter((name) => !name.startsWith('relink_')), []);
  assert.equal(value(fams, 'relink_app_restarts_total', web), 2);
  assert.equal((await stat(textfile)).mode & 0o777, 0o644, 'node_exporter reads it as its own user');
});

test('the textfile is replaced atomically: a reader loop never sees half of it (a control writer in place shows the reader would)', async (t) => {
  const f = await fixture(t, { agent: false });
  const folder = path.join(f.root, 'textfile');
  await mkdir(folder, { mode: 0o755 });
  const textfile = path.join(folder, 'relink.prom');
  await startWithMetrics(t, f, { textfile });
  await waitFor('the first textfile', () => readFile(textfile, 'utf8').catch(() => undefined));

  /** Read `file` until `done()`; every read must be a whole exposition: what parses and ends as relink writes it. */
  const readLoop = async (file: string, done: () => boolean): Promise<{ reads: number; versions: Set<string>; torn: string[] }> => {
    const out = { reads: 0, versions: new Set<string>(), torn: [] as string[] };
    while (!done()) {
      const text = await readFile(file, 'utf8');
      out.reads += 1;
      out.versions.add(text);
      let whole = text.endsWith('\n') && text.includes('# TYPE relink_build_info gauge');
      try {
        if (whole) whole = value(read(text), 'relink_build_info') === 1;
      } catch {
        whole = false;
      }
      if (!whole) out.torn.push(text.slice(-80));
    }
    return out;
  };

  // Control: the same reader against a file rewritten in place, in two
  // halves (as a plain writeFile of a large file is), sees half a file.
  const control = path.join(folder, 'control.prom');
  const whole = await readFile(textfile, 'utf8');
  await writeFile(control, whole);
  let controlDone = false;
  const controlReader = readLoop(control, () => controlDone);
  for (let k = 0; k < 20; k++) {
    const h = await open(control, 'r+');
    await h.truncate(0);
    await h.write(whole.slice(0, whole.length >> 1), 0);
    await new Promise((r) => setTimeout(r, 5));
    await h.write(whole.slice(whole.length >> 1), whole.length >> 1);
    await h.close();
    await new Promise((r) => setTimeout(r, 5));
  }
  controlDone = true;
  assert.ok((await controlReader).torn.length > 0, 'the reader sees a file written in place half way');

  // The agent: deploys back and forth and refusals, each a rewrite of the textfile.
  let done = false;
  const reader = readLoop(textfile, () => done);
  try {
    for (const [n, r] of [[2, '2.0'], [3, '1.0'], [4, '2.0']] as const) {
      await setCurrentText(f.app, r);
      assert.equal((await nthEntry(f, n)).outcome, 'deployed');
    }
    for (let k = 0; k < 8; k++) {
      await writeFileAtomic(f.app.currentFile, `{"bin.file": "app.2.0", "cfg.file": "cfg.2.0", "typo${k}": 1}\n`);
      assert.equal((await nthEntry(f, 5 + k)).outcome, 'refused');
    }
    await waitFor('the textfile to count the refusals', async () => value(read(await readFile(textfile, 'utf8')), 'relink_deploys_total', { app: 'web', outcome: 'refused' }) >= 8);
  } finally {
    done = true;
  }
  const seen = await reader;
  assert.deepEqual(seen.torn, [], `every one of ${seen.reads} reads was a whole file`);
  assert.ok(seen.versions.size >= 4, `the reader saw the file change (${seen.versions.size} versions in ${seen.reads} reads)`);
  // No temp file is left behind, and none of them is named *.prom (node_exporter would read it).
  assert.deepEqual((await readdir(folder)).sort(), ['control.prom', 'relink.prom']);
});

test('node_exporter\'s textfile collector exports the textfile as it is written', async (t) => {
  if (!(await needProgram(t, NODE_EXPORTER, 'prometheus-node-exporter'))) return;
  const f = await fixture(t, { agent: false });
  const folder = path.join(f.root, 'textfile');
  await mkdir(folder, { mode: 0o755 });
  await startWithMetrics(t, f, { textfile: path.join(folder, 'relink.prom') });
  const port = await freePort();
  const exporter = spawn(NODE_EXPORTER, ['--collector.disable-defaults', '--collector.textfile', `--collector.textfile.directory=${folder}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: 'ignore' });
  defer(t, () => new Promise<void>((resolve) => {
    if (exporter.exitCode !== null || exporter.signalCode !== null) return resolve();
    exporter.once('exit', () => resolve());
    exporter.kill('SIGTERM');
  }));
  await setCurrentText(f.app, '2.0');
  assert.equal((await nthEntry(f, 2)).outcome, 'deployed');
  const fams = await waitFor('node_exporter to export the second deploy', async () => {
    const fams = await scrape(`http://127.0.0.1:${port}`);
    return value(fams, 'relink_deploys_total', { app: 'web', outcome: 'deployed' }) === 2 ? fams : undefined;
  });
  assert.equal(value(fams, 'node_textfile_scrape_error'), 0, 'node_exporter read the file without an error');
  assert.equal(value(fams, 'relink_app_up', { app: 'web' }), 1);
  assert.equal(series(fams, 'relink_release_info')[0]?.labels?.['bin'], path.join(f.app.releasesDir, 'app.2.0'));
});

test('the listener is read-only: GET and HEAD only, 405 otherwise, 404 elsewhere', async (t) => {
  const f = await fixture(t, { agent: false });
  const port = await freePort();
  await startWithMetrics(t, f, { listen: `127.0.0.1:${port}` });
  const base = `http://127.0.0.1:${port}`;
  await waitFor('the listener', () => get(`${base}/metrics`).then((r) => r.status === 200, () => false));
  for (const p of ['/', '/metrics']) {
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
      const r = await request(method, `${base}${p}`);
      assert.equal(r.status, 405, `${method} ${p}`);
      assert.equal(r.headers.allow, 'GET, HEAD');
    }
    const head = await request('HEAD', `${base}${p}`);
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
    assert.ok(Number(head.headers['content-length']) > 0);
  }
  assert.equal((await request('GET', `${base}/nothing`)).status, 404);
  const page = await request('GET', `${base}/`);
  assert.match(String(page.headers['content-type']), /^text\/html/);
  assert.match(String(page.headers['content-security-policy']), /default-src 'none'/);
  assert.match(String((await request('GET', `${base}/metrics`)).headers['content-type']), /^text\/plain; version=0\.0\.4/);
  // Nothing was changed by any of it: still the one deploy.
  assert.equal((await nthEntry(f, 1)).outcome, 'deployed');
  assert.equal(f.agent.lines.filter((l) => typeof l.outcome === 'string').length, 1);
});

test('the status page in Chromium: every app with its state, release, PIDs, uptime, restarts, last deploy and the journal; a planted <img> stays text', async (t) => {
  if (!(await needProgram(t, CHROMIUM, 'chromium'))) return;
  const f = await fixture(t, { agent: false });
  const port = await freePort();
  await startWithMetrics(t, f, { listen: `127.0.0.1:${port}` });
  const url = `http://127.0.0.1:${port}/`;
  await servedBy(f.app, '1.0');
  await setCurrentText(f.app, '2.0');
  assert.equal((await nthEntry(f, 2)).outcome, 'deployed');
  const v2 = await servedBy(f.app, '2.0');
  // Whoever writes current.conf writes what its refusal reason quotes: the page must show it as text.
  const planted = '<img id=pwned src=x>';
  await writeFileAtomic(f.app.currentFile, `{"bin.file": "app.2.0", "cfg.file": "cfg.2.0", ${JSON.stringify(planted)}: 1}\n`);
  const refused = await nthEntry(f, 3);
  assert.equal(refused.outcome, 'refused');
  assert.ok(refused.reason?.includes(planted), refused.reason ?? '');

  const profile = await tmpDir(t, 'relink-chromium-');
  const chromium = (extra: readonly string[]): Promise<Run> => run(CHROMIUM, ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', `--user-data-dir=${profile}`, '--hide-scrollbars', ...extra, url], '', 90_000);
  const dom = await chromium(['--dump-dom']);
  assert.equal(dom.code, 0, dom.stderr);
  const html = dom.stdout;
  // The DOM Chromium built: the planted markup is text in it, never an element.
  assert.doesNotMatch(html, /<img\b/i, 'the planted <img> became an element');
  assert.ok(html.includes('&lt;img id=pwned src=x&gt;'), 'the planted markup is shown as text');
  const text = html.replace(/<[^>]*>/g, ' ').replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&').replace(/\s+/g, ' ');
  assert.match(text, /web running/);
  assert.match(text, /release app\.2\.0 \+ cfg\.2\.0/);
  assert.match(text, new RegExp(`generation \\d+ serving: pids ${v2.pid} \\(main\\)`));
  assert.match(text, new RegExp(`uptime \\S+ \\(pid ${v2.pid} since `));
  assert.match(text, /restarts 0 since the last deploy/);
  assert.match(text, /last deploy refused , none/);
  assert.match(text, /reason .*is not a known key/);
  assert.match(text, /Last 3 journal entries/);
  // Newest first: the refusal, 2.0's deploy (signal), 1.0's start.
  const rows = [...html.matchAll(/<tr><td[^>]*>([^<]+)<\/td><td[^>]*>web<\/td><td[^>]*><span class="state o-(\w+)"/g)].map((x) => x[2]);
  assert.deepEqual(rows, ['refused', 'deployed', 'deployed']);

  // At a phone's width (390 CSS px), laid out by Chromium (driven by
  // playwright-core; the page's CSP blocks scripts, so the measuring is done
  // from outside it): nothing is wider than the screen, so nothing needs
  // sideways scrolling (the journal table used to), and each journal cell
  // reads "label: value".
  const { chromium: driver } = await import('playwright-core');
  const browser = await driver.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
  defer(t, () => browser.close());
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, bypassCSP: true });
  await phone.goto(url);
  const layout = await phone.evaluate(`({ page: document.documentElement.scrollWidth, screen: document.documentElement.clientWidth,
    widest: Math.max(...[...document.querySelectorAll('body *')].map((e) => e.getBoundingClientRect().right)) })`) as { page: number; screen: number; widest: number };
  assert.ok(layout.page <= layout.screen && layout.widest <= layout.screen, `wider than the phone's screen: ${JSON.stringify(layout)}`);
  const cell = await phone.evaluate(`(() => { const td = document.querySelector('tbody td'); return { display: getComputedStyle(td).display, label: getComputedStyle(td, '::before').content, head: getComputedStyle(document.querySelector('thead')).display }; })()`);
  assert.deepEqual(cell, { display: 'block', label: '"time: "', head: 'none' }, 'each journal row a block of labelled lines');
  await mkdir(ARTIFACTS, { recursive: true });
  const shot = path.join(ARTIFACTS, 'status-page-phone.png');
  await phone.screenshot({ path: shot, fullPage: true });
  assert.ok((await readFile(shot)).subarray(1, 4).toString() === 'PNG', 'a PNG screenshot');
  t.diagnostic(`screenshot of the status page at a phone's size: ${shot}`);
});

test('a config reload exports an app added and drops one removed; the others keep their counts', async (t) => {
  const f = await fixture(t, { agent: false });
  const port = await freePort();
  await startWithMetrics(t, f, { listen: `127.0.0.1:${port}` });
  const base = `http://127.0.0.1:${port}`;
  await setCurrentText(f.app, '2.0');
  assert.equal((await nthEntry(f, 2)).outcome, 'deployed');
  const two = await makeApp({ root: f.root, name: 'two', binary: await buildDemoApp() });
  reapAppsAfter(t, two.releasesDir);
  await setCurrentText(two as DemoApp, '1.0');
  const config = JSON.parse(await readFile(f.config, 'utf8')) as { apps: Array<Record<string, unknown>> };
  const withTwo = { ...config, apps: [...config.apps, { ...config.apps[0], name: 'two', dir: two.dir, health: { url: `${two.url}healthz`, settleMs: 200, deadlineMs: 3_000 } }] };
  await writeFile(f.config, `${JSON.stringify(withTwo, null, 2)}\n`);
  assert.equal((await relinkCli(['reload', '--config', f.config, '--wait', '--timeout', '30'])).code, 0);
  const added = await waitFor('two exported and deployed', async () => {
    const fams = await scrape(base);
    return series(fams, 'relink_deploys_total').some((s) => s.labels?.['app'] === 'two' && s.labels['outcome'] === 'deployed' && s.value === '1') ? fams : undefined;
  });
  assert.equal(value(added, 'relink_deploys_total', { app: 'web', outcome: 'deployed' }), 2, 'web keeps its counts');
  assert.equal(series(added, 'relink_release_info').length, 2);
  await waitFor('two up', async () => value(await scrape(base), 'relink_app_up', { app: 'two' }) === 1);

  await writeFile(f.config, `${JSON.stringify(config, null, 2)}\n`);
  assert.equal((await relinkCli(['reload', '--config', f.config, '--wait', '--timeout', '30'])).code, 0);
  const fams = await scrape(base);
  const apps = new Set(fams.samples.flatMap((x) => x.metrics.map((s) => s.labels?.['app'])).filter((a) => a !== undefined));
  assert.deepEqual([...apps], ['web'], 'no series of the app let go');
  assert.equal(value(fams, 'relink_deploys_total', { app: 'web', outcome: 'deployed' }), 2);
});

test('metrics.listen other hosts could reach is refused unless "public" says so; a textfile must be an absolute *.prom', () => {
  const load = (metrics: unknown) => parseConfig(JSON.stringify({ metrics, apps: [{ name: 'web', dir: '/srv/web' }] }), '/etc/relink/config.json');
  for (const listen of ['0.0.0.0:9464', '[::]:9464', '192.0.2.10:9464', '[2001:db8::1]:9464']) {
    assert.throws(() => load({ listen }), (err: Error) => {
      assert.equal(err.message, `/etc/relink/config.json: "metrics.listen": must be a loopback address ("127.0.0.1:PORT", "[::1]:PORT") or "unix:/path": the status page shows every app's state and the journal's reasons to whoever connects; set "metrics.public": true to serve them to other hosts (found: ${JSON.stringify(listen)})`);
      return true;
    });
    assert.equal(load({ listen, public: true }).metrics?.listen, listen);
  }
  for (const listen of ['127.0.0.1:9464', '127.1.2.3:9464', '[::1]:9464', 'unix:/run/relink/metrics.sock']) assert.equal(load({ listen }).metrics?.public, false);
  // "localhost" means this host: the hint is the loopback addresses, not 0.0.0.0 (which would be refused anyway).
  assert.throws(() => load({ listen: 'localhost:9464' }), { message: '/etc/relink/config.json: "metrics.listen": "localhost" is a host name: write an IP address: for this host only (what "localhost" means) "127.0.0.1" or "[::1]"; a name could resolve differently later (found: "localhost:9464")' });
  // What was found is said once.
  assert.throws(() => load({ listen: '127.0.0.1:99999' }), { message: '/etc/relink/config.json: "metrics.listen": the port must be a number 1-65535 (found: "127.0.0.1:99999")' });
  assert.throws(() => load({ textfile: 'relink.prom' }), /"metrics.textfile": must be an absolute path \(found: "relink.prom"\)/);
  assert.throws(() => load({ textfile: '/var/lib/node_exporter/relink.txt' }), /"metrics.textfile": must name a file ending in "\.prom"/);
  // Neither a listener nor a textfile: refused, not silently off.
  for (const metrics of [{}, { public: true }]) {
    assert.throws(() => load(metrics), { message: `/etc/relink/config.json: "metrics": needs "listen" or "textfile" (or both): with neither, nothing is served or written (found: ${JSON.stringify(metrics)})` });
  }
  assert.equal(load(null).metrics, undefined);
  assert.equal(parseConfig(JSON.stringify({ apps: [{ name: 'web', dir: '/srv/web' }] }), '/c.json').metrics, undefined, 'off by default');
});

test('an address already taken: said in the log, and the agent and the app run on; the textfile is still written; a reload binds it once free; a textfile no longer named is deleted', async (t) => {
  const f = await fixture(t, { agent: false });
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  const free = (): Promise<void> => new Promise<void>((resolve) => taken.close(() => resolve()));
  defer(t, () => (taken.listening ? free() : undefined));
  const port = (taken.address() as net.AddressInfo).port;
  const folder = path.join(f.root, 'textfile');
  await mkdir(folder, { mode: 0o755 });
  await startWithMetrics(t, f, { listen: `127.0.0.1:${port}`, textfile: path.join(folder, 'relink.prom') });
  const line = await f.agent.waitForLog('the bind failure', (l) => l.code === 'METRICS_UNAVAILABLE');
  assert.match(line.msg, new RegExp(`^cannot serve the metrics and the status page on 127\\.0\\.0\\.1:${port} \\(.*EADDRINUSE.*\\): the agent and the apps run on without them`));
  await servedBy(f.app, '1.0');
  await setCurrentText(f.app, '2.0');
  assert.equal((await nthEntry(f, 2)).outcome, 'deployed');
  const first = path.join(folder, 'relink.prom');
  await waitFor('the textfile', async () => value(read(await readFile(first, 'utf8')), 'relink_deploys_total', { app: 'web', outcome: 'deployed' }) === 2);

  // The address is free now: a reload of the same config serves there (the log said "relink reload").
  await free();
  assert.equal((await relinkCli(['reload', '--config', f.config, '--wait', '--timeout', '30'])).code, 0);
  const base = `http://127.0.0.1:${port}`;
  assert.equal(value(await scrape(base), 'relink_deploys_total', { app: 'web', outcome: 'deployed' }), 2);

  // A reload asking for what cannot be done says so, and changes nothing
  // that worked: an address in use keeps the listener where it was; a
  // textfile folder every user can write is refused (warning: lines).
  const config = JSON.parse(await readFile(f.config, 'utf8')) as Record<string, unknown>;
  const busy = net.createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  defer(t, () => new Promise<void>((resolve) => busy.close(() => resolve())));
  const busyPort = (busy.address() as net.AddressInfo).port;
  const open = path.join(f.root, 'open');
  await mkdir(open, { mode: 0o777 });
  await chmod(open, 0o777);
  await writeFile(f.config, `${JSON.stringify({ ...config, metrics: { listen: `127.0.0.1:${busyPort}`, textfile: path.join(open, 'relink.prom') } }, null, 2)}\n`);
  const refusedBoth = await relinkCli(['reload', '--config', f.config, '--wait', '--timeout', '30']);
  assert.equal(refusedBoth.code, 0, refusedBoth.stderr);
  assert.match(refusedBoth.stdout, new RegExp(`\nwarning: cannot serve the metrics and the status page on 127\\.0\\.0\\.1:${busyPort} \\(.*EADDRINUSE.*\\): still serving on 127\\.0\\.0\\.1:${port};`));
  assert.match(refusedBoth.stdout, /\nwarning: metrics textfile .*open\/relink\.prom: .*writable by every user/);
  assert.equal(value(await scrape(base), 'relink_deploys_total', { app: 'web', outcome: 'deployed' }), 2, 'still served where it was');

  // The textfile moved: the new one written, the old one gone (node_exporter
  // would export its last values forever), and not written again.
  const second = path.join(folder, 'moved.prom');
  await writeFile(f.config, `${JSON.stringify({ ...config, metrics: { listen: `127.0.0.1:${port}`, textfile: second } }, null, 2)}\n`);
  assert.equal((await relinkCli(['reload', '--config', f.config, '--wait', '--timeout', '30'])).code, 0);
  await waitFor('the moved textfile', async () => (await readFile(second, 'utf8').catch(() => '')).includes('relink_deploys_total'));
  await setCurrentText(f.app, '1.0');
  assert.equal((await nthEntry(f, 3)).outcome, 'deployed');
  await waitFor('the moved textfile to count the deploy', async () => value(read(await readFile(second, 'utf8')), 'relink_deploys_total', { app: 'web', outcome: 'deployed' }) === 3);
  assert.deepEqual(await readdir(folder), ['moved.prom']);

  // Metrics off: the listener closes and the textfile goes.
  await writeFile(f.config, `${JSON.stringify({ ...config, metrics: undefined }, null, 2)}\n`);
  assert.equal((await relinkCli(['reload', '--config', f.config, '--wait', '--timeout', '30'])).code, 0);
  assert.deepEqual(await readdir(folder), []);
  await assert.rejects(get(`${base}/metrics`), /ECONNREFUSED/);
});

test('a unix socket listener: served there, a stale socket file replaced', async (t) => {
  const f = await fixture(t, { agent: false });
  const sock = path.join(f.root, 'metrics.sock');
  // A socket file an agent that was killed left behind: nobody listens on it.
  const stale = net.createServer();
  await new Promise<void>((resolve) => stale.listen(sock, resolve));
  await link(sock, `${sock}.keep`);
  await new Promise<void>((resolve) => stale.close(() => resolve()));
  await rename(`${sock}.keep`, sock);
  await startWithMetrics(t, f, { listen: `unix:${sock}` });
  const body = await waitFor('a scrape over the unix socket', () => new Promise<string | undefined>((resolve) => {
    http.get({ socketPath: sock, path: '/metrics', agent: false }, (res) => {
      let b = '';
      res.setEncoding('utf8').on('data', (c: string) => { b += c; });
      res.on('end', () => resolve(res.statusCode === 200 ? b : undefined));
    }).on('error', () => resolve(undefined));
  }));
  assert.equal(value(read(body), 'relink_deploys_total', { app: 'web', outcome: 'deployed' }), 1);
});

test('a textfile folder every user can write is refused (said once, nothing written), and written once it is fixed', async (t) => {
  const f = await fixture(t, { agent: false });
  const folder = path.join(f.root, 'open');
  await mkdir(folder);
  await chmod(folder, 0o777);
  const textfile = path.join(folder, 'relink.prom');
  await startWithMetrics(t, f, { textfile });
  const line = await f.agent.waitForLog('the refusal', (l) => l.code === 'UNTRUSTED_PATH');
  assert.equal(line.msg, `metrics textfile: ${f.config}: "metrics.textfile": must be in a folder that no app's user can write, nor every user (the agent writes it as root, for another program to read) (found: ${folder} is writable by every user, mode 0777); the textfile is not written (the listener, the agent and the apps are not affected)`);
  await setCurrentText(f.app, '2.0');
  assert.equal((await nthEntry(f, 2)).outcome, 'deployed');
  await assert.rejects(readFile(textfile), /ENOENT/);
  await chmod(folder, 0o755);
  // Checked again at the next periodic write (every 15 s).
  await waitFor('the textfile once the folder is fixed', () => readFile(textfile, 'utf8').catch(() => undefined), { timeoutMs: 30_000 });
  assert.equal(f.agent.lines.filter((l) => l.code === 'UNTRUSTED_PATH').length, 1, 'said once');
});

test('the textfile\'s folder: refused when an app\'s user owns it or can write it through its group; another account\'s is fine', async (t) => {
  if (!rootOnly(t)) return;
  const dir = await tmpDir(t);
  await chmod(dir, 0o755);
  const appUser = await testUser(t);
  const group = await testGroup(t);
  const member = await testUser(t, [group]);
  const other = await testUser(t);
  const writers = [{ app: 'web', user: appUser.name, uid: appUser.uid, gid: appUser.gid }, { app: 'api', user: member.name, uid: member.uid, gid: member.gid }];
  const check = (d: string) => checkFolderForRoot(d, writers, '/etc/relink/config.json', 'metrics.textfile');

  const owned = path.join(dir, 'owned');
  await mkdir(owned, { mode: 0o755 });
  await chown(owned, appUser.uid, appUser.gid);
  assert.match((await check(owned))?.message ?? '', new RegExp(`found: ${owned} is owned by ${appUser.name} \\(uid ${appUser.uid}\\), the user of app web, mode 0755\\)$`));
  // Below a folder an app's user owns: it could rename the folder away and put its own in place.
  const below = path.join(owned, 'textfile');
  await mkdir(below, { mode: 0o755 });
  assert.match((await check(below))?.message ?? '', new RegExp(`found: ${owned} is owned by ${appUser.name}`));

  const grouped = path.join(dir, 'grouped');
  await mkdir(grouped);
  await chown(grouped, 0, group.gid);
  await chmod(grouped, 0o775);
  assert.match((await check(grouped))?.message ?? '', new RegExp(`found: ${grouped} is writable by group ${group.name}, which holds ${member.name} \\(uid ${member.uid}\\), the user of app api, mode 0775\\)$`));

  // The prometheus user owning /var/lib/prometheus on Debian: not an app's.
  const others = path.join(dir, 'others');
  await mkdir(others, { mode: 0o755 });
  await chown(others, other.uid, other.gid);
  const inside = path.join(others, 'node-exporter');
  await mkdir(inside, { mode: 0o755 });
  assert.equal(await check(inside), undefined);
  assert.equal(await check(dir), undefined);
  assert.equal((await check(path.join(dir, 'missing')))?.code, 'FILE_UNREADABLE');
});

test('metrics off: prom-client is never loaded (on: it is)', async (t) => {
  const loaded = async (metrics: Record<string, unknown> | undefined): Promise<boolean> => {
    const f = await fixture(t, { agent: false });
    if (metrics !== undefined) {
      const config = JSON.parse(await readFile(f.config, 'utf8')) as Record<string, unknown>;
      await writeFile(f.config, `${JSON.stringify({ ...config, metrics }, null, 2)}\n`);
    }
    // NODE_DEBUG=module: Node's module loader names every CommonJS file it loads (prom-client is one) on stderr.
    const agent = spawn(RELINK[0]!, [...RELINK.slice(1), 'agent', '--config', f.config], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_DEBUG: 'module' } });
    let stderr = '';
    let stdout = '';
    agent.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
    agent.stdout.setEncoding('utf8').on('data', (c: string) => { stdout += c; });
    const exited = new Promise((resolve) => agent.once('exit', resolve));
    defer(t, async () => {
      agent.kill('SIGTERM');
      await exited;
    });
    await waitFor('the first deploy', () => stdout.includes('"outcome":"deployed"'), { timeoutMs: 30_000 });
    return /node_modules\/prom-client\//.test(stderr);
  };
  assert.equal(await loaded(undefined), false);
  assert.equal(await loaded({ listen: `127.0.0.1:${await freePort()}` }), true);
});

test('a unix socket listener in a folder every user can write is refused (root would chmod whatever is put at its path), naming metrics.listen; the agent and the app run on', async (t) => {
  const f = await fixture(t, { agent: false });
  const folder = path.join(f.root, 'open-sock');
  await mkdir(folder);
  await chmod(folder, 0o777);
  const sock = path.join(folder, 'metrics.sock');
  await startWithMetrics(t, f, { listen: `unix:${sock}` });
  const line = await f.agent.waitForLog('the refusal', (l) => l.code === 'METRICS_UNAVAILABLE');
  assert.match(line.msg, /"metrics\.listen": must be in a folder that no app's user can write, nor every user .*is writable by every user, mode 0777/);
  await assert.rejects(lstat(sock), /ENOENT/, 'nothing made at the path');
  await setCurrentText(f.app, '2.0');
  assert.equal((await nthEntry(f, 2)).outcome, 'deployed');
});

test('idle connections to the listener cannot use up the agent\'s file descriptors: beyond 64 they are closed as they come, and deploys go on', async (t) => {
  const f = await fixture(t, { agent: false });
  const port = await freePort();
  await startWithMetrics(t, f, { listen: `127.0.0.1:${port}` });
  const fds = async (): Promise<number> => (await readdir(`/proc/${f.agent.child.pid}/fd`)).length;
  const before = await fds();
  // 300 connections that never send a byte, as any local user could open.
  const idle: net.Socket[] = [];
  defer(t, () => { for (const c of idle) c.destroy(); });
  await Promise.all(Array.from({ length: 300 }, () => new Promise<void>((resolve) => {
    const c = net.connect({ port, host: '127.0.0.1' }, () => resolve());
    c.on('error', () => resolve());
    idle.push(c);
  })));
  await waitFor('the extra connections closed by the agent', () => (idle.filter((c) => !c.destroyed && !c.readableEnded).length <= 64 ? true : undefined), { timeoutMs: 10_000 });
  assert.ok((await fds()) < before + 100, `the agent holds ${await fds()} fds (was ${before})`);
  await setCurrentText(f.app, '2.0');
  assert.equal((await nthEntry(f, 2)).outcome, 'deployed');
});

test('the last successful deploy is a change of release: an agent starting the same release again (it found the app down) or a relink start does not move it', async () => {
  const m = new Metrics();
  m.addApp('web', 'running', true);
  const rel = (r: string) => ({ bin: `/srv/web/release/app.${r}`, cfg: `/srv/web/release/cfg.${r}` });
  const entry = (time: string, from: { bin: string | null; cfg: string | null }, to: { bin: string | null; cfg: string | null }, extra: Partial<HistoryEntry> = {}): HistoryEntry => ({
    time, app: 'web', outcome: 'deployed', action: 'start', from, to, reason: null, code: null, pidBefore: null, pidAfter: 42, durationMs: 5, currentHash: null, trigger: 'watch:change', ...extra,
  }) as HistoryEntry;
  const last = async () => Number(/^relink_last_successful_deploy_timestamp_seconds\{app="web"\} (\S+)$/m.exec(await m.apps.metrics())?.[1]);
  m.verdict(entry('2026-11-30T10:00:00.000Z', { bin: null, cfg: null }, rel('1.0')), undefined);
  assert.equal(await last(), Date.parse('2026-11-30T10:00:00.000Z') / 1000, 'the first deploy');
  m.verdict(entry('2026-11-30T11:00:00.000Z', rel('1.0'), rel('1.0'), { trigger: 'startup' }), undefined);
  m.verdict(entry('2026-11-30T12:00:00.000Z', rel('1.0'), rel('1.0'), { command: 'start', request: '00000000-0000-4000-8000-000000000001' }), undefined);
  assert.equal(await last(), Date.parse('2026-11-30T10:00:00.000Z') / 1000, 'neither moved it');
  m.verdict(entry('2026-11-30T13:00:00.000Z', rel('1.0'), rel('2.0'), { action: 'signal' }), undefined);
  assert.equal(await last(), Date.parse('2026-11-30T13:00:00.000Z') / 1000);
});

test('the README\'s alerting rules are valid to promtool check rules, and the textfile rule matches the file label Debian\'s node_exporter gives (the whole path)', async (t) => {
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  const block = /```yaml\nscrape_configs:[^]*?\n(groups:\n[^]*?)```/.exec(readme)?.[1];
  assert.ok(block !== undefined, 'the rules block in README "Metrics and status page"');
  const dir = await tmpDir(t);
  const rules = path.join(dir, 'rules.yml');
  await writeFile(rules, block);
  const r = await runProgram(PROMTOOL, ['check', 'rules', rules]);
  assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /SUCCESS: 5 rules found/);
  // The pattern the stale rule uses, on both spellings of the label.
  const pattern = /file=~"([^"]+)"/.exec(block)?.[1]?.replace(/\\\\/g, '\\');
  assert.ok(pattern !== undefined);
  for (const label of ['/var/lib/prometheus/node-exporter/relink.prom', 'relink.prom']) assert.match(label, new RegExp(`^(?:${pattern})$`));
  assert.doesNotMatch('/var/lib/prometheus/node-exporter/relinkXprom', new RegExp(`^(?:${pattern})$`));
});

test('the status page names each generation\'s role as relink status does: a new one is "new, not judged yet", not draining; a quiesced old master is "serving, quiesced since"', () => {
  const proc = (pid: number, main: boolean) => ({ pid, startedAt: '2026-12-03T10:00:00.000Z', exe: '/srv/web/release/app.1.0', deleted: false, main });
  const app = {
    name: 'web', state: 'deploying', pid: 10, since: '2026-12-03T10:00:00.000Z', bin: '/srv/web/release/app.2.0', cfg: '/srv/web/release/cfg.2.0',
    held: null, restarts: 0, lastDeploy: null, problem: null, warnings: [],
    generations: [
      { gen: 3, role: 'new', drainingSince: null, quiesced: null, processes: [proc(30, false)] },
      { gen: 2, role: 'serving', drainingSince: null, quiesced: '2026-12-03T10:05:00.000Z', processes: [proc(10, true)] },
      { gen: 1, role: 'draining', drainingSince: '2026-12-03T10:01:00.000Z', quiesced: null, processes: [proc(5, false)] },
    ],
  };
  const html = renderStatusPage({
    agent: { pid: 1, version: 'test', startedAt: '2026-12-03T09:00:00.000Z', config: '/etc/relink/config.json' },
    apps: [app as unknown as Parameters<typeof renderStatusPage>[0]['apps'][number]], recent: [], unreadable: [], refreshSeconds: 5, now: Date.parse('2026-12-03T10:06:00.000Z'),
  });
  assert.match(html, /generation 3<\/dt><dd>new, not judged yet: pids 30/);
  assert.match(html, /generation 2<\/dt><dd>serving, quiesced since 2026-12-03T10:05:00\.000Z \(its workers stopped/);
  assert.match(html, /generation 1<\/dt><dd>draining since 2026-12-03T10:01:00\.000Z: pids 5/);
});
