"""Operating a running farm over the control socket: real daemons, real socket, the real CLI."""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import yaml

from conftest import Farm, marked_processes, wait_until
from exec_supervisor.control.client import Client, UnixHTTPConnection

SLEEP = shutil.which("sleep")


def sleeper(**extra: Any) -> dict[str, Any]:
    return {"command": [SLEEP, "10000"], "args": [], **extra}


def cli(farm: Farm, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exec_supervisor.cli", *args, "-c", str(farm.config_path)],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def ok(farm: Farm, *args: str, timeout: float = 60) -> str:
    result = cli(farm, *args, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def refused(farm: Farm, code: int, *args: str) -> str:
    result = cli(farm, *args)
    assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


def api(farm: Farm) -> Client:
    return Client(farm.state_dir / "control.sock")


def raw(farm: Farm, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    connection = UnixHTTPConnection(str(farm.state_dir / "control.sock"), timeout=10)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data)
    finally:
        connection.close()


def status(farm: Farm, target: str = "all") -> dict[str, Any]:
    """The JSON status; exit 4 (a desired instance not running yet) is an answer too."""
    result = cli(farm, "status", target, "--json")
    assert result.returncode in (0, 4), (result.stdout, result.stderr)
    return json.loads(result.stdout)


def states(farm: Farm) -> dict[str, str]:
    return {row["exec_id"]: row["state"] for row in status(farm)["instances"]}


def test_status_fields_and_json_shape(farm: Farm) -> None:
    farm.write({"A": {**farm.program("sleep"), "count": 3}, "B": sleeper(ids=[5, 7])})
    farm.start(wait_instances=5)
    farm.wait_log("ET-A-2: running")
    pids = farm.instances()
    os.kill(pids["ET-A-1"], signal.SIGKILL)
    wait_until(lambda: farm.instances().get("ET-A-1") not in (None, pids["ET-A-1"]), what="ET-A-1 back")
    farm.wait_log("ET-A-1: running", count=2)

    data = status(farm)
    assert set(data) == {"supervisor", "containment", "types", "instances", "incidents"}
    assert data["incidents"] == []  # open incidents: one crash is none
    supervisor = data["supervisor"]
    assert supervisor["pid"] == farm.daemon.pid
    assert supervisor["name"] == "test" and supervisor["version"] and supervisor["uptime"] > 0
    assert (supervisor["running"], supervisor["desired"]) == (5, 5)
    assert "backlog" in supervisor and supervisor["forwarding"] is False
    rows = {row["exec_id"]: row for row in data["instances"]}
    assert list(rows) == ["ET-A-0", "ET-A-1", "ET-A-2", "ET-B-5", "ET-B-7"]
    now = farm.instances()
    for exec_id, row in rows.items():
        assert {"exec_id", "type", "id", "state", "pid", "restarts", "uptime", "started", "last_exit",
                "cpu_percent", "rss"} <= set(row)
        assert row["state"] == "running" and row["pid"] == now[exec_id]
        assert row["rss"] > 0 and row["cpu_percent"] >= 0 and row["uptime"] >= 0
    assert rows["ET-A-1"]["restarts"] == 1
    assert rows["ET-A-1"]["last_exit"]["signal"] == "SIGKILL"
    assert rows["ET-B-7"]["type"] == "B" and rows["ET-B-7"]["id"] == 7
    assert [t["type"] for t in data["types"]] == ["A", "B"]
    b_summary = data["types"][1]
    assert (b_summary["running"], b_summary["desired"], b_summary["configured"], b_summary["scaled"]) == (2, 2, 2, None)

    assert [r["exec_id"] for r in status(farm, "B")["instances"]] == ["ET-B-5", "ET-B-7"]
    assert [r["exec_id"] for r in status(farm, "ET-A-1")["instances"]] == ["ET-A-1"]

    text = ok(farm, "status")
    assert re.search(r"^EXEC ID\s+STATE\s+PID\s+UPTIME\s+RESTARTS\s+CPU%\s+RSS\s+LAST EXIT", text, re.M)
    assert re.search(rf"^ET-A-1\s+running\s+{now['ET-A-1']}\s+\S+\s+1\s+[\d.]+\s+[\d.]+[KMG]\s+SIGKILL, \d+s ago",
                     text, re.M), text
    assert "A: 3/3 running" in text and "B: 2/2 running" in text
    assert f"pid {farm.daemon.pid}" in text and "event delivery: off" in text

    message = refused(farm, 2, "status", "Nope")
    assert message.strip().splitlines() == ["exec-supervisor: no executor type 'Nope' in this farm (types: A, B)"]
    assert farm.stop() == 0


def test_scale_up_down_explicit_ids_and_persistence(farm: Farm) -> None:
    farm.write({"A": sleeper(ids="100-103"), "B": sleeper(count=1)})
    farm.start(wait_instances=5)
    before = farm.instances()

    assert "A: 4 -> 6 instances (2 started)" in ok(farm, "scale", "A", "6", "--wait")
    after = farm.instances()
    assert sorted(after) == sorted([f"ET-A-{i}" for i in range(100, 106)] + ["ET-B-0"])
    assert all(after[k] == v for k, v in before.items()), "survivors keep their process"

    ok(farm, "scale", "A", "2", "--wait")
    after2 = farm.instances()
    assert sorted(after2) == ["ET-A-100", "ET-A-101", "ET-B-0"], "the highest ids go first"
    assert all(after2[k] == before[k] for k in after2)

    ok(farm, "scale", "A", "0-1,101", "--wait")
    after3 = farm.instances()
    assert sorted(after3) == ["ET-A-0", "ET-A-1", "ET-A-101", "ET-B-0"]
    assert after3["ET-A-101"] == before["ET-A-101"]

    ok(farm, "scale", "A=2", "B=3", "--wait")
    after4 = farm.instances()
    assert sorted(after4) == ["ET-A-0", "ET-A-1", "ET-B-0", "ET-B-1", "ET-B-2"]
    assert after4["ET-B-0"] == before["ET-B-0"]
    types = {t["type"]: t for t in status(farm)["types"]}
    assert (types["A"]["scaled"], types["A"]["configured"]) == (2, 4)
    assert re.search(r"^A: 2/2 running \(scaled to 2( on [\d-]+ [\d:]+)?, config says 4; "
                     r"`scale A --reset` follows the config\)$", ok(farm, "status"), re.M)

    assert "not a count" in refused(farm, 2, "scale", "A", "-1")
    assert "not a count" in refused(farm, 2, "scale", "A", "x")
    assert "no executor type 'Nope'" in refused(farm, 2, "scale", "Nope", "3")
    code, body = api(farm).call("POST", "/v1/scale", {"scale": {"A": 10**9}})
    assert code == 400 and "count must be between 0 and" in body["error"]

    # The runtime scale survives a restart of the daemon...
    assert farm.stop() == 0
    farm.start(wait_instances=5)
    assert sorted(farm.instances()) == ["ET-A-0", "ET-A-1", "ET-B-0", "ET-B-1", "ET-B-2"]
    # ...until the type's count is edited in the config and reloaded.
    data = yaml.safe_load(farm.config_path.read_text())
    data["executors"]["A"]["ids"] = "100-102"
    farm.config_path.write_text(yaml.safe_dump(data))
    ok(farm, "reload")
    wait_until(lambda: sorted(farm.instances()) == ["ET-A-100", "ET-A-101", "ET-A-102", "ET-B-0", "ET-B-1", "ET-B-2"],
               what="config ids replace the runtime scale of A, B keeps its scale")
    assert farm.stop() == 0


def test_stop_start_restart_and_rolling_restart(farm: Farm) -> None:
    farm.write({"A": {**farm.program("sleep"), "count": 3}})
    farm.start(wait_instances=3)
    first = farm.instances()

    assert "stopped: ET-A-0" in ok(farm, "stop", "ET-A-0")
    assert sorted(farm.instances()) == ["ET-A-1", "ET-A-2"]
    assert states(farm)["ET-A-0"] == "stopped"
    ok(farm, "reload")
    assert status(farm, "ET-A-0")["instances"][0]["held"] is True
    assert sorted(farm.instances()) == ["ET-A-1", "ET-A-2"], "a stopped instance stays stopped across reload"

    assert "started: ET-A-0" in ok(farm, "start", "ET-A-0")
    second = farm.instances()
    assert states(farm)["ET-A-0"] == "running" and second["ET-A-0"] != first["ET-A-0"]
    assert second["ET-A-1"] == first["ET-A-1"]

    ok(farm, "restart", "A")
    third = farm.instances()
    assert all(third[k] != second[k] for k in second) and set(states(farm).values()) == {"running"}

    ok(farm, "restart", "A", "--rolling")
    fourth = farm.instances()
    assert all(fourth[k] != third[k] for k in third)
    events = api(farm).call("GET", "/v1/events?n=200")[1]["events"]
    marks = [(e["event"], e["exec_id"]) for e in events if e["event"] in ("stopping", "running")]
    rolling = marks[-6:]
    assert rolling == [("stopping", "ET-A-0"), ("running", "ET-A-0"), ("stopping", "ET-A-1"),
                       ("running", "ET-A-1"), ("stopping", "ET-A-2"), ("running", "ET-A-2")], rolling

    ok(farm, "stop", "all")
    assert farm.instances() == {} and set(states(farm).values()) == {"stopped"}
    ok(farm, "start", "all")
    assert len(farm.instances()) == 3
    assert "no instance ET-A-9" in refused(farm, 2, "restart", "ET-A-9")
    assert farm.stop() == 0


def test_reload_applies_only_the_difference_and_a_bad_config_changes_nothing(farm: Farm) -> None:
    farm.write({"Keep": sleeper(count=2), "Gone": sleeper(count=1), "Change": sleeper(count=1, env={"X": "1"})})
    farm.start(wait_instances=4)
    before = farm.instances()

    farm.write({"Keep": sleeper(count=2), "Change": sleeper(count=1, env={"X": "2"}), "New": sleeper(count=1)})
    out = ok(farm, "reload")
    assert "1 started, 1 stopped, 1 restarted, 2 unchanged" in out
    after = wait_until(lambda: (now := farm.instances()).keys() == {"ET-Keep-0", "ET-Keep-1", "ET-Change-0", "ET-New-0"}
                       and now, what="reloaded farm")
    assert after["ET-Keep-0"] == before["ET-Keep-0"] and after["ET-Keep-1"] == before["ET-Keep-1"]
    assert after["ET-Change-0"] != before["ET-Change-0"]
    assert psutil.Process(after["ET-Change-0"]).environ()["X"] == "2"

    good = farm.config_path.read_text()
    farm.config_path.write_text(good.replace("executors:", "executors:\n  Bad-Name:\n    command: [sh]\n", 1))
    message = refused(farm, 2, "reload")
    assert "type name 'Bad-Name' must match" in message and "nothing was changed" in message
    farm.daemon.send_signal(signal.SIGHUP)
    farm.wait_log("reload refused, config unchanged", count=2)
    assert farm.instances() == after, "a bad config changes nothing"
    events = api(farm).call("GET", "/v1/events?n=100")[1]["events"]
    assert any(e["event"] == "reload_failed" for e in events)
    assert farm.daemon.poll() is None
    assert farm.stop() == 0


WRITER = """\
import itertools, time
for n in itertools.count():
    print(f"line {n:08d}", flush=True)
    time.sleep(0.002)
"""


def test_logs_tail_and_follow_across_a_rotation(farm: Farm, tmp_path: Path) -> None:
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER)
    farm.write({"W": {"command": [sys.executable, str(writer)], "args": [], "count": 1,
                      "log_max_bytes": "16KiB", "log_backups": 2}})
    farm.start(wait_instances=1)
    log_file = farm.log_dir / "ET-W-0.log"
    wait_until(lambda: log_file.exists() and log_file.stat().st_size > 200, what="some output")

    tail = ok(farm, "logs", "ET-W-0", "-n", "5")
    numbers = [int(n) for n in re.findall(r"^line (\d+)$", tail, re.M)]
    assert len(tail.splitlines()) == 5 and numbers == list(range(numbers[0], numbers[0] + 5))

    followed = tmp_path / "followed.txt"
    with open(followed, "wb") as out:
        follower = subprocess.Popen(
            [sys.executable, "-m", "exec_supervisor.cli", "logs", "ET-W-0", "-f", "-n", "3", "-c", str(farm.config_path)],
            stdout=out, stderr=subprocess.PIPE,
        )
        try:
            backup = log_file.with_name("ET-W-0.log.1")
            wait_until(backup.exists, timeout=15, what="the daemon rotating the log")
            last_before = int(re.findall(rb"^line (\d+)$", backup.read_bytes(), re.M)[-1])
            wait_until(lambda: f"line {last_before + 200:08d}\n".encode() in followed.read_bytes(),
                       timeout=10, what="followed output past the rotation")
        finally:
            follower.terminate()
            follower.wait(10)
    got = [int(n) for n in re.findall(rb"^line (\d+)$", followed.read_bytes(), re.M)]
    assert len(got) == len(set(got)), "nothing repeated"
    assert got == sorted(got)
    missing = (got[-1] - got[0] + 1) - len(got)
    # copytruncate leaves a window of microseconds where a line can be lost between copy and cut.
    assert missing <= 1, f"{missing} lines missing across the rotation"
    assert got[0] < last_before < got[-1]
    assert farm.instances().keys() == {"ET-W-0"}
    assert farm.stop() == 0


def test_refused_targets_and_malformed_requests(farm: Farm) -> None:
    farm.write({"A": sleeper(count=1)})
    farm.start(wait_instances=1)
    pids = farm.instances()
    sock = farm.state_dir / "control.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600, "owner only by default"

    for target in ("../x", "/etc/passwd", "ET-A-0/../../../../etc/passwd", "ET-A-99", "ET-Nope-0"):
        result = cli(farm, "logs", target)
        assert result.returncode == 2, (target, result.stderr)
        assert "root:" not in result.stdout and len(result.stderr.strip().splitlines()) == 1
    for path in ("/v1/logs/..%2F..%2F..%2Fetc%2Fpasswd", "/v1/logs/%2Fetc%2Fpasswd", "/v1/logs/ET-A-0%00",
                 "/v1/status?target=../x", "/v1/status?target=/etc"):
        code, body = raw(farm, "GET", path)
        assert code in (400, 404) and "error" in body, (path, code, body)
    for body in (b'{"target": "../x"}', b'{"target": "/etc/passwd"}', b'{"target": 7}', b"{}"):
        code, answer = raw(farm, "POST", "/v1/stop", body)
        assert code == 400 and "exec id" in answer["error"], (body, answer)

    cases = [
        ("POST", "/v1/scale", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/scale", b"[1, 2]", 400, "JSON object"),
        ("POST", "/v1/scale", b'{"scale": {"A": "x"}}', 400, "not an id"),
        ("POST", "/v1/scale", b'{"scale": {"A": 5}, "timeout": "soon"}', 400, "timeout"),
        ("POST", "/v1/scale", b"x" * (200 * 1024), 413, "too large"),
        ("GET", "/v1/logs/ET-A-0?n=-1", None, 400, "whole number"),
        ("GET", "/v1/nowhere", None, 404, "no such endpoint"),
        ("DELETE", "/v1/status", None, 405, "not allowed"),
    ]
    for method, path, body, expected, text in cases:
        code, answer = raw(farm, method, path, body)
        assert code == expected and text in answer["error"], (path, body and body[:40], code, answer)

    with socket.socket(socket.AF_UNIX) as garbage:
        garbage.settimeout(5)
        garbage.connect(str(sock))
        garbage.sendall(b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] 400 ", garbage.recv(100))
    with socket.socket(socket.AF_UNIX) as idle:  # a client that connects and says nothing blocks nobody
        idle.connect(str(sock))
        assert api(farm).call("GET", "/v1/health")[0] == 200

    assert farm.daemon.poll() is None and farm.instances() == pids
    assert "Traceback" not in farm.log(), "client mistakes are not the daemon's errors"
    assert api(farm).call("GET", "/v1/status")[0] == 200
    assert farm.stop() == 0


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_http_keep_alive_pipelining_limits_and_prompt_close(farm: Farm) -> None:
    farm.write({"A": sleeper(count=1)})
    farm.start(wait_instances=1)
    path = str(farm.state_dir / "control.sock")

    def connect() -> socket.socket:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)  # blocking: a full listen backlog makes a timed connect fail with EAGAIN
        client.settimeout(10)
        return client

    with connect() as client:  # two pipelined requests on one connection, then a close
        client.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
                       b"HEAD /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
                       b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = _read_until_closed(client)
    assert answers.count(b"HTTP/1.1 200 OK") == 3, answers
    assert answers.count(b'"ok": true') == 2, "HEAD answers without a body"

    with connect() as client:  # a head that never ends is cut off, not buffered forever
        client.sendall(b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"a" * (64 * 1024))
        assert re.match(rb"HTTP/1\.1 431 .*bad HTTP request", _read_until_closed(client), re.S)

    crowd = [connect() for _ in range(128)]
    try:
        # the server has taken the first 128 when a request on the last one is answered
        crowd[-1].sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert crowd[-1].recv(100).startswith(b"HTTP/1.1 200")
        with connect() as extra:  # at the limit a newcomer is served: the oldest idle connection makes room
            extra.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert extra.recv(100).startswith(b"HTTP/1.1 200")
        assert _read_until_closed(crowd[0]) == b"", "the oldest connection waiting on its client was closed"
        crowd.pop(0).close()
        wait_until(lambda: api(farm).call("GET", "/v1/health")[0] == 200, what="room again after a close")

        follower = connect()  # a follow stream and 127 idle keep-alive connections do not hold up the exit
        crowd.append(follower)
        follower.sendall(b"GET /v1/events?follow=1&n=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert follower.recv(100).startswith(b"HTTP/1.1 200")
        assert farm.stop() == 0
        assert _read_until_closed(follower).endswith(b"0\r\n\r\n"), "the stream ends with its last chunk"
    finally:
        for client in crowd:
            client.close()
    assert "Traceback" not in farm.log()


def test_socket_mode_and_group(farm: Farm) -> None:
    farm.write({"A": sleeper(count=1)}, control={"socket_mode": "0660", "group": "no-such-group-here"})
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "start", str(farm.config_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "exec-supervisor: control.group: there is no group named 'no-such-group-here' on this machine"]
    assert not marked_processes(farm.mark)

    group = grp.getgrgid(os.getgid()).gr_name
    farm.write({"A": sleeper(count=1)}, control={"socket_mode": "0660", "group": group})
    farm.start(wait_instances=1)
    info = os.stat(farm.state_dir / "control.sock")
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getgid()
    # The socket is created under a tight umask; the executors spawned after it get the usual one.
    mine = os.umask(0)
    os.umask(mine)
    child = next(iter(farm.instances().values()))
    umask = re.search(r"^Umask:\s+(\d+)", Path(f"/proc/{child}/status").read_text(), re.M).group(1)
    assert int(umask, 8) == mine
    assert farm.stop() == 0
    assert not (farm.state_dir / "control.sock").exists(), "a clean stop removes the socket"


def test_second_daemon_refused_while_the_first_keeps_answering(farm: Farm) -> None:
    farm.write({"A": sleeper(count=1)})
    farm.start(wait_instances=1)
    inode = os.stat(farm.state_dir / "control.sock").st_ino
    second = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "start", str(farm.config_path)],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1 and "already running" in second.stderr and "Traceback" not in second.stderr
    assert os.stat(farm.state_dir / "control.sock").st_ino == inode
    assert status(farm)["supervisor"]["pid"] == farm.daemon.pid
    assert farm.stop() == 0


def test_no_daemon_exit_3_stale_socket_recovered_and_shutdown(farm: Farm) -> None:
    farm.write({"A": sleeper(count=2)})
    message = refused(farm, 3, "status")
    assert message.strip().splitlines() == [
        f"exec-supervisor: no daemon is running (nothing listens on {farm.state_dir / 'control.sock'})"]
    # A crashed daemon's socket file: still "no daemon", and the next daemon takes its place.
    farm.state_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(farm.state_dir / "control.sock"))
    assert (farm.state_dir / "control.sock").exists()
    refused(farm, 3, "status")
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "status", "--socket", "/nonexistent/x.sock"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3 and len(result.stderr.strip().splitlines()) == 1

    farm.start(wait_instances=2)
    assert status(farm)["supervisor"]["pid"] == farm.daemon.pid
    out = ok(farm, "shutdown")
    assert f"exec-supervisor (pid {farm.daemon.pid}) stopped 2 instances and exited" in out
    assert farm.stop() == 0
    assert not marked_processes(farm.mark) and not (farm.state_dir / "control.sock").exists()
    refused(farm, 3, "shutdown")


