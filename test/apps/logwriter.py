#!/usr/bin/python3
"""A test app for the log tests (test/applog.test.ts): writes numbered lines of
a fixed width to its stdout (every Nth to its stderr), at the pace its config
says, then "TAG done", and waits for SIGTERM. It never reopens anything: it
writes to the descriptors it was started with, as real apps do.

Run as `./app.bin -c app.cfg`; the config is key=value lines:
  tag          first field of every line (the release, e.g. 1.0)
  count        lines to write
  width        bytes per line, its newline included (at least 32)
  burst        lines per write(2)
  pauseMs      sleep between bursts (0: as fast as it can)
  stderrEvery  every Nth line goes to stderr (0: none)
  gate         a path: write "TAG ready" first, then wait until it exists
               (a test starts its reader before the output it must read)
  stdoutAt     a path: write nothing, but point fd 1 at that file, opened
               O_PATH (which needs no right on the file itself, only on the
               folders to it), so that /proc/PID/fd/1 leads there: what an
               app's user can do to the file the agent may cut
A line is "TAG NNNNNNNNN xxxx...x\n", NNNNNNNNN its number from 0.
"""
import os
import signal
import sys
import time


def line(tag, i, width):
    head = "%s %09d " % (tag, i)
    return (head + "x" * (width - len(head) - 1) + "\n").encode()


def write_all(fd, data):
    while data:
        n = os.write(fd, data)
        data = data[n:]


def idle():
    """Until SIGTERM."""
    while True:
        signal.pause()


def main():
    cfg = {}
    with open(sys.argv[sys.argv.index("-c") + 1]) as f:
        for raw in f:
            if "=" in raw:
                k, v = raw.strip().split("=", 1)
                cfg[k] = v
    tag = cfg.get("tag", "t")
    count = int(cfg.get("count", "1000"))
    width = int(cfg.get("width", "100"))
    burst = int(cfg.get("burst", "100"))
    pause = int(cfg.get("pauseMs", "0")) / 1000.0
    every = int(cfg.get("stderrEvery", "0"))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if cfg.get("stdoutAt"):
        fd = os.open(cfg["stdoutAt"], os.O_PATH)
        os.dup2(fd, 1)
        os.close(fd)
        idle()
    gate = cfg.get("gate")
    if gate:
        write_all(1, ("%s ready\n" % tag).encode())
        while not os.path.exists(gate):
            time.sleep(0.01)
    i = 0
    while i < count:
        out = []
        err = []
        for j in range(i, min(count, i + burst)):
            (err if every and j % every == every - 1 else out).append(line(tag, j, width))
        if out:
            write_all(1, b"".join(out))
        if err:
            write_all(2, b"".join(err))
        i += burst
        if pause:
            time.sleep(pause)
    write_all(1, ("%s done\n" % tag).encode())
    idle()


main()
