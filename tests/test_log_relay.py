"""Executors' own log lines delivered by the supervisor: the log socket, the relay.

Real daemons, real executors (the toolkit, tests/programs/talker.py), a real recording
log API on loopback (DevService) that goes down, demands a Bearer token, or both.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from conftest import ROOT, Farm, marked_processes, wait_until
from exec_supervisor.devservice import DevService

TALKER = ROOT / "tests" / "programs" / "talker.py"
LINE_RE = re.compile(r"^(ET-\w+-\d+): pid=(\d+) line (\d+)$")


def talker(mode: str, **env: str) -> dict[str, Any]:
    return {"command": [sys.executable, str(TALKER)], "env": {"TALK_MODE": mode, **env}}


def status(farm: Farm) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "status", "--json", "-c",
                           str(farm.config_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode in (0, 4), done.stderr
    return json.loads(done.stdout)


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


@pytest.fixture
def secret_env() -> Iterator[dict[str, str]]:
    """The supervisor's credential in the daemon's environment (the farm inherits os.environ)."""
    values = {"RELAY_TEST_TOKEN": "tok-" + os.urandom(8).hex()}
    os.environ.update(values)
    yield values
    for name in values:
        os.environ.pop(name, None)


def test_lines_survive_an_outage_and_a_sigkill_in_order_with_the_supervisors_token_only(
        farm: Farm, secret_env: dict[str, str]) -> None:
    token = secret_env["RELAY_TEST_TOKEN"]
    with DevService(token=token, exempt=False) as svc:  # Bearer only: an executor alone gets 401
        farm.write({"Talker": {**talker("count", TALK_EVERY="0.02"), "count": 2, "stop_timeout": 2}},
                   service={"host": svc.url, "auth": {"token_env": "RELAY_TEST_TOKEN"}},
                   events={"forward": True})
        farm.start(wait_instances=2)
        os.environ.pop("RELAY_TEST_TOKEN")  # only the daemon got it
        farm.wait_started(2)
        assert svc.wait_for(lambda es: sum(1 for e in es if LINE_RE.match(e["message"])) >= 20, 20)
        port = svc.port
        svc.stop()
        down = time.monotonic()
        killed_pid = farm.instances()["ET-Talker-0"]
        wait_until(lambda: time.monotonic() - down > 1.0, what="lines written while the service is down")
        os.kill(killed_pid, signal.SIGKILL)  # its lines are the supervisor's already
        wait_until(lambda: farm.instances().get("ET-Talker-0") not in (None, killed_pid), 20,
                   what="ET-Talker-0 restarted")
        wait_until(lambda: time.monotonic() - down > 3.0, what="a 3 s outage")
        backlog = status(farm)["supervisor"]["backlog"]
        assert backlog["executor_lines"]["pending"] > 50, backlog
        svc.start()
        assert svc.port == port
        # The executors hold neither the token nor a way to read it; the supervisor delivered with it.
        for process in marked_processes(farm.mark):
            raw = environ_of(process.pid)
            assert token.encode() not in raw and b"RELAY_TEST_TOKEN" not in raw
            assert b"ET_LOG_SOCKET=" in raw
        wait_until(lambda: status(farm)["supervisor"]["backlog"]["executor_lines"]["pending"] < 20, 30,
                   what="the backlog delivered")
        rows = {r["exec_id"]: r for r in status(farm)["instances"]}
        assert rows["ET-Talker-1"]["lines"]["relayed"] > 100 and rows["ET-Talker-1"]["lines"]["dropped"] == 0
        assert farm.stop() == 0
        # Every line each run printed reached the service after recovery, in its order.
        printed: dict[tuple[str, int], int] = {}
        for exec_id in ("ET-Talker-0", "ET-Talker-1"):
            for line in (farm.log_dir / f"{exec_id}.log").read_text().splitlines():
                match = re.match(r"^\[info\] (ET-\w+-\d+): pid=(\d+) line (\d+)$", line)
                if match:
                    key = (match.group(1), int(match.group(2)))
                    printed[key] = max(printed.get(key, -1), int(match.group(3)))
        got: dict[tuple[str, int], list[int]] = defaultdict(list)
        for entry in svc.entries:
            match = LINE_RE.match(entry["message"])
            if match:
                assert {k for k in entry if not k.startswith("_")} == {"level", "message"}, entry
                got[(match.group(1), int(match.group(2)))].append(int(match.group(3)))
        assert (("ET-Talker-0", killed_pid)) in printed
        for key, last in printed.items():
            seen = [k for i, k in enumerate(got[key]) if i == 0 or k != got[key][i - 1]]  # at least once
            # A SIGKILL between the print and the hand-over loses that one line, no more.
            allowed_missing = 1 if key[1] == killed_pid else 0
            assert seen == list(range(len(seen))), f"{key}: out of order or with a gap: {seen[:50]}"
            assert len(seen) >= last + 1 - allowed_missing, (key, len(seen), last)
        assert len(printed) >= 3  # two instances and the restarted one
        assert all(h == f"Bearer {token}" for h in svc.auth_headers)
        assert any(e.get("event") == "crashed" and e.get("exec_id") == "ET-Talker-0" for e in svc.entries)


def test_spoofed_prefixes_are_corrected_and_strangers_refused(farm: Farm) -> None:
    with DevService() as svc:
        farm.write({"Spoofer": {**talker("raw", TALK_LINES="ET-Victim-7: i am someone else|no prefix at all|"
                                                           "ET-Spoofer-0: mine"), "count": 1}},
                   service={"host": svc.url}, events={"forward": True})
        farm.start(wait_instances=1)
        assert svc.wait_for(lambda es: sum(1 for e in es if "Spoofer" in e["message"] and "event" not in e) >= 4, 20)
        lines = [e for e in svc.entries if "event" not in e]
        assert sorted(e["message"] for e in lines) == sorted([
            "ET-Spoofer-0: i am someone else", "ET-Spoofer-0: no prefix at all", "ET-Spoofer-0: mine",
            "ET-Spoofer-0: from a grandchild"])
        # Posted exactly as the executor would have: level and message, nothing else.
        assert all(set(k for k in e if not k.startswith("_")) == {"level", "message"} for e in lines), lines
        # A process that is no instance of the farm is refused.
        import socket as socket_mod
        address = str(farm.state_dir / "log.sock")
        sock = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
        sock.sendto(json.dumps({"level": "info", "message": "ET-Spoofer-0: stranger"}).encode(), address)
        sock.close()
        wait_until(lambda: status(farm)["supervisor"]["backlog"]["executor_lines"]["refused"] >= 1,
                   what="the stranger refused")
        assert not any("stranger" in e["message"] for e in svc.entries)
        assert farm.stop() == 0


def test_a_flooding_executor_is_rate_limited_and_every_supervisor_error_arrives(farm: Farm) -> None:
    with DevService() as svc:
        farm.write({
            "Flood": {**talker("flood", TALK_COUNT="20000"), "count": 1},
            "Crash": {**farm.program("exit:3"), "count": 1, "max_restarts": 8, "restart_window": 600},
        }, service={"host": svc.url},
            events={"forward": True, "executor_lines_per_second": 50, "executor_lines_burst": 200,
                    "spool_max_bytes": "256KiB"})
        farm.start()
        wait_until(lambda: "flooded" in (farm.log_dir / "ET-Flood-0.log").read_text()
                   if (farm.log_dir / "ET-Flood-0.log").exists() else False, 60, what="the flood sent")
        assert svc.wait_for(lambda es: any(e.get("event") == "fatal" for e in es), 60)
        assert svc.wait_for(lambda es: any(e.get("event") == "executor_lines_dropped" for e in es), 30)
        crashes = [e for e in svc.entries if e.get("event") == "crashed" and e.get("exec_id") == "ET-Crash-0"]
        assert len(crashes) == 8, [e["message"] for e in crashes]  # then the fatal one
        assert not any(e.get("event") == "events_dropped" for e in svc.entries)
        data = status(farm)
        assert data["supervisor"]["backlog"]["dropped"] == 0  # no supervisor event made room for lines
        row = {r["exec_id"]: r for r in data["instances"]}["ET-Flood-0"]
        flood = [e for e in svc.entries if "flood " in e["message"]]
        assert row["lines"]["dropped"] >= 15000 and row["lines"]["relayed"] + row["lines"]["pending"] < 2000
        assert len(flood) < 2000
        assert farm.stop() == 0


# --------------------------------------------------------------------------- the relay


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_relay_carries_an_unmodified_seed_style_executor_durably_and_proxies_with_auth(
        farm: Farm, secret_env: dict[str, str]) -> None:
    token = secret_env["RELAY_TEST_TOKEN"]
    port = free_port()  # the relay's port, recorded as a previous run would have
    farm.state_dir.mkdir(parents=True, exist_ok=True)
    (farm.state_dir / "relay.json").write_text(json.dumps({"port": port}))
    with DevService(token=token, exempt=False) as svc:
        svc.fail_status = 503  # the log API fails: the seed's line must wait in the supervisor's spool
        farm.write({"SeedStyle": {
            "command": ["{python}", str(ROOT / "executors" / "et_seed_style.py")], "count": 1,
            # Its public-IP lookup is a GET through the relay: the answer ends up in its first line.
            "env": {"ET_PUBLIC_IP_URL": f"http://127.0.0.1:{port}/ET-SeedStyle-0/api/whoami"},
        }}, service={"host": svc.url, "relay": True, "auth": {"token_env": "RELAY_TEST_TOKEN"}},
            events={"forward": True})
        farm.start(wait_instances=1)
        os.environ.pop("RELAY_TEST_TOKEN")
        pid = farm.instances()["ET-SeedStyle-0"]
        relay = f"http://127.0.0.1:{port}/ET-SeedStyle-0/"
        assert psutil.Process(pid).cmdline()[-4:] == ["--service-host", relay, "--id", "0"]
        environ = environ_of(pid)
        assert f"ET_SERVICE_HOST={relay}".encode() in environ and token.encode() not in environ
        log_file = farm.log_dir / "ET-SeedStyle-0.log"
        wait_until(lambda: "[debug] ET-SeedStyle-0: 已启动" in log_file.read_text(), 20, what="its first line")
        # The relay answered 200 at once: the seed saw no failure, the line is the supervisor's now,
        # and it survives the executor's death.
        assert "服务响应异常" not in log_file.read_text()
        # (it prints before it posts: wait for the relay to hold the line)
        wait_until(lambda: (status(farm)["instances"][0]["lines"] or {}).get("pending") == 1, 20,
                   what="the line in the supervisor's spool")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: farm.instances().get("ET-SeedStyle-0") not in (None, pid), 20, what="a restart")
        wait_until(lambda: (status(farm)["instances"][0]["lines"] or {}).get("pending") == 2, 20,
                   what="the second run's line in the supervisor's spool")
        assert not any(e["message"].startswith("ET-SeedStyle-0: 已启动") for e in svc.entries)
        svc.fail_status = None
        assert svc.wait_for(lambda es: sum(1 for e in es if e["message"].startswith("ET-SeedStyle-0: 已启动")) == 2,
                            30)
        lines = [e for e in svc.entries if e["message"].startswith("ET-SeedStyle-0: 已启动")]
        assert all({k for k in e if not k.startswith("_")} == {"level", "message"} for e in lines)
        # The GETs reached the service with the supervisor's token, and the answer came back.
        gets = [r for r in svc.request_log if r[0] == "GET"]
        assert len(gets) == 2 and all(r == ("GET", "/api/whoami", f"Bearer {token}") for r in gets), gets
        assert all('"Not Found"' in e["message"] for e in lines), lines
        # A process that is not the instance's cannot use its path.
        import requests
        answer = requests.post(relay + "api/bases/logs/", json={"level": "info", "message": "x"}, timeout=10)
        assert answer.status_code == 403
        assert requests.get(f"http://127.0.0.1:{port}/nothing", timeout=10).status_code == 404
        assert farm.stop() == 0


def test_a_reload_switches_the_relay_on_and_off(farm: Farm) -> None:
    with DevService() as svc:
        spec = {"Talker": {**talker("count", TALK_EVERY="0.5"), "count": 1}}
        farm.write(spec, service={"host": svc.url}, events={"forward": True})
        farm.start(wait_instances=1)

        def host_arg() -> str | None:
            pid = farm.instances().get("ET-Talker-0")
            try:
                return psutil.Process(pid).cmdline()[-3] if pid else None
            except psutil.Error:
                return None

        assert host_arg() == svc.url

        def reload() -> None:
            done = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "reload", "-c",
                                   str(farm.config_path)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr

        farm.write(spec, service={"host": svc.url, "relay": True}, events={"forward": True})
        reload()
        port = json.loads((farm.state_dir / "relay.json").read_text())["port"]
        relayed = f"http://127.0.0.1:{port}/ET-Talker-0/"
        wait_until(lambda: host_arg() == relayed, 20, what="the instance on the relay")
        farm.write(spec, service={"host": svc.url}, events={"forward": True})
        reload()
        wait_until(lambda: host_arg() == svc.url, 20, what="the instance off the relay")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert farm.stop() == 0
