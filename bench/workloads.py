"""The benchmark workloads (bench/README.md lists them). Each appends result rows to `rows`; a row is

    {"workload", "metric", "n", "supervisor", "unit", "better": "lower"|"higher",
     "summary": "median"|"p95"|"max", "samples": [...], "note": str}

Samples are per repeat (or pooled per event for restart latency); report.py
turns them into a figure plus its noise.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import procs
from adapters import BENCH, Adapter, ExecSupervisor, Farm, Limit, Supervisord
from observer import now_ns
from session import Ctx, Session, run_cmd

SLEEP = "/bin/sleep"
SLEEPER_ARGV = [SLEEP, "100000"]
HEARTBEAT_ARGV = ["/usr/bin/perl", str(BENCH / "programs" / "heartbeat.pl")]
CHURN_ARGV = ["/bin/sh", str(BENCH / "programs" / "churn.sh")]
# ready: notify (features on): READY=1, then exec /bin/sleep (the observer counts it from perl's exec)
READY_ARGV = ["/usr/bin/perl", str(BENCH / "programs" / "ready.pl")]


@dataclass
class Params:
    mode: str
    ns: list[int]                      # N for spawn/idle/restart/stop
    repeats: int
    settle_s: float                    # after all alive, before idle is measured
    idle_s: float
    kills: int                         # restart kills per repeat
    churn_n: int
    churn_s: float
    churn_repeats: int
    chatty_n: int
    chatty_rates: list[float]          # MiB/s per instance
    chatty_s: float
    events_n: int
    events_repeats: int
    stop_early_n: int
    stop_early_repeats: int
    scale_n: int
    nofile_n: int                      # supervisord under a 1024 soft limit; 0 = skip
    stop_early_timeout: float = 20.0   # after SIGTERM; past it the run counts as FAILED
    warmup_s: float = 2.0              # churn/chatty: into the steady state before the window
    quiet_s: float = 2.0               # events: no new log entry for this long = drained
    features_n: int = 100              # features on vs off (exec-supervisor only): N of the idle/restart runs
    features_repeats: int = 1          #   on/off pairs
    features_churn: bool = True        #   also churn (churn_n, churn_s) on vs off
    peers_max_n: int = 2000            # supervisord/circus are skipped above this N (--peers-max-n)
    extra: dict[str, Any] = field(default_factory=dict)


MODES: dict[str, Params] = {
    "smoke": Params("smoke", ns=[5], repeats=1, settle_s=0.5, idle_s=1, kills=3,
                    churn_n=10, churn_s=1.5, churn_repeats=1, chatty_n=5, chatty_rates=[1.0],
                    chatty_s=1, events_n=5, events_repeats=1, stop_early_n=10,
                    stop_early_repeats=1, scale_n=5, nofile_n=0, stop_early_timeout=5, warmup_s=0.5, quiet_s=1.2,
                    features_n=5),
    "quick": Params("quick", ns=[100], repeats=3, settle_s=2, idle_s=5, kills=8,
                    churn_n=100, churn_s=5, churn_repeats=1, chatty_n=100, chatty_rates=[1.0],
                    chatty_s=5, events_n=100, events_repeats=1, stop_early_n=100,
                    stop_early_repeats=1, scale_n=100, nofile_n=500),
    "full": Params("full", ns=[100, 500, 1000], repeats=3, settle_s=3, idle_s=20, kills=20,
                   churn_n=100, churn_s=20, churn_repeats=2, chatty_n=100, chatty_rates=[0.1, 1.0],
                   chatty_s=10, events_n=500, events_repeats=2, stop_early_n=1000,
                   stop_early_repeats=2, scale_n=1000, nofile_n=1000, features_n=1000, features_repeats=2),
}

WORKLOADS = ["spawn", "idle", "restart", "stop", "control", "churn", "chatty", "events", "stop-early",
             "scale", "nofile", "health", "features"]
SESSION_WORKLOADS = {"spawn", "idle", "restart", "stop", "control"}


def _row(rows: list[dict[str, Any]], workload: str, metric: str, n: int, sup: str, unit: str,
         better: str, samples: list[float], summary: str = "median", note: str = "") -> None:
    # merge repeats into one row per (workload, metric, n, supervisor)
    for r in rows:
        if (r["workload"], r["metric"], r["n"], r["supervisor"]) == (workload, metric, n, sup):
            r["samples"].extend(samples)
            if note and note not in r["note"]:
                r["note"] = (r["note"] + "; " + note).strip("; ")
            return
    rows.append({"workload": workload, "metric": metric, "n": n, "supervisor": sup,
                 "unit": unit, "better": better, "summary": summary, "samples": list(samples),
                 "note": note})


def _spawn_timeout(n: int) -> float:
    return 20 + n * 0.04


def _cpu(pids: list[int]) -> int:
    return sum(procs.cpu_ns(p) or 0 for p in pids)


# =================================================================== 1-4: spawn, idle, restart, stop

def session_workloads(ctx: Ctx, p: Params, ad: Adapter, n: int, which: set[str],
                      rows: list[dict[str, Any]]) -> None:
    farm = Farm(argv=SLEEPER_ARGV, count=n, env=ctx.marker_env())
    # control: exec-supervisor's API while N spawn and with N running (costs.py)
    control = "control" in which and isinstance(ad, ExecSupervisor)
    import costs  # imports this module
    with Session(ctx, ad, farm, label=f"spawn/idle/restart/stop N={n}") as s:
        poller = costs.HealthPoller(ad.control_socket(s.workdir)) if control else None  # type: ignore[attr-defined]
        t0 = s.start()
        if poller is not None:
            poller.bind(s)
            poller.start()
        ok = s.wait_alive(n, _spawn_timeout(n))
        if poller is not None:
            poller.finish(rows, ctx, s, n, t0)
        if not ok:
            _row(rows, "spawn", "spawn_s", n, ad.name, "s", "lower", [],
                 note=f"not all alive after {_spawn_timeout(n):.0f} s: {s.leftovers()}")
            return
        t_n = s.nth_exec_ns(n, t0)
        if "spawn" in which and t_n is not None:
            _row(rows, "spawn", "spawn_s", n, ad.name, "s", "lower", [(t_n - t0) / 1e9])
        if "idle" in which:
            measure_idle(ctx, p, s, rows, "idle", "", n)
        if control:
            costs.control_figures(ctx, p, ad, s, n, rows)
        if "restart" in which:
            measure_restarts(ctx, p, s, rows, "restart", "", n)
        if "stop" in which:
            if not which & {"idle", "restart"}:
                # stop-all is about a running farm; a SIGTERM during start-up is stop-early's job
                time.sleep(max(1.0, p.settle_s))
            ok, secs = s.stop(timeout=60)
            _row(rows, "stop", "stop_s", n, ad.name, "s", "lower", [secs] if ok else [],
                 note="" if ok else f"not stopped within 60 s: {s.leftovers()}")
            if ok:
                # where the time went: the instances' exits vs the supervisor's own exit
                _row(rows, "stop", "instances_gone_s", n, ad.name, "s", "lower", [s.stop_split[0]])
                _row(rows, "stop", "supervisor_exit_s", n, ad.name, "s", "lower", [s.stop_split[1]])


def measure_idle(ctx: Ctx, p: Params, s: Session, rows: list[dict[str, Any]], workload: str,
                 prefix: str, n: int) -> None:
    """After the settle period: the supervisor's CPU over the idle window, then RSS, Pss, threads, fds
    (prefix: the features workload's "on:"/"off:")."""
    name = s.adapter.name
    time.sleep(p.settle_s)
    helpers = [h.pid for h in ctx.obs.helpers(s.top)]
    c0, w0 = _cpu(helpers), now_ns()
    time.sleep(p.idle_s)
    c1, w1 = _cpu(helpers), now_ns()
    fp = procs.footprint(helpers)
    note = f"{len(helpers)} process(es)" if len(helpers) > 1 else ""
    _row(rows, workload, prefix + "cpu_pct", n, name, "% core", "lower",
         [100 * (c1 - c0) / (w1 - w0)], note=note)
    _row(rows, workload, prefix + "rss_mib", n, name, "MiB", "lower", [fp.rss / 2**20])
    _row(rows, workload, prefix + "pss_mib", n, name, "MiB", "lower", [procs.pss(helpers) / 2**20])
    if not prefix:
        _row(rows, workload, "threads", n, name, "", "lower", [fp.threads])
        _row(rows, workload, "fds", n, name, "", "lower", [fp.fds])


def measure_restarts(ctx: Ctx, p: Params, s: Session, rows: list[dict[str, Any]], workload: str,
                     prefix: str, n: int) -> None:
    """SIGKILL a random instance, time until a new one has exec'd; p.kills times, random pauses."""
    lat: list[float] = []
    misses = 0
    for _ in range(p.kills):
        victims = sorted(ctx.obs.alive_pids(s.top))
        if not victims:
            break
        victim = random.choice(victims)
        before = ctx.obs.exec_count(s.top)
        t_kill = now_ns()
        os.kill(victim, signal.SIGKILL)
        if ctx.obs.wait_for(lambda: ctx.obs.exec_count(s.top) > before, 10):
            t_new = ctx.obs.exec_times(s.top, t_kill)
            lat.append((t_new[0] - t_kill) / 1e6 if t_new else float("nan"))
        else:
            misses += 1
        s.wait_alive(n, 10)
        # a random pause so that kills fall at random phases of a peer's main-loop tick
        time.sleep(random.uniform(0.05, 0.3))
    note = f"{misses} kill(s) not restarted within 10 s" if misses else ""
    name = s.adapter.name
    _row(rows, workload, prefix + "restart_p50_ms", n, name, "ms", "lower", lat, "median", note)
    _row(rows, workload, prefix + "restart_p95_ms", n, name, "ms", "lower", list(lat), "p95")


# =================================================================== 5: churn

def churn(ctx: Ctx, p: Params, ad: Adapter, rows: list[dict[str, Any]]) -> None:
    n = p.churn_n
    # start_seconds 0.1: a 0.2-1.0 s life is a good run for exec-supervisor, so no backoff builds up
    farm = Farm(argv=CHURN_ARGV, count=n, env=ctx.marker_env(), start_seconds=0.1)
    with Session(ctx, ad, farm, label="churn") as s:
        t0 = s.start()
        if not ctx.obs.wait_for(lambda: ctx.obs.exec_count(s.top) >= n or s.exited_early(),
                                _spawn_timeout(n)) or s.exited_early():
            _row(rows, "churn", "restarts_per_s", n, ad.name, "/s", "higher", [],
                 note=f"never started {n} instances: {s.leftovers()}")
            return
        time.sleep(p.warmup_s)  # past the initial burst, into the steady state
        helpers = [h.pid for h in ctx.obs.helpers(s.top)]
        e0, c0, w0 = ctx.obs.exec_count(s.top), _cpu(helpers), now_ns()
        time.sleep(p.churn_s)
        e1, c1, w1 = ctx.obs.exec_count(s.top), _cpu(helpers), now_ns()
        secs = (w1 - w0) / 1e9
        _row(rows, "churn", "restarts_per_s", n, ad.name, "/s", "higher", [(e1 - e0) / secs])
        _row(rows, "churn", "cpu_pct", n, ad.name, "% core", "lower", [100 * (c1 - c0) / (w1 - w0)])
        del t0


# =================================================================== 6: chatty

def _dir_bytes(path: Path) -> int:
    total = 0
    for f in path.iterdir():
        try:
            total += f.stat().st_size
        except OSError:
            pass
    return total


def chatty(ctx: Ctx, p: Params, ad: Adapter, rate: float, rows: list[dict[str, Any]]) -> None:
    n = p.chatty_n
    argv = [sys.executable, str(BENCH / "programs" / "chatty.py"), f"{rate:g}"]
    # rotation high enough that nothing written during the window is deleted before it is counted
    farm = Farm(argv=argv, count=n, env=ctx.marker_env(), log_max_bytes=1 << 30)
    with Session(ctx, ad, farm, label=f"chatty {rate:g} MiB/s") as s:
        s.start()
        if not s.wait_alive(n, _spawn_timeout(n) + 20):
            _row(rows, "chatty", f"cpu_pct@{rate:g}MiB/s", n, ad.name, "% core", "lower", [],
                 note=f"not all alive: {s.leftovers()}")
            return
        time.sleep(p.warmup_s)
        logs = s.workdir / "logs"
        helpers = [h.pid for h in ctx.obs.helpers(s.top)]
        b0, c0, w0 = _dir_bytes(logs), _cpu(helpers), now_ns()
        time.sleep(p.chatty_s)
        b1, c1, w1 = _dir_bytes(logs), _cpu(helpers), now_ns()
        secs = (w1 - w0) / 1e9
        offered = n * rate  # MiB/s
        landed = (b1 - b0) / 2**20 / secs
        files = sum(1 for f in logs.iterdir() if f.stat().st_size > 0)
        _row(rows, "chatty", f"cpu_pct@{rate:g}MiB/s", n, ad.name, "% core", "lower",
             [100 * (c1 - c0) / (w1 - w0)])
        _row(rows, "chatty", f"landed_pct@{rate:g}MiB/s", n, ad.name, "% of output", "higher",
             [100 * landed / offered], note=f"{files} non-empty log file(s)")


# =================================================================== 7: events

class LogApi:
    """The log API server subprocess (DevService or the stand-in)."""

    def __init__(self, ctx: Ctx) -> None:
        d = ctx.tmp / f"logapi-{ctx.counter}"
        d.mkdir(parents=True, exist_ok=True)
        self.ready, self.arrivals = d / "ready.json", d / "arrivals.txt"
        self.arrivals.write_text("")
        # its own marker value: per-session sweeps leave it alone, the final sweep does not
        env = dict(ctx.env, **{procs.MARKER_VAR: ctx.marker + "-svc"})
        self.proc = procs.launch([sys.executable, str(BENCH / "logapi_server.py"),
                                  str(self.ready), str(self.arrivals)], env, d / "server.out")
        deadline = time.monotonic() + 20
        while not self.ready.exists() or not self.ready.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"log API did not start: {(d / 'server.out').read_text()[-500:]}")
            time.sleep(0.02)
        info = json.loads(self.ready.read_text())
        self.url: str = info["url"]
        self.kind: str = info["kind"]

    def samples(self) -> list[tuple[int, int]]:
        out = []
        for line in self.arrivals.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.append((int(parts[0]), int(parts[1])))
        return out

    def count(self) -> int:
        s = self.samples()
        return s[-1][1] if s else 0

    def wait_quiet(self, quiet_s: float, cap_s: float) -> None:
        """Until no entry arrived for quiet_s (or cap_s passed)."""
        deadline = time.monotonic() + cap_s
        last_n, last_change = self.count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            n = self.count()
            if n != last_n:
                last_n, last_change = n, time.monotonic()
            elif time.monotonic() - last_change >= quiet_s:
                return

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                procs.kill_group(self.proc)


