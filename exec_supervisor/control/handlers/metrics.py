"""GET /metrics on the control socket: the same Prometheus exposition as the http: listener.

Owns only the route; the metrics themselves are built by observe/metrics.py, imported at
the first scrape (prometheus_client is not loaded by a daemon nobody scrapes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..httpserver import Request, Response
from ..route import Route

if TYPE_CHECKING:
    from ..server import ControlServer


async def metrics(ctl: ControlServer, request: Request) -> Response:
    from ...observe.metrics import CONTENT_TYPE, metrics_for

    return Response(metrics_for(ctl.daemon).render(), content_type=CONTENT_TYPE)


ROUTES = [Route("GET", "/metrics", metrics, prefix="")]
