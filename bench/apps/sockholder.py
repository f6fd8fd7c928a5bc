#!/usr/bin/python3
# The "socket-activated restart" peer of the zero-downtime benchmark
# (bench/downtime.ts): what systemd does for `systemctl restart app.service`
# when app.socket holds the listening socket, without a booted systemd.
#
# This process plays systemd's part: it binds 127.0.0.1:PORT once and keeps
# the listening socket open for its whole life, never accepting on it
# (Accept=no). It starts the app through Debian's systemd-socket-activate
# with the socket passed in the systemd protocol (fd 3, LISTEN_FDS=1,
# LISTEN_PID=its own PID), which passes it on to the command it execs
# (systemd 252: "file descriptors from sd_listen_fds() will be passed
# through"; it waits for the first connection before exec'ing). A restart is
# systemd's: the stop signal to the running app, wait for it to exit (SIGKILL
# after the timeout, as TimeoutStopSec), then start it again with the same
# socket. Connections that arrive in between wait in the socket's backlog.
#
# Usage: sockholder.py PORT STOPSIGNAL STOP_TIMEOUT_S -- COMMAND...
# (run in the app's folder). Reads commands on stdin, one a line:
#   restart   stop the app, start it again; answers "started PID"
# At start it answers "started PID" too. On EOF on stdin or SIGTERM it stops
# the app and exits.
import os
import signal
import socket
import subprocess
import sys
import time


def main():
    args = sys.argv[1:]
    sep = args.index('--')
    port, stop_signal, stop_timeout = int(args[0]), getattr(signal, args[1]), float(args[2])
    command = args[sep + 1:]

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', port))
    s.listen(socket.SOMAXCONN)
    if s.fileno() != 3:
        os.dup2(s.fileno(), 3)
    os.set_inheritable(3, True)

    # sh sets LISTEN_PID to its own PID, which systemd-socket-activate and
    # then the app keep (each execs the next): what sd_listen_fds() checks.
    argv = ['sh', '-c', 'LISTEN_PID=$$ LISTEN_FDS=1 exec systemd-socket-activate "$@"', 'sh', *command]
    child = None

    def start():
        return subprocess.Popen(argv, pass_fds=[3], stdin=subprocess.DEVNULL)

    def stop(p):
        if p is None or p.poll() is not None:
            return
        p.send_signal(stop_signal)
        try:
            p.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def on_term(signum, frame):
        stop(child)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    child = start()
    print(f'started {child.pid}', flush=True)
    for line in sys.stdin:
        if line.strip() == 'restart':
            t0 = time.monotonic()
            stop(child)
            stopped = time.monotonic()
            child = start()
            print(f'started {child.pid} stopMs {(stopped - t0) * 1000:.1f}', flush=True)
    stop(child)


main()
