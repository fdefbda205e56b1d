"""The reconciler: desired instances (config + runtime overrides) vs actual processes.

Start, stop, scale and reload all change the desired state and call
`reconcile()`; there is one path that starts, stops or restarts the difference.
The engine also reaps children (SIGCHLD through a signalfd, then waitpid(-1), so
orphans adopted as subreaper are reaped too), rotates log files, records every spawn in the
journal before anything else can happen, and finds (and stops) what a dead daemon left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import containment, handover, logfiles, osproc
from .journal import SpawnJournal, SpawnRecord, ticks_of
from .ownership import Ownership
from ..config import ExecutorType, FarmConfig, InstanceSpec
from ..events import Event, EventBus
from .incidents import Tracker
from .instance import Instance, State
from .overrides import (CommandFailed, limit_problem, next_ids, read_overrides, write_json_atomic,  # noqa: F401
                        write_overrides)
from .plan import DONE, decide, plan_changes
from .pidwatch import PidWatch
from .timers import Cancellable, SlackTimers

log = logging.getLogger("exec_supervisor")

SPAWN_BATCH = 64  # spawns between yields to the loop, so signals and requests stay served
LOG_CHECK_SECONDS = 5.0
STATE_FLUSH_SECONDS = 0.5  # instances.json: the adoption records (the spawn journal is written at once)
ORPHAN_SCAN_TTL = 0.02
# systemd hands these to the daemon only; an executor that saw them could confuse systemd.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_PID", "LISTEN_FDS",
               "LISTEN_FDNAMES", "JOURNAL_STREAM")


def secret_env_names(config: FarmConfig) -> tuple[str, ...]:
    """The variables service.auth and http.token_env name: the supervisor's credentials, never an executor's."""
    auth = config.service.auth
    return tuple(name for name in (auth.token_env, auth.username_env, auth.password_env, config.http.token_env)
                 if name)


class Engine(Ownership):
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
            for pid in osproc.adopted_children(known, len(self._carried)):
                owner = self._orphan_exec_ids.get(pid)
                if owner is None:
                    # Only a found id is kept: a process caught in the middle of an exec shows an
                    # empty environment for a moment, and must be asked again next time.
                    owner = osproc.environ_value(pid, "ET_EXEC_ID")
                    if owner:
                        self._orphan_exec_ids[pid] = owner
                if owner:
                    by_exec.setdefault(owner, set()).add(pid)
            self._orphans = by_exec
        return set(self._orphans.get(exec_id, ()))

    def state_changed(self, instance: Instance) -> None:
        self.transitions += 1
        self._state_dirty = True
        if self._state_handle is None:
            self._state_handle = asyncio.get_running_loop().call_later(STATE_FLUSH_SECONDS, self._flush_state)
        for listener in self._state_listeners:
            listener(instance)

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
            actions = seen = 0
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
                    actions += 1
                elif action == "stop":
                    instance.stop()
                    done["stopped"] += 1
                elif action == "restart":
                    if deferred is not None:
                        deferred.append(instance)
                    else:
                        instance.restart()
                        actions += 1
                    done["restarted"] += 1
                elif action == "unchanged":
                    done["unchanged"] += 1
                if changes is not None and action in DONE:
                    changes[DONE[action]].append(exec_id)
                seen += 1
                # Every batch yields, spawns or not: health and signals are served within one batch.
                if (actions and actions % SPAWN_BATCH == 0) or seen % (SPAWN_BATCH * 16) == 0:
                    await asyncio.sleep(0)
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

    # ------------------------------------------------------------------ lifecycle

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
        await asyncio.gather(*(instance.wait_at_rest() for instance in instances))
        await self.sweep(timeout=2.0)
        if self._log_handle:
            self._log_handle.cancel()
        self._flush_state()
        self.journal.compact(self._live_records())  # nothing, unless something could not be killed
        self.journal.close()
        if self.cgroups is not None:
            self.cgroups.close()

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
            left = osproc.descendants([os.getpid()])
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
        for pid in osproc.descendants([os.getpid()]):
            osproc.signal_pid(pid, signal.SIGKILL)
        if self.cgroups is not None:
            for path in self.cgroups.instance_dirs():
                self.cgroups.kill(path)

    # ------------------------------------------------------------------ periodic chores

    def _check_logs(self) -> None:
        # Also a safety net: an exit whose SIGCHLD a foreign thread (one started before attach,
        # by a library) took and discarded is still reaped, if late.
        self.on_child_exits()
        for instance in self.instances.values():
            if instance.pid is None or instance.log_file is None:
                continue
            try:
                if osproc.file_size(instance.log_file) > instance.policy.log_max_bytes:
                    logfiles.rotate_copytruncate(instance.log_path, instance.policy.log_backups, self.log_gid)
            except OSError as exc:
                log.warning("%s: cannot rotate %s: %s", instance.spec.exec_id, instance.log_path, exc)
        self._log_handle = asyncio.get_running_loop().call_later(LOG_CHECK_SECONDS, self._check_logs)

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
        records = {}
        for exec_id, instance in self.instances.items():
            record = handover.identity_record(instance)
            if record is not None:
                records[exec_id] = record
        try:
            write_json_atomic(self.state_file, {"supervisor_pid": os.getpid(), "boot_id": handover.boot_id(),
                                                "instances": records})
        except OSError as exc:  # state_dir full: try again at the next change, say so once a minute
            self._state_dirty = True
            now = time.monotonic()
            if now - self._state_error_logged > 60:
                self._state_error_logged = now
                log.error("cannot record the running instances in %s: %s", self.state_file, exc.strerror or exc)

    @property
    def retiring(self) -> set[Instance]:
        return self._retiring

    # ------------------------------------------------------------------ operator commands

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
