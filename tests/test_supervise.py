"""The supervisor core with real daemons and real processes: spawn, restart, backoff, stop."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, Farm, marked_processes, wait_until


def cmdline(pid: int) -> list[str]:
    return psutil.Process(pid).cmdline()


def test_spawns_every_instance_with_argv_env_and_log(farm: Farm) -> None:
    farm.write(
        {"Alpha": {**farm.program("sleep"), "ids": [0, 2, "5-6"], "env": {"MODEL_DIR": "/data/models"}}},
        service={"host": "http://127.0.0.1:9"},
    )
    farm.start(wait_instances=4)
    instances = farm.instances()
    assert sorted(instances) == ["ET-Alpha-0", "ET-Alpha-2", "ET-Alpha-5", "ET-Alpha-6"]
    for exec_id, pid in instances.items():
        number = exec_id.rsplit("-", 1)[1]
        assert cmdline(pid)[-4:] == ["--service-host", "http://127.0.0.1:9/", "--id", number]
        env = psutil.Process(pid).environ()
        assert env["ET_EXEC_ID"] == exec_id
        assert (env["ET_NAME"], env["ET_ID"], env["ET_SERVICE_HOST"]) == ("Alpha", number, "http://127.0.0.1:9/")
        assert env["MODEL_DIR"] == "/data/models"
        assert os.getpgid(pid) == pid, "each instance leads its own process group"
        assert psutil.Process(pid).cwd() == str(farm.dir)
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        log_file = farm.log_dir / f"{exec_id}.log"
        assert os.readlink(f"/proc/{pid}/fd/1") == str(log_file)
        wait_until(lambda: f"{exec_id}: started" in log_file.read_text(), what=f"{exec_id} output")
    assert farm.stop() == 0
    assert not marked_processes(farm.mark)


def test_sigkilled_instance_restarts_with_same_exec_id(farm: Farm) -> None:
    farm.write({"Alpha": {**farm.program("sleep"), "count": 2}})
    farm.start(wait_instances=2)
    before = farm.instances()
    os.kill(before["ET-Alpha-1"], signal.SIGKILL)
    after = wait_until(
        lambda: (now := farm.instances()).get("ET-Alpha-1") not in (None, before["ET-Alpha-1"]) and now,
        what="ET-Alpha-1 replaced",
    )
    assert after["ET-Alpha-0"] == before["ET-Alpha-0"], "the other instance is untouched"
    log = farm.wait_log("ET-Alpha-1: crashed: killed by SIGKILL")
    assert "restarting in 0.1s (restart 1)" in log
    # Every transition is on stderr by default, debug ones included.
    farm.wait_log(f"ET-Alpha-1: spawned (pid {after['ET-Alpha-1']})")
    assert farm.stop() == 0


def _announced_delays(log: str, exec_id: str) -> list[float]:
    return [float(m) for m in re.findall(rf"{exec_id}: crashed.*?restarting in ([\d.]+)s", log)]


def test_backoff_grows_for_a_crash_loop_and_resets_after_a_good_run(farm: Farm, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.write_text("crash")
    farm.write({"Loop": {**farm.program(f"file:{control}"), "count": 1, "start_seconds": 0.5,
                         "backoff": {"initial": 0.1, "factor": 2, "max": 0.8, "jitter": 0}}})
    farm.start()
    log = farm.wait_log("Loop-0: crashed", count=5, timeout=15)
    assert _announced_delays(log, "ET-Loop-0")[:5] == [0.1, 0.2, 0.4, 0.8, 0.8]
    # The real gaps between starts follow the plan (never shorter than announced).
    output = (farm.log_dir / "ET-Loop-0.log").read_text()
    starts = [float(t) for t in re.findall(r"started mode=\S+ pid=\d+ t=([\d.]+)", output)][:5]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= planned for gap, planned in zip(gaps, [0.1, 0.2, 0.4, 0.8])), gaps
    control.write_text("run")
    farm.wait_log("ET-Loop-0: running", timeout=10)
    control.write_text("crash")
    os.kill(farm.instances()["ET-Loop-0"], signal.SIGKILL)
    wait_until(lambda: len(_announced_delays(farm.log().split("ET-Loop-0: running")[1], "ET-Loop-0")) >= 2,
               what="two crashes after the good run")
    after_good_run = farm.log().split("ET-Loop-0: running")[1]
    assert _announced_delays(after_good_run, "ET-Loop-0")[:2] == [0.1, 0.2], "a good run resets the backoff"
    assert farm.stop() == 0


@pytest.mark.parametrize(
    "policy, mode, restarts",
    [
        ("always", "exit:0", True),
        ("always", "exit:1", True),
        ("on-failure", "exit:0", False),
        ("on-failure", "exit:1", True),
        ("on-failure", "exit:7", False),  # listed in success_exit_codes
        ("never", "exit:1", False),
    ],
)
def test_restart_policies(farm: Farm, policy: str, mode: str, restarts: bool) -> None:
    farm.write({"P": {**farm.program(mode), "count": 1, "restart": policy, "success_exit_codes": [0, 7]}})
    farm.start()
    expected_event = "crashed" if mode == "exit:1" else "exited"
    log = farm.wait_log(f"ET-P-0: {expected_event} with exit code {mode[5:]}")
    if restarts:
        farm.wait_log(f"ET-P-0: {expected_event}", count=3)
        assert "restarting in" in farm.log()
    else:
        assert "not restarting" in log
        assert (farm.log_dir / "ET-P-0.log").read_text().count("started mode") == 1
    assert farm.stop() == 0


def test_max_restarts_leads_to_fatal(farm: Farm) -> None:
    farm.write({"F": {**farm.program("exit:3"), "count": 1, "max_restarts": 3, "restart_window": "1m",
                      "backoff": {"initial": 0, "jitter": 0}}})
    farm.start()
    log = farm.wait_log("ET-F-0: gave up after 3 restarts within 60s")
    assert log.count("ET-F-0: crashed with exit code 3") == 3
    assert (farm.log_dir / "ET-F-0.log").read_text().count("started mode=exit:3") == 4
    assert not farm.instances()
    assert farm.stop() == 0


def test_stop_kills_term_ignoring_instances_and_escaped_grandchildren(farm: Farm) -> None:
    farm.write({
        "Stubborn": {**farm.program("ignore-term"), "count": 2, "stop_timeout": 0.5},
        "Family": {**farm.program("grandchildren"), "count": 2, "stop_timeout": 0.5},
    })
    farm.start(wait_instances=4)
    farm.wait_started(4)
    wait_until(lambda: len(marked_processes(farm.mark)) >= 4 + 2 * 2, what="grandchildren started")
    assert farm.stop() == 0
    assert "stopped (killed after stop timeout)" in farm.log()
    assert not marked_processes(farm.mark), "no process of the farm may survive its stop"


def test_crash_leftovers_are_stopped_before_the_restart(farm: Farm) -> None:
    farm.write({"Leaky": {**farm.program("crash-leaving"), "count": 1, "stop_timeout": 0.3,
                          "backoff": {"initial": 0.5, "jitter": 0}}})
    farm.start()
    farm.wait_log("ET-Leaky-0: crashed", count=3, timeout=20)
    # Each crash leaves a child and a setsid grandchild: at most one generation may be alive.
    alive = marked_processes(farm.mark)
    assert len(alive) <= 3, [p.cmdline() for p in alive]
    assert farm.stop() == 0


# The daemon where signalfd is refused (as under some seccomp filters): it falls back to
# Python's signal handlers with the event loop on the main thread.
WITHOUT_SIGNALFD = """
from exec_supervisor import cli
from exec_supervisor.supervise import osproc

