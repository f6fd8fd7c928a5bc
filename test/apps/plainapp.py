#!/usr/bin/python3
# A plain HTTP server with no graceful-restart code, for the reload
# strategy tests and benchmarks (test/strategies.test.ts, bench/): what most
# apps are. It never re-executes itself and knows no reload signal. It takes
# its listening sockets the systemd way (sd_listen_fds(3): LISTEN_PID is its
# own PID, LISTEN_FDS sockets from fd 3), or binds its own port without them.
# On SIGTERM it stops accepting, finishes the requests it has accepted and
# exits 0 (what any server's shutdown does); other signals kill it.
# Started as `./app.bin -c app.cfg`; a release is a copy of this script.
#
# app.cfg (key=value lines):
#   port=N            bind 127.0.0.1:N when no socket is passed
#   message=TEXT      said in every reply
#   fail_start=1      exit 3 before serving
#   ready_delay_ms=N  sleep this long before serving
#   unhealthy=1       /healthz answers 503
#   unhealthy_env=V   /healthz answers 503 when the environment has V set
#                     (a release that breaks on some hosts only: test/ansible.test.ts)
#   notify=1          send READY=1 to $NOTIFY_SOCKET once serving (sd_notify)
#   notify_ready=0    with notify=1: never send READY=1 (never ready)
#   slow_ms=N         every request takes this long
#   log_requests=1    say each connection accepted and each request on stdout:
#                     "plainapp RELEASE pid P accepted", "plainapp RELEASE pid P GET PATH"
#   daemonize=1       take the passed sockets, then double-fork (a new
#                     session) and serve from the grandchild; the process
#                     started exits 0 at once (a classic daemon)
#   workers=N         pre-fork: the process started (the master) forks N
#                     workers that serve, and serves nothing itself; on
#                     SIGTERM it says so ("master pid P SIGTERM at T"),
#                     passes it on to its workers and waits for them
#   worker_load_ms=M  with workers: worker k (from 0) spins the CPU for k*M
#                     ms before it serves, as a worker loading the app
#                     does, then says "worker k pid P ready at T"
#                     (T: seconds since the epoch)
#
# GET / answers {"release", "pid", "message", "fds", "color"} (color: $APP_COLOR,
# for the tests of a changed env reaching the app); GET /healthz 200 "ok";
# GET /static.txt the file static.txt beside the program as started (argv[0],
# through any link: `current/app` serves current/static.txt), read afresh on
# each request, as a server of its release's assets does (issue 15).
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn


def read_cfg(path):
    cfg = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith('#') and '=' in line:
                k, v = line.split('=', 1)
                cfg[k.strip()] = v.strip()
    return cfg


def passed_sockets():
    # sd_listen_fds(3): only ours when LISTEN_PID names this process.
    if os.environ.get('LISTEN_PID') != str(os.getpid()):
        return []
    n = int(os.environ.get('LISTEN_FDS', '0'))
    for k in ('LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES'):
        os.environ.pop(k, None)
    socks = [socket.socket(fileno=3 + i) for i in range(n)]
    # Non-blocking accept, as servers sharing a socket do: a process blocked
    # in accept() is handed every new connection before one that waits in
    # select(), and would starve the other generation.
    for s in socks:
        s.setblocking(False)
    return socks


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = False
    block_on_close = True
    # The port it binds itself gets the backlog real servers ask for
    # (gunicorn 2048, nginx 511; the kernel caps it at somaxconn), not
    # socketserver's 5: with 5, a burst overflows it and a client's SYN
    # waits a second for its retry, which no real server shows.
    request_queue_size = socket.SOMAXCONN
    # log_requests=1: each connection accepted is said too (one closed
    # before its request was complete, as a probe of a generation that was
    # not the one judged, says nothing else).
    log_accepts = ''

    def verify_request(self, request, client_address):
        if self.log_accepts:
            print(self.log_accepts, flush=True)
        return True


