"""Finding, and stopping, the processes a dead daemon of this farm left running.

`discover()` answers "which processes of which instance are alive?" as {exec_id: [pids]},
from every source there is, most authoritative first:

1. the instance cgroups under the farm's cgroup (and any cgroup the journal recorded):
   the kernel's word, whatever the pid, session or environment;
2. the spawn journal (journal.py): main processes whose pid still has the recorded start time;
3. a /proc scan for the farm mark (ET_FARM=<farm id>, with ET_EXEC_ID) that every instance
   inherits: setsid'd children, double-forked daemons, children that closed their fds;
4. then, for what was found: the members of each recorded main process's session and group
   (a main process leads both) and every descendant, whatever their environment.

What the process mode cannot find: a process that left the instance's session and group,
cleared its environment and whose parent chain no longer leads to a found process (a
double-forked daemon started with an empty environment). Only a cgroup holds that one.

`stop()` signals what was found (the type's stop signal), waits on pidfds (no polling),
then SIGKILLs the rest and `cgroup.kill`s the instance cgroups. Today's daemon stops them all
before starting its own instances; an adopting caller can use discover() alone.
Reads /proc and cgroup files; never touches the engine's instances.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from pathlib import Path
from typing import Collection, Iterable, Mapping

from . import containment, journal, procfs

log = logging.getLogger("exec_supervisor")

KILL_WAIT_SECONDS = 5.0  # after SIGKILL: time for the kernel to take them down (D state aside)


def discover(state_dir: Path, farm: str, farm_cgroups: Iterable[str] = (),
             exclude: Collection[int] = ()) -> dict[str, list[int]]:
    """Every live process of this farm: {exec_id: sorted pids} (see the module docstring)."""
    me = os.getpid()
    skip = set(exclude) | {me}
    owner: dict[int, str] = {}
    records = journal.read(state_dir)
    dirs = set(farm_cgroups) | {os.path.dirname(r.cgroup) for r in records if r.cgroup}
    for farm_dir in sorted(dirs):
        try:
            names = os.listdir(farm_dir)
        except OSError:
            continue
        for name in names:
            if name.startswith(containment.INSTANCE_PREFIX):
                for pid in containment.pids_in(f"{farm_dir}/{name}"):
                    owner.setdefault(pid, name)
    boot = journal.boot_id()
    leaders: dict[int, tuple[str, int]] = {}  # recorded main pid -> (exec id, start ticks)
    for record in records:
        if record.boot != boot:
            continue
        leaders[record.pid] = (record.exec_id, record.start)
        if record.pid not in owner and record.is_alive(boot):
            owner[record.pid] = record.exec_id
    table = _process_table()
    mark = f"{containment.FARM_ENV}={farm}".encode()
    for pid in table:
        if pid not in owner and pid not in skip:
            exec_id = _marked_exec_id(pid, mark)
            if exec_id:
                owner[pid] = exec_id
    # A main process leads its session and group: their members are its own, even after it
    # died, if they started after it (a reused pid of another session started before).
    for pid, (_ppid, pgid, sid, started) in table.items():
        if pid in owner:
            continue
        for leader in (sid, pgid):
            known = leaders.get(leader)
            if known is not None and started >= known[1]:
                owner[pid] = known[0]
                break
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(owner)
    while stack:
        parent = stack.pop()
        for child in children.get(parent, ()):
            if child not in owner:
                owner[child] = owner[parent]
                stack.append(child)
    found: dict[str, list[int]] = {}
    for pid, exec_id in owner.items():
        if pid not in skip and pid in table:
            found.setdefault(exec_id, []).append(pid)
    return {exec_id: sorted(pids) for exec_id, pids in sorted(found.items())}


def _process_table() -> dict[int, tuple[int, int, int, int]]:
    """pid -> (ppid, pgid, sid, start ticks) of every live, non-zombie process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = procfs.read_proc(f"/proc/{entry}/stat")
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            continue
        table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    return table


def _marked_exec_id(pid: int, mark: bytes) -> str | None:
    try:
        items = procfs.read_proc(f"/proc/{pid}/environ").split(b"\0")
    except OSError:
        return None
    if mark not in items:
        return None
    for item in items:
        if item.startswith(b"ET_EXEC_ID="):
            return item[11:].decode(errors="replace") or None
    return None


def stop(found: Mapping[str, list[int]], stop_signals: Mapping[str, int], timeout: float,
         cgroups: Iterable[str] = ()) -> int:
    """Stop every found process: its type's stop signal, SIGKILL after timeout. Returns how many."""
    pidfds: dict[int, int] = {}
    for exec_id, pids in found.items():
        sig = stop_signals.get(exec_id, signal.SIGTERM)
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue  # gone already
            pidfds[fd] = pid
            try:
                signal.pidfd_send_signal(fd, sig)
            except OSError:
                pass
    try:
        left = _wait_gone(pidfds, timeout)
        if left:
            for fd in left:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
        for path in cgroups:
            if containment.populated(path):
                containment.kill(path)
        left = _wait_gone(left, KILL_WAIT_SECONDS)
        if left:
            log.error("could not stop processes of a previous exec-supervisor: %s", sorted(left.values())[:10])
    finally:
        for fd in pidfds:
            os.close(fd)
    return len(pidfds)


def _wait_gone(pidfds: Mapping[int, int], timeout: float) -> dict[int, int]:
    """Wait until each pidfd's process has exited (a pidfd turns readable); returns those still alive."""
    left = dict(pidfds)
    deadline = time.monotonic() + timeout
    poller = select.poll()
    for fd in left:
        poller.register(fd, select.POLLIN)
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _events in poller.poll(remaining * 1000):
            poller.unregister(fd)
            left.pop(fd, None)
    return left
