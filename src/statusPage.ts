/**
 * The status page served at `/` beside the metrics (src/monitoring.ts): one
 * HTML document, rendered here from what `relink status` computes
 * (src/cli/status.ts appStatus) and the newest journal entries. No script at
 * all: it refreshes itself with <meta http-equiv="refresh">, and reads on a
 * phone (a viewport, one column, tables that scroll sideways).
 *
 * Everything shown comes through escapeHtml: app names are the config's,
 * but reasons, paths and release names come from files the apps' users
 * write (current.conf, release file names, a preflight's output).
 */
import path from 'node:path';
import { generationState, type AppStatus } from './cli/status.js';
import { ago } from './cli/io.js';
import type { HistoryEntry } from './history.js';

export interface PageData {
  readonly agent: { readonly pid: number; readonly version: string; readonly startedAt: string; readonly config: string };
  readonly apps: readonly AppStatus[];
  /** The newest journal entries of every app, oldest first (as newestEntries returns them). */
  readonly recent: readonly HistoryEntry[];
  /** Apps whose journal could not be read, with why. */
  readonly unreadable: ReadonlyArray<{ readonly app: string; readonly message: string }>;
  /** When the page was made (ms). */
  readonly now: number;
  /** The page reloads itself this often (s). */
  readonly refreshSeconds: number;
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text safe in HTML content and in a quoted attribute. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

/** The journal table's columns (also each cell's label on a phone). */
const JOURNAL_COLUMNS = ['time', 'app', 'outcome', 'action', 'release', 'took', 'reason'] as const;

/** Characters of a reason shown in the journal table (a preflight's output runs to 4 KiB); the app's card shows it whole. */
const REASON_CHARS = 300;

const STYLE = `
body{font:15px/1.4 system-ui,-apple-system,sans-serif;margin:0 auto;padding:12px;max-width:960px;color:#1b1b1b;background:#f6f6f4}
h1{font-size:1.3em;margin:0 0 4px}h2{font-size:1.1em;margin:20px 0 8px}
.meta{color:#555;font-size:.9em}
.app{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px 12px;margin:10px 0}
.app h3{margin:0 0 6px;font-size:1.05em;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:0}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;font-weight:600;color:#fff;background:#777}
.s-running,.o-deployed{background:#1f7a3a}.s-deploying{background:#1d5fa8}.s-stopped,.o-stopped{background:#777}
.s-backoff,.o-refused{background:#a86a00}.s-fatal,.s-failed,.s-error,.o-failed,.o-rolled_back{background:#b3261e}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.9em;background:#fff}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 6px;text-align:left;vertical-align:top}
td.reason{min-width:16em;overflow-wrap:anywhere}
@media (max-width:900px){.scroll table,.scroll tbody,.scroll tr,.scroll td{display:block}.scroll thead{display:none}
.scroll tr{border-bottom:1px solid #d6d6d6;padding:4px 0}.scroll td{border:0;padding:1px 6px;overflow-wrap:anywhere}
.scroll td::before{content:attr(data-label) ": ";color:#555}td.reason{min-width:0}}
`;

function badge(kind: 's' | 'o', value: string): string {
  return `<span class="state ${kind}-${escapeHtml(value)}">${escapeHtml(value.replace('_', ' '))}</span>`;
}

function row(label: string, html: string): string {
  return `<dt>${escapeHtml(label)}</dt><dd>${html}</dd>`;
}

/** A release file by its name, the whole path on hover. */
function file(p: string | null): string {
  return p === null ? '(no link)' : `<span title="${escapeHtml(p)}">${escapeHtml(path.basename(p))}</span>`;
}

function appCard(a: AppStatus, now: number): string {
  const rows: string[] = [];
  rows.push(row('release', `${file(a.bin)} + ${file(a.cfg)}`));
  if (a.held !== null) rows.push(row('held', `stopped by relink stop at ${escapeHtml(a.held)}`));
  if (a.pid !== null && a.since !== null) rows.push(row('uptime', `${escapeHtml(ago(a.since, now))} (pid ${a.pid} since ${escapeHtml(a.since)})`));
  for (const g of a.generations) {
    const what = generationState(g, true);
    const pids = g.processes.map((p) => `${p.pid}${p.main ? ' (main)' : ''}`).join(', ');
    rows.push(row(`generation ${g.gen}`, `${escapeHtml(what)}: pids ${escapeHtml(pids)}`));
  }
  rows.push(row('restarts', `${a.restarts} since the last deploy`));
  const d = a.lastDeploy;
  if (d !== null) {
    const to = d.to.bin === null ? '' : ` ${file(d.to.bin)}`;
    // An entry answering relink stop | start | restart is no deploy: named as what it was.
    rows.push(row(d.command === undefined ? 'last deploy' : `last relink ${d.command}`, `${badge('o', d.outcome)}${to}, ${escapeHtml(d.action)}, ${escapeHtml(d.time)} (${escapeHtml(ago(d.time, now))} ago)`));
    if (d.reason !== null) rows.push(row('reason', escapeHtml(d.reason)));
  }
  if (a.problem !== null) rows.push(row('problem', `${escapeHtml(a.problem.message)} [${escapeHtml(a.problem.code)}] since ${escapeHtml(a.problem.since)} (${escapeHtml(ago(a.problem.since, now))} ago)`));
  for (const w of a.warnings) rows.push(row('warning', escapeHtml(w)));
  return `<section class="app"><h3>${escapeHtml(a.name)} ${badge('s', a.state)}</h3><dl>${rows.join('')}</dl></section>`;
}

function journalRow(e: HistoryEntry): string {
  const reason = e.reason === null ? '' : e.reason.length > REASON_CHARS ? `${e.reason.slice(0, REASON_CHARS)}...` : e.reason;
  const outcome = `${badge('o', e.outcome)}${e.repeats === undefined ? '' : ` x${e.repeats}`}`;
  const cells = [escapeHtml(e.time), escapeHtml(e.app), outcome, escapeHtml(e.command ?? e.action), e.to.bin === null ? '' : file(e.to.bin), `${e.durationMs} ms`,
    `${escapeHtml(reason)}${e.code === null ? '' : ` [${escapeHtml(e.code)}]`}`];
  // data-label: on a phone each row is a block of "label: value" lines (no sideways scrolling).
  return `<tr>${cells.map((c, i) => `<td data-label="${JOURNAL_COLUMNS[i]}"${i === cells.length - 1 ? ' class="reason"' : ''}>${c}</td>`).join('')}</tr>`;
}

/** The whole page. */
export function renderStatusPage(d: PageData): string {
  const recent = [...d.recent].reverse();
  const unreadable = d.unreadable.map((u) => `<p class="meta">${escapeHtml(u.app)}: journal not readable (${escapeHtml(u.message)})</p>`).join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="${d.refreshSeconds}">
<title>relink: ${d.apps.length} app${d.apps.length === 1 ? '' : 's'}</title>
<style>${STYLE}</style></head><body>
<h1>relink</h1>
<p class="meta">agent pid ${d.agent.pid}, version ${escapeHtml(d.agent.version)}, up ${escapeHtml(ago(d.agent.startedAt, d.now))}; ${escapeHtml(d.agent.config)}; as of ${escapeHtml(new Date(d.now).toISOString())}, refreshed every ${d.refreshSeconds} s; <a href="metrics">metrics</a></p>
<h2>Apps</h2>
${d.apps.map((a) => appCard(a, d.now)).join('\n')}
<h2>Last ${d.recent.length} journal entries</h2>
${unreadable}<div class="scroll"><table><thead><tr>${JOURNAL_COLUMNS.map((c) => `<th>${c}</th>`).join('')}</tr></thead>
<tbody>${recent.map(journalRow).join('\n')}</tbody></table></div>
</body></html>
`;
}
