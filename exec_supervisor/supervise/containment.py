"""Containment: which processes belong to an instance, by the kernel's word where it can say so.

`supervisor.containment` picks one of two modes (`auto`, the default, takes cgroup when it can):

- **cgroup** (cgroup v2, root or a delegated cgroup such as systemd's `Delegate=yes`): each
  instance runs in a cgroup of its own, `<farm cgroup>/ET-<Name>-<id>`, from its first
  instruction. A process cannot leave it by setsid, double fork or a clean environment;
  "what is left of an instance" is whatever is still in its cgroup (`cgroup.events`
  `populated`, watched with inotify, never polled); a stop ends with `cgroup.kill`; CPU and
  memory of the whole instance come from `cpu.stat` and `memory.current`.
- **process** (no cgroup v2, or no right to create cgroups): process groups, the subreaper
  and the ET_EXEC_ID / ET_FARM marks in every instance's environment (instance.py, engine.py,
  discovery.py). It cannot attribute a process that both leaves the instance's session and
  clears its environment, except while its parent chain still leads to the instance.

Where the farm cgroup goes: under the daemon's own cgroup when that is delegated to it (systemd
marks it with a `trusted.delegate`/`user.delegate` xattr; the daemon then moves itself into a
`supervisor` leaf, since cgroup v2 allows processes only in leaves once controllers are enabled
below), else `<cgroup2 mount>/exec-supervisor/farm-<id>` (root only). The id comes from the
state_dir's real path, so the next daemon of the same farm finds the same cgroups.

Spawning into a cgroup without a window: `clone3(CLONE_INTO_CGROUP)` is not reachable from
Python (and glibc's posix_spawn gained a cgroup attribute only in 2.41), so the daemon moves
*itself* into the instance's cgroup, calls posix_spawn (the child is born there, before any
of its code runs), and moves back. Measured on the 2-core machine: a pair of moves costs
13 us, a spawn about 600 us. The alternatives cost more or leave a window: a `/bin/sh` shim
that moves itself then execs +0.5 ms per spawn (a second exec), fork+exec in Python with the
move in the child +3 ms (page tables of a 40 MiB process), writing the child's pid after the
spawn leaves the child running outside for a moment. The daemon spends those microseconds in
the instance's cgroup: its CPU time then (a few us) counts to the instance. If the daemon's
home cgroup vanished meanwhile, it moves into `<farm cgroup>/supervisor` instead; it never
stays in an instance's cgroup, which a later `cgroup.kill` would end.

The price of any move into a cgroup (this one, or one made by the child itself): the kernel's
cgroup_threadgroup_rwsem, taken for writing, waits for an RCU grace period when no move
happened in the last few milliseconds. Measured here: 7-14 ms for a move after 50 ms of quiet,
8-30 us for moves in a burst (start-up, a scale-up, a crash storm). So a lone restart costs the
daemon's loop one grace period. A cgroup2 mount with `favordynmods` (Linux 6.0+) makes every
move cheap; `clone3(CLONE_INTO_CGROUP)` would avoid the move altogether.

This module owns the cgroup files and the inotify watch; it never signals a process group
or reads an environment (osproc and procfs do), and knows nothing of instances.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any

from ..digests import sha256_hex
from . import osproc, procfs

log = logging.getLogger("exec_supervisor")

FARM_ENV = "ET_FARM"
INSTANCE_PREFIX = "ET-"
HOME_LEAF = "supervisor"
CONTAINER_NAME = "exec-supervisor"
_IN_MODIFY, _IN_IGNORED = 0x2, 0x8000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_EVENT = struct.Struct("iIII")


class CgroupUnavailable(Exception):
    """Why this daemon cannot contain instances in cgroups (one line for the operator)."""


def farm_id(state_dir: Path) -> str:
    """A stable id of the farm: every daemon on the same state_dir gets the same one."""
    return sha256_hex(os.path.realpath(state_dir).encode(), 16)


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (pure v2: /sys/fs/cgroup; hybrid: .../unified)."""
    try:
        data = procfs.read_proc("/proc/self/mountinfo").decode(errors="replace")
    except OSError:
        return None
    found = []
    for line in data.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if right.split(" ", 1)[0] == "cgroup2" and len(fields) > 4 and fields[3] == "/":
            # mountinfo escapes space, tab, newline and backslash as octal
            found.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in found:
            return preferred
    return found[0] if found else None


def cgroup_of(pid: int | str = "self") -> str | None:
    """The cgroup v2 path of a process, relative to the hierarchy's root ('/' for the root)."""
    try:
        data = procfs.read_proc(f"/proc/{pid}/cgroup")
    except OSError:
        return None
    for line in data.splitlines():
        if line.startswith(b"0::"):
            return line[3:].decode(errors="replace")
    return None


