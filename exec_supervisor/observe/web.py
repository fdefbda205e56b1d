"""The `http:` listener: the web status page, its live feed, read-only JSON and /metrics.

A daemon extension, always installed; it listens only when `http.listen` is set. It
serves with the control API's h11 server (control/httpserver.py) on the daemon's loop,
with the same connection limit, timeouts and error answers, and reuses the control
API's handlers so /v1/status, /v1/events, /v1/health and /v1/logs answer exactly as on
the control socket.

Who may do what (README "Web status page and metrics"):
- the page's files (/, /static/...): anyone who reaches the port (they hold no data);
- reads (/v1/..., the live feed): anyone on a loopback listener; with the token on any
  other (config check refuses a non-loopback listener without one);
- /metrics: anyone, or with the token when `metrics_auth: true`;
- start/stop/restart/scale: only with `actions: true` and the token; reload and
  shutdown stay on the control socket.
The token travels as `Authorization: Bearer ...`, is compared in constant time and is
never logged. On a loopback listener the Host header must name a loopback host, so a
web page elsewhere cannot read the farm through DNS rebinding.

It must not touch the engine except through the control API's handlers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..config.listen import is_loopback, parse_listen, url_of
from ..control.httpserver import HttpError, HttpServer, Request, Response, Router, StreamResponse, json_response
from ..control.route import API

if TYPE_CHECKING:
    from .stream import LiveHub

log = logging.getLogger("exec_supervisor")

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]
NO_STORE = [("Cache-Control", "no-store")]
MAX_BODY = 64 * 1024
KEEPALIVE = 15.0  # seconds between comment lines on an idle live feed (finds pages that went away)
# Control API routes served here too, by (method, path under /v1).
READ_ROUTES = [("GET", "", "read"), ("GET", "/", "read"), ("GET", "/health", "read"), ("GET", "/status", "read"),
               ("GET", "/events", "read"), ("GET", "/logs/{exec_id}", "read")]
ACTION_ROUTES = [("POST", "/start", "action"), ("POST", "/stop", "action"), ("POST", "/restart", "action"),
                 ("POST", "/scale", "action")]
SOCKET_ONLY = ["/reload", "/shutdown"]
_HOST_RE = re.compile(r"\[([^\]]+)\](?::\d+)?|([^:]+)(?::\d+)?")

Handler = Callable[[Request], Awaitable["Response | StreamResponse"]]


def read_token(http: Any) -> tuple[str | None, str | None]:
    """(token, problem): the problem names where the token should be, never its value."""
    if http.token_env:
        token = os.environ.get(http.token_env, "").strip()
        if not token:
            return None, f"http.token_env: the environment variable {http.token_env} is not set or empty"
        return token, None
    if http.token_file:
        try:
            token = Path(http.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            return None, f"http.token_file: cannot read {http.token_file}: {reason}"
        if not token:
            return None, f"http.token_file: {http.token_file} is empty"
        return token, None
    return None, None


class WebServer:
    """Daemon extension: the TCP listener of the page and /metrics (off unless http.listen is set)."""

    def __init__(self) -> None:
        self.daemon: Any = None
        self.server: HttpServer | None = None
        self.address: tuple[str, int] | None = None  # as bound (port 0 resolved)
        self.url: str | None = None
        self.hub: LiveHub | None = None
        self._http: Any = None
        self._token: bytes | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def control(self) -> Any:
        from ..control.server import ControlServer

        return next(e for e in self.daemon.extensions if isinstance(e, ControlServer))

    async def start(self, daemon: Any) -> None:
        self.daemon = daemon
        self._apply(daemon.config.http)
        if daemon.config.http.listen:
            await self._listen(daemon.config.http.listen)

    async def _listen(self, listen: str) -> None:
        # Imported here: a daemon without a listener does not carry the page's modules.
        from .stream import LiveHub
        from .usage import UsageSampler

        host, port = parse_listen(listen)
        if self.hub is None:  # one for the daemon's life: the engine keeps its state listener
            self.hub = LiveHub(self.daemon, UsageSampler(), lambda n: list(self.control.ring)[-n:],
                               self._actions_on)
            self.hub.attach()
        server = HttpServer(self._router(), max_body=MAX_BODY, name="web")
        try:
            self.address = await server.start_tcp(host, port)
        except OSError as exc:
            from ..control.server import StartupError

            raise StartupError(f"http.listen {listen}: cannot listen: {exc.strerror or exc}") from None
        self.server = server
        self._closing = False
        self.url = url_of(host or self.address[0], self.address[1])
        log.info("exec-supervisor@%s: web status page and metrics at %s (metrics: %smetrics)",
                 self.daemon.config.name, self.url, self.url)

    def _apply(self, http: Any) -> None:
        self._http = http
        token, problem = read_token(http)
        self._token = token.encode() if token else None
        if problem:
            log.error("%s: %s; %s", self.daemon.config.path.name, problem,
                      "actions and token-protected reads are refused until it is fixed")

    async def stopping(self, daemon: Any) -> None:
        pass

    async def stop(self, daemon: Any) -> None:
        await self._close()
        if self.hub is not None:
            self.hub.detach()

    async def _close(self) -> None:
        self._closing = True
        if self.hub is not None:
            self.hub.disconnect()  # open pages end their feed (and reconnect to wherever it listens now)
        if self.server is not None:
            await self.server.close()
            self.server = None
        self.url = None

    async def reloaded(self, daemon: Any, result: dict[str, Any]) -> None:
        """A reload applies a new token at once and moves the listener when http.listen changed."""
        if not result.get("ok"):
            return
        old = self._http.listen if self._http is not None else None
        self._apply(daemon.config.http)
        new = daemon.config.http.listen
        if new == old:
            return
        await self._close()
        if new:
            try:
                await self._listen(new)
            except Exception as exc:  # the farm keeps running without its page
                log.error("%s", exc)

    # ------------------------------------------------------------------ access rules

    def _actions_on(self) -> bool:
        return bool(self._http is not None and self._http.actions)

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return False
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        import hmac  # constant time: how long a wrong token takes says nothing about the right one

        return hmac.compare_digest(value.strip().encode(), self._token)

    def _need_token(self, request: Request, what: str) -> None:
        if self._token is None:
            raise HttpError(503, f"{what} needs the http token, and the daemon has none "
                                 "(http.token_env / http.token_file: see the daemon's log)")
        if not self._authorized(request):
            raise HttpError(401, f"{what} needs the http token (Authorization: Bearer <token>)",
                            headers=[("WWW-Authenticate", 'Bearer realm="exec-supervisor"')])

    def _check_host(self, request: Request) -> None:
        bound = self.address[0] if self.address else ""
        if not is_loopback(bound):
            return
        match = _HOST_RE.fullmatch(request.headers.get("host", ""))
        name = (match.group(1) or match.group(2)) if match else ""
        if not is_loopback(name):
            raise HttpError(403, "this listener answers to loopback host names only (Host: 127.0.0.1, [::1], "
                                 "localhost)")

    def _reads_open(self) -> bool:
        return self.address is not None and is_loopback(self.address[0])

    def _guard(self, handler: Handler, kind: str) -> Handler:
        async def guarded(request: Request) -> Response | StreamResponse:
            self._check_host(request)
            if kind == "read" and not self._reads_open():
                self._need_token(request, "reading the farm on a non-loopback listener")
            elif kind == "metrics" and self._http.metrics_auth:
                self._need_token(request, "/metrics (http.metrics_auth: true)")
            elif kind == "action":
                if not self._http.actions:
                    raise HttpError(403, "actions are off on this listener (http.actions: false); "
                                         "use the control socket (exec-supervisor start|stop|restart|scale)")
                self._need_token(request, "this action")
            response = await handler(request)
            if isinstance(response, Response) and kind != "static":
                response.headers = [*response.headers, *NO_STORE]
            return response
        return guarded

    # ------------------------------------------------------------------ routes

    def _router(self) -> Router:
        control = self.control
        # Bound as the control socket serves them (commands tracked, so an upgrade waits for none).
        shared = {(route.method, route.path): control.bound(route) for route in control.routes}
        router = Router()
        routes: list[tuple[str, str, Handler, str]] = [
            ("GET", "/", self.page, "static"),
            ("GET", "/index.html", self.page, "static"),
            ("GET", "/static/{name}", self.static, "static"),
            ("GET", "/metrics", self.metrics, "metrics"),
            ("GET", "/v1/stream", self.stream, "read"),
            ("GET", "/v1/instances/{exec_id}", self.describe, "read"),
        ]
        # The control API's own answers for these (same code, same answers as on the socket).
        for method, path, kind in READ_ROUTES + ACTION_ROUTES:
            routes.append((method, API + path, shared[(method, path)], kind))
        for path in SOCKET_ONLY:
            routes.append(("POST", API + path, self.socket_only, "read"))
        for method, path, handler, kind in routes:
            router.add(method, path, self._guard(handler, kind))
        return router

    async def page(self, request: Request) -> Response:
        return self._file("index.html")

    async def static(self, request: Request) -> Response:
        return self._file(request.match_info.get("name", ""))

    def _file(self, name: str) -> Response:
        # Only names listed in the package's static folder: nothing in a request is used as a path.
        names = {entry.name: entry for entry in STATIC_DIR.iterdir() if entry.is_file()}
        path = names.get(name)
        if path is None:
            raise HttpError(404, f"no such file: {name[:80]!r}")
        body = path.read_bytes()
        content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        return Response(body, content_type=content_type,
                        headers=[*SECURITY_HEADERS, ("Cache-Control", "no-cache")])

    async def metrics(self, request: Request) -> Response:
        from .metrics import CONTENT_TYPE, metrics_for

        return Response(metrics_for(self.daemon).render(), content_type=CONTENT_TYPE)

    async def socket_only(self, request: Request) -> Response:
        raise HttpError(403, f"{request.path} is only served on the control socket "
                             f"(exec-supervisor {request.path.rsplit('/', 1)[-1]})")

    async def describe(self, request: Request) -> Response:
        from . import views

        exec_id = request.match_info.get("exec_id", "")
        instance = self.daemon.engine.instances.get(exec_id)
        if instance is None:
            raise HttpError(404, f"no instance {exec_id[:80]!r} in this farm")
        return json_response(views.describe(instance, self.daemon.config))

    async def stream(self, request: Request) -> StreamResponse:
        hub = self.hub
        if hub is None or self._closing or self.daemon.engine.stopping:
            raise HttpError(409, "the daemon is stopping")
        response = StreamResponse("text/event-stream; charset=utf-8",
                                  headers=[*NO_STORE, ("X-Accel-Buffering", "no")])
        client = hub.join()
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n\n" + hub.snapshot())
            while not self._closing:
                try:
                    data = await asyncio.wait_for(client.queue.get(), KEEPALIVE)
                except asyncio.TimeoutError:
                    if request.gone():
                        break
                    await response.write(b": keepalive\n\n")
                    continue
                if data is None:
                    break
                await response.write(data)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the page went away
        finally:
            hub.leave(client)
        return response
