"""The engine's children: spawning and journaling them, reaping them, and ending them all.

A mixin of Engine (engine.py keeps the reconciler readable). Owns the pid -> instance map's
upkeep: `spawn` starts an instance's process and records it in the spawn journal before
anything else can happen; `on_child_exits` reaps every exited child (waitpid(-1): orphans
adopted as subreaper too) and hands each exit to its instance, then runs what waited for the
batch (`after_exits`); `orphans_of` finds re-parented leftovers by their ET_EXEC_ID; adopted
processes (not our children) and helpers (an upgrade check, probes) are watched here too.
At the end: `shutdown`, `sweep` (nothing left alive, nothing unreaped) and `kill_all`. The
periodic log check (rotation, and a safety net for a lost SIGCHLD) runs from here.

Decides nothing about which instances should run (that is reconcile's) and changes no
instance's state itself: instances change their own, on `on_exit`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Callable

from . import containment, logfiles, osproc, procfs
from .journal import SpawnRecord, ticks_of
from .timers import Cancellable, SlackTimers

if TYPE_CHECKING:
    from .instance import Instance
    from .journal import SpawnJournal
    from .pidwatch import PidWatch

log = logging.getLogger("exec_supervisor")

# The rotation pass runs every LOG_CHECK_SECONDS and looks at a log that grew since its last look;
# one that did not is looked at again after LOG_QUIET_SECONDS: an idle farm of 10,000 would
# otherwise stat 2,000 files a second (idle CPU is a benchmarked target).
LOG_CHECK_SECONDS = 5.0
LOG_QUIET_SECONDS = 30.0
ORPHAN_SCAN_TTL = 0.02


class Children:
    instances: "dict[str, Instance]"
    timers: SlackTimers
    journal: "SpawnJournal"
    cgroups: containment.Cgroups | None
    log_gid: int | None
    stopping: bool
    _by_pid: "dict[int, Instance]"
    _carried: set[int]
    _helpers: "dict[int, asyncio.Future[int]]"
    _orphans: dict[str, set[int]]
    _orphan_exec_ids: dict[int, str]
    _orphan_scan_at: float
    _after_exits: "list[_Pending]"
    _handling_exits: bool
    _sigchld_handler: bool
    _log_handle: asyncio.TimerHandle | None
    _adopted: "PidWatch"

    if TYPE_CHECKING:  # the engine's; declared here for type checkers only, never as a stub in the MRO
        def _flush_state(self) -> None: ...

    # ------------------------------------------------------------------ spawning

    def track(self, instance: Instance, pid: int, carried: bool = False) -> None:
        """carried: a child handed over by an in-place upgrade (the main thread lists it)."""
        self._by_pid[pid] = instance
        if carried:
            self._carried.add(pid)

    def spawn(self, instance: Instance, env: dict[bytes, bytes]) -> int:
        """Start the instance's process (in its cgroup when contained) and journal it at once."""
        spec = instance.spec
        # None (output: inherit): the child keeps the daemon's stdout and stderr
        log_fd = logfiles.open_log(instance.log_file, self.log_gid) if instance.log_file is not None else None
        try:
            if self.cgroups is not None:
                pid, instance.cgroup = self.cgroups.spawn(spec.exec_id, spec.argv, env, spec.cwd, log_fd)
            else:
                pid = osproc.spawn(spec.argv, env, spec.cwd, log_fd)
        finally:
            if log_fd is not None:
                os.close(log_fd)
        self._by_pid[pid] = instance
        self.journal.record(spec.exec_id, pid, instance.started_boottime, instance.cgroup)
        if self.journal.due(len(self._by_pid)):
            self.journal.compact(self._live_records())
        return pid

    def _live_records(self) -> list[SpawnRecord]:
        boot = self.journal.boot
        return [SpawnRecord(i.spec.exec_id, pid, ticks_of(i.started_boottime), boot, i.cgroup)
                for pid, i in self._by_pid.items()]

    def orphans_of(self, exec_id: str) -> set[int]:
        """Our children that are not main processes but carry exec_id (re-parented leftovers)."""
        now = time.monotonic()
        if now - self._orphan_scan_at > ORPHAN_SCAN_TTL:
            self._orphan_scan_at = now
            by_exec: dict[str, set[int]] = {}
            # Helpers (probes, an upgrade check) carry no instance; the main thread lists them only
            # when the loop runs on it.
            known = self._by_pid.keys() if not self._helpers else self._by_pid.keys() | self._helpers.keys()
            for pid in procfs.adopted_children(known, len(self._carried)):
                owner = self._orphan_exec_ids.get(pid)
                if owner is None:
                    # Only a found id is kept: a process caught in the middle of an exec shows an
                    # empty environment for a moment, and must be asked again next time.
                    owner = procfs.environ_value(pid, "ET_EXEC_ID")
                    if owner:
                        self._orphan_exec_ids[pid] = owner
                if owner:
                    by_exec.setdefault(owner, set()).add(pid)
            self._orphans = by_exec
        return set(self._orphans.get(exec_id, ()))

    def after_exits(self, callback: Callable[[], None]) -> Cancellable:
        """Run callback once the child exits being handled now are all handled (soon, if none are)."""
        pending = _Pending(callback)
        self._after_exits.append(pending)
        if not self._handling_exits and len(self._after_exits) == 1:
            asyncio.get_running_loop().call_soon(self._run_after_exits)
        return pending

    def _run_after_exits(self) -> None:
        pending, self._after_exits = self._after_exits, []
        for item in pending:
            try:
                item.run()
            except Exception:  # as the loop does for a failing callback: log it, run the others
                log.exception("callback %r failed", item)

    # ------------------------------------------------------------------ exits and the end

    def attach(self, loop: asyncio.AbstractEventLoop, signal_handler: bool = True) -> None:
        """Start the periodic chores. Child exits come to on_child_exits: from a SIGCHLD handler
        set here, or (signal_handler False) from the daemon's SignalFd."""
        if signal_handler:
            loop.add_signal_handler(signal.SIGCHLD, self.on_child_exits)
        self._sigchld_handler = signal_handler
        self._log_handle = loop.call_later(LOG_CHECK_SECONDS, self._check_logs)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sigchld_handler:
            loop.remove_signal_handler(signal.SIGCHLD)
            self._sigchld_handler = False
        self._adopted.close(loop)

    def watch_adopted(self, instance: Instance) -> bool:
        """An adopted process is not our child: its exit comes through a pidfd (pidwatch).
        False when it is already gone."""
        assert instance.pid is not None
        return self._adopted.watch(instance, instance.pid, instance.start_ticks)

    def watch_helper(self, pid: int) -> "asyncio.Future[int]":
        """The wait status of a child that is no instance: this engine reaps every child
        (waitpid(-1)), so anyone else waiting for one of its own would find it gone."""
        future = self._helpers[pid] = asyncio.get_running_loop().create_future()
        return future

    def _adopted_exited(self, instance: Instance, pid: int) -> None:
        if instance.pid != pid:
            return
        self._handling_exits = True
        try:
            instance.on_exit(None)
        finally:
            self._handling_exits = False
            if self._after_exits:
                self._run_after_exits()

    def on_child_exits(self) -> None:
        """Reap every exited child and handle the exits (and the restarts due at once) as one batch."""
        reaped = osproc.reap()
        if reaped:
            # A main process's children were re-parented to us as it died: an orphan scan
            # made before this batch cannot know them.
            self._orphan_scan_at = -1.0
        exits = []
        # Untrack the whole batch first: an exit handler's orphan scan counts on every tracked
        # pid still being our child.
        for pid, status in reaped:
            self._orphan_exec_ids.pop(pid, None)
            self._carried.discard(pid)
            instance = self._by_pid.pop(pid, None)
            if instance is not None:
                exits.append((instance, status))
            elif pid in self._helpers:
                future = self._helpers.pop(pid)
                if not future.done():
                    future.set_result(status)
        self._handling_exits = True
        try:
            for instance, status in exits:
                instance.on_exit(status)
        finally:
            self._handling_exits = False
            if self._after_exits:
                # In this same loop pass: a restart costs no extra wake-up of the loop.
                self._run_after_exits()
            self.timers.run_due(time.monotonic())  # start_seconds checks due by now, in this pass too

    async def shutdown(self) -> None:
        """Stop every instance in parallel, then sweep anything still descending from us."""
        self.stopping = True
        instances = list(self.instances.values())
        for instance in instances:
            instance.stop()
        await asyncio.gather(*(self._stopped_and_removed(instance) for instance in instances))
        await self.sweep(timeout=2.0)
        if self._log_handle:
            self._log_handle.cancel()
        self._flush_state()
        self.journal.compact(self._live_records())  # nothing, unless something could not be killed
        self.journal.close()
        if self.cgroups is not None:
            self.cgroups.close()

    async def _stopped_and_removed(self, instance: Instance) -> None:
        """At rest, its empty cgroup goes at once: while the others still exit, not all after them."""
        await instance.wait_at_rest()
        if instance.cgroup is not None and self.cgroups is not None:
            self.cgroups.remove(instance.cgroup)

    async def sweep(self, timeout: float) -> None:
        """SIGKILL every remaining descendant and reap until none is left (no orphans, no zombies)."""
        deadline = time.monotonic() + timeout
        if self.cgroups is not None:
            for path in self.cgroups.instance_dirs():
                if containment.populated(path):
                    self.cgroups.kill(path)
                    await self.cgroups.watch.wait_empty(path, max(deadline - time.monotonic(), 0.0))
        while True:
            self.on_child_exits()
            left = procfs.descendants([os.getpid()])
            if not left:
                return
            for pid in left:
                osproc.signal_pid(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                log.error("could not reap %d leftover processes: %s", len(left), sorted(left)[:10])
                return
            await asyncio.sleep(0.01)

    def kill_all(self) -> None:
        """Second Ctrl-C: no grace period."""
        self.stopping = True
        for instance in self.instances.values():
            if instance.pid is not None:
                osproc.signal_group(instance.pid, signal.SIGKILL)
        for pid in procfs.descendants([os.getpid()]):
            osproc.signal_pid(pid, signal.SIGKILL)
        if self.cgroups is not None:
            for path in self.cgroups.instance_dirs():
                self.cgroups.kill(path)

    # ------------------------------------------------------------------ periodic chores

    def _check_logs(self) -> None:
        # Also a safety net: an exit whose SIGCHLD a foreign thread (one started before attach,
        # by a library) took and discarded is still reaped, if late.
        self.on_child_exits()
        now = time.monotonic()
        for instance in self.instances.values():
            if instance.pid is None or instance.log_file is None or instance.log_check_at > now:
                continue
            try:
                size = osproc.file_size(instance.log_file)
                quiet = size == instance.log_size
                instance.log_size = size
                instance.log_check_at = now + (LOG_QUIET_SECONDS if quiet else LOG_CHECK_SECONDS) - 1.0
                if size > instance.policy.log_max_bytes:
                    logfiles.rotate_copytruncate(instance.log_path, instance.policy.log_backups, self.log_gid)
            except OSError as exc:
                log.warning("%s: cannot rotate %s: %s", instance.spec.exec_id, instance.log_path, exc)
        self._log_handle = asyncio.get_running_loop().call_later(LOG_CHECK_SECONDS, self._check_logs)


class _Pending:
    """A callback queued by after_exits, cancellable like a loop handle."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self._callback = None

    def run(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()