def main():
    args = sys.argv[1:]
    cfg = read_cfg(args[args.index('-c') + 1] if '-c' in args else 'app.cfg')
    release = os.path.basename(os.path.realpath(sys.argv[0]))
    if cfg.get('fail_start') == '1':
        print('plainapp: fail_start=1, exiting', flush=True)
        sys.exit(3)
    delay = int(cfg.get('ready_delay_ms', '0'))
    if delay > 0:
        time.sleep(delay / 1000)
    slow = int(cfg.get('slow_ms', '0')) / 1000
    socks = passed_sockets()
    if cfg.get('daemonize') == '1':
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
    worker = None
    workers = int(cfg.get('workers', '0'))
    if workers > 0:
        kids = []
        for k in range(workers):
            pid = os.fork()
            if pid == 0:
                worker = k
                end = time.monotonic() + k * int(cfg.get('worker_load_ms', '0')) / 1000
                while time.monotonic() < end:
                    pass
                break
            kids.append(pid)
        if worker is None:
            told = threading.Event()
            signal.signal(signal.SIGTERM, lambda signum, frame: told.set())
            while not told.wait(0.1):
                pass
            print(f'plainapp {release} master pid {os.getpid()} SIGTERM at {time.time():.3f}', flush=True)
            for pid in kids:
                os.kill(pid, signal.SIGTERM)
            for pid in kids:
                os.waitpid(pid, 0)
            sys.exit(0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def do_GET(self):
            if cfg.get('log_requests') == '1':
                print(f'plainapp {release} pid {os.getpid()} GET {self.path}', flush=True)
            if slow > 0:
                time.sleep(slow)
            if self.path == '/healthz':
                sick = cfg.get('unhealthy') == '1' or os.environ.get(cfg.get('unhealthy_env', ''), '') != ''
                code = 503 if sick else 200
                body = b'ok\n' if code == 200 else b'unhealthy\n'
            elif self.path == '/static.txt':
                try:
                    with open(os.path.join(os.path.dirname(sys.argv[0]), 'static.txt'), 'rb') as f:
                        code, body = 200, f.read()
                except OSError:
                    code, body = 404, b'no static.txt\n'
            else:
                code = 200
                body = json.dumps({'release': release, 'pid': os.getpid(), 'message': cfg.get('message', ''), 'fds': len(socks), 'color': os.environ.get('APP_COLOR', '')}).encode()
            self.send_response(code)
            self.send_header('Content-Length', str(len(body)))
            self.send_header('Connection', 'close')
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *a):
            pass

    if cfg.get('log_requests') == '1':
        Server.log_accepts = f'plainapp {release} pid {os.getpid()} accepted'
    servers = []
    if socks:
        for s in socks:
            srv = Server(s.getsockname() if s.family != socket.AF_UNIX else '', Handler, bind_and_activate=False)
            srv.socket.close()
            srv.socket = s
            servers.append(srv)
    else:
        # bind_retries=N: tries again every 500 ms, N times, then fails (as
        # nginx does for 2.5 s: it outlives the settle time meanwhile).
        tries = int(cfg.get('bind_retries', '0'))
        while True:
            try:
                servers.append(Server(('127.0.0.1', int(cfg['port'])), Handler))
                break
            except OSError as e:
                if tries <= 0:
                    raise
                tries -= 1
                print(f'plainapp: bind() failed ({e}), retrying in 500 ms', flush=True)
                time.sleep(0.5)

    stopping = threading.Event()
    # On SIGTERM: stop accepting (what is queued stays in the shared backlog
    # for the next generation), finish what was accepted, exit. The handler
    # only sets a flag; the main thread waits with a timeout, so that it
    # wakes to run it (a plain join() may never return to run a handler).
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    threads = [threading.Thread(target=s.serve_forever, kwargs={'poll_interval': 0.05}) for s in servers]
    for t in threads:
        t.start()
    print(f'plainapp {release} pid {os.getpid()} serving on {len(socks) or "own"} socket(s)', flush=True)
    if worker is not None:
        print(f'plainapp {release} worker {worker} pid {os.getpid()} ready at {time.time():.3f}', flush=True)
    if cfg.get('notify') == '1' and cfg.get('notify_ready') != '0' and os.environ.get('NOTIFY_SOCKET'):
        addr = os.environ['NOTIFY_SOCKET']
        if addr.startswith('@'):
            addr = '\0' + addr[1:]
        n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        n.sendto(f'READY=1\nSTATUS=serving {release}\nMAINPID={os.getpid()}'.encode(), addr)
        n.close()
    while not stopping.wait(0.1):
        pass
    for s in servers:
        s.shutdown()
    for t in threads:
        t.join()
    for s in servers:
        s.server_close()
    sys.exit(0)


main()
