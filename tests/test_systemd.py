"""systemd: sd_notify on a real datagram socket, and the unit file (checked by systemd-analyze when present)."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, Farm, wait_until
from exec_supervisor import systemd
from exec_supervisor.control.client import Client

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


class NotifyListener:
    """What systemd would receive: every datagram sent to NOTIFY_SOCKET, parsed into messages.

    Read on a thread of its own, as systemd reads at once: the socket's queue holds only
    net.unix.max_dgram_qlen (10) datagrams, and the daemon drops a message it cannot queue,
    so a test busy elsewhere (an upgrade command) must not leave the queue unread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[dict[str, str]] = []
        self.times: list[float] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            if not select.select([self.sock], [], [], 0.1)[0]:
                continue
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append(fields)
                self.times.append(time.monotonic())

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5)
        self.sock.close()

    def drain(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.messages)

    def having(self, key: str, value: str | None = None) -> list[int]:
        return [i for i, m in enumerate(self.drain()) if key in m and (value is None or m[key] == value)]

    def wait_for(self, key: str, value: str | None = None, after: int = -1, timeout: float = 15) -> int:
        found = wait_until(lambda: [i for i in self.having(key, value) if i > after], timeout,
                           what=f"sd_notify {key}={value}")
        return found[0]


@pytest.fixture(params=["path", "abstract"])
def notify(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NotifyListener:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"exec-supervisor-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "300000")  # a ping every 0.15 s
    listener = NotifyListener(sock)
    yield listener
    listener.close()


def test_sd_notify_ready_status_reload_watchdog_stopping(farm: Farm, notify: NotifyListener) -> None:
    farm.write({"A": {**farm.program("sleep"), "count": 3}})
    farm.start()
    ready = notify.wait_for("READY", "1")
    assert len(farm.instances()) == 3, "READY=1 comes once every instance has been spawned"
    assert notify.messages[ready].get("MAINPID") == str(farm.daemon.pid)
    notify.wait_for("STATUS", "3/3 instances running")

    # Watchdog pings keep coming at about half of WATCHDOG_USEC.
    first = len(notify.having("WATCHDOG"))
    wait_until(lambda: len(notify.having("WATCHDOG")) >= first + 4, timeout=10, what="watchdog pings")
    pings = [notify.times[i] for i in notify.having("WATCHDOG")]
    gaps = [b - a for a, b in zip(pings[-4:], pings[-3:])]
    assert all(0.05 < gap < 1.0 for gap in gaps), gaps

    # A reload (SIGHUP, then the reload command): RELOADING=1 with MONOTONIC_USEC, then READY=1.
    for trigger in ("sighup", "command"):
        mark = len(notify.messages) - 1
        if trigger == "sighup":
            farm.daemon.send_signal(signal.SIGHUP)
        else:
            assert Client(farm.state_dir / "control.sock").call("POST", "/v1/reload", {})[0] == 200
        reloading = notify.wait_for("RELOADING", "1", after=mark)
        usec = int(notify.messages[reloading]["MONOTONIC_USEC"])
        assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10
        notify.wait_for("READY", "1", after=reloading)

    # STATUS follows the farm (debounced): stop one instance, then start it again.
    client = Client(farm.state_dir / "control.sock")
    mark = len(notify.messages) - 1
    assert client.call("POST", "/v1/stop", {"target": "ET-A-0"})[0] == 200
    mark = notify.wait_for("STATUS", "2/2 instances running", after=mark)
    assert client.call("POST", "/v1/start", {"target": "ET-A-0"})[0] == 200
    notify.wait_for("STATUS", "3/3 instances running", after=mark)

    # The executors never see systemd's variables: NOTIFY_SOCKET is the farm's own socket.
    for pid in farm.instances().values():
        env = psutil.Process(pid).environ()
        assert env["NOTIFY_SOCKET"] != os.environ.get("NOTIFY_SOCKET") and "WATCHDOG_USEC" not in env
        assert env["NOTIFY_SOCKET"] == str(farm.state_dir / "notify.sock")

    mark = len(notify.messages) - 1
    farm.daemon.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1", after=mark)
    assert farm.stop() == 0


def _verify(unit_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit_path)], capture_output=True, text=True, timeout=60)


