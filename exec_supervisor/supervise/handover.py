"""An engine's runtime state as data: written before the daemon re-executes itself (upgrade),
read back by the new image; and the per-instance records that let a daemon adopt the
executors a dead daemon left running.

Both end the same way: the engine *learns* of instances that exist (restore/adopt put
Instance objects with their pid, state, restart counts and timers into engine.instances),
then the caller reconciles, which starts only what is missing, restarts what the config
changed and retires what it no longer wants. Nothing here spawns or signals a process.

Times: monotonic readings are stored as they are. CLOCK_MONOTONIC is one clock for the
whole machine until it reboots, so a deadline read back by the new image (same boot, checked
by boot id) is the same instant, with nothing lost to the re-exec in between.

Must not import the engine (the engine imports this) nor anything above supervise/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections import deque
from typing import Any, Protocol

from ..config import ExecutorType, InstanceSpec
from . import procfs
from .instance import Host, Instance, State
from .procid import TICKS_PER_SECOND, Identity, boot_id, is_child, start_ticks
from ..digests import sha256_hex

log = logging.getLogger("exec_supervisor")

FORMAT = 1
# A spec no config can produce: an instance restored with it is relaunched by reconcile,
# exactly as a reload relaunches an instance whose command, env or cwd changed.
_CHANGED = "\0launched with another command, env or cwd"


class Engine(Host, Protocol):
    """What restore/adopt need from the engine (kept narrow, as for Instance)."""

    config: Any
    instances: dict[str, Instance]
    held: set[str]
    scaled: dict[str, tuple[int, ...]]
    state_file: Any

    def desired(self) -> dict[str, tuple[InstanceSpec, ExecutorType]]: ...
    def watch_adopted(self, instance: Instance) -> bool: ...


def launch_hash(spec: InstanceSpec) -> str:
    """A digest of what the process was started with: tells a changed config apart without
    writing env values (secrets live there) into a file."""
    text = json.dumps([spec.argv, spec.env, spec.cwd], separators=(",", ":"))
    return sha256_hex(text.encode(), 16)


def identity_record(instance: Instance) -> dict[str, Any] | None:
    """What instances.json keeps of a live instance: enough to adopt it, and only it, later (with
    the file's boot_id; the exec id it is filed under gives type and id). Kept small: the file is
    rewritten after every burst of state changes, and its garbage costs a farm of 1000 its RSS."""
    pid = instance.pid
    if pid is None:
        return None
    if instance.start_ticks is None:
        instance.start_ticks = start_ticks(pid, zombie_ok=True)  # once per spawn
    if instance.launch_digest is None:
        instance.launch_digest = launch_hash(instance.spec)  # once per spawn: JSON of the whole env
    return {"pid": pid, "start_ticks": instance.start_ticks, "restarts": instance.restarts,
            "launch": instance.launch_digest}


# --------------------------------------------------------------------------- upgrade: write


def snapshot(engine: Engine, retiring: set[Instance]) -> dict[str, Any]:
    """Everything the engine knows at run time, as JSON-ready data (call with the loop frozen)."""
    records = []
    for exec_id, inst in engine.instances.items():
        record = identity_record(inst) or {"launch": launch_hash(inst.spec)}
        record.update({
            "type": inst.spec.type, "id": inst.spec.id, "boot_id": boot_id(),
            "exec_id": exec_id, "argv": list(inst.spec.argv), "cwd": inst.spec.cwd,
            "stop_signal": int(inst.policy.stop_signal), "stop_timeout": inst.policy.stop_timeout,
            "state": inst.state.value, "want_running": inst.want_running, "pgid": inst._pgid,
            "started_at": inst.started_at, "started_wall": inst.started_wall,
            "started_boottime": inst.started_boottime, "restarts": inst.restarts, "failures": inst.failures,
            "restart_times": None if inst.restart_times is None else list(inst.restart_times),
            "last_exit": inst.last_exit, "log_offset": inst._log_offset, "restart_at": inst._restart_at,
            "killed": inst._killed, "stop_deadline": inst._stop_deadline, "start_pending": inst._start_pending,
            "cleaning": inst._cleanup is not None, "adopted": inst.adopted, "retiring": inst in retiring,
            "history": [[when, state.value, reason] for when, state, reason in inst.history],
            "readiness": inst.readiness_record(),
        })
        records.append(record)
    return {"format": FORMAT, "boot_id": boot_id(), "monotonic": time.monotonic(), "time": time.time(),
            "held": sorted(engine.held), "scaled": {t: list(ids) for t, ids in engine.scaled.items()},
            "instances": records}


# --------------------------------------------------------------------------- read back


class StateError(ValueError):
    """The state cannot be used at all (another format, another boot)."""


def check(data: Any) -> list[dict[str, Any]]:
    """The instance records of a snapshot, or StateError saying why it cannot be used."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise StateError(f"state format {found!r} is not {FORMAT} (written by an incompatible version)")
    if data.get("boot_id") != boot_id():
        raise StateError("the state was written before the machine rebooted: every process in it is gone")
    records = data.get("instances")
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("exec_id"), str)
                                                for r in records):
        raise StateError("the state's instance list is malformed")
    return records


