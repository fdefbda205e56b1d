"""Reading /proc: process trees, a process's environment and parent, our own children.

Every read the supervisor makes of another process's state, kept cheap (plain os.read, an
open children file re-read with pread, one /proc scan shared by every caller for a moment):
some of these run at every instance exit. `read_proc` serves any kernel pseudo-file (cgroupfs
too). Reads only: never signals, spawns or waits for a
process (that is osproc.py), never writes anything.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Collection, Iterable


def read_proc(path: str) -> bytes:
    """The whole of a /proc file. Plain os.read: a Python file object costs more than the
    read itself, and some of these files are read several times per instance restart."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_proc_head(path: str, size: int = 1024) -> bytes:
    """The start of a /proc file in one read (a stat line fits in 1 KiB)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


# getpid() is a system call (glibc caches nothing), and this runs at every instance exit.
_own_pid = os.getpid()


def _forked() -> None:
    global _own_pid
    _own_pid = os.getpid()
    for fd in _children_fds.values():
        os.close(fd)
    _children_fds.clear()  # they list the parent's children


os.register_at_fork(after_in_child=_forked)

# An open /proc/self/task/<tid>/children, re-read with pread: the path lookup of an open
# costs about as much as the read, and this runs at every instance exit.
_children_fds: dict[int, int] = {}
# A read of a seq_file stops short only at its end or when its buffer (at least a page) is
# full; a shorter answer than this is therefore the whole list, and the read that would
# return nothing (and walk the list once more) can be skipped.
_SEQ_COMPLETE_BELOW = 4096 - 64


def _read_children_file(tid: int) -> bytes:
    fd = _children_fds.get(tid)
    if fd is None:
        fd = _children_fds[tid] = os.open(f"/proc/self/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
    chunks = []
    offset = 0
    try:
        while chunk := os.pread(fd, 65536, offset):
            if not offset and len(chunk) < _SEQ_COMPLETE_BELOW:
                return chunk
            chunks.append(chunk)
            offset += len(chunk)
    except OSError:
        del _children_fds[tid]
        os.close(fd)
        raise
    return b"".join(chunks)


def adopted_children(known: Collection[int], on_main_list: int = 0) -> set[int]:
    """Our children not in known (pids we spawned and have not reaped): adopted orphans.

    The kernel hands an orphan to the first live thread of its subreaper, our main thread,
    while a spawned child is listed under the thread that spawned it. With the event loop on
    a thread of its own (see daemon.run), the main thread's list holds adopted orphans only,
    so this read, done at every instance exit, costs nothing per instance. With the loop on
    the main thread, the instances are on that list too and are left out by count first.
    on_main_list: how many of known the main thread lists even so (children carried over an
    in-place upgrade: execve leaves every child to the one thread that survives it).
    """
    try:
        data = _read_children_file(_own_pid)  # the main thread's id is the pid
    except OSError:
        return set()
    expected = len(known) if threading.current_thread() is threading.main_thread() else on_main_list
    if data.count(b" ") == expected:  # one "pid " per child: nothing but what we know
        return set()
    return set(map(int, data.split())).difference(known)


# How long to wait out an exec in progress: its new environment is set up within a millisecond.
EXEC_WINDOW_SECONDS = 0.005


def environ_value(pid: int, name: str) -> str | None:
    """One variable of a process's initial environment (None if gone, a zombie or unreadable).

    During an execve the environment reads as empty for a moment. A leftover that execs as its
    parent dies (a daemonizing executor) is caught in that window just when we look for it,
    so an empty answer from a live process is read again, for at most EXEC_WINDOW_SECONDS.
    """
    prefix = name.encode() + b"="
    deadline = time.monotonic() + EXEC_WINDOW_SECONDS
    while True:
        try:
            data = read_proc(f"/proc/{pid}/environ")
        except OSError:
            return None
        if data or time.monotonic() > deadline or _is_zombie(pid):
            break
        time.sleep(0.0002)
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def descends_from(pid: int, ancestor: int, max_depth: int = 64) -> bool:
    """True when ancestor is pid's parent, grandparent, ... (walks /proc/<pid>/stat)."""
    for _ in range(max_depth):
        try:
            stat = read_proc(f"/proc/{pid}/stat")
        except OSError:
            return False
        pid = int(stat[stat.rfind(b")") + 2:].split(None, 2)[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def _is_zombie(pid: int) -> bool:
    try:
        stat = read_proc(f"/proc/{pid}/stat")
    except OSError:
        return True  # gone: as final as a zombie
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] in (b"Z", b"X")


# One /proc scan serves every caller within this window: when a thousand instances reach
# their stop timeout together, each would otherwise scan all of /proc on the event loop.
PROC_SCAN_TTL = 0.02
_proc_scan: tuple[float, dict[int, list[int]]] = (-1.0, {})


def descendants(pids: Iterable[int]) -> set[int]:
    """Every living descendant of the given pids (one scan of /proc, shared for PROC_SCAN_TTL)."""
    global _proc_scan
    if time.monotonic() - _proc_scan[0] > PROC_SCAN_TTL:
        parent_of = _children_by_parent()
        _proc_scan = (time.monotonic(), parent_of)  # a scan can outlast the TTL: count from its end
    parent_of = _proc_scan[1]
    found: set[int] = set()
    stack = list(pids)
    while stack:
        for child in parent_of.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _children_by_parent() -> dict[int, list[int]]:
    parent_of: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = read_proc(f"/proc/{entry}/stat")
        except OSError:
            continue
        # The command name may hold spaces and parens: fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        parent_of.setdefault(int(fields[1]), []).append(int(entry))
    return parent_of


def is_running(pid: int, start_time: float | None) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (
            start_time is None or abs(process.create_time() - start_time) < 0.05
        )
    except psutil.Error:
        return False