def test_systemd_unit_for_a_config(farm: Farm, tmp_path: Path) -> None:
    farm.write({"A": {**farm.program("sleep"), "count": 1, "stop_timeout": 25}})
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "systemd-unit", str(farm.config_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    command = systemd.executable_command()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
    assert exec_start.split()[0] == command[0] and os.path.isabs(command[0])
    assert exec_start.endswith(f"start {farm.config_path}")
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed", "TimeoutStopSec=55",
                 "Restart=on-failure", "StateDirectory=exec-supervisor", "LogsDirectory=exec-supervisor",
                 "LimitNOFILE=", "NoNewPrivileges=yes", "ProtectSystem=full", "Delegate=yes",
                 "StateDirectoryMode=0700"):
        assert re.search(rf"^{re.escape(line)}", unit, re.M), line
    assert re.search(r"^WatchdogSec=\d+", unit, re.M)
    # ProtectControlGroups would make the delegated cgroup read-only: containment needs it
    assert not re.search(r"^(ProtectHome|PrivateTmp|PrivateDevices|ProtectClock|ProtectControlGroups)=", unit, re.M)
    # The config names its own state_dir / log_dir: ProtectSystem must not make them read-only.
    assert f"-{farm.state_dir}" in unit and f"-{farm.log_dir}" in unit
    assert len(result.stderr.strip().splitlines()) == 1 and "systemctl" in result.stderr
    if SYSTEMD_ANALYZE:
        path = tmp_path / "exec-supervisor.service"
        path.write_text(unit)
        verified = _verify(path)
        assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


def test_shipped_unit_matches_the_renderer_and_verifies(tmp_path: Path) -> None:
    shipped = (ROOT / "configs" / "exec-supervisor.service").read_text()
    assert shipped == systemd.render_unit(), "regenerate configs/exec-supervisor.service from systemd.render_unit()"
    assert "ExecStart=/usr/local/bin/exec-supervisor start /etc/exec-supervisor/farm.yaml" in shipped
    if SYSTEMD_ANALYZE:
        # verify checks that ExecStart exists: point it at this installation for the check.
        path = tmp_path / "exec-supervisor.service"
        path.write_text(shipped.replace("/usr/local/bin/exec-supervisor", systemd.executable_command()[0]))
        verified = _verify(path)
        assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


def test_notifier_without_notify_socket_is_silent() -> None:
    notifier = systemd.Notifier({})
    assert not notifier.enabled and notifier.send("READY=1") is False
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "nope"}) is None


def test_upgrade_under_systemd_is_a_reload_of_the_same_main_pid(farm: Farm, notify: NotifyListener) -> None:
    farm.write({"A": {**farm.program("sleep"), "count": 2}})
    farm.start()
    ready = notify.wait_for("READY", "1")
    before = farm.instances()
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "upgrade", "-c", str(farm.config_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    reloading = notify.wait_for("RELOADING", "1", after=ready)
    assert "upgrading in place" in notify.messages[reloading]["STATUS"]
    again = notify.wait_for("READY", "1", after=reloading)
    assert notify.messages[again]["MAINPID"] == str(farm.daemon.pid)
    assert not notify.having("STOPPING") and farm.instances() == before
    first = len(notify.having("WATCHDOG"))  # the new image keeps the watchdog fed
    wait_until(lambda: len(notify.having("WATCHDOG")) >= first + 3, timeout=10, what="watchdog pings")
    assert farm.stop() == 0


def test_systemd_unit_keep_executors_is_killmode_process_with_its_trade_off(farm: Farm, tmp_path: Path) -> None:
    farm.write({"A": {**farm.program("sleep"), "count": 1}})
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "systemd-unit", "--keep-executors",
                             str(farm.config_path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^KillMode=process$", result.stdout, re.M) and "KillMode=mixed" not in result.stdout
    assert "systemd kills nothing but the daemon" in result.stdout
    if SYSTEMD_ANALYZE:
        path = tmp_path / "exec-supervisor.service"
        path.write_text(result.stdout)
        verified = _verify(path)
        assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
