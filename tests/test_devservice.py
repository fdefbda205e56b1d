"""The local WeFastAPI stand-in answers like the service (../shared/wefastapi-log-api.md).

Real server on 127.0.0.1, real requests; no mocks.
"""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest
import requests

from exec_supervisor.devservice import DevService

LOG = "api/bases/logs/"
TOKEN = "api/bases/token/standard/open/"


@pytest.fixture
def svc() -> Iterator[DevService]:
    service = DevService().start()
    try:
        yield service
    finally:
        service.stop()


def post_log(service: DevService, body: object, **kw: object) -> requests.Response:
    kw.setdefault("timeout", 5)
    return requests.post(service.url + LOG, json=body, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- log API


def test_accepts_entry_keeps_extras_and_metadata(svc: DevService) -> None:
    before = time.time()
    r = post_log(svc, {"level": "info", "message": "ET-HelloWorld-0: started", "seq": 7, "event": "running"})
    assert r.status_code == 200
    assert r.json() == {}
    assert r.headers["Content-Type"] == "application/json"
    [entry] = svc.entries
    assert entry["level"] == "info" and entry["message"] == "ET-HelloWorld-0: started"
    assert entry["seq"] == 7 and entry["event"] == "running"  # ignored by the service, kept for tests
    assert entry["_client"] == "127.0.0.1"
    assert before <= entry["_received"] <= time.time()
    assert svc.url == f"http://127.0.0.1:{svc.port}/"


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_every_level_is_accepted(svc: DevService, level: str) -> None:
    assert post_log(svc, {"level": level, "message": "m"}).status_code == 200


@pytest.mark.parametrize("level", ["INFO", "Info", "fatal", "critical", "", 1, None])
def test_bad_level_is_422_like_fastapi(svc: DevService, level: object) -> None:
    r = post_log(svc, {"level": level, "message": "m"})
    assert r.status_code == 422
    [err] = r.json()["detail"]
    assert err["loc"] == ["body", "level"]
    assert err["type"] == "literal_error" and "'debug', 'info', 'warning' or 'error'" in err["msg"]
    assert svc.entries == []


def test_missing_fields_and_wrong_types_are_422(svc: DevService) -> None:
    r = post_log(svc, {"level": "info"})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "message"]]
    assert r.json()["detail"][0]["type"] == "missing"

    r = post_log(svc, {})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "level"], ["body", "message"]]

    r = post_log(svc, {"level": "info", "message": 42})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "string_type"

    r = post_log(svc, ["not", "an", "object"])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]

    r = requests.post(svc.url + LOG, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    assert svc.entries == []


def test_path_without_slash_redirects_307(svc: DevService) -> None:
    r = requests.post(svc.url + "api/bases/logs", json={"level": "info", "message": "m"},
                      allow_redirects=False, timeout=5)
    assert r.status_code == 307
    assert r.headers["Location"] == svc.url + LOG
    assert svc.entries == []
    # requests follows a 307 with the same method and body
    r = requests.post(svc.url + "api/bases/logs", json={"level": "info", "message": "m"}, timeout=5)
    assert r.status_code == 200 and [h.status_code for h in r.history] == [307]
    assert len(svc.entries) == 1


def test_unknown_path_404_and_wrong_method_405(svc: DevService) -> None:
    r = requests.get(svc.url + "api/nothing/", timeout=5)
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    r = requests.get(svc.url + LOG, timeout=5)
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}
    assert svc.requests_seen == 2


def test_unicode_and_large_message_round_trip(svc: DevService) -> None:
    big = "已启动 " + "x" * 1_000_000
    assert post_log(svc, {"level": "debug", "message": big}).status_code == 200
    assert svc.entries[0]["message"] == big


def test_keep_alive_session_and_concurrent_clients(svc: DevService) -> None:
    def worker(n: int) -> None:
        with requests.Session() as s:
            for i in range(40):
                r = s.post(svc.url + LOG, json={"level": "info", "message": f"{n}-{i}"}, timeout=5)
                assert r.status_code == 200

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(svc.entries) == 240
    for n in range(6):  # per-connection order is preserved
        mine = [m for m in svc.messages() if m.startswith(f"{n}-")]
        assert mine == [f"{n}-{i}" for i in range(40)]


