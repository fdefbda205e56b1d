"""One HTTP/1.1 connection on asyncio streams: h11 speaks the protocol, this module moves bytes.

Why not aiohttp: the control API needs a dozen routes on one Unix socket, and
aiohttp (with multidict, yarl, frozenlist, ...) costs the daemon about 14 MiB of
RSS, a quarter of its footprint. h11 is a pure-Python, I/O-free HTTP/1.1 state
machine (~0.1 MiB); what is left here is the per-connection half of the loop h11
asks its users to write: read, feed, send.

Owns one connection's protocol and its limits: reading with deadlines (a request head
must arrive whole within HEAD_DEADLINE of the connect, or of its first byte on a
kept-alive connection, which may sit idle IDLE_TIMEOUT between requests; a body within
BODY_DEADLINE of its head: a client sending one byte a second is cut off, not waited
for), the head size cap (MAX_HEAD, else 431), the body cap (413), and what a handler
sees and returns: Request, Response, StreamResponse, HttpError. Also how a response
or a refusal goes out on the wire.

It must not touch the accept loop, the set of open connections, eviction or drain:
those are httpserver.py's. It knows a server only as StreamSlots (a follow stream
takes one of the server's slots).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import struct
import termios
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

log = logging.getLogger("exec_supervisor")

MAX_HEAD = 16 * 1024
HEAD_DEADLINE = 5.0  # the whole request head, from the connect (or from its first byte, kept alive)
BODY_DEADLINE = 10.0  # the whole body (at most max_body), from the end of its head
IDLE_TIMEOUT = 30.0  # a kept-alive connection between two requests
READ_CHUNK = 64 * 1024

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


class Connection:
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


    async def send_response(self, request: "Request", response: "Response", closing: bool) -> None:
        """Send a whole response (closing: say this connection ends after it)."""
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
        await self.send(*events)

    async def refuse(self, status: int, message: str) -> None:
        """Answer a request we could not parse or will not serve, then close."""
        log.debug("control API: %s", message)
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or self.writer.is_closing():
            return
        body = (json.dumps({"error": message}) + "\n").encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Connection", "close")]
        try:
            await self.send(h11.Response(status_code=status, headers=headers,
                                         reason=REASONS.get(status, "").encode()),
                            h11.Data(data=body), h11.EndOfMessage())
        except (ConnectionError, h11.LocalProtocolError):
            pass


class StreamSlots(Protocol):
    """The server's side of a follow stream: a limited number of slots (httpserver.HttpServer)."""

    def take_stream(self) -> None:
        """Take a slot, or raise HttpError(503) when none is free."""

    def release_stream(self) -> None:
        """Give a slot back."""


class Request:
    def __init__(self, event: h11.Request, connection: Connection, max_body: int) -> None:
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
        self.slots: StreamSlots | None = None  # the server's follow-stream slots (set by the server)
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
        self._connection: Connection | None = None
        self._head_only = False
        self._slots: StreamSlots | None = None

    def release(self) -> None:
        """The stream is over: its slot goes back to the server."""
        if self._slots is not None:
            self._slots.release_stream()
            self._slots = None

    async def prepare(self, request: Request) -> None:
        slots = request.slots
        if slots is not None:
            slots.take_stream()
            self._slots = slots
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
