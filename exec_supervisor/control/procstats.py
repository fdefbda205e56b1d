"""Per-process figures for status: CPU % and RSS of a pid, via psutil.

Owns only the psutil side of status (a cache of psutil.Process per pid). It must
not know about instances, the engine or HTTP: callers hand it pids.
"""

from __future__ import annotations

import time
from typing import Any


class ProcStats:
    """CPU % and RSS per pid via psutil, cheap enough for a 1000-instance status.

    psutil.Process objects are cached per pid (pid + create time identify a process);
    CPU % is the share of one CPU since the previous status call, or the lifetime
    average on the first sight of a process.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Any, float, float, float | None]] = {}

    def sample(self, pid: int) -> tuple[float | None, int | None]:
        import psutil

        now = time.monotonic()
        entry = self._seen.get(pid)
        try:
            process = entry[0] if entry else psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                rss = process.memory_info().rss
            cpu = times.user + times.system
            if entry is None:
                age = max(time.time() - process.create_time(), 0.01)
                percent: float | None = 100.0 * cpu / age
            else:
                _, last_cpu, last_time, last_percent = entry
                elapsed = now - last_time
                if elapsed < 0.2 and last_percent is not None:
                    self._seen[pid] = entry  # too soon for a fresh figure: keep the last one
                    return last_percent, rss
                percent = 100.0 * max(cpu - last_cpu, 0.0) / max(elapsed, 1e-3)
        except psutil.Error:
            self._seen.pop(pid, None)
            return None, None
        percent = round(percent, 1)
        self._seen[pid] = (process, cpu, now, percent)
        return percent, rss

    def prune(self, live: set[int]) -> None:
        for pid in [p for p in self._seen if p not in live]:
            del self._seen[pid]