class Refused:
    def __init__(self, signals):
        raise OSError(38, "signalfd refused")

osproc.SignalFd = Refused
cli.main()
"""


BACKOFF = 3.0  # between the rounds of exits: an orphan left for the next exit lives this long


@pytest.mark.parametrize("launch", ["signalfd", "python signal handlers"])
def test_children_orphaned_at_the_exit_itself_are_stopped_before_the_restart(farm: Farm, launch: str) -> None:
    # Twenty instances that daemonize and exit together: each exit re-parents a child to the
    # daemon at that very moment, while other exits of the same batch are being handled.
    # Every such child must be stopped as part of that exit, not left for a later one.
    # Orphans are found on the main thread's children list, which holds only them when the
    # loop (which spawns) runs on a thread of its own, and the instances too when it does not.
    # This is the process containment's mechanism; with cgroups the cgroup holds them
    # (test_containment.py).
    count = 20
    # incidents off: twenty instances failing together would open one, and its gate (rightly)
    # paces their restarts; this test needs every round of exits at once.
    farm.write({"Forker": {**farm.program("daemonize"), "count": count, "stop_timeout": 1,
                           "backoff": {"initial": BACKOFF, "max": BACKOFF, "jitter": 0}, "incidents": "off"}},
               supervisor={"containment": "process"})
    farm.start(launcher=None if launch == "signalfd" else WITHOUT_SIGNALFD)
    assert farm.daemon is not None
    daemon = psutil.Process(farm.daemon.pid)
    if launch == "signalfd":
        wait_until(lambda: daemon.num_threads() == 2, what="the event loop on a thread of its own")
    else:
        farm.wait_log("no signalfd (")
        assert daemon.num_threads() == 1
    farm.wait_log("crashed", count=count, timeout=30)
    first_seen: dict[int, float] = {}
    last_seen: dict[int, float] = {}

    def watch() -> bool:
        for child in daemon.children():
            try:
                if child.name() == "sleep" and child.status() != psutil.STATUS_ZOMBIE:
                    # our own clock: psutil's create_time can be off by up to a second (boot time
                    # in whole seconds)
                    now = time.monotonic()
                    first_seen.setdefault(child.pid, now)
                    last_seen[child.pid] = now
            except psutil.NoSuchProcess:
                continue
        return farm.log().count("crashed") >= 3 * count  # two more rounds of exits, watched throughout

    wait_until(watch, 60, what="two more rounds of exits")
    # A child stopped with its parent's exit is gone within milliseconds (it may never be seen);
    # one left behind until the instance's next exit lives through the whole backoff.
    longest = max((last_seen[pid] - first_seen[pid] for pid in first_seen), default=0.0)
    assert longest < BACKOFF / 2, f"an orphaned child lived {longest:.2f}s"
    assert farm.stop() == 0


def test_log_rotation_keeps_the_instance_running(farm: Farm) -> None:
    farm.write({"Chatty": {**farm.program("chatty:200"), "count": 1, "log_max_bytes": "64KiB", "log_backups": 2}})
    farm.start(wait_instances=1)
    pid = farm.instances()["ET-Chatty-0"]
    log_file = farm.log_dir / "ET-Chatty-0.log"
    wait_until(lambda: log_file.with_name(log_file.name + ".2").exists(), timeout=30, what="two rotations")
    assert farm.instances()["ET-Chatty-0"] == pid, "rotation must not restart the instance"
    assert not log_file.with_name(log_file.name + ".3").exists()
    # The writer keeps writing into the live file after the cut.
    size = log_file.stat().st_size
    wait_until(lambda: log_file.stat().st_size != size, what="writes after rotation")
    assert farm.stop() == 0


def test_daemon_threads_do_not_grow_with_instances(tmp_path: Path) -> None:
    """3 and 300 instances, event forwarding on (to a closed port): the same thread count."""
    sleep = shutil.which("sleep")
    threads = {}
    for count in (3, 300):
        farm = Farm(tmp_path / str(count), uuid.uuid4().hex)
        farm.dir.mkdir()
        farm.write({"S": {"command": [sleep, "10000"], "args": [], "count": count}}, events={"forward": True})
        try:
            daemon = farm.start(wait_instances=count)
            farm.wait_log("S-0: running")
            threads[count] = psutil.Process(daemon.pid).num_threads()
            assert farm.stop() == 0
        finally:
            assert not farm.cleanup()
    assert threads[300] == threads[3], threads


def _blocked_signals(status_path: str) -> int:
    for line in Path(status_path).read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk in {status_path}")


def test_child_exits_reach_the_daemon_through_every_thread_and_executors_get_a_clean_mask(farm: Farm) -> None:
    """The daemon takes SIGCHLD from a signalfd: every thread (the forwarder's too) must block it,
    or a thread could take and discard it; executors must not inherit that blocked mask."""
    farm.write({"Alpha": {**farm.program("sleep"), "count": 2}}, events={"forward": True})
    daemon = farm.start(wait_instances=2)
    tasks = os.listdir(f"/proc/{daemon.pid}/task")
    assert len(tasks) > 1, "forwarding runs threads of its own"
    for tid in tasks:
        blocked = _blocked_signals(f"/proc/{daemon.pid}/task/{tid}/status")
        assert blocked & (1 << (signal.SIGCHLD - 1)), f"thread {tid} does not block SIGCHLD"
    before = farm.instances()
    for pid in before.values():
        assert _blocked_signals(f"/proc/{pid}/status") == 0, "an executor starts with no signal blocked"
    os.kill(before["ET-Alpha-0"], signal.SIGKILL)
    # Well within the 5 s safety-net reap: the exit came through the signalfd.
    wait_until(lambda: farm.instances().get("ET-Alpha-0") not in (None, before["ET-Alpha-0"]),
               timeout=2, what="ET-Alpha-0 replaced")
    assert farm.stop() == 0
    assert not marked_processes(farm.mark)


def test_sigterm_while_starting_stops_everything(farm: Farm) -> None:
    sleep = shutil.which("sleep")
    farm.write({"S": {"command": [sleep, "10000"], "args": [], "count": 400}})
    farm.start()
    wait_until(lambda: farm.instances(), what="first instance")
    assert farm.stop() == 0
    assert not marked_processes(farm.mark)


def test_second_sigint_kills_at_once(farm: Farm) -> None:
    farm.write({"Stubborn": {**farm.program("ignore-term"), "count": 2, "stop_timeout": 60}})
    farm.start(wait_instances=2)
    farm.wait_started(2)
    farm.daemon.send_signal(signal.SIGINT)
    farm.wait_log("stopping the farm")
    farm.daemon.send_signal(signal.SIGINT)
    assert farm.daemon.wait(10) == 0
    assert not marked_processes(farm.mark)


def test_sighup_is_logged_and_farm_keeps_running(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 1}})
    farm.start(wait_instances=1)
    pid = farm.instances()["ET-S-0"]
    farm.daemon.send_signal(signal.SIGHUP)
    farm.wait_log("reloaded config")
    assert farm.daemon.poll() is None
    assert farm.instances() == {"ET-S-0": pid}
    assert farm.stop() == 0


def test_second_daemon_on_same_state_dir_is_refused(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 1}})
    farm.start(wait_instances=1)
    second = subprocess.run(
        [sys.executable, "-m", "exec_supervisor.cli", "start", str(farm.config_path)],
        capture_output=True, text=True, timeout=30,
    )
    assert second.returncode == 1
    assert f"another exec-supervisor (pid {farm.daemon.pid}) is already running" in second.stderr
    assert "Traceback" not in second.stderr
    assert farm.stop() == 0


def test_instances_left_by_a_killed_daemon_are_replaced_not_duplicated(farm: Farm) -> None:
    # supervisor.on_restart: stop (adoption, the default, is tested in test_adopt.py)
    farm.write({"S": {**farm.program("sleep"), "count": 2}}, supervisor={"on_restart": "stop"})
    farm.start(wait_instances=2)
    old = farm.instances()
    wait_until(lambda: (farm.state_dir / "instances.json").exists() and all(
        str(pid) in (farm.state_dir / "instances.json").read_text() for pid in old.values()), what="state file")
    farm.daemon.kill()
    farm.daemon.wait()
    farm.stderr.close()
    farm.start(wait_instances=2)
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                               for pid in old.values()), what="old instances gone")
    assert len(marked_processes(farm.mark)) == 2
    assert farm.stop() == 0


def test_state_file_records_pid_and_start_time(farm: Farm) -> None:
    import json

    farm.write({"S": {**farm.program("sleep"), "count": 2}})
    farm.start(wait_instances=2)
    state = farm.state_dir / "instances.json"
    pids = farm.instances()
    data = wait_until(lambda: state.exists() and (d := json.loads(state.read_text()))["instances"].keys() == pids.keys() and d)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    for exec_id, pid in pids.items():
        record = data["instances"][exec_id]
        assert record["pid"] == pid and data["boot_id"] == boot
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        assert record["start_ticks"] == int(stat[stat.rfind(b")") + 2:].split()[19])
        ticks = os.sysconf("SC_CLK_TCK")
        assert abs(psutil.boot_time() + record["start_ticks"] / ticks - psutil.Process(pid).create_time()) < 0.05
    assert farm.stop() == 0


def test_example_farm_starts_and_stops_cleanly(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs", tmp_path / "configs", ignore=shutil.ignore_patterns("logs", ".exec-supervisor"))
    shutil.copytree(ROOT / "executors", tmp_path / "executors")
    # The example listens on 127.0.0.1:9464; here any free port, so runs side by side do not collide.
    config = tmp_path / "configs" / "farm.yaml"
    assert "listen: 127.0.0.1:9464" in config.read_text()
    config.write_text(config.read_text().replace("listen: 127.0.0.1:9464", "listen: 127.0.0.1:0"))
    stderr = open(tmp_path / "stderr", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "exec_supervisor.cli", "start", "configs/farm.yaml"],
                              cwd=tmp_path, stdout=stderr, stderr=stderr)
    try:
        def children() -> list[psutil.Process]:
            return [c for c in psutil.Process(daemon.pid).children()
                    if c.environ().get("ET_EXEC_ID", "").startswith("ET-HelloWorld-")]
        found = wait_until(lambda: len(children()) == 4 and children(), timeout=30, what="4 HelloWorld")
        assert sorted(c.environ()["ET_EXEC_ID"] for c in found) == [f"ET-HelloWorld-{i}" for i in range(4)]
        daemon.send_signal(signal.SIGINT)
        assert daemon.wait(30) == 0
        assert not [c for c in found if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert (tmp_path / "configs" / "logs" / "ET-HelloWorld-0.log").exists()
        printed = (tmp_path / "stderr").read_text()
        assert len(re.findall(r"web status page and metrics at http://127\.0\.0\.1:\d+/ ", printed)) == 1, printed
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        stderr.close()


@pytest.mark.parametrize("command", ["check", "start"])
def test_bad_config_is_one_line_exit_2(tmp_path: Path, command: str) -> None:
    config = tmp_path / "farm.yaml"
    config.write_text("executors:\n  Hello-World:\n    command: [sh]\n    count: 1\n  Ok:\n    command: [sh]\n    ids: 0-3\n    restrat: always\n")
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", command, str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{config}:2: executors.Hello-World: type name 'Hello-World' must match [A-Za-z][A-Za-z0-9_]* "
        "(a '-' would make ET-<Name>-<id> ambiguous)",
        f"{config}:8: executors.Ok.restrat: unknown key; did you mean 'restart'?",
    ]
    assert not (tmp_path / ".exec-supervisor").exists(), "nothing half-done"


def test_check_prints_planned_instances(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "check", str(ROOT / "configs" / "farm.yaml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "ET-HelloWorld-3" in result.stdout
    assert "--service-host http://127.0.0.1:8083/ --id 3" in result.stdout


def test_a_program_that_cannot_be_executed_is_retried_with_backoff(farm: Farm, tmp_path: Path) -> None:
    broken = tmp_path / "not-a-program"
    broken.write_text("this is not an executable format\n")
    broken.chmod(0o755)
    farm.write({"Broken": {"command": [str(broken)], "count": 1, "backoff": {"initial": 0.1, "jitter": 0}}})
    farm.start()
    log = farm.wait_log("ET-Broken-0: could not start: Exec format error", count=2)
    delays = [float(d) for d in re.findall(r"ET-Broken-0: could not start: .*?restarting in ([\d.]+)s", log)]
    assert delays[:2] == [0.1, 0.2]
    assert farm.daemon.poll() is None, "a spawn failure never takes the daemon down"
    assert farm.stop() == 0


def test_max_restarts_also_counts_spawn_failures(farm: Farm, tmp_path: Path) -> None:
    broken = tmp_path / "not-a-program"
    broken.write_text("this is not an executable format\n")
    broken.chmod(0o755)
    farm.write({"Broken": {"command": [str(broken)], "count": 1, "max_restarts": 2, "restart_window": "1m",
                           "backoff": {"initial": 0.05, "jitter": 0}}})
    farm.start()
    log = farm.wait_log("ET-Broken-0: gave up after 2 restarts within 60s (last: Exec format error")
    assert log.count("ET-Broken-0: could not start") == 2
    assert farm.daemon.poll() is None
    assert farm.stop() == 0


def test_freed_heap_goes_back_to_the_kernel() -> None:
    """The daemon trims the heap after bursts: freed memory between live blocks is returned."""
    probe = r'''
import sys
from exec_supervisor.supervise import osproc

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

blocks = [bytearray(1000) for _ in range(40000)]  # about 40 MB of malloc'ed (not pymalloc) blocks
keep = blocks[::50]  # a few survivors pin the heap, as long-lived objects do after a burst
del blocks
before = rss_kib()
osproc.release_free_memory()
print(before - rss_kib())
'''
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    released_kib = int(out.stdout)
    assert released_kib > 20_000, f"only {released_kib} KiB went back"
