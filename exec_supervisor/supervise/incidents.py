"""Incidents: correlated failures of a type become one incident, and its restarts are paced.

Owns the failure window of each type, the open incidents (one type's, or farm-wide when
several types open together), their three events (incident_opened, incident_digest,
incident_resolved), which instance events are folded into an incident (Event.folded: the
forwarder spools and counts them but does not post them), and the restart gate of a type
while its incident is open (one shared backoff, probe first, then batches).

The engine feeds it: `before()`/`after()` around each instance event it publishes,
`restart_delay()` and `admit()` from the instance's one restart path, `state_changed()`.
It never spawns, signals or stops a process: an admitted instance starts itself.

Rules (README, Incidents):
- a type's incident opens when `threshold` distinct instances (a count, or a share of its
  instances) failed (crashed, failed a start, gave up) within `window`;
- a type reaching its threshold while another type's incident opened less than `window`
  ago joins it: one farm-wide incident (the shared cause is then the service or the host);
  the opening is announced `group_wait` after the first type's, naming every type by then;
- it resolves once every wanted instance of its types has run `resolve_after` without a
  failure; a last digest first accounts for every event folded since the one before.
"""

from __future__ import annotations

import asyncio
import collections
import math
import re
import time
from typing import Any, Protocol

from ..config import ExecutorType, Incidents
from ..events import INSTANCE_EVENT_LEVELS, Event
from .restartgate import Gate, Ticket
from .timers import backoff_delay

# A failed health check or start_timeout stops the instance and ends as a crashed event with its cause.
FAILURES = ("crashed", "fatal")
WINDOW_MAX = 10_000  # failures kept per type: a bound, whatever the crash rate
RECENT_MAX = 20  # resolved incidents kept for `exec-supervisor incidents`

# Masks, applied in this order: what varies between instances of one failure, not its kind.
_MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d)?([.,]\d+)?(Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (re.compile(r"\b\d\d:\d\d:\d\d([.,]\d+)?\b"), "<time>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\[[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\]"), "<addr>"),  # [::1], [fe80::2]
    (re.compile(r"(?<![\w:])(?:(?:[0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{1,4}|[0-9a-fA-F:]*::[0-9a-fA-F:]*)(?![\w:])"),
     "<addr>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<addr>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b[0-9a-fA-F]{12,}\b"), "<hex>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
]


def normalise(line: str) -> str:
    """A last output line with what differs between instances masked: times, ids, addresses, numbers."""
    for pattern, mask in _MASKS:
        line = pattern.sub(mask, line)
    return line.strip()[:300]


def last_line(event: Event) -> str:
    if event.detail.get("error"):
        return str(event.detail["error"])
    for line in reversed((event.output or "").splitlines()):
        if line.strip():
            return line.strip()[:500]
    return ""


def how_ended(event: Event) -> str:
    if event.detail.get("error"):
        return "could not start"
    if event.detail.get("cause"):  # stopped by a health check or start_timeout
        return normalise(f"stopped for {event.detail['cause']}")
    if event.detail.get("status_unknown"):
        return "exit status unknown"
    if event.signal:
        return f"signal {event.signal}"
    return f"exit code {event.exit_code}"


def threshold_of(cfg: Incidents, instances: int) -> int:
    """Distinct failed instances that open an incident: the lowest of the configured counts and shares
    (a share never asks for fewer than 2: one instance's crash loop is its own backoff's business)."""
    found = []
    for item in cfg.threshold:
        if item.endswith("%"):
            found.append(max(2, math.ceil(float(item[:-1]) / 100 * instances)))
        else:
            found.append(int(item))
    return min(found) if found else 3


class Host(Protocol):
    """What the tracker needs of the engine."""

    supervisor_name: str

    def members(self, type_name: str) -> list[Any]: ...  # the type's wanted instances
    def count(self, type_name: str) -> int: ...  # how many instances the type has (its ids)
    def policy_of(self, type_name: str) -> ExecutorType | None: ...
    def announce(self, event: Event) -> None: ...  # publish an incident event


