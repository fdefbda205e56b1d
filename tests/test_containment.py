"""Containment: the daemon knows every process of every instance, across any daemon death.

Real daemons, real escaping executors (tests/programs/misbehaving.py). Each test runs in both
containment modes where the mode can do it: `cgroup` (cgroup v2, needs root) and `process`
(process groups, subreaper, ET_EXEC_ID/ET_FARM marks and the spawn journal).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from conftest import Farm, marked_processes, wait_until

MODES = ["cgroup", "process"]


def cgroup_possible() -> bool:
    from exec_supervisor.supervise import containment

    return containment.cgroup_support() is None


@pytest.fixture(params=MODES)
def containment(request: pytest.FixtureRequest) -> str:
    if request.param == "cgroup" and not cgroup_possible():
        pytest.skip("needs cgroup v2 and the right to create cgroups (run as root)")
    return request.param


@pytest.fixture
def escapees(farm: Farm) -> Iterator[set[int]]:
    """Pids of escaped descendants seen in the logs; killed at the end whatever happened."""
    seen: set[int] = set()
    yield seen
    seen |= logged_escapees(farm)
    for pid in seen:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def write(farm: Farm, mode: str, executors: dict[str, Any], **sections: Any) -> None:
    farm.write(executors, supervisor={"name": "test", "state_dir": str(farm.state_dir),
                                      "log_dir": str(farm.log_dir), "containment": mode}, **sections)


def cli(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exec_supervisor.cli", *args, "-c", str(farm.config_path)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def logged_escapees(farm: Farm) -> set[int]:
    found = set()
    for log in farm.log_dir.glob("*.log*") if farm.log_dir.exists() else ():
        found.update(int(m) for m in re.findall(r"escapee \S+ pid=(\d+)", log.read_text(errors="replace")))
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main_copies(mark: str) -> dict[str, list[int]]:
    """exec id -> pids of live executor main processes (the test program, not its descendants)."""
    copies: dict[str, list[int]] = {}
    for process in marked_processes(mark):
        try:
            if os.getsid(process.pid) == process.pid and "misbehaving.py" in " ".join(process.cmdline()):
                copies.setdefault(process.environ()["ET_EXEC_ID"], []).append(process.pid)
        except (psutil.Error, OSError, KeyError):
            continue
    return copies


def kill_daemon(farm: Farm) -> None:
    assert farm.daemon is not None
    farm.daemon.kill()
    farm.daemon.wait()
    farm.stderr.close()


def test_restart_all_then_daemon_sigkill_leaves_one_copy_of_each(farm: Farm, containment: str) -> None:
    write(farm, containment, {"S": {**farm.program("sleep"), "count": 4}})
    farm.start(wait_instances=4)
    old = farm.instances()
    assert cli(farm, "restart", "all", "--no-wait").returncode == 0
    # The new copies exist: the daemon dies right after their spawn, before anything lazy ran.
    wait_until(lambda: len(new := farm.instances()) == 4 and not set(new.values()) & set(old.values()),
               what="every instance restarted")
    kill_daemon(farm)
    farm.start()
    # Adopted (instances.json was written in time) or stopped and started again: either way, one of each.
    farm.wait_log("exec-supervisor@test: started", timeout=30, count=2)
    wait_until(lambda: sorted(main_copies(farm.mark)) == [f"ET-S-{i}" for i in range(4)], 30,
               what="all four instances again")
    copies = main_copies(farm.mark)
    assert all(len(pids) == 1 for pids in copies.values()), copies
    assert farm.stop() == 0


def test_escaped_descendants_of_a_killed_daemon_are_stopped_by_the_next(
        farm: Farm, containment: str, escapees: set[int]) -> None:
    write(farm, containment, {"Esc": {**farm.program("escapes"), "count": 2, "stop_timeout": 0.5}})
    farm.start(wait_instances=2)
    wait_until(lambda: len(logged_escapees(farm)) == 8, what="8 escapees")
    escapees |= logged_escapees(farm)
    assert all(alive(pid) for pid in escapees)
    kill_daemon(farm)
    farm.start(wait_instances=2)
    # The next daemon stops everything of the old instances before it starts new ones.
    left = [pid for pid in escapees if alive(pid)]
    assert not left, f"escaped descendants of the killed daemon's executors still alive: {left}"
    assert "executors left running by a previous exec-supervisor" in farm.log()
    wait_until(lambda: len(logged_escapees(farm)) == 16, what="the new instances' escapees")
    escapees |= logged_escapees(farm)
    assert farm.stop() == 0
    left = [pid for pid in escapees if alive(pid)]
    assert not left, f"escapees survived the daemon's stop: {left}"


def test_leftover_without_exec_id_is_stopped_before_its_instance_restarts(
        farm: Farm, escapees: set[int]) -> None:
    # Only the kernel can tell whose it is: it left the session and dropped every mark.
    if not cgroup_possible():
        pytest.skip("needs cgroup v2 and the right to create cgroups (run as root)")
    write(farm, "cgroup", {"Leaky": {**farm.program("crash-clean-env"), "count": 1, "stop_timeout": 0.3,
                                     "backoff": {"initial": 0.2, "max": 0.2, "jitter": 0}}})
    farm.start()
    most = 0
    deadline = time.monotonic() + 20
    while farm.log().count("ET-Leaky-0: crashed") < 5 and time.monotonic() < deadline:
        escapees |= logged_escapees(farm)
        most = max(most, sum(1 for pid in escapees if alive(pid)))
        time.sleep(0.02)
    assert farm.log().count("ET-Leaky-0: crashed") >= 5
    assert len(escapees) >= 4
    assert most <= 1, f"{most} clean-environment leftovers alive at once"
    assert farm.stop() == 0
    escapees |= logged_escapees(farm)
    assert not [pid for pid in escapees if alive(pid)]


def test_every_spawn_is_journaled_with_pid_start_ticks_boot_and_cgroup(farm: Farm, containment: str) -> None:
    from exec_supervisor.supervise import journal

    write(farm, containment, {"S": {**farm.program("sleep"), "count": 3}})
    farm.start(wait_instances=3)
    pids = farm.instances()
    # The journal line is written as posix_spawn returns; the child can be seen a moment before.
    def journaled() -> dict:
        found = {r.exec_id: r for r in journal.read(farm.state_dir) if r.pid in pids.values()}
        return found if sorted(found) == sorted(pids) else {}
    records = wait_until(journaled, 10, what="every spawn in the journal")
    assert sorted(records) == sorted(pids)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    for exec_id, pid in pids.items():
        record = records[exec_id]
        assert record.pid == pid and record.boot == boot and record.is_alive(boot)
        assert 0 <= journal.start_ticks(pid) - record.start <= journal.START_TICKS_SLACK
        if containment == "cgroup":
            assert record.cgroup and record.cgroup.endswith(f"/{exec_id}")
            assert pid in [int(p) for p in Path(record.cgroup, "cgroup.procs").read_text().split()]
        else:
            assert record.cgroup is None
    assert (farm.state_dir / journal.FILE_NAME).stat().st_mode & 0o777 == 0o600
    assert farm.stop() == 0


class CopyCounter:
    """Counts live main processes per exec id, again and again on a thread, and keeps the most seen."""

    def __init__(self, mark: str) -> None:
        self.mark = mark
        self.most: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, list[int]]:
        copies = main_copies(self.mark)
        for exec_id, pids in copies.items():
            self.most[exec_id] = max(self.most.get(exec_id, 0), len(pids))
        self.samples += 1
        return copies

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()

    def __enter__(self) -> "CopyCounter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_never_two_copies_across_daemon_sigkills_at_random_moments(farm: Farm, containment: str) -> None:
    """SIGKILL the daemon at random moments (start-up, a restart storm, a scale) 10 times per mode."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    write(farm, containment, {
        "S": {**farm.program("sleep"), "count": 4},
        # a crash loop: some spawn or exit is always under way
        "C": {**farm.program("exit-after:0.15:1"), "count": 3,
              "backoff": {"initial": 0.02, "max": 0.02, "jitter": 0}},
    })
    kills = 0
    with CopyCounter(farm.mark) as counter:
        farm.start()
        for round_ in range(10):
            phase = ("start-up", "restart storm", "scale")[round_ % 3]
            if phase == "start-up":
                time.sleep(rng.uniform(0.0, 0.6))  # the moment is the point: anywhere in start-up
            else:
                # this daemon's own instances run: it has stopped the last one's and listens
                wait_until(lambda: len(farm.instances()) >= 2, 30, what="instances up")
                if phase == "restart storm":
                    assert cli(farm, "restart", "all", "--no-wait").returncode == 0
                else:
                    assert cli(farm, "scale", f"S={rng.choice([2, 8])}").returncode == 0
                time.sleep(rng.uniform(0.0, 0.15))
            kill_daemon(farm)
            kills += 1
            at_kill = counter.sample()
            assert all(len(p) == 1 for p in at_kill.values()), (seed, phase, at_kill)
            farm.start()
        wait_until(lambda: len(farm.instances()) >= 2, 30, what="the last daemon's instances")
        counter.sample()
    assert kills == 10
    doubled = {exec_id: n for exec_id, n in counter.most.items() if n > 1}
    assert not doubled, f"two copies seen (seed {seed}, {counter.samples} samples): {doubled}"
    assert farm.stop() == 0


