"""Shared fixtures: real daemons on real configs, and a check that nothing is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEST_PROGRAM = ROOT / "tests" / "programs" / "misbehaving.py"
MARK = "ES_TEST_MARK"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll predicate until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def marked_processes(mark: str) -> list[psutil.Process]:
    """Every live process whose environment carries this test's mark."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


class Farm:
    """A config in tmp_path and, once started, a real `exec-supervisor start` daemon."""

    def __init__(self, tmp_path: Path, mark: str) -> None:
        self.dir = tmp_path
        self.mark = mark
        self.config_path = tmp_path / "farm.yaml"
        self.log_dir = tmp_path / "logs"
        self.state_dir = tmp_path / "state"
        self.stderr_path = tmp_path / "daemon.stderr"
        self.daemon: subprocess.Popen[bytes] | None = None

    def write(self, executors: dict[str, dict[str, Any]], **sections: Any) -> Path:
        data: dict[str, Any] = {
            "service": {"host": "http://127.0.0.1:9/"},
            "supervisor": {"name": "test", "state_dir": str(self.state_dir), "log_dir": str(self.log_dir)},
            "events": {"forward": False},
            "defaults": {"start_seconds": 0.3, "stop_timeout": 2, "backoff": {"initial": 0.1, "max": 1, "jitter": 0}},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        executors = {name: dict(spec) for name, spec in executors.items()}
        for spec in executors.values():
            spec["env"] = {**spec.get("env", {}), MARK: self.mark}
        data["executors"] = executors
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        return self.config_path

    @staticmethod
    def program(mode: str, **extra: Any) -> dict[str, Any]:
        return {"command": [sys.executable, str(TEST_PROGRAM)], "env": {"ET_TEST_MODE": mode}, **extra}

    def start(self, *extra_args: str, wait_instances: int | None = None,
              launcher: str | None = None) -> subprocess.Popen[bytes]:
        """launcher: Python code to run instead of `-m exec_supervisor.cli` (it gets the same arguments)."""
        self.stderr = open(self.stderr_path, "ab")
        entry = ["-c", launcher] if launcher else ["-m", "exec_supervisor.cli"]
        self.daemon = subprocess.Popen(
            [sys.executable, *entry, "start", str(self.config_path), *extra_args],
            stdout=self.stderr, stderr=self.stderr, stdin=subprocess.DEVNULL,
        )
        if wait_instances is not None:
            wait_until(lambda: len(self.instances()) >= wait_instances, 30, what=f"{wait_instances} instances")
        return self.daemon

    def instances(self) -> dict[str, int]:
        """exec id -> pid of each live main process (a session leader carrying the mark)."""
        found = {}
        if self.daemon is None:
            return found
        try:
            children = psutil.Process(self.daemon.pid).children()
        except psutil.Error:
            return found
        for child in children:
            try:
                env = child.environ()
                if env.get(MARK) == self.mark and os.getsid(child.pid) == child.pid \
                        and child.status() != psutil.STATUS_ZOMBIE:
                    found[env["ET_EXEC_ID"]] = child.pid
            except (psutil.Error, OSError, KeyError):
                continue
        return found

    def wait_started(self, count: int, timeout: float = 20) -> None:
        """Wait until count instances printed their start line (signal handlers are set by then)."""
        def started() -> bool:
            logs = list(self.log_dir.glob("*.log")) if self.log_dir.exists() else []
            return sum(1 for f in logs if "started mode=" in f.read_text(errors="replace")) >= count
        wait_until(started, timeout, what=f"{count} instances printed their start line")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10, count: int = 1) -> str:
        wait_until(lambda: self.log().count(text) >= count, timeout, what=f"{text!r} x{count} in daemon log")
        return self.log()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.daemon is not None
        if self.daemon.poll() is None:
            self.daemon.send_signal(sig)
        code = self.daemon.wait(timeout)
        self.stderr.close()
        return code

    def cleanup(self) -> list[str]:
        """Stop the daemon if a test left it running; kill and report marked leftovers."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        leftovers = marked_processes(self.mark)
        described = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in leftovers]
        for process in leftovers:
            try:
                process.kill()
            except psutil.Error:
                pass
        self.remove_cgroups()
        return described

    def remove_cgroups(self) -> None:
        """The farm's cgroup outlives a SIGKILLed daemon (the next one reuses it): tests remove it."""
        from exec_supervisor.supervise import containment

        try:
            farm_dir, _ = containment.placement(containment.farm_id(self.state_dir))
        except containment.CgroupUnavailable:
            return
        for path in [*Path(farm_dir).glob("ET-*"), Path(farm_dir)]:
            if (path / "cgroup.kill").exists() and containment.populated(str(path)):
                containment.kill(str(path))
                wait_until(lambda: not containment.populated(str(path)), 5, what=f"{path} empty")
            try:
                path.rmdir()
            except OSError:
                pass


@pytest.fixture
def farm(tmp_path: Path) -> Any:
    farm = Farm(tmp_path, uuid.uuid4().hex)
    yield farm
    leftovers = farm.cleanup()
    assert not leftovers, f"processes left behind: {leftovers}"
