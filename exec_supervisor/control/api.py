"""The control API: HTTP with JSON bodies on a Unix socket, served on the daemon's loop (see httpserver).

Every handler runs on the supervision loop, so each one does a bounded amount of
work between awaits: a log tail reads at most MAX_TAIL_BYTES, a follow stream
polls the file and reads at most FOLLOW_CHUNK per step, status costs two small
/proc reads per instance. Errors are `{"error": "..."}` with a 4xx (the caller's
mistake) or 409/500 (the daemon's side); no request can take the daemon down.

Endpoints (all under /v1; see README "Control API"):
  GET  /v1                      index of endpoints
  GET  /v1/health               pid, version, state
  GET  /v1/status[?target=T]    supervisor, per-type summary, instances
  GET  /v1/events[?n=50&follow=1]
  GET  /v1/logs/<exec-id>[?n=50&follow=1]
  POST /v1/scale                {"scale": {"Type": 10 | "0-4,10" | [0, "5-9"]}, "wait": false, "timeout": 60}
  POST /v1/start|stop|restart   {"target": "all"|Type|exec id, "wait": true, "timeout": s, "rolling": false}
  POST /v1/reload               {}
  POST /v1/shutdown             {}
"""

from __future__ import annotations

import asyncio
import collections
import grp
import json
import logging
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..config import parse_ids
from ..events import Event
from ..events.messages import format_message
from .httpserver import (HttpError as ApiError, HttpServer, Request, Response, Router, StreamResponse,
                         json_response as _json)
from ..supervise.instance import AT_REST, Instance, State

log = logging.getLogger("exec_supervisor")

API = "/v1"
MAX_BODY = 64 * 1024
MAX_TAIL_LINES = 100_000
MAX_TAIL_BYTES = 4 * 1024 * 1024
FOLLOW_POLL_SECONDS = 0.2
FOLLOW_CHUNK = 256 * 1024
EVENT_RING = 1000
FOLLOW_QUEUE = 10_000
MAX_INSTANCES_PER_TYPE = 100_000
MAX_WAIT_SECONDS = 3600.0
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL

TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
EXEC_ID_RE = re.compile(r"ET-[A-Za-z][A-Za-z0-9_]*-[0-9]+")


class StartupError(Exception):
    """The control socket cannot be set up; `exit_code` follows the CLI's convention."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- request parsing


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.read()  # at most MAX_BODY (413)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _flag(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", ""):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ApiError(400, f"{name} must be true or false, got {value!r}")


def _number(value: Any, name: str, default: float | None, low: float, high: float) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool):
        raise ApiError(400, f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:  # also refuses NaN
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def _count(value: Any, name: str, default: int, high: int) -> int:
    if value is None:
        return default
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"\d{1,9}", text):
        raise ApiError(400, f"{name} must be a whole number >= 0, got {value!r}")
    number = int(text)
    if number > high:
        raise ApiError(400, f"{name} must be at most {high}, got {number}")
    return number


# --------------------------------------------------------------------------- per-process figures


class ProcStats:
    """CPU % and RSS per pid via psutil, cheap enough for a 1000-instance status.

    psutil.Process objects are cached per pid (pid + create time identify a process);
    CPU % is the share of one CPU since the previous status call, or the lifetime
    average on the first sight of a process.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Any, float, float, float | None]] = {}

    def sample(self, pid: int) -> tuple[float | None, int | None]:
        import psutil

        now = time.monotonic()
        entry = self._seen.get(pid)
        try:
            process = entry[0] if entry else psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                rss = process.memory_info().rss
            cpu = times.user + times.system
            if entry is None:
                age = max(time.time() - process.create_time(), 0.01)
                percent: float | None = 100.0 * cpu / age
            else:
                _, last_cpu, last_time, last_percent = entry
                elapsed = now - last_time
                if elapsed < 0.2 and last_percent is not None:
                    self._seen[pid] = entry  # too soon for a fresh figure: keep the last one
                    return last_percent, rss
                percent = 100.0 * max(cpu - last_cpu, 0.0) / max(elapsed, 1e-3)
        except psutil.Error:
            self._seen.pop(pid, None)
            return None, None
        percent = round(percent, 1)
        self._seen[pid] = (process, cpu, now, percent)
        return percent, rss

    def prune(self, live: set[int]) -> None:
        for pid in [p for p in self._seen if p not in live]:
            del self._seen[pid]