def _delegated(path: str) -> bool:
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name).strip() in (b"1", b"yes", b"true"):
                return True
        except OSError:
            continue
    return False


def placement(farm: str) -> tuple[str, str | None]:
    """(farm cgroup directory, the leaf the daemon must move into first or None)."""
    mount = cgroup2_mount()
    if mount is None:
        raise CgroupUnavailable("no cgroup v2 hierarchy is mounted")
    own = cgroup_of()
    if own is None:
        raise CgroupUnavailable("this process is in no cgroup v2")
    own_dir = mount + own.rstrip("/")
    if os.path.basename(own_dir) == HOME_LEAF and _delegated(os.path.dirname(own_dir)):
        own_dir = os.path.dirname(own_dir)  # a daemon re-executed in place: already in its leaf
    if own != "/" and _delegated(own_dir):
        return f"{own_dir}/farm-{farm}", f"{own_dir}/{HOME_LEAF}"
    return f"{mount}/{CONTAINER_NAME}/farm-{farm}", None


def cgroup_support() -> str | None:
    """None when this process can contain instances in cgroups, else why not."""
    try:
        farm_dir, _ = placement("probe")
        probe = f"{os.path.dirname(farm_dir)}/probe-{os.getpid()}"
        os.makedirs(probe, exist_ok=True)
        try:
            if not os.path.exists(f"{probe}/cgroup.kill"):
                return "the kernel has no cgroup.kill (Linux 5.14 or later)"
        finally:
            os.rmdir(probe)
    except CgroupUnavailable as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot create cgroups: {exc.strerror}"
    return None


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def pids_in(path: str) -> list[int]:
    """The processes in a cgroup (empty when it is gone)."""
    try:
        return [int(pid) for pid in procfs.read_proc(f"{path}/cgroup.procs").split()]
    except OSError:
        return []


def populated(path: str) -> bool:
    """Is any process in this cgroup or below it? (False when it is gone.)"""
    try:
        return b"populated 1" in procfs.read_proc(f"{path}/cgroup.events")
    except OSError:
        return False


def kill(path: str) -> None:
    """SIGKILL every process in the cgroup and below, atomically (forks in progress included)."""
    try:
        _write(f"{path}/cgroup.kill", b"1")
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot kill cgroup %s: %s", path, exc.strerror)


def usage(path: str) -> dict[str, Any] | None:
    """CPU seconds and memory bytes of every process in the cgroup, now and past (None if gone).

    `cpu_seconds` counts exited processes too (cpu.stat usage_usec); `memory` is
    memory.current, None where the memory controller is not enabled for the cgroup.
    """
    try:
        stat = procfs.read_proc(f"{path}/cpu.stat")
    except OSError:
        return None
    cpu = 0.0
    for line in stat.splitlines():
        if line.startswith(b"usage_usec "):
            cpu = int(line.split()[1]) / 1e6
            break
    try:
        memory: int | None = int(procfs.read_proc(f"{path}/memory.current"))
    except (OSError, ValueError):
        memory = None
    return {"cpu_seconds": cpu, "memory": memory, "pids": len(pids_in(path))}


