"""HttpServer.drain(), as an upgrade uses it: when it returns, every connection it accepted has its
answer, and every one it did not accept still waits in the listen backlog for the next server.

Real Unix sockets, a real server on a real loop; the client is a plain blocking socket so that
its bytes are in the kernel at a moment the test chooses, between two turns of the loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from exec_supervisor.control.httpserver import HttpServer, Request, Router, json_response

REQUEST = b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n"
ONE_REQUEST = b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"  # one request, then the server closes


def make_server() -> HttpServer:
    async def ping(request: Request) -> object:
        return json_response({"pong": True})

    router = Router()
    router.add("GET", "/v1/ping", ping)
    return HttpServer(router, max_body=1024)


def read_answer(client: socket.socket) -> bytes:
    """Everything the server sent until it closed (the client's socket has a timeout)."""
    chunks = []
    while True:
        data = client.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def read_until(client: socket.socket, end: bytes) -> bytes:
    """What the server sent up to `end` (or its close): a head and its body may come in two sends,
    and a recv between them sees the head alone (the client's socket has a timeout)."""
    data = b""
    while not data.endswith(end):
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def answered_now(client: socket.socket) -> bytes | None:
    """The answer already in the client's buffer, or None if nothing came and the connection is
    still open (it waits in the backlog). A close without an answer fails the test."""
    client.setblocking(False)
    try:
        data = client.recv(65536)
    except BlockingIOError:
        return None
    finally:
        client.settimeout(10)
    assert data, "the connection was closed without an answer"
    return data


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.parametrize("loop_turns", range(6))
def test_a_request_sent_as_the_drain_begins_is_answered_or_left_in_the_backlog(tmp_path: Path, loop_turns: int) -> None:
    """Whatever the loop had done with the connection (not accepted, accepted but its handler not
    started, reading): when drain() returns it is answered or still in the backlog, never closed."""
    path = str(tmp_path / "c.sock")

    async def main() -> None:
        server = make_server()
        await server.start_unix(path)
        kept = os.dup(server.listening_fd())  # what an upgrade hands to the next image
        clients = []
        try:
            for _ in range(4):
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.settimeout(10)
                client.connect(path)
                client.sendall(ONE_REQUEST)
                clients.append(client)
            await turns(loop_turns)
            await server.drain(2.0)
            waiting = []
            for client in clients:
                answer = answered_now(client)
                if answer is None:
                    waiting.append(client)
                else:
                    assert answer.startswith(b"HTTP/1.1 200"), answer
            # The next image serves the kept socket: the ones left in the backlog get their answer.
            successor = make_server()
            await successor.start_unix_socket(socket.socket(fileno=kept))
            kept = -1
            try:
                for client in waiting:
                    answer = await asyncio.get_running_loop().run_in_executor(None, read_answer, client)
                    assert answer.startswith(b"HTTP/1.1 200"), answer
            finally:
                await successor.close()
        finally:
            for client in clients:
                client.close()
            if kept >= 0:
                os.close(kept)
            await server.close()

    asyncio.run(main())


def test_a_keep_alive_request_in_the_kernel_buffer_is_answered_and_an_idle_one_is_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")

    async def main() -> None:
        server = make_server()
        await server.start_unix(path)
        loop = asyncio.get_running_loop()
        busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for client in (busy, idle):
                client.settimeout(10)
                client.connect(path)
                client.sendall(REQUEST)
            for client in (busy, idle):  # the first answers: both connections are now idle keep-alive ones
                first = await loop.run_in_executor(None, read_until, client, b'{"pong": true}\n')
                assert first.startswith(b"HTTP/1.1 200") and first.endswith(b'{"pong": true}\n'), first
            # The second request is in the kernel buffer; the server's loop has not seen it yet.
            busy.sendall(REQUEST)
            await server.drain(2.0)
            second = answered_now(busy)
            assert second is not None and second.startswith(b"HTTP/1.1 200"), second
            assert b"connection: close" in second.lower()  # it will not be reused
            assert await loop.run_in_executor(None, read_answer, idle) == b""  # idle: closed
            assert await loop.run_in_executor(None, read_answer, busy) == b""  # then closed, once answered
        finally:
            busy.close()
            idle.close()
            await server.close()

    asyncio.run(main())