def events(ctx: Ctx, p: Params, ad: Adapter, rows: list[dict[str, Any]]) -> None:
    n = p.events_n
    api = LogApi(ctx)
    try:
        forward = isinstance(ad, ExecSupervisor)
        farm = Farm(argv=SLEEPER_ARGV, count=n, env=ctx.marker_env(), forward_events=forward,
                    service_url=api.url)
        with Session(ctx, ad, farm, label="events") as s:
            s.start()
            if not s.wait_alive(n, _spawn_timeout(n)):
                _row(rows, "events", "recover_s", n, ad.name, "s", "lower", [],
                     note=f"not all alive: {s.leftovers()}")
                return
            if forward:
                api.wait_quiet(p.quiet_s, 60)  # start-up events drained: the storm's are counted alone
            else:
                time.sleep(1)
            victims = sorted(ctx.obs.alive_pids(s.top))
            before_execs, before_entries = ctx.obs.exec_count(s.top), api.count()
            t0 = now_ns()
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ok = ctx.obs.wait_for(lambda: ctx.obs.exec_count(s.top) >= before_execs + len(victims),
                                  30)
            t_n = s.nth_exec_ns(len(victims), t0) if ok else None
            _row(rows, "events", "recover_s", n, ad.name, "s", "lower",
                 [(t_n - t0) / 1e9] if t_n else [],
                 note="" if t_n else f"not all restarted within 30 s: {s.leftovers()}")
            if forward:
                api.wait_quiet(p.quiet_s + 1, 120)
                after = [(t, c) for t, c in api.samples() if t >= t0 and c > before_entries]
                delivered = (after[-1][1] - before_entries) if after else 0
                t_last = (after[-1][0] - t0) / 1e9 if after else float("nan")
                _row(rows, "events", "events_delivered", n, ad.name, "", "higher", [delivered],
                     note=f"log API: {api.kind}")
                _row(rows, "events", "events_last_s", n, ad.name, "s", "lower",
                     [t_last] if after else [])
                # the storm's N crash events are published at once: the time until N entries
                # arrived gives the delivery rate without the start_seconds wait for "running"
                t_nth = next(((t - t0) / 1e9 for t, c in after if c - before_entries >= len(victims)), None)
                _row(rows, "events", "events_per_s", n, ad.name, "/s", "higher",
                     [len(victims) / t_nth] if t_nth else [],
                     note="" if t_nth else f"fewer than {len(victims)} entries arrived")
    finally:
        api.close()


