#!/usr/bin/env node
// A plain Node.js HTTP server for the reload strategy tests: no graceful
// restart code. It serves on the socket passed at fd 3
// (`server.listen({ fd: 3 })`) when LISTEN_FDS names this process
// (sd_listen_fds(3)), else on its own port from app.cfg (`port=N`). On
// SIGTERM it stops accepting, finishes its requests and exits.
// GET / answers {"release", "pid"}; GET /healthz 200.
// CommonJS: a release is a copy of this file without an extension, which Node runs as CommonJS.
const { readFileSync, realpathSync } = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const args = process.argv.slice(2);
const cfgFile = args.includes('-c') ? args[args.indexOf('-c') + 1] : 'app.cfg';
const cfg = Object.fromEntries(readFileSync(cfgFile, 'utf8').split('\n').filter((l) => l.includes('=')).map((l) => l.split('=').map((s) => s.trim())));
const release = path.basename(realpathSync(process.argv[1]));
const passed = process.env.LISTEN_PID === String(process.pid) ? Number(process.env.LISTEN_FDS ?? 0) : 0;
for (const k of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES']) delete process.env[k];

const server = http.createServer((req, res) => {
  const body = req.url === '/healthz' ? 'ok\n' : JSON.stringify({ release, pid: process.pid, fds: passed });
  res.writeHead(200, { 'content-length': Buffer.byteLength(body), connection: 'close' });
  res.end(body);
});
server.listen(passed > 0 ? { fd: 3 } : { host: '127.0.0.1', port: Number(cfg.port) }, () => {
  console.log(`fdapp ${release} pid ${process.pid} serving on ${passed > 0 ? 'fd 3' : `port ${cfg.port}`}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
