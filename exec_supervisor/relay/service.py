"""The daemon extension that takes executors' log lines from the log socket into the spool.

Started before the first reconcile, so every instance gets ET_LOG_SOCKET; stopped
after the farm is down (lines written while instances stop still arrive). Each
datagram's sender pid is mapped to its instance (``Engine.owner_of``): a process that
is no instance's is refused (counted), and a line is always filed, and prefixed,
under its real sender's exec id. Without event forwarding (``events.forward: false``)
there is no socket and executors post directly, as before.

It must not send anything to the service (the forwarder does) nor spawn anything.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .linesocket import LineSocket, parse_line, socket_address

__all__ = ["LogSocket", "ENV_LOG_SOCKET"]

log = logging.getLogger("exec_supervisor")

ENV_LOG_SOCKET = "ET_LOG_SOCKET"


class LogSocket:
    """Extension: start(daemon) / stopping(daemon) / stop(daemon)."""

    def __init__(self) -> None:
        self.relay: Any = None  # relay/http.py's Relay while service.relay is on
        self.socket: LineSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._daemon: Any = None

    async def start(self, daemon: Any) -> None:
        if daemon.forwarder is None:
            return
        address = socket_address(daemon.config.state_dir)
        kept = daemon.inherited.pop("log_socket", None)  # an in-place upgrade kept it: no line is lost
        if kept is not None:
            try:
                self.socket = LineSocket.inherited(address, kept)
            except OSError as exc:
                log.error("upgrade: the log socket handed over is unusable (%s); opening it anew", exc)
        try:
            if self.socket is None:
                self.socket = LineSocket(address)
        except OSError as exc:
            log.error("cannot open the executors' log socket %s (%s); executors post their lines directly",
                      address, exc.strerror or exc)
            return
        self._daemon = daemon
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.socket.fileno(), self._on_readable)
        daemon.engine.set_farm_env(ENV_LOG_SOCKET, address)
        if daemon.config.service.relay:
            await self._start_relay(daemon)

    async def _start_relay(self, daemon: Any) -> bool:
        from .http import Relay

        relay = Relay(daemon)
        try:
            await relay.start()
        except OSError as exc:
            log.error("service.relay: cannot listen on 127.0.0.1 (%s); executors get service.host", exc.strerror or exc)
            return False
        self.relay = relay
        daemon.engine.relay_url = relay.url
        log.info("service.relay: executors post to %s<exec id>/ (lines spooled, other requests passed on "
                 "to %s with the supervisor's credentials)", relay.url, daemon.config.service.host)
        return True

    async def reloaded(self, daemon: Any, result: Any) -> None:
        """service.relay switched on or off by a reload: the instances follow (a second reconcile)."""
        wanted = bool(daemon.config.service.relay) and self.socket is not None
        if wanted and self.relay is None:
            if await self._start_relay(daemon):
                await daemon.engine.reconcile()
        elif not wanted and self.relay is not None:
            # The reload's reconcile gave the instances service.host again (the spec ignores the
            # relay when it is off); nobody needs the listener any more.
            relay, self.relay = self.relay, None
            daemon.engine.relay_url = None
            await relay.stop()

    def _on_readable(self) -> None:
        sock, daemon = self.socket, self._daemon
        if sock is None or daemon is None or daemon.forwarder is None:
            return
        forwarder, engine = daemon.forwarder, daemon.engine
        for pid, data in sock.receive():
            instance = engine.owner_of(pid)
            line = parse_line(data)
            if instance is None or line is None:
                forwarder.lines.refused += 1
                if forwarder.lines.refused in (1, 100, 10_000):
                    log.warning("log socket: refused %d line(s) so far from processes that are no instance "
                                "of this farm, or not a log line (last from pid %d)", forwarder.lines.refused, pid)
                continue
            forwarder.add_line(instance.spec.exec_id, line[0], line[1])

    async def hand_over(self, daemon: Any) -> dict[str, int]:
        """Before an in-place upgrade: take what is waiting; lines sent from now on wait in the
        socket, which the next image keeps reading."""
        if self.socket is None:
            return {}
        self._on_readable()
        if self._loop is not None:
            self._loop.remove_reader(self.socket.fileno())
        return {"log_socket": self.socket.fileno()}

    async def stopping(self, daemon: Any) -> None:
        pass

    async def stop(self, daemon: Any) -> None:
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        if self.socket is None:
            return
        self._on_readable()  # what the last instances wrote as they stopped
        if self._loop is not None:
            self._loop.remove_reader(self.socket.fileno())
        self.socket.close()
        self.socket = None
