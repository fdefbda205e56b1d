"""Reading endpoints that can stream: recent events and an instance's log, optionally followed.

Owns `GET /v1/events` and `GET /v1/logs/<exec id>`, each either one answer or (with
follow=1) a stream that ends when the client goes or the server closes. Streams run
on the supervision loop: each step is bounded and yields. These handlers only read;
they must never change the farm, and the log files are read through logtail only.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from ...events import Event
from ..httpserver import HttpError as ApiError, Request, Response, StreamResponse, json_response as _json
from ..logtail import FOLLOW_CHUNK, LogFollower, read_tail
from ..params import EXEC_ID_RE, count, flag, shorten
from .multilogs import log_files
from ..route import Route

if TYPE_CHECKING:
    from ..server import ControlServer

MAX_TAIL_LINES = 100_000
FOLLOW_POLL_SECONDS = 0.2
FOLLOW_QUEUE = 10_000


def _line(ctl: ControlServer, event: Event) -> bytes:
    return (json.dumps(ctl.event_dict(event), default=str, ensure_ascii=False) + "\n").encode()


async def events(ctl: ControlServer, request: Request) -> StreamResponse:
    n = count(request.query.get("n"), "n", 50, ctl.ring.maxlen or 0)
    follow = flag(request.query.get("follow"), "follow", False)
    recent = list(ctl.ring)[-n:] if n else []
    if not follow:
        return _json({"events": [ctl.event_dict(e) for e in recent],
                      "forwarding": ctl.daemon.forwarder is not None, "backlog": ctl.backlog()})
    queue: asyncio.Queue[Event | None] = asyncio.Queue(FOLLOW_QUEUE)
    ctl.followers.add(queue)
    response = StreamResponse("application/x-ndjson")
    try:
        await response.prepare(request)
        for event in recent:
            await response.write(_line(ctl, event))
        while not ctl.closing.is_set():
            try:
                event = await asyncio.wait_for(queue.get(), 1.0)
            except asyncio.TimeoutError:
                if request.gone():
                    break
                continue
            if event is None:
                break
            await response.write(_line(ctl, event))
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        ctl.followers.discard(queue)
    return response


async def logs(ctl: ControlServer, request: Request) -> StreamResponse:
    exec_id = request.match_info.get("exec_id", "")
    if not EXEC_ID_RE.fullmatch(exec_id):
        raise ApiError(400, f"{shorten(exec_id)!r} is not an exec id (ET-<Name>-<id>); logs are only served for "
                            "instances of this farm")
    n = count(request.query.get("n"), "n", 50, MAX_TAIL_LINES)
    follow = flag(request.query.get("follow"), "follow", False)
    # Built from log_dir and an exec id (a pattern with no `/`): an instance scaled away stays
    # readable while its file exists.
    path = log_files(ctl, exec_id)[0][1]
    tail, offset = read_tail(path, n)
    if not follow:
        return Response(tail, content_type="text/plain; charset=utf-8")
    response = StreamResponse("text/plain; charset=utf-8")
    follower = LogFollower(path, offset)
    try:
        await response.prepare(request)
        if tail:
            await response.write(tail)
        while not ctl.closing.is_set():
            data = follower.step()
            if data:
                await response.write(data)
                if len(data) >= FOLLOW_CHUNK:
                    continue  # more is waiting; the write above already yielded to the loop
            if request.gone():
                break
            try:
                await asyncio.wait_for(ctl.closing.wait(), FOLLOW_POLL_SECONDS)
            except asyncio.TimeoutError:
                pass
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass
    return response


ROUTES = [
    Route("GET", "/events", events, query="?n=&follow="),
    Route("GET", "/logs/{exec_id}", logs, query="?n=&follow="),
]
