"""One executor instance: its process and an explicit state machine.

    stopped/exited/fatal --start--> starting --(alive start_seconds)--> running
    starting/running --exit--> backoff --(delay)--> starting
                          \\--> exited (no restart due) | fatal (max_restarts reached)
    starting/running --stop--> stopping --(group and leftovers gone)--> stopped

Everything runs on the event loop thread; timers are loop handles, so an idle
instance costs no task and no thread. The engine spawns (into the instance's cgroup when
contained), reaps children and calls `on_exit`. Owns the commands (start, stop, restart),
the exit policy (restart, backoff, max_restarts, fatal), the transitions with their history
and events, and the status row. The states and the Host protocol are in states.py (imported
from here too); how a stop is carried out and what a run left behind is ended: stopping.py;
readiness and health: readiness.py. Never imports the engine: it talks to it through Host.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any

from . import osproc
from ..config import ExecutorType, InstanceSpec
from ..events import INSTANCE_EVENT_LEVELS, OUTPUT_TAIL_MAX_BYTES, Event
from .readiness import Readiness
from .states import AT_REST, Host, State
from .stopping import Stopping
from .timers import Cancellable

CRASH_TAIL_LINES = 20
# Transitions kept per instance for `describe`: (wall time, state, reason). A farm holds thousands
# of instances, so few, in one tuple, with reasons that are mostly shared constant strings.
HISTORY_MAX = 8

log = logging.getLogger("exec_supervisor")


class Instance(Readiness, Stopping):
    # A farm holds thousands of these for its whole life: no per-object __dict__.
    __slots__ = ("spec", "policy", "host", "state", "want_running", "pid", "started_at", "started_wall",
                 "started_boottime", "start_ticks", "adopted", "restarts", "failures", "restart_times", "last_exit",
                 "log_file", "_log_offset", "log_size", "log_check_at", "launch_digest",
                 "_timer", "_pgid", "_restart_at", "_killed", "_stop_deadline", "_cleanup", "_start_pending",
                 "_rest_waiters", "_state_waiters", "history", "cgroup")

    def __init__(self, spec: InstanceSpec, policy: ExecutorType, host: Host) -> None:
        self.spec = spec
        self.policy = policy
        self.host = host
        self.state = State.STOPPED
        self.want_running = False
        self.pid: int | None = None
        self.started_at = 0.0  # monotonic, of the current process
        self.started_wall = 0.0
        self.started_boottime = 0.0  # CLOCK_BOOTTIME, which the kernel stamps a new process with
        self.start_ticks: int | None = None  # the pid's start time in /proc, read once for the state file
        self.adopted = False  # its process is not our child (taken over after a daemon death): watched by pidfd
        self.restarts = 0
        self.failures = 0  # consecutive exits without reaching running; drives the backoff
        # Restarts inside restart_window, kept only while max_restarts is set, and at most that many.
        self.restart_times: deque[float] | None = None
        self.last_exit: dict[str, Any] | None = None
        # A str, and log_path the Path made from it on demand: a Path per instance costs a farm
        # its memory, and one made per instance at every log check costs it idle CPU.
        self.log_file: str | None = (
            os.path.join(host.log_dir, f"{spec.exec_id}.log") if host.log_dir is not None else None
        )
        self._log_offset = 0
        # The log's size at its last look and when to look again (the engine's rotation pass).
        self.log_size = 0
        self.log_check_at = 0.0
        self.launch_digest: str | None = None  # handover.launch_hash of the running spec, made once per spawn
        self._timer: Cancellable | None = None
        self._pgid = 0  # the main process's pid: it leads its own session and group
        self._restart_at = 0.0
        self._killed = False  # SIGKILL was needed during the current stop
        self._stop_deadline = 0.0
        self._cleanup: asyncio.Task[None] | None = None
        self._start_pending = False  # started while the last run's leftovers were still being stopped
        # Empty tuples until someone waits: a farm holds thousands of instances nobody waits on.
        self._rest_waiters: list[asyncio.Future[None]] | tuple[()] = ()
        self._state_waiters: list[tuple[tuple[State, ...], asyncio.Future[None]]] | tuple[()] = ()
        self.history: tuple[tuple[float, State, str], ...] = ()
        self._init_readiness()
        self.cgroup: str | None = None  # its cgroup's directory, once spawned in one

    @property
    def log_path(self) -> Path | None:
        return Path(self.log_file) if self.log_file is not None else None

    # ------------------------------------------------------------------ commands

    def start(self) -> None:
        """Run it (again). A manual start forgives past failures and skips a pending backoff."""
        self.want_running = True
        if self.state in AT_REST:
            self.failures = 0
            self.restart_times = None
            if self._cleanup is None:
                self._spawn()
            else:  # never next to what the last run left behind: _after_cleanup starts it
                self._start_pending = True
        elif self.state is State.BACKOFF and self._cleanup is None:
            self._cancel_timer()
            self._spawn()
        # STARTING/RUNNING: already up. STOPPING or cleaning up: the finish step starts it.

    def stop(self) -> None:
        self.want_running = False
        self._start_pending = False
        if self.state in (State.STARTING, State.RUNNING):
            self._begin_stop()
        elif self.state is State.BACKOFF:
            self._cancel_timer()
            if self._cleanup is None:
                self._set_state(State.STOPPED, "stop requested during backoff")
                self._emit("stopped")
            # else: the running cleanup ends in _after_cleanup, which sees want_running False.
        elif self.state in (State.EXITED, State.FATAL):
            self._set_state(State.STOPPED, "stop requested")

    def restart(self) -> None:
        if self.state in (State.STARTING, State.RUNNING):
            self.want_running = True
            self._begin_stop()
        else:
            self.start()

    def update(self, spec: InstanceSpec, policy: ExecutorType) -> bool:
        """Adopt a reloaded spec; returns True when the process must restart to pick it up."""
        relaunch = spec.launch_key != self.spec.launch_key
        self.spec = spec
        self.policy = policy
        return relaunch

    async def wait_until(self, states: tuple[State, ...], timeout: float | None = None) -> bool:
        """Wait until the instance is in one of states; False on timeout."""
        if self.state in states:
            return True
        future = asyncio.get_running_loop().create_future()
        self._state_waiters = [*self._state_waiters, (states, future)]
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    @property
    def settled(self) -> bool:
        """At rest with nothing of its last run left alive."""
        return self.state in AT_REST and self._cleanup is None

    async def wait_at_rest(self) -> None:
        if self.settled:
            return
        future = asyncio.get_running_loop().create_future()
        self._rest_waiters = [*self._rest_waiters, future]
        await future

    # ------------------------------------------------------------------ process events

    def on_exit(self, status: int | None) -> None:
        """Called by the engine once it has reaped our main process (status None: an adopted
        process, not our child, whose exit status nobody can read; the policy counts it a crash)."""
        unknown = status is None
        exit_code, signal_name = (None, None) if status is None else osproc.describe_status(status)
        now = time.monotonic()
        runtime = now - self.started_at
        pid = self.pid
        self.pid = None
        self.adopted = False
        self._cancel_timer()
        self.last_exit = {
            "exit_code": exit_code,
            "signal": signal_name,
            "time": time.time(),
            "runtime": runtime,
        }
        detail = {}
        if unknown:
            self.last_exit["status_unknown"] = True
            detail["status_unknown"] = True
        cause = self.failing_cause()
        if cause:
            detail["cause"] = cause
        if self.state is State.STOPPING and not (cause and self.want_running):
            self.host.state_changed(self)  # the pid is gone; the state changes once the leftovers are
            self._start_cleanup(self._stop_deadline, self.policy.stop_signal)
            return
        # A stop for a failed health check or start_timeout ends here like a crash: one restart path.
        expected = cause is None and not unknown and signal_name is None and exit_code in self.policy.success_exit_codes
        restart_due = self.want_running and (
            self.policy.restart == "always" or (self.policy.restart == "on-failure" and not expected)
        )
        output = self._output_tail() if not expected else None
        what = f"signal {signal_name}" if signal_name else f"exit code {exit_code}"
        if cause:
            what = f"stopped for {cause}, {what}"
        if restart_due and self._restarts_exhausted(now):
            self._set_state(State.FATAL, f"{what}; {self.policy.max_restarts} restarts within "
                                         f"{self.policy.restart_window:g}s")
            self._emit(
                "fatal", pid=pid, exit_code=exit_code, signal=signal_name, runtime=runtime,
                output=output, detail={"window": self.policy.restart_window, **detail},
            )
            self._start_cleanup(now + self.policy.stop_timeout, self.policy.stop_signal)
            return
        restart_in = None
        if restart_due:
            self.failures += 1
            self.restarts += 1
            self._count_restart(now)
            restart_in = self.host.restart_delay(self, self.failures)
            self._restart_at = now + restart_in
            self._set_state(State.BACKOFF, f"{what} after {runtime:.1f}s; restart in {restart_in:.1f}s")
        else:
            self._set_state(State.EXITED, f"{what} after {runtime:.1f}s; no restart due ({self.policy.restart})")
        self._emit(
            "exited" if expected else "crashed",
            pid=pid, exit_code=exit_code, signal=signal_name, runtime=runtime,
            restart_in=restart_in, output=None if cause else output, detail=detail,
        )
        self._start_cleanup(now + self.policy.stop_timeout, self.policy.stop_signal)

    def resume(self, cleaning: bool) -> None:
        """After a handover (upgrade) or an adoption restored this instance's fields: set again
        the one timer (or the leftover cleanup) its state is waiting on."""
        loop = asyncio.get_running_loop()
        if self.pid is not None:
            if self.state in (State.STARTING, State.RUNNING):
                self._resume_readiness()  # start_seconds, start_timeout, or the watchdog
            elif self.state is State.STOPPING:
                self._timer = loop.call_at(self._stop_deadline, self._kill_now)
        elif cleaning or self.state is State.STOPPING:
            late = self._stop_deadline if self.state is State.STOPPING else time.monotonic() + self.policy.stop_timeout
            self._start_cleanup(late, signal.SIGKILL if self._killed else self.policy.stop_signal)
        elif self.state is State.BACKOFF:
            self._timer = loop.call_at(self._restart_at, self._restart_now)

    def _on_start_seconds(self, started_at: float) -> None:
        # A deadline set for an earlier run (the instance stopped or exited since) is stale.
        if self.state is State.STARTING and started_at == self.started_at:
            self.failures = 0
            self._set_state(State.RUNNING, "alive start_seconds")
            self._became_running()
            self._emit("running", pid=self.pid)

    # ------------------------------------------------------------------ internals (stopping: stopping.py)

    def _spawn(self, reason: str = "start requested") -> None:
        self._set_state(State.STARTING, reason)
        spec = self.spec
        env = self.host.spawn_env(spec)
        self._log_offset = self.log_size = osproc.file_size(self.log_file) if self.log_file is not None else 0
        self.log_check_at = 0.0  # a new run: looked at in the next pass
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.started_boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
        self.start_ticks = None
        self.launch_digest = None
        try:
            pid = self.host.spawn(self, env)  # tracked and journaled before anything else runs
        except OSError as exc:
            self._spawn_failed(exc)
            return
        self.pid = self._pgid = pid
        self._emit("spawned", pid=pid)
        self._arm_readiness()  # start_seconds, or READY=1 within start_timeout

    def _spawn_failed(self, exc: OSError) -> None:
        # Same policy as a crash: a missing file may come back (a deploy in progress).
        self.last_exit = {"exit_code": None, "signal": None, "time": time.time(), "runtime": 0.0,
                          "error": f"{exc.strerror or exc}: {exc.filename or self.spec.argv[0]}"}
        now = time.monotonic()
        if self.policy.restart != "never" and self._restarts_exhausted(now):
            self._set_state(State.FATAL, f"could not start: {self.last_exit['error']}")
            self._emit("fatal", runtime=0.0,
                       detail={"window": self.policy.restart_window, "error": self.last_exit["error"]})
            return
        self.failures += 1
        restart_in = self.host.restart_delay(self, self.failures) if self.policy.restart != "never" else None
        if restart_in is not None:
            self.restarts += 1
            self._count_restart(now)
        self._set_state(State.BACKOFF if restart_in is not None else State.EXITED,
                        f"could not start: {self.last_exit['error']}")
        self._emit("crashed", runtime=0.0, restart_in=restart_in, detail={"error": self.last_exit["error"]})
        if restart_in is not None:
            self._restart_at = now + restart_in
            self._timer = asyncio.get_running_loop().call_later(restart_in, self._restart_now)

    def _count_restart(self, now: float) -> None:
        limit = self.policy.max_restarts
        if limit is None:  # nothing to count against: keep nothing (an endless crash loop grows nothing)
            self.restart_times = None
            return
        if self.restart_times is None or self.restart_times.maxlen != limit:  # first, or max_restarts reloaded
            self.restart_times = deque(self.restart_times or (), maxlen=limit)
        self.restart_times.append(now)

    def _restarts_exhausted(self, now: float) -> bool:
        """True when max_restarts restarts fall within the window (older ones are forgotten)."""
        limit = self.policy.max_restarts
        if limit is None:
            return False
        times = self.restart_times
        window_start = now - self.policy.restart_window
        while times and times[0] < window_start:
            times.popleft()
        return len(times or ()) >= limit

    def _restart_now(self) -> None:
        self._timer = None
        if self.state is State.BACKOFF and self.want_running:
            ticket = self.host.admit(self)  # an open incident of the type may pace its restarts
            if ticket is None:
                self._spawn("backoff over")
            else:
                self._timer = ticket

    def admitted(self) -> bool:
        """Its type's restart gate lets it start now; False when it no longer waits to restart."""
        self._cancel_timer()
        if self.state is State.BACKOFF and self.want_running and self._cleanup is None:
            self._spawn("backoff over (paced restart)")
            return True
        return False

    def _after_cleanup(self, killed: bool) -> None:
        self._killed = False
        pending, self._start_pending = self._start_pending, False
        if self.state in AT_REST and pending and self.want_running:
            self._spawn()
        elif self.state is State.STOPPING:
            self._set_state(State.STOPPED, "killed after stop_timeout" if killed else "stopped")
            self._emit("stopped", detail={"killed": killed})
            if self.want_running:  # a restart: come back at once
                self.failures = 0
                self._spawn("restart")
        elif self.state is State.BACKOFF:
            if not self.want_running:
                self._set_state(State.STOPPED, "stop requested during backoff")
                self._emit("stopped", detail={"killed": killed})
            else:
                delay = self._restart_at - time.monotonic()
                if delay > 0:
                    self._timer = asyncio.get_running_loop().call_later(delay, self._restart_now)
                else:
                    # In a crash storm every exit of the reaped batch is handled (and its event
                    # published) before the spawns begin.
                    self._timer = self.host.after_exits(self._restart_now)
        self._wake_rest_waiters()

    def _output_tail(self) -> str | None:
        if self.log_file is None:  # output goes to the supervisor's stdout: no tail to quote
            return None
        return osproc.read_tail(self.log_file, self._log_offset, CRASH_TAIL_LINES, OUTPUT_TAIL_MAX_BYTES)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set_state(self, state: State, reason: str) -> None:
        self.state = state
        history = self.history
        if len(history) >= HISTORY_MAX:
            history = history[1 - HISTORY_MAX:]
        self.history = history + ((time.time(), state, reason),)
        self.host.state_changed(self)
        if self._state_waiters:
            keep = []
            for states, future in self._state_waiters:
                if future.done():
                    continue
                if state in states:
                    future.set_result(None)
                else:
                    keep.append((states, future))
            self._state_waiters = keep or ()
        if state in AT_REST:
            self._wake_rest_waiters()

    def _wake_rest_waiters(self) -> None:
        if self._rest_waiters and self.settled:
            waiters, self._rest_waiters = self._rest_waiters, ()
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def _emit(self, kind: str, **fields: Any) -> None:
        fields.setdefault("pid", self.pid)
        self.host.publish(
            Event(
                event=kind,
                level=INSTANCE_EVENT_LEVELS[kind],
                supervisor=self.host.supervisor_name,
                exec_id=self.spec.exec_id,
                type=self.spec.type,
                id=self.spec.id,
                restarts=self.restarts,
                **fields,
            )
        )

    def snapshot(self) -> dict[str, Any]:
        up = self.state in (State.STARTING, State.RUNNING, State.STOPPING) and self.pid is not None
        return {
            "exec_id": self.spec.exec_id,
            "type": self.spec.type,
            "id": self.spec.id,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "uptime": round(time.monotonic() - self.started_at, 3) if up else None,
            "started": self.started_wall if up else None,
            "last_exit": self.last_exit,
            **self.health_fields(),
            "cgroup": self.cgroup,
        }
