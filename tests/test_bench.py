"""The benchmark harness (bench/) runs end to end and cleans up after itself.

Not a benchmark: --smoke uses N=5 and windows of about a second, so its figures
mean nothing. What is checked is that every workload produces well-formed
report.md / results.json, and that no process the run started survives it --
including a peer that ignores SIGTERM during start-up (circus in stop-early).
Peers are used only when bench/.venv has them (bash bench/setup_peers.sh);
nothing here needs the network.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
VENV = ROOT / "bench" / ".venv" / "bin"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="the proc connector the harness observes with needs root"),
]


def marked(marker: str) -> list[int]:
    """Live (non-zombie) processes carrying the run's marker in their environment."""
    needles = [f"BENCH_RUN={marker}\0".encode(), f"BENCH_RUN={marker}-svc\0".encode()]
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(n in env for n in needles):
            found.append(int(name))
    return found


def run_bench(out: Path, *args: str, timeout: float) -> dict[str, Any]:
    r = subprocess.run([sys.executable, str(RUN), "--smoke", "--out", str(out), *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    assert report.startswith("# exec-supervisor benchmark (smoke mode)")
    for section in ("## Results", "## Targets (exec-supervisor)", "## Settings", "## Run health"):
        assert section in report
    assert f"{os.cpu_count()} cores" in report
    meta = data["meta"]
    assert meta["errors"] == [], meta["errors"]
    assert meta["leftover_after_run"] == [], "the final sweep had to kill processes"
    assert not meta["interrupted"]
    # nothing the run started is alive now
    assert marked(meta["marker"]) == []
    return data


def check_rows(data: dict[str, Any]) -> None:
    keys = {"workload", "metric", "n", "supervisor", "unit", "better", "summary", "samples", "note"}
    for row in data["results"]:
        assert keys <= row.keys(), row
        assert row["better"] in ("lower", "higher")
        assert all(isinstance(x, (int, float)) for x in row["samples"]), row


def figures(data: dict[str, Any], workload: str, metric: str, sup: str) -> list[float]:
    return [x for r in data["results"]
            if (r["workload"], r["metric"], r["supervisor"]) == (workload, metric, sup)
            for x in r["samples"] if not math.isnan(x)]


def test_smoke_exec_supervisor_and_limit(tmp_path: Path) -> None:
    """Every workload against exec-supervisor and the posix_spawn limit loop."""
    data = run_bench(tmp_path, "--supervisors", "exec-supervisor,limit", timeout=150)
    check_rows(data)
    meta = data["meta"]
    assert "limit" in meta["supervisors"]
    # the limit loop is ours and simple: it must produce every sleeper figure
    for workload, metric in (("spawn", "spawn_s"), ("restart", "restart_p50_ms"), ("stop", "stop_s"),
                             ("idle", "cpu_pct"), ("churn", "restarts_per_s"),
                             ("stop-early", "stop_s"), ("events", "recover_s")):
        values = figures(data, workload, metric, "limit")
        assert values and all(v >= 0 for v in values), (workload, metric, values)
    report = (tmp_path / "report.md").read_text()
    assert "| spawn | spawn_s [s]" in report
    if (VENV / "python").exists():  # setup_peers.sh puts matplotlib there
        assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if "exec-supervisor" in meta["supervisors"]:
        assert figures(data, "spawn", "spawn_s", "exec-supervisor"), "exec-supervisor never got 5 up"
        for metric in ("idle_cpu_pct", "watchdog_cpu_pct", "max_memory_cpu_pct"):
            assert figures(data, "health", metric, "exec-supervisor"), metric
        for workload, metric in (("control", "status_json_s"), ("control", "status_table_s"),
                                 ("control", "health_worst_ms"), ("control", "metrics_scrape_ms"),
                                 ("idle", "pss_mib"), ("features", "off:cpu_pct"), ("features", "on:cpu_pct"),
                                 ("features", "off:restart_p50_ms"), ("features", "on:restart_p50_ms"),
                                 ("features", "on:churn_cpu_pct")):
            assert figures(data, workload, metric, "exec-supervisor"), (workload, metric)
        assert "## Features on vs off" in report
        assert "es/limit" in report


@pytest.mark.skipif(not (VENV / "supervisord").exists() or not (VENV / "circusd").exists(),
                    reason="peers not installed (bash bench/setup_peers.sh)")
def test_smoke_peers_cleanup(tmp_path: Path) -> None:
    """The peers in spawn/stop and stop-early. A peer may fail a workload (circus ignores a
    SIGTERM during start-up; supervisord needs ~10 s to stop early): that must show up as a
    figure-less row with a note, and still leave nothing behind."""
    data = run_bench(tmp_path, "--supervisors", "supervisord,circus", "--only", "spawn,stop,stop-early",
                     "--no-chart", timeout=150)
    check_rows(data)
    for sup in ("supervisord", "circus"):
        assert figures(data, "spawn", "spawn_s", sup), sup
        for workload in ("stop", "stop-early"):
            rows = [r for r in data["results"]
                    if (r["workload"], r["metric"], r["supervisor"]) == (workload, "stop_s", sup)]
            assert len(rows) == 1, (workload, sup)
            assert rows[0]["samples"] or rows[0]["note"], rows[0]
    assert data["meta"]["versions"].get("supervisor") and data["meta"]["versions"].get("circus")
