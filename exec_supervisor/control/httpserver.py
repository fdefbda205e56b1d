"""A small HTTP/1.1 server on asyncio streams: the accept loop, the connections it keeps, drain.

Owns the listening sockets (Unix or TCP) and our own accept loop, the bookkeeping of
every open connection (fresh, idle, busy), the connection limit, eviction, follow-stream
slots, the request loop of a kept-alive connection, routing (Router) and turning a
handler's failure into a JSON answer. What one connection does on the wire (h11,
deadlines, size caps, Request/Response/StreamResponse) is httpconn.py's; its public
names are importable from here too, so callers need one import. This module must not
read or write a connection's bytes itself: it goes through httpconn.Connection.

Every request runs on the daemon's loop. At MAX_CONNECTIONS, a new connection closes
the oldest one that is waiting on its client (idle, slow, or not reading what it asked
to follow) instead of being refused, so slow or idle connections can never lock an
operator out; only when every connection is busy with a request does a new one get
503. Bytes that are not HTTP get a 400. Handler failures become 500 JSON answers: no
request can take the loop down.

The accept loop is ours (not asyncio's start_server) so that every accepted
connection is known the moment it is accepted: drain() stops accepting, answers
every connection accepted so far, and closes only keep-alive ones that are idle
with nothing buffered; clients arriving later wait in the listen backlog.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Awaitable, Callable

import h11

from .httpconn import (HEAD_DEADLINE, READ_CHUNK, Connection, HttpError, Request, Response, StreamResponse,
                       error_response, json_response)

# Handlers and adapters import the request/response types from here: one import for a server and its routes.
__all__ = ["HttpServer", "Router", "Handler", "HttpError", "Request", "Response", "StreamResponse",
           "json_response", "error_response", "MAX_CONNECTIONS", "MAX_STREAMS"]

log = logging.getLogger("exec_supervisor")

MAX_CONNECTIONS = 128
BACKLOG = 100
MAX_STREAMS = MAX_CONNECTIONS // 2  # follow streams at once: the other half stays for commands
CLOSE_GRACE = 2.0

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
        self._by_task: dict[asyncio.Task[None], Connection] = {}
        self._open: dict[Connection, None] = {}  # oldest first
        self._closing = False
        self.streams = 0  # follow streams open now
        self.evicted = 0  # connections closed to make room, since start

    def take_stream(self) -> None:
        """A follow stream starts: take one of MAX_STREAMS slots, else 503."""
        if self.streams >= MAX_STREAMS:
            raise HttpError(503, f"too many follow streams (at most {MAX_STREAMS}); close one")
        self.streams += 1

    def release_stream(self) -> None:
        self.streams -= 1

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
        connection = Connection(reader, writer)
        self._by_task[task] = connection
        try:
            if len(self._open) >= MAX_CONNECTIONS and not self._evict_one():
                await connection.refuse(503, f"too many {self.name} connections (at most {MAX_CONNECTIONS}), "
                                             "all busy with requests")
                return
            self._open[connection] = None
            await self._serve_requests(connection, task)
        except asyncio.TimeoutError:  # the head (or, kept alive, the next one) did not come in time
            if connection.received and not connection.evicted:
                await connection.refuse(408, f"the request head did not arrive within {HEAD_DEADLINE:g}s")
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the server is closing
        except h11.RemoteProtocolError as exc:
            await connection.refuse(exc.error_status_hint, f"bad HTTP request: {exc}")
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

    async def _serve_requests(self, connection: Connection, task: asyncio.Task[None]) -> None:
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
            request.slots = self
            try:
                response = await self._dispatch(request)
            finally:
                if request.stream is not None:
                    request.stream.release()
            if isinstance(response, Response):
                await connection.send_response(request, response, self._closing)
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
