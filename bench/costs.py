"""What exec-supervisor's size and features cost: its control API at N (the `control` workload),
features switched on vs off (`features`), and its health checks (`health`). exec-supervisor only:
no peer has these. Rows as in workloads.py; report_scale.py renders the N=10,000 targets, the cost
growth table and the features table from them.

- control, inside the spawn/idle/restart/stop session: a poller asks `GET /v1/health` on the
  control socket (a new connection each time, as the CLI does) from launch until all N have
  exec'd: the worst and median latency while N spawn, and the worst but the first request's (which
  may wait for the rest of the daemon's start-up). With N running, after the idle window:
  `exec-supervisor status --json` and `status` (the table) as an operator runs them (wall time of
  the whole command), and `/metrics` read over the control socket (the same handler as the
  http: listener's): the first scrape (it imports prometheus_client) apart from a warm one.
- features: the same N, once with features off (incidents off, no http listener, ready:
  start_seconds) and once on (incidents on, http.listen on loopback scraped once, ready: notify
  from programs/ready.pl), alternating: idle CPU, RSS, Pss, restart p50/p95; churn on vs off.
"""

from __future__ import annotations

import http.client
import re
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import workloads as wl
from adapters import Adapter, Farm
from observer import now_ns
from session import Ctx, Session, run_cmd

_row = wl._row


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# =================================================================== control

class HealthPoller(threading.Thread):
    """GET /v1/health on the control socket, again and again, from launch until finish()."""

    TIMEOUT = 5.0

    def __init__(self, sock: Path, pause: float = 0.02) -> None:
        super().__init__(name="health-poller", daemon=True)
        self.sock, self.pause = sock, pause
        self.stop = threading.Event()
        self.latencies: list[float] = []   # ms, answered requests
        self.failures: list[str] = []      # after the first answer: errors and timeouts
        self.first_answer_ns: int | None = None
        self.alive_at_first: int | None = None
        self.count_alive: Any = None

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.exists():
                time.sleep(0.002)
                continue
            t0 = time.perf_counter()
            try:
                status, _body = get(UnixHTTPConnection(self.sock, self.TIMEOUT), "/v1/health")
            except OSError as e:
                if self.first_answer_ns is not None:  # before the first answer: not listening yet
                    self.latencies.append((time.perf_counter() - t0) * 1000)
                    self.failures.append(f"{type(e).__name__}: {e}")
                time.sleep(0.002)
                continue
            ms = (time.perf_counter() - t0) * 1000
            if self.first_answer_ns is None:
                self.first_answer_ns = now_ns()
                self.alive_at_first = self.count_alive() if self.count_alive else None
            self.latencies.append(ms)
            if status != 200:
                self.failures.append(f"HTTP {status}")
            self.stop.wait(self.pause)

    def bind(self, s: Session) -> None:
        self.count_alive = s.alive

    def finish(self, rows: list[dict[str, Any]], ctx: Ctx, s: Session, n: int, t0: int) -> None:
        self.stop.set()
        self.join(self.TIMEOUT + 1)
        name = s.adapter.name
        lat = self.latencies
        if not lat:
            _row(rows, "control", "health_worst_ms", n, name, "ms", "lower", [], "max",
                 note="no answer to GET /v1/health before all were up")
            return
        first = (self.first_answer_ns - t0) / 1e9 if self.first_answer_ns else float("nan")
        note = (f"{len(lat)} requests while spawning, first answered {first:.2f} s after launch with "
                f"{self.alive_at_first} of {n} alive" + (f"; {len(self.failures)} failed: {self.failures[0]}"
                                                         if self.failures else ""))
        _row(rows, "control", "health_worst_ms", n, name, "ms", "lower", [max(lat)], "max", note=note)
        _row(rows, "control", "health_p50_ms", n, name, "ms", "lower", [statistics.median(lat)])
        # the first request may wait for the daemon's own start-up (imports after the socket listens)
        _row(rows, "control", "health_worst_after_first_ms", n, name, "ms", "lower",
             [max(lat[1:])] if len(lat) > 1 else [], "max")


