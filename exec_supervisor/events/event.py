"""The lifecycle event: one record per state change, and the levels events carry.

The lowest module of the package's event side: it imports nothing of ours, so the
engine, the messages that render events and every sink can all depend on it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}

# Instance events and their levels (README: Events on the service's log page).
INSTANCE_EVENT_LEVELS = {
    "spawned": "debug",
    "running": "info",
    "crashed": "error",
    "exited": "info",
    "fatal": "error",
    "stopping": "debug",
    "stopped": "info",
    # health (supervise/readiness.py, health/)
    "start_timeout": "error",
    "unhealthy": "error",
    "status_changed": "debug",
}

# Incident events (supervise/incidents.py) and their levels.
INCIDENT_EVENT_LEVELS = {
    "incident_opened": "error",
    "incident_digest": "warning",
    "incident_resolved": "info",
}

# How many bytes of an instance's last output a crash event carries.
OUTPUT_TAIL_MAX_BYTES = 2048

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
    # The spool's seq, set by the forwarder's sink as it spools the event (None: not spooled).
    seq: int | None = None
    # The open incident this instance event is folded into: spooled and counted, not posted on its own.
    folded: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
