"""run-one: one instance of a farm config in the foreground, with the daemon's machinery, as PID 1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import ROOT, Farm, wait_until
from exec_supervisor import config as config_mod
from exec_supervisor.runone import UsageError, pick_instance, restrict

ORPHAN_MAKER = ROOT / "tests" / "programs" / "orphan_maker.py"


def run_one(farm: Farm, *args: str, prefix: tuple[str, ...] = (), **popen: Any) -> subprocess.Popen[bytes]:
    """Start `exec-supervisor run-one` as the farm's daemon (the fixture stops it and checks leftovers)."""
    farm.stderr = open(farm.stderr_path, "ab")
    popen.setdefault("stdout", farm.stderr)
    farm.daemon = subprocess.Popen(
        [*prefix, sys.executable, "-m", "exec_supervisor.cli", "run-one", str(farm.config_path), *args],
        stderr=farm.stderr, stdin=subprocess.DEVNULL, **popen,
    )
    return farm.daemon


def marked(farm: Farm) -> list[psutil.Process]:
    from conftest import marked_processes

    return marked_processes(farm.mark)


def test_runs_exactly_the_one_instance_and_stops_cleanly_on_sigterm(farm: Farm) -> None:
    farm.write({"Test": farm.program("sleep", ids="0-3")})
    run_one(farm, "--exec-id", "ET-Test-2")
    farm.wait_started(1)
    procs = marked(farm)
    assert len(procs) == 1
    assert procs[0].environ()["ET_EXEC_ID"] == "ET-Test-2"
    assert procs[0].cmdline()[-2:] == ["--id", "2"]
    assert sorted(p.name for p in farm.log_dir.iterdir()) == ["ET-Test-2.log"]
    # Its own state_dir: lock, socket and spool never shared with another run-one.
    assert (farm.state_dir / "ET-Test-2" / "daemon.lock").exists()
    farm.wait_log("ET-Test-2: running")
    assert farm.stop(signal.SIGTERM) == 0
    log = farm.log()
    assert "exec-supervisor@test/ET-Test-2: started 1 instance" in log
    assert "ET-Test-2: stopped" in log
    assert not marked(farm)


def test_type_and_id_options_and_an_id_outside_the_configured_ones(farm: Farm) -> None:
    """A StatefulSet scaled up runs ids the config does not list, as `scale` would add them."""
    farm.write({"Test": farm.program("sleep", ids="0-1"), "Other": farm.program("sleep", ids=0)})
    run_one(farm, "--type", "Test", "--id", "7")
    wait_until(lambda: marked(farm), 20, what="the instance")
    assert [p.environ()["ET_EXEC_ID"] for p in marked(farm)] == ["ET-Test-7"]
    assert farm.stop() == 0


def test_several_run_one_on_one_host_do_not_share_a_lock(farm: Farm, tmp_path: Path) -> None:
    farm.write({"Test": farm.program("sleep", ids="0-1")})
    second = subprocess.Popen([sys.executable, "-m", "exec_supervisor.cli", "run-one", str(farm.config_path),
                               "--exec-id", "ET-Test-1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run_one(farm, "--exec-id", "ET-Test-0")
        wait_until(lambda: len(marked(farm)) == 2, 20, what="both instances")
        # The same instance twice is refused by its lock, like a second daemon.
        third = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "run-one", str(farm.config_path),
                                "--exec-id", "ET-Test-1"], capture_output=True, timeout=60)
        assert third.returncode == 1
        assert b"already running" in third.stderr
        assert len(marked(farm)) == 2
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    assert farm.stop() == 0


@pytest.mark.parametrize("executor, code", [
    ({"restart": "never", "env": {"ET_TEST_MODE": "exit:3"}}, 3),
    ({"restart": "on-failure", "env": {"ET_TEST_MODE": "exit:0"}}, 0),
    ({"max_restarts": 2, "env": {"ET_TEST_MODE": "exit:5"}}, 5),
])
def test_run_one_ends_with_its_instance(farm: Farm, executor: dict[str, Any], code: int) -> None:
    """A container must never keep running without its executor: no restart due -> run-one exits."""
    farm.write({"Test": {**farm.program("sleep"), "ids": 0, **executor,
                         "env": {**farm.program("sleep")["env"], **executor["env"]}}})
    process = run_one(farm, "--id", "0")
    assert process.wait(30) == code
    assert "will not be restarted" in farm.log()


def test_a_program_that_cannot_start_exits_127(farm: Farm, tmp_path: Path) -> None:
    program = tmp_path / "bad-interpreter.sh"
    program.write_text("#!/nonexistent/interpreter\n")  # passes the config check, fails at exec
    program.chmod(0o755)
    farm.write({"Test": {"command": [str(program)], "ids": 0, "restart": "never"}})
    assert run_one(farm, "--id", "0").wait(30) == 127


def test_stop_through_the_control_socket_ends_run_one(farm: Farm) -> None:
    farm.write({"Test": farm.program("sleep", ids="0-3")})
    process = run_one(farm, "--exec-id", "ET-Test-3")
    farm.wait_log("ET-Test-3: running")
    socket_path = farm.state_dir / "ET-Test-3" / "control.sock"
    done = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "stop", "ET-Test-3",
                           "--socket", str(socket_path)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert process.wait(20) == 0
    assert not marked(farm)


