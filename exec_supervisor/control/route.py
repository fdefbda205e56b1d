"""The Route record: how a handler module declares its endpoints to the server.

Owns nothing but the record and the API prefix; it must not import handlers or
the server (both import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from .httpserver import Request, Response, StreamResponse

if TYPE_CHECKING:
    from .server import ControlServer

API = "/v1"

Handler = Callable[["ControlServer", Request], Awaitable["Response | StreamResponse"]]


@dataclass(frozen=True)
class Route:
    """`method API+path` answered by `handler(server, request)`.

    `query` is the hint `GET /v1` shows after the path (like "?n=&follow="); routes with
    `listed=False` (the index itself) are not shown there. `prefix` is API but for the
    few paths tools expect at the root (/metrics).
    """

    method: str
    path: str
    handler: Handler
    query: str = ""
    listed: bool = True
    prefix: str = API

    @property
    def full_path(self) -> str:
        return self.prefix + self.path

    @property
    def shown(self) -> str:
        return f"{self.method} {self.full_path}{self.query}"
