"""Reload is all or nothing, and the farm has a bound: real daemons, the real CLI, the real socket.

A reload that would fail anywhere leaves the old config running; `scale` and `reload` refuse to go
over supervisor.max_instances; health keeps answering while the daemon spawns hundreds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import yaml

from conftest import Farm, wait_until
from test_control import cli, ok, raw, status

SLEEP = shutil.which("sleep")


def sleeper(**extra: Any) -> dict[str, Any]:
    return {"command": [SLEEP, "10000"], "args": [], **extra}


def edit(farm: Farm, change: Any) -> None:
    data = yaml.safe_load(farm.config_path.read_text())
    change(data)
    farm.config_path.write_text(yaml.safe_dump(data, sort_keys=False, width=10**9))


def test_reload_that_would_fail_later_leaves_the_old_config_running(farm: Farm) -> None:
    # ids past Python's 4300-digit int-to-str limit passed validation; the reload swapped the
    # config, failed while reconciling (exit 1, "internal error") and status answered 500.
    farm.write({"A": sleeper(count=2)})
    farm.start(wait_instances=2)
    farm.wait_log("ET-A-1: running")
    before = farm.instances()
    text = farm.config_path.read_text()
    assert "count: 2" in text
    farm.config_path.write_text(text.replace("count: 2", f"ids: [0, 1, 0x{'F' * 4000}]"))
    result = cli(farm, "reload")
    assert result.returncode == 2, (result.stdout, result.stderr[:2000])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(farm.config_path) + ":")]
    assert len(problems) == 1 and "executors.A.ids" in problems[0], result.stderr[:2000]
    assert len(problems[0]) < 300
    code, data = raw(farm, "GET", "/v1/status")
    assert code == 200 and [r["exec_id"] for r in data["instances"]] == ["ET-A-0", "ET-A-1"]
    assert farm.instances() == before
    farm.wait_log("reload refused")
    # a good config afterwards applies as usual
    farm.config_path.write_text(text.replace("count: 2", "count: 3"))
    ok(farm, "reload")
    wait_until(lambda: len(farm.instances()) == 3, 20, what="3 instances after the good reload")
    assert {k: v for k, v in farm.instances().items() if k in before} == before


def test_reload_over_max_instances_with_a_runtime_scale_is_refused_whole(farm: Farm) -> None:
    farm.write({"A": sleeper(count=2)}, supervisor={"max_instances": 10})
    farm.start(wait_instances=2)
    ok(farm, "scale", "A", "8", "--wait")
    assert len(farm.instances()) == 8
    before = farm.instances()
    # the file alone is fine (2 + 5 <= 10); with A's runtime scale it is 13
    edit(farm, lambda d: d["executors"].update(B=sleeper(count=5, env=d["executors"]["A"]["env"])))
    assert subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "check", str(farm.config_path)],
                          capture_output=True, timeout=60).returncode == 0
    result = cli(farm, "reload")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "13 instances" in result.stderr and "max_instances (10)" in result.stderr, result.stderr
    assert str(farm.config_path) + ":" in result.stderr
    time.sleep(0.3)  # nothing may start late: B's instances must never appear
    assert farm.instances() == before
    assert [t["type"] for t in status(farm)["types"]] == ["A"]


def test_scale_over_max_instances_is_refused_and_changes_nothing(farm: Farm) -> None:
    # `scale S 100000` was accepted (the per-type maximum): the daemon then took half a minute to answer.
    farm.write({"A": sleeper(count=1), "B": sleeper(count=1)}, supervisor={"max_instances": 20})
    farm.start(wait_instances=2)
    result = cli(farm, "scale", "A", "100000")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "max_instances" in result.stderr and "20" in result.stderr and "Traceback" not in result.stderr
    # several types at once: refused whole, the first is not applied either
    result = cli(farm, "scale", "A=10", "B=15")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "25 instances" in result.stderr
    assert len(farm.instances()) == 2
    assert {t["type"]: t["desired"] for t in status(farm)["types"]} == {"A": 1, "B": 1}
    ok(farm, "scale", "A=10", "B=10", "--wait")
    assert len(farm.instances()) == 20
    # ids past the largest an id can be
    result = cli(farm, "scale", "A", "999999999999999999999")
    assert result.returncode == 2 and "at most 18 digits" in result.stderr, result.stderr


def test_health_answers_while_hundreds_spawn(farm: Farm) -> None:
    farm.write({"A": sleeper(count=1)}, supervisor={"max_instances": 1500})
    farm.start(wait_instances=1)
    latencies: list[float] = []
    failures: list[Any] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            started = time.monotonic()
            try:
                code, data = raw(farm, "GET", "/v1/health")
                if code != 200 or not data.get("ok"):
                    failures.append((code, data))
            except Exception as exc:  # a refused or timed-out health check is what this test looks for
                failures.append(repr(exc))
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        ok(farm, "scale", "A", "1500", "--wait", timeout=120)
        ok(farm, "scale", "A", "1", "--wait", timeout=120)
    finally:
        done.set()
        poller.join()
    assert not failures, failures[:5]
    assert len(latencies) > 10
    # The loop yields every batch of spawns: no health check waits for a whole scale-up.
    assert max(latencies) < 5.0, sorted(latencies)[-5:]
