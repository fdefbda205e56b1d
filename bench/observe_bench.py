#!/usr/bin/env python3
"""What watching a farm costs the daemon: a /metrics scrape at N instances, and idle CPU with the page open.

    python bench/observe_bench.py                    # N=1000, 60 s per idle phase, 30 scrapes
    python bench/observe_bench.py --n 200 --idle 10 --scrapes 5 --out /tmp/x   # a quick look

One daemon (`exec-supervisor start`, N `sleep` instances, http.listen on a free loopback
port), measured from outside through /proc (per-thread schedstat, ns resolution):

1. idle CPU with nobody watching (baseline), then with one page open (an SSE client on
   /v1/stream reading everything), then nobody again (drift check);
2. daemon CPU per scrape of /metrics (the first one apart: it imports prometheus_client),
   with 1.1 s between scrapes so every scrape reads /proc afresh (the worst case), and
   per `GET /v1/status` for comparison (the control API's status at the same N);
3. RSS before the first scrape and after the last.

Writes observe.md into --out (default bench/results/) and prints it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import cpu_ns, footprint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from exec_supervisor.control.client import UnixHTTPConnection  # noqa: E402


def get(address: tuple[str, int], path: str) -> bytes:
    connection = http.client.HTTPConnection(*address, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status, body[:200])
        return body
    finally:
        connection.close()


def control(socket_path: Path, path: str) -> bytes:
    connection = UnixHTTPConnection(str(socket_path), timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.read()
    finally:
        connection.close()


def cpu_over(pid: int, seconds: float) -> float:
    """Percent of one CPU the process used over the next `seconds`."""
    start, t0 = cpu_ns(pid), time.monotonic()
    time.sleep(seconds)
    end, t1 = cpu_ns(pid), time.monotonic()
    assert start is not None and end is not None
    return 100.0 * (end - start) / 1e9 / (t1 - t0)


def cpu_of(pid: int, action) -> float:
    """Daemon CPU ms spent while `action` runs (it waits for the answer, so the work is done)."""
    before = cpu_ns(pid)
    action()
    time.sleep(0.02)  # let the loop finish writing
    after = cpu_ns(pid)
    assert before is not None and after is not None
    return (after - before) / 1e6


class PageClient(threading.Thread):
    """A page left open: reads the SSE stream until told to stop."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.connection = http.client.HTTPConnection(*address, timeout=60)
        self.bytes = 0
        self.snapshot = threading.Event()

    def run(self) -> None:
        try:
            self.connection.request("GET", "/v1/stream")
            response = self.connection.getresponse()
            while True:
                line = response.readline()
                if not line:
                    return
                self.bytes += len(line)
                if line.startswith(b"event: snapshot"):
                    self.snapshot.set()
        except (OSError, AttributeError, ValueError):  # closed under it by close()
            return

    def close(self) -> None:
        try:
            self.connection.sock.shutdown(2)  # type: ignore[union-attr]
        except OSError:
            pass
        self.connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds per idle phase")
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="observe-bench-"))
    sleep = shutil.which("sleep")
    (work / "farm.yaml").write_text(json.dumps({
        "supervisor": {"name": "bench", "state_dir": str(work / "state"), "log_dir": str(work / "logs")},
        "events": {"forward": False},
        "http": {"listen": "127.0.0.1:0"},
        "defaults": {"start_seconds": 1},
        "executors": {"Sleep": {"command": [sleep, "100000"], "args": [], "count": args.n}},
    }))
    log = open(work / "daemon.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "exec_supervisor.cli", "start", str(work / "farm.yaml"), "-q"],
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    socket_path = work / "state" / "control.sock"
    try:
        deadline = time.monotonic() + 120
        address = None
        while time.monotonic() < deadline:
            text = (work / "daemon.log").read_text(errors="replace")
            if address is None and "metrics at http://" in text:
                url = text.split("metrics at http://", 1)[1].split("/", 1)[0]
                host, port = url.rsplit(":", 1)
                address = (host, int(port))
            if address is not None and socket_path.exists():
                status = json.loads(control(socket_path, "/v1/status"))
                if status["supervisor"]["running"] == args.n:
                    break
            time.sleep(0.5)
        else:
            raise SystemExit(f"the farm did not come up; see {work / 'daemon.log'}")
        assert address is not None
        pid = daemon.pid
        time.sleep(5)  # settle: the start-up's memory release, the first log check
        rss_start = footprint([pid]).rss

        idle_before = cpu_over(pid, args.idle)
        page = PageClient(address)
        page.start()
        page.snapshot.wait(30)
        time.sleep(2)
        idle_page = cpu_over(pid, args.idle)
        page.close()
        page.join(5)
        time.sleep(2)
        idle_after = cpu_over(pid, args.idle)

        first_scrape = cpu_of(pid, lambda: get(address, "/metrics"))
        rss_after_first = footprint([pid]).rss
        scrape_ms, scrape_wall, size = [], [], 0
        for _ in range(args.scrapes):
            time.sleep(1.1)  # past usage.py's 1 s reuse: every scrape reads /proc afresh
            t0 = time.perf_counter()
            holder: list[bytes] = []
            scrape_ms.append(cpu_of(pid, lambda: holder.append(get(address, "/metrics"))))
            scrape_wall.append((time.perf_counter() - t0) * 1000)
            size = len(holder[0])
        status_ms = []
        for _ in range(max(5, args.scrapes // 3)):
            time.sleep(1.1)
            status_ms.append(cpu_of(pid, lambda: control(socket_path, "/v1/status")))
        rss_end = footprint([pid]).rss
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()

    def q(values: list[float], p: float) -> float:
        return sorted(values)[min(len(values) - 1, int(p * len(values)))]

    scrape_p50, status_p50 = statistics.median(scrape_ms), statistics.median(status_ms)
    idle_base = (idle_before + idle_after) / 2
    lines = [
        f"# Watching the farm: cost to the daemon (N={args.n}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; `sleep` instances; "
        f"{args.scrapes} scrapes 1.1 s apart; idle phases of {args.idle:g} s.",
        "",
        "| what | figure | against |",
        "|---|---|---|",
        f"| daemon CPU per /metrics scrape, p50 / p95 / max | {scrape_p50:.1f} / {q(scrape_ms, 0.95):.1f} / "
        f"{max(scrape_ms):.1f} ms | budget 50 ms: {scrape_p50 / 50:.2f}x; GET /v1/status at the same N: "
        f"{status_p50:.1f} ms ({scrape_p50 / status_p50:.2f}x) |",
        f"| first scrape (imports prometheus_client) | {first_scrape:.1f} ms | |",
        f"| scrape wall time, p50 | {statistics.median(scrape_wall):.1f} ms | exposition {size / 1024:.0f} KiB |",
        f"| idle CPU, nobody watching | {idle_before:.3f} % (then {idle_after:.3f} %) | |",
        f"| idle CPU, one page open (SSE) | {idle_page:.3f} % | {idle_page / idle_base:.2f}x the idle figure "
        f"(+{idle_page - idle_base:.3f} points) |",
        f"| RSS before any scrape / after the first / after all | {rss_start / 2**20:.1f} / "
        f"{rss_after_first / 2**20:.1f} / {rss_end / 2**20:.1f} MiB | +{(rss_end - rss_start) / 2**20:.1f} MiB "
        "once someone scrapes |",
        "",
    ]
    report = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "observe.md").write_text(report)
    print(report)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
