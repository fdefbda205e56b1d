"""The operator's commands on the engine: scale, stop, start, restart, signal, and waiting for them.

A mixin of Engine (engine.py keeps the reconciler readable). Every command changes the
desired state (the runtime overrides: scaled id sets, instances held stopped), records it in
overrides.json before it applies (a command that cannot be recorded changes nothing:
CommandFailed), then lets `reconcile()` do the work; a start or restart also asks the
instances directly, an explicit start forgiving past failures. `operation()` marks a long
command as in progress (an upgrade waits for none).

Spawns, reaps and signals nothing itself except `signal_instances` (the operator's own
signal, to live instances' groups); never reads the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from . import osproc
from ..events import Event
from .instance import Instance, State
from .overrides import read_overrides, write_overrides

if TYPE_CHECKING:
    from ..config import FarmConfig

log = logging.getLogger("exec_supervisor")


class Commands:
    config: "FarmConfig"
    supervisor_name: str
    instances: dict[str, Instance]
    scaled: dict[str, tuple[int, ...]]
    scaled_at: dict[str, float]
    held: set[str]
    operations: dict[str, int]
    _retiring: set[Instance]

    if TYPE_CHECKING:  # the engine's; declared here for type checkers only, never as stubs in the MRO
        def ids_of(self, type_name: str) -> tuple[int, ...]: ...
        def over_limit(self, ids: dict[str, tuple[int, ...]], config: FarmConfig | None = None) -> str | None: ...
        def publish(self, event: Event) -> None: ...
        async def reconcile(self) -> dict[str, int]: ...
        def not_retiring(self, instances: Iterable[Instance]) -> list[Instance]: ...

    @property
    def overrides_file(self) -> Path:
        return self.config.state_dir / "overrides.json"

    def load_overrides(self) -> None:
        """Runtime scale and held-stopped sets survive a daemon restart; stale types are dropped."""
        scaled, scaled_at, held = read_overrides(self.config.state_dir)
        self.scaled = {t: ids for t, ids in scaled.items() if t in self.config.executors}
        self.scaled_at = {t: when for t, when in scaled_at.items() if t in self.scaled}
        self.held = held
        problem = self.over_limit({})
        if problem:  # max_instances was lowered since: the config's own ids hold, within the bound
            log.warning("runtime scales dropped: with them, %s", problem.replace("; nothing was changed", ""))
            self.scaled, self.scaled_at = {}, {}

    def save_overrides(self) -> None:
        self.commit_overrides(self.scaled, self.held)

    def commit_overrides(self, scaled: dict[str, tuple[int, ...]], held: set[str],
                         scaled_at: dict[str, float] | None = None) -> None:
        """Record new runtime overrides, then make them the engine's: a command that cannot be
        recorded (state_dir full: CommandFailed) changes nothing, rather than failing now and applying later."""
        scaled = {t: ids for t, ids in scaled.items() if t in self.config.executors}
        scaled_at = {t: at for t, at in (self.scaled_at if scaled_at is None else scaled_at).items() if t in scaled}
        write_overrides(self.config.state_dir, scaled, scaled_at, held)
        self.scaled, self.scaled_at, self.held = scaled, scaled_at, held

    def drop_scale(self, type_name: str) -> None:
        """The type follows its configured ids again (a reload that changed them, `scale --reset`)."""
        self.scaled.pop(type_name, None)
        self.scaled_at.pop(type_name, None)

    async def scale(self, wanted: dict[str, tuple[int, ...]]) -> list[dict[str, Any]]:
        """New id sets for one or more types (from scaled_ids(), checked with over_limit()): recorded
        together or not at all (CommandFailed), then one reconcile. Survivors are untouched."""
        scaled, scaled_at = dict(self.scaled), dict(self.scaled_at)
        before = {t: self.ids_of(t) for t in wanted}
        for type_name, new in wanted.items():
            if new == self.config.ids_of(type_name):
                scaled.pop(type_name, None)  # back to what the config says: no override to show
                scaled_at.pop(type_name, None)
            elif new != self.scaled.get(type_name):
                scaled[type_name] = new
                scaled_at[type_name] = time.time()
        self.commit_overrides(scaled, self.held, scaled_at)
        for type_name, new in wanted.items():
            self.publish(Event(event="scaled", level="info", supervisor=self.supervisor_name,
                               detail={"type": type_name, "old": len(before[type_name]), "new": len(new)}))
        with self.operation("scale"):
            await self.reconcile()
        return [{"type": t, "old": len(before[t]), "new": len(new), "ids": list(new),
                 "started": len(set(new) - set(before[t])), "stopped": len(set(before[t]) - set(new))}
                for t, new in wanted.items()]

    async def stop_instances(self, instances: list[Instance]) -> None:
        """Held stopped until started again, across reloads and daemon restarts."""
        self.commit_overrides(self.scaled, self.held | {i.spec.exec_id for i in instances})
        await self.reconcile()

    async def start_instances(self, instances: list[Instance]) -> None:
        """Also revives fatal and exited instances: an explicit start forgives."""
        self.commit_overrides(self.scaled, self.held - {i.spec.exec_id for i in instances})
        for instance in self.not_retiring(instances):
            instance.start()  # also one still stopping: it comes back once stopped
        await self.reconcile()

    async def restart_instances(self, instances: list[Instance], rolling: bool = False,
                                batch: int = 1) -> list[str]:
        """Restart now (all at once, or `batch` at a time, each batch running again before the next);
        returns those of the first failing batch that did not come up (the rest is left alone)."""
        self.commit_overrides(self.scaled, self.held - {i.spec.exec_id for i in instances})
        instances = self.not_retiring(instances)
        if not rolling:
            for instance in instances:
                instance.restart()
            return []
        batch = max(1, batch)
        with self.operation("rolling restart"):
            for start in range(0, len(instances), batch):
                group = instances[start:start + batch]
                for instance in group:
                    instance.restart()
                budget = max(i.policy.stop_timeout + i.policy.start_seconds for i in group) + 30
                ups = await asyncio.gather(*(i.wait_until((State.RUNNING, State.FATAL, State.EXITED), budget)
                                             for i in group))
                failed = [i.spec.exec_id for i, up in zip(group, ups) if not up or i.state is not State.RUNNING]
                if failed:
                    return failed  # do not take down the rest of the fleet behind a bad batch
        return []

    def signal_instances(self, instances: list[Instance], sig: int) -> tuple[list[str], list[str]]:
        """Send sig to the process group of each live instance; returns (signalled, skipped) exec ids."""
        sent, skipped = [], []
        for instance in instances:
            if instance.pid is not None and instance.state in (State.STARTING, State.RUNNING) \
                    and osproc.signal_group(instance.pid, sig):
                sent.append(instance.spec.exec_id)
            else:
                skipped.append(instance.spec.exec_id)
        return sent, skipped

    async def wait_settled(self, type_names: Iterable[str], timeout: float) -> list[str]:
        """Wait until every wanted instance of the types runs and removed ones are gone; returns laggards."""
        with self.operation("scale --wait"):
            return await self._wait_settled(set(type_names), timeout)

    async def _wait_settled(self, names: set[str], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lagging = [
                i.spec.exec_id for i in self.instances.values()
                if i.spec.type in names and (
                    (i.want_running and i.state is not State.RUNNING) or (i in self._retiring)
                )
            ]
            if not lagging or time.monotonic() >= deadline:
                return lagging
            await asyncio.sleep(0.05)

    @contextlib.contextmanager
    def operation(self, name: str) -> Iterator[None]:
        """Mark a long operator command (a scale, a rolling restart) as in progress."""
        self.operations[name] = self.operations.get(name, 0) + 1
        try:
            yield
        finally:
            self.operations[name] -= 1
            if not self.operations[name]:
                del self.operations[name]