# --------------------------------------------------------------------------- log files


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def read_tail(path: Path, lines: int, max_bytes: int = MAX_TAIL_BYTES) -> tuple[bytes, int]:
    """The last `lines` lines of path (reading at most max_bytes) and the offset of its end."""
    try:
        handle = open(path, "rb")
    except OSError:
        return b"", 0
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if lines <= 0:
            return b"", size
        position, chunks, read, newlines = size, [], 0, 0
        while position > 0 and read < max_bytes:
            step = min(64 * 1024, position, max_bytes - read)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            newlines += chunk.count(b"\n", 0, len(chunk) - 1 if not chunks else len(chunk))
            chunks.append(chunk)
            read += step
            # `lines` newlines before the last byte: the last `lines` lines are complete.
            if newlines >= lines:
                break
        data = b"".join(reversed(chunks))
    trailing = data.endswith(b"\n")
    body = data[:-1] if trailing else data
    extra = body.count(b"\n") - lines  # whole lines beyond the ones asked for
    if extra >= 0:
        start = 0
        for _ in range(extra + 1):  # extra is at most one block's worth of lines
            start = body.index(b"\n", start) + 1
    elif position > 0:  # fewer lines than asked within max_bytes: drop the cut first line
        start = body.find(b"\n") + 1 if b"\n" in body else len(data)
    else:
        start = 0
    return data[start:], size


class LogFollower:
    """Reads what an instance appends to its log, across the daemon's copytruncate rotations.

    A rotation copies the file to `<log>.1` and truncates it; it runs on the daemon's
    loop, so a follower (on the same loop) never sees one half done. When `.1` changed
    since the last look, the rest of the old content is read from `.1`, then the live
    file from 0: nothing written before the rotation is lost or repeated.
    """

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.backup = path.with_name(path.name + ".1")
        self.offset = offset
        self.backup_id = _identity(self.backup)
        self.backup_offset: int | None = None  # reading the rest of a rotated copy

    def step(self, limit: int = FOLLOW_CHUNK) -> bytes:
        """Up to `limit` new bytes (b'' when nothing is new)."""
        if self.backup_offset is None:
            backup_id = _identity(self.backup)
            if backup_id != self.backup_id:
                self.backup_id = backup_id
                if backup_id is not None and backup_id[2] > self.offset:
                    self.backup_offset = self.offset
                self.offset = 0
            else:
                size = _identity(self.path)
                if size is not None and size[2] < self.offset:
                    self.offset = 0  # truncated without a copy (log_backups: 0) or by hand
        if self.backup_offset is not None:
            data = self._read(self.backup, self.backup_offset, limit)
            self.backup_offset += len(data)
            if len(data) < limit:
                self.backup_offset = None  # done with the copy; the live file continues
            if data:
                return data
        data = self._read(self.path, self.offset, limit)
        self.offset += len(data)
        return data

    @staticmethod
    def _read(path: Path, offset: int, limit: int) -> bytes:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read(limit)
        except OSError:
            return b""


# --------------------------------------------------------------------------- the server


