"""The stand-in's state: its listener's life, failure modes, tokens, and what it received.

Owns starting and stopping the server thread (the same port again after a stop),
the switchable failure modes, the tokens, and the recorded entries that tests wait
on. Thread-safe: handler threads and the test's thread share it under one lock.
It must not build HTTP answers (wire.py) or print anything (console.py).
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from typing import Any, Callable

from .wire import DETAIL_BAD_CREDENTIALS, DETAIL_NOT_AUTHENTICATED, LogApiHandler, LogApiServer


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
        self.request_log: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        self.entries: list[dict[str, Any]] = []
        # Called (outside the lock) with each accepted entry; serve_forever prints with it.
        self.on_entry: Callable[[dict[str, Any]], None] | None = None

        self._cond = threading.Condition()
        self._tokens: dict[str, float] = {}  # minted token -> expiry (time.time())
        self._revoked_static = False
        self._server: LogApiServer | None = None
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
        server = LogApiServer((self.host, self.port), LogApiHandler)
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

    def _count_request(self, authorization: str | None, method: str = "", path: str = "") -> None:
        with self._cond:
            self.requests_seen += 1
            self.request_log.append((method, path, authorization))
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

