"""The health extension of the daemon: the notify socket's messages, probes and memory sampling, wired
to the instances' state machines (supervise/readiness.py).

It decides what a message from an instance means; the transitions themselves (running,
unhealthy, start_timeout and the restart through backoff) belong to the instance. It
never stops or signals a process itself, and it never trusts a pid a message names: only
the one the kernel attached to it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from ..supervise.instance import Instance, State
from .memory import MemoryWatch
from .notify import NotifySocket, one_line, parse, socket_address
from .probes import Probes

log = logging.getLogger("exec_supervisor")

# status_changed events: at most one per instance this often (the last text wins).
STATUS_EVENT_SECONDS = 10.0
UNKNOWN_SENDER_LOG_SECONDS = 60.0
_HEARTBEAT = b"WATCHDOG=1"
_HEARTBEAT_NL = b"WATCHDOG=1\n"


class Health:
    """Daemon extension (start/started/stopping/stop hooks, see daemon.Daemon.extensions)."""

    def __init__(self) -> None:
        self.socket: NotifySocket | None = None
        self.engine: Any = None
        self.unknown_senders = 0  # datagrams from pids of no instance: ignored
        self.messages = 0
        self._unknown_logged_at = -UNKNOWN_SENDER_LOG_SECONDS
        self._ignored_logged: set[tuple[str, str]] = set()
        self._status_emitted: dict[str, float] = {}
        self._status_pending: dict[str, asyncio.TimerHandle] = {}
        self.probes: Probes | None = None
        self.memory: MemoryWatch | None = None

    # ------------------------------------------------------------------ extension hooks

    async def start(self, daemon: Any) -> None:
        self.engine = engine = daemon.engine
        address = socket_address(daemon.config.state_dir)
        self.socket = self._inherited(daemon, address) or NotifySocket(address)
        engine.set_notify_socket(self.socket.address)
        engine.health = self
        loop = asyncio.get_running_loop()
        loop.add_reader(self.socket.fileno(), self._on_readable)
        self.probes = Probes(engine)
        self.memory = MemoryWatch(engine)
        engine.on_state_change(self._on_state_change)
        self.memory.start()

    @staticmethod
    def _inherited(daemon: Any, address: str) -> NotifySocket | None:
        """The socket an in-place upgrade kept open: datagrams sent meanwhile wait in it, none is lost."""
        fd = getattr(daemon, "inherited", {}).pop("notify", None)
        if fd is None:
            return None
        try:
            return NotifySocket(address, fd=fd)
        except OSError as exc:
            log.error("upgrade: the notify socket handed over is unusable (%s); binding it anew", exc)
            return None

    async def hand_over(self, daemon: Any) -> dict[str, int]:
        """Before an in-place upgrade re-executes the daemon: keep the socket (and its path) for the next image."""
        if self.socket is None:
            return {}
        asyncio.get_running_loop().remove_reader(self.socket.fileno())
        if self.probes is not None:
            self.probes.close()
        if self.memory is not None:
            self.memory.stop()
        fd = self.socket.hand_over()
        self.socket = None
        return {"notify": fd}

    async def upgrade_failed(self, daemon: Any) -> None:
        """The re-exec failed: go on with the kept socket in this image."""
        address = socket_address(daemon.config.state_dir)
        self.socket = self._inherited(daemon, address) or NotifySocket(address)
        asyncio.get_running_loop().add_reader(self.socket.fileno(), self._on_readable)
        self.probes = Probes(self.engine)
        self.memory = MemoryWatch(self.engine)
        self.memory.start()

    async def reloaded(self, daemon: Any, result: dict[str, Any]) -> None:
        """A reload may give a running instance a probe it had not: its probes start now."""
        if self.probes is not None:
            for instance in self.engine.instances.values():
                if instance.policy.probe is not None:
                    self.probes.state_changed(instance)

    async def stopping(self, daemon: Any) -> None:
        if self.probes is not None:
            self.probes.close()  # no new probe while the farm stops; running ones are swept
        for handle in self._status_pending.values():
            handle.cancel()
        self._status_pending.clear()

    async def stop(self, daemon: Any) -> None:
        if self.memory is not None:
            self.memory.stop()
        if self.socket is not None:
            asyncio.get_running_loop().remove_reader(self.socket.fileno())
            self.socket.close()
            self.socket = None

    def view(self) -> dict[str, Any]:
        """For the supervisor row of `status`."""
        return {"notify_socket": self.socket.address if self.socket else None, "notify_messages": self.messages,
                "notify_unknown_senders": self.unknown_senders,
                "probes_in_flight": self.probes.in_flight if self.probes else 0}

    # ------------------------------------------------------------------ state changes

    def _on_state_change(self, instance: Instance) -> None:
        if self.probes is not None and instance.policy.probe is not None:
            self.probes.state_changed(instance)

    # ------------------------------------------------------------------ messages

    def _on_readable(self) -> None:
        assert self.socket is not None
        owner_of = self.engine.owner_of
        for pid, data in self.socket.receive():
            self.messages += 1
            instance = owner_of(pid)
            if instance is None:
                self._unknown(pid)
                continue
            if data == _HEARTBEAT or data == _HEARTBEAT_NL:  # the common case, once a second per instance
                instance.notify_heartbeat()
                continue
            try:
                self._apply(instance, parse(data))
            except Exception:  # a strange message must never cost the loop
                log.exception("%s: handling a notify message failed", instance.spec.exec_id)

    def _unknown(self, pid: int) -> None:
        self.unknown_senders += 1
        now = time.monotonic()
        if now - self._unknown_logged_at >= UNKNOWN_SENDER_LOG_SECONDS:
            self._unknown_logged_at = now
            log.debug("notify socket: ignored a message from pid %d, which belongs to no instance "
                      "(%d such so far)", pid, self.unknown_senders)

    def _apply(self, instance: Instance, fields: dict[str, str]) -> None:
        exec_id = instance.spec.exec_id
        for key, value in fields.items():
            if key == "STATUS":
                if instance.notify_status(one_line(value)):
                    self._status_changed(instance)
            elif key == "READY":
                if value == "1":
                    instance.notify_ready()
            elif key == "WATCHDOG":
                if value == "1":
                    instance.notify_heartbeat()
                elif value == "trigger":
                    instance.fail_health("watchdog", {"trigger": True}, first_signal=signal.SIGABRT)
            elif key == "STOPPING":
                if value == "1":
                    instance.notify_stopping()
            elif key == "EXTEND_TIMEOUT_USEC":
                usec = _usec(value)
                if usec is not None:
                    instance.extend_timeout(usec / 1e6)
            elif key == "WATCHDOG_USEC":
                usec = _usec(value)
                if usec is not None:
                    instance.notify_watchdog_usec(usec)
            elif key == "ERRNO":
                if value.isdigit():
                    instance.notify_errno(int(value))
                    log.debug("%s: reports errno %s", exec_id, value)
            elif (exec_id, key) not in self._ignored_logged and len(self._ignored_logged) < 10_000:
                # MAINPID, RELOADING, FDSTORE, BARRIER, ...: meaningless here.
                self._ignored_logged.add((exec_id, key))
                log.debug("%s: notify message %s=... ignored (not used by exec-supervisor)", exec_id, key[:40])

    # ------------------------------------------------------------------ status_changed, rate-limited

    def _status_changed(self, instance: Instance) -> None:
        exec_id = instance.spec.exec_id
        if exec_id in self._status_pending:
            return  # the pending event will carry the newest text
        now = time.monotonic()
        wait = self._status_emitted.get(exec_id, -STATUS_EVENT_SECONDS) + STATUS_EVENT_SECONDS - now
        if wait <= 0:
            self._announce(instance)
        else:
            self._status_pending[exec_id] = asyncio.get_running_loop().call_later(wait, self._announce, instance)

    def _announce(self, instance: Instance) -> None:
        exec_id = instance.spec.exec_id
        self._status_pending.pop(exec_id, None)
        self._status_emitted[exec_id] = time.monotonic()
        if instance.pid is not None and instance.state in (State.STARTING, State.RUNNING, State.STOPPING):
            instance.announce_status()


def _usec(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isdigit() and len(value) < 19 else None
