"""Exits of processes that are not our children, seen at once: one pidfd per process on the loop.

An executor adopted after a daemon death was re-parented to init (or an outer subreaper):
no SIGCHLD reaches us and waitpid cannot reap it. pidfd_open(2) gives a descriptor that turns
readable when the process exits; the loop watches it like any socket, so there is no polling.
The exit status stays unknown (only the parent can read it). Owns the descriptors only; the
engine decides what an exit means.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable

from . import procid


class PidWatch:
    def __init__(self, on_exit: Callable[[Any, int], None]) -> None:
        """on_exit(owner, pid) runs on the loop when a watched process has exited."""
        self._on_exit = on_exit
        self._fds: dict[int, int] = {}  # pid -> its pidfd

    def watch(self, owner: Any, pid: int, start_ticks: int | None) -> bool:
        """False when the process is already gone, or its pid now names another process."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        if start_ticks is not None and procid.start_ticks(pid) != start_ticks:
            os.close(fd)  # the pid was reused before the pidfd pinned the process
            return False
        self._fds[pid] = fd
        asyncio.get_running_loop().add_reader(fd, self._exited, owner, pid)
        return True

    def _exited(self, owner: Any, pid: int) -> None:
        fd = self._fds.pop(pid)
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        self._on_exit(owner, pid)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        for fd in self._fds.values():
            loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()
