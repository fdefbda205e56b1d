"""In-place upgrade: the daemon re-executes itself (same pid) and not one executor notices.

Real daemons, real executors, a real log API (DevService) recording every event, the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ROOT, Farm, wait_until
from exec_supervisor.control.client import Client, ClientError
from exec_supervisor.devservice import DevService


@pytest.fixture
def svc() -> Iterator[DevService]:
    service = DevService().start()
    yield service
    service.stop()


def cli(farm: Farm, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exec_supervisor.cli", *args, "-c", str(farm.config_path)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def api(farm: Farm) -> Client:
    return Client(farm.state_dir / "control.sock", timeout=30)


def rows(farm: Farm) -> dict[str, dict[str, Any]]:
    status, data = api(farm).call("GET", "/v1/status")
    assert status == 200, data
    return {row["exec_id"]: row for row in data["instances"]}


def running(farm: Farm) -> int:
    """How many instances run (0 while the daemon is not answering yet)."""
    try:
        return sum(r["state"] == "running" for r in rows(farm).values())
    except ClientError:
        return 0


def when(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["time"]).timestamp()


class Poller(threading.Thread):
    """A client asking `status` over and over; every failure is kept."""

    def __init__(self, farm: Farm) -> None:
        super().__init__(daemon=True)
        self.client = api(farm)
        self.done = threading.Event()
        self.answers = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.done.is_set():
            try:
                status, data = self.client.call("GET", "/v1/status", timeout=30)
                if status != 200:
                    self.failures.append(f"HTTP {status}: {data}")
                else:
                    self.answers += 1
            except ClientError as exc:
                self.failures.append(str(exc))


def test_upgrade_keeps_pids_socket_event_sequence_backoff_and_restart_counts(farm: Farm, svc: DevService) -> None:
    farm.write(
        {
            "Work": {**farm.program("sleep"), "count": 44},
            "Held": {**farm.program("sleep"), "count": 3},
            "Slow": {**farm.program("exit:1"), "count": 2, "backoff": {"initial": 10, "max": 10, "jitter": 0}},
            "Loop": {**farm.program("exit-after:0.2:3"), "count": 1,
                     "backoff": {"initial": 0.3, "max": 0.3, "factor": 1, "jitter": 0}},
        },
        service={"host": svc.url},
        events={"forward": True, "min_level": "debug"},
    )
    farm.start()
    wait_until(lambda: running(farm) >= 47, 60, what="47 running")
    assert cli(farm, "stop", "ET-Held-0").returncode == 0
    assert cli(farm, "stop", "ET-Held-1").returncode == 0
    wait_until(lambda: sum(e["event"] == "crashed" and e["exec_id"] == "ET-Loop-0" for e in svc.entries) >= 2,
               20, what="the crash loop going")
    before = rows(farm)
    assert {before[f"ET-Slow-{i}"]["state"] for i in range(2)} == {"backoff"}
    assert before["ET-Held-0"]["state"] == before["ET-Held-1"]["state"] == "stopped"
    slow_crash = {e["exec_id"]: e for e in svc.entries if e["event"] == "crashed" and e["type"] == "Slow"}
    assert len(slow_crash) == 2

    poller = Poller(farm)
    poller.start()
    time.sleep(0.2)
    status, answer = api(farm).call("POST", "/v1/upgrade", {})
    assert status == 202, answer
    assert answer["pid"] == farm.daemon.pid and answer["upgrades"] == 0
    # Killed while the daemon re-executes itself: the new image reaps it with its real status.
    time.sleep(0.02)
    os.kill(before["ET-Work-0"]["pid"], signal.SIGKILL)
    health = wait_until(lambda: (h := api(farm).call("GET", "/v1/health")[1]).get("upgrades") == 1 and h, 60,
                        what="the upgrade done")
    assert health["pid"] == farm.daemon.pid and farm.daemon.poll() is None
    assert health["last_upgrade"]["instances"] >= 45  # 44 Work, 1 Held (the crash loop may be in backoff)
    time.sleep(0.3)
    poller.done.set()
    poller.join(30)
    assert poller.failures == [] and poller.answers > 3, poller.failures

    # The killed one: reaped with its real status and restarted.
    killed = wait_until(lambda: [e for e in svc.entries if e["event"] == "crashed" and e["exec_id"] == "ET-Work-0"],
                        20, what="ET-Work-0's crash event")
    assert killed[0]["signal"] == "SIGKILL" and killed[0]["pid"] == before["ET-Work-0"]["pid"]
    wait_until(lambda: rows(farm)["ET-Work-0"]["state"] == "running", 20, what="ET-Work-0 running again")

    after = rows(farm)
    assert after.keys() == before.keys()
    for exec_id, row in before.items():
        if exec_id == "ET-Work-0" or row["type"] == "Loop":
            continue
        assert after[exec_id]["pid"] == row["pid"], exec_id
        assert after[exec_id]["restarts"] == row["restarts"], exec_id
        if row["state"] == "running":
            assert after[exec_id]["state"] == "running"
            assert after[exec_id]["started"] == row["started"]  # uptime goes on
    assert after["ET-Held-0"]["held"] and after["ET-Held-1"]["held"] and after["ET-Held-0"]["state"] == "stopped"
    assert after["ET-Loop-0"]["restarts"] >= before["ET-Loop-0"]["restarts"]

    # Backoff deadlines kept: each Slow instance starts again 10 s after its crash, not before, barely after.
    upgraded = next(e for e in svc.entries if e["event"] == "upgraded")
    for exec_id, crash in slow_crash.items():
        spawn = wait_until(lambda: [e for e in svc.entries if e["event"] == "spawned" and e["exec_id"] == exec_id
                                    and e["seq"] > crash["seq"]], 30, what=f"{exec_id} restarted")[0]
        assert spawn["seq"] > upgraded["seq"]
        late = when(spawn) - (when(crash) + crash["restart_in"])
        assert -0.03 < late < 0.5, (exec_id, late)

    # The crash loop: never restarted early, its restart count counting on without a reset.
    farm_events = [e for e in svc.entries if e["exec_id"] == "ET-Loop-0"]
    counts = [e["restarts"] for e in farm_events if e["event"] == "crashed"]
    assert counts == list(range(counts[0], counts[0] + len(counts))), counts
    for crash, spawn in zip([e for e in farm_events if e["event"] == "crashed"],
                            [e for e in farm_events if e["event"] == "spawned"][1:]):
        assert when(spawn) >= when(crash) + crash["restart_in"] - 0.03

    assert upgraded["detail"]["from"] == upgraded["detail"]["to"]
    assert upgraded["detail"]["pid"] == farm.daemon.pid and upgraded["detail"]["restarted"] == 0
    assert not any(e["event"] == "supervisor_started" for e in svc.entries if e["seq"] > upgraded["seq"])
    assert farm.stop() == 0
    # Every event once, in order, no gap: the spool and its sequence went through the re-exec.
    seqs = [e["seq"] for e in svc.entries]
    assert sorted(seqs) == list(range(1, len(seqs) + 1)), "gap or duplicate in the event sequence"
    assert svc.entries[-1]["event"] == "supervisor_stopped"


def _installed_copy(tmp_path: Path) -> Path:
    """A copy of the package to `pip install` over: the daemon runs it, the test breaks or bumps it."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "exec_supervisor", site / "exec_supervisor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return site


