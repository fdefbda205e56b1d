"""The control server: the daemon extension that serves the control API on its Unix socket.

Owns the socket's life (a safe path, its group and mode, removing only our own file),
the router built from the handler modules' ROUTES, the ring of recent events and the
queues of `events?follow=1` clients, and the few facts every handler asks (engine,
stopping or not, event delivery backlog). It must not implement endpoints: those live
in handlers/ (see control/__init__.py for where a new route goes).

Every handler runs on the supervision loop, so each one does a bounded amount of
work between awaits: a log tail reads at most MAX_TAIL_BYTES, a follow stream
polls the file and reads at most FOLLOW_CHUNK per step, status costs two small
/proc reads per instance. Errors are `{"error": "..."}` with a 4xx (the caller's
mistake) or 409/500 (the daemon's side); no request can take the daemon down.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import grp
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any, Callable

from ..events import Event
from ..events.messages import format_message
from .handlers import ROUTES
from .httpserver import HttpError as ApiError, HttpServer, Router
from .procstats import ProcStats
from .route import Route

log = logging.getLogger("exec_supervisor")

MAX_BODY = 64 * 1024
EVENT_RING = 1000
HANDOVER_GRACE = 2.0  # for a request accepted just before an upgrade to arrive and be answered
UNTRACKED = ("/upgrade", "/shutdown")  # POST commands an upgrade need not wait for
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL


class StartupError(Exception):
    """The control socket cannot be set up; `exit_code` follows the CLI's convention."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ControlServer:
    """Daemon extension: the control socket and its API."""

    def __init__(self) -> None:
        self.daemon: Any = None
        self.server: HttpServer | None = None
        self.path: Path | None = None
        self._socket_ino: int | None = None
        self.ring: collections.deque[Event] = collections.deque(maxlen=EVENT_RING)
        self.followers: set[asyncio.Queue[Event | None]] = set()
        self.closing = asyncio.Event()  # set when the server stops: every stream ends
        self._stopping = False
        self.stats = ProcStats()
        self._unsubscribe: Callable[[], None] | None = None
        self.routes: list[Route] = list(ROUTES)  # what the router serves and GET /v1 lists

    # ------------------------------------------------------------------ lifecycle

    def router(self) -> Router:
        router = Router()
        for route in self.routes:
            router.add(route.method, route.full_path, self.bound(route))
        return router

    def bound(self, route: Route) -> Any:
        """The route's handler bound to this server, as the router serves it (POST commands tracked,
        so an upgrade waits for none of them); the web listener serves control routes through this too."""
        handler: Any = functools.partial(route.handler, self)
        if route.method == "POST" and route.path not in UNTRACKED:
            handler = functools.partial(self._tracked, route.path.strip("/"), handler)
        return handler

    async def _tracked(self, name: str, handler: Any, request: Any) -> Any:
        # An upgrade waits for no command: while one runs (a `start --wait`, a rolling restart)
        # it is refused, rather than cut that command's connection.
        with self.engine.operation(name):
            return await handler(request)

    async def start(self, daemon: Any) -> None:
        self.daemon = daemon
        self._unsubscribe = daemon.bus.subscribe(self._on_event)
        carried = (daemon.resume or {}).get("events_ring")
        if isinstance(carried, list):  # the recent events of the image before an upgrade
            for item in carried[-EVENT_RING:]:
                try:
                    self.ring.append(Event(**item))
                except TypeError:
                    continue
        server = HttpServer(self.router(), max_body=MAX_BODY)
        path = Path(daemon.config.socket_path)
        self.path = path
        inherited = daemon.inherited.pop("control", None)
        if inherited is not None and await self._serve_inherited(server, path, inherited):
            return
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

    async def _serve_inherited(self, server: HttpServer, path: Path, fd: int) -> bool:
        """Serve the listening socket an upgrading image kept open, if it still is the one at path."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.error("upgrade: the control socket handed over (fd %d) is unusable (%s); listening anew", fd, exc)
            return False
        try:
            sock.set_inheritable(False)
            if sock.family != socket.AF_UNIX or sock.getsockname() != str(path) or not path.is_socket():
                raise OSError(f"it is not {path} any more")
            await server.start_unix_socket(sock)
        except OSError as exc:
            log.error("upgrade: the control socket handed over cannot be served (%s); listening anew", exc)
            sock.close()
            return False
        self.server = server
        self._socket_ino = os.stat(path).st_ino
        return True

    async def hand_over(self, daemon: Any) -> dict[str, int]:
        """Before an in-place upgrade: stop accepting, finish what was asked, end the streams, and
        give the listening socket to the next image (a copy of its descriptor: connections that
        arrive meanwhile wait in its backlog, so no client ever finds no daemon)."""
        if self.server is None:
            return {}
        listening = self.server.listening_fd()
        kept = os.dup(listening) if listening is not None else None
        self.closing.set()  # follow streams end (their clients see a clean end of stream)
        for queue in list(self.followers):
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                pass
        await self.server.drain(HANDOVER_GRACE)
        self.server = None
        daemon.carry["events_ring"] = [event.to_dict() for event in self.ring]
        return {} if kept is None else {"control": kept}

    async def upgrade_failed(self, daemon: Any) -> None:
        """The re-exec failed: serve the kept socket again, in this image."""
        fd = daemon.inherited.pop("control", None)
        if fd is None or self.path is None:
            return
        self.closing = asyncio.Event()
        server = HttpServer(self.router(), max_body=MAX_BODY)
        if not await self._serve_inherited(server, self.path, fd):
            log.error("control socket lost after a failed upgrade; restart the daemon to get it back")

    async def stopping(self, daemon: Any) -> None:
        self._stopping = True

    async def stop(self, daemon: Any) -> None:
        self.closing.set()
        for queue in list(self.followers):
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
        for queue in self.followers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                pass  # a follower too slow to keep up misses events; supervision never waits

    def event_dict(self, event: Event) -> dict[str, Any]:
        """An event as the API shows it: its fields and its message in the configured language."""
        data = event.to_dict()
        data["message"] = format_message(event, self.daemon.config.events.language)
        return data

    # ------------------------------------------------------------------ what handlers ask

    @property
    def engine(self) -> Any:
        return self.daemon.engine

    @property
    def is_stopping(self) -> bool:
        return self._stopping or self.engine.stopping

    def state(self) -> str:
        return "stopping" if self.is_stopping else "running"

    def check_running(self) -> None:
        """409 while the daemon stops or upgrades: commands that change the farm are refused then."""
        if self.is_stopping:
            raise ApiError(409, "the daemon is stopping; nothing can be changed now")
        if self.daemon.upgrading:
            raise ApiError(409, "the daemon is upgrading in place; try again in a few seconds")

    def backlog(self) -> dict[str, Any] | None:
        forwarder = self.daemon.forwarder
        if forwarder is None:
            return None
        try:
            return forwarder.backlog()
        except Exception as exc:  # never let a sink problem break status
            return {"error": str(exc)}