def test_status_says_which_containment_is_in_use(farm: Farm, containment: str) -> None:
    import json

    write(farm, containment, {"S": {**farm.program("sleep"), "count": 1}})
    farm.start(wait_instances=1)
    status = json.loads(cli(farm, "status", "--json").stdout)
    assert status["containment"]["mode"] == containment
    row = status["instances"][0]
    if containment == "cgroup":
        farm_dir = status["containment"]["cgroup"]
        assert row["cgroup"] == f"{farm_dir}/ET-S-0"
        assert f"containment: cgroup ({farm_dir})" in farm.log()
    else:
        assert status["containment"]["cgroup"] is None and row["cgroup"] is None
    assert farm.stop() == 0
    if containment == "cgroup":
        assert not os.path.exists(farm_dir), "the farm's cgroup is removed at the end"


def test_containment_cgroup_refused_where_impossible_is_one_line_exit_2(farm: Farm) -> None:
    if cgroup_possible():
        # make it impossible: a daemon that sees no cgroup v2 mount
        launcher = ("from exec_supervisor.supervise import containment\n"
                    "containment.cgroup2_mount = lambda: None\n"
                    "from exec_supervisor import cli\ncli.main()\n")
    else:
        launcher = None
    write(farm, "cgroup", {"S": {**farm.program("sleep"), "count": 1}})
    daemon = farm.start(launcher=launcher)
    assert daemon.wait(30) == 2
    lines = farm.log().strip().splitlines()
    assert lines[-1].startswith("exec-supervisor: farm.yaml: supervisor.containment: cgroup: "), lines
    assert "Traceback" not in farm.log()
    assert not marked_processes(farm.mark)
