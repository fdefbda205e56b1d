"""The log API's side of the wire: HTTP routes, validation and answers, word for word.

Owns what a client sees of the stand-in: the paths, the 307/405/404/401/422 answers
shaped like FastAPI's, the token route's form, and the http.server plumbing (one
thread per connection). It keeps no state: every decision about auth, failure
modes and recording is asked of the DevService (service.py), and it must not
print anything for an operator (console.py).

Standard library only (http.server + json), so it runs anywhere the supervisor
runs and never drags a web framework into the tests.
"""

from __future__ import annotations

import json
import secrets
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from .service import DevService

LEVELS = ("debug", "info", "warning", "error")
LOG_PATH = "/api/bases/logs/"
TOKEN_PATH = "/api/bases/token/standard/open/"

# The service's own answers, word for word (core/security.py, api_token.py).
DETAIL_NOT_AUTHENTICATED = "未认证"
DETAIL_BAD_CREDENTIALS = "无法验证凭据"
DETAIL_WRONG_PASSWORD = "账户名或密码错误"
DETAIL_WHITELIST = "白名单禁止访问核心模块"

_LEVEL_CHOICES = "'debug', 'info', 'warning' or 'error'"


class LogApiServer(ThreadingHTTPServer):
    # SO_REUSEADDR: a test stops the service and starts it again on the same
    # port while the old connections are still in TIME_WAIT.
    allow_reuse_address = True
    # Handler threads must never keep the test process (or the CLI) alive.
    daemon_threads = True
    block_on_close = False
    service: DevService

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-request are normal here (the supervisor
        # times out on purpose in slow mode); no traceback on stderr.
        if self.service.echo:
            super().handle_error(request, client_address)


class LogApiHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients can keep connections alive, like uvicorn allows.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK would add ~40 ms to every keep-alive request and cap
    # throughput far below the 500 events/s the forwarder must prove.
    disable_nagle_algorithm = True
    server_version = "uvicorn"
    sys_version = ""
    server: LogApiServer

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
        svc._count_request(self.headers.get("Authorization"), self.command, urlsplit(self.path).path)
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