def control_figures(ctx: Ctx, p: wl.Params, ad: Adapter, s: Session, n: int,
                    rows: list[dict[str, Any]]) -> None:
    """status --json, status (the table) and /metrics with N running, as an operator sees them."""
    env = dict(ctx.env, **ctx.marker_env())
    tries = 1 if p.mode == "smoke" else 3
    for metric, argv in (("status_json_s", ad.status_command(s.workdir)),
                         ("status_table_s", ad.status_table_command(s.workdir))):  # type: ignore[attr-defined]
        samples, note = [], ""
        for _ in range(tries):
            secs, rc, out = run_cmd(argv, env, 60)
            if rc in (0, 4):  # 4: a desired instance is not running (a moment after a restart)
                samples.append(secs)
            else:
                note = f"exit {rc}: {out.strip()[-200:]}"
        _row(rows, "control", metric, n, ad.name, "s", "lower", samples, note=note)
    daemon = s.top
    sock = ad.control_socket(s.workdir)  # type: ignore[attr-defined]
    for metric in ("metrics_first_ms", "metrics_scrape_ms"):
        time.sleep(1.1)  # past the usage cache: every scrape reads /proc afresh
        c0, t0 = wl._cpu([daemon]), time.perf_counter()
        try:
            status, body = get(UnixHTTPConnection(sock, 60), "/metrics")
        except OSError as e:
            _row(rows, "control", metric, n, ad.name, "ms", "lower", [], note=f"{type(e).__name__}: {e}")
            continue
        wall = (time.perf_counter() - t0) * 1000
        cpu = (wl._cpu([daemon]) - c0) / 1e6
        ok = status == 200
        _row(rows, "control", metric, n, ad.name, "ms", "lower", [wall] if ok else [],
             note=(f"daemon CPU {cpu:.1f} ms, {len(body) / 1024:.0f} KiB" if ok else f"HTTP {status}"))
        if ok and metric == "metrics_scrape_ms":
            _row(rows, "control", "metrics_cpu_ms", n, ad.name, "ms", "lower", [cpu])


# =================================================================== features on vs off

def _variant_extra(on: bool, ready: bool) -> dict[str, Any]:
    if not on:
        return {"incidents": False}
    keys = {"ready": "notify"} if ready else {}
    # incidents on with a share threshold the restart workload's 20 kills never reach: their
    # bookkeeping runs on every exit, their pacing (by design after 3 failures) does not
    return {"incidents": {"threshold": "50%"}, "http_listen": "127.0.0.1:0", "executor_keys": keys}