def test_wait_for_wakes_on_arrival_and_times_out(svc: DevService) -> None:
    assert svc.wait_for(lambda entries: len(entries) >= 1, timeout=0.05) is False
    t = threading.Thread(target=post_log, args=(svc, {"level": "info", "message": "later"}))
    t.start()
    assert svc.wait_for(lambda entries: any(e["message"] == "later" for e in entries), timeout=10)
    t.join()


# --------------------------------------------------------------------------- authentication


def test_static_token_auth_answers_401_like_the_service() -> None:
    with DevService(token="s3cret", exempt=False) as svc:
        assert svc.require_auth
        r = post_log(svc, {"level": "info", "message": "m"})
        assert r.status_code == 401
        assert r.json() == {"detail": "未认证"}
        assert r.headers["WWW-Authenticate"] == "Bearer"

        r = post_log(svc, {"level": "info", "message": "m"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json() == {"detail": "无法验证凭据"}

        r = post_log(svc, {"level": "info", "message": "m"}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        r = post_log(svc, {"level": "info", "message": "c"}, cookies={"token_s": "s3cret"})
        assert r.status_code == 200
        assert svc.auth_headers == ["Bearer wrong", "Bearer s3cret"]

        svc.revoke_tokens()
        r = post_log(svc, {"level": "info", "message": "m"}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 401 and r.json() == {"detail": "无法验证凭据"}
        assert len(svc.entries) == 2


def test_exempt_by_default_and_auth_switchable_at_runtime(svc: DevService) -> None:
    assert not svc.require_auth
    assert post_log(svc, {"level": "info", "message": "m"}, headers={"Authorization": "Bearer junk"}).status_code == 200
    svc.require_auth = True
    assert post_log(svc, {"level": "info", "message": "m"}).status_code == 401
    good = svc.issue_token()
    assert post_log(svc, {"level": "info", "message": "m"}, headers={"Authorization": f"Bearer {good}"}).status_code == 200
    svc.require_auth = False
    assert post_log(svc, {"level": "info", "message": "m"}).status_code == 200


def test_token_route_password_form_renewal_and_expiry() -> None:
    with DevService(username="farm", password="pw", exempt=False) as svc:
        r = requests.post(svc.url + TOKEN, data={"username": "farm", "password": "nope"}, timeout=5)
        assert r.status_code == 401 and r.json() == {"detail": "账户名或密码错误"}
        r = requests.post(svc.url + TOKEN, data={"username": "farm"}, timeout=5)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "password"]

        r = requests.post(svc.url + TOKEN, data={"username": "farm", "password": "pw"}, timeout=5)
        assert r.status_code == 200
        body = r.json()
        assert body["token_type"] == "Bearer" and body["expires_minutes"] == 720
        first = body["access_token"]
        auth = {"Authorization": f"Bearer {first}"}
        assert post_log(svc, {"level": "info", "message": "m"}, headers=auth).status_code == 200

        svc.revoke_tokens()  # the renewal path: the old token stops working, a new one is minted
        assert post_log(svc, {"level": "info", "message": "m"}, headers=auth).json() == {"detail": "无法验证凭据"}
        second = requests.post(svc.url + TOKEN, data={"username": "farm", "password": "pw"}, timeout=5).json()
        assert second["access_token"] != first
        auth = {"Authorization": f"Bearer {second['access_token']}"}
        assert post_log(svc, {"level": "info", "message": "m"}, headers=auth).status_code == 200

    with DevService(username="farm", password="pw", exempt=False, expires_minutes=0) as svc:
        expired = svc.issue_token()  # valid for zero minutes: already expired
        r = post_log(svc, {"level": "info", "message": "m"}, headers={"Authorization": f"Bearer {expired}"})
        assert r.status_code == 401 and r.json() == {"detail": "无法验证凭据"}


def test_token_route_refused_to_exempt_clients() -> None:
    with DevService(username="farm", password="pw") as svc:  # exempt=True: like 127.0.0.1 on the list
        r = requests.post(svc.url + TOKEN, data={"username": "farm", "password": "pw"}, timeout=5)
        assert r.status_code == 401 and r.json() == {"detail": "白名单禁止访问核心模块"}


# --------------------------------------------------------------------------- failure modes


def test_fail_status_and_fail_count(svc: DevService) -> None:
    svc.fail_status = 503
    for _ in range(3):
        assert post_log(svc, {"level": "info", "message": "m"}).status_code == 503
    svc.fail_status = None
    assert post_log(svc, {"level": "info", "message": "ok"}).status_code == 200

    svc.fail_count = 2  # next two fail with 500 then recover
    codes = [post_log(svc, {"level": "info", "message": f"{i}"}).status_code for i in range(3)]
    assert codes == [500, 500, 200]
    assert svc.fail_count == 0

    svc.fail_status, svc.fail_count = 429, 2  # two 429s, then recovered for good
    codes = [post_log(svc, {"level": "info", "message": f"r{i}"}).status_code for i in range(4)]
    assert codes == [429, 429, 200, 200]
    assert svc.fail_status is None
    assert svc.messages() == ["ok", "2", "r2", "r3"]


def test_slow_mode_causes_client_timeouts(svc: DevService) -> None:
    svc.delay = 1.0
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        post_log(svc, {"level": "info", "message": "slow"}, timeout=(2, 0.2))
    assert time.monotonic() - started < 0.9
    svc.delay = 0.0
    # The slow request was still accepted once its delay ran out (the service does not know the client left).
    assert svc.wait_for(lambda e: len(e) == 1, timeout=10)
    assert post_log(svc, {"level": "info", "message": "fast"}).status_code == 200


def test_stop_hangs_up_slow_requests_and_restart_reuses_port(svc: DevService) -> None:
    port = svc.port
    session = requests.Session()
    assert session.post(svc.url + LOG, json={"level": "info", "message": "1"}, timeout=5).status_code == 200

    svc.delay = 30
    result: queue.Queue[object] = queue.Queue()

    def slow() -> None:
        try:
            result.put(requests.post(svc.url + LOG, json={"level": "info", "message": "lost"}, timeout=60))
        except requests.RequestException as err:
            result.put(err)

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 10
    while svc.requests_seen < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # poll for the request to be in flight
    started = time.monotonic()
    svc.stop()
    assert isinstance(result.get(timeout=10), requests.ConnectionError)
    assert time.monotonic() - started < 5
    t.join()
    svc.delay = 0

    # Down: the old keep-alive connection is closed too, new ones are refused.
    with pytest.raises(requests.ConnectionError):
        session.post(svc.url + LOG, json={"level": "info", "message": "2"}, timeout=5)

    svc.start()
    assert svc.port == port
    assert session.post(svc.url + LOG, json={"level": "info", "message": "3"}, timeout=5).status_code == 200
    assert svc.messages() == ["1", "3"]
    svc.stop()
    svc.start()  # and again, immediately
    assert post_log(svc, {"level": "info", "message": "4"}).status_code == 200
    session.close()


# --------------------------------------------------------------------------- the CLI side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_forever_prints_entries_hides_secrets_and_exits_on_sigint() -> None:
    port = _free_port()
    code = (
        "from exec_supervisor.devservice import serve_forever;"
        f"serve_forever('127.0.0.1', {port}, 'tok-SECRET', 'u', 'pw-SECRET')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, encoding="utf-8")
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        seen: list[str] = []

        def expect(pattern: str) -> str:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=deadline - time.monotonic())
                except queue.Empty:
                    break
                seen.append(line)
                if re.search(pattern, line):
                    return line
            raise AssertionError(f"no line matching {pattern!r} in {seen}")

        expect(r"Press Ctrl-C")
        url = f"http://127.0.0.1:{port}/"
        r = requests.post(url + LOG, json={"level": "info", "message": "ET-HelloWorld-0: started"},
                          headers={"Authorization": "Bearer tok-SECRET"}, timeout=5)
        assert r.status_code == 200
        line = expect(r"ET-HelloWorld-0")
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| INFO \| 127\.0\.0\.1 ET-HelloWorld-0: started", line
        ), line
        assert requests.post(url + LOG, json={"level": "info", "message": "m"}, timeout=5).status_code == 401

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        reader.join(timeout=5)
        while not lines.empty():
            seen.append(lines.get())
        assert not any("SECRET" in s for s in seen), seen
        assert not any("Traceback" in s for s in seen), seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dev_service_command_prints_entries_and_stops_on_sigint() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "exec_supervisor.cli", "dev-service", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", banner).group(1)
        answer = requests.post(url + "api/bases/logs/", json={"level": "warning", "message": "ET-X-1: hello"}, timeout=5)
        assert answer.status_code == 200
        line = ""
        while "ET-X-1: hello" not in line:
            line = proc.stdout.readline()
            assert line, "dev-service exited before printing the entry"
        assert "| WARNING | 127.0.0.1 ET-X-1: hello" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert "Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
