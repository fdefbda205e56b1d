"""A local stand-in for the WeFastAPI service: the log API and the token route.

Used by `exec-supervisor dev-service` (so a newcomer can watch a farm's events
without deploying WeFastAPI and MongoDB) and by the tests, which need a real
HTTP server on 127.0.0.1 that answers exactly like the service does
(see ../shared/wefastapi-log-api.md) and that can be made slow, failing,
token-demanding, or stopped and started again on the same port.

Standard library only (http.server + json), so it runs anywhere the supervisor
runs and never drags a web framework into the tests.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

__all__ = ["DevService", "serve_forever", "LEVELS", "LOG_PATH", "TOKEN_PATH"]

LEVELS = ("debug", "info", "warning", "error")
LOG_PATH = "/api/bases/logs/"
TOKEN_PATH = "/api/bases/token/standard/open/"

# The service's own answers, word for word (core/security.py, api_token.py).
DETAIL_NOT_AUTHENTICATED = "未认证"
DETAIL_BAD_CREDENTIALS = "无法验证凭据"
DETAIL_WRONG_PASSWORD = "账户名或密码错误"
DETAIL_WHITELIST = "白名单禁止访问核心模块"

_LEVEL_CHOICES = "'debug', 'info', 'warning' or 'error'"


class _Server(ThreadingHTTPServer):
    # SO_REUSEADDR: a test stops the service and starts it again on the same
    # port while the old connections are still in TIME_WAIT.
    allow_reuse_address = True
    # Handler threads must never keep the test process (or the CLI) alive.
    daemon_threads = True
    block_on_close = False
    service: "DevService"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-request are normal here (the supervisor
        # times out on purpose in slow mode); no traceback on stderr.
        if self.service.echo:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients can keep connections alive, like uvicorn allows.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK would add ~40 ms to every keep-alive request and cap
    # throughput far below the 500 events/s the forwarder must prove.
    disable_nagle_algorithm = True
    server_version = "uvicorn"
    sys_version = ""
    server: _Server

    # --------------------------------------------------------------- plumbing

    def setup(self) -> None:
        super().setup()
        self.server.service._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.service._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        if self.server.service.echo:
            super().log_message(format, *args)

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            return b""
        return self.rfile.read(n) if n > 0 else b""

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        # None means an empty body (the 307 carries none, like Starlette's).
        data = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # --------------------------------------------------------------- dispatch

    def _dispatch(self) -> None:
        svc = self.server.service
        body = self._read_body()  # always drain it, or keep-alive desyncs
        svc._count_request(self.headers.get("Authorization"))
        if not svc._pause():
            # stop() was called while we were being slow: behave like a service
            # that went away, i.e. hang up without an answer.
            self.close_connection = True
            return
        path = urlsplit(self.path).path
        if path == LOG_PATH.rstrip("/") or path == TOKEN_PATH.rstrip("/"):
            # Starlette's redirect_slashes answers before any dependency runs.
            host = self.headers.get("Host") or f"{svc.host}:{svc.port}"
            query = urlsplit(self.path).query
            location = f"http://{host}{path}/" + (f"?{query}" if query else "")
            self._send_json(HTTPStatus.TEMPORARY_REDIRECT, None, {"Location": location})
            return
        if path == LOG_PATH:
            if self.command != "POST":
                self._send_json(405, {"detail": "Method Not Allowed"}, {"Allow": "POST"})
                return
            self._post_log(body)
            return
        if path == TOKEN_PATH:
            if self.command != "POST":
                self._send_json(405, {"detail": "Method Not Allowed"}, {"Allow": "POST"})
                return
            self._post_token(body)
            return
        self._send_json(404, {"detail": "Not Found"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    # --------------------------------------------------------------- routes

    def _post_log(self, body: bytes) -> None:
        svc = self.server.service
        forced = svc._take_failure()
        if forced is not None:
            self._send_json(forced, {"detail": f"dev-service failure mode ({forced})"})
            return
        denied = svc._check_auth(self.headers.get("Authorization"), self.headers.get("Cookie"))
        if denied is not None:
            self._send_json(401, {"detail": denied}, {"WWW-Authenticate": "Bearer"})
            return
        errors, entry = _validate_log(body)
        if errors:
            self._send_json(422, {"detail": errors})
            return
        assert entry is not None
        entry["_client"] = self.client_address[0]
        entry["_received"] = time.time()
        svc._accept(entry)
        self._send_json(200, {})

    def _post_token(self, body: bytes) -> None:
        svc = self.server.service
        if not svc.require_auth:
            # An exempt address may not reach any other /api/bases/ route,
            # the token route included (the real service's rule).
            self._send_json(401, {"detail": DETAIL_WHITELIST})
            return
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        missing = [
            {"type": "missing", "loc": ["body", field], "msg": "Field required", "input": None}
            for field in ("username", "password")
            if field not in form
        ]
        if missing:
            self._send_json(422, {"detail": missing})
            return
        username, password = form["username"][0], form["password"][0]
        if (
            svc.username is None
            or svc.password is None
            or not secrets.compare_digest(username.encode(), svc.username.encode())
            or not secrets.compare_digest(password.encode(), svc.password.encode())
        ):
            self._send_json(401, {"detail": DETAIL_WRONG_PASSWORD})
            return
        token = svc.issue_token()
        self._send_json(
            200,
            {"access_token": token, "token_type": "Bearer", "expires_minutes": svc.expires_minutes},
        )


def _validate_log(body: bytes) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """FastAPI/pydantic-v2-shaped validation of the LogCreate body: (errors, entry)."""
    try:
        data = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return [{
            "type": "json_invalid", "loc": ["body", getattr(err, "pos", 0)],
            "msg": "JSON decode error", "input": {}, "ctx": {"error": str(err)},
        }], None
    if data is None:
        return [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}], None
    if not isinstance(data, dict):
        return [{
            "type": "model_attributes_type", "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": data,
        }], None
    errors: list[dict[str, Any]] = []
    if "level" not in data:
        errors.append({"type": "missing", "loc": ["body", "level"], "msg": "Field required", "input": data})
    elif data["level"] not in LEVELS or not isinstance(data["level"], str):
        errors.append({
            "type": "literal_error", "loc": ["body", "level"],
            "msg": f"Input should be {_LEVEL_CHOICES}", "input": data["level"],
            "ctx": {"expected": _LEVEL_CHOICES},
        })
    if "message" not in data:
        errors.append({"type": "missing", "loc": ["body", "message"], "msg": "Field required", "input": data})
    elif not isinstance(data["message"], str):
        errors.append({
            "type": "string_type", "loc": ["body", "message"],
            "msg": "Input should be a valid string", "input": data["message"],
        })
    return errors, (None if errors else dict(data))


class DevService:
    """The WeFastAPI log API on loopback, with switchable failure modes.

    Authentication follows the service: a client is token-exempt unless
    `require_auth` is true (it starts true when `exempt=False` and a `token`
    or `username` is given). Then a request needs `Authorization: Bearer <t>`
    (or cookie `token_s`) where t is the static `token` or one minted by
    `issue_token()` / the token route and not yet expired or revoked. While
    exempt, the token route refuses like the real service does for exempt
    addresses (401 白名单禁止访问核心模块): test token auth with exempt=False.

    Failure modes, changeable at any time from any thread: `delay` (seconds
    before each answer), `fail_status` (answer every log POST with it),
    `fail_count` (answer the next N log POSTs with `fail_status` or 500, then
    recover: fail_status is cleared with the last one), `require_auth`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        expires_minutes: float = 720,
        exempt: bool = True,
        echo: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.username = username
        self.password = password
        self.expires_minutes = expires_minutes
        self.exempt = exempt
        self.echo = echo
        self.require_auth: bool = (not exempt) and (token is not None or username is not None)
        self.delay: float = 0.0
        self.fail_status: int | None = None
        self.fail_count: int = 0
        self.requests_seen: int = 0
        self.auth_headers: list[str] = []
        self.entries: list[dict[str, Any]] = []
        # Called (outside the lock) with each accepted entry; serve_forever prints with it.
        self.on_entry: Callable[[dict[str, Any]], None] | None = None

        self._cond = threading.Condition()
        self._tokens: dict[str, float] = {}  # minted token -> expiry (time.time())
        self._revoked_static = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL with the trailing slash, as executors get it in --service-host."""
        return f"http://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "DevService":
        """Bind (the same port again after a stop()) and serve in a background thread."""
        if self._server is not None:
            return self
        self._stopping = threading.Event()
        server = _Server((self.host, self.port), _Handler)
        server.service = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"devservice-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go away like a crashed service: close the listener and every open connection."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in slow mode
        server.shutdown()
        server.server_close()
        # Keep-alive connections would otherwise go on being answered by their
        # handler threads after the "service" is down.
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "DevService":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ observing

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10) -> bool:
        """Block until predicate(entries) is true (re-checked on each new entry); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.entries), timeout=timeout)

    def messages(self) -> list[str]:
        """The `message` of every accepted entry, in arrival order."""
        with self._cond:
            return [e.get("message", "") for e in self.entries]

    def clear(self) -> None:
        with self._cond:
            self.entries.clear()

    # ------------------------------------------------------------------ tokens

    def issue_token(self) -> str:
        """Mint a token that is valid for `expires_minutes`."""
        token = secrets.token_urlsafe(24)
        with self._cond:
            self._tokens[token] = time.time() + self.expires_minutes * 60
        return token

    def revoke_tokens(self) -> None:
        """Make every token issued so far invalid, the static one included (as a key rotation would)."""
        with self._cond:
            self._tokens.clear()
            self._revoked_static = True

    # ------------------------------------------------------------------ handler side

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _count_request(self, authorization: str | None) -> None:
        with self._cond:
            self.requests_seen += 1
            if authorization is not None:
                self.auth_headers.append(authorization)

    def _pause(self) -> bool:
        """Slow mode. False when stop() interrupted the pause."""
        delay = self.delay
        if delay > 0:
            return not self._stopping.wait(delay)
        return not self._stopping.is_set()

    def _take_failure(self) -> int | None:
        with self._cond:
            if self.fail_count > 0:
                # A counted failure burst: answer with fail_status (default 500),
                # then recover completely (fail_status is cleared with the last one).
                self.fail_count -= 1
                status = self.fail_status or 500
                if self.fail_count == 0:
                    self.fail_status = None
                return status
            return self.fail_status

    def _check_auth(self, authorization: str | None, cookie: str | None) -> str | None:
        """None when allowed, else the 401 detail the service would give."""
        if not self.require_auth:
            return None
        token: str | None = None
        if authorization:
            scheme, _, param = authorization.partition(" ")
            if scheme.lower() == "bearer" and param.strip():
                token = param.strip()
        if token is None and cookie:
            for part in cookie.split(";"):
                name, _, value = part.strip().partition("=")
                if name == "token_s" and value:
                    token = value
        if token is None:
            return DETAIL_NOT_AUTHENTICATED
        with self._cond:
            if self.token is not None and not self._revoked_static and secrets.compare_digest(
                token.encode(), self.token.encode()
            ):
                return None
            expiry = self._tokens.get(token)
        if expiry is not None and expiry > time.time():
            return None
        return DETAIL_BAD_CREDENTIALS

    def _accept(self, entry: dict[str, Any]) -> None:
        with self._cond:
            self.entries.append(entry)
            self._cond.notify_all()
        callback = self.on_entry
        if callback is not None:
            callback(entry)


