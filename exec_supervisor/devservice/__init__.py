"""A local stand-in for the WeFastAPI service: the log API and the token route.

Used by `exec-supervisor dev-service` (so a newcomer can watch a farm's events
without deploying WeFastAPI and MongoDB) and by the tests, which need a real
HTTP server on 127.0.0.1 that answers exactly like the service does
(see ../shared/wefastapi-log-api.md) and that can be made slow, failing,
token-demanding, or stopped and started again on the same port.

    wire.py     the HTTP side: routes, validation, answers shaped like the service's
    service.py  DevService: the listener's life, failure modes, tokens, received entries
    console.py  serve_forever: the CLI's foreground run, printing each entry

Standard library only. Nothing in the supervisor imports it; it imports nothing of
the supervisor.
"""

from __future__ import annotations

from .console import format_entry, serve_forever
from .service import DevService
from .wire import LEVELS, LOG_PATH, TOKEN_PATH

__all__ = ["DevService", "serve_forever", "format_entry", "LEVELS", "LOG_PATH", "TOKEN_PATH"]
