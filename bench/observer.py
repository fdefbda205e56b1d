"""Watch process lifecycles from outside every supervisor, with kernel timestamps.

The Linux proc connector (netlink) reports every fork, exec and exit on the
machine with a CLOCK_MONOTONIC timestamp taken by the kernel. That gives
spawn/restart/stop times that do not depend on how often we poll, and it never
asks a supervisor what it thinks it did. It needs root (CAP_NET_ADMIN); this
benchmark runs as root on the project's machines.

We track only descendants of the harness process itself: every supervisor is
forked by the harness, so registering the harness as the root *before* any
fork means no child can be missed by a race. Each process is filed under its
"top": the harness's direct child it descends from, i.e. its supervisor.
Counts are kept incrementally so that waiting for "N alive" costs O(1) per
event: the harness shares the 2 cores with what it measures. An "instance" is a tracked
process whose exec'd command line starts with the argv we told the supervisor
to run; its own children (e.g. `sleep` under the churn script) are not.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
SO_RCVBUFFORCE = 33

PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000

_NLMSG_HDR = struct.Struct("=IHHII")       # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")         # idx, val, seq, ack, len, flags
_EV_HDR = struct.Struct("=IIQ")            # what, cpu, timestamp_ns
_FORK = struct.Struct("=IIII")             # parent pid/tgid, child pid/tgid
_EXEC = struct.Struct("=II")               # pid, tgid
_EXIT = struct.Struct("=IIII")             # pid, tgid, exit_code, exit_signal
_NLMSG_DONE = 3


class ObserverUnavailable(RuntimeError):
    """The proc connector cannot be used (not root, or no CONFIG_PROC_EVENTS)."""


def now_ns() -> int:
    """Same clock as the kernel's proc-connector timestamps (ktime_get_ns)."""
    return time.monotonic_ns()


def read_cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


@dataclass
class Proc:
    pid: int
    ppid: int
    fork_ns: int
    exec_ns: int | None = None
    exit_ns: int | None = None
    cmdline: list[str] | None = None
    top: int = 0                    # the harness's direct child this process descends from
    instance: bool = False          # exec'd the instance argv (see Observer.matchers)
    instance_child: bool = False    # below an instance: not supervisor overhead, not an instance


@dataclass
class Waiter:
    predicate: Callable[[], bool]
    event: threading.Event = field(default_factory=threading.Event)


