"""A small HTTP/1.1 server on asyncio streams: h11 speaks the protocol, this module moves bytes.

Why not aiohttp: the control API needs a dozen routes on one Unix socket, and
aiohttp (with multidict, yarl, frozenlist, ...) costs the daemon about 14 MiB of
RSS, a quarter of its footprint. h11 is a pure-Python, I/O-free HTTP/1.1 state
machine (~0.1 MiB); what is left here is the connection loop h11 asks its users
to write: read, feed, dispatch, send.

Every request runs on the daemon's loop. A request head must arrive whole within
HEAD_DEADLINE of the connect (of its first byte, on a kept-alive connection, which may
sit idle IDLE_TIMEOUT between requests), and a body within BODY_DEADLINE of its head:
a client sending one byte a second is cut off, not waited for. At MAX_CONNECTIONS, a new
connection closes the oldest one that is waiting on its client (idle, slow, or not
reading what it asked to follow) instead of being refused, so slow or idle connections can
never lock an operator out; only when every connection is busy with a request does a
new one get 503. A request head larger than MAX_HEAD or a body larger than the server's
max_body is refused (431/413); bytes that are not HTTP get a 400. Handler failures become
500 JSON answers: no request can take the loop down.

The accept loop is ours (not asyncio's start_server) so that every accepted
connection is known the moment it is accepted: drain() stops accepting, answers
every connection accepted so far, and closes only keep-alive ones that are idle
with nothing buffered; clients arriving later wait in the listen backlog.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import fcntl
import socket
import struct
import termios
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

log = logging.getLogger("exec_supervisor")

MAX_HEAD = 16 * 1024
HEAD_DEADLINE = 5.0  # the whole request head, from the connect (or from its first byte, kept alive)
BODY_DEADLINE = 10.0  # the whole body (at most max_body), from the end of its head
IDLE_TIMEOUT = 30.0  # a kept-alive connection between two requests
READ_CHUNK = 64 * 1024
MAX_CONNECTIONS = 128
BACKLOG = 100
MAX_STREAMS = MAX_CONNECTIONS // 2  # follow streams at once: the other half stays for commands
CLOSE_GRACE = 2.0

REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
           422: "Unprocessable Content", 431: "Request Header Fields "
           "Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class HttpError(Exception):
    """Answer this request with `status` and a JSON `{"error": message, **extra}` (and `headers`)."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.extra = extra


class Response:
    def __init__(self, body: bytes = b"", status: int = 200,
                 content_type: str = "application/json", headers: list[tuple[str, str]] | None = None) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers or []


def json_response(data: Any, status: int = 200) -> Response:
    text = json.dumps(data, default=str, ensure_ascii=False) + "\n"
    return Response(text.encode(), status)


def error_response(status: int, message: str, **extra: Any) -> Response:
    return json_response({"error": message, **extra}, status)


class _Connection:
    """One client: the h11 state machine plus the stream pair under it.

    `waiting` is true while the connection waits on its client (for bytes, or for it to read
    ours): the only time it may be closed to make room for a new one.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.opened = asyncio.get_running_loop().time()
        self.waiting = False
        self.received = 0  # bytes of the current request head so far
        self.evicted = False

    async def read(self, timeout: float) -> None:
        """One read from the client into h11 (b"" tells h11 the peer closed its side)."""
        if timeout <= 0:
            raise asyncio.TimeoutError()
        self.waiting = True
        try:
            data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
        finally:
            self.waiting = False
        self.received += len(data)
        self.h11.receive_data(data)

    async def next_event(self, deadline: float) -> Any:
        """The next h11 event, complete by `deadline` (loop time), else asyncio.TimeoutError."""
        loop = asyncio.get_running_loop()
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self.read(deadline - loop.time())

    async def next_request(self, first: bool) -> Any:
        """The next request head: within HEAD_DEADLINE of the connect, or (kept alive) of its first byte."""
        loop = asyncio.get_running_loop()
        self.received = 0
        deadline = self.opened + HEAD_DEADLINE if first else None
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if deadline is None:
                await self.read(IDLE_TIMEOUT)
                deadline = loop.time() + HEAD_DEADLINE
            else:
                await self.read(deadline - loop.time())

    async def send(self, *events: Any) -> None:
        for event in events:
            data = self.h11.send(event)
            if data:
                self.writer.write(data)
        self.waiting = True  # a client that does not read what it asked for is a slow one
        try:
            await self.writer.drain()
        finally:
            self.waiting = False

    def pending(self) -> bool:
        """Bytes of a next request are here: kept by h11 or waiting in the kernel's receive buffer."""
        if self.h11.trailing_data[0]:
            return True
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return False
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] > 0
        except OSError:
            return False

    def gone(self) -> bool:
        """The client hung up (seen without reading: the protocol fed EOF or an error to the reader)."""
        return self.writer.is_closing() or self.reader.at_eof() or self.reader.exception() is not None


