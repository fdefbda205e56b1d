"""Whole-tree RSS and CPU of every instance, from /proc, and max_memory.

An instance is a tree: PyInstaller's 2 MiB bootloader runs the real program as its child,
a model server forks workers. Its figures are the sums over the main process, every
descendant, and the leftovers carrying its ET_EXEC_ID that were re-parented to us.

One sample is one pass over /proc (each process's stat: parent, CPU ticks, RSS pages),
shared by every instance, so its cost does not depend on how many children anyone has.
Samples are taken only when some instance has max_memory (then at most every
SAMPLE_SECONDS, stretched so that sampling never costs more than MAX_SHARE of a core),
or when `status` asks and the last one is older than STATUS_FRESH_SECONDS.

Owns the figures; the instance decides what exceeding max_memory does (fail_health).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from ..supervise import procfs
from ..supervise.instance import Instance, State

log = logging.getLogger("exec_supervisor")

SAMPLE_SECONDS = 5.0
MAX_SHARE = 0.001  # of one core: a sample costing 10 ms is taken every 10 s at most
STATUS_FRESH_SECONDS = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Figures:
    rss: int  # bytes, whole tree
    cpu_ticks: int  # user + system, whole tree, live processes
    processes: int
    cpu_percent: float | None  # share of one core since the previous sample
    biggest: tuple[int, str, int] | None  # (pid, name, rss) of the largest process of the tree


class MemoryWatch:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.figures: dict[Instance, Figures] = {}
        self._taken_at = -1.0  # monotonic
        self._cost = 0.0  # seconds the last sample took
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        interval = max(SAMPLE_SECONDS, self._cost / MAX_SHARE)
        self._handle = asyncio.get_running_loop().call_later(interval, self._tick)

    def _tick(self) -> None:
        try:
            if any(executor.max_memory for executor in self.engine.config.executors.values()):
                self.sample()
                self._enforce()
        finally:
            self._schedule()

    def fresh(self) -> dict[Instance, Figures]:
        """Figures at most STATUS_FRESH_SECONDS old (for status: one pass serves every row)."""
        if time.monotonic() - self._taken_at > STATUS_FRESH_SECONDS:
            self.sample()
        return self.figures

    # ------------------------------------------------------------------ sampling

    def sample(self) -> None:
        began = time.monotonic()
        table = _process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        previous = self.figures
        figures: dict[Instance, Figures] = {}
        now = time.monotonic()
        for instance in self.engine.instances.values():
            main = instance.pid
            if main is None or main not in table:
                continue
            roots = [main, *self.engine.orphans_of(instance.spec.exec_id)]
            rss = ticks = count = 0
            biggest: tuple[int, str, int] | None = None
            seen: set[int] = set()
            while roots:
                pid = roots.pop()
                if pid in seen or pid not in table:
                    continue
                seen.add(pid)
                _, cpu, pages, name = table[pid]
                size = pages * _PAGE
                rss += size
                ticks += cpu
                count += 1
                if biggest is None or size > biggest[2]:
                    biggest = (pid, name, size)
                roots.extend(children.get(pid, ()))
            before = previous.get(instance)
            if before is not None and self._taken_at > 0 and now > self._taken_at:
                percent: float | None = 100.0 * max(0, ticks - before.cpu_ticks) / _TICKS / (now - self._taken_at)
            else:  # first sight: the average over this run so far
                percent = 100.0 * ticks / _TICKS / max(now - instance.started_at, 0.01)
            figures[instance] = Figures(rss, ticks, count, round(percent, 1), biggest)
        self.figures = figures
        self._taken_at = now
        self._cost = time.monotonic() - began

    def _enforce(self) -> None:
        for instance, figures in list(self.figures.items()):
            limit = instance.policy.max_memory
            if limit and figures.rss > limit and instance.state in (State.STARTING, State.RUNNING):
                detail: dict[str, Any] = {"rss": figures.rss, "limit": limit, "processes": figures.processes}
                if figures.biggest is not None:
                    pid, name, size = figures.biggest
                    detail["biggest"] = {"pid": pid, "name": name, "rss": size}
                instance.fail_health("memory", detail)


def _process_table() -> dict[int, tuple[int, int, int, str]]:
    """pid -> (parent pid, utime + stime ticks, RSS pages, name) of every process, from /proc/<pid>/stat."""
    table: dict[int, tuple[int, int, int, str]] = {}
    read = procfs.read_proc_head
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = read(f"/proc/{entry}/stat")
        except OSError:
            continue
        close = stat.rfind(b")")
        # Fields after the name (man 5 proc): state ppid ... utime(14) stime(15) ... rss(24)
        fields = stat[close + 2:].split(None, 23)
        try:
            table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]),
                                 stat[stat.find(b"(") + 1:close].decode(errors="replace"))
        except (IndexError, ValueError):
            continue
    return table