class Observer:
    """Process table of the harness's descendants, fed by the proc connector."""

    def __init__(self) -> None:
        self.root = os.getpid()
        self.procs: dict[int, Proc] = {self.root: Proc(self.root, os.getppid(), 0)}
        # argv prefixes that make an exec'd process an instance
        self.matchers: list[list[str]] = []
        self.lock = threading.Lock()
        self.lost_events = 0
        self.alive: dict[int, set[int]] = {}     # top -> live instance pids
        self.execs: dict[int, list[int]] = {}    # top -> exec timestamps of its instances
        self.nlive: dict[int, int] = {}          # top -> live processes in its tree
        self._waiters: list[Waiter] = []
        self._stop = False
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as e:  # pragma: no cover - depends on the kernel
            raise ObserverUnavailable(f"netlink connector socket: {e}") from e
        try:
            # A 1000-process burst is ~3000 events; a big buffer keeps the kernel from dropping them
            # while this (Python) reader is briefly descheduled.
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        try:
            self.sock.bind((0, CN_IDX_PROC))
            self._send_op(PROC_CN_MCAST_LISTEN)
        except OSError as e:
            self.sock.close()
            raise ObserverUnavailable(
                f"proc connector needs root/CAP_NET_ADMIN and CONFIG_PROC_EVENTS: {e}") from e
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, name="proc-connector", daemon=True)
        self.thread.start()
        # Make sure the kernel is actually delivering to us before anything is measured.
        probe = os.posix_spawn("/bin/true", ["/bin/true"], os.environ)
        os.waitpid(probe, 0)
        if not self.wait_for(lambda: probe in self.procs and self.procs[probe].exit_ns is not None, 5):
            self.close()
            raise ObserverUnavailable("proc connector delivered no events")

    # ------------------------------------------------------------------ netlink

    def _send_op(self, op: int) -> None:
        payload = struct.pack("=I", op)
        cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        msg = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(cn), _NLMSG_DONE, 0, 0, os.getpid()) + cn
        self.sock.send(msg)

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped events: say so in the results
                    self.lost_events += 1
                    continue
                if self._stop:
                    return
                raise
            off = 0
            while off + _NLMSG_HDR.size <= len(data):
                length = _NLMSG_HDR.unpack_from(data, off)[0]
                if length < _NLMSG_HDR.size:
                    break
                self._handle(data, off + _NLMSG_HDR.size + _CN_MSG.size)
                off += (length + 3) & ~3

    def _handle(self, data: bytes, off: int) -> None:
        if off + _EV_HDR.size > len(data):
            return
        what, _cpu, ts = _EV_HDR.unpack_from(data, off)
        body = off + _EV_HDR.size
        if what == PROC_EVENT_FORK:
            _ppid, ptgid, cpid, ctgid = _FORK.unpack_from(data, body)
            if cpid != ctgid:  # a new thread, not a process
                return
            with self.lock:
                parent = self.procs.get(ptgid)
                if parent is None:
                    return
                top = ctgid if ptgid == self.root else parent.top
                old = self.procs.get(ctgid)
                if old is not None and old.exit_ns is None:  # pid reused before we saw the exit
                    self.nlive[old.top] = self.nlive.get(old.top, 1) - 1
                self.procs[ctgid] = Proc(ctgid, ptgid, ts, top=top,
                                         instance_child=parent.instance or parent.instance_child)
                self.nlive[top] = self.nlive.get(top, 0) + 1
        elif what == PROC_EVENT_EXEC:
            _pid, tgid = _EXEC.unpack_from(data, body)
            p = self.procs.get(tgid)
            if p is None or p.instance or p.instance_child:
                return
            # Read the new image's argv now, while the process surely still runs it.
            cmd = read_cmdline(tgid)
            with self.lock:
                p.exec_ns = ts
                p.cmdline = cmd
                if cmd is not None and any(cmd[:len(m)] == m for m in self.matchers):
                    p.instance = True
                    self.alive.setdefault(p.top, set()).add(tgid)
                    self.execs.setdefault(p.top, []).append(ts)
        elif what == PROC_EVENT_EXIT:
            pid, tgid, _code, _sig = _EXIT.unpack_from(data, body)
            if pid != tgid:
                return
            with self.lock:
                p = self.procs.get(tgid)
                if p is None or p.exit_ns is not None:
                    return
                p.exit_ns = ts
                self.nlive[p.top] = self.nlive.get(p.top, 1) - 1
                if p.instance:
                    self.alive.get(p.top, set()).discard(tgid)
        else:
            return
        if self._waiters:
            self._poke()

    def _poke(self) -> None:
        for w in tuple(self._waiters):
            try:
                if w.predicate():
                    w.event.set()
            except Exception:  # a predicate racing a table change; it is re-evaluated next event
                pass

    # ------------------------------------------------------------------ queries

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until predicate() holds (re-checked on every process event)."""
        w = Waiter(predicate)
        self._waiters.append(w)
        try:
            if predicate():
                return True
            deadline = time.monotonic() + timeout
            while not w.event.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return predicate()
                # wake now and then anyway: exits of untracked pids do not poke us
                w.event.wait(min(left, 0.05))
                if predicate():
                    return True
            return True
        finally:
            self._waiters.remove(w)

    def instances(self, top: int) -> list[Proc]:
        with self.lock:
            return [self.procs[pid] for pid in self.alive.get(top, ())]

    def alive_pids(self, top: int) -> set[int]:
        with self.lock:
            return set(self.alive.get(top, ()))

    def alive_count(self, top: int) -> int:
        return len(self.alive.get(top, ()))

    def helpers(self, top: int) -> list[Proc]:
        """Live non-instance processes of a supervisor (itself included): its own overhead."""
        with self.lock:
            return [p for p in self.procs.values()
                    if p.top == top and p.exit_ns is None and not p.instance
                    and not p.instance_child]

    def live(self, top: int) -> list[Proc]:
        """Every live process of a supervisor's tree (supervisor, helpers, instances, their children)."""
        with self.lock:
            return [p for p in self.procs.values() if p.top == top and p.exit_ns is None]

    def exec_times(self, top: int, since_ns: int = 0) -> list[int]:
        with self.lock:
            return sorted(t for t in self.execs.get(top, ()) if t >= since_ns)

    def live_count(self, top: int) -> int:
        """Live processes of a supervisor's whole tree, the supervisor included."""
        return self.nlive.get(top, 0)

    def last_exit_ns(self, top: int) -> int | None:
        with self.lock:
            times = [p.exit_ns for p in self.procs.values() if p.top == top and p.exit_ns is not None]
        return max(times) if times else None

    def exec_count(self, top: int) -> int:
        return len(self.execs.get(top, ()))

    def forget(self, top: int) -> None:
        """Drop a finished supervisor's tree so long runs do not grow the table."""
        with self.lock:
            for pid in [pid for pid, p in self.procs.items() if p.top == top and p.exit_ns is not None]:
                del self.procs[pid]
            self.alive.pop(top, None)
            self.execs.pop(top, None)
            self.nlive.pop(top, None)

    def close(self) -> None:
        self._stop = True
        try:
            self._send_op(PROC_CN_MCAST_IGNORE)
        except OSError:
            pass
        self.thread.join(1)
        self.sock.close()
