"""Server-Sent Events for the web page: a snapshot at connect, then what changed.

    engine state change / bus event --> LiveHub (coalesces for COALESCE_SECONDS)
                                          --> one encoded message, queued to every client

Messages (`event: <name>` + one JSON `data:` line):
  snapshot  {"header", "rows", "events"}       at connect (and so after every reconnect)
  rows      [row | {"e", "gone": true}, ...]   instances that changed state since the last one
  events    [event, ...]                       new lifecycle events
  header    {...}                              counts and the event pipeline, on change and every USAGE_SECONDS
  usage     {"exec id": [cpu %, rss], ...}     every USAGE_SECONDS, read through usage.py; only the
                                               figures that changed since the last one

With no client connected the hub does nothing but one truth test per state change and
event: the daemon pays for the page only while someone has it open. A client that
cannot keep up (its queue full) is dropped; its page reconnects and starts afresh.
It reads the engine; it never changes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable

from ..events import Event
from . import views
from .usage import UsageSampler

log = logging.getLogger("exec_supervisor")

COALESCE_SECONDS = 0.15
USAGE_SECONDS = 10.0  # also the header's refresh when nothing changes (uptime ticks in the page itself)
CLIENT_QUEUE = 256
EVENTS_AT_CONNECT = 200


def message(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False, default=str)}\n\n"\
        .encode()


class Client:
    __slots__ = ("queue", "dropped")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE)
        self.dropped = False

    def put(self, data: bytes | None) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped = True  # too slow: its stream ends, the page reconnects with a snapshot
            self.queue = asyncio.Queue(1)
            self.queue.put_nowait(None)


class LiveHub:
    def __init__(self, daemon: Any, usage: UsageSampler, recent: Callable[[int], list[Event]],
                 actions: Callable[[], bool]) -> None:
        self.daemon = daemon
        self.usage = usage
        self._recent = recent
        self._actions = actions
        self.clients: set[Client] = set()
        self._dirty: dict[str, Any] = {}
        self._events: list[Event] = []
        self._sent_usage: dict[str, tuple[Any, int]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self) -> None:
        self.daemon.engine.on_state_change(self._on_state)
        self._unsubscribe = self.daemon.bus.subscribe(self._on_event)

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.disconnect()
        if self._task is not None:
            self._task.cancel()

    def disconnect(self) -> None:
        """End every client's feed (each page reconnects by itself)."""
        for client in list(self.clients):
            client.put(None)

    # ------------------------------------------------------------------ inputs (hot paths)

    def _on_state(self, instance: Any) -> None:
        if self.clients:
            self._dirty[instance.spec.exec_id] = instance
            if self._wake is not None:
                self._wake.set()

    def _on_event(self, event: Event) -> None:
        if self.clients:
            self._events.append(event)
            if self._wake is not None:
                self._wake.set()

    # ------------------------------------------------------------------ clients

    def snapshot(self) -> bytes:
        engine = self.daemon.engine
        now = time.monotonic()
        trees = self.usage.trees(engine)
        rows = [views.row(i, self.usage, now, trees) for i in engine.instances.values()]
        return message("snapshot", {
            "header": views.header(self.daemon, self._actions()),
            "rows": rows,
            "events": views.events(self._recent(EVENTS_AT_CONNECT)),
        })

    def join(self) -> Client:
        client = Client()
        self.clients.add(client)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        return client

    def leave(self, client: Client) -> None:
        self.clients.discard(client)
        if not self.clients:
            self._dirty.clear()
            self._events.clear()
            self._sent_usage = {}

    # ------------------------------------------------------------------ the loop (only while clients)

    async def _run(self) -> None:
        assert self._wake is not None
        next_usage = time.monotonic() + USAGE_SECONDS
        try:
            while self.clients:
                timeout = max(0.0, next_usage - time.monotonic())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                    await asyncio.sleep(COALESCE_SECONDS)  # a crash storm goes out as one message
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                if not self.clients:
                    break
                now = time.monotonic()
                changed = self._flush_changes()
                periodic = now >= next_usage
                if changed or periodic:
                    self._broadcast(message("header", views.header(self.daemon, self._actions())))
                if periodic:
                    usage = self._usage(now)
                    if usage:
                        self._broadcast(message("usage", usage))
                    next_usage = now + USAGE_SECONDS
        except asyncio.CancelledError:
            pass
        except Exception:  # never let the page's feed take anything else down
            log.exception("web page: live updates failed; clients will reconnect")
            for client in list(self.clients):
                client.put(None)
        finally:
            self._dirty.clear()
            self._events.clear()

    def _flush_changes(self) -> bool:
        dirty, self._dirty = self._dirty, {}
        events, self._events = self._events, []
        if dirty:
            engine = self.daemon.engine
            now = time.monotonic()
            # Changed rows carry no usage: it comes every USAGE_SECONDS (and reading it here would
            # cost a /proc pass per crash storm message).
            rows = [views.row(instance) if engine.instances.get(exec_id) is instance
                    else views.removed(exec_id) for exec_id, instance in dirty.items()]
            self._broadcast(message("rows", rows))
        if events:
            self._broadcast(message("events", views.events(events[-EVENTS_AT_CONNECT:])))
        return bool(dirty or events)

    def _usage(self, now: float) -> dict[str, Any]:
        """CPU % and RSS that changed since the last broadcast (a new client's snapshot has them all)."""
        out: dict[str, Any] = {}
        sent = self._sent_usage
        fresh: dict[str, tuple[Any, int]] = {}
        trees = self.usage.trees(self.daemon.engine)
        for instance in self.daemon.engine.instances.values():
            if instance.pid is None:
                continue
            usage = self.usage.of(instance, trees, now)
            if usage is not None:
                cpu, rss, percent = usage
                if percent is None:
                    percent = views.lifetime_percent(cpu, instance)
                exec_id = instance.spec.exec_id
                figures = fresh[exec_id] = (percent, rss)
                if sent.get(exec_id) != figures:
                    out[exec_id] = figures
        self._sent_usage = fresh
        self.usage.prune(i.pid for i in self.daemon.engine.instances.values() if i.pid is not None)
        return out

    def _broadcast(self, data: bytes) -> None:
        for client in list(self.clients):
            client.put(data)
