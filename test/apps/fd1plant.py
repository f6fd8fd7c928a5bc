#!/usr/bin/python3
"""A test app for test/applog.test.ts: what an app's user can do to the file
the agent may cut. It points its fd 1 at the file its config names, opened
O_PATH (which needs no right on the file itself, only on the folders to it),
so that /proc/PID/fd/1 leads there, and waits for SIGTERM.

Run as `./app.bin -c app.cfg`; the config is key=value lines:
  target   the file fd 1 is to lead to
"""
import os
import signal
import sys


def main():
    cfg = {}
    with open(sys.argv[sys.argv.index("-c") + 1]) as f:
        for raw in f:
            if "=" in raw:
                k, v = raw.strip().split("=", 1)
                cfg[k] = v
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    fd = os.open(cfg["target"], os.O_PATH)
    os.dup2(fd, 1)
    os.close(fd)
    while True:
        signal.pause()


main()
