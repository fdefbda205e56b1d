"""Several instances' logs at once, interleaved line by line: `GET /v1/logs?target=T&n=&follow=&since=`.

Owns that endpoint. Each line goes out as `<exec id> | <line>`; the client pads and
colours the prefix. A target is `all`, a type or an exec id of the farm; an instance
scaled away (or dropped by a reload) is still readable while its log file exists, found
in log_dir by the exec id pattern, never by request text. `n` lines per instance, then
(follow) what each appends, in whole lines. `since` (a UNIX time) leaves out instances
whose log has not changed since, and lines stamped (`YYYY-MM-DD HH:MM:SS` first) earlier.
Reads go through logtail; the handler only reads and never changes the farm.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..httpserver import HttpError as ApiError, Request, StreamResponse
from ..logtail import LogFollower, read_tail
from ..params import EXEC_ID_RE, TYPE_RE, count, flag, known_type, number, shorten
from ..route import Route

if TYPE_CHECKING:
    from ..server import ControlServer

MAX_TAIL_LINES = 100_000
MAX_FILES = 10_000
STEP_LIMIT = 64 * 1024  # per file per pass: one chatty instance cannot starve the others
LOG_RE = re.compile(rb"(ET-[A-Za-z][A-Za-z0-9_]*-[0-9]+)\.log")
STAMP_RE = re.compile(rb"\[?(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)")


def _poll_seconds(files: int) -> float:
    return 0.2 if files <= 50 else 1.0  # a thousand followed files cost the loop little, seldom


def log_files(ctl: ControlServer, target: str) -> list[tuple[str, Path]]:
    """(exec id, log file) of target: the farm's instances, plus files of instances no longer in it."""
    engine = ctl.engine
    if not isinstance(target, str) or not target:
        raise ApiError(400, "target must be 'all', a type name (HelloWorld) or an exec id (ET-HelloWorld-3)")
    if engine.log_dir is None:
        raise ApiError(404, "the instances write to the supervisor's stdout (run-one --log-to stdout): "
                            "no log file to read")
    log_dir = Path(ctl.daemon.config.log_dir)
    if EXEC_ID_RE.fullmatch(target):
        instance = engine.instances.get(target)
        path = instance.log_path if instance is not None else log_dir / f"{target}.log"
        if instance is None and not path.exists():
            raise ApiError(404, f"no instance {target} in this farm, and no log file of it (see status)")
        return [(target, path)]
    if target not in ("all", "*"):
        if not TYPE_RE.fullmatch(target):
            raise ApiError(400, f"{shorten(target)!r} is not 'all', a type name or an exec id (ET-<Name>-<id>)")
        known_type(engine, target)
    found: dict[str, Path] = {}
    for exec_id, instance in engine.instances.items():
        if target in ("all", "*") or instance.spec.type == target:
            found[exec_id] = instance.log_path
    try:
        names = os.listdir(os.fsencode(log_dir))
    except OSError:
        names = []
    for name in names:
        match = LOG_RE.fullmatch(name)
        if match is None:
            continue
        exec_id = match.group(1).decode()
        if exec_id not in found and (target in ("all", "*") or exec_id.rsplit("-", 1)[0] == f"ET-{target}"):
            found[exec_id] = log_dir / f"{exec_id}.log"
    order = {name: index for index, name in enumerate(engine.config.executors)}

    def key(exec_id: str) -> tuple[int, str, int]:
        type_name, _, number_text = exec_id[3:].rpartition("-")
        return (order.get(type_name, len(order)), type_name, int(number_text))

    return [(e, found[e]) for e in sorted(found, key=key)][:MAX_FILES]


def _stamped_before(line: bytes, since: float) -> bool:
    match = STAMP_RE.match(line)
    if match is None:
        return False
    try:
        when = time.mktime(time.strptime(f"{match.group(1).decode()} {match.group(2).decode()}", "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return False
    return when < since


class _Prefixer:
    """Whole lines of one file, each prefixed `<exec id> | `; a partial last line waits for its end."""

    __slots__ = ("prefix", "partial", "since")

    def __init__(self, exec_id: str, since: float | None) -> None:
        self.prefix = exec_id.encode() + b" | "
        self.partial = b""
        self.since = since

    def lines(self, data: bytes, final: bool = False) -> bytes:
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        if self.since is not None:
            lines = [line for line in lines if not _stamped_before(line, self.since)]
        return b"".join(self.prefix + line + b"\n" for line in lines)


async def logs(ctl: ControlServer, request: Request) -> StreamResponse:
    files = log_files(ctl, request.query.get("target") or "all")
    n = count(request.query.get("n"), "n", 50, MAX_TAIL_LINES)
    follow = flag(request.query.get("follow"), "follow", False)
    since = number(request.query.get("since"), "since", None, 0, 1e11)
    if since is not None:
        files = [(e, p) for e, p in files if _mtime(p) >= since]
    response = StreamResponse("text/plain; charset=utf-8")
    followers: list[tuple[_Prefixer, Any]] = []
    try:
        await response.prepare(request)
        for exec_id, path in files:
            tail, offset = read_tail(path, n)
            prefixer = _Prefixer(exec_id, since)
            out = prefixer.lines(tail, final=True)
            if out:
                await response.write(out)
            if follow:
                followers.append((prefixer, LogFollower(path, offset)))
        pause = _poll_seconds(len(followers))
        while follow and not ctl.closing.is_set():
            for prefixer, follower in followers:
                data = follower.step(STEP_LIMIT)
                if data:
                    out = prefixer.lines(data)
                    if out:
                        await response.write(out)
            if request.gone():
                break
            try:
                await asyncio.wait_for(ctl.closing.wait(), pause)
            except asyncio.TimeoutError:
                pass
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    return response


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


ROUTES = [
    Route("GET", "/logs", logs, query="?target=&n=&follow=&since="),
]