def test_a_broken_install_leaves_the_daemon_untouched_and_a_good_one_is_taken(
        farm: Farm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _installed_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.chdir(tmp_path)  # `-m` would put the working directory (a source tree) first
    farm.write({"Work": {**farm.program("sleep"), "count": 3}})
    farm.start(wait_instances=3)
    wait_until(lambda: running(farm) == 3, 20, what="3 running")
    before = {k: r["pid"] for k, r in rows(farm).items()}

    main = site / "exec_supervisor" / "__main__.py"
    good = main.read_text()
    main.write_text("raise SystemExit('this installation is broken')\n")
    result = cli(farm, "upgrade", env=dict(os.environ))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "failed the check" in result.stderr and "this installation is broken" in result.stderr
    assert "nothing was changed" in result.stderr and "Traceback" not in result.stderr
    health = api(farm).call("GET", "/v1/health")[1]
    assert health["upgrades"] == 0 and health["pid"] == farm.daemon.pid
    assert {k: r["pid"] for k, r in rows(farm).items()} == before
    assert not (farm.state_dir / "handover.json").exists()

    main.write_text(good)
    init = site / "exec_supervisor" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "99.0+test.'))
    result = cli(farm, "upgrade", env=dict(os.environ))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert f"upgraded in place (pid {farm.daemon.pid})" in result.stdout
    assert "-> 99.0+test." in result.stdout and "3 instances carried over" in result.stdout
    health = api(farm).call("GET", "/v1/health")[1]
    assert health["version"].startswith("99.0+test.") and health["pid"] == farm.daemon.pid
    assert {k: r["pid"] for k, r in rows(farm).items()} == before
    assert "upgraded in place from" in farm.log()
    assert farm.stop() == 0


def test_a_config_changed_on_disk_is_applied_by_the_upgrade_like_a_reload(farm: Farm) -> None:
    farm.write({"A": {**farm.program("sleep"), "count": 2}, "B": {**farm.program("sleep"), "count": 1}})
    farm.start(wait_instances=3)
    wait_until(lambda: running(farm) == 3, 20, what="3 running")
    before = {k: r["pid"] for k, r in rows(farm).items()}
    # A config the new code refuses: the check says where, and nothing changes.
    farm.write({"A": {**farm.program("sleep"), "count": 2}, "C": {**farm.program("sleep")}})
    result = cli(farm, "upgrade")
    assert result.returncode == 1 and "executors.C.ids: missing" in result.stderr, result.stderr
    assert {k: r["pid"] for k, r in rows(farm).items()} == before
    farm.write({"A": {**farm.program("sleep"), "count": 2, "env": {"NEW": "1"}}, "C": {**farm.program("sleep"), "count": 1}})
    result = cli(farm, "upgrade")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: set(rows(farm)) == {"ET-A-0", "ET-A-1", "ET-C-0"}
               and all(r["state"] == "running" for r in rows(farm).values()), 30, what="the new config applied")
    after = {k: r["pid"] for k, r in rows(farm).items()}
    assert after["ET-A-0"] != before["ET-A-0"] and after["ET-A-1"] != before["ET-A-1"]  # env changed: relaunched
    assert "restarted for a changed config" in farm.log()
    assert farm.stop() == 0


