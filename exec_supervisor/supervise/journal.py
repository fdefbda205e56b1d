"""The spawn journal: a write-ahead record of every process the daemon starts.

`state_dir/spawns.jsonl`, one JSON line per spawn, appended as the spawn returns (before the
loop runs anything else, so before the daemon can die knowing a process the journal does not):
exec id, pid, start time in clock ticks (the unit of /proc/<pid>/stat field 22), boot id and
cgroup path. The next daemon reads it (discovery.py) with the cgroups and a /proc scan to find
every process a dead daemon left. Records are never removed one by one: an exited pid's record
is harmless (its start time no longer matches), and the file is rewritten with the live
records only once it holds many more lines than instances (compaction).

fsync policy: none per record. The journal guards against the death of the daemon, not of
the machine: a line written with write(2) is in the page cache and survives a SIGKILL, and a
machine crash kills the processes the journal describes (records of another boot are
ignored). An fsync per spawn would cost a disk flush per restart for nothing.
A compaction writes a new file and renames it over the old one, so a reader sees either.

Owns only this file; knows nothing of instances or the engine (they hand it plain values).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger("exec_supervisor")

FILE_NAME = "spawns.jsonl"
COMPACT_MIN_LINES = 1024  # and at least 4 lines per live instance between compactions
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A start time recorded from a CLOCK_BOOTTIME reading taken just before the spawn: the kernel
# stamps the fork a moment later, so the process's own start time is the same tick or a later
# one. A spawn slower than this many ticks (at 100 Hz, 50 ms) is not recognised by start time.
START_TICKS_SLACK = 5


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def ticks_of(boottime: float) -> int:
    """A CLOCK_BOOTTIME reading in clock ticks: how /proc/<pid>/stat shows a process's start."""
    return int(boottime * CLOCK_TICKS)


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])  # field 22 counts from 1 with pid and comm as fields 1 and 2
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class SpawnRecord:
    exec_id: str
    pid: int
    start: int  # clock ticks since boot, at or just before the fork
    boot: str
    cgroup: str | None = None

    def line(self) -> bytes:
        return (json.dumps({"exec_id": self.exec_id, "pid": self.pid, "start": self.start, "boot": self.boot,
                            "cgroup": self.cgroup}, separators=(",", ":")) + "\n").encode()

    def is_alive(self, boot: str) -> bool:
        """Is this process still the one recorded (same boot, same pid, same start)?"""
        if self.boot != boot:
            return False
        started = start_ticks(self.pid)
        return started is not None and 0 <= started - self.start <= START_TICKS_SLACK


def read(state_dir: Path) -> list[SpawnRecord]:
    """Every well-formed record of the journal, oldest first (a torn last line is skipped)."""
    try:
        data = (state_dir / FILE_NAME).read_bytes()
    except OSError:
        return []
    records = []
    for line in data.splitlines():
        try:
            item = json.loads(line)
            records.append(SpawnRecord(str(item["exec_id"]), int(item["pid"]), int(item["start"]),
                                       str(item["boot"]), item.get("cgroup") or None))
        except (ValueError, KeyError, TypeError):
            continue
    return records


class SpawnJournal:
    """Appends a record per spawn; compacts to the live records now and then."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self.boot = boot_id()
        self.lines = 0
        self._fd: int | None = None
        self._failing = False

    def start(self, live: Iterable[SpawnRecord] = ()) -> None:
        """Begin a new journal holding only `live` (after the previous daemon's processes were dealt with)."""
        self.compact(live)

    def record(self, exec_id: str, pid: int, boottime: float, cgroup: str | None) -> None:
        self._append(SpawnRecord(exec_id, pid, ticks_of(boottime), self.boot, cgroup).line())
        self.lines += 1

    def due(self, live_count: int) -> bool:
        return self.lines > max(COMPACT_MIN_LINES, 4 * live_count)

    def compact(self, live: Iterable[SpawnRecord]) -> None:
        tmp = self.path.with_name(f".{FILE_NAME}.tmp")
        data = b"".join(record.line() for record in live)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            self._warn(exc)
            return
        self.close()
        self.lines = data.count(b"\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _append(self, line: bytes) -> None:
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                                   0o600)
            os.write(self._fd, line)
            self._failing = False
        except OSError as exc:
            # The cgroups and the farm mark in every environment still find the process.
            self._warn(exc)

    def _warn(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("cannot write the spawn journal %s: %s (processes are still found by %s)",
                        self.path, exc.strerror or exc, "their cgroup or farm mark")

