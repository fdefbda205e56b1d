"""The control API's endpoints, grouped by concern; each module ends with its ROUTES.

    views.py     GET /v1, /v1/health, /v1/status, /v1/describe/<exec id>   read-only answers
    streams.py   GET /v1/events, /v1/logs/<exec id>       answers that can follow (stream)
    multilogs.py GET /v1/logs?target=                     several logs interleaved, prefixed
    commands.py  POST /v1/scale|start|stop|restart|signal|reload|shutdown   change the farm
    upgrade.py   POST /v1/upgrade                         re-execute the daemon in place
    metrics.py   GET /metrics                             Prometheus (built by observe/metrics.py)

A handler is `async def name(ctl: ControlServer, request: Request) -> Response`; it reads
input with control/params.py and asks the server (ctl) for the daemon, the engine and
shared facts. ROUTES below is the order the router tries them and `GET /v1` lists them.
Handlers must not touch the socket or the server's lifecycle (control/server.py).
"""

from __future__ import annotations

from ..route import Route
from . import commands, metrics, multilogs, streams, upgrade, views

ROUTES: list[Route] = [*views.ROUTES, *streams.ROUTES, *multilogs.ROUTES, *commands.ROUTES, *upgrade.ROUTES,
                        *metrics.ROUTES]
