"""Who a pid is, exactly: the identity that lets a daemon take over a process it did not spawn.

A pid alone names nobody for long: it is reused. A process is the one we recorded when its
pid, its start time (clock ticks since boot, from /proc/<pid>/stat, fixed at fork), the boot
it belongs to (/proc/sys/kernel/random/boot_id) and the ET_EXEC_ID in its environment all
match. Anything else (a reused pid, a reboot, a process that is not ours) is never adopted
and never signalled. Reads /proc only; signals nothing, owns no state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import procfs

_boot_id: str | None = None


def boot_id() -> str:
    """This boot's random id ('' where the kernel does not offer one)."""
    global _boot_id
    if _boot_id is None:
        try:
            _boot_id = procfs.read_proc("/proc/sys/kernel/random/boot_id").decode().strip()
        except OSError:
            _boot_id = ""
    return _boot_id


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat from the state on (field 3), or None when gone."""
    try:
        stat = procfs.read_proc(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The command name may hold spaces and parens: fields start after the last ')'.
    return stat[stat.rfind(b")") + 2:].split()


def start_ticks(pid: int, zombie_ok: bool = False) -> int | None:
    """The process's start time in clock ticks since boot (field 22), None when gone (or a
    zombie, unless zombie_ok: our own child that exited and is not reaped yet is still itself)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == b"X" or (fields[0] == b"Z" and not zombie_ok):
        return None
    return int(fields[19])


def is_child(pid: int, ticks: int) -> bool:
    """pid is this process's child (alive or a zombie not reaped yet) and started at ticks."""
    fields = _stat_fields(pid)
    return fields is not None and int(fields[1]) == os.getpid() and int(fields[19]) == ticks


TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Identity:
    """What a record must say about a process before anyone may touch it."""

    pid: int
    start_ticks: int
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> "Identity | None":
        ticks = start_ticks(pid)
        return None if ticks is None else cls(pid, ticks, boot_id())

    @classmethod
    def from_record(cls, record: object) -> "Identity | None":
        """From a state-file record; None when it lacks any part (such a record identifies nobody)."""
        if not isinstance(record, dict):
            return None
        pid, ticks, boot = record.get("pid"), record.get("start_ticks"), record.get("boot_id")
        if not (isinstance(pid, int) and pid > 1 and isinstance(ticks, int) and isinstance(boot, str) and boot):
            return None
        return cls(pid, ticks, boot)

    def as_record(self) -> dict[str, object]:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "boot_id": self.boot_id}

    def is_alive_as(self, exec_id: str) -> bool:
        """True only when this very process still runs, in this boot, carrying exec_id."""
        if self.boot_id != boot_id() or self.pid == os.getpid():
            return False
        if start_ticks(self.pid) != self.start_ticks:
            return False
        if procfs.environ_value(self.pid, "ET_EXEC_ID") != exec_id:
            return False
        # Read again: the pid could have died and been reused between the two reads above.
        return start_ticks(self.pid) == self.start_ticks
