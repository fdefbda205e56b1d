"""Reload: the config file read again (in a child, readconfig.py) and applied all or nothing.

A mixin of Daemon: SIGHUP and the control API's reload both land in Reloading.reload. An
invalid config, or one that could only fail once in place, changes nothing; a valid one
becomes the desired state and the engine reconciles to it (rolling: a batch at a time).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..config import ConfigError, FarmConfig
from ..supervise import osproc
from ..supervise.engine import CommandFailed
from .readconfig import read_config_async

if TYPE_CHECKING:
    import asyncio

    from ..supervise.engine import Engine

log = logging.getLogger("exec_supervisor")


class Reloading:
    """reload(), for Daemon (which provides config, engine, shape, forwarder, emit and _hook)."""

    config: FarmConfig
    engine: "Engine"
    shape: Any
    forwarder: Any
    _reload_lock: "asyncio.Lock"
    stopping: bool

    def emit(self, kind: str, level: str = "info", **detail: Any) -> None: ...

    async def _hook(self, name: str, *args: Any) -> None: ...

    async def reload(self, dry_run: bool = False, rolling: bool = False, batch: int = 1) -> dict[str, Any]:
        """Re-read the config file; an invalid one changes nothing. SIGHUP and the control API both land here.

        dry_run: say what would start, stop and restart (the engine's own plan), changing nothing.
        rolling: restart changed instances `batch` at a time, each batch running before the next.
        """
        async with self._reload_lock:
            if self.stopping:
                return {"ok": False, "errors": ["the daemon is stopping; reload refused"]}
            if dry_run:
                return await self._plan_reload()
            await self._hook("reloading")
            result = await self._reload(rolling, batch)
            await self._hook("reloaded", result)
            return result

    async def _read_new(self) -> tuple[FarmConfig | None, list[str]]:
        """The config file as it is now, or the reasons it cannot be applied."""
        try:
            new = await read_config_async(self.config.path, self.engine)
            if self.shape is not None:
                new = self.shape(new)
        except ConfigError as exc:
            return None, [str(p) for p in exc.problems]
        for key in ("state_dir", "log_dir", "containment", "log_group"):
            if getattr(new, key) != getattr(self.config, key):
                return None, [f"{self.config.path.name}: supervisor.{key}: cannot change while running "
                              "(restart the daemon)"]
        problem = self._unappliable(new)
        if problem:
            return None, [f"{self.config.path}: {problem}"]
        return new, []

    def _unappliable(self, new: FarmConfig) -> str | None:
        """All or nothing: what could fail once the new config is in place is tried first (the bound
        with the runtime scales that stay, and every wanted instance's spec, built as reconcile will)."""
        dropped = self._dropped_scales(new)
        scaled = {t: ids for t, ids in self.engine.scaled.items() if t not in dropped}
        problem = self.engine.over_limit({t: scaled.get(t, new.ids_of(t)) for t in new.executors}, new)
        if problem:
            return problem
        try:
            self.engine.desired(new, scaled)
        except Exception as exc:  # a gap in validation: refuse, say so, keep the old config
            log.exception("reload: the new config cannot be applied")
            return f"cannot build the instances of the new config ({type(exc).__name__}); nothing was changed"
        return None

    def _dropped_scales(self, new: FarmConfig) -> list[str]:
        """Editing a type's ids/count in the config replaces a runtime scale of it."""
        dropped = []
        for type_name in self.engine.scaled:
            old, fresh = self.config.executors.get(type_name), new.executors.get(type_name)
            if fresh is None or old is None or fresh.id_list != old.id_list or fresh.hosts != old.hosts:
                dropped.append(type_name)
        return dropped

    async def _plan_reload(self) -> dict[str, Any]:
        new, errors = await self._read_new()
        if new is None:
            return {"ok": False, "dry_run": True, "errors": errors}
        dropped = self._dropped_scales(new)
        changes = self.engine.plan(new, {t: ids for t, ids in self.engine.scaled.items() if t not in dropped})
        counts = {key: len(ids) for key, ids in changes.items()}
        del changes["unchanged"]
        return {"ok": True, "dry_run": True, **counts, "changes": changes, "scale_dropped": dropped}

    async def _reload(self, rolling: bool = False, batch: int = 1) -> dict[str, Any]:
        new, errors = await self._read_new()
        if new is None:
            self.emit("reload_failed", level="error", errors="; ".join(errors))
            return {"ok": False, "errors": errors}
        dropped = self._dropped_scales(new)
        if dropped:
            try:
                self.engine.commit_overrides({t: ids for t, ids in self.engine.scaled.items() if t not in dropped},
                                             self.engine.held)
            except CommandFailed as exc:
                errors = [f"{self.config.path}: {exc}"]
                self.emit("reload_failed", level="error", errors="; ".join(errors))
                return {"ok": False, "errors": errors}
        self.config = self.engine.config = new
        self.engine.supervisor_name = new.name
        if self.forwarder is not None:
            self.forwarder.reconfigure(new)
        changes: dict[str, list[str]] = {"started": [], "stopped": [], "restarted": [], "unchanged": []}
        deferred: list[Any] = []
        done = await self.engine.reconcile(changes, deferred if rolling else None)
        osproc.release_free_memory()  # the old config's models and the reload's garbage
        self.emit("reloaded", **done)
        del changes["unchanged"]
        result: dict[str, Any] = {"ok": True, **done, "changes": changes, "scale_dropped": dropped}
        if rolling:
            failed = await self.engine.restart_instances(deferred, rolling=True, batch=batch)
            if failed:
                names = [i.spec.exec_id for i in deferred]
                last = max(names.index(f) for f in failed)
                result.update(ok=False, failed=failed, not_restarted=names[last + 1:],
                              error=f"{', '.join(failed)} did not come back to running; "
                                    f"{len(names) - last - 1} changed instance(s) after it were not restarted")
        return result