def listener(s: Session, timeout: float = 30) -> tuple[str, int] | None:
    """The http: listener's address, from the daemon's start-up line."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(r"metrics at http://(\[[^\]]+\]|[^:/]+):(\d+)/")
    while time.monotonic() < deadline:
        m = pattern.search((s.workdir / "supervisor.out").read_text(errors="replace"))
        if m:
            return m.group(1).strip("[]"), int(m.group(2))
        time.sleep(0.1)
    return None


def features(ctx: Ctx, p: wl.Params, ad: Adapter, rows: list[dict[str, Any]]) -> None:
    n = p.features_n
    for rep in range(p.features_repeats):
        for on in ((False, True) if rep % 2 == 0 else (True, False)):
            tag = "on:" if on else "off:"
            farm = Farm(argv=wl.READY_ARGV if on else wl.SLEEPER_ARGV, count=n, env=ctx.marker_env(),
                        extra=_variant_extra(on, ready=True))
            ctx.log(f"  features {tag[:-1]} N={n} rep {rep + 1}")
            with Session(ctx, ad, farm, label=f"features {tag[:-1]} N={n}") as s:
                s.start()
                if not s.wait_alive(n, wl._spawn_timeout(n)):
                    _row(rows, "features", tag + "cpu_pct", n, ad.name, "% core", "lower", [],
                         note=f"not all alive: {s.leftovers()}")
                    continue
                if on:
                    address = listener(s)
                    if address is None:
                        _row(rows, "features", "on:metrics_scrape_ms", n, ad.name, "ms", "lower", [],
                             note="the http: listener never said where it listens")
                    else:
                        t0 = time.perf_counter()
                        status, _ = get(http.client.HTTPConnection(*address, timeout=60), "/metrics")
                        _row(rows, "features", "on:metrics_scrape_ms", n, ad.name, "ms", "lower",
                             [(time.perf_counter() - t0) * 1000] if status == 200 else [],
                             note="first scrape over the http: listener (before the idle window)")
                wl.measure_idle(ctx, p, s, rows, "features", tag, n)
                wl.measure_restarts(ctx, p, s, rows, "features", tag, n)
        if p.features_churn:
            for on in ((False, True) if rep % 2 == 0 else (True, False)):
                tag = "on:" if on else "off:"
                churn_features(ctx, p, ad, rows, tag, _variant_extra(on, ready=False))


def churn_features(ctx: Ctx, p: wl.Params, ad: Adapter, rows: list[dict[str, Any]], tag: str,
                   extra: dict[str, Any]) -> None:
    n = p.churn_n
    farm = Farm(argv=wl.CHURN_ARGV, count=n, env=ctx.marker_env(), start_seconds=0.1, extra=extra)
    ctx.log(f"  features churn {tag[:-1]} N={n}")
    with Session(ctx, ad, farm, label=f"features churn {tag[:-1]}") as s:
        s.start()
        if not ctx.obs.wait_for(lambda: ctx.obs.exec_count(s.top) >= n or s.exited_early(),
                                wl._spawn_timeout(n)) or s.exited_early():
            _row(rows, "features", tag + "churn_cpu_pct", n, ad.name, "% core", "lower", [],
                 note=f"never started {n} instances: {s.leftovers()}")
            return
        time.sleep(p.warmup_s)
        helpers = [h.pid for h in ctx.obs.helpers(s.top)]
        e0, c0, w0 = ctx.obs.exec_count(s.top), wl._cpu(helpers), now_ns()
        time.sleep(p.churn_s)
        e1, c1, w1 = ctx.obs.exec_count(s.top), wl._cpu(helpers), now_ns()
        _row(rows, "features", tag + "churn_restarts_per_s", n, ad.name, "/s", "higher",
             [(e1 - e0) / ((w1 - w0) / 1e9)])
        _row(rows, "features", tag + "churn_cpu_pct", n, ad.name, "% core", "lower",
             [100 * (c1 - c0) / (w1 - w0)])


# =================================================================== 10: health (exec-supervisor only)

HEALTH_MAX_N = 1000
HEALTH_VARIANTS = (
    # (metric, instance argv, executor keys): the baseline is plain idle, measured in the same run
    ("idle_cpu_pct", wl.SLEEPER_ARGV, {}),
    ("watchdog_cpu_pct", wl.HEARTBEAT_ARGV, {"ready": "notify", "watchdog": "30s"}),
    ("max_memory_cpu_pct", wl.SLEEPER_ARGV, {"max_memory": "1GiB"}),
)


def health(ctx: Ctx, p: wl.Params, ad: Adapter, rows: list[dict[str, Any]]) -> None:
    """N instances idle; N each sending WATCHDOG=1 every second; N under max_memory sampling.

    The daemon's CPU over the idle window in each, so the two health figures stand next to
    the idle figure of the same run (targets: heartbeats < 5 % of a core, sampling within 0.3 %).
    At most N=1000: 10,000 Perl heartbeats would need gigabytes of their own."""
    n = min(max(p.ns), HEALTH_MAX_N)
    for metric, argv, keys in HEALTH_VARIANTS:
        farm = Farm(argv=argv, count=n, env=ctx.marker_env(), extra={"executor_keys": keys})
        with Session(ctx, ad, farm, label=f"health {metric} N={n}") as s:
            s.start()
            if not s.wait_alive(n, wl._spawn_timeout(n)):
                _row(rows, "health", metric, n, ad.name, "% core", "lower", [],
                     note=f"not all alive: {s.leftovers()}")
                continue
            smoke = p.mode == "smoke"
            time.sleep(p.settle_s if smoke else max(p.settle_s, 6.0))  # past start-up and a first memory sample
            helpers = [h.pid for h in ctx.obs.helpers(s.top)]
            c0, w0 = wl._cpu(helpers), now_ns()
            time.sleep(p.idle_s if smoke else max(p.idle_s, 10.0))  # whole sampling periods (5 s)
            c1, w1 = wl._cpu(helpers), now_ns()
            _row(rows, "health", metric, n, ad.name, "% core", "lower", [100 * (c1 - c0) / (w1 - w0)])