# =================================================================== 8: stop early

def stop_early(ctx: Ctx, p: Params, ad: Adapter, rows: list[dict[str, Any]]) -> None:
    n = p.stop_early_n
    farm = Farm(argv=SLEEPER_ARGV, count=n, env=ctx.marker_env())
    with Session(ctx, ad, farm, label="stop-early") as s:
        s.start()
        if not s.wait_alive(n // 2, _spawn_timeout(n), at_least=True):
            _row(rows, "stop-early", "stop_s", n, ad.name, "s", "lower", [],
                 note=f"half never alive: {s.leftovers()}")
            return
        up = s.alive()
        ok, secs = s.stop(timeout=p.stop_early_timeout)
        if not ok:
            s.stop_timeout = 5  # close() tries one more SIGTERM, then kills
        _row(rows, "stop-early", "stop_s", n, ad.name, "s", "lower", [secs] if ok else [],
             note=(f"SIGTERM at {up} alive" if ok else
                   f"FAILED: SIGTERM at {up} alive; after {p.stop_early_timeout:g} s: {s.leftovers()}"))


# =================================================================== 9: scale and status

def scale(ctx: Ctx, p: Params, ad: Adapter, rows: list[dict[str, Any]]) -> None:
    n = p.scale_n
    if not ad.supports_scale:
        _row(rows, "scale", "scale_up_s", n, ad.name, "s", "lower", [],
             note="not available (no scale/status command)")
        return
    farm = Farm(argv=SLEEPER_ARGV, count=0, env=ctx.marker_env())
    with Session(ctx, ad, farm, label="scale") as s:
        s.start()
        time.sleep(p.warmup_s)  # the control socket has to exist before any command can talk to it
        sock = getattr(ad, "control_socket", None)
        if sock is not None:  # a loaded machine can take longer than the warm-up: wait for it
            deadline = time.monotonic() + 30
            while not sock(s.workdir).exists() and not s.exited_early() and time.monotonic() < deadline:
                time.sleep(0.05)
        if s.exited_early():
            _row(rows, "scale", "scale_up_s", n, ad.name, "s", "lower", [],
                 note=f"did not start with 0 instances: {(s.workdir / 'supervisor.out').read_text()[-300:]}")
            return
        env = dict(ctx.env, **ctx.marker_env())
        current = 0
        for target, metric in ((n, "scale_up_s"), (0, "scale_down_s")):
            if target == 0:
                for _ in range(5):  # status with N running
                    argv = ad.status_command(s.workdir)
                    if argv:
                        secs, rc, out = run_cmd(argv, env, 60)
                        _row(rows, "scale", "status_s", n, ad.name, "s", "lower",
                             [secs] if rc == 0 else [],
                             note="" if rc == 0 else f"exit {rc}: {out.strip()[-200:]}")
            cmds = ad.scale_commands(farm, s.workdir, target, current)
            done: list[tuple[float, int, str]] = []
            t0 = time.monotonic()
            # the commands run beside the observation: "reached" is what we see, not what they say
            runner = threading.Thread(target=lambda: done.extend(run_cmd(c, env, 60) for c in cmds))
            runner.start()
            reached = s.wait_alive(target, _spawn_timeout(n))
            t_reached = time.monotonic() - t0
            runner.join()
            t_cmd = time.monotonic() - t0 if not done else sum(d[0] for d in done)
            bad = [d for d in done if d[1] != 0]
            note = f"command(s) returned after {t_cmd:.2f} s" + (
                f"; exit {bad[0][1]}: {bad[0][2].strip()[-200:]}" if bad else "")
            _row(rows, "scale", metric, n, ad.name, "s", "lower", [t_reached] if reached else [],
                 note=note if reached else f"{target} not reached: {s.leftovers()}; {note}")
            if not reached:
                break  # scaling down from a count never reached would time nothing
            current = target


# =================================================================== supervisord's fd ceiling

def nofile(ctx: Ctx, p: Params, rows: list[dict[str, Any]]) -> None:
    """supervisord at the common 1024 soft limit (and minfds=1024): how many instances it
    gets up. The main runs raise the limit for every supervisor instead."""
    n = p.nofile_n
    ad = Supervisord(nofile_soft=1024)
    if ad.available():
        return
    farm = Farm(argv=SLEEPER_ARGV, count=n, env=ctx.marker_env())
    with Session(ctx, ad, farm, nofile_soft=1024, label="nofile") as s:
        s.start()
        s.wait_alive(n, 15)
        time.sleep(2)
        _row(rows, "nofile", "alive_at_1024", n, ad.name, "instances", "higher", [s.alive()],
             note="RLIMIT_NOFILE soft 1024, minfds 1024; counted 2 s after the wait for all gave up")
        s.stop(timeout=30)
