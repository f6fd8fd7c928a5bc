#!/usr/bin/python3
# A test app in Python, for the lineage tests (test/lineage.test.ts): a
# release is a copy of this script, so /proc/PID/exe is the interpreter and
# only lineage tells the app apart. Started as `./app.bin -c app.cfg`.
#
# app.cfg (key=value lines):
#   port=N           listen on 127.0.0.1:N (or take the socket in $PYAPP_FD)
#   message=TEXT     said in every reply
#   reload=fork      on SIGHUP: fork, exec the app from its link (the new
#                    release) with the listening socket, wait until the
#                    successor says it is ready, stop accepting, drain for
#                    drain_ms, exit 0; a successor that dies leaves this one
#                    serving (tableflip's and grace's way)
#   reload=exec      on SIGHUP: exec the app from its link in place (same PID)
#   reload=upgrade   on SIGHUP: start a new master (fork, exec the app from
#                    its link with the listening socket) and serve on until
#                    SIGTERM (gunicorn's, unicorn's and nginx's USR2 way)
#   late_worker=1    with reload=upgrade: fork a worker (no exec: the old
#                    master's image) just before the new master, as a
#                    pre-fork server respawning a worker at that moment
#                    does; it lives until its master exits
#   late_worker=serve  the same, and that worker serves the old release on
#                    the socket beside its master
#   late_worker=churn  with reload=upgrade: from the signal on, fork a worker
#                    every 30 ms that serves the old release for 200 ms (a
#                    pre-fork server with a low max_requests under load)
#   drain_ms=N       how long the old process lives on after handing over
#   reap=0           never wait for a child (a dead successor stays a zombie)
#   daemonize=1      fork at start; the parent exits 0, the child serves
#   daemonize_delay_ms=N  with daemonize=1: the parent lingers this long
#                    before it forks (the agent sees it as the started main)
#   fail_start=1     exit 3 before serving
#   ready_delay_ms=N sleep this long before serving (a successor that is not ready)
#   helper=1         start a helper child (`sleep 3000`, subprocess.Popen: the
#                    app's own session and marker) that outlives a killed app
#   unhealthy=1      /healthz answers 503
#
# GET / answers {"release": <the release file this process runs>, "pid",
# "message"}; GET /healthz answers 200 "ok".
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def read_cfg(path):
    cfg = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith('#') and '=' in line:
                k, v = line.split('=', 1)
                cfg[k.strip()] = v.strip()
    return cfg


def main():
    args = sys.argv[1:]
    release = None
    me = os.path.abspath(sys.argv[0])
    if len(args) >= 2 and args[0] == '--self':
        # Started by a wrapper release (`exec python3 pyapp.py --self "$0" ...`):
        # the wrapper's path is what runs the app (and its next release).
        me = os.path.abspath(args[1])
        release = os.path.basename(os.path.realpath(me))
        args = args[2:]
    cfg_path = args[args.index('-c') + 1] if '-c' in args else 'app.cfg'
    if release is None:
        release = os.path.basename(os.path.realpath(me))
    cfg = read_cfg(cfg_path)
    if cfg.get('fail_start') == '1':
        sys.stderr.write('fail_start=1: exiting\n')
        sys.exit(3)
    if cfg.get('daemonize') == '1' and os.environ.get('PYAPP_DAEMON') != '1':
        time.sleep(int(cfg.get('daemonize_delay_ms', '0')) / 1000)
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
        os.environ['PYAPP_DAEMON'] = '1'

    if cfg.get('helper') == '1':
        import subprocess
        subprocess.Popen(['sleep', '3000'])
    fd = os.environ.pop('PYAPP_FD', None)
    ready_fd = os.environ.pop('PYAPP_READY_FD', None)
    if fd is not None:
        sock = socket.socket(fileno=int(fd))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(('127.0.0.1', int(cfg['port'])))
        sock.listen(128)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == '/healthz':
                code, body = (503, b'sick\n') if cfg.get('unhealthy') == '1' else (200, b'ok\n')
            else:
                code = 200
                body = json.dumps({'release': release, 'pid': os.getpid(), 'message': cfg.get('message', '')}).encode()
            self.send_response(code)
            self.send_header('Content-Length', str(len(body)))
            self.send_header('Connection', 'close')
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = HTTPServer(('127.0.0.1', 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    hup = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    time.sleep(int(cfg.get('ready_delay_ms', '0')) / 1000)
    threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()
    if ready_fd is not None:
        os.write(int(ready_fd), b'r')
        os.close(int(ready_fd))

    mode = cfg.get('reload', 'fork')
    while True:
        hup.wait()
        hup.clear()
        sock.set_inheritable(True)
        env = dict(os.environ, PYAPP_FD=str(sock.fileno()))
        argv = [me, '-c', cfg_path]
        if mode == 'exec':
            server.shutdown()
            os.execve(me, argv, env)
        if mode == 'upgrade':
            if cfg.get('late_worker') == 'churn':
                # A worker forked every 30 ms, each serving the old release
                # for 200 ms (a pre-fork server with a low max_requests under
                # load), until the master exits.
                def churn():
                    master = os.getpid()
                    while True:
                        if os.fork() == 0:
                            worker = HTTPServer(('127.0.0.1', 0), Handler, bind_and_activate=False)
                            worker.socket.close()
                            worker.socket = sock
                            threading.Thread(target=worker.serve_forever, kwargs={'poll_interval': 0.01}, daemon=True).start()
                            end = time.monotonic() + 0.2
                            while time.monotonic() < end and os.getppid() == master:
                                time.sleep(0.01)
                            os._exit(0)
                        time.sleep(0.03)
                        try:
                            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                                pass
                        except ChildProcessError:
                            pass
                threading.Thread(target=churn, daemon=True).start()
            if cfg.get('late_worker') in ('1', 'serve'):
                master = os.getpid()
                if os.fork() == 0:
                    if cfg.get('late_worker') == 'serve':
                        # It serves the old release beside its master (a
                        # replaced worker of a pre-fork server does).
                        worker = HTTPServer(('127.0.0.1', 0), Handler, bind_and_activate=False)
                        worker.socket.close()
                        worker.socket = sock
                        threading.Thread(target=worker.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()
                    while os.getppid() == master:
                        time.sleep(0.05)
                    os._exit(0)
                time.sleep(0.3)
            if os.fork() == 0:
                os.execve(me, argv, env)
            continue
        r, w = os.pipe()
        os.set_inheritable(w, True)
        env['PYAPP_READY_FD'] = str(w)
        child = os.fork()
        if child == 0:
            os.close(r)
            os.execve(me, argv, env)
        os.close(w)
        said = os.read(r, 1)
        os.close(r)
        if said != b'r':
            # The successor died before it was ready: keep serving.
            if cfg.get('reap', '1') == '1':
                os.waitpid(child, 0)
            continue
        # Handed over: stop accepting and close the listener (the successor
        # has its own descriptor of it), then drain.
        server.shutdown()
        server.server_close()
        time.sleep(int(cfg.get('drain_ms', '0')) / 1000)
        os._exit(0)


if __name__ == '__main__':
    main()
