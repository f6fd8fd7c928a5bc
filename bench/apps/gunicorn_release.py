#!/usr/bin/python3
# A gunicorn release for the zero-downtime benchmark (bench/lib/apps.ts):
# Debian's gunicorn run from a script that is itself the release, so that
# app.bin names the release that runs. gunicorn's USR2 re-executes
# `sys.executable` + its argv (here /usr/bin/python3 ./app.bin -c app.cfg,
# in the same folder), so the new master runs whatever app.bin points at by
# then, and reads the new release's app.cfg. The WSGI app is
# test/apps/wsgiapp.py; each release's config says which release it is
# (raw_env RELEASE=...).
import sys

# gunicorn imports its -c file as Python source, and Python caches the
# compiled file as __pycache__/app.cpython-3X.pyc, named after the link
# (app.cfg) and checked only against the source's mtime (whole seconds) and
# size: two releases' configs of one size written in the same second (as
# here) would both run as the first one compiled. No cache, no stale config.
sys.dont_write_bytecode = True

from gunicorn.app.wsgiapp import run  # noqa: E402

sys.exit(run())
