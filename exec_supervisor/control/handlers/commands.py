"""Operator commands: scale, start, stop, restart, reload, shutdown.

Owns the endpoints that change the farm. Each one only changes the engine's desired
(or known) state through the engine's own methods and lets the reconcile loop act;
then, when asked to wait, it waits for the instances to settle and names the ones
that did not. It must never start, signal or stop a process itself.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any, Awaitable

from ...config import parse_ids
from ...supervise.engine import CommandFailed
from ...supervise.instance import AT_REST, Instance, State
from ..httpserver import HttpError as ApiError, Request, Response, json_response as _json
from ..params import TYPE_RE, body_of, count, flag, known_type, number, select
from ..route import Route

if TYPE_CHECKING:
    from ..server import ControlServer

MAX_INSTANCES_PER_TYPE = 100_000
MAX_WAIT_SECONDS = 3600.0


def _max_policy(instances: list[Instance], attribute: str, default: float) -> float:
    return max((getattr(i.policy, attribute) for i in instances), default=default)


def _settle_budget(instances: list[Instance]) -> float:
    return _max_policy(instances, "stop_timeout", 10.0) + _max_policy(instances, "start_seconds", 3.0) + 60.0


def _describe(ctl: ControlServer, exec_ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for exec_id in exec_ids:
        instance = ctl.engine.instances.get(exec_id)
        out.append({"exec_id": exec_id, "state": instance.state.value if instance else "gone",
                    "last_exit": instance.last_exit if instance else None})
    return out


async def scale(ctl: ControlServer, request: Request) -> Response:
    body = await body_of(request)
    ctl.check_running()
    changes = body.get("scale")
    if not isinstance(changes, dict) or not changes:
        raise ApiError(400, 'scale needs {"scale": {"<Type>": <count> | "<ids like 0-4,10>"}}')
    wait = flag(body.get("wait"), "wait", False)
    timeout = number(body.get("timeout"), "timeout", None, 0, MAX_WAIT_SECONDS)
    engine = ctl.engine
    plan: list[tuple[str, int | None, tuple[int, ...] | None]] = []
    for type_name, value in changes.items():
        if not isinstance(type_name, str) or not TYPE_RE.fullmatch(type_name):
            raise ApiError(400, f"{type_name!r} is not a type name")
        known_type(engine, type_name)
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= MAX_INSTANCES_PER_TYPE:
                raise ApiError(400, f"{type_name}: count must be between 0 and {MAX_INSTANCES_PER_TYPE}, "
                                    f"got {value}")
            plan.append((type_name, value, None))
        elif value == "config":  # `scale --reset`: the config's ids again (the runtime scale is dropped)
            plan.append((type_name, None, engine.config.ids_of(type_name)))
        elif isinstance(value, (str, list)):
            try:
                ids = parse_ids(value)
            except ValueError as exc:
                raise ApiError(400, f"{type_name}: {exc}") from None
            plan.append((type_name, None, ids))
        else:
            raise ApiError(400, f"{type_name}: expected a count (like 10) or ids (like \"0-4,10\"), "
                                f"got {json.dumps(value)[:60]}")
    plan = [_within_share(engine.config, *step) for step in plan]
    # The whole request is checked before any of it applies: one type's scale never lands alone.
    new_ids: dict[str, tuple[int, ...]] = {}
    for type_name, wanted, ids in plan:
        try:
            new_ids[type_name] = engine.scaled_ids(type_name, wanted, ids)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    problem = engine.over_limit(new_ids)
    if problem:
        raise ApiError(400, f"scale refused: {problem}")
    results = await _recorded(engine.scale(new_ids))
    lagging: list[str] = []
    if wait:
        budget = timeout if timeout is not None else _settle_budget(
            [i for i in engine.instances.values() if i.spec.type in changes])
        lagging = await engine.wait_settled([t for t, _, _ in plan], budget)
    answer: dict[str, Any] = {"ok": not lagging, "results": results}
    if wait:
        answer["lagging"] = _describe(ctl, lagging)
        if lagging:
            answer["error"] = f"{len(lagging)} instance(s) did not reach their target in time"
    return _json(answer)


def _within_share(config: Any, type_name: str, count: int | None,
                  ids: tuple[int, ...] | None) -> tuple[str, int | None, tuple[int, ...] | None]:
    """With hosts:, a scale stays within this host's share: a count takes the share's first ids."""
    executor = config.executors[type_name]
    if executor.hosts is None:
        return type_name, count, ids
    share = config.ids_of(type_name)
    shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in _ranges(share)) or "none"
    if count is not None:
        if count > len(share):
            raise ApiError(400, f"{type_name}: this host ({config.name}) runs ids {shown} of hosts: ({len(share)}); "
                                f"scale to at most {len(share)} here, or change hosts: in the config")
        return type_name, None, share[:count]
    outside = sorted(set(ids or ()) - set(share))
    if outside:
        raise ApiError(400, f"{type_name}: ids {', '.join(map(str, outside[:10]))} are not in this host's share "
                            f"({config.name}: {shown}); another host runs them, or change hosts: in the config")
    return type_name, None, ids


def _ranges(ids: tuple[int, ...]) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for value in ids:
        if found and value == found[-1][1] + 1:
            found[-1] = (found[-1][0], value)
        else:
            found.append((value, value))
    return found


async def _recorded(change: Awaitable[Any]) -> Any:
    """Await an engine command; one that could not be recorded changed nothing: 503, said so."""
    try:
        return await change
    except CommandFailed as exc:
        raise ApiError(503, str(exc)) from None


async def _command_args(ctl: ControlServer,
                        request: Request) -> tuple[list[Instance], dict[str, Any], bool, float | None]:
    body = await body_of(request)
    ctl.check_running()
    instances = select(ctl.engine, body.get("target"))
    wait = flag(body.get("wait"), "wait", True)
    timeout = number(body.get("timeout"), "timeout", None, 0, MAX_WAIT_SECONDS)
    return instances, body, wait, timeout


async def start(ctl: ControlServer, request: Request) -> Response:
    instances, body, wait, timeout = await _command_args(ctl, request)
    instances = ctl.engine.not_retiring(instances)
    await _recorded(ctl.engine.start_instances(instances))
    budget = timeout if timeout is not None else _max_policy(instances, "start_seconds", 3.0) + 30
    return await _settled(ctl, body["target"], instances, wait, budget, (State.RUNNING,))


async def stop(ctl: ControlServer, request: Request) -> Response:
    instances, body, wait, timeout = await _command_args(ctl, request)
    await _recorded(ctl.engine.stop_instances(instances))
    budget = timeout if timeout is not None else _max_policy(instances, "stop_timeout", 10.0) + 10
    return await _settled(ctl, body["target"], instances, wait, budget, AT_REST)


async def restart(ctl: ControlServer, request: Request) -> Response:
    instances, body, wait, timeout = await _command_args(ctl, request)
    instances = ctl.engine.not_retiring(instances)
    rolling = flag(body.get("rolling"), "rolling", False)
    if rolling:
        failed = await _recorded(ctl.engine.restart_instances(instances, rolling=True))
        answer: dict[str, Any] = {"ok": not failed, "target": body["target"], "rolling": True,
                                  "instances": [i.spec.exec_id for i in instances]}
        if failed:
            done = [i.spec.exec_id for i in instances]
            rest = done[done.index(failed[0]) + 1:] if failed[0] in done else []
            answer["lagging"] = _describe(ctl, failed)
            answer["not_restarted"] = rest
            answer["error"] = (f"{failed[0]} did not come back to running; "
                               f"{len(rest)} instance(s) after it were not restarted")
        return _json(answer)
    await _recorded(ctl.engine.restart_instances(instances, rolling=False))
    budget = timeout if timeout is not None else _settle_budget(instances)
    return await _settled(ctl, body["target"], instances, wait, budget, (State.RUNNING,))


async def _settled(ctl: ControlServer, target: str, instances: list[Instance], wait: bool, budget: float,
                   states: tuple[State, ...]) -> Response:
    answer: dict[str, Any] = {"ok": True, "target": target, "instances": [i.spec.exec_id for i in instances]}
    if not wait or not instances:
        return _json(answer)
    if states == AT_REST:
        async def settle(instance: Instance) -> bool:
            try:
                await asyncio.wait_for(instance.wait_at_rest(), budget)
                return True
            except asyncio.TimeoutError:
                return False
    else:
        # fatal/exited end the wait early: they will not reach running by themselves.
        async def settle(instance: Instance) -> bool:
            await instance.wait_until(states + (State.FATAL, State.EXITED), budget)
            return instance.state in states
    results = await asyncio.gather(*(settle(i) for i in instances))
    lagging = [i.spec.exec_id for i, ok in zip(instances, results) if not ok]
    if lagging:
        answer["ok"] = False
        answer["lagging"] = _describe(ctl, lagging)
        wanted = "/".join(s.value for s in states)
        answer["error"] = f"{len(lagging)} of {len(instances)} instance(s) did not reach {wanted}"
    return _json(answer)


async def reload(ctl: ControlServer, request: Request) -> Response:
    body = await body_of(request)
    ctl.check_running()
    dry_run = flag(body.get("dry_run"), "dry_run", False)
    rolling = flag(body.get("rolling"), "rolling", False)
    batch = max(1, count(body.get("batch"), "batch", 1, MAX_INSTANCES_PER_TYPE))
    result = await ctl.daemon.reload(dry_run=dry_run, rolling=rolling, batch=batch)
    if not result.get("ok") and result.get("errors"):
        return _json({"error": "the new config has errors; nothing was changed", **result}, 422)
    return _json(result)


def _signal_number(value: Any) -> int:
    """HUP, SIGHUP, hup, 1 or "1" -> 1 (the config's own reading of stop_signal); anything else is refused."""
    from ...config.values import parse_signal

    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip()) if len(value.strip()) < 4 else -1
    try:
        return parse_signal(value)
    except ValueError as exc:
        raise ApiError(400, f"signal: {exc}") from None


async def send_signal(ctl: ControlServer, request: Request) -> Response:
    body = await body_of(request)
    ctl.check_running()
    instances = select(ctl.engine, body.get("target"))
    number = _signal_number(body.get("signal"))
    sent, skipped = ctl.engine.signal_instances(instances, number)
    return _json({"ok": bool(sent) or not instances, "target": body["target"], "signal": number,
                  "signalled": sent, "skipped": skipped,
                  **({} if sent or not instances else {"error": "no instance of the target is running"})})


async def shutdown(ctl: ControlServer, request: Request) -> Response:
    await body_of(request)
    running = ctl.engine.live_count()
    already = ctl.is_stopping
    asyncio.get_running_loop().call_soon(ctl.daemon.request_stop, "shutdown requested over the control socket")
    return _json({"ok": True, "pid": os.getpid(), "instances": running, "already_stopping": already}, 202)


ROUTES = [
    Route("POST", "/scale", scale),
    Route("POST", "/start", start),
    Route("POST", "/stop", stop),
    Route("POST", "/restart", restart),
    Route("POST", "/reload", reload),
    Route("POST", "/signal", send_signal),
    Route("POST", "/shutdown", shutdown),
]