def test_events_recent_backlog_and_follow(farm: Farm, tmp_path: Path) -> None:
    farm.write({"A": sleeper(count=2)}, events={"forward": True})
    farm.start(wait_instances=2)
    farm.wait_log("ET-A-1: running")
    data = json.loads(ok(farm, "events", "-n", "5", "--json"))
    assert set(data) >= {"events", "backlog", "forwarding"} and data["forwarding"] is True
    assert len(data["events"]) == 5
    assert {"event", "level", "time", "message", "exec_id"} <= set(data["events"][-1])
    assert {"count", "oldest_age", "last_error"} <= set(data["backlog"])
    text = ok(farm, "events", "-n", "3")
    assert "event delivery backlog:" in text and len(text.strip().splitlines()) == 4

    followed = tmp_path / "events.ndjson"
    with open(followed, "wb") as out:
        follower = subprocess.Popen(
            [sys.executable, "-m", "exec_supervisor.cli", "events", "-f", "-n", "1", "--json", "-c",
             str(farm.config_path)], stdout=out)
        try:
            # The one recent event arrives once the follower is connected; then a restart must show up.
            wait_until(lambda: followed.read_text().strip(), what="events follower connected")
            ok(farm, "restart", "ET-A-0")
            wait_until(lambda: any(json.loads(line).get("event") == "running"
                                   for line in followed.read_text().splitlines() if line.strip()),
                       what="the restart in the followed events")
        finally:
            follower.terminate()
            follower.wait(10)
    kinds = [(e["event"], e["exec_id"]) for e in map(json.loads, followed.read_text().splitlines()[1:])]
    assert kinds[:2] == [("stopping", "ET-A-0"), ("stopped", "ET-A-0")] and ("running", "ET-A-0") in kinds
    assert farm.stop() == 0


