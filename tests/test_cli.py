"""The operator's CLI against real daemons: never locked out, honest exit codes, runtime scale said aloud."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import Farm, wait_until
from exec_supervisor.control import registry

SLEEP = shutil.which("sleep")


def sleeper(**extra: Any) -> dict[str, Any]:
    return {"command": [SLEEP, "10000"], "args": [], **extra}


def cli(farm: Farm, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
        config_first: bool = False) -> subprocess.CompletedProcess[str]:
    where = ["-c", str(farm.config_path)]
    argv = [*where, *args] if config_first else [*args, *where]
    return subprocess.run([sys.executable, "-m", "exec_supervisor.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def run_ok(farm: Farm, *args: str, codes: tuple[int, ...] = (0,), **kw: Any) -> str:
    result = cli(farm, *args, **kw)
    assert result.returncode in codes, (args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def states(farm: Farm) -> dict[str, str]:
    data = json.loads(run_ok(farm, "status", "--json", codes=(0, 4)))
    return {row["exec_id"]: row["state"] for row in data["instances"]}


# --------------------------------------------------------------------------- a broken config never locks out


def test_a_broken_config_does_not_lock_the_operator_out(farm: Farm) -> None:
    farm.write({"A": sleeper(count=2)})
    farm.start(wait_instances=2)
    wait_until(lambda: set(states(farm).values()) == {"running"}, 20, what="both running")
    entry, stale = registry.lookup(farm.config_path)
    assert entry is not None and entry.pid == farm.daemon.pid and not stale
    pids = farm.instances()

    good = farm.config_path.read_text()
    broken = good.replace("executors:\n  A:\n", "executors:\n  A:\n   oops: [\n", 1)
    assert broken != good
    farm.config_path.write_text(broken)

    # Every client command still reaches the daemon, whatever the file says now.
    assert "ET-A-1" in run_ok(farm, "status")
    assert "ET-A-0" in run_ok(farm, "status", config_first=True)
    result = cli(farm, "reload")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(rf"^{re.escape(str(farm.config_path))}:\d+: ", result.stderr, re.M), result.stderr
    assert "nothing was changed" in result.stderr
    assert farm.instances() == pids, "a refused reload changes nothing"

    run_ok(farm, "stop", "ET-A-1")
    assert states(farm)["ET-A-1"] == "stopped"
    out = run_ok(farm, "shutdown")
    assert f"exec-supervisor (pid {farm.daemon.pid}) stopped 1 instance and exited" in out
    assert farm.stop() == 0
    assert not entry.file.exists(), "the daemon removes its record as it exits"
    result = cli(farm, "status")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not valid YAML" in result.stderr and "no running daemon of it is recorded" in result.stderr


def test_a_stale_record_is_recognised(farm: Farm) -> None:
    farm.write({"A": sleeper(count=1)})
    dead = subprocess.Popen(["true"])
    dead.wait()
    place = registry.candidate_files(farm.config_path)[-1]  # the fallback next to the config
    place.write_text(json.dumps({"config": registry.config_key(farm.config_path), "pid": dead.pid,
                                 "socket": str(farm.dir / "gone.sock"), "started": 1.0}))
    entry, stale = registry.lookup(farm.config_path)
    assert entry is None and [s.file for s in stale] == [place]
    result = cli(farm, "status")
    assert result.returncode == 3, result.stderr
    assert f"{place} is stale (its daemon (pid {dead.pid}) is no longer running)" in result.stderr

    farm.start(wait_instances=1)  # a new daemon replaces the stale record
    wait_until(lambda: registry.lookup(farm.config_path)[0] is not None, 20, what="the new daemon's record")
    assert "ET-A-0" in run_ok(farm, "status", codes=(0, 4))
    assert farm.stop() == 0


# --------------------------------------------------------------------------- status exit code and filters


def test_status_exits_4_when_a_desired_instance_is_not_running(farm: Farm) -> None:
    farm.write({"Good": sleeper(count=2),
                "Bad": {**farm.program("exit:3"), "count": 1, "max_restarts": 1, "restart_window": "1m"}})
    farm.start(wait_instances=2)
    wait_until(lambda: states(farm).get("ET-Bad-0") == "fatal", 20, what="ET-Bad-0 fatal")
    wait_until(lambda: states(farm).get("ET-Good-1") == "running", 20, what="Good running")

    result = cli(farm, "status")
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert re.search(r"^ET-Bad-0\s+fatal\s", result.stdout, re.M)
    assert cli(farm, "status", "Good").returncode == 0
    assert cli(farm, "status", "--json").returncode == 4

    only = run_ok(farm, "status", "--state", "fatal,backoff", codes=(4,))
    rows = [line.split()[0] for line in only.splitlines() if line.startswith("ET-")]
    assert rows == ["ET-Bad-0"]
    bad = cli(farm, "status", "--state", "fatl")
    assert bad.returncode == 2 and "fatl: not a state" in bad.stderr

    run_ok(farm, "stop", "Bad")  # held stopped: no longer desired
    assert cli(farm, "status").returncode == 0
    assert farm.stop() == 0


# --------------------------------------------------------------------------- a runtime scale is said aloud


def test_runtime_scale_is_announced_and_reset(farm: Farm) -> None:
    farm.write({"A": sleeper(count=4), "B": sleeper(count=1)})
    farm.start(wait_instances=5)
    run_ok(farm, "scale", "A", "2", "--wait")
    assert farm.stop() == 0

    farm.start(wait_instances=3)
    note = re.compile(r"A: 2 instances, scaled at runtime on \d{4}-\d\d-\d\d \d\d:\d\d; the config says 4; "
                      r"`exec-supervisor scale A --reset` follows the config again")
    wait_until(lambda: note.search(farm.log()), 10, what="the start-up note")
    assert "B:" not in farm.log().split("scaled at runtime")[0].splitlines()[-1]
    check = run_ok(farm, "check", str(farm.config_path))
    assert note.search(check), check
    status_text = run_ok(farm, "status", codes=(0, 4))
    assert re.search(r"^A: \d/2 running \(scaled to 2 on [\d-]+ [\d:]+, config says 4; `scale A --reset` follows",
                     status_text, re.M), status_text
    kept = farm.instances()

    out = run_ok(farm, "scale", "A", "--reset", "--wait")
    assert "A: 2 -> 4 instances (2 started); follows the config again" in out
    now = farm.instances()
    assert sorted(now) == ["ET-A-0", "ET-A-1", "ET-A-2", "ET-A-3", "ET-B-0"]
    assert all(now[k] == v for k, v in kept.items()), "survivors keep their process"
    assert "scaled" not in run_ok(farm, "status")
    assert "note:" not in run_ok(farm, "check", str(farm.config_path))
    assert farm.stop() == 0