def test_log_to_stdout_sends_the_instance_output_to_run_one_stdout(farm: Farm, tmp_path: Path) -> None:
    farm.write({"Test": farm.program("sleep", ids=0)})
    out = tmp_path / "stdout.txt"
    with open(out, "wb") as handle:
        run_one(farm, "--id", "0", "--log-to", "stdout", stdout=handle)
        wait_until(lambda: "started mode=sleep" in out.read_text(), 20, what="the executor's line on stdout")
    assert not farm.log_dir.exists() or not list(farm.log_dir.iterdir())
    logs = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "logs", "ET-Test-0", "--socket",
                           str(farm.state_dir / "ET-Test-0" / "control.sock")], capture_output=True, text=True,
                          timeout=60)
    assert logs.returncode == 2 and "stdout (run-one --log-to stdout)" in logs.stderr, logs.stderr
    assert farm.stop() == 0


def test_reload_keeps_the_one_instance_and_refuses_to_drop_its_type(farm: Farm) -> None:
    farm.write({"Test": farm.program("sleep", ids="0-3"), "Other": farm.program("sleep", ids=0)})
    run_one(farm, "--exec-id", "ET-Test-1")
    farm.wait_log("ET-Test-1: running")
    pid = marked(farm)[0].pid
    farm.write({"Test": farm.program("sleep", ids="0-9"), "Other": farm.program("sleep", ids="0-5")})
    farm.daemon.send_signal(signal.SIGHUP)
    farm.wait_log("reloaded")
    assert [p.pid for p in marked(farm)] == [pid]
    farm.write({"Other": farm.program("sleep", ids=0)})
    farm.daemon.send_signal(signal.SIGHUP)
    farm.wait_log("the type run-one runs is gone from the config")
    assert [p.pid for p in marked(farm)] == [pid]
    assert farm.stop() == 0


needs_unshare = pytest.mark.skipif(
    not shutil.which("unshare") or os.geteuid() != 0,
    reason="needs root and unshare (util-linux) to run run-one as PID 1 of a pid namespace",
)


def _nspid(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return line.split()[1:]
    return []


@needs_unshare
def test_as_pid_1_it_takes_the_id_from_the_hostname_reaps_orphans_and_forwards_sigterm(farm: Farm) -> None:
    """A container's PID 1 (a new pid namespace), named like a StatefulSet pod."""
    farm.write({"Orphans": {"command": [sys.executable, str(ORPHAN_MAKER)], "ids": "0-5",
                            "env": {"ORPHANS": "20"}, "stop_timeout": 5}})
    script = ('hostname et-orphans-4 && exec "$@"')
    process = run_one(farm, "--id-from-hostname", "--log-to", "stdout",
                      prefix=("unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--uts",
                              "sh", "-c", script, "sh"))
    wait_until(lambda: "orphans done" in farm.log(), 30, what="the executor's orphans")
    instance = marked(farm)
    assert [p.environ()["ET_EXEC_ID"] for p in instance] == ["ET-Orphans-4"]
    supervisor = instance[0].parent()
    assert _nspid(supervisor.pid)[-1] == "1"  # run-one is the namespace's init
    # Every orphan was re-parented to run-one and has been reaped: no zombie stays.
    wait_until(lambda: not [c for c in supervisor.children() if c.status() == psutil.STATUS_ZOMBIE], 5,
               what="no zombie children of PID 1")
    # SIGTERM to the container (to unshare, which forwards nothing: send it to PID 1 itself).
    supervisor.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert "ET-Orphans-4: stopped" in farm.log()
    assert not marked(farm)


def test_pick_instance_rules(tmp_path: Path) -> None:
    (tmp_path / "farm.yaml").write_text(
        "supervisor: {state_dir: s, log_dir: l}\nexecutors:\n"
        f"  HelloWorld: {{command: [{sys.executable}], ids: 0-3, args: []}}\n"
        f"  Infer: {{command: [{sys.executable}], count: 2, args: []}}\n")
    cfg = config_mod.load(tmp_path / "farm.yaml")
    assert pick_instance(cfg, exec_id="ET-Infer-1") == ("Infer", 1)
    assert pick_instance(cfg, type_name="HelloWorld", instance_id=12) == ("HelloWorld", 12)
    assert pick_instance(cfg, from_hostname=True, hostname="et-helloworld-3") == ("HelloWorld", 3)
    assert pick_instance(cfg, from_hostname=True, hostname="web-7", type_name="Infer") == ("Infer", 7)
    for bad, text in [
        (dict(exec_id="ET-Nope-1"), "no type 'Nope'"),
        (dict(exec_id="HelloWorld-1"), "not an exec id"),
        (dict(instance_id=1), "needs --type"),
        (dict(from_hostname=True, hostname="et-helloworld"), "does not end in -<N>"),
        (dict(from_hostname=True, hostname="gpu-3"), "names no type"),
        (dict(exec_id="ET-Infer-1", instance_id=1), "exactly one of"),
    ]:
        with pytest.raises(UsageError, match=text):
            pick_instance(cfg, **bad)
    one = restrict(cfg, "Infer", 5)
    assert list(one.executors) == ["Infer"] and one.ids_of("Infer") == (5,)
    assert one.state_dir == cfg.state_dir / "ET-Infer-5" and one.socket_path.parent == one.state_dir
    assert [s.exec_id for s in one.planned()] == ["ET-Infer-5"]


def test_bad_usage_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "farm.yaml").write_text(f"executors:\n  A: {{command: [{sys.executable}], ids: 0}}\n")
    done = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "run-one", str(tmp_path / "farm.yaml"),
                           "--exec-id", "ET-B-1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["exec-supervisor run-one: farm.yaml: executors: no type 'B' (types: A)"]
    assert not (tmp_path / ".exec-supervisor").exists()
