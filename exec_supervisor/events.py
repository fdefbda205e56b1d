"""Lifecycle events and the in-process bus that carries them to sinks.

The engine publishes; sinks (stderr log, the log-API spool, metrics, the
control API's recent-events ring) subscribe. Publishing is synchronous and
must stay cheap: a sink that needs I/O hands the event to its own queue.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

# messages only formats (translations grow there); imported here once, not on every event
from . import messages

LEVELS = ("debug", "info", "warning", "error")
LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}

# Instance events and their levels (issue 3's table).
INSTANCE_EVENT_LEVELS = {
    "spawned": "debug",
    "running": "info",
    "crashed": "error",
    "exited": "info",
    "fatal": "error",
    "stopping": "debug",
    "stopped": "info",
}

# How many bytes of an instance's last output a crash event carries.
OUTPUT_TAIL_MAX_BYTES = 2048

log = logging.getLogger("exec_supervisor")


@dataclass(slots=True)  # the control API keeps the last thousand
class Event:
    """One lifecycle event. Instance events carry exec_id; supervisor events do not."""

    event: str
    level: str
    supervisor: str
    exec_id: str | None = None
    type: str | None = None
    id: int | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    restarts: int | None = None
    runtime: float | None = None
    # Seconds until the next start; None when no restart is planned.
    restart_in: float | None = None
    output: str | None = None
    # Free-form facts for supervisor events (counts, reasons); rendered by format_message.
    detail: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_message(event: Event, language: str = "en") -> str:
    """The human sentence for an event, prefixed with the sender's identity."""
    return messages.render(event, language)


Sink = Callable[[Event], None]


class EventBus:
    """Fan-out of events to sinks. A failing sink is logged and never breaks supervision."""

    def __init__(self) -> None:
        # Replaced, never changed in place: publish iterates it while a sink may unsubscribe.
        self._sinks: tuple[Sink, ...] = ()

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        self._sinks = (*self._sinks, sink)
        return lambda: self._unsubscribe(sink)

    def _unsubscribe(self, sink: Sink) -> None:
        sinks = list(self._sinks)
        sinks.remove(sink)
        self._sinks = tuple(sinks)

    def publish(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # a sink bug must not stop restarts
                log.exception("event sink %r failed on %s", sink, event.event)
