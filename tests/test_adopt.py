"""Adoption: a daemon that died (SIGKILL) is started again and takes its executors back.

Real daemons and executors; identity is checked against the real /proc.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from conftest import MARK, Farm, marked_processes, wait_until
from exec_supervisor.control.client import Client, ClientError


def rows(farm: Farm) -> dict[str, dict[str, Any]]:
    try:
        status, data = Client(farm.state_dir / "control.sock", timeout=30).call("GET", "/v1/status")
    except ClientError:
        return {}
    return {row["exec_id"]: row for row in data["instances"]} if status == 200 else {}


def running_pids(farm: Farm) -> dict[str, int]:
    return {k: r["pid"] for k, r in rows(farm).items() if r["state"] == "running"}


def recorded(farm: Farm) -> dict[str, Any]:
    try:
        return json.loads((farm.state_dir / "instances.json").read_text())["instances"]
    except (OSError, ValueError, KeyError):
        return {}


def kill_daemon(farm: Farm, pids: dict[str, int]) -> None:
    """SIGKILL the daemon once its state file names every one of pids."""
    wait_until(lambda: {k: v.get("pid") for k, v in recorded(farm).items()} == pids, 10, what="state file")
    assert farm.daemon is not None
    farm.daemon.kill()
    farm.daemon.wait()
    farm.stderr.close()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_sigkilled_daemon_started_again_adopts_every_executor_and_restarts_none(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 20}}, defaults={"restart": "on-failure"})
    farm.start(wait_instances=20)
    wait_until(lambda: len(running_pids(farm)) == 20, 30, what="20 running")
    before = rows(farm)
    pids = {k: r["pid"] for k, r in before.items()}
    kill_daemon(farm, pids)
    time.sleep(0.2)
    assert all(alive(pid) for pid in pids.values())  # orphaned, not killed

    farm.start()
    wait_until(lambda: len(running_pids(farm)) == 20, 30, what="20 adopted")
    after = rows(farm)
    assert {k: r["pid"] for k, r in after.items()} == pids
    for exec_id, row in after.items():
        assert row["restarts"] == 0
        assert abs(row["started"] - before[exec_id]["started"]) < 0.05  # uptime from its real start
        assert row["uptime"] >= before[exec_id]["uptime"]
    log = farm.log()
    assert log.count("spawned") == 20  # the first daemon's spawns only
    assert "adopted 20 executors left running by a previous exec-supervisor" in log
    assert len(marked_processes(farm.mark)) == 20

    # An adopted executor that dies is seen at once (pidfd) and restarted like a crash.
    victim = "ET-S-7"
    os.kill(pids[victim], signal.SIGKILL)
    row = wait_until(lambda: (r := rows(farm).get(victim)) and r["state"] == "running" and r["pid"] != pids[victim]
                     and r, 10, what="the adopted executor restarted")
    assert row["restarts"] == 1 and row["last_exit"]["status_unknown"] is True
    assert "ET-S-7: exited; exit status unknown (adopted after a supervisor restart)" in farm.log()
    assert all(rows(farm)[k]["pid"] == v for k, v in pids.items() if k != victim)

    assert farm.stop() == 0  # adopted ones are stopped too: the fixture finds no leftover
    assert not any(alive(pid) for pid in pids.values())


def test_a_record_naming_a_process_that_is_not_ours_is_neither_adopted_nor_signalled(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 3}})
    farm.state_dir.mkdir(parents=True)
    env = {**os.environ, MARK: farm.mark}
    # Not ours: no ET_EXEC_ID; ours by name but started at another time (a reused pid); another boot.
    strangers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
                 for _ in range(2)]
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                env={**env, "ET_EXEC_ID": "ET-S-1"})
    try:
        def ticks(pid: int) -> int:
            stat = open(f"/proc/{pid}/stat", "rb").read()
            return int(stat[stat.rfind(b")") + 2:].split()[19])

        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        records = {
            "ET-S-0": {"pid": strangers[0].pid, "start_ticks": ticks(strangers[0].pid), "boot_id": boot},
            "ET-S-1": {"pid": impostor.pid, "start_ticks": ticks(impostor.pid) - 100, "boot_id": boot},
            "ET-S-2": {"pid": strangers[1].pid, "start_ticks": ticks(strangers[1].pid),
                       "boot_id": "00000000-0000-0000-0000-000000000000"},
        }
        for exec_id, record in records.items():
            record.update(type="S", id=int(exec_id[-1]), restarts=4)
        (farm.state_dir / "instances.json").write_text(json.dumps({"supervisor_pid": 1, "instances": records}))
        farm.start(wait_instances=3)
        wait_until(lambda: len(running_pids(farm)) == 3, 30, what="3 running")
        ours = running_pids(farm)
        assert not set(ours.values()) & {strangers[0].pid, strangers[1].pid, impostor.pid}
        assert all(r["restarts"] == 0 for r in rows(farm).values())
        assert "adopted" not in farm.log()
        assert farm.stop() == 0
        for process in (*strangers, impostor):
            assert process.poll() is None  # never signalled
    finally:
        for process in (*strangers, impostor):
            process.kill()
            process.wait()


def test_on_restart_stop_stops_what_a_dead_daemon_left_and_starts_afresh(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 3}}, supervisor={"on_restart": "stop"})
    farm.start(wait_instances=3)
    wait_until(lambda: len(running_pids(farm)) == 3, 30, what="3 running")
    pids = {k: r["pid"] for k, r in rows(farm).items()}
    kill_daemon(farm, pids)
    farm.start(wait_instances=3)
    wait_until(lambda: len(running_pids(farm)) == 3, 30, what="3 running again")
    assert not set(running_pids(farm).values()) & set(pids.values())
    assert not any(alive(pid) for pid in pids.values())
    assert "stopped 3 executors left running by a previous exec-supervisor" in farm.log()
    assert farm.stop() == 0


def test_adoption_leaves_out_instances_the_config_no_longer_wants(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 3}, "Gone": {**farm.program("sleep"), "count": 1}})
    farm.start(wait_instances=4)
    wait_until(lambda: len(running_pids(farm)) == 4, 30, what="4 running")
    pids = {k: r["pid"] for k, r in rows(farm).items()}
    kill_daemon(farm, pids)
    farm.write({"S": {**farm.program("sleep"), "count": 3}})
    farm.start()
    wait_until(lambda: len(running_pids(farm)) == 3, 30, what="3 adopted")
    assert running_pids(farm) == {k: v for k, v in pids.items() if k != "ET-Gone-0"}
    wait_until(lambda: not alive(pids["ET-Gone-0"]), 10, what="the leftover of a removed type stopped")
    assert farm.stop() == 0


def test_adopted_executors_stay_adopted_across_an_upgrade(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 2}})
    farm.start(wait_instances=2)
    wait_until(lambda: len(running_pids(farm)) == 2, 30, what="2 running")
    pids = {k: r["pid"] for k, r in rows(farm).items()}
    kill_daemon(farm, pids)
    farm.start()
    wait_until(lambda: running_pids(farm) == pids, 30, what="2 adopted")
    upgraded = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "upgrade", "-c", str(farm.config_path)],
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    assert running_pids(farm) == pids and "2 instances carried over" in upgraded.stdout
    # Still watched through a pidfd by the new image: an exit is seen and restarted.
    os.kill(pids["ET-S-0"], signal.SIGKILL)
    row = wait_until(lambda: (r := rows(farm).get("ET-S-0")) and r["state"] == "running"
                     and r["pid"] != pids["ET-S-0"] and r, 10, what="ET-S-0 restarted")
    assert row["last_exit"]["status_unknown"] is True
    assert rows(farm)["ET-S-1"]["pid"] == pids["ET-S-1"]
    assert farm.stop() == 0
    assert not alive(pids["ET-S-1"])
