"""Events: the lifecycle event type, the bus, and every sink that carries events out.

    event.py      the Event record and levels (imports nothing of ours)
    messages.py   human sentences in English and Chinese
    bus.py        fan-out to sinks
    locallog.py   the daemon's own stderr/journald log
    spool.py      the durable on-disk backlog: seqs, size cap, what is consumed, locking
    spoolfiles.py the spool's files: segment and state.json formats, indexing, repairs
    payload.py    the JSON of one event for the log API, and reading its answers
    auth.py       the forwarder's credentials: token env/file, login, renewal, fix-it advice
    delivery.py   delivery counters and status, the recent list, the dead-letter file
    forwarder.py  EventForwarder: the bus side (spool each event), start/stop, reloads, backlog()
    sender.py     the sender thread: delivery to the WeFastAPI log API, retry, backoff, dead letters
    flusher.py    the flusher thread: spool fsync tick, drop and refusal notices
    httpclient.py the keep-alive HTTP connection the sender uses

Imports flow down this list's dependencies only: nothing here imports config, supervise or control.
"""

from .bus import EventBus, Sink
from .event import INSTANCE_EVENT_LEVELS, LEVEL_RANK, LEVELS, OUTPUT_TAIL_MAX_BYTES, Event

__all__ = ["Event", "EventBus", "Sink", "LEVELS", "LEVEL_RANK", "INSTANCE_EVENT_LEVELS", "OUTPUT_TAIL_MAX_BYTES"]
