"""Read-only views of the farm: the endpoint index, health, status, and one instance described.

Owns what `GET /v1`, `/v1/health`, `/v1/status` and `/v1/describe/<exec-id>` answer. These handlers only read
the daemon and the engine; they must never change the desired state (that is
commands.py) and never stream (that is streams.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import TYPE_CHECKING, Any

from ... import __version__
from ...config.farm import shown_argv
from ...supervise import osproc
from ...supervise.instance import Instance, State
from ..httpserver import HttpError as ApiError, Request, Response, json_response as _json
from ..params import EXEC_ID_RE, known_instance, select, shorten
from ..route import Route

STATUS_BATCH = 256  # rows between yields to the loop (each row reads /proc for CPU and RSS)

if TYPE_CHECKING:
    from ..server import ControlServer


async def index(ctl: ControlServer, request: Request) -> Response:
    return _json({
        "service": "exec-supervisor", "version": __version__,
        "endpoints": [route.shown for route in ctl.routes if route.listed],
    })


async def health(ctl: ControlServer, request: Request) -> Response:
    return _json({"ok": True, "pid": os.getpid(), "version": __version__, "state": ctl.state(),
                  "name": ctl.daemon.config.name, "upgrades": ctl.daemon.upgrades,
                  "last_upgrade": ctl.daemon.last_upgrade})


def _trees(ctl: ControlServer) -> dict[Instance, Any] | None:
    """Whole-tree CPU and RSS of every instance (one /proc pass), when the health extension runs."""
    health = ctl.engine.health
    return health.memory.fresh() if health is not None and health.memory is not None else None


def _row(ctl: ControlServer, instance: Instance, trees: dict[Instance, Any] | None) -> dict[str, Any]:
    row = instance.snapshot()
    cpu = rss = None
    if trees is not None:  # the whole tree's figures (a PyInstaller program, not its bootloader)
        figures = trees.get(instance)
        if figures is not None:
            cpu, rss = figures.cpu_percent, figures.rss
            row["processes"] = figures.processes
    elif instance.pid is not None:
        cpu, rss = ctl.stats.sample(instance.pid)
    row["cpu_percent"] = cpu
    row["rss"] = rss
    row["held"] = instance.spec.exec_id in ctl.engine.held
    row["desired"] = instance.want_running  # wanted running: `status` exits 4 when one of these is not
    row["log"] = instance.log_file if instance.log_file is not None else "stdout"
    forwarder = ctl.daemon.forwarder
    # The instance's own log lines the supervisor delivers for it: relayed, pending, dropped.
    row["lines"] = forwarder.lines.of(instance.spec.exec_id) if forwarder is not None else None
    return row


async def status(ctl: ControlServer, request: Request) -> Response:
    target = request.query.get("target") or "all"
    engine = ctl.engine
    instances = select(engine, target)
    trees = _trees(ctl) if instances else None
    rows = []
    for count, instance in enumerate(instances, 1):
        rows.append(_row(ctl, instance, trees))
        if count % STATUS_BATCH == 0:
            await asyncio.sleep(0)  # a farm of thousands: health and signals are served meanwhile
    ctl.stats.prune({i.pid for i in engine.instances.values() if i.pid is not None} | {os.getpid()})
    members: dict[str, list[Instance]] = {}
    for instance in engine.instances.values():  # one pass, whatever the number of types
        members.setdefault(instance.spec.type, []).append(instance)
    shown_types = {i.spec.type for i in instances} | ({target} if target in engine.config.executors else set())
    types = []
    for type_name in engine.config.executors:
        if target not in ("all", "*") and type_name not in shown_types:
            continue
        group = members.get(type_name, [])
        scaled = type_name in engine.scaled
        types.append({
            "type": type_name,
            "running": sum(1 for i in group if i.state is State.RUNNING),
            "desired": sum(1 for i in group if i.want_running),
            "instances": len(group),
            "configured": len(engine.config.ids_of(type_name)),
            "scaled": len(engine.ids_of(type_name)) if scaled else None,
            "scaled_at": engine.scaled_at.get(type_name) if scaled else None,
            "ids": compact_ids(engine.ids_of(type_name)),
            "configured_ids": compact_ids(engine.config.ids_of(type_name)),
            "held": sum(1 for i in group if i.spec.exec_id in engine.held),
        })
    cpu, rss = ctl.stats.sample(os.getpid())
    counts = engine.counts()
    daemon = ctl.daemon
    supervisor = {
        "name": daemon.config.name,
        "pid": os.getpid(),
        "version": __version__,
        "state": ctl.state(),
        "started": daemon.started_at,
        "uptime": round(time.time() - daemon.started_at, 3),
        "config": str(daemon.config.path),
        "socket": str(ctl.path),
        "state_dir": str(daemon.config.state_dir),
        "log_dir": str(daemon.config.log_dir),
        "cpu_percent": cpu,
        "rss": rss,
        "running": counts["running"],
        "desired": counts["desired"],
        "instances": counts["instances"],
        "forwarding": daemon.forwarder is not None,
        "backlog": ctl.backlog(),
        "health": engine.health.view() if engine.health is not None else None,
        # The http: listener's URL (observe/web.py), None when it does not listen.
        "http": next((e.url for e in daemon.extensions if getattr(e, "url", None)), None),
    }
    return _json({"supervisor": supervisor, "containment": engine.containment_info(), "types": types,
                  "instances": rows, "incidents": engine.incidents.snapshot()["open"]})


async def incidents(ctl: ControlServer, request: Request) -> Response:
    """Open incidents and the recently resolved ones (newest first)."""
    return _json(ctl.engine.incidents.snapshot())


# Environment values never leave the daemon when their name looks like a secret's.
SECRET_NAME_RE = re.compile(r"(?i)pass(word|wd|phrase)?|secret|token|api_?key|auth|credential|private|cookie|"
                            r"session|signature|(^|_)key$|dsn|cert")
MASK = "********"


def masked_env(env: Any) -> dict[str, str]:
    return {name: MASK if SECRET_NAME_RE.search(name) else value for name, value in env}


async def describe(ctl: ControlServer, request: Request) -> Response:
    exec_id = request.match_info.get("exec_id", "")
    if not EXEC_ID_RE.fullmatch(exec_id):
        raise ApiError(400, f"{shorten(exec_id)!r} is not an exec id (ET-<Name>-<id>)")
    instance = known_instance(ctl.engine, exec_id)
    info = _row(ctl, instance, _trees(ctl))
    policy = instance.policy
    info.update({
        "argv": shown_argv(instance.spec.argv, instance.spec.cwd),
        "cwd": instance.spec.cwd,
        "env": masked_env(instance.spec.env),
        "env_note": "plus the supervisor's own environment",
        "policy": {
            "restart": policy.restart, "start_seconds": policy.start_seconds,
            "max_restarts": policy.max_restarts, "restart_window": policy.restart_window,
            "stop_signal": osproc.signal_name(policy.stop_signal), "stop_timeout": policy.stop_timeout,
        },
        "history": [{"time": when, "state": state.value, "reason": reason} for when, state, reason in instance.history],
    })
    return _json(info)


def compact_ids(ids: Any) -> str:
    """(0, 1, 2, 3, 10) -> '0-3,10'."""
    parts: list[str] = []
    run: list[int] = []
    for number in sorted(ids):
        if run and number == run[-1] + 1:
            run.append(number)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [number]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


ROUTES = [
    Route("GET", "", index, listed=False),
    Route("GET", "/", index, listed=False),
    Route("GET", "/health", health),
    Route("GET", "/status", status, query="?target="),
    Route("GET", "/describe/{exec_id}", describe),
    Route("GET", "/incidents", incidents),
]