class Request:
    def __init__(self, event: h11.Request, connection: _Connection, max_body: int) -> None:
        self.method = event.method.decode("ascii", "replace").upper()
        target = event.target.decode("ascii", "replace")
        parts = urlsplit(target)
        self.path = unquote(parts.path)
        self.query_string = parts.query  # as sent (a proxy passes it on unchanged)
        # a repeated key keeps its first value, as in aiohttp's request.query.get()
        self.query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            self.query.setdefault(key, value)
        self.headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers}
        self.match_info: dict[str, str] = {}
        self._connection = connection
        self._server: HttpServer | None = None
        self.stream: StreamResponse | None = None  # set by a StreamResponse's prepare()
        self._max_body = max_body
        self._body: bytes | None = None
        self._body_deadline = asyncio.get_running_loop().time() + BODY_DEADLINE

    async def read(self) -> bytes:
        """The whole body (at most max_body bytes, else 413)."""
        if self._body is None:
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_body:
                raise HttpError(413, f"request body too large (at most {self._max_body} bytes)")
            chunks: list[bytes] = []
            size = 0
            while True:
                try:
                    event = await self._connection.next_event(self._body_deadline)
                except asyncio.TimeoutError:
                    raise HttpError(408, f"the request body did not arrive within {BODY_DEADLINE:g}s") from None
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self._max_body:
                        raise HttpError(413, f"request body too large (at most {self._max_body} bytes)")
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # the client closed mid-body
                    raise ConnectionResetError("the client closed the connection before sending its body")
            self._body = b"".join(chunks)
        return self._body

    def gone(self) -> bool:
        return self._connection.gone()

    @property
    def peer(self) -> Any:
        """The client's address: (host, port) over TCP, '' over a Unix socket."""
        return self._connection.writer.get_extra_info("peername")


class StreamResponse:
    """A response written piece by piece (chunked), for follow streams."""

    def __init__(self, content_type: str, headers: list[tuple[str, str]] | None = None) -> None:
        self.content_type = content_type
        self.headers = headers or []
        self._connection: _Connection | None = None
        self._head_only = False
        self._server: HttpServer | None = None

    def release(self) -> None:
        """The stream is over: its slot goes back to the server."""
        if self._server is not None:
            self._server.streams -= 1
            self._server = None

    async def prepare(self, request: Request) -> None:
        server = request._server
        if server is not None:
            if server.streams >= MAX_STREAMS:
                raise HttpError(503, f"too many follow streams (at most {MAX_STREAMS}); close one")
            server.streams += 1
            self._server = server
            request.stream = self
        self._connection = request._connection
        self._head_only = request.method == "HEAD"
        await self._connection.send(h11.Response(
            status_code=200, headers=[("Content-Type", self.content_type), *self.headers], reason=b"OK"))

    async def write(self, data: bytes) -> None:
        if self._connection is None:
            raise RuntimeError("write() before prepare()")
        if data and not self._head_only:
            await self._connection.send(h11.Data(data=data))

    async def write_eof(self) -> None:
        if self._connection is not None and self._connection.h11.our_state is h11.SEND_BODY:
            await self._connection.send(h11.EndOfMessage())


Handler = Callable[[Request], Awaitable["Response | StreamResponse"]]


