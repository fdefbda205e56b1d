"""The control API: the operator's full-power interface to a running daemon.

    httpserver.py  a small HTTP/1.1 server on asyncio streams: accept loop, connections, drain, routing
    httpconn.py    one connection under it: h11, deadlines, size caps, Request/Response/StreamResponse
    server.py      ControlServer, the daemon extension: the socket, the router, the event ring
    route.py       the Route record handler modules declare their endpoints with
    params.py      reading request input: JSON body, flags, numbers, counts, targets
    handlers/      the endpoints, by concern:
      views.py       GET /v1, /v1/health, /v1/status (read-only)
      streams.py     GET /v1/events, /v1/logs/<exec id> (optionally followed)
      commands.py    POST /v1/scale, start, stop, restart, reload, shutdown
      upgrade.py     POST /v1/upgrade
    procstats.py   CPU % and RSS per pid (psutil), for status
    logtail.py     an instance log's tail, and following it across rotations
    client.py      the CLI side: finding the socket, HTTP over it, exit codes
    render.py      the CLI side: human renderings of the answers

Adding a route: write `async def handler(ctl, request)` in the handlers/ module of its
concern (or a new module there for a new concern, e.g. handlers/upgrade.py), append a
`Route(method, path, handler, query=...)` to that module's ROUTES, and (for a new module)
add its ROUTES to handlers/__init__.py. The router and the `GET /v1` index pick it up;
server.py does not change.

A thin adapter: handlers change the engine's desired state and let it reconcile.
Imports config, events and supervise; nothing below imports control.
"""
