"""One keep-alive HTTP(S) connection to the WeFastAPI service, for the event sender thread.

Why not requests here: the sender posts one small JSON event per request, and
requests spends about 0.5 ms of CPU on each (sessions, hooks, adapters, cookie
jars) against about 0.1 ms for the standard library's http.client underneath.
In a crash storm that CPU is taken from the supervision loop (one GIL), and
requests adds ~5 MiB to the daemon. What requests did for us, kept here:
proxies from the environment (HTTP(S)_PROXY / NO_PROXY, through urllib's own
parsing), a CA bundle from REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (SSL_CERT_FILE
and the system store otherwise), separate connect and read timeouts, and no
redirect following.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

from ..lazytls import https_connection, import_without_ssl, load_ssl

import_without_ssl("http.client")  # ssl only for an https:// service (lazytls.py)
import http.client  # noqa: E402


class TransportError(Exception):
    """No HTTP answer: the connection failed or timed out. The message is safe to log.

    busy: the service took the connection and the request but did not answer in time (it is
    there, and overloaded); otherwise nothing is listening or reachable, and a cheap retry soon
    is how delivery notices that it is back."""

    def __init__(self, message: str, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


class Answer:
    """A complete HTTP answer (the body is read in full: the service's answers are small)."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def describe(exc: BaseException) -> str:
    """A short, secret-free reason for a failed request."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "connection failed: name or service not known"
    if isinstance(exc, ConnectionRefusedError):
        return "connection failed: connection refused"
    if isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        return "connection failed: connection reset"
    ssl = sys.modules.get("ssl")  # loaded only once TLS is used (lazytls)
    if ssl is not None and isinstance(exc, ssl.SSLError):  # before OSError: it is one, its errno means nothing here
        return f"TLS error: {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"connection failed: {os.strerror(exc.errno).lower()}"
    return exc.__class__.__name__


class Channel:
    """Posts to one service (scheme, host, port) over a connection kept open between requests."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self._proxy = _environment_proxy(self.scheme, self.host)
        self._connection: http.client.HTTPConnection | None = None
        self._tls: Any = None  # an ssl.SSLContext, made on the first https request

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def post(self, url: str, body: bytes, headers: dict[str, str], timeouts: tuple[float, float]) -> Answer:
        """POST and read the whole answer. A kept-alive connection the server has closed meanwhile
        is replaced once at once (the event may then arrive twice: delivery is at least once)."""
        return self.request("POST", url, body, headers, timeouts)

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                timeouts: tuple[float, float]) -> Answer:
        """Any method, as post() (the relay passes executors' other requests on with it)."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": "exec-supervisor", **headers}
        if self._proxy is not None and self.scheme == "http":
            target = url  # a plain-HTTP proxy takes the absolute URL, and its credentials per request
            headers.update(self._proxy[2])
        for reused in (self._connection is not None, False):
            connection = self._connected(timeouts)
            try:
                connection.sock.settimeout(timeouts[1])
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if reused:
                    continue
                raise TransportError(describe(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise TransportError(describe(exc), busy=isinstance(exc, TimeoutError)) from None
            if response.will_close:
                self.close()
            return Answer(response.status, response.headers, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def _connected(self, timeouts: tuple[float, float]) -> http.client.HTTPConnection:
        if self._connection is not None:
            return self._connection
        connection: http.client.HTTPConnection
        if self._proxy is not None:
            proxy_host, proxy_port, proxy_auth = self._proxy
            if self.scheme == "https":
                connection = https_connection(proxy_host, proxy_port, timeouts[0], self._tls_context())
                connection.set_tunnel(self.host, self.port, headers=proxy_auth)
            else:
                connection = http.client.HTTPConnection(proxy_host, proxy_port, timeout=timeouts[0])
        elif self.scheme == "https":
            connection = https_connection(self.host, self.port, timeouts[0], self._tls_context())
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=timeouts[0])
        try:
            connection.connect()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise TransportError(describe(exc)) from None
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connection = connection
        return connection

    def _tls_context(self) -> Any:
        if self._tls is None:
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            self._tls = load_ssl().create_default_context(cafile=bundle or None)
        return self._tls


def _environment_proxy(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """(host, port, proxy headers) from HTTP(S)_PROXY unless NO_PROXY exempts the service."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None  # urllib.request (about 4 MiB with what it imports) only when a proxy may be set
    import_without_ssl("urllib.request")
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme)
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    headers: dict[str, str] = {}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
    return parts.hostname or "", parts.port or 8080, headers