class Cgroups:
    """The farm's cgroups: create, spawn into, signal, kill, watch and remove them."""

    def __init__(self, farm_dir: str, home_fd: int) -> None:
        self.farm_dir = farm_dir
        self._home_fd = home_fd  # our own cgroup.procs: where the daemon returns after each spawn
        self._made: set[str] = set()
        self.watch = EmptyWatch()

    @classmethod
    def create(cls, farm: str) -> "Cgroups":
        farm_dir, leaf = placement(farm)
        try:
            if leaf is not None:
                os.makedirs(leaf, exist_ok=True)
                _write(f"{leaf}/cgroup.procs", b"0")
            os.makedirs(farm_dir, exist_ok=True)
            if not os.path.exists(f"{farm_dir}/cgroup.kill"):
                raise CgroupUnavailable("the kernel has no cgroup.kill (Linux 5.14 or later)")
            _enable_memory(os.path.dirname(farm_dir))
            _enable_memory(farm_dir)
            home = f"{cgroup2_mount()}{(cgroup_of() or '/').rstrip('/')}"  # the leaf, if we just moved
            home_fd = os.open(f"{home}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise CgroupUnavailable(f"cannot create cgroup {farm_dir}: {exc.strerror}") from None
        return cls(farm_dir, home_fd)

    def path_of(self, exec_id: str) -> str:
        return f"{self.farm_dir}/{exec_id}"

    def spawn(self, exec_id: str, argv: tuple[str, ...], env: Any, cwd: str, log_fd: int | None) -> tuple[int, str]:
        """posix_spawn into the instance's cgroup (see the module docstring); returns (pid, cgroup)."""
        path = self.path_of(exec_id)
        if path not in self._made:
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            self._made.add(path)
        _write(f"{path}/cgroup.procs", b"0")
        try:
            return osproc.spawn(argv, env, cwd, log_fd), path
        finally:
            self._go_home()

    def _go_home(self) -> None:
        try:
            os.write(self._home_fd, b"0")
            return
        except OSError as exc:
            log.error("cannot move back to the daemon's cgroup (%s); moving to %s/%s",
                      exc.strerror, self.farm_dir, HOME_LEAF)
        leaf = f"{self.farm_dir}/{HOME_LEAF}"
        os.makedirs(leaf, exist_ok=True)
        fd = os.open(f"{leaf}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, b"0")
        os.close(self._home_fd)
        self._home_fd = fd

    def signal(self, path: str, sig: int) -> int:
        """Send sig to every process in the cgroup; returns how many were signalled."""
        me = os.getpid()
        sent = 0
        for pid in pids_in(path):
            if pid != me and osproc.signal_pid(pid, sig):
                sent += 1
        return sent

    def kill(self, path: str) -> None:
        kill(path)

    def remove(self, path: str) -> bool:
        """Remove an empty instance cgroup; False if something still runs in it."""
        self._made.discard(path)
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True

    def instance_dirs(self) -> list[str]:
        try:
            names = os.listdir(self.farm_dir)
        except OSError:
            return []
        return [f"{self.farm_dir}/{name}" for name in names if name.startswith(INSTANCE_PREFIX)]

    def close(self) -> None:
        """Remove every empty instance cgroup and the farm's (at the daemon's end)."""
        self.watch.close()
        for path in self.instance_dirs():
            if not self.remove(path):
                log.error("cgroup %s still holds processes %s", path, pids_in(path)[:10])
        try:
            os.rmdir(self.farm_dir)
        except OSError:
            pass


def _enable_memory(path: str) -> None:
    # memory.current per instance; best effort (hybrid hosts keep memory on v1, a parent may not offer it).
    try:
        if b"memory" in procfs.read_proc(f"{path}/cgroup.controllers").split():
            _write(f"{path}/cgroup.subtree_control", b"+memory")
    except OSError:
        pass


class EmptyWatch:
    """Wait for cgroups to empty: inotify on cgroup.events (the kernel signals each change)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._users: dict[int, int] = {}  # waiters per watch: the same file gives the same watch
        self._libc = ctypes.CDLL(None, use_errno=True)

    async def wait_empty(self, path: str, timeout: float | None) -> bool:
        """True once nothing runs in the cgroup; False if still populated after timeout seconds."""
        loop = asyncio.get_running_loop()
        fd = self._open(loop)
        wd = self._libc.inotify_add_watch(fd, f"{path}/cgroup.events".encode(), _IN_MODIFY)
        if wd < 0:
            return not populated(path)
        self._users[wd] = self._users.get(wd, 0) + 1
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while populated(path):  # read after the watch is in place: no change goes unseen
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return False
                future = loop.create_future()
                self._waiters.setdefault(wd, []).append(future)
                try:
                    await asyncio.wait_for(future, remaining)
                except asyncio.TimeoutError:
                    return not populated(path)
            return True
        finally:
            self._users[wd] -= 1
            if not self._users[wd]:
                del self._users[wd]
                self._waiters.pop(wd, None)
                self._libc.inotify_rm_watch(fd, wd)

    def _open(self, loop: asyncio.AbstractEventLoop) -> int:
        if self._fd is None:
            fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            self._fd, self._loop = fd, loop
            loop.add_reader(fd, self._on_events)
        return self._fd

    def _on_events(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        at = 0
        woken: set[int] = set()
        while at + _EVENT.size <= len(data):
            wd, _mask, _cookie, length = _EVENT.unpack_from(data, at)
            at += _EVENT.size + length
            woken.add(wd)
        for wd in woken:
            for future in self._waiters.pop(wd, ()):
                if not future.done():
                    future.set_result(None)

    def close(self) -> None:
        if self._fd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


def choose(mode: str, farm: str) -> Cgroups | None:
    """Cgroups for mode cgroup (or raise CgroupUnavailable), None for process, the best for auto."""
    if mode == "process":
        return None
    try:
        return Cgroups.create(farm)
    except CgroupUnavailable as exc:
        if mode == "cgroup":
            raise
        log.info("containment: process groups and environment marks (no cgroups: %s)", exc)
        return None