class Incident:
    """One open (or resolved) incident: its types, what their failures have in common, what was folded."""

    def __init__(self, number: int, type_name: str, cfg: Incidents) -> None:
        self.id = f"INC-{number}"
        self.types = [type_name]
        self.cfg = cfg  # the settings of the type that opened it (digest_every, resolve_after, group_wait)
        self.opened_mono = time.monotonic()
        self.opened_wall = time.time()
        self.announced = False
        self.resolved_wall: float | None = None
        self.failures = 0
        self.since = 0  # failures since the last digest
        self.first_failure = self.last_failure = self.opened_mono
        self.hit: dict[str, None] = {}  # exec ids, in order of their first failure
        self.exits: collections.Counter[str] = collections.Counter()
        self.lines: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, tuple[str, str, str]] = {}  # normalised line -> (exec id, how, full line)
        self.folded = 0  # since the last digest
        self.folded_total = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.last_digest = self.opened_mono
        self.handle: asyncio.TimerHandle | None = None

    @property
    def scope(self) -> str:
        return "farm" if len(self.types) > 1 else "type"

    def add(self, record: tuple[float, str, str, str, str]) -> None:
        when, exec_id, how, norm, line = record
        if not self.failures:
            self.first_failure = when
        self.failures += 1
        self.since += 1
        self.last_failure = max(self.last_failure, when)
        self.hit.setdefault(exec_id, None)
        self.exits[how] += 1
        if norm:
            self.lines[norm] += 1
            self.examples.setdefault(norm, (exec_id, how, line))

    def fold(self, seq: int) -> None:
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        self.folded += 1
        self.folded_total += 1

    def common(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.exits:
            found["exit"], found["exit_count"] = self.exits.most_common(1)[0]
        if self.lines:
            line, found["line_count"] = self.lines.most_common(1)[0]
            found["line"] = line
            exec_id, how, full = self.examples[line]
            found["example"] = {"exec_id": exec_id, "exit": how, "line": full}
        elif self.hit:
            found["example"] = {"exec_id": next(iter(self.hit)), "exit": found.get("exit"), "line": ""}
        return found

    def view(self) -> dict[str, Any]:
        return {"incident": self.id, "scope": self.scope, "types": list(self.types), "opened": self.opened_wall,
                "resolved": self.resolved_wall, "failures": self.failures, "hit": len(self.hit),
                "folded": self.folded_total, **self.common()}


class Tracker:
    """Every type's failure window, the open incidents and the gates of their types."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._windows: dict[str, collections.deque[tuple[float, str, str, str, str]]] = {}
        self._open: dict[str, Incident] = {}  # type -> its open incident (one incident may hold several types)
        self._gates: dict[str, Gate] = {}
        self.recent: collections.deque[Incident] = collections.deque(maxlen=RECENT_MAX)
        self._number = 0

    # ------------------------------------------------------------------ fed by the engine

    def before(self, event: Event) -> None:
        """An instance event about to be published: fold it into its type's open incident."""
        incident = self._open.get(event.type or "")
        if incident is not None and event.event in INSTANCE_EVENT_LEVELS:
            policy = self.host.policy_of(event.type or "")
            if policy is not None and policy.incidents is not None and policy.incidents.forward == "digest":
                event.folded = incident.id

    def after(self, event: Event) -> None:
        """An instance event was published (the forwarder gave it its seq)."""
        if event.folded is not None and event.seq is not None:
            incident = self._open.get(event.type or "")
            if incident is not None and incident.id == event.folded:
                incident.fold(event.seq)
        if event.event in FAILURES and event.type is not None and event.exec_id is not None:
            self._failed(event)

    def state_changed(self, instance: Any) -> None:
        gate = self._gates.get(instance.spec.type)
        if gate is None or instance is not gate.probe:
            return
        state = instance.state.value
        if state == "running":
            gate.up(instance, [i for i in self.host.members(gate.type)
                               if i.state.value == "backoff" and i.want_running and i is not instance])
        elif state not in ("starting", "backoff"):
            gate.gone(instance)

    def restart_delay(self, instance: Any, failures: int) -> float:
        """The delay before an instance's next start: its own backoff, or its type's gate while gated."""
        gate = self._gates.get(instance.spec.type)
        if gate is None:
            return backoff_delay(instance.policy, failures)
        gate.policy = instance.policy  # a reload may have changed the backoff
        return gate.failed(instance, time.monotonic())

    def admit(self, instance: Any) -> Ticket | None:
        """None: start now. A ticket: the type's gate starts it later (it is the instance's timer)."""
        gate = self._gates.get(instance.spec.type)
        return None if gate is None else gate.admit(instance)

    # ------------------------------------------------------------------ opening

    def _failed(self, event: Event) -> None:
        type_name = event.type or ""
        policy = self.host.policy_of(type_name)
        cfg = policy.incidents if policy is not None else None
        if policy is None or cfg is None:
            return
        now = time.monotonic()
        line = last_line(event)
        record = (now, event.exec_id or "", how_ended(event), normalise(line), line)
        incident = self._open.get(type_name)
        if incident is not None:
            incident.add(record)
            return
        window = self._windows.get(type_name)
        if window is None:
            window = self._windows[type_name] = collections.deque(maxlen=WINDOW_MAX)
        window.append(record)
        while window and window[0][0] < now - cfg.window:
            window.popleft()
        if len({r[1] for r in window}) < threshold_of(cfg, self.host.count(type_name)):
            return
        self._open_type(type_name, policy, cfg, window, now)

    def _open_type(self, type_name: str, policy: ExecutorType, cfg: Incidents,
                   window: collections.deque[tuple[float, str, str, str, str]], now: float) -> None:
        # Types opening within one window of each other share a cause: one farm-wide incident.
        joined = next((i for i in dict.fromkeys(self._open.values()) if now - i.opened_mono <= cfg.window), None)
        if joined is None:
            self._number += 1
            incident = Incident(self._number, type_name, cfg)
        else:
            incident = joined
            incident.types.append(type_name)
        for record in window:
            incident.add(record)
        window.clear()
        self._open[type_name] = incident
        self._gates[type_name] = Gate(type_name, policy)
        if joined is not None:
            return
        loop = asyncio.get_running_loop()
        if cfg.group_wait > 0:
            incident.handle = loop.call_later(cfg.group_wait, self._announce, incident)
        else:
            self._announce(incident)

    def _announce(self, incident: Incident) -> None:
        incident.announced = True
        incident.last_digest = time.monotonic()
        incident.since = 0
        cfg = incident.cfg
        self._publish("incident_opened", "error", incident, {
            "failed": len(incident.hit), "of": sum(self.host.count(t) for t in incident.types),
            "failures": incident.failures, "within": round(incident.last_failure - incident.first_failure, 3),
            "forward": cfg.forward, "digest_every": cfg.digest_every, "resolve_after": cfg.resolve_after,
            **incident.common()})
        self._tick(incident)

    # ------------------------------------------------------------------ while open

    def _tick(self, incident: Incident) -> None:
        incident.handle = None
        if incident.types and self._open.get(incident.types[0]) is not incident:
            return  # resolved meanwhile
        now = time.monotonic()
        for type_name in list(incident.types):  # turned off or removed by a reload
            policy = self.host.policy_of(type_name)
            if policy is None or policy.incidents is None:
                self._release(incident, type_name)
        if not incident.types or self._healthy(incident, now):
            self._resolve(incident)
            return
        cfg = incident.cfg
        if now - incident.last_digest >= cfg.digest_every:
            if incident.since or incident.folded:
                self._digest(incident)
            incident.last_digest = now
        pace = max(0.05, min(1.0, cfg.resolve_after / 4, cfg.digest_every / 4))
        incident.handle = asyncio.get_running_loop().call_later(pace, self._tick, incident)

    def _healthy(self, incident: Incident, now: float) -> bool:
        after = incident.cfg.resolve_after
        if now - incident.last_failure < after:
            return False
        for type_name in incident.types:
            for instance in self.host.members(type_name):
                if instance.state.value != "running" or now - instance.started_at < after:
                    return False
        return True

    def _down(self, incident: Incident) -> tuple[int, int]:
        down = total = 0
        for type_name in incident.types:
            for instance in self.host.members(type_name):
                total += 1
                down += instance.state.value != "running"
        return down, total

    def _digest(self, incident: Incident, final: bool = False) -> None:
        down, total = self._down(incident)
        gates = [self._gates[t] for t in incident.types if t in self._gates]
        detail = {"failures": incident.since, "total_failures": incident.failures, "down": down, "of": total,
                  "restart_spacing": round(max((g.spacing for g in gates), default=0.0), 3),
                  "open_for": round(time.monotonic() - incident.opened_mono, 3), "folded": incident.folded}
        if incident.folded:
            detail.update(first_seq=incident.first_seq, last_seq=incident.last_seq)
        if final:
            detail["final"] = True  # the last one, as it resolves: off the digest_every rhythm
        incident.since = incident.folded = 0
        incident.first_seq = incident.last_seq = None
        self._publish("incident_digest", "warning", incident, detail)

    def _resolve(self, incident: Incident) -> None:
        if incident.handle is not None:
            incident.handle.cancel()
            incident.handle = None
        if incident.folded:  # every folded seq is named by a digest's range
            self._digest(incident, final=True)
        for type_name in list(incident.types):
            self._release(incident, type_name, keep=True)
        incident.resolved_wall = time.time()
        self.recent.append(incident)
        if incident.announced:
            self._publish("incident_resolved", "info", incident, {
                "duration": round(time.monotonic() - incident.opened_mono, 3), "failures": incident.failures,
                "exec_ids": list(incident.hit), "folded_total": incident.folded_total})

    def _release(self, incident: Incident, type_name: str, keep: bool = False) -> None:
        if self._open.get(type_name) is incident:
            del self._open[type_name]
        gate = self._gates.pop(type_name, None)
        if gate is not None:
            gate.close()
        if not keep and type_name in incident.types:
            incident.types.remove(type_name)

    def _publish(self, kind: str, level: str, incident: Incident, detail: dict[str, Any]) -> None:
        self.host.announce(Event(
            event=kind, level=level, supervisor=self.host.supervisor_name,
            type=incident.types[0] if incident.scope == "type" and incident.types else None,
            detail={"incident": incident.id, "scope": incident.scope, "types": list(incident.types), **detail}))

    # ------------------------------------------------------------------ views

    def snapshot(self) -> dict[str, Any]:
        """Open and recently resolved incidents (status, the control API, `exec-supervisor incidents`)."""
        opened = []
        for incident in dict.fromkeys(self._open.values()):
            view = incident.view()
            down, total = self._down(incident)
            gates = {t: self._gates[t] for t in incident.types if t in self._gates}
            view.update(state="open", down=down, of=total, announced=incident.announced,
                        restart_spacing={t: round(g.spacing, 3) for t, g in gates.items()},
                        waiting={t: sum(1 for k in g.queue if not k.cancelled) for t, g in gates.items()})
            opened.append(view)
        return {"open": opened, "recent": [dict(i.view(), state="resolved") for i in reversed(self.recent)]}

    def open_types(self) -> set[str]:
        return set(self._open)
