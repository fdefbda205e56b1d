"""An instance's states, and the Host protocol an instance calls its engine through.

    stopped/exited/fatal --start--> starting --(alive start_seconds)--> running
    starting/running --exit--> backoff --(delay)--> starting
                          \\--> exited (no restart due) | fatal (max_restarts reached)
    starting/running --stop--> stopping --(group and leftovers gone)--> stopped

Types only: the transitions are instance.py's (and readiness.py's, stopping.py's); the
engine implements Host. Imports nothing of ours at run time, so every module of the state
machine can import it without a circle.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from ..config import InstanceSpec
    from ..events import Event
    from . import containment
    from .instance import Instance
    from .timers import Cancellable, SlackTimers


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    EXITED = "exited"
    FATAL = "fatal"
    STOPPING = "stopping"


AT_REST = (State.STOPPED, State.EXITED, State.FATAL)


class Host(Protocol):
    """What an instance needs from its engine (kept narrow so instance never imports engine)."""

    supervisor_name: str
    log_dir: Path | None  # None: instances inherit the supervisor's stdout and stderr

    timers: SlackTimers
    cgroups: containment.Cgroups | None

    def spawn_env(self, spec: InstanceSpec) -> dict[bytes, bytes]: ...
    def publish(self, event: Event) -> None: ...
    def track(self, instance: "Instance", pid: int, carried: bool = False) -> None: ...
    def spawn(self, instance: "Instance", env: dict[bytes, bytes]) -> int: ...
    def orphans_of(self, exec_id: str) -> set[int]: ...
    def state_changed(self, instance: "Instance") -> None: ...
    def after_exits(self, callback: Callable[[], None]) -> Cancellable: ...
    def restart_delay(self, instance: "Instance", failures: int) -> float: ...
    def admit(self, instance: "Instance") -> Cancellable | None: ...
