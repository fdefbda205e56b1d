"""What reconcile does to one instance, as a pure decision, so `reload --dry-run` asks the very same question.

Owns the decision table; it must not act (the engine starts, stops and restarts).
"""

from __future__ import annotations

from typing import Any, Callable

from ..config import ExecutorType, InstanceSpec
from .instance import AT_REST, Instance, State

# An action's name in the lists reconcile and plan fill.
DONE = {"start": "started", "stop": "stopped", "restart": "restarted", "unchanged": "unchanged"}


def decide(exec_id: str, instance: Instance | None, spec: InstanceSpec | None, held: bool, retiring: bool) -> str:
    """One of start, stop, restart, unchanged, forget (removed while at rest: dropped silently), none.

    spec is None when the instance is not wanted; held: `stop` keeps it stopped; retiring: it is
    being stopped because it is no longer wanted."""
    if spec is None:
        if instance is None or retiring:
            return "none"
        return "forget" if instance.settled and not instance.want_running else "stop"
    if instance is None:
        return "none" if held else "start"
    if retiring and not held:
        return "start"  # wanted again while it stopped: bring it back
    if held:
        return "stop" if instance.want_running or instance.state not in AT_REST else "none"
    if instance.state is State.STOPPED and not instance.want_running:
        return "start"
    if spec.launch_key != instance.spec.launch_key and instance.state not in AT_REST:
        return "restart"
    return "unchanged"


def plan_changes(wanted: dict[str, tuple[InstanceSpec, ExecutorType]], instances: dict[str, Instance],
                 decide_one: Callable[[str, Any, Any], str]) -> dict[str, list[str]]:
    """The exec ids that would be started, stopped, restarted and left unchanged."""
    changes: dict[str, list[str]] = {name: [] for name in DONE.values()}
    for exec_id, instance in instances.items():
        if exec_id not in wanted and (action := decide_one(exec_id, instance, None)) in DONE:
            changes[DONE[action]].append(exec_id)
    for exec_id, (spec, _) in wanted.items():
        if (action := decide_one(exec_id, instances.get(exec_id), spec)) in DONE:
            changes[DONE[action]].append(exec_id)
    return changes