def restore(engine: Engine, data: dict[str, Any], children: bool) -> dict[str, Any]:
    """Put every instance of a snapshot back into the engine (the daemon re-executed itself:
    children=True, its live processes are still our children). A record that cannot be
    restored whole is adopted from its identity alone; one whose process is gone is left to
    reconcile. Returns counts: carried (with a live process), restored (all), adopted, lost."""
    records = check(data)
    engine.held = {e for e in data.get("held") or () if isinstance(e, str)}
    engine.scaled = {t: tuple(sorted({int(i) for i in ids if isinstance(i, int) and i >= 0}))
                     for t, ids in (data.get("scaled") or {}).items()
                     if t in engine.config.executors and isinstance(ids, list)}
    wanted = engine.desired()
    counts = {"carried": 0, "restored": 0, "adopted": 0, "lost": 0, "retiring": []}
    for record in records:
        exec_id = record["exec_id"]
        try:
            instance = _restore_one(engine, record, wanted, children)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("%s: cannot restore its state (%s); adopting it from its identity", exec_id, exc)
            instance = adopt_one(engine, exec_id, record, wanted, children)
            if instance is not None:
                counts["adopted"] += 1
        if instance is None:
            if record.get("pid"):
                counts["lost"] += 1
            continue
        counts["restored"] += 1
        if instance.pid is not None:
            counts["carried"] += 1
        if record.get("retiring"):
            counts["retiring"].append(exec_id)
    return counts


def _spec_and_policy(engine: Engine, record: dict[str, Any],
                     wanted: dict[str, tuple[InstanceSpec, ExecutorType]]) -> tuple[InstanceSpec, ExecutorType]:
    exec_id = record["exec_id"]
    named, _, number = exec_id[3:].rpartition("-")  # ET-<Type>-<id>
    type_name, instance_id = str(record.get("type") or named), int(record.get("id", number))
    if exec_id in wanted:
        spec, policy = wanted[exec_id]
    elif type_name in engine.config.executors:
        spec, policy = engine.config.instance_spec(type_name, instance_id, engine.relay_url), engine.config.executors[type_name]
    else:  # its type left the config: it will only be stopped, with the stop settings it had
        spec = InstanceSpec(type_name, instance_id, exec_id, tuple(record.get("argv") or ("?",)), (),
                            str(record.get("cwd") or "/"))
        policy = ExecutorType(
            command=list(spec.argv), restart="never",
            stop_signal=int(record.get("stop_signal") or signal.SIGTERM),
            stop_timeout=float(record.get("stop_timeout") or 10.0))
        return spec, policy
    if record.get("launch") != launch_hash(spec):
        spec = dataclasses.replace(spec, cwd=_CHANGED)
    return spec, policy


def _restore_one(engine: Engine, record: dict[str, Any], wanted: dict[str, tuple[InstanceSpec, ExecutorType]],
                 children: bool) -> Instance | None:
    spec, policy = _spec_and_policy(engine, record, wanted)
    state = State(record["state"])
    pid = record.get("pid")
    inst = Instance(spec, policy, engine)
    if pid is not None:
        ticks = int(record["start_ticks"])
        if record.get("adopted") or not children:
            if not Identity(int(pid), ticks, str(record.get("boot_id"))).is_alive_as(spec.exec_id):
                return _gone(engine, inst, record, state)
            inst.adopted = True
        elif not is_child(int(pid), ticks):
            return _gone(engine, inst, record, state)
        inst.pid, inst.start_ticks = int(pid), ticks
    inst.state = state
    inst.want_running = bool(record["want_running"])
    inst._pgid = int(record.get("pgid") or pid or 0)
    inst.started_at = float(record["started_at"])
    inst.started_wall = float(record["started_wall"])
    inst.started_boottime = float(record["started_boottime"])
    inst.restarts = int(record["restarts"])
    inst.failures = int(record["failures"])
    times = record.get("restart_times")
    if times is not None and policy.max_restarts:
        inst.restart_times = deque((float(t) for t in times), maxlen=policy.max_restarts)
    inst.last_exit = record.get("last_exit")
    inst._log_offset = int(record["log_offset"])
    inst._restart_at = float(record["restart_at"])
    inst._killed = bool(record["killed"])
    inst._stop_deadline = float(record["stop_deadline"])
    inst._start_pending = bool(record["start_pending"])
    inst.history = tuple((float(when), State(state), str(reason)) for when, state, reason in record.get("history") or ())
    inst.restore_readiness(record.get("readiness") or {})
    _install(engine, inst)
    inst.resume(cleaning=bool(record["cleaning"]))
    return inst


