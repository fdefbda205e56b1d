"""Events: the lifecycle event type, the bus, and every sink that carries events out.

    event.py      the Event record and levels (imports nothing of ours)
    messages.py   human sentences in English and Chinese
    bus.py        fan-out to sinks
    locallog.py   the daemon's own stderr/journald log
    spool.py      the durable on-disk backlog
    forwarder.py  delivery to the WeFastAPI log API (auth.py, payload.py beside it)
    httpclient.py the keep-alive HTTP connection the sender uses

Imports flow down this list's dependencies only: nothing here imports config, supervise or control.
"""

from .bus import EventBus, Sink
from .event import INSTANCE_EVENT_LEVELS, LEVEL_RANK, LEVELS, OUTPUT_TAIL_MAX_BYTES, Event

__all__ = ["Event", "EventBus", "Sink", "LEVELS", "LEVEL_RANK", "INSTANCE_EVENT_LEVELS", "OUTPUT_TAIL_MAX_BYTES"]