def test_upgrade_is_refused_while_a_rolling_restart_runs(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 3, "start_seconds": 1.5}})
    farm.start(wait_instances=3)
    wait_until(lambda: all(r["state"] == "running" for r in rows(farm).values()) and len(rows(farm)) == 3,
               20, what="3 running")
    rolling = subprocess.Popen([sys.executable, "-m", "exec_supervisor.cli", "restart", "S", "--rolling",
                                "-c", str(farm.config_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: any(r["state"] != "running" for r in rows(farm).values()), 20, what="the rolling restart")
        result = cli(farm, "upgrade")
        assert result.returncode == 1
        assert "upgrade refused" in result.stderr and "rolling restart is in progress" in result.stderr
        assert api(farm).call("GET", "/v1/health")[1]["upgrades"] == 0
    finally:
        assert rolling.wait(60) == 0
    assert cli(farm, "upgrade").returncode == 0  # once it is over
    assert farm.stop() == 0


def test_sigusr2_upgrades_and_shutdown_after_it_leaves_nothing(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 2}})
    farm.start(wait_instances=2)
    before = farm.instances()
    farm.daemon.send_signal(signal.SIGUSR2)
    wait_until(lambda: api(farm).call("GET", "/v1/health")[1].get("upgrades") == 1, 60, what="the upgrade")
    assert farm.instances() == before
    path = farm.state_dir / "instances.json"  # written by the new image too
    wait_until(lambda: path.exists() and {k: v["pid"] for k, v in json.loads(path.read_text())["instances"].items()}
               == before, 10, what="the state file naming the carried instances")
    assert not (farm.state_dir / "handover.json").exists()  # consumed by the new image
    assert farm.stop() == 0


