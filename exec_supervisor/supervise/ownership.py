"""The engine's side of containment: which processes are whose, now and after a daemon death.

A mixin of Engine (engine.py keeps the reconciler readable): choosing cgroups or process
groups at start, claiming the cgroups of instances carried over or adopted, discovering and
stopping what a dead daemon of this farm left (discovery.py), telling the instance a pid
belongs to (owner_of), and whole-instance CPU and memory from its cgroup (usage).
Uses only the engine's state named in the attributes below; spawns nothing.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

from . import containment, discovery, handover, procfs

if TYPE_CHECKING:
    from pathlib import Path

    from ..config import FarmConfig
    from .instance import Instance
    from .journal import SpawnJournal, SpawnRecord


class Ownership:
    config: "FarmConfig"
    farm: str
    cgroups: containment.Cgroups | None
    instances: "dict[str, Instance]"
    journal: "SpawnJournal"
    _by_pid: "dict[int, Instance]"
    state_file: "Path"

    def _live_records(self) -> "list[SpawnRecord]": ...

    @property
    def containment(self) -> str:
        """'cgroup' or 'process': how this daemon knows which processes are an instance's."""
        return "cgroup" if self.cgroups is not None else "process"

    def setup_containment(self, mode: str) -> None:
        """Choose cgroups or process groups (mode auto|cgroup|process); raises CgroupUnavailable."""
        self.cgroups = containment.choose(mode, self.farm)

    def claim_cgroups(self) -> None:
        """Instances learnt of (carried over by an upgrade, adopted) whose process is in their
        cgroup get it back: their stop and leftovers then go by the cgroup too."""
        if self.cgroups is None:
            return
        for instance in self.instances.values():
            path = self.cgroups.path_of(instance.spec.exec_id)
            if instance.cgroup is None and instance.pid is not None and instance.pid in containment.pids_in(path):
                instance.cgroup = path

    def containment_info(self) -> dict[str, Any]:
        """For status: the mode, and the farm's cgroup when there is one."""
        return {"mode": self.containment, "cgroup": self.cgroups.farm_dir if self.cgroups else None,
                "farm": self.farm}

    def discover_previous(self) -> dict[str, list[int]]:
        """Processes of this farm not started by this daemon: {exec_id: [pids]} (see discovery.py).

        Instances this daemon runs are left out. The caller decides: stop them (the default at
        start-up, stop_previous_leftovers) or adopt them.
        """
        ours = set(self._by_pid) | procfs.descendants([os.getpid()])
        return discovery.discover(self.config.state_dir, self.farm,
                                  [self.cgroups.farm_dir] if self.cgroups else [], exclude=ours)

    def stop_previous_leftovers(self) -> int:
        """Executors a killed daemon left running would run twice next to ours: stop them all
        first, every process of every instance not adopted (found by discover_previous, and by
        the adoption records of instances.json). Returns how many instances had processes left.
        Afterwards the spawn journal starts afresh with what this daemon holds.
        """
        found = {e: pids for e, pids in self.discover_previous().items() if e not in self.instances}
        for pid in handover.leftovers(self):  # recorded main processes of instances not adopted
            found.setdefault(procfs.environ_value(pid, "ET_EXEC_ID") or f"pid {pid}", []).append(pid)
        if found:
            signals = {}
            for exec_id in found:
                executor = self.config.executors.get(exec_id[3:].rpartition("-")[0])
                signals[exec_id] = executor.stop_signal if executor else signal.SIGTERM
            timeout = max((e.stop_timeout for e in self.config.executors.values()), default=10)
            cgroups = [self.cgroups.path_of(e) for e in found] if self.cgroups else []
            discovery.stop(found, signals, timeout, cgroups)
            again = {e: p for e, p in self.discover_previous().items() if e not in self.instances}
            if again:  # anything forked while they were stopping
                discovery.stop(again, {e: signal.SIGKILL for e in again}, 0.0, cgroups)
        if self.cgroups is not None:
            for path in self.cgroups.instance_dirs():
                self.cgroups.remove(path)  # the previous daemon's, now empty (an adopted one's is not)
        self.journal.start(self._live_records())
        return len(found)

    def owner_of(self, pid: int) -> Instance | None:
        """The instance a process belongs to: by cgroup when contained, else main pid, session,
        process group or ET_EXEC_ID (with this farm's mark). None for anything else."""
        instance = self._by_pid.get(pid)
        if instance is not None:
            return instance
        if self.cgroups is not None:
            path = containment.cgroup_of(pid)
            if path is None:
                return None
            parent, _, name = path.rpartition("/")
            if parent and self.cgroups.farm_dir.endswith(parent):
                return self.instances.get(name)
            return None
        try:
            for leader in (os.getpgid(pid), os.getsid(pid)):
                instance = self._by_pid.get(leader)
                if instance is not None:
                    return instance
        except OSError:
            return None
        # a grandchild that left both: the marks it inherited (this farm's, and an instance that runs)
        if procfs.environ_value(pid, containment.FARM_ENV) != self.farm:
            return None
        instance = self.instances.get(procfs.environ_value(pid, "ET_EXEC_ID") or "")
        # The environment is the sender's to write: only a descendant of this daemon is believed.
        if instance is None or instance.pid is None or not procfs.descends_from(pid, os.getpid()):
            return None
        return instance

    def usage(self, instance: Instance) -> dict[str, Any] | None:
        """CPU seconds and memory of the whole instance from its cgroup (None without one):
        {"cpu_seconds", "memory" (None without the memory controller), "pids"}."""
        if instance.cgroup is None:
            return None
        return containment.usage(instance.cgroup)
