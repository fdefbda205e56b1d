"""The reconciler: desired instances (config + runtime overrides) vs actual processes.

Start, stop, scale and reload all change the desired state and call
`reconcile()`; there is one path that starts, stops or restarts the difference.
Owns the engine's state (instances, runtime overrides, the farm's environment), the narrow
Host protocol each instance calls back through (supervise.instance.Host), the desired set and
the plan, and the adoption records (instances.json). The rest of the engine is in mixins:
children.py (spawning, reaping, orphans, shutdown: every child's life from the engine's side),
commands.py (the operator's scale, stop, start, restart, signal), ownership.py (containment,
what a dead daemon left). Imports config and events, never control or the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

from . import containment, handover, osproc
from ..config import ExecutorType, FarmConfig, InstanceSpec
from ..events import Event, EventBus
from .children import Children, _Pending
from .commands import Commands
from .incidents import Tracker
from .instance import Instance, State
from .journal import SpawnJournal
from .overrides import CommandFailed, limit_problem, next_ids, write_json_atomic  # noqa: F401  (CommandFailed: imported from here)
from .ownership import Ownership
from .pidwatch import PidWatch
from .plan import DONE, decide, plan_changes
from .timers import Cancellable, SlackTimers

log = logging.getLogger("exec_supervisor")

# Reconcile yields to the loop once it has worked this long, so that signals and control requests
# (health) are served within milliseconds while 10,000 instances spawn (a spawn takes 0.2-3 ms).
YIELD_SECONDS = 0.002
STATE_FLUSH_SECONDS = 0.5  # instances.json: the adoption records (the spawn journal is written at once)
# ... and at least this many times its last write's duration apart: O(N) work stays a small share of the loop.
STATE_FLUSH_SHARE = 10
# systemd hands these to the daemon only; an executor that saw them could confuse systemd.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_PID", "LISTEN_FDS",
               "LISTEN_FDNAMES", "JOURNAL_STREAM")


def secret_env_names(config: FarmConfig) -> tuple[str, ...]:
    """The variables service.auth and http.token_env name: the supervisor's credentials, never an executor's."""
    auth = config.service.auth
    return tuple(name for name in (auth.token_env, auth.username_env, auth.password_env, config.http.token_env)
                 if name)


# Children before Ownership: the latter declares _live_records for its type hints only.
class Engine(Commands, Children, Ownership):
    def __init__(self, config: FarmConfig, bus: EventBus) -> None:
        self.bus = bus
        self.farm_env: dict[str, str] = {}  # set by the daemon's extensions (ET_LOG_SOCKET, ...)
        # Every instance carries the farm's mark: the next daemon finds its processes by it.
        self.farm = containment.farm_id(config.state_dir)
        self.relay_url: str | None = None  # the relay's base URL while it listens (service.relay)
        self.config = config  # sets base_env too
        # Instance events pass the incident tracker (folding, failure windows) around the bus.
        self.incidents = Tracker(self)
        self.supervisor_name = config.name
        self.log_dir: Path | None = config.log_dir if config.output == "files" else None
        self.cgroups: containment.Cgroups | None = None  # set by setup_containment
        self.log_gid: int | None = None  # supervisor.log_group, resolved by the daemon
        self.journal = SpawnJournal(config.state_dir)
        self.instances: dict[str, Instance] = {}
        self.timers = SlackTimers()
        # Runtime overrides: id sets set by `scale` (and when), instances held stopped by `stop`.
        self.scaled: dict[str, tuple[int, ...]] = {}
        self.scaled_at: dict[str, float] = {}
        self.held: set[str] = set()
        self.stopping = False
        self.transitions = 0  # instance state changes so far: a measure of activity
        self._by_pid: dict[int, Instance] = {}
        self._retiring: set[Instance] = set()
        self._orphans: dict[str, set[int]] = {}
        self._orphan_exec_ids: dict[int, str] = {}
        self._orphan_scan_at = -1.0
        self._state_dirty = False
        self._state_error_logged = -1e9
        self._state_flush_cost = 0.0  # seconds the last instances.json write took
        self._state_handle: asyncio.TimerHandle | None = None
        self._log_handle: asyncio.TimerHandle | None = None
        self._sigchld_handler = False
        self._after_exits: list[_Pending] = []
        self._handling_exits = False
        self._reconcile_lock = asyncio.Lock()
        self._state_listeners: list[Any] = []
        self._carried: set[int] = set()
        self._adopted = PidWatch(self._adopted_exited)  # adopted processes: not our children
        self._helpers: dict[int, asyncio.Future[int]] = {}  # children that are not instances (upgrade check)
        self.operations: dict[str, int] = {}  # long operator commands in progress (an upgrade waits for none)
        self.health: Any = None  # the health extension (health/service.py), when installed
        self._state_listeners.append(self.incidents.state_changed)

    @property
    def config(self) -> FarmConfig:
        return self._config

    @config.setter
    def config(self, config: FarmConfig) -> None:
        # A reload may name other credentials: the environment every instance inherits follows it.
        self._config = config
        self._secrets = secret_env_names(config)
        hidden = set(PRIVATE_ENV) | set(self._secrets)
        self.base_env = osproc.encode_env({**{k: v for k, v in os.environ.items() if k not in hidden},
                                           **self.farm_env, containment.FARM_ENV: self.farm})

    def set_farm_env(self, name: str, value: str) -> None:
        """A variable every instance spawned from now on gets (a socket of the daemon's, say)."""
        self.farm_env[name] = value
        self.base_env[os.fsencode(name)] = os.fsencode(value)

    # ------------------------------------------------------------------ Host protocol

    def publish(self, event: Event) -> None:
        incidents = self.incidents
        incidents.before(event)
        self.bus.publish(event)
        incidents.after(event)

    def restart_delay(self, instance: Instance, failures: int) -> float:
        """The one backoff path: the instance's own, or its type's shared one while an incident is open."""
        return self.incidents.restart_delay(instance, failures)

    def admit(self, instance: Instance) -> Cancellable | None:
        """A restart due now may wait at its type's gate (an open incident paces restarts)."""
        return self.incidents.admit(instance)

    # the incident tracker's host
    def members(self, type_name: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.spec.type == type_name and i.want_running]

    def count(self, type_name: str) -> int:
        return len(self.ids_of(type_name)) if type_name in self.config.executors else 0

    def policy_of(self, type_name: str) -> ExecutorType | None:
        return self.config.executors.get(type_name)

    def announce(self, event: Event) -> None:
        self.bus.publish(event)

    def spawn_env(self, spec: InstanceSpec) -> dict[bytes, bytes]:
        """The environment of one spawn: the supervisor's without secrets, then the type's env.

        A service.auth variable reaches a type only when its env names it; named with an empty
        value, it passes the supervisor's own value (systemd's PassEnvironment=)."""
        env = {**self.base_env, **osproc.encode_env(spec.env)}
        for name in self._secrets:
            key = os.fsencode(name)
            if env.get(key) == b"" and name in os.environ:
                env[key] = os.fsencode(os.environ[name])
        return env

    def state_changed(self, instance: Instance) -> None:
        self.transitions += 1
        self._state_dirty = True
        # While a reconcile spawns (10,000 at start), instances.json waits for its end: an O(N)
        # write in the middle would hold the loop (the spawn journal already has every pid).
        if self._state_handle is None and not self._reconcile_lock.locked():
            self._schedule_flush()
        for listener in self._state_listeners:
            listener(instance)

    def _schedule_flush(self) -> None:
        delay = max(STATE_FLUSH_SECONDS, STATE_FLUSH_SHARE * self._state_flush_cost)
        self._state_handle = asyncio.get_running_loop().call_later(delay, self._flush_state)

    def on_state_change(self, listener: Any) -> None:
        self._state_listeners.append(listener)

    # ------------------------------------------------------------------ health hooks

    def set_notify_socket(self, address: str) -> None:
        """Every instance spawned from now on gets NOTIFY_SOCKET=address (ours, never systemd's)."""
        self.set_farm_env("NOTIFY_SOCKET", address)

    # ------------------------------------------------------------------ desired state

    def ids_of(self, type_name: str) -> tuple[int, ...]:
        if type_name in self.scaled:
            return self.scaled[type_name]
        return self.config.ids_of(type_name)

    def desired(self, config: FarmConfig | None = None,
                scaled: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[InstanceSpec, ExecutorType]]:
        """exec id -> (spec, policy) of every wanted instance, for the current config and scale or the given ones."""
        config = config or self.config
        scaled = self.scaled if scaled is None else scaled
        wanted: dict[str, tuple[InstanceSpec, ExecutorType]] = {}
        for type_name, executor in config.executors.items():
            for instance_id in (scaled[type_name] if type_name in scaled else config.ids_of(type_name)):
                spec = config.instance_spec(type_name, instance_id, self.relay_url)
                wanted[spec.exec_id] = (spec, executor)
        return wanted

    def over_limit(self, ids: dict[str, tuple[int, ...]], config: FarmConfig | None = None) -> str | None:
        """Why these id sets (per type; others as they are) would take the farm over max_instances, or None."""
        config = config or self.config
        return limit_problem({t: len(ids[t] if t in ids else self.scaled.get(t, config.ids_of(t)))
                              for t in config.executors}, config.max_instances)

    def scaled_ids(self, type_name: str, count: int | None = None,
                   ids: Iterable[int] | None = None) -> tuple[int, ...]:
        """The ids a scale would give the type (ValueError past the largest id there can be)."""
        return next_ids(type_name, self.ids_of(type_name), count, ids)

    def _decide(self, exec_id: str, instance: Instance | None, spec: InstanceSpec | None) -> str:
        return decide(exec_id, instance, spec, exec_id in self.held, instance in self._retiring)

    def plan(self, config: FarmConfig | None = None,
             scaled: dict[str, tuple[int, ...]] | None = None) -> dict[str, list[str]]:
        """The exec ids reconcile would start, stop and restart (and leave alone), changing nothing."""
        return plan_changes(self.desired(config, scaled), self.instances, self._decide)

    async def reconcile(self, changes: dict[str, list[str]] | None = None,
                        deferred: list[Instance] | None = None) -> dict[str, int]:
        """Make the actual instances match the desired ones; returns what was done.

        changes: filled with the exec ids started, stopped, restarted and unchanged.
        deferred: instances to restart are put there instead (a rolling reload restarts them after).
        """
        async with self._reconcile_lock:
            try:
                return await self._reconcile(changes, deferred)
            finally:
                if self._state_dirty and self._state_handle is None:
                    self._schedule_flush()

    async def _reconcile(self, changes: dict[str, list[str]] | None,
                         deferred: list[Instance] | None) -> dict[str, int]:
        done = {"started": 0, "stopped": 0, "restarted": 0, "unchanged": 0}
        if self.stopping:
            return done
        wanted = self.desired()
        for exec_id, instance in list(self.instances.items()):
            if exec_id in wanted:
                continue
            action = self._decide(exec_id, instance, None)
            if action == "forget":
                self._forget(instance)
            elif action == "stop":
                done["stopped"] += 1
                if changes is not None:
                    changes["stopped"].append(exec_id)
                self._retire(instance)
        seen = 0
        worked_since = time.monotonic()
        for exec_id, (spec, policy) in wanted.items():
            if self.stopping:
                break
            instance = self.instances.get(exec_id)
            action = self._decide(exec_id, instance, spec)
            if instance is None:
                instance = self.instances[exec_id] = Instance(spec, policy, self)
            else:
                instance.update(spec, policy)
            if action == "start":
                self._retiring.discard(instance)
                instance.start()
                done["started"] += 1
            elif action == "stop":
                instance.stop()
                done["stopped"] += 1
            elif action == "restart":
                if deferred is not None:
                    deferred.append(instance)
                else:
                    instance.restart()
                done["restarted"] += 1
            elif action == "unchanged":
                done["unchanged"] += 1
            if changes is not None and action in DONE:
                changes[DONE[action]].append(exec_id)
            seen += 1
            if time.monotonic() - worked_since > YIELD_SECONDS:
                await asyncio.sleep(0)
                worked_since = time.monotonic()
        return done

    def _retire(self, instance: Instance) -> None:
        self._retiring.add(instance)
        instance.stop()

        async def remove_when_stopped() -> None:
            await instance.wait_at_rest()
            self._retiring.discard(instance)
            exec_id = instance.spec.exec_id
            # A scale-up while it stopped may have wanted it back: then it stays.
            if self.instances.get(exec_id) is instance and not instance.want_running:
                self._forget(instance)
                self.state_changed(instance)

        asyncio.get_running_loop().create_task(remove_when_stopped())

    def _forget(self, instance: Instance) -> None:
        """Drop a removed instance (scaled down, gone from the config) and its empty cgroup."""
        del self.instances[instance.spec.exec_id]
        if instance.cgroup is not None and self.cgroups is not None:
            self.cgroups.remove(instance.cgroup)

    # ------------------------------------------------------------------ runtime state

    @property
    def state_file(self) -> Path:
        return self.config.state_dir / "instances.json"

    def _flush_state(self) -> None:
        """Record live pids with their start time, atomically, for adoption after a daemon restart."""
        self._state_handle = None
        if not self._state_dirty:
            return
        self._state_dirty = False
        began = time.monotonic()
        records = {}
        for exec_id, instance in self.instances.items():
            record = handover.identity_record(instance)
            if record is not None:
                records[exec_id] = record
        try:
            write_json_atomic(self.state_file, {"supervisor_pid": os.getpid(), "boot_id": handover.boot_id(),
                                                "instances": records})
            self._state_flush_cost = time.monotonic() - began
        except OSError as exc:  # state_dir full: try again at the next change, say so once a minute
            self._state_dirty = True
            now = time.monotonic()
            if now - self._state_error_logged > 60:
                self._state_error_logged = now
                log.error("cannot record the running instances in %s: %s", self.state_file, exc.strerror or exc)

    @property
    def retiring(self) -> set[Instance]:
        return self._retiring

    # ------------------------------------------------------------------ views

    def not_retiring(self, instances: Iterable[Instance]) -> list[Instance]:
        """Leave out instances being removed (scaled down, dropped by a reload): start/restart must not revive them."""
        return [i for i in instances if i not in self._retiring]

    def live_count(self) -> int:
        """Instances whose main process is alive."""
        return sum(1 for i in self.instances.values() if i.pid)

    def counts(self) -> dict[str, int]:
        running = sum(1 for i in self.instances.values() if i.state is State.RUNNING)
        desired = sum(1 for i in self.instances.values() if i.want_running)
        return {"running": running, "desired": desired, "instances": len(self.instances)}

