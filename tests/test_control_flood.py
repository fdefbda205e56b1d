"""Hostile clients on the control socket: slow, idle, many, or deeply nested. Real daemon, real socket.

An operator's command must get through whatever else is connected, and no request may cost
more than a 4xx answer.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from typing import Any

from conftest import Farm, wait_until
from exec_supervisor.control.client import UnixHTTPConnection
from test_control import cli, raw

SLEEP = shutil.which("sleep")


def sleeper(**extra: Any) -> dict[str, Any]:
    return {"command": [SLEEP, "10000"], "args": [], **extra}


def connect(farm: Farm) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(farm.state_dir / "control.sock"))  # blocking: waits for room in the listen backlog
    sock.settimeout(10)
    return sock


def closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before closing, or None while it keeps the connection open."""
    sock.setblocking(False)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except BlockingIOError:
        return None
    except ConnectionError:
        return data


def test_status_gets_through_a_flood_of_slow_and_idle_connections(farm: Farm) -> None:
    # 128 connections sending a byte a second (or idle ones) made every status, stop and
    # shutdown answer 503: 0 of 10 status calls got through.
    farm.write({"A": sleeper(count=1)})
    farm.start(wait_instances=1)
    farm.wait_log("ET-A-0: running")  # status exits 0 (not 4: a desired instance not running yet)
    slow = [connect(farm) for _ in range(140)]
    for sock in slow:
        sock.sendall(b"G")
    idle = [connect(farm) for _ in range(140)]
    stop = threading.Event()

    def dribble() -> None:  # one more byte of the head to every slow connection, twice a second
        while not stop.wait(0.5):
            for sock in slow:
                try:
                    sock.send(b"E")
                except OSError:
                    pass

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    try:
        answers = []
        for _ in range(10):
            result = cli(farm, "status", "--json", timeout=30)
            answers.append(result.returncode)
            assert "Traceback" not in result.stderr
            if result.returncode == 0:
                assert json.loads(result.stdout)["supervisor"]["running"] == 1
            # more flood between the calls: the slots stay contested
            for _ in range(20):
                idle.append(connect(farm))
        assert answers == [0] * 10, answers
    finally:
        stop.set()
        dribbler.join()
        for sock in slow + idle:
            sock.close()
    code, data = raw(farm, "GET", "/v1/health")
    assert code == 200 and data["ok"]


def test_a_slow_request_head_is_cut_off_at_its_deadline(farm: Farm) -> None:
    # Each read had its own 30 s timeout: a byte every few seconds kept a connection forever.
    farm.write({"A": sleeper(count=1)})
    farm.start(wait_instances=1)
    slow, silent = connect(farm), connect(farm)
    started = time.monotonic()
    head = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n"
    answer: list[bytes] = []

    def dribbled_and_closed() -> bool:
        index = int((time.monotonic() - started) / 0.5)
        if index < len(head):
            try:
                slow.send(head[index:index + 1])
            except OSError:
                pass
        data = closed_by_server(slow)
        if data is not None:
            answer.append(data)
        return data is not None

    wait_until(dribbled_and_closed, 15, interval=0.5, what="the server to close a head that never completes")
    assert b"408" in answer[0].split(b"\r\n", 1)[0], answer
    wait_until(lambda: closed_by_server(silent) is not None, 15, interval=0.2,
               what="the server to close a connection that sends nothing")
    assert time.monotonic() - started < 15
    slow.close()
    silent.close()
    # a kept-alive connection may idle between requests (past the head deadline), and is served again
    connection = UnixHTTPConnection(str(farm.state_dir / "control.sock"), timeout=10)
    for pause in (0, 6):
        time.sleep(pause)
        connection.request("GET", "/v1/health")
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["ok"]
    connection.close()


def test_deeply_nested_json_is_a_400(farm: Farm) -> None:
    # json.loads raised RecursionError: 500 and a traceback in the daemon's log.
    farm.write({"A": sleeper(count=1)})
    farm.start(wait_instances=1)
    for endpoint in ("/v1/scale", "/v1/start", "/v1/stop", "/v1/restart", "/v1/reload"):
        for body in (b"[" * 30000 + b"]" * 30000, b'{"scale": ' + b"[" * 25000 + b"]" * 25000 + b"}",
                     b'{"target": ' + b'{"a":' * 8000 + b"1" + b"}" * 8000 + b"}",
                     b'{"target": ' + b"[" * 20 + b"]" * 20 + b"}"):
            code, data = raw(farm, "POST", endpoint, body)
            assert code == 400, (endpoint, code, data)
            assert "nested" in data["error"] or "JSON" in data["error"], data
    assert "Traceback" not in farm.log()
    code, data = raw(farm, "GET", "/v1/health")
    assert code == 200
    assert len(farm.instances()) == 1
