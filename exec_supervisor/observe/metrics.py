"""Prometheus metrics, built from the engine's live state at scrape time.

Nothing is updated on events: a scrape reads the instances, the event bus's counts and
the forwarder's accounting as they are, so a farm nobody scrapes pays nothing (this
module, and prometheus_client with it, is imported at the first scrape).

Two parts, one exposition (text format 0.0.4):

- `FarmCollector`, a prometheus_client custom collector registered with the standard
  process collector: per type, the event pipeline, build info.
- The per-instance families (8 samples per instance, 7 of them the state enum), which
  at 1000 instances are 14000 samples: prometheus_client's generate_latest formats one
  in about 7 us (100 ms a scrape here, twice the budget), so they are written by
  `_instance_text` from the same label and value rules: sorted label names, escaped
  label values, prometheus_client's own float formatting. Tests parse the whole output
  with prometheus_client's parser and `promtool check metrics`.

Reads only; it must not change an instance or sample /proc more than usage.py allows.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..supervise.instance import State
from .usage import UsageSampler

# The classic text format generate_latest writes (newer prometheus_client versions label it 1.0.0,
# which older Prometheus servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = tuple(state.value for state in State)
PREFIX = "exec_supervisor_"

# (name, type, help) of the per-instance families, in the order they are written.
INSTANCE_FAMILIES = (
    ("instance_up", "gauge", "1 when the instance is running (alive start_seconds), else 0."),
    ("instance_state", "gauge", "The instance's state: 1 for the current one, 0 for the others."),
    ("instance_restarts_total", "counter", "Restarts of the instance since the daemon started it."),
    ("instance_start_time_seconds", "gauge", "Unix time the instance's current (or last) process started."),
    ("instance_last_exit_code", "gauge", "Exit code of the instance's last exit (absent after a signal)."),
    ("instance_last_exit_signal", "gauge", "Number of the signal that ended the instance's last exit."),
    ("instance_cpu_seconds_total", "counter", "CPU time (user + system) of the instance's live process tree."),
    ("instance_resident_memory_bytes", "gauge", "Resident memory of the instance's process tree."),
)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _signal_number(name: str | None) -> int | None:
    if not name:
        return None
    try:
        return int(signal.Signals[name])
    except KeyError:
        return None


def _instance_text(instances: Iterable[Any], usage: UsageSampler, trees: dict[Any, Any] | None) -> str:
    """The per-instance families; label names sorted as generate_latest sorts them."""
    lines: dict[str, list[str]] = {name: [] for name, _, _ in INSTANCE_FAMILIES}
    up, state_lines, restarts, start, code, sig, cpu, rss = (lines[name] for name, _, _ in INSTANCE_FAMILIES)
    running = State.RUNNING
    now = time.monotonic()
    fmt = floatToGoString
    for instance in instances:
        spec = instance.spec
        exec_id, type_ = _escape(spec.exec_id), _escape(spec.type)
        labels = f'exec_id="{exec_id}",id="{spec.id}",type="{type_}"'
        current = instance.state.value
        up.append(f"{{{labels}}} {'1.0' if instance.state is running else '0.0'}\n")
        for name in STATES:
            state_lines.append(f'{{exec_id="{exec_id}",id="{spec.id}",state="{name}",type="{type_}"}} '
                               f"{'1.0' if name == current else '0.0'}\n")
        restarts.append(f"{{{labels}}} {fmt(instance.restarts)}\n")
        if instance.started_wall:
            start.append(f"{{{labels}}} {fmt(instance.started_wall)}\n")
        last = instance.last_exit
        if last:
            if last.get("exit_code") is not None:
                code.append(f"{{{labels}}} {fmt(last['exit_code'])}\n")
            number = _signal_number(last.get("signal"))
            if number is not None:
                sig.append(f"{{{labels}}} {fmt(number)}\n")
        if instance.pid is not None:
            figures = usage.of(instance, trees, now)
            if figures is not None:
                cpu.append(f"{{{labels}}} {fmt(figures[0])}\n")
                rss.append(f"{{{labels}}} {fmt(figures[1])}\n")
    out: list[str] = []
    for name, kind, doc in INSTANCE_FAMILIES:
        full = PREFIX + name
        out.append(f"# HELP {full} {doc}\n# TYPE {full} {kind}\n")
        out.extend(full + line for line in lines[name])
    return "".join(out)


class FarmCollector:
    """Per-type counts, the event pipeline and build info, from the daemon as it is now."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        daemon = self.daemon
        engine = daemon.engine
        desired = GaugeMetricFamily(PREFIX + "desired_instances", "Instances of the type that should run.",
                                    labels=["type"])
        running = GaugeMetricFamily(PREFIX + "running_instances", "Instances of the type in state running.",
                                    labels=["type"])
        counts: dict[str, list[int]] = {name: [0, 0] for name in engine.config.executors}
        for instance in engine.instances.values():
            pair = counts.setdefault(instance.spec.type, [0, 0])
            pair[0] += instance.want_running
            pair[1] += instance.state is State.RUNNING
        for name, (want, run) in counts.items():
            desired.add_metric([name], want)
            running.add_metric([name], run)
        yield desired
        yield running

        info = InfoMetricFamily(PREFIX + "build", "exec-supervisor's version.")
        info.add_metric([], {"version": __version__})
        yield info
        yield GaugeMetricFamily(PREFIX + "start_time_seconds", "Unix time the daemon started.",
                                value=daemon.started_at)

        emitted = CounterMetricFamily(PREFIX + "events_emitted", "Lifecycle events emitted, by event and level.",
                                      labels=["event", "level"])
        for (event, level), count in sorted(getattr(daemon.bus, "counts", {}).items()):
            emitted.add_metric([event, level], count)
        yield emitted
        yield from self._pipeline(daemon.forwarder)

    @staticmethod
    def _pipeline(forwarder: Any) -> Iterator[Metric]:
        yield GaugeMetricFamily(PREFIX + "events_forwarding",
                                "1 when events are forwarded to the service's log API (events.forward).",
                                value=1 if forwarder is not None else 0)
        if forwarder is None:
            return
        backlog = forwarder.backlog()
        yield CounterMetricFamily(PREFIX + "events_delivered", "Events the log API accepted (2xx).",
                                  value=backlog.get("delivered") or 0)
        yield CounterMetricFamily(PREFIX + "events_retried",
                                  "Delivery attempts that failed and will be retried (outage, 5xx, 429, 401...).",
                                  value=backlog.get("retried") or 0)
        yield CounterMetricFamily(PREFIX + "events_dead_lettered",
                                  "Events the log API refused for good (422, other 4xx), kept in the dead-letter file.",
                                  value=backlog.get("dead_letters") or 0)
        dropped = CounterMetricFamily(PREFIX + "events_dropped",
                                      "Events dropped: spool_full (oldest low-level events, events.spool_max_bytes) "
                                      "or write_failed (the spool could not be written).", labels=["reason"])
        dropped.add_metric(["spool_full"], backlog.get("dropped") or 0)
        dropped.add_metric(["write_failed"], backlog.get("lost") or 0)
        yield dropped
        yield GaugeMetricFamily(PREFIX + "events_backlog", "Events waiting in the spool for delivery.",
                                value=backlog.get("count") or 0)
        yield GaugeMetricFamily(PREFIX + "events_backlog_bytes", "Bytes of events waiting in the spool.",
                                value=backlog.get("bytes") or 0)
        yield GaugeMetricFamily(PREFIX + "events_oldest_pending_age_seconds",
                                "Age of the oldest event waiting for delivery (0 when none waits).",
                                value=backlog.get("oldest_age") or 0)
        last = backlog.get("last_delivered_at")
        if last:
            yield GaugeMetricFamily(PREFIX + "events_last_delivery_timestamp_seconds",
                                    "Unix time of the last event the log API accepted.", value=last)
        yield GaugeMetricFamily(PREFIX + "events_unauthorized",
                                "1 while the log API answers 401/403 (configure service.auth).",
                                value=1 if backlog.get("state") == "unauthorized" else 0)


class Metrics:
    """One per daemon: the registry (process collector + FarmCollector) and the usage sampler."""

    def __init__(self, daemon: Any, usage: UsageSampler | None = None) -> None:
        self.daemon = daemon
        self.usage = usage or UsageSampler()
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(FarmCollector(daemon))

    def render(self) -> bytes:
        engine = self.daemon.engine
        instances = list(engine.instances.values())
        text = _instance_text(instances, self.usage, self.usage.trees(engine))
        self.usage.prune(i.pid for i in instances if i.pid is not None)
        return generate_latest(self.registry) + text.encode()


def metrics_for(daemon: Any) -> Metrics:
    """The daemon's Metrics, made at the first scrape (shared by the control socket and the listener)."""
    if daemon.metrics is None:
        daemon.metrics = Metrics(daemon)
    return daemon.metrics
