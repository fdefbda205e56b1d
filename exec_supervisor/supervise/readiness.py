"""Readiness and health in an instance's state machine (a mixin of Instance).

    starting --(start_seconds alive | READY=1 with ready: notify)--> running
    starting --(start_timeout, ready: notify only)--> stopping --> backoff (as a crash)
    running --(unhealthy: watchdog, probe, memory)--> stopping --> backoff (as a crash)

A failed start or an unhealthy instance is stopped through the instance's own stop path
(stop signal, stop_timeout, SIGKILL, leftovers) and its exit is then handled exactly like a
crash: the same backoff, the same max_restarts count, the same `crashed`/`fatal` events.

What sets these off lives in health/ (the notify socket, probes, memory sampling); this
module only keeps the per-instance facts (ready, status text, last heartbeat, health) and
the transitions. It never reads a socket or runs a probe.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .instance import Instance


class Readiness:
    __slots__ = ("ready_at", "status_text", "heartbeat_at", "health", "failing_checks", "_heartbeat_mono",
                 "_watchdog_usec", "_start_deadline", "_failing", "_self_stopping", "_errno")

    def _init_readiness(self: "Instance") -> None:
        self.ready_at: float | None = None  # wall time of READY=1, or of start_seconds passing
        self.status_text: str | None = None  # the last STATUS= line
        self.heartbeat_at: float | None = None  # wall time of the last WATCHDOG=1
        self.health: str | None = None  # None (no checks) | "ok" | "failing" | "unhealthy"
        self.failing_checks = 0  # consecutive probe failures
        self._heartbeat_mono = 0.0
        self._watchdog_usec: int | None = None  # WATCHDOG_USEC= sent by the executor: its own pace
        self._start_deadline = 0.0
        self._failing: str | None = None  # why a health stop is under way ("watchdog", "start_timeout", ...)
        self._self_stopping = False  # STOPPING=1 seen: it is on its way out, stop asking for heartbeats
        self._errno: int | None = None

    # ------------------------------------------------------------------ set up at each spawn

    def _arm_readiness(self: "Instance") -> None:
        """Called right after a spawn: reset this run's facts and set the readiness deadline."""
        self.ready_at = self.status_text = self.heartbeat_at = self._watchdog_usec = self._errno = None
        self.failing_checks = 0
        self._failing = None
        self._self_stopping = False
        self.health = "ok" if self._has_checks() else None
        policy = self.policy
        if policy.ready == "notify":
            if policy.start_timeout:
                self._start_deadline = self.started_at + policy.start_timeout
                self.host.timers.call_at(self._start_deadline, self._on_start_timeout, self.started_at)
        elif policy.start_seconds > 0:
            # started_at is time.monotonic(), the clock of asyncio's loop
            self.host.timers.call_at(self.started_at + policy.start_seconds, self._on_start_seconds,
                                     self.started_at)
        else:
            self._on_start_seconds(self.started_at)

    def _resume_readiness(self: "Instance") -> None:
        """After a handover or adoption: the deadline a starting instance waits on, or a running
        one's watchdog counted from now (heartbeats sent while no daemon listened are lost)."""
        from .instance import State

        if self.state is State.STARTING:
            if self.policy.ready != "notify":
                self.host.timers.call_at(self.started_at + self.policy.start_seconds, self._on_start_seconds,
                                         self.started_at)
            elif self.policy.start_timeout:
                self._start_deadline = max(self._start_deadline, self.started_at + self.policy.start_timeout)
                self.host.timers.call_at(self._start_deadline, self._on_start_timeout, self.started_at)
        elif self.state is State.RUNNING:
            ready_at = self.ready_at
            self._became_running()
            self.ready_at = ready_at or self.ready_at

    def readiness_record(self: "Instance") -> dict[str, Any]:
        """What a handover (upgrade) carries of this run's readiness and health."""
        return {"ready_at": self.ready_at, "status_text": self.status_text, "heartbeat_at": self.heartbeat_at,
                "health": self.health, "failing_checks": self.failing_checks,
                "watchdog_usec": self._watchdog_usec, "start_deadline": self._start_deadline,
                "self_stopping": self._self_stopping}

    def restore_readiness(self: "Instance", record: dict[str, Any]) -> None:
        self.health = "ok" if self._has_checks() else None
        if not isinstance(record, dict):
            return
        self.ready_at = _number(record.get("ready_at"))
        status = record.get("status_text")
        self.status_text = status if isinstance(status, str) else None
        self.heartbeat_at = _number(record.get("heartbeat_at"))
        if record.get("health") in ("ok", "unhealthy") and self._has_checks():
            self.health = record["health"]
        self.failing_checks = int(record.get("failing_checks") or 0)
        usec = record.get("watchdog_usec")
        self._watchdog_usec = usec if isinstance(usec, int) and usec > 0 else None
        self._start_deadline = _number(record.get("start_deadline")) or 0.0
        self._self_stopping = bool(record.get("self_stopping"))

    def _has_checks(self: "Instance") -> bool:
        policy = self.policy
        return bool(policy.watchdog or policy.probe or policy.max_memory)

    def _became_running(self: "Instance") -> None:
        """Running: the backoff resets (the caller does that) and the watchdog starts counting."""
        self.ready_at = time.time()
        self._heartbeat_mono = time.monotonic()
        if self.policy.watchdog:
            self.host.timers.call_at(self._heartbeat_mono + self._watchdog_seconds(), self._check_watchdog,
                                     self.started_at)

    # ------------------------------------------------------------------ what the executor tells us

    def notify_ready(self: "Instance") -> None:
        """READY=1. With ready: notify a starting instance is running from now on."""
        from .instance import State

        if self.policy.ready == "notify" and self.state is State.STARTING and not self._failing:
            self.failures = 0
            self._set_state(State.RUNNING, "READY=1")
            self._became_running()
            self._emit("running", pid=self.pid,
                       detail={"ready": "notify", "after": round(time.monotonic() - self.started_at, 3)})

    def notify_heartbeat(self: "Instance") -> None:
        """WATCHDOG=1: a float stored; the watchdog's timer looks at it when it comes due."""
        self._heartbeat_mono = time.monotonic()
        self.heartbeat_at = time.time()

    def notify_status(self: "Instance", text: str) -> bool:
        """STATUS=...; True when it changed."""
        if text == self.status_text:
            return False
        self.status_text = text
        return True

    def notify_stopping(self: "Instance") -> None:
        self._self_stopping = True

    def notify_errno(self: "Instance", number: int) -> None:
        self._errno = number

    def notify_watchdog_usec(self: "Instance", usec: int) -> None:
        """WATCHDOG_USEC= from the executor: its own watchdog timeout, as systemd allows."""
        self._watchdog_usec = usec if usec > 0 else None

    def extend_timeout(self: "Instance", seconds: float) -> None:
        """EXTEND_TIMEOUT_USEC=: the start (or stop) deadline becomes at least now + seconds."""
        from .instance import State

        now = time.monotonic()
        if self.state is State.STARTING and self.policy.ready == "notify" and self.policy.start_timeout:
            if now + seconds > self._start_deadline:
                self._start_deadline = now + seconds
                self.host.timers.call_at(self._start_deadline, self._on_start_timeout, self.started_at)
        elif self.state is State.STOPPING and self._timer is not None and now + seconds > self._stop_deadline:
            self._timer.cancel()
            self._stop_deadline = now + seconds
            self._timer = asyncio.get_running_loop().call_later(seconds, self._kill_now)

    # ------------------------------------------------------------------ checks failing

    def _watchdog_seconds(self: "Instance") -> float:
        return self._watchdog_usec / 1e6 if self._watchdog_usec else float(self.policy.watchdog or 0)

    def _check_watchdog(self: "Instance", started_at: float) -> None:
        from .instance import State

        if self.state is not State.RUNNING or started_at != self.started_at or not self.policy.watchdog:
            return
        if self._self_stopping:
            return
        timeout = self._watchdog_seconds()
        due = self._heartbeat_mono + timeout
        now = time.monotonic()
        if now < due:
            self.host.timers.call_at(due, self._check_watchdog, started_at)
            return
        silent = now - self._heartbeat_mono
        self.fail_health("watchdog", {"timeout": timeout, "silent": round(silent, 3),
                                      "last_heartbeat": self.heartbeat_at}, first_signal=signal.SIGABRT)

    def _on_start_timeout(self: "Instance", started_at: float) -> None:
        from .instance import State

        if self.state is not State.STARTING or started_at != self.started_at or self._failing:
            return
        now = time.monotonic()
        if now < self._start_deadline:  # extended meanwhile: its own entry comes later
            return
        self._failing = "start_timeout"
        self._emit("start_timeout", pid=self.pid, output=self._output_tail(),
                   detail={"timeout": self.policy.start_timeout, "waited": round(now - self.started_at, 3),
                           "status": self.status_text})
        self._begin_stop(reason=f"no READY=1 within start_timeout ({self.policy.start_timeout:g}s)")

    def fail_health(self: "Instance", check: str, detail: dict[str, Any], output: str | None = None,
                    first_signal: int | None = None) -> None:
        """A check failed for good: one `unhealthy` event, then the stop path, then backoff as for a crash."""
        from .instance import State

        if self.state not in (State.STARTING, State.RUNNING) or self._failing:
            return
        self._failing = check
        self.health = "unhealthy"
        tail = self._output_tail()
        self._emit("unhealthy", pid=self.pid, output=tail or None,
                   detail={"check": check, "status": self.status_text, **detail,
                           **({"probe_output": output} if output else {})})
        self._begin_stop(first_signal, f"unhealthy: {check}")

    def announce_status(self: "Instance") -> None:
        """The status_changed event (debug); the health extension rate-limits the calls."""
        self._emit("status_changed", pid=self.pid, detail={"status": self.status_text})

    def failing_cause(self: "Instance") -> str | None:
        """Set while a health stop is under way (the exit is then handled as a crash)."""
        return self._failing

    def health_fields(self: "Instance") -> dict[str, Any]:
        """The status row's health columns (control API, `status --json`)."""
        health = self.health
        if health == "ok" and self.failing_checks and self.policy.probe is not None:
            health = f"failing {self.failing_checks} of {self.policy.probe.failures}"
        return {
            "ready": self.ready_at is not None,
            "health": health or "none",
            "status_text": self.status_text,
            "heartbeat": self.heartbeat_at,
        }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
