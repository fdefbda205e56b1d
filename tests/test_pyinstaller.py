"""The HelloWorld executor frozen by PyInstaller runs under exec-supervisor like the script does.

A one-file binary is two processes: PyInstaller's bootloader (the process the
supervisor started, a session leader) unpacks the program and runs it as its
child with the same command line. Both must start with the right arguments,
be restarted after a SIGKILL of either, and both be gone after the daemon's
SIGTERM.

Slow (a build takes 20-60 s): marked `slow`, it runs in CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from conftest import Farm, marked_processes, wait_until

from exec_supervisor.control.client import Client
from exec_supervisor.devservice import DevService

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "executors" / "et_hello_world.py"


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("PyInstaller")
    work = tmp_path_factory.mktemp("pyinstaller")
    # The command from the README, plus where to put its output. It works from a
    # `pip install -e .` checkout because executors/ is a package: PyInstaller then
    # searches the checkout root, where exec_supervisor lives.
    build = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "-F", str(HELLO), "-n", "et_hello_world",
         "--distpath", str(work / "dist"), "--workpath", str(work / "build"),
         "--specpath", str(work), "--noconfirm", "--log-level", "WARN"],
        cwd=work, capture_output=True, text=True, timeout=480,
    )
    exe = work / "dist" / "et_hello_world"
    assert build.returncode == 0 and exe.exists(), build.stdout[-3000:] + build.stderr[-3000:]
    return exe


@pytest.fixture
def svc() -> Iterator[DevService]:
    service = DevService().start()
    yield service
    service.stop()


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def program_child(pid: int) -> psutil.Process:
    """The real program: the bootloader's only child."""
    def child() -> psutil.Process | None:
        try:
            kids = [k for k in psutil.Process(pid).children() if k.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            return None
        return kids[0] if len(kids) == 1 else None
    return wait_until(child, 20, what=f"the program child of bootloader {pid}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def starts(svc: DevService, exec_id: str) -> int:
    return sum(1 for m in svc.messages() if m.startswith(f"{exec_id}: 已启动 "))


def test_frozen_hello_world_farm(binary: Path, farm: Farm, svc: DevService) -> None:
    farm.write(
        # READY=1 and the heartbeats come from the bootloader's child, the real program.
        {"HelloWorld": {"command": [str(binary)], "ids": "0-1", "ready": "notify", "start_timeout": "60s",
                        "watchdog": "3s"}},
        service={"host": svc.url},
        defaults={"stop_timeout": 10},
    )
    farm.start()
    for n in (0, 1):
        assert svc.wait_for(lambda es, n=n: starts(svc, f"ET-HelloWorld-{n}") >= 1, 30), farm.log()
    entry = next(e for e in svc.entries if e["message"].startswith("ET-HelloWorld-0: "))
    assert entry["level"] == "debug"

    instances = wait_until(lambda: farm.instances() if len(farm.instances()) == 2 else None, 20,
                           what="2 instances")
    children: dict[str, psutil.Process] = {}
    for exec_id, pid in instances.items():
        n = exec_id.rsplit("-", 1)[1]
        expected = [str(binary), "--service-host", svc.url, "--id", n]
        assert cmdline(pid) == expected  # the bootloader, as the supervisor started it
        child = program_child(pid)
        assert cmdline(child.pid) == expected  # the program, with the same arguments
        assert child.environ()["ET_EXEC_ID"] == exec_id and os.getpgid(child.pid) == pid
        children[exec_id] = child

    # Notify from the frozen program counts for its instance, and status shows the whole tree:
    # the real program's RSS (about 28 MiB), not the 2 MiB bootloader's.
    def ready_rows() -> list[dict] | None:
        rows = Client(farm.state_dir / "control.sock").call("GET", "/v1/status")[1]["instances"]
        return rows if all(r["state"] == "running" and r["ready"] and r["heartbeat"] for r in rows) else None

    for status_row in wait_until(ready_rows, 30, what="both ready with heartbeats"):
        assert status_row["processes"] == 2 and status_row["rss"] > 10 * 2**20, status_row
        assert status_row["health"] == "ok", status_row

    # SIGKILL the bootloader of one instance: its orphaned child must not linger,
    # and the supervisor starts a new pair.
    old0, child0 = instances["ET-HelloWorld-0"], children["ET-HelloWorld-0"]
    os.kill(old0, signal.SIGKILL)
    assert svc.wait_for(lambda es: starts(svc, "ET-HelloWorld-0") >= 2, 30), farm.log()
    wait_until(lambda: gone(child0.pid), 15, what="the killed bootloader's child to go")
    new0 = wait_until(lambda: farm.instances().get("ET-HelloWorld-0") not in (None, old0)
                      and farm.instances()["ET-HelloWorld-0"], 20, what="a new ET-HelloWorld-0")
    assert cmdline(new0)[1:] == ["--service-host", svc.url, "--id", "0"]

    # SIGKILL the program of the other: the bootloader exits too and is restarted.
    old1, child1 = instances["ET-HelloWorld-1"], children["ET-HelloWorld-1"]
    child1.kill()
    assert svc.wait_for(lambda es: starts(svc, "ET-HelloWorld-1") >= 2, 30), farm.log()
    wait_until(lambda: gone(old1), 15, what="the bootloader whose program was killed to exit")

    # Both current instances print their start line before the stop.
    current = wait_until(lambda: farm.instances() if len(farm.instances()) == 2 else None, 20,
                         what="2 instances after restarts")
    pairs = [(pid, program_child(pid).pid) for pid in current.values()]

    assert farm.stop() == 0
    # A clean stop: each program got SIGTERM, logged it and flushed before exiting
    # (SIGKILL after stop_timeout would leave no such message).
    for n in (0, 1):
        assert f"ET-HelloWorld-{n}: stopping (SIGTERM)" in svc.messages(), svc.messages()
    for bootloader, program in pairs:
        assert gone(bootloader) and gone(program)
    leftovers = [p for p in marked_processes(farm.mark)]
    assert not leftovers
    still_running = []
    for process in psutil.process_iter():
        try:
            env = process.environ()
        except psutil.Error:
            continue
        if env.get("ET_EXEC_ID", "").startswith("ET-HelloWorld-") and env.get("ES_TEST_MARK") == farm.mark:
            still_running.append(process.pid)
    assert not still_running