class Router:
    """Exact paths, and paths with one `{name}` segment matching [^/]+."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        pattern = re.compile("".join(
            f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") and part.endswith("}") else re.escape(part)
            for part in re.split(r"(\{[a-z_]+\})", path)))
        for existing, methods in self._routes:
            if existing.pattern == pattern.pattern:
                methods[method] = handler
                return
        self._routes.append((pattern, {method: handler}))

    def resolve(self, request: Request) -> Handler:
        for pattern, methods in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            method = "GET" if request.method == "HEAD" else request.method
            handler = methods.get(method)
            if handler is None:
                raise HttpError(405, f"{request.method} is not allowed on {request.path}")
            request.match_info = match.groupdict()
            return handler
        raise HttpError(404, f"no such endpoint: {request.method} {request.path} (GET /v1 lists the endpoints)")


class HttpServer:
    """Serves a Router on a Unix socket or a TCP port; `close()` ends every connection within CLOSE_GRACE."""

    def __init__(self, router: Router, max_body: int, name: str = "control") -> None:
        self.router = router
        self.max_body = max_body
        self.name = name  # "control" or "web": in log lines and the 503 answer
        self._listening: list[socket.socket] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._idle: set[asyncio.Task[None]] = set()  # waiting for a request: safe to cancel at once
        self._fresh: set[asyncio.Task[None]] = set()  # accepted, no request answered yet
        self._by_task: dict[asyncio.Task[None], _Connection] = {}
        self._open: dict[_Connection, None] = {}  # oldest first
        self._closing = False
        self.streams = 0  # follow streams open now
        self.evicted = 0  # connections closed to make room, since start

    async def start_unix(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        await self.start_unix_socket(sock)

    async def start_unix_socket(self, sock: socket.socket) -> None:
        """Serve a socket that is already listening (one handed over by an upgrading image)."""
        sock.setblocking(False)
        self._listening.append(sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    def listening_fd(self) -> int | None:
        return self._listening[0].fileno() if self._listening else None

    def _accept(self, listening: socket.socket) -> None:
        """Accept what waits and register each connection at once: from the accept on, drain()
        knows it (asyncio's servers start the handler a few loop turns later, and a connection
        accepted in between was neither answered nor waited for)."""
        for _ in range(BACKLOG):
            try:
                conn, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the client waits, we try again on the next wakeup
                log.warning("control API: cannot accept a connection: %s", exc)
                return
            task = asyncio.get_running_loop().create_task(self._serve(conn))
            self._connections.add(task)
            self._fresh.add(task)

    def _stop_accepting(self) -> None:
        for sock in self._listening:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()  # the caller keeps its own copy for the next image if it wants one
        self._listening = []

    async def drain(self, grace: float) -> None:
        """Stop accepting (the caller keeps the listening socket open: new clients wait in its
        backlog), let every request already accepted finish, then close every connection.
        A connection accepted but not yet asked anything gets `grace` to send its request."""
        self._closing = True
        self._stop_accepting()
        # A connection whose read just completed is woken by now; an idle keep-alive one with
        # bytes already in the kernel is answered too; only truly idle ones are closed.
        await asyncio.sleep(0)
        for task in self._idle - self._fresh:
            connection = self._by_task.get(task)
            if connection is not None and connection.pending():
                self._fresh.add(task)
            else:
                task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_GRACE)

    async def start_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port ('' = every address; port 0 = any free one); returns the address bound."""
        # asyncio binds (every address of host, v6-only for v6) but does not serve: our accept loop does
        binder = await asyncio.get_running_loop().create_server(asyncio.Protocol, host or None, port,
                                                                reuse_address=True, start_serving=False)
        socks = [sock.dup() for sock in binder.sockets]
        binder.close()
        for sock in socks:
            sock.listen(BACKLOG)  # asyncio listens only when it starts serving
            await self.start_unix_socket(sock)
        bound = socks[0].getsockname()
        return bound[0], bound[1]

    async def close(self) -> None:
        self._closing = True
        self._stop_accepting()
        for task in self._idle:
            task.cancel()
        if self._connections:
            # Follow streams end by themselves once the caller's closing flag is set.
            _, pending = await asyncio.wait(set(self._connections), timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_GRACE)

    async def _serve(self, conn: socket.socket) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            opener = asyncio.open_unix_connection if conn.family == socket.AF_UNIX else asyncio.open_connection
            reader, writer = await opener(sock=conn, limit=READ_CHUNK)
        except BaseException:
            conn.close()
            self._connections.discard(task)
            self._fresh.discard(task)
            raise
        connection = _Connection(reader, writer)
        self._by_task[task] = connection
        try:
            if len(self._open) >= MAX_CONNECTIONS and not self._evict_one():
                await self._refuse(connection, 503, f"too many {self.name} connections (at most {MAX_CONNECTIONS}), "
                                                    "all busy with requests")
                return
            self._open[connection] = None
            await self._serve_requests(connection, task)
        except asyncio.TimeoutError:  # the head (or, kept alive, the next one) did not come in time
            if connection.received and not connection.evicted:
                await self._refuse(connection, 408, f"the request head did not arrive within {HEAD_DEADLINE:g}s")
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the server is closing
        except h11.RemoteProtocolError as exc:
            await self._refuse(connection, exc.error_status_hint, f"bad HTTP request: {exc}")
        except h11.LocalProtocolError as exc:  # a handler wrote out of order: a bug on our side
            log.error("%s API: HTTP protocol error on our side: %s", self.name, exc)
        except Exception:  # never let one connection's failure escape into the loop's exception handler
            log.exception("%s API: connection failed", self.name)
        finally:
            self._connections.discard(task)
            self._by_task.pop(task, None)
            self._idle.discard(task)
            self._fresh.discard(task)
            self._open.pop(connection, None)
            writer.close()

    def _evict_one(self) -> bool:
        """Close the oldest connection waiting on its client, to make room; False if all are busy."""
        for connection in self._open:
            if connection.waiting:
                del self._open[connection]
                connection.evicted = True
                self.evicted += 1
                connection.writer.transport.abort()  # its task sees the connection lost and ends
                return True
        return False

    async def _serve_requests(self, connection: _Connection, task: asyncio.Task[None]) -> None:
        # Draining (drain()) still answers a connection that was accepted before it began.
        first = True
        while not self._closing or task in self._fresh or connection.pending():
            self._idle.add(task)
            try:
                event = await connection.next_request(first)
            finally:
                self._idle.discard(task)
            first = False
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                raise h11.RemoteProtocolError(f"expected a request, got {type(event).__name__}")
            request = Request(event, connection, self.max_body)
            request._server = self
            try:
                response = await self._dispatch(request)
            finally:
                if request.stream is not None:
                    request.stream.release()
            if isinstance(response, Response):
                await self._send(connection, request, response, self._closing)
            self._fresh.discard(task)
            # Drop an unread body (bounded) so the connection can take the next request.
            while connection.h11.their_state is h11.SEND_BODY:
                try:
                    await request.read()
                except HttpError:
                    return
            if connection.h11.our_state is not h11.DONE or connection.h11.their_state is not h11.DONE:
                return
            connection.h11.start_next_cycle()

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        try:
            handler = self.router.resolve(request)
            return await handler(request)
        except HttpError as exc:
            response = error_response(exc.status, exc.message, **exc.extra)
            response.headers = exc.headers
            return response
        except (asyncio.CancelledError, ConnectionError, asyncio.TimeoutError, h11.ProtocolError):
            raise
        except Exception as exc:  # a bug in a handler: report it, keep supervising
            log.exception("%s API: %s %s failed", self.name, request.method, request.path)
            return error_response(500, f"internal error ({type(exc).__name__}: {exc}); the daemon keeps running")

    @staticmethod
    async def _send(connection: _Connection, request: Request, response: Response, closing: bool) -> None:
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   *response.headers]
        if response.status == 413 or closing:
            # 413: the rest of that body is not worth reading; closing: this connection ends now
            headers.append(("Connection", "close"))
        reason = REASONS.get(response.status, "").encode()
        events: list[Any] = [h11.Response(status_code=response.status, headers=headers, reason=reason)]
        if response.body and request.method != "HEAD":
            events.append(h11.Data(data=response.body))
        events.append(h11.EndOfMessage())
        await connection.send(*events)

    @staticmethod
    async def _refuse(connection: _Connection, status: int, message: str) -> None:
        """Answer a request we could not parse or will not serve, then close."""
        log.debug("control API: %s", message)
        if connection.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or connection.writer.is_closing():
            return
        body = (json.dumps({"error": message}) + "\n").encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Connection", "close")]
        try:
            await connection.send(h11.Response(status_code=status, headers=headers,
                                               reason=REASONS.get(status, "").encode()),
                                  h11.Data(data=body), h11.EndOfMessage())
        except (ConnectionError, h11.LocalProtocolError):
            pass