# ---------------------------------------------------------------------- CLI side

_print_lock = threading.Lock()


def format_entry(entry: dict[str, Any]) -> str:
    """One entry the way the service's loguru sink shows it: time | LEVEL | ip message."""
    received = float(entry.get("_received", time.time()))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(received))
    millis = int((received % 1) * 1000)
    level = str(entry.get("level", "")).upper()
    return f"{stamp}.{millis:03d} | {level} | {entry.get('_client', '?')} {entry.get('message', '')}"


def _print_entry(entry: dict[str, Any]) -> None:
    with _print_lock:
        print(format_entry(entry), flush=True)


def serve_forever(
    host: str = "127.0.0.1",
    port: int = 8083,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> None:
    """Run the stand-in in the foreground until Ctrl-C or SIGTERM, printing every entry.

    With a token or username/password, clients must authenticate (nobody is
    exempt); without, every client is token-exempt, like 127.0.0.1 usually is.
    """
    svc = DevService(host, port, token=token, username=username, password=password,
                     exempt=not (token or username))
    svc.on_entry = _print_entry
    try:
        svc.start()
    except OSError as err:
        raise SystemExit(f"dev-service: cannot listen on {host}:{port}: {err.strerror or err}") from None
    if svc.require_auth:
        # Never echo the secrets themselves.
        how = []
        if token:
            how.append("a Bearer token (--token)")
        if username:
            how.append(f"a token from POST {TOKEN_PATH} (user {username!r})")
        auth = "required: " + " or ".join(how)
    else:
        auth = "none (every client is token-exempt)"
    print(f"WeFastAPI dev service on {svc.url}  log API: POST {LOG_PATH}  auth: {auth}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)

    done = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: done.set())
    try:
        while not done.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        svc.stop()
        print(f"dev service stopped ({len(svc.entries)} entries received)", file=sys.stderr, flush=True)


if __name__ == "__main__":  # python -m exec_supervisor.devservice [port]
    serve_forever(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8083)