def _alive(pids: set[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def test_start_of_an_exited_instance_waits_for_its_leftovers(farm: Farm) -> None:
    """`start` right after an exit must not run a second copy next to what the old run left behind."""
    farm.write({"L": {**farm.program("crash-leaving"), "count": 1, "restart": "never", "stop_timeout": 2}})
    farm.start()
    farm.wait_log("ET-L-0: crashed")
    leftovers = {p.pid for p in marked_processes(farm.mark)}
    assert len(leftovers) == 2, "a child and a setsid grandchild, both ignoring SIGTERM"
    client = api(farm)
    assert client.call("POST", "/v1/start", {"target": "ET-L-0", "wait": False})[0] == 200

    def new_pid() -> int | None:
        rows = client.call("GET", "/v1/status?target=ET-L-0")[1]["instances"]
        return rows[0]["pid"]
    wait_until(new_pid, timeout=10, interval=0.005, what="the new run")
    assert not _alive(leftovers), "the old run's leftovers were still alive when the new run started"
    assert farm.daemon.poll() is None
    assert farm.stop() == 0


def test_start_all_during_a_scale_down_does_not_revive_the_removed_instances(farm: Farm) -> None:
    farm.write({"A": {**farm.program("ignore-term"), "count": 3, "stop_timeout": 1}})
    farm.start(wait_instances=3)
    farm.wait_started(3)
    ok(farm, "scale", "A", "1")  # take stop_timeout to go
    assert set(states(farm)) == {"ET-A-0", "ET-A-1", "ET-A-2"}
    out = ok(farm, "start", "all")
    assert "ET-A-1" not in out and "ET-A-2" not in out, out
    ok(farm, "restart", "all")
    wait_until(lambda: set(states(farm)) == {"ET-A-0"}, what="only ET-A-0 left in the farm")
    assert set(farm.instances()) == {"ET-A-0"}
    assert farm.stop() == 0


def test_start_while_an_instance_is_still_stopping_brings_it_back(farm: Farm) -> None:
    farm.write({"A": {**farm.program("ignore-term"), "count": 1, "stop_timeout": 1}})
    farm.start(wait_instances=1)
    farm.wait_started(1)
    ok(farm, "stop", "ET-A-0", "--no-wait")
    assert states(farm)["ET-A-0"] == "stopping"
    assert "started: ET-A-0" in ok(farm, "start", "ET-A-0", "--timeout", "8")
    assert states(farm)["ET-A-0"] == "running"
    assert farm.stop() == 0
