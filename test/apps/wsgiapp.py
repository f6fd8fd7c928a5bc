# A WSGI app for the gunicorn test (test/lineage.test.ts): it says which
# release its worker was started for ($RELEASE, set by the gunicorn config
# of that release through raw_env) and the worker's PID.
import json
import os


def application(environ, start_response):
    if environ.get('PATH_INFO') == '/healthz':
        body = b'ok\n'
    else:
        body = json.dumps({'release': os.environ.get('RELEASE', ''), 'pid': os.getpid(), 'master': os.getppid()}).encode()
    start_response('200 OK', [('Content-Length', str(len(body))), ('Connection', 'close')])
    return [body]
