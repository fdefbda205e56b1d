"""export supervisord + supervisord-listener, under a real supervisord started from the exported file."""

from __future__ import annotations

import configparser
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import MARK, ROOT, TEST_PROGRAM, marked_processes, wait_until
from exec_supervisor.devservice import DevService

pytest.importorskip("supervisor", reason="the supervisor package (an install dependency of exec-supervisor)")


def supervisord_conf(tmp_path: Path, fragment: Path) -> Path:
    conf = tmp_path / "supervisord.conf"
    sock = tmp_path / "sd.sock"
    conf.write_text(
        f"[unix_http_server]\nfile = {sock}\n\n"
        f"[supervisord]\nnodaemon = true\nlogfile = {tmp_path / 'supervisord.log'}\n"
        f"pidfile = {tmp_path / 'supervisord.pid'}\nchildlogdir = {tmp_path}\n\n"
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl = unix://{sock}\n\n"
        f"[include]\nfiles = {fragment}\n")
    return conf


def events_of(service: DevService, kind: str, exec_id: str) -> list[dict[str, Any]]:
    return [e for e in service.entries if e.get("event") == kind and e.get("exec_id") == exec_id]


def test_a_real_supervisord_runs_the_farm_and_the_listener_forwards_crashes_durably(tmp_path: Path) -> None:
    mark = os.urandom(8).hex()
    service = DevService().start()
    config = tmp_path / "farm.yaml"
    config.write_text(
        f"service: {{host: '{service.url}'}}\n"
        f"supervisor: {{name: sd-test, state_dir: {tmp_path / 'state'}, log_dir: {tmp_path / 'logs'}}}\n"
        "events: {language: zh}\n"
        "executors:\n"
        f"  Test:\n    command: ['{{python}}', {TEST_PROGRAM}]\n    ids: [0-1, 5]\n    start_seconds: 1\n"
        f"    stop_timeout: 3s\n    env: {{ET_TEST_MODE: sleep, {MARK}: '{mark}'}}\n")
    (tmp_path / "logs").mkdir()
    exported = subprocess.run([sys.executable, "-m", "exec_supervisor", "export", "supervisord", str(config)],
                              capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    fragment = tmp_path / "farm.conf"
    fragment.write_text(exported.stdout)
    parsed = configparser.RawConfigParser()
    parsed.read_string(exported.stdout)
    assert parsed.sections() == ["program:et-test", "program:et-test-5", "eventlistener:exec-supervisor"]
    assert (parsed["program:et-test"]["numprocs"], parsed["program:et-test"]["numprocs_start"]) == ("2", "0")
    assert parsed["program:et-test"]["stopasgroup"] == parsed["program:et-test"]["killasgroup"] == "true"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the listener runs this tree's code
    supervisord = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c",
                                    str(supervisord_conf(tmp_path, fragment))], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def running() -> dict[str, psutil.Process]:
            found = {}
            for process in marked_processes(mark):
                try:
                    found[process.environ()["ET_EXEC_ID"]] = process
                except (psutil.Error, KeyError):
                    continue
            return found if len(found) == 3 else {}

        instances = wait_until(running, 30, what="three instances under supervisord")
        assert sorted(instances) == ["ET-Test-0", "ET-Test-1", "ET-Test-5"]
        for exec_id, process in instances.items():
            number = exec_id.rsplit("-", 1)[1]
            assert process.cmdline()[-4:] == ["--service-host", service.url, "--id", number]
            assert process.environ()["ET_ID"] == number
        for exec_id in instances:
            assert service.wait_for(lambda _: bool(events_of(service, "running", exec_id)), 30), exec_id
        # kill -9: the listener turns supervisord's EXITED into our `crashed`, in Chinese, at error level.
        victim = instances["ET-Test-1"]
        victim.send_signal(signal.SIGKILL)
        assert service.wait_for(lambda _: bool(events_of(service, "crashed", "ET-Test-1")), 30)
        crashed = events_of(service, "crashed", "ET-Test-1")[0]
        assert crashed["level"] == "error" and crashed["pid"] == victim.pid
        assert crashed["message"].startswith("ET-Test-1: ") and "信号" in crashed["message"]
        # The log API goes away: the next crash is kept by the listener and delivered when it is back.
        service.stop()
        second = instances["ET-Test-0"]
        second.send_signal(signal.SIGKILL)
        wait_until(lambda: "ET-Test-0" in running() and running()["ET-Test-0"].pid != second.pid, 30,
                   what="ET-Test-0 restarted by supervisord")
        assert not events_of(service, "crashed", "ET-Test-0")
        service.start()
        assert service.wait_for(lambda _: bool(events_of(service, "crashed", "ET-Test-0")), 30)
        assert service.wait_for(lambda _: len(events_of(service, "running", "ET-Test-0")) >= 2, 30)
    finally:
        supervisord.send_signal(signal.SIGTERM)
        try:
            supervisord.wait(30)
        except subprocess.TimeoutExpired:
            supervisord.kill()
            supervisord.wait()
        service.stop()
        leftovers = marked_processes(mark)
        for process in leftovers:
            process.kill()
    assert not leftovers
