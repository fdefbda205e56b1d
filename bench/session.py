"""One supervisor run: config written, started in its own session, measured from
outside through the observer, stopped, and cleaned up whatever happened."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import procs
from adapters import Adapter, Farm
from observer import Observer, now_ns


@dataclass
class Ctx:
    """Run-wide state shared by all workloads."""

    obs: Observer
    marker: str
    tmp: Path
    env: dict[str, str]
    log: Callable[[str], None]
    counter: int = 0
    # processes the per-session cleanup had to SIGKILL (a supervisor that did not stop)
    forced: list[str] = field(default_factory=list)

    def marker_env(self) -> dict[str, str]:
        return {procs.MARKER_VAR: self.marker}


class Session:
    def __init__(self, ctx: Ctx, adapter: Adapter, farm: Farm, nofile_soft: int | None = None,
                 label: str = "") -> None:
        self.ctx = ctx
        self.label = label
        self.adapter = adapter
        self.farm = farm
        self.nofile_soft = nofile_soft
        ctx.counter += 1
        self.workdir = ctx.tmp / f"{ctx.counter:04d}-{adapter.name}"
        (self.workdir / "logs").mkdir(parents=True)
        (self.workdir / "state").mkdir()
        adapter.write_config(farm, self.workdir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.t_start = 0
        # how long close() waits for a graceful stop before SIGKILL
        self.stop_timeout = 10.0
        # after a successful stop(): (s until the last instance was gone, s until the supervisor exited)
        self.stop_split: tuple[float, float] = (float("nan"), float("nan"))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        env = dict(self.ctx.env, **self.ctx.marker_env())
        self.t_start = now_ns()
        self.proc = procs.launch(self.adapter.command(self.workdir), env,
                                 self.workdir / "supervisor.out", cwd=self.workdir,
                                 nofile_soft=self.nofile_soft)
        return self.t_start

    @property
    def top(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> int:
        return self.ctx.obs.alive_count(self.top)

    def exited_early(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def wait_alive(self, n: int, timeout: float, at_least: bool = False) -> bool:
        obs = self.ctx.obs
        ok = obs.wait_for(lambda: (obs.alive_count(self.top) >= n if at_least
                                   else obs.alive_count(self.top) == n)
                          or self.proc.poll() is not None, timeout)  # type: ignore[union-attr]
        return ok and not self.exited_early()

    def nth_exec_ns(self, n: int, since_ns: int) -> int | None:
        times = self.ctx.obs.exec_times(self.top, since_ns)
        return times[n - 1] if len(times) >= n else None

    def stop(self, timeout: float) -> tuple[bool, float]:
        """SIGTERM to the supervisor process alone (not its group: killing the instances
        directly would do its work for it); done when its whole tree has exited.
        Returns (stopped in time, seconds from SIGTERM to the last exit); the split between
        instances and the supervisor itself is left in self.stop_split."""
        obs = self.ctx.obs
        watched = [p.pid for p in obs.live(self.top)]
        t0 = now_ns()
        try:
            os.kill(self.top, signal.SIGTERM)
        except ProcessLookupError:
            pass
        ok = obs.wait_for(lambda: obs.live_count(self.top) == 0, timeout)
        last = obs.last_exit_ns(self.top) if ok else None
        if ok:
            with obs.lock:
                exits = {pid: obs.procs[pid].exit_ns for pid in watched if pid in obs.procs}
            sup_exit = exits.pop(self.top, None)
            others = [t for t in exits.values() if t is not None]
            self.stop_split = ((max(others) - t0) / 1e9 if others else float("nan"),
                               (sup_exit - t0) / 1e9 if sup_exit else float("nan"))
        if ok and self.proc is not None:
            # the kernel reports the exit a moment before the zombie becomes reapable
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return ok, ((last - t0) / 1e9 if last is not None else float("nan"))

    def leftovers(self) -> str:
        """What is still alive of this tree (for failure notes)."""
        obs = self.ctx.obs
        sup_alive = self.proc is not None and self.proc.poll() is None
        return (f"supervisor {'alive' if sup_alive else 'gone'}, "
                f"{obs.alive_count(self.top)} instances alive, "
                f"{obs.live_count(self.top)} processes in its tree")

    def close(self) -> None:
        """Always runs: SIGKILL the session's process group, sweep escaped processes by marker
        (instances in their own sessions are not in the group), reap, drop the workdir."""
        if self.proc is not None:
            # workloads that do not time the stop still stop gracefully first; only a
            # supervisor that does not manage to is recorded as force-killed
            if self.ctx.obs.live_count(self.top):
                self.stop(timeout=self.stop_timeout)
            if self.proc.poll() is None or self.ctx.obs.live_count(self.top):
                self.ctx.forced.append(f"{self.adapter.name} ({self.label}): {self.leftovers()}")
            procs.kill_group(self.proc)
            procs.sweep(self.ctx.marker)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self.ctx.obs.forget(self.top)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_cmd(argv: list[str], env: dict[str, str], timeout: float) -> tuple[float, int, str]:
    """Run a control command (scale/status); returns (seconds, exit code, output tail)."""
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, start_new_session=True)
        out = (r.stdout + r.stderr)[-400:]
        return time.monotonic() - t0, r.returncode, out
    except subprocess.TimeoutExpired:
        return time.monotonic() - t0, -1, "timeout"
