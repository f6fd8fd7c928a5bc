# An ASGI app for the uvicorn row of test/servers.test.ts: it says which
# release started it ($RELEASE, set by the release's wrapper) and its PID.
import json
import os


async def app(scope, receive, send):
    if scope['type'] != 'http':
        return
    if scope['path'] == '/healthz':
        body = b'ok\n'
    else:
        body = json.dumps({'release': os.environ.get('RELEASE', ''), 'pid': os.getpid()}).encode()
    await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(body)).encode())]})
    await send({'type': 'http.response.body', 'body': body})
