"""What the web page is shown: compact rows, the header, events and an instance's description.

Plain dicts made from the engine's state; JSON-ready. Secrets never enter them: an
instance's environment is shown by name only (no value at all), the names the config's
service.auth and http sections point at are left out even as names, and the event
pipeline's last error is the forwarder's own text (which never holds a token).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Iterable

from .. import __version__
from ..events import Event
from ..events.messages import format_message
from ..supervise.engine import secret_env_names
from ..supervise.instance import State
from .usage import UsageSampler

HOST = socket.gethostname()


def row(instance: Any, usage: UsageSampler | None = None, now: float | None = None,
        trees: dict[Any, Any] | None = None) -> dict[str, Any]:
    """One instance as the page's table shows it (short keys: 1000 of them travel at once)."""
    live = instance.pid is not None and instance.state in (State.STARTING, State.RUNNING, State.STOPPING)
    data: dict[str, Any] = {
        "e": instance.spec.exec_id,
        "t": instance.spec.type,
        "i": instance.spec.id,
        "s": instance.state.value,
        "p": instance.pid,
        "st": instance.started_wall if live else None,
        "r": instance.restarts,
        "x": _exit(instance.last_exit),
    }
    if usage is not None and instance.pid is not None:
        figures = usage.of(instance, trees, time.monotonic() if now is None else now)
        if figures is not None:
            cpu, rss, percent = figures
            data["c"] = percent if percent is not None else lifetime_percent(cpu, instance)
            data["m"] = rss
    return data


def lifetime_percent(cpu: float, instance: Any) -> float | None:
    """CPU % over the process's life so far: the first figure, before two samples give a recent one."""
    if not instance.started_wall:
        return None
    return round(100.0 * cpu / max(time.time() - instance.started_wall, 0.01), 1)


def _exit(last: dict[str, Any] | None) -> dict[str, Any] | None:
    if not last:
        return None
    return {"code": last.get("exit_code"), "signal": last.get("signal"), "time": last.get("time"),
            "error": last.get("error")}


def removed(exec_id: str) -> dict[str, Any]:
    return {"e": exec_id, "gone": True}


def header(daemon: Any, actions: bool) -> dict[str, Any]:
    engine = daemon.engine
    by_state: dict[str, int] = {}
    types: dict[str, dict[str, int]] = {name: {"running": 0, "desired": 0, "instances": 0}
                                        for name in engine.config.executors}
    for instance in engine.instances.values():
        state = instance.state.value
        by_state[state] = by_state.get(state, 0) + 1
        counts = types.setdefault(instance.spec.type, {"running": 0, "desired": 0, "instances": 0})
        counts["instances"] += 1
        counts["desired"] += instance.want_running
        counts["running"] += instance.state is State.RUNNING
    return {
        "name": daemon.config.name,
        "host": HOST,
        "version": __version__,
        "pid": os.getpid(),
        "started": daemon.started_at,
        "now": time.time(),
        "stopping": bool(engine.stopping),
        "running": by_state.get("running", 0),
        "desired": sum(c["desired"] for c in types.values()),
        "instances": len(engine.instances),
        "states": by_state,
        "types": [{"type": name, **counts} for name, counts in types.items()],
        "pipeline": pipeline(daemon.forwarder),
        "language": daemon.config.events.language,
        "actions": actions,
    }


def pipeline(forwarder: Any) -> dict[str, Any]:
    """delivering / backlog N, oldest M s / 401: configure auth, as data for the header."""
    if forwarder is None:
        return {"forwarding": False}
    try:
        backlog = forwarder.backlog()
    except Exception as exc:  # a spool problem must not break the page
        return {"forwarding": True, "state": "error", "last_error": str(exc)}
    return {
        "forwarding": True,
        "state": backlog.get("state"),
        "backlog": backlog.get("count") or 0,
        "oldest_age": backlog.get("oldest_age"),
        "delivered": backlog.get("delivered") or 0,
        "dead_letters": backlog.get("dead_letters") or 0,
        "dropped": backlog.get("dropped") or 0,
        "last_error": backlog.get("last_error"),
    }


def event(item: Event) -> dict[str, Any]:
    """An event with its message in both languages (the page switches without asking again)."""
    return {
        "event": item.event,
        "level": item.level,
        "exec_id": item.exec_id,
        "type": item.type,
        "time": item.time,
        "en": format_message(item, "en"),
        "zh": format_message(item, "zh"),
    }


def events(items: Iterable[Event]) -> list[dict[str, Any]]:
    return [event(item) for item in items]


def hidden_env_names(config: Any) -> set[str]:
    """Names the config marks as holding secrets (service.auth, http.token_env): never shown, not even as names."""
    return set(secret_env_names(config))


def describe(instance: Any, config: Any) -> dict[str, Any]:
    """The instance's detail panel: command line, cwd, environment names, log file."""
    spec = instance.spec
    hidden = hidden_env_names(config)
    own = [name for name, _ in spec.env if name not in hidden]
    inherited = sum(1 for name in os.environ if name not in dict(spec.env) and name not in hidden)
    return {
        "exec_id": spec.exec_id,
        "type": spec.type,
        "id": spec.id,
        "argv": list(spec.argv),
        "cwd": spec.cwd,
        "env_names": own,
        "env_inherited": inherited,
        "log": instance.log_file,
        "restart": instance.policy.restart,
        "start_seconds": instance.policy.start_seconds,
    }