def test_a_new_image_that_cannot_read_the_handed_over_state_adopts_the_live_executors(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 3}})
    farm.start(wait_instances=3)
    wait_until(lambda: running(farm) == 3, 20, what="3 running")
    pids = {k: r["pid"] for k, r in rows(farm).items()}
    state = farm.state_dir / "instances.json"
    wait_until(lambda: state.exists() and all(str(p) in state.read_text() for p in pids.values()),
               10, what="the state file")
    farm.daemon.kill()  # the image that would have handed over is gone; its executors are not
    farm.daemon.wait()
    farm.stderr.close()
    broken = farm.state_dir / "handover.json"
    broken.write_text('{"format": 1, "instances": [')  # cut short
    farm.start("--resume", str(broken))
    wait_until(lambda: running(farm) == 3, 20, what="3 running again")
    assert {k: r["pid"] for k, r in rows(farm).items()} == pids
    log = farm.wait_log("upgraded in place from")
    assert "adopting the live executors instead" in log and "live executors were adopted" in log
    assert not broken.exists()
    assert farm.stop() == 0


def test_executor_log_lines_keep_flowing_across_an_upgrade(farm: Farm, svc: DevService) -> None:
    # Lines logged while the daemon re-executes wait in the log socket it keeps open (up to the
    # kernel's net.unix.max_dgram_qlen datagrams); beyond that the toolkit posts them itself, as
    # it does with no supervisor. Either way none is lost.
    import re
    from collections import defaultdict

    talker = ROOT / "tests" / "programs" / "talker.py"
    farm.write({"Talker": {"command": [sys.executable, str(talker)], "count": 2,
                           "env": {"TALK_MODE": "count", "TALK_EVERY": "0.02"}}},
               service={"host": svc.url}, events={"forward": True})
    farm.start(wait_instances=2)
    farm.wait_started(2)
    line = re.compile(r"^(ET-\w+-\d+): pid=(\d+) line (\d+)$")
    assert svc.wait_for(lambda es: sum(1 for e in es if line.match(e["message"])) >= 20, 20)
    before = farm.instances()
    sock = farm.state_dir / "log.sock"
    inode = sock.stat().st_ino
    result = cli(farm, "upgrade")
    assert result.returncode == 0, result.stderr
    assert sock.stat().st_ino == inode  # the same socket, kept open across the re-exec
    after = len([e for e in svc.entries if line.match(e["message"])])
    assert svc.wait_for(lambda es: sum(1 for e in es if line.match(e["message"])) >= after + 50, 20)
    assert farm.instances() == before
    rows = {r["exec_id"]: r for r in api(farm).call("GET", "/v1/status")[1]["instances"]}
    assert all(r["lines"]["relayed"] > 0 for r in rows.values())  # the new image relays from the same socket
    assert farm.stop() == 0
    printed: dict[str, int] = {}
    for exec_id in before:
        for text in (farm.log_dir / f"{exec_id}.log").read_text().splitlines():
            match = re.match(r"^\[info\] (ET-\w+-\d+): pid=\d+ line (\d+)$", text)
            if match:
                printed[exec_id] = int(match.group(2))
    got: dict[str, set[int]] = defaultdict(set)
    for entry in svc.entries:
        match = line.match(entry["message"])
        if match:
            got[match.group(1)].add(int(match.group(3)))
    for exec_id, last in printed.items():
        assert got[exec_id] == set(range(last + 1)), f"{exec_id}: lines lost across the upgrade"


def test_no_client_is_ever_closed_unanswered_across_upgrades(farm: Farm) -> None:
    """Many clients connecting all the time: one accepted just as the old image stops accepting is
    answered by it (or waits in the backlog for the new one), never closed unanswered."""
    farm.write({"S": {**farm.program("sleep"), "count": 2}})
    farm.start(wait_instances=2)
    pollers = [Poller(farm) for _ in range(8)]
    for poller in pollers:
        poller.start()
    try:
        for upgrades in range(1, 6):
            wait_until(lambda: sum(p.answers for p in pollers) > 8 * upgrades, 30, what="the pollers answered")
            farm.daemon.send_signal(signal.SIGUSR2)
            wait_until(lambda: api(farm).call("GET", "/v1/health")[1].get("upgrades") == upgrades, 60,
                       what=f"upgrade {upgrades}")
    finally:
        for poller in pollers:
            poller.done.set()
        for poller in pollers:
            poller.join(30)
    assert [f for p in pollers for f in p.failures] == []
    assert all(p.answers > 5 for p in pollers)
    assert farm.stop() == 0
