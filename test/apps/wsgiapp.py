# A WSGI app for the gunicorn test (test/lineage.test.ts): it says which
# release its worker was started for ($RELEASE, set by the gunicorn config
# of that release through raw_env) and the worker's PID. UNHEALTHY=1 in
# the environment (raw_env too) makes /healthz answer 503. /slow?S answers
# after S seconds (a request in flight that holds its worker).
import json
import os
import time


def application(environ, start_response):
    status = '200 OK'
    if environ.get('PATH_INFO') == '/healthz':
        body = b'ok\n'
        if os.environ.get('UNHEALTHY') == '1':
            status, body = '503 Service Unavailable', b'sick\n'
    elif environ.get('PATH_INFO') == '/slow':
        time.sleep(float(environ.get('QUERY_STRING') or '30'))
        body = b'slow\n'
    else:
        body = json.dumps({'release': os.environ.get('RELEASE', ''), 'pid': os.getpid(), 'master': os.getppid()}).encode()
    start_response(status, [('Content-Length', str(len(body))), ('Connection', 'close')])
    return [body]
