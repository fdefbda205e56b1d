"""How an instance stops: the stop signal, SIGKILL at stop_timeout, and what its run left behind.

A mixin of Instance (instance.py keeps the state machine readable). `_begin_stop` signals
the process group (and the cgroup) and sets the escalation deadline; `_kill_now` escalates;
after the main process is reaped, `_start_cleanup` ends whatever is left (with a cgroup:
whatever is still in it, watched through cgroup.events and ended by cgroup.kill; without:
the process group and orphans that carry the instance's ET_EXEC_ID), then hands back to the
state machine's `_after_cleanup`. Changes no state but STOPPING; decides no restart.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

from . import containment, osproc, procfs
from .states import State

if TYPE_CHECKING:
    from .instance import Instance


class Stopping:
    __slots__ = ()  # the fields are Instance's: no per-object __dict__

    def _begin_stop(self: "Instance", sig: int | None = None, reason: str | None = None) -> None:
        """Signal the group (stop_signal, or sig: SIGABRT for a missed watchdog), SIGKILL after stop_timeout."""
        sig = sig or self.policy.stop_signal
        self._cancel_timer()
        self._set_state(State.STOPPING, reason or ("restart requested" if self.want_running else "stop requested"))
        self._stop_deadline = time.monotonic() + self.policy.stop_timeout
        self._emit("stopping", pid=self.pid, detail={"signal": osproc.signal_name(sig)})
        assert self.pid is not None
        osproc.signal_group(self.pid, sig)
        if self.cgroup is not None and self.host.cgroups is not None and sig == self.policy.stop_signal:
            self.host.cgroups.signal(self.cgroup, sig)  # also those that left the group
        # The main process may ignore the signal: escalate at the deadline even if it never exits.
        self._timer = asyncio.get_running_loop().call_later(self.policy.stop_timeout, self._kill_now)

    def _kill_now(self: "Instance") -> None:
        self._timer = None
        if self.state is State.STOPPING and self.pid is not None:
            self._killed = True
            if self.cgroup is not None and self.host.cgroups is not None:
                self.host.cgroups.kill(self.cgroup)
                return
            pids = {self.pid} | procfs.descendants([self.pid]) | self.host.orphans_of(self.spec.exec_id)
            osproc.signal_group(self.pid, signal.SIGKILL)
            for pid in pids:
                osproc.signal_pid(pid, signal.SIGKILL)

    def _start_cleanup(self: "Instance", deadline: float, sig: int) -> None:
        """Stop what the main process left behind (its cgroup, or its group and orphans with our
        exec id), then move on."""
        if self.cgroup is not None and self.host.cgroups is not None:
            if not containment.populated(self.cgroup):
                self._after_cleanup(self._killed)  # the common case: nothing left, no task needed
            else:
                self._cleanup = asyncio.get_running_loop().create_task(
                    self._clean_cgroup(self.host.cgroups, self.cgroup, deadline, sig))
            return
        if not osproc.group_alive(self._pgid) and not self.host.orphans_of(self.spec.exec_id):
            self._after_cleanup(self._killed)  # the common case: nothing left, no task needed
            return
        self._cleanup = asyncio.get_running_loop().create_task(self._clean_leftovers(deadline, sig))

    async def _clean_leftovers(self: "Instance", deadline: float, sig: int) -> None:
        killed = self._killed
        try:
            pgid = self._pgid
            signalled: set[int] = set()
            group_signalled = False
            pause = 0.002
            while True:
                group = osproc.group_alive(pgid)
                orphans = self.host.orphans_of(self.spec.exec_id)
                if not group and not orphans:
                    break
                if time.monotonic() >= deadline:
                    if sig != signal.SIGKILL:
                        sig, signalled, group_signalled, killed = signal.SIGKILL, set(), False, True
                        orphans |= procfs.descendants(orphans)
                if group and not group_signalled:
                    osproc.signal_group(pgid, sig)
                    group_signalled = True
                for pid in orphans - signalled:
                    osproc.signal_pid(pid, sig)
                    signalled.add(pid)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.1)
        finally:
            self._cleanup = None
        self._after_cleanup(killed)

    async def _clean_cgroup(self: "Instance", cgroups: containment.Cgroups, path: str, deadline: float, sig: int) -> None:
        killed = self._killed
        try:
            if not killed:
                cgroups.signal(path, sig)
            if killed or not await cgroups.watch.wait_empty(path, max(deadline - time.monotonic(), 0.0)):
                killed = True
                cgroups.kill(path)
                await cgroups.watch.wait_empty(path, None)
        finally:
            self._cleanup = None
        self._after_cleanup(killed)