class ControlServer:
    """Daemon extension: the control socket and its API."""

    def __init__(self) -> None:
        self.daemon: Any = None
        self.server: HttpServer | None = None
        self.path: Path | None = None
        self._socket_ino: int | None = None
        self.ring: collections.deque[Event] = collections.deque(maxlen=EVENT_RING)
        self._followers: set[asyncio.Queue[Event | None]] = set()
        self._closing = asyncio.Event()
        self._stopping = False
        self.stats = ProcStats()
        self._unsubscribe: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, daemon: Any) -> None:
        self.daemon = daemon
        self._unsubscribe = daemon.bus.subscribe(self._on_event)
        router = Router()
        router.add("GET", API, self.index)
        router.add("GET", API + "/", self.index)
        router.add("GET", API + "/health", self.health)
        router.add("GET", API + "/status", self.status)
        router.add("GET", API + "/events", self.events)
        router.add("GET", API + "/logs/{exec_id}", self.logs)
        router.add("POST", API + "/scale", self.scale)
        router.add("POST", API + "/start", self.start_cmd)
        router.add("POST", API + "/stop", self.stop_cmd)
        router.add("POST", API + "/restart", self.restart_cmd)
        router.add("POST", API + "/reload", self.reload)
        router.add("POST", API + "/shutdown", self.shutdown)
        server = HttpServer(router, max_body=MAX_BODY)
        path = Path(daemon.config.socket_path)
        self.path = path
        self._prepare_path(path)
        mode = daemon.config.control.socket_mode
        gid = self._group_id(daemon.config.control.group)
        # The socket is born 0600 (umask), handed to its group, then opened up to the configured
        # mode: there is no moment where it is looser than configured. Nothing is spawned yet,
        # so no child inherits the temporary umask.
        old_umask = os.umask(0o177)
        try:
            await server.start_unix(str(path))
        except OSError as exc:
            raise StartupError(f"control socket {path}: cannot listen: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        self.server = server
        try:
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, mode)
            self._socket_ino = os.stat(path).st_ino
        except OSError as exc:
            await server.close()
            self.server = None
            self._unlink_ours()
            raise StartupError(
                f"control socket {path}: cannot set group {daemon.config.control.group!r} / mode {mode:04o}: "
                f"{exc.strerror or exc}"
            ) from None

    async def stopping(self, daemon: Any) -> None:
        self._stopping = True

    async def stop(self, daemon: Any) -> None:
        self._closing.set()
        for queue in list(self._followers):
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                pass
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.server is not None:
            await self.server.close()
            self.server = None
        self._unlink_ours()

    def _prepare_path(self, path: Path) -> None:
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise StartupError(
                f"control socket path {path} is too long for a Unix socket ({len(os.fsencode(path))} bytes, "
                f"at most {SOCKET_PATH_MAX}); set control.socket to a shorter path", 2)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"control socket {path}: cannot create its folder: {exc.strerror or exc}", 2) from None
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise StartupError(f"control socket {path}: something that is not a socket is in the way; remove it", 2)
        # We hold the state_dir lock, so a socket there is a crashed daemon's. A control.socket
        # outside state_dir could be shared by mistake: check nobody answers before removing it.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            pass
        else:
            raise StartupError(f"control socket {path}: another daemon is listening there (check control.socket)")
        finally:
            probe.close()
        log.info("removing stale control socket %s (left by a daemon that did not stop cleanly)", path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    @staticmethod
    def _group_id(group: str | None) -> int | None:
        if not group:
            return None
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            if group.isdigit():
                return int(group)
            raise StartupError(f"control.group: there is no group named {group!r} on this machine", 2) from None

    def _unlink_ours(self) -> None:
        """Remove the socket file only if it is still ours (not a newer daemon's)."""
        if self.path is None:
            return
        try:
            if self._socket_ino is None or os.lstat(self.path).st_ino == self._socket_ino:
                self.path.unlink()
        except OSError:
            pass

    # ------------------------------------------------------------------ events ring

    def _on_event(self, event: Event) -> None:
        self.ring.append(event)
        for queue in self._followers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                pass  # a follower too slow to keep up misses events; supervision never waits

    def _event_dict(self, event: Event) -> dict[str, Any]:
        data = event.to_dict()
        data["message"] = format_message(event, self.daemon.config.events.language)
        return data

    # ------------------------------------------------------------------ helpers

    @property
    def engine(self) -> Any:
        return self.daemon.engine

    def _check_running(self) -> None:
        if self._stopping or self.engine.stopping:
            raise ApiError(409, "the daemon is stopping; nothing can be changed now")

    def select(self, target: Any) -> list[Instance]:
        """`all`, a type name of the farm or an exec id of the farm; anything else is refused."""
        if not isinstance(target, str) or not target:
            raise ApiError(400, "target must be 'all', a type name (HelloWorld) or an exec id (ET-HelloWorld-3)")
        engine = self.engine
        if target in ("all", "*"):
            return self._ordered(engine.instances.values())
        if TYPE_RE.fullmatch(target):
            if target not in engine.config.executors:
                known = ", ".join(engine.config.executors) or "none"
                raise ApiError(404, f"no executor type {target!r} in this farm (types: {known})")
            return self._ordered(i for i in engine.instances.values() if i.spec.type == target)
        if EXEC_ID_RE.fullmatch(target):
            instance = engine.instances.get(target)
            if instance is None:
                raise ApiError(404, f"no instance {target} in this farm (see status)")
            return [instance]
        shown = target if len(target) <= 80 else target[:77] + "..."
        raise ApiError(400, f"{shown!r} is not 'all', a type name or an exec id (ET-<Name>-<id>)")

    def _ordered(self, instances: Any) -> list[Instance]:
        order = {name: index for index, name in enumerate(self.engine.config.executors)}
        return sorted(instances, key=lambda i: (order.get(i.spec.type, len(order)), i.spec.type, i.spec.id))

    def _max_policy(self, instances: list[Instance], attribute: str, default: float) -> float:
        return max((getattr(i.policy, attribute) for i in instances), default=default)

    def _backlog(self) -> dict[str, Any] | None:
        forwarder = self.daemon.forwarder
        if forwarder is None:
            return None
        try:
            return forwarder.backlog()
        except Exception as exc:  # never let a sink problem break status
            return {"error": str(exc)}

    def _row(self, instance: Instance) -> dict[str, Any]:
        row = instance.snapshot()
        cpu = rss = None
        if instance.pid is not None:
            cpu, rss = self.stats.sample(instance.pid)
        row["cpu_percent"] = cpu
        row["rss"] = rss
        row["held"] = instance.spec.exec_id in self.engine.held
        row["log"] = str(instance.log_path)
        return row

    # ------------------------------------------------------------------ read-only endpoints

    async def index(self, request: Request) -> Response:
        return _json({
            "service": "exec-supervisor", "version": __version__,
            "endpoints": [
                "GET /v1/health", "GET /v1/status?target=", "GET /v1/events?n=&follow=",
                "GET /v1/logs/{exec_id}?n=&follow=", "POST /v1/scale", "POST /v1/start", "POST /v1/stop",
                "POST /v1/restart", "POST /v1/reload", "POST /v1/shutdown",
            ],
        })

    def _state(self) -> str:
        if self._stopping or self.engine.stopping:
            return "stopping"
        return "running"

    async def health(self, request: Request) -> Response:
        return _json({"ok": True, "pid": os.getpid(), "version": __version__, "state": self._state(),
                      "name": self.daemon.config.name})

    async def status(self, request: Request) -> Response:
        target = request.query.get("target") or "all"
        instances = self.select(target)
        engine = self.engine
        rows = [self._row(i) for i in instances]
        self.stats.prune({i.pid for i in engine.instances.values() if i.pid is not None} | {os.getpid()})
        members: dict[str, list[Instance]] = {}
        for instance in engine.instances.values():  # one pass, whatever the number of types
            members.setdefault(instance.spec.type, []).append(instance)
        shown_types = {i.spec.type for i in instances} | ({target} if target in engine.config.executors else set())
        types = []
        for type_name in engine.config.executors:
            if target not in ("all", "*") and type_name not in shown_types:
                continue
            group = members.get(type_name, [])
            scaled = type_name in engine.scaled
            types.append({
                "type": type_name,
                "running": sum(1 for i in group if i.state is State.RUNNING),
                "desired": sum(1 for i in group if i.want_running),
                "instances": len(group),
                "configured": len(engine.config.ids_of(type_name)),
                "scaled": len(engine.ids_of(type_name)) if scaled else None,
                "ids": compact_ids(engine.ids_of(type_name)),
                "configured_ids": compact_ids(engine.config.ids_of(type_name)),
                "held": sum(1 for i in group if i.spec.exec_id in engine.held),
            })
        cpu, rss = self.stats.sample(os.getpid())
        counts = engine.counts()
        supervisor = {
            "name": self.daemon.config.name,
            "pid": os.getpid(),
            "version": __version__,
            "state": self._state(),
            "started": self.daemon.started_at,
            "uptime": round(time.time() - self.daemon.started_at, 3),
            "config": str(self.daemon.config.path),
            "socket": str(self.path),
            "state_dir": str(self.daemon.config.state_dir),
            "log_dir": str(self.daemon.config.log_dir),
            "cpu_percent": cpu,
            "rss": rss,
            "running": counts["running"],
            "desired": counts["desired"],
            "instances": counts["instances"],
            "forwarding": self.daemon.forwarder is not None,
            "backlog": self._backlog(),
        }
        return _json({"supervisor": supervisor, "types": types, "instances": rows})

    async def events(self, request: Request) -> StreamResponse:
        n = _count(request.query.get("n"), "n", 50, EVENT_RING)
        follow = _flag(request.query.get("follow"), "follow", False)
        recent = list(self.ring)[-n:] if n else []
        if not follow:
            return _json({"events": [self._event_dict(e) for e in recent],
                          "forwarding": self.daemon.forwarder is not None, "backlog": self._backlog()})
        queue: asyncio.Queue[Event | None] = asyncio.Queue(FOLLOW_QUEUE)
        self._followers.add(queue)
        response = StreamResponse("application/x-ndjson")
        try:
            await response.prepare(request)
            for event in recent:
                await response.write(self._line(event))
            while not self._closing.is_set():
                try:
                    event = await asyncio.wait_for(queue.get(), 1.0)
                except asyncio.TimeoutError:
                    if request.gone():
                        break
                    continue
                if event is None:
                    break
                await response.write(self._line(event))
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self._followers.discard(queue)
        return response

    def _line(self, event: Event) -> bytes:
        return (json.dumps(self._event_dict(event), default=str, ensure_ascii=False) + "\n").encode()

    async def logs(self, request: Request) -> StreamResponse:
        exec_id = request.match_info.get("exec_id", "")
        if not EXEC_ID_RE.fullmatch(exec_id):
            shown = exec_id if len(exec_id) <= 80 else exec_id[:77] + "..."
            raise ApiError(400, f"{shown!r} is not an exec id (ET-<Name>-<id>); logs are only served for "
                                "instances of this farm")
        instance = self.engine.instances.get(exec_id)
        if instance is None:
            raise ApiError(404, f"no instance {exec_id} in this farm (see status)")
        n = _count(request.query.get("n"), "n", 50, MAX_TAIL_LINES)
        follow = _flag(request.query.get("follow"), "follow", False)
        path = instance.log_path  # built from log_dir and the farm's own exec id: no request text in it
        tail, offset = read_tail(path, n)
        if not follow:
            return Response(tail, content_type="text/plain; charset=utf-8")
        response = StreamResponse("text/plain; charset=utf-8")
        follower = LogFollower(path, offset)
        try:
            await response.prepare(request)
            if tail:
                await response.write(tail)
            while not self._closing.is_set():
                data = follower.step()
                if data:
                    await response.write(data)
                    if len(data) >= FOLLOW_CHUNK:
                        continue  # more is waiting; the write above already yielded to the loop
                if request.gone():
                    break
                try:
                    await asyncio.wait_for(self._closing.wait(), FOLLOW_POLL_SECONDS)
                except asyncio.TimeoutError:
                    pass
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return response

    # ------------------------------------------------------------------ commands

    async def scale(self, request: Request) -> Response:
        body = await _body(request)
        self._check_running()
        changes = body.get("scale")
        if not isinstance(changes, dict) or not changes:
            raise ApiError(400, 'scale needs {"scale": {"<Type>": <count> | "<ids like 0-4,10>"}}')
        wait = _flag(body.get("wait"), "wait", False)
        timeout = _number(body.get("timeout"), "timeout", None, 0, MAX_WAIT_SECONDS)
        engine = self.engine
        plan: list[tuple[str, int | None, tuple[int, ...] | None]] = []
        for type_name, value in changes.items():
            if not isinstance(type_name, str) or not TYPE_RE.fullmatch(type_name):
                raise ApiError(400, f"{type_name!r} is not a type name")
            if type_name not in engine.config.executors:
                known = ", ".join(engine.config.executors) or "none"
                raise ApiError(404, f"no executor type {type_name!r} in this farm (types: {known})")
            if isinstance(value, int) and not isinstance(value, bool):
                if not 0 <= value <= MAX_INSTANCES_PER_TYPE:
                    raise ApiError(400, f"{type_name}: count must be between 0 and {MAX_INSTANCES_PER_TYPE}, "
                                        f"got {value}")
                plan.append((type_name, value, None))
            elif isinstance(value, (str, list)):
                try:
                    ids = parse_ids(value)
                except ValueError as exc:
                    raise ApiError(400, f"{type_name}: {exc}") from None
                plan.append((type_name, None, ids))
            else:
                raise ApiError(400, f"{type_name}: expected a count (like 10) or ids (like \"0-4,10\"), "
                                    f"got {json.dumps(value)[:60]}")
        results = []
        for type_name, count, ids in plan:
            results.append(await engine.scale(type_name, count=count, ids=ids))
        lagging: list[str] = []
        if wait:
            budget = timeout if timeout is not None else self._settle_budget(
                [i for i in engine.instances.values() if i.spec.type in changes])
            lagging = await engine.wait_settled([t for t, _, _ in plan], budget)
        answer: dict[str, Any] = {"ok": not lagging, "results": results}
        if wait:
            answer["lagging"] = self._describe(lagging)
            if lagging:
                answer["error"] = f"{len(lagging)} instance(s) did not reach their target in time"
        return _json(answer)

    def _settle_budget(self, instances: list[Instance]) -> float:
        return (self._max_policy(instances, "stop_timeout", 10.0)
                + self._max_policy(instances, "start_seconds", 3.0) + 60.0)

    def _describe(self, exec_ids: list[str]) -> list[dict[str, Any]]:
        out = []
        for exec_id in exec_ids:
            instance = self.engine.instances.get(exec_id)
            out.append({"exec_id": exec_id, "state": instance.state.value if instance else "gone",
                        "last_exit": instance.last_exit if instance else None})
        return out

    async def _command_args(self, request: Request) -> tuple[list[Instance], dict[str, Any], bool, float | None]:
        body = await _body(request)
        self._check_running()
        instances = self.select(body.get("target"))
        wait = _flag(body.get("wait"), "wait", True)
        timeout = _number(body.get("timeout"), "timeout", None, 0, MAX_WAIT_SECONDS)
        return instances, body, wait, timeout

    async def start_cmd(self, request: Request) -> Response:
        instances, body, wait, timeout = await self._command_args(request)
        instances = self.engine.not_retiring(instances)
        await self.engine.start_instances(instances)
        budget = timeout if timeout is not None else self._max_policy(instances, "start_seconds", 3.0) + 30
        return await self._settled(body["target"], instances, wait, budget, (State.RUNNING,))

    async def stop_cmd(self, request: Request) -> Response:
        instances, body, wait, timeout = await self._command_args(request)
        await self.engine.stop_instances(instances)
        budget = timeout if timeout is not None else self._max_policy(instances, "stop_timeout", 10.0) + 10
        return await self._settled(body["target"], instances, wait, budget, AT_REST)

    async def restart_cmd(self, request: Request) -> Response:
        instances, body, wait, timeout = await self._command_args(request)
        instances = self.engine.not_retiring(instances)
        rolling = _flag(body.get("rolling"), "rolling", False)
        if rolling:
            failed = await self.engine.restart_instances(instances, rolling=True)
            answer: dict[str, Any] = {"ok": not failed, "target": body["target"], "rolling": True,
                                      "instances": [i.spec.exec_id for i in instances]}
            if failed:
                done = [i.spec.exec_id for i in instances]
                rest = done[done.index(failed[0]) + 1:] if failed[0] in done else []
                answer["lagging"] = self._describe(failed)
                answer["not_restarted"] = rest
                answer["error"] = (f"{failed[0]} did not come back to running; "
                                   f"{len(rest)} instance(s) after it were not restarted")
            return _json(answer)
        await self.engine.restart_instances(instances, rolling=False)
        budget = timeout if timeout is not None else self._settle_budget(instances)
        return await self._settled(body["target"], instances, wait, budget, (State.RUNNING,))

    async def _settled(self, target: str, instances: list[Instance], wait: bool, budget: float,
                       states: tuple[State, ...]) -> Response:
        answer: dict[str, Any] = {"ok": True, "target": target, "instances": [i.spec.exec_id for i in instances]}
        if not wait or not instances:
            return _json(answer)
        if states == AT_REST:
            async def settle(instance: Instance) -> bool:
                try:
                    await asyncio.wait_for(instance.wait_at_rest(), budget)
                    return True
                except asyncio.TimeoutError:
                    return False
        else:
            # fatal/exited end the wait early: they will not reach running by themselves.
            async def settle(instance: Instance) -> bool:
                await instance.wait_until(states + (State.FATAL, State.EXITED), budget)
                return instance.state in states
        results = await asyncio.gather(*(settle(i) for i in instances))
        lagging = [i.spec.exec_id for i, ok in zip(instances, results) if not ok]
        if lagging:
            answer["ok"] = False
            answer["lagging"] = self._describe(lagging)
            wanted = "/".join(s.value for s in states)
            answer["error"] = f"{len(lagging)} of {len(instances)} instance(s) did not reach {wanted}"
        return _json(answer)

    async def reload(self, request: Request) -> Response:
        await _body(request)
        self._check_running()
        result = await self.daemon.reload()
        if not result.get("ok"):
            return _json({"error": "the new config has errors; nothing was changed", **result}, 422)
        return _json(result)

    async def shutdown(self, request: Request) -> Response:
        await _body(request)
        running = self.engine.live_count()
        already = self._stopping or self.engine.stopping
        asyncio.get_running_loop().call_soon(self.daemon.request_stop, "shutdown requested over the control socket")
        return _json({"ok": True, "pid": os.getpid(), "instances": running, "already_stopping": already}, 202)


def compact_ids(ids: Any) -> str:
    """(0, 1, 2, 3, 10) -> '0-3,10'."""
    parts: list[str] = []
    run: list[int] = []
    for number in sorted(ids):
        if run and number == run[-1] + 1:
            run.append(number)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [number]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)



