"""CPU time and resident memory of each instance, read when someone looks (a scrape, the page).

With the health extension running, the figures are its whole-tree ones (health/memory.py:
one /proc pass for every instance, main process plus descendants and leftovers, at most
once a second whoever asks: status, a scrape, the page). Without it, one read of
/proc/<pid>/stat per live main process; a sample younger than MIN_AGE is reused, so several
scrapers and open pages cost no more /proc reads than one. Nothing here runs unless
asked: an idle farm nobody watches reads nothing. It only reads; it never signals or
changes a process.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable

from ..supervise import procfs

MIN_AGE = 1.0  # seconds a sample is reused for
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Sample:
    __slots__ = ("pid", "cpu", "rss", "at", "percent")

    def __init__(self, pid: int, cpu: float, rss: int, at: float, percent: float | None) -> None:
        self.pid = pid
        self.cpu = cpu  # seconds of CPU, user + system, of the main process
        self.rss = rss  # bytes
        self.at = at  # time.monotonic() of the read
        self.percent = percent  # share of one CPU since the sample before, None on the first


def read_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of pid, or None when it is gone."""
    try:
        data = procfs.read_proc(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and ')': the fields after the last ')' are fixed.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        utime, stime, rss_pages = int(fields[11]), int(fields[12]), int(fields[21])
    except (IndexError, ValueError):
        return None
    return (utime + stime) / _TICKS, rss_pages * _PAGE


class UsageSampler:
    """Per-pid samples, refreshed at most once per MIN_AGE; or the health extension's whole-tree figures."""

    def __init__(self) -> None:
        self._samples: dict[int, Sample] = {}

    @staticmethod
    def trees(engine: Any) -> dict[Any, Any] | None:
        """The health extension's whole-tree figures per instance (fresh within 1 s), or None without it."""
        health = getattr(engine, "health", None)
        memory = getattr(health, "memory", None) if health is not None else None
        return memory.fresh() if memory is not None else None

    def of(self, instance: Any, trees: dict[Any, Any] | None, now: float) -> tuple[float, int, float | None] | None:
        """(CPU seconds, RSS bytes, CPU % or None) of an instance: its whole tree when trees is given."""
        if trees is not None:
            figures = trees.get(instance)
            if figures is None:
                return None
            return figures.cpu_ticks / _TICKS, figures.rss, figures.cpu_percent
        if instance.pid is None:
            return None
        sample = self.get(instance.pid, now)
        return None if sample is None else (sample.cpu, sample.rss, sample.percent)

    def get(self, pid: int, now: float | None = None) -> Sample | None:
        now = time.monotonic() if now is None else now
        last = self._samples.get(pid)
        if last is not None and now - last.at < MIN_AGE:
            return last
        read = read_stat(pid)
        if read is None:
            self._samples.pop(pid, None)
            return None
        cpu, rss = read
        percent = None
        if last is not None:
            percent = round(100.0 * max(cpu - last.cpu, 0.0) / max(now - last.at, 1e-3), 1)
        sample = self._samples[pid] = Sample(pid, cpu, rss, now, percent)
        return sample

    def prune(self, live: Iterable[int]) -> None:
        keep = set(live)
        for pid in [p for p in self._samples if p not in keep]:
            del self._samples[pid]