def _gone(engine: Engine, inst: Instance, record: dict[str, Any], state: State) -> Instance | None:
    """Its process vanished while nobody watched (cannot happen to a child; an adopted one can
    die during the re-exec): counted as an exit of unknown status, so the policy restarts it."""
    if state not in (State.STARTING, State.RUNNING, State.STOPPING):
        return None
    inst.pid = inst._pgid = int(record["pid"])
    inst.state = state
    inst.want_running = bool(record.get("want_running", True))
    inst.restarts = int(record.get("restarts") or 0)
    inst.started_at = float(record.get("started_at") or time.monotonic())
    inst.started_wall = float(record.get("started_wall") or time.time())
    inst.adopted = True
    _install(engine, inst)
    inst.on_exit(None)
    return inst


def _install(engine: Engine, inst: Instance) -> None:
    engine.instances[inst.spec.exec_id] = inst
    if inst.pid is not None:
        if inst.adopted:
            if not engine.watch_adopted(inst):
                inst.on_exit(None)  # died between the identity check and the pidfd
        else:
            engine.track(inst, inst.pid, carried=True)
    engine.state_changed(inst)


# --------------------------------------------------------------------------- adoption


def adopt_one(engine: Engine, exec_id: str, record: dict[str, Any],
              wanted: dict[str, tuple[InstanceSpec, ExecutorType]], children: bool = False) -> Instance | None:
    """Take over a live process from its identity record alone (pid, start ticks, boot id, ET_EXEC_ID):
    `running` at once, its uptime from its real start, its restart count carried over. None when
    the record names nobody of ours (gone, reused pid, another boot, not carrying exec_id)."""
    identity = Identity.from_record(record)
    if identity is None or exec_id not in wanted:
        return None
    if children and is_child(identity.pid, identity.start_ticks) and identity.boot_id == boot_id():
        as_child = True
    elif identity.is_alive_as(exec_id):
        as_child = False
    else:
        return None
    spec, policy = _spec_and_policy(engine, {**record, "exec_id": exec_id}, wanted)
    inst = Instance(spec, policy, engine)
    inst.pid = inst._pgid = identity.pid
    inst.start_ticks = identity.start_ticks
    inst.adopted = not as_child
    inst.state = State.RUNNING
    inst.want_running = True
    inst.restarts = int(record.get("restarts") or 0)
    started = identity.start_ticks / TICKS_PER_SECOND  # CLOCK_BOOTTIME of its fork
    age = max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    inst.started_boottime = started
    inst.started_at = time.monotonic() - age
    inst.started_wall = time.time() - age
    inst._log_offset = os.stat(inst.log_file).st_size if os.path.exists(inst.log_file) else 0
    _install(engine, inst)
    return inst


def adopt_previous(engine: Engine, children: bool = False) -> int:
    """Take over the executors a dead daemon left running that this farm still wants (exact
    identity only: see procid); reconcile then starts only the missing ones. Returns how many."""
    wanted = {e: v for e, v in engine.desired().items() if e not in engine.held}
    adopted = 0
    for exec_id, record in read_records(engine.state_file).items():
        if exec_id not in engine.instances and adopt_one(engine, exec_id, record, wanted, children) is not None:
            adopted += 1
    return adopted


def leftovers(engine: Engine) -> list[int]:
    """Pids of the processes a dead daemon's state file names that are still exactly those
    processes and that the engine has not adopted: to be stopped, never run twice."""
    found = []
    for exec_id, record in read_records(engine.state_file).items():
        if exec_id in engine.instances:
            continue  # adopted
        identity = Identity.from_record(record)
        if identity is not None:
            if identity.is_alive_as(exec_id):
                found.append(identity.pid)
            continue
        try:  # written by a version that recorded psutil's create_time instead
            pid, created = int(record["pid"]), record.get("create_time")
        except (KeyError, TypeError, ValueError):
            continue
        if created is not None and procfs.is_running(pid, created) \
                and procfs.environ_value(pid, "ET_EXEC_ID") == exec_id:
            found.append(pid)
    return found


def read_records(path: os.PathLike[str] | str) -> dict[str, dict[str, Any]]:
    """exec id -> identity record from an instances.json (empty when missing or unreadable)."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    records = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(records, dict):
        return {}
    boot = data.get("boot_id")
    return {k: {"boot_id": boot, **v} for k, v in records.items() if isinstance(k, str) and isinstance(v, dict)}
