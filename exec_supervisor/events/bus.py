"""The in-process event bus: the engine publishes, sinks subscribe.

Sinks are the stderr log, the log-API spool, the control API's recent-events ring and
any observer. Publishing is synchronous and must stay cheap: a sink that needs I/O hands
the event to its own queue.
"""

from __future__ import annotations

import logging
from typing import Callable

from .event import Event

log = logging.getLogger("exec_supervisor")

Sink = Callable[[Event], None]


class EventBus:
    """Fan-out of events to sinks. A failing sink is logged and never breaks supervision."""

    def __init__(self) -> None:
        # Replaced, never changed in place: publish iterates it while a sink may unsubscribe.
        self._sinks: tuple[Sink, ...] = ()
        # Events published so far by (event, level): the metrics' emitted counter, read at scrape time.
        self.counts: dict[tuple[str, str], int] = {}

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        self._sinks = (*self._sinks, sink)
        return lambda: self._unsubscribe(sink)

    def _unsubscribe(self, sink: Sink) -> None:
        sinks = list(self._sinks)
        sinks.remove(sink)
        self._sinks = tuple(sinks)

    def publish(self, event: Event) -> None:
        key = (event.event, event.level)
        self.counts[key] = self.counts.get(key, 0) + 1
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # a sink bug must not stop restarts
                log.exception("event sink %r failed on %s", sink, event.event)
