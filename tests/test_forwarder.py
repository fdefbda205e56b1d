"""The event forwarder against a real HTTP stand-in of the service (DevService on 127.0.0.1).

No mocks and no sleeps as waits: every wait is on a condition with a deadline.
Timings are shrunk through the forwarder's keyword arguments so the suite stays fast.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from exec_supervisor import config as config_mod
from exec_supervisor.devservice import DevService
from exec_supervisor.events import Event
from exec_supervisor.events.forwarder import DEAD_LETTER_FILE, EventForwarder

FAST = dict(
    backoff_initial=0.02,
    backoff_max=0.2,
    probe_interval=0.1,
    slow_retry=0.2,
    connect_timeout=1.0,
    read_timeout=1.0,
    flush_interval=0.05,
    notice_interval=0.0,
    recovery_notice_after=0.0,
)
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)
    return value


def make_config(tmp_path: Path, host: str, auth: dict[str, Any] | None = None, **events: Any) -> Any:
    path = tmp_path / "farm.yaml"
    path.write_text(yaml.safe_dump({
        "service": {"host": host, **({"auth": auth} if auth else {})},
        "supervisor": {"name": "farm-t", "state_dir": "state"},
        "events": {"min_level": "debug", **events},
        "executors": {"Dummy": {"command": ["{python}", "-c", "pass"], "ids": 0}},
    }))
    return config_mod.load(path)


class Harness:
    """A forwarder whose publish() feeds straight back into its sink, like the daemon's bus."""

    def __init__(self, config: Any, **kwargs: Any) -> None:
        self.published: list[Event] = []
        self.fw = EventForwarder(config, self.publish, **{**FAST, **kwargs})

    def publish(self, event: Event) -> None:
        self.published.append(event)
        self.fw.sink(event)


@pytest.fixture
def svc() -> Iterator[DevService]:
    service = DevService().start()
    yield service
    service.stop()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(config: Any, **kwargs: Any) -> Harness:
        made.append(Harness(config, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.fw.close()


def crash(i: int, **extra: Any) -> Event:
    fields = dict(exec_id=f"ET-Dummy-{i}", type="Dummy", id=i, pid=1000 + i, exit_code=1, restarts=i,
                  runtime=0.4, restart_in=2.0, output="Traceback (most recent call last):\nValueError: boom")
    fields.update(extra)
    return Event("crashed", "error", "farm-t", **fields)


def info(i: int) -> Event:
    return Event("running", "info", "farm-t", exec_id=f"ET-Dummy-{i}", type="Dummy", id=i, pid=1000 + i)


def drained(h: Harness) -> None:
    wait_until(lambda: h.fw.backlog()["count"] == 0, what="the spool to drain")


def ours(entries: list[dict[str, Any]], kind: str | None = None) -> list[dict[str, Any]]:
    return [e for e in entries if kind is None or e.get("event") == kind]


def assert_in_order_no_gap(entries: list[dict[str, Any]], first: int = 1) -> list[int]:
    seqs = [e["seq"] for e in entries]
    assert seqs == list(range(first, first + len(seqs))), seqs
    return seqs


# --------------------------------------------------------------------------- payload


def test_every_payload_field(tmp_path: Path, svc: DevService, harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url))
    h.fw.start()
    h.fw.sink(crash(3, time=1795861202.1234))
    h.fw.sink(Event("crashed", "error", "farm-t", exec_id="ET-Dummy-4", type="Dummy", id=4, pid=77,
                    signal="SIGKILL", restarts=1, runtime=12.5, restart_in=None))
    h.fw.sink(Event("supervisor_started", "info", "farm-t", detail={"instances": 4, "types": 1, "pid": 9}))
    assert svc.wait_for(lambda es: len(es) >= 3, 10)
    first, killed, started = svc.entries[:3]
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1795861202.1234))
    first["message"] = re.sub(rf" \(delayed \d+ s, at {local}\)\n", "\n", first["message"])  # an old event
    assert {k: v for k, v in first.items() if not k.startswith("_")} == {
        "seq": 1, "level": "error",
        "message": "ET-Dummy-3: crashed with exit code 1 after 0.4s; restarting in 2.0s (restart 3)\n"
                   "Traceback (most recent call last):\nValueError: boom",
        "event": "crashed", "exec_id": "ET-Dummy-3", "type": "Dummy", "id": 3, "pid": 1003,
        "exit_code": 1, "signal": None, "restarts": 3, "runtime": 0.4, "restart_in": 2.0,
        "supervisor": "farm-t", "time": "2026-11-28T10:20:02.123+00:00",
    }
    assert killed["signal"] == "SIGKILL" and killed["exit_code"] is None and killed["seq"] == 2
    assert killed["message"].startswith("ET-Dummy-4: crashed: killed by SIGKILL after 12s; not restarting")
    assert started["message"] == "exec-supervisor@farm-t: started 4 instances of 1 type (pid 9)"
    assert started["exec_id"] is None and started["detail"] == {"instances": 4, "types": 1, "pid": 9}
    assert all(TIME_RE.match(e["time"]) for e in svc.entries)
    # recent() shows what went out, with its status.
    recent = h.fw.recent(2)
    assert [r["seq"] for r in recent] == [2, 3]
    wait_until(lambda: all(r["status"] == "sent" for r in h.fw.recent(3)), what="sent status")


def test_min_level_filters_before_seq_and_chinese_messages(tmp_path: Path, svc: DevService,
                                                            harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url, min_level="info", language="zh"))
    h.fw.start()
    h.fw.sink(Event("spawned", "debug", "farm-t", exec_id="ET-Dummy-0", pid=5))  # filtered: no seq used
    h.fw.sink(info(0))
    h.fw.sink(crash(0))
    assert svc.wait_for(lambda es: len(es) >= 2, 10)
    assert_in_order_no_gap(svc.entries)
    assert svc.entries[0]["message"] == "ET-Dummy-0: 已启动 运行中 (pid 1000)"
    assert svc.entries[1]["message"].startswith("ET-Dummy-0: 异常退出: 退出码 1")
    assert all(e["event"] != "spawned" for e in svc.entries)


def test_oversized_message_is_capped(tmp_path: Path, svc: DevService, harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url))
    h.fw.start()
    h.fw.sink(crash(0, output="x" * 100_000))
    assert svc.wait_for(lambda es: len(es) >= 1, 10)
    assert len(svc.entries[0]["message"]) <= 8000 and svc.entries[0]["message"].endswith("(truncated)")


# --------------------------------------------------------------------------- outages


def test_backlog_moves_within_5s_of_the_service_return_whatever_the_backoff(
        tmp_path: Path, svc: DevService, harness: Callable[..., Harness]) -> None:
    # The production probe interval, and a backoff already at a 60 s cap: only the probe can
    # notice the return in time.
    h = harness(make_config(tmp_path, svc.url), backoff_initial=60.0, backoff_max=60.0, probe_interval=3.0)
    h.fw.start()
    h.fw.sink(info(0))
    assert svc.wait_for(lambda es: len(es) == 1, 10)
    drained(h)
    port = svc.port
    svc.stop()
    down_at = time.time()
    for i in range(1, 21):
        h.fw.sink(info(i))
    wait_until(lambda: h.fw.backlog()["state"] == "retrying", what="the sender to notice the outage")
    # A few probes fail (each one a refused connect) before the service comes back.
    wait_until(lambda: time.time() - down_at > 4.0, timeout=10, what="a 4 s outage")
    svc.start()
    back_at = time.time()
    assert svc.port == port
    assert svc.wait_for(lambda es: len(es) >= 2, 10)
    moved_after = time.time() - back_at
    assert moved_after < 5.0, f"the backlog started moving {moved_after:.1f}s after the service's return"
    assert svc.wait_for(lambda es: any(e["event"] == "delivery_recovered" for e in es), 10)
    summary = ours(svc.entries, "delivery_recovered")[0]
    # The outage reported is the time delivery was impossible (first to last failed attempt):
    # at most the real downtime, and less than it by one probe interval at most.
    real = back_at - down_at
    assert real - 3.5 <= summary["detail"]["outage"] <= real + 0.5, (summary["detail"], real)
    assert summary["detail"]["cause"] == "unreachable"
    assert "log API reachable again after" in summary["message"]
    assert [e["id"] for e in svc.entries if e["event"] == "running"] == list(range(21))


def test_a_5xx_service_gets_the_capped_backoff_not_probes(tmp_path: Path, svc: DevService,
                                                          harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url), backoff_initial=0.2, backoff_max=0.4, probe_interval=0.01)
    h.fw.start()
    svc.fail_status = 503
    h.fw.sink(info(0))
    wait_until(lambda: svc.requests_seen >= 3, what="a few refused attempts")
    started, seen = time.monotonic(), svc.requests_seen
    wait_until(lambda: time.monotonic() - started > 1.0, what="a second of backoff")
    # At 0.01 s probes this would be ~100 requests; the backoff (0.2, 0.4, 0.4 s) allows a handful.
    assert svc.requests_seen - seen <= 6
    svc.fail_status = None
    assert svc.wait_for(lambda es: any(e["event"] == "delivery_recovered" for e in es), 10)
    summary = ours(svc.entries, "delivery_recovered")[0]
    assert summary["detail"]["cause"] == "errors"
    assert "after answering errors for" in summary["message"]


def test_after_401s_the_recovery_says_accepted_again_not_reachable(tmp_path: Path,
                                                                   harness: Callable[..., Harness]) -> None:
    with DevService(token="tok-right", exempt=False) as service:
        h = harness(make_config(tmp_path, service.url))
        h.fw.start()
        h.fw.sink(info(0))
        wait_until(lambda: h.fw.backlog()["state"] == "unauthorized", what="the 401")
        wait_until(lambda: service.requests_seen >= 3, what="a few refused attempts")
        service.require_auth = False  # the host was added to the exemption list
        assert service.wait_for(lambda es: any(e["event"] == "delivery_recovered" for e in es), 10)
        summary = ours(service.entries, "delivery_recovered")[0]
        assert summary["detail"]["cause"] == "refused"
        assert "accepts the supervisor's events again after refusing them for" in summary["message"]
        assert "reachable" not in summary["message"]


def test_service_down_then_back_everything_arrives_in_order(tmp_path: Path, svc: DevService,
                                                            harness: Callable[..., Harness],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exec_supervisor")
    h = harness(make_config(tmp_path, svc.url))
    h.fw.start()
    h.fw.sink(info(0))
    assert svc.wait_for(lambda es: len(es) == 1, 10)
    drained(h)  # acked too: else stopping the service may cut the answer off (and it comes twice)
    svc.stop()
    for i in range(1, 60):
        h.fw.sink(crash(i) if i % 3 == 0 else info(i))
    wait_until(lambda: h.fw.backlog()["state"] == "retrying", what="the sender to notice the outage")
    backlog = h.fw.backlog()
    assert backlog["count"] >= 59 and backlog["oldest_age"] >= 0 and "connection" in backlog["last_error"]
    svc.start()
    assert svc.wait_for(lambda es: any(e["event"] == "delivery_recovered" for e in es), 10)
    lifecycle = [e for e in svc.entries if e["event"] != "delivery_recovered"]
    assert [e["id"] for e in lifecycle] == list(range(60))
    assert_in_order_no_gap(svc.entries)  # the summary event follows with the next seq
    summary = ours(svc.entries, "delivery_recovered")[0]
    assert summary["level"] == "warning" and summary["detail"]["delayed"] == 59
    assert summary["message"].startswith("exec-supervisor@farm-t: log API reachable again after")
    warnings = [r for r in caplog.records if "cannot deliver events" in r.getMessage()]
    assert len(warnings) == 1  # one line per outage, not one per retry
    wait_until(lambda: h.fw.backlog()["count"] == 0, what="the last ack")
    assert h.fw.backlog()["last_error"] is None and h.fw.backlog()["state"] in ("ok", "idle")


def test_slow_service_and_timeouts(tmp_path: Path, svc: DevService, harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url), read_timeout=0.3)
    h.fw.start()
    svc.delay = 0.1  # slow but within the read timeout
    for i in range(5):
        h.fw.sink(info(i))
    assert svc.wait_for(lambda es: len(es) >= 5, 10)
    assert_in_order_no_gap(svc.entries)
    svc.delay = 1.0  # slower than the read timeout: the sender gives up each try and retries
    for i in range(5, 10):
        h.fw.sink(info(i))
    # Emitting never waits for the service: all five are spooled while the sender is stuck.
    assert h.fw.spool.pending_count >= 5
    wait_until(lambda: h.fw.backlog()["last_error"] and "timed out" in h.fw.backlog()["last_error"],
               what="a read timeout")
    svc.delay = 0.0
    wait_until(lambda: h.fw.backlog()["count"] == 0, what="the backlog to drain")
    # At least once: a timed-out request may have been accepted too, but nothing is missing
    # and the first arrival of each seq is in order.
    first_seen: list[int] = []
    for entry in svc.entries:
        if entry["seq"] not in first_seen:
            first_seen.append(entry["seq"])
    assert first_seen[:10] == list(range(1, 11))


def test_5xx_and_429_are_retried(tmp_path: Path, svc: DevService, harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url))
    svc.fail_status, svc.fail_count = 503, 3
    h.fw.start()
    h.fw.sink(info(0))
    assert svc.wait_for(lambda es: len(es) >= 1, 10)
    svc.fail_status, svc.fail_count = 429, 2
    h.fw.sink(info(1))
    assert svc.wait_for(lambda es: len(es) >= 2, 10)
    assert_in_order_no_gap(svc.entries[:2])
    assert h.fw.backlog()["dead_letters"] == 0


def test_backlog_survives_a_restart_of_the_forwarder(tmp_path: Path, svc: DevService,
                                                     harness: Callable[..., Harness]) -> None:
    config = make_config(tmp_path, svc.url)
    h = harness(config)
    h.fw.start()
    h.fw.sink(info(0))
    assert svc.wait_for(lambda es: len(es) == 1, 10)
    drained(h)  # acked too: else stopping the service may cut the answer off (and it comes twice)
    svc.stop()
    for i in range(1, 20):
        h.fw.sink(info(i))
    h.fw.close(timeout=0.2)  # service down: the 19 stay in the spool
    assert h.fw.backlog()["count"] == 19

    svc.start()
    again = harness(config)
    assert again.fw.backlog()["count"] == 19
    again.fw.start()
    again.fw.sink(info(20))
    assert svc.wait_for(lambda es: len(es) >= 21, 10)
    assert_in_order_no_gap(svc.entries[:21])


# --------------------------------------------------------------------------- refusals


def test_422_goes_to_dead_letters_and_later_events_still_arrive(tmp_path: Path, svc: DevService,
                                                                harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url))
    # A line the service's validation refuses (level is case-sensitive), queued like any other.
    h.fw.spool.append("info", json.dumps({"level": "INFO", "message": "ET-Dummy-0: hi"}).encode())
    h.fw.sink(info(1))
    h.fw.start()
    assert svc.wait_for(lambda es: any(e.get("event") == "events_refused" for e in es), 10)
    svc.fail_status, svc.fail_count = 422, 1  # and a refusal of a well-formed one
    h.fw.sink(info(3))
    h.fw.sink(info(4))
    assert svc.wait_for(lambda es: any(e.get("id") == 4 for e in es), 10)
    assert [e.get("id") for e in svc.entries if e["event"] == "running"] == [1, 4]
    lines = [json.loads(line) for line in (tmp_path / "state" / DEAD_LETTER_FILE).read_text().splitlines()]
    assert [d["status"] for d in lines] == [422, 422]
    assert lines[0]["payload"] == {"seq": 1, "level": "INFO", "message": "ET-Dummy-0: hi"}
    assert "Input should be" in lines[0]["reason"]
    assert lines[1]["payload"]["id"] == 3
    refused = ours(svc.entries, "events_refused")[0]
    assert refused["level"] == "warning" and DEAD_LETTER_FILE in refused["message"]
    assert h.fw.backlog()["dead_letters"] == 2


def test_401_without_auth_logs_one_clear_error_keeps_events(tmp_path: Path, harness: Callable[..., Harness],
                                                            caplog: pytest.LogCaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="exec_supervisor")
    svc = DevService(token="s3cret-static-token", exempt=False).start()
    try:
        config = make_config(tmp_path, svc.url)
        h = harness(config)
        h.fw.start()
        for i in range(5):
            h.fw.sink(info(i))
        wait_until(lambda: svc.requests_seen >= 4, what="several refused tries")
        assert svc.entries == [] and h.fw.backlog()["count"] == 5
        assert h.fw.backlog()["state"] == "unauthorized"
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors
        assert "refused the supervisor's events (401 未认证)" in errors[0]
        assert "token-exempt IP networks or hosts" in errors[0] and "127.0.0.1" in errors[0]
        assert "service.auth" in errors[0]

        # The fix, applied by a reload: a token from the environment.
        monkeypatch.setenv("LOG_API_TOKEN", "s3cret-static-token")
        h.fw.reconfigure(make_config(tmp_path, svc.url, auth={"token_env": "LOG_API_TOKEN"}))
        assert svc.wait_for(lambda es: len(es) >= 5, 10)
        assert_in_order_no_gap(svc.entries[:5])
        assert svc.auth_headers[-1] == "Bearer s3cret-static-token"
        assert "s3cret" not in caplog.text and "s3cret" not in json.dumps(h.fw.backlog())
    finally:
        svc.stop()


def test_token_file_is_reread_after_a_401(tmp_path: Path, harness: Callable[..., Harness],
                                          caplog: pytest.LogCaptureFixture) -> None:
    svc = DevService(username="ops", password="pw", exempt=False).start()
    try:
        token_file = tmp_path / "token"
        token_file.write_text(svc.issue_token() + "\n")
        h = harness(make_config(tmp_path, svc.url, auth={"token_file": "token"}))
        h.fw.start()
        h.fw.sink(info(0))
        assert svc.wait_for(lambda es: len(es) >= 1, 10)
        svc.revoke_tokens()
        token_file.write_text(svc.issue_token())  # rotated by whoever manages the token
        h.fw.sink(info(1))
        assert svc.wait_for(lambda es: len(es) >= 2, 10)
        assert_in_order_no_gap(svc.entries)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        svc.stop()


def test_username_password_login_and_renewal_after_revoke(tmp_path: Path, harness: Callable[..., Harness],
                                                          caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    svc = DevService(username="ops", password="pa55-word-xyz", exempt=False).start()
    try:
        monkeypatch.setenv("LOG_API_USER", "ops")
        monkeypatch.setenv("LOG_API_PASSWORD", "pa55-word-xyz")
        h = harness(make_config(tmp_path, svc.url, auth={"username_env": "LOG_API_USER",
                                                          "password_env": "LOG_API_PASSWORD"}))
        h.fw.start()
        h.fw.sink(info(0))
        assert svc.wait_for(lambda es: len(es) >= 1, 10)
        first_token = svc.auth_headers[-1]
        svc.revoke_tokens()  # as a key rotation on the service would
        h.fw.sink(info(1))
        assert svc.wait_for(lambda es: len(es) >= 2, 10)
        assert svc.auth_headers[-1] != first_token and svc.auth_headers[-1].startswith("Bearer ")
        assert_in_order_no_gap(svc.entries)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "pa55-word-xyz" not in caplog.text and first_token[7:] not in caplog.text
    finally:
        svc.stop()


def test_token_is_renewed_before_it_expires(tmp_path: Path, harness: Callable[..., Harness],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    svc = DevService(username="ops", password="pw", exempt=False, expires_minutes=0.02).start()  # 1.2 s
    try:
        monkeypatch.setenv("LOG_API_USER", "ops")
        monkeypatch.setenv("LOG_API_PASSWORD", "pw")
        h = harness(make_config(tmp_path, svc.url, auth={"username_env": "LOG_API_USER",
                                                          "password_env": "LOG_API_PASSWORD"}))
        h.fw.start()
        sent = 0

        def tokens_used() -> int:
            nonlocal sent
            h.fw.sink(info(sent))  # keep events flowing while the token ages
            sent += 1
            svc.wait_for(lambda es: len(es) >= sent, 5)
            return len({a for a in svc.auth_headers if a.startswith("Bearer ")}) >= 3

        wait_until(tokens_used, 10, what="two renewals")
        # Renewed ahead of expiry: every log POST carried a valid token, none was refused.
        assert len(svc.auth_headers) == len(svc.entries)
        assert h.fw.backlog()["state"] == "ok"
        assert_in_order_no_gap(svc.entries)
    finally:
        svc.stop()


def test_wrong_password_logs_once_without_the_secret(tmp_path: Path, harness: Callable[..., Harness],
                                                     caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    svc = DevService(username="ops", password="right", exempt=False).start()
    try:
        monkeypatch.setenv("LOG_API_USER", "ops")
        monkeypatch.setenv("LOG_API_PASSWORD", "wrong-pass-123")
        h = harness(make_config(tmp_path, svc.url, auth={"username_env": "LOG_API_USER",
                                                          "password_env": "LOG_API_PASSWORD"}))
        h.fw.start()
        h.fw.sink(info(0))
        wait_until(lambda: svc.requests_seen >= 3, what="repeated logins")
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "账户名或密码错误" in errors[0] and "$LOG_API_PASSWORD" in errors[0]
        assert "wrong-pass-123" not in caplog.text
        assert svc.entries == [] and h.fw.backlog()["count"] == 1
    finally:
        svc.stop()


def test_exempt_host_with_credentials_sends_without_token(tmp_path: Path, svc: DevService,
                                                          harness: Callable[..., Harness],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # An exempt address cannot get a token (401 白名单禁止访问核心模块) but may post logs.
    monkeypatch.setenv("LOG_API_USER", "ops")
    monkeypatch.setenv("LOG_API_PASSWORD", "pw")
    h = harness(make_config(tmp_path, svc.url, auth={"username_env": "LOG_API_USER",
                                                      "password_env": "LOG_API_PASSWORD"}))
    h.fw.start()
    h.fw.sink(info(0))
    assert svc.wait_for(lambda es: len(es) >= 1, 10)


def test_wrong_endpoint_keeps_events_until_reload(tmp_path: Path, svc: DevService,
                                                  harness: Callable[..., Harness],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    h = harness(make_config(tmp_path, svc.url + "wrong/"))
    h.fw.start()
    for i in range(3):
        h.fw.sink(info(i))
    wait_until(lambda: svc.requests_seen >= 3, what="404 answers")
    assert h.fw.backlog()["count"] == 3 and h.fw.backlog()["dead_letters"] == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "answered 404" in errors[0] and "service.host" in errors[0]
    h.fw.reconfigure(make_config(tmp_path, svc.url))
    assert svc.wait_for(lambda es: len(es) >= 3, 10)
    assert_in_order_no_gap(svc.entries)


def test_reconfigure_moves_to_a_new_host_and_level(tmp_path: Path, svc: DevService,
                                                   harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url))
    h.fw.start()
    h.fw.sink(info(0))
    assert svc.wait_for(lambda es: len(es) >= 1, 10)
    with DevService() as other:
        h.fw.reconfigure(make_config(tmp_path, other.url, min_level="error", language="zh"))
        h.fw.sink(info(1))  # below the new min_level
        h.fw.sink(crash(2))
        assert other.wait_for(lambda es: len(es) >= 1, 10)
        assert other.entries[0]["seq"] == 2 and "异常退出" in other.entries[0]["message"]
    assert len(svc.entries) == 1


# --------------------------------------------------------------------------- bounds


def test_spool_cap_drops_low_levels_first_and_says_so(tmp_path: Path, svc: DevService,
                                                      harness: Callable[..., Harness]) -> None:
    svc.stop()
    h = harness(make_config(tmp_path, svc.url, spool_max_bytes="64KiB"), notice_interval=0.0)
    h.fw.start()
    kinds = []
    for i in range(240):  # ~ 140 KiB of events (~600 bytes each) for a 64 KiB spool
        level = ("debug", "info", "error")[i % 3]
        kinds.append(level)
        h.fw.sink(Event("note", level, "farm-t", exec_id=f"ET-Dummy-{i}", id=i, detail={"text": "x" * 150}))
    wait_until(lambda: any(e.event == "events_dropped" for e in h.published), what="the drop warning")
    counts = h.fw.spool.counts_by_level()
    assert counts["debug"] == 0 and counts["error"] == 80  # debug first, then info, errors kept
    svc.start()
    assert svc.wait_for(lambda es: any(e.get("event") == "events_dropped" for e in es), 10)
    notes = [e for e in svc.entries if e["event"] == "note"]
    assert sum(1 for e in notes if e["level"] == "error") == 80
    warnings = ours(svc.entries, "events_dropped")
    assert len(warnings) == 1  # the warning itself does not make room by dropping more
    dropped = warnings[0]["detail"]["dropped"]
    delivered = {e["seq"] for e in svc.entries}
    missing = set(range(1, warnings[-1]["seq"])) - delivered
    assert len(missing) == dropped and warnings[0]["detail"]["by_level"]["debug"] == 80
    assert warnings[0]["level"] == "warning" and f"dropped {dropped} oldest events (80 debug, " in warnings[0]["message"]
    assert h.fw.backlog()["dropped"] == dropped


def test_burst_of_2000_events(tmp_path: Path, svc: DevService, harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url))
    h.fw.start()
    for i in range(2000):  # a crash storm: emitted back to back on one thread, like the event loop
        h.fw.sink(crash(i))
    assert svc.wait_for(lambda es: len(es) >= 2000, 30)
    assert [e["id"] for e in svc.entries] == list(range(2000))
    assert_in_order_no_gap(svc.entries)


def test_stop_flushes_and_late_events_are_kept(tmp_path: Path, svc: DevService,
                                               harness: Callable[..., Harness]) -> None:
    config = make_config(tmp_path, svc.url)
    h = harness(config)
    h.fw.start()
    for i in range(10):
        h.fw.sink(info(i))
    h.fw.stop(timeout=3)
    assert len(svc.entries) == 10  # stop() delivers what is pending when it can
    h.fw.sink(info(10))  # after stop: spooled (and fsynced) for the next start
    h.fw.close()
    again = harness(config)
    again.fw.start()
    assert svc.wait_for(lambda es: len(es) >= 11, 10)
    assert_in_order_no_gap(svc.entries)


@pytest.mark.parametrize("token", ["tok-secret-123\nsecond-line", "tok-secret-123\u20ac"])
def test_an_unusable_token_is_reported_without_the_secret(tmp_path: Path, svc: DevService,
                                                          harness: Callable[..., Harness],
                                                          caplog: pytest.LogCaptureFixture, token: str) -> None:
    (tmp_path / "token").write_text(token)
    h = harness(make_config(tmp_path, svc.url, auth={"token_file": "token"}))
    h.fw.start()
    h.fw.sink(info(0))
    # The service here exempts 127.0.0.1 from tokens: the event is sent without the unusable one.
    wait_until(lambda: svc.entries or h.fw.backlog().get("last_error"), what="a delivery or an error")
    text = caplog.text + json.dumps(h.fw.backlog()) + json.dumps([e.to_dict() for e in h.published], default=str)
    assert "tok-secret-123" not in text
    assert "holds characters a token cannot have (value not shown)" in caplog.text


class _ForwardProxy:
    """A plain-HTTP forward proxy on 127.0.0.1 that records what it relays."""

    def __init__(self) -> None:
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.seen: list[tuple[str, str | None]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append((self.path, self.headers.get("Proxy-Authorization")))
                target = urlsplit(self.path)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
                try:
                    upstream.request("POST", target.path, body=body,
                                     headers={"Content-Type": self.headers.get("Content-Type", "")})
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://user:s3cret@127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http_proxy_from_the_environment_and_no_proxy(tmp_path: Path, svc: DevService,
                                                      harness: Callable[..., Harness],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = _ForwardProxy()
    try:
        for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        (tmp_path / "a").mkdir()
        h = harness(make_config(tmp_path / "a", svc.url))
        h.fw.start()
        h.fw.sink(info(1))
        assert svc.wait_for(lambda es: len(es) >= 1, 10)
        path, credentials = proxy.seen[0]
        assert path == svc.url + "api/bases/logs/", "a plain-HTTP proxy gets the absolute URL"
        assert credentials == "Basic " + base64.b64encode(b"user:s3cret").decode()
        h.fw.close()

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        (tmp_path / "b").mkdir()
        h2 = harness(make_config(tmp_path / "b", svc.url))
        h2.fw.start()
        h2.fw.sink(info(2))
        assert svc.wait_for(lambda es: len(es) >= 2, 10)
        assert len(proxy.seen) == 1, "NO_PROXY sends straight to the service"
    finally:
        proxy.close()


def test_a_tls_failure_is_named_as_one_and_events_are_kept(tmp_path: Path, svc: DevService,
                                                           harness: Callable[..., Harness]) -> None:
    # https to a plain-HTTP server: the TLS handshake fails on loopback
    h = harness(make_config(tmp_path, svc.url.replace("http://", "https://")))
    h.fw.start()
    h.fw.sink(info(1))
    wait_until(lambda: h.fw.backlog()["last_error"], what="a delivery error")
    error = h.fw.backlog()["last_error"]
    assert "TLS error" in error and "not permitted" not in error, error
    assert h.fw.backlog()["count"] == 1 and not svc.entries


@pytest.mark.parametrize("language", ["en", "zh"])
def test_late_events_carry_their_original_time_in_the_message(tmp_path: Path, svc: DevService,
                                                              harness: Callable[..., Harness],
                                                              language: str) -> None:
    h = harness(make_config(tmp_path, svc.url, language=language))
    late = crash(1, time=time.time() - 12.4)  # spooled while the service was down
    h.fw.sink(late)
    h.fw.sink(info(2))
    h.fw.start()
    assert svc.wait_for(lambda es: len(es) == 2, 10)
    entries = {e["id"]: e for e in svc.entries}
    stamp = time.strftime("%H:%M:%S", time.localtime(late.time))
    first, _, rest = entries[1]["message"].partition("\n")
    note = f"（延迟 1\\d 秒, 发生于 {stamp}）" if language == "zh" else f" \\(delayed 1\\d s, at {stamp}\\)"
    assert re.search(note + "$", first), first
    assert rest.startswith("Traceback"), "the output tail stays after the first line"
    assert "delayed" not in entries[2]["message"] and "延迟" not in entries[2]["message"]
    assert TIME_RE.match(entries[1]["time"]) and entries[1]["time"] < entries[2]["time"]


# --------------------------------------------------------------------------- executors' lines


def test_executor_lines_keep_to_their_share_and_never_push_out_supervisor_events(
        tmp_path: Path, svc: DevService, harness: Callable[..., Harness]) -> None:
    h = harness(make_config(tmp_path, svc.url, spool_max_bytes="64KiB"), line_rate=1e9, line_burst=1e9)
    svc.stop()
    h.fw.start()
    for i in range(40):
        h.fw.sink(crash(i))  # ~300 bytes each: 12 KiB of the supervisor's errors
    for k in range(2000):
        assert h.fw.add_line("ET-Dummy-1", "info", f"ET-Dummy-1: line {k} " + "x" * 60)
    h.fw.add_line("ET-Dummy-2", "warning", "ET-Dummy-1: not mine")  # a wrong prefix
    backlog = h.fw.backlog()
    lines = backlog["executor_lines"]
    assert backlog["count"] == 40 and backlog["dropped"] == 0
    assert lines["bytes"] <= 32 * 1024 and lines["instances"]["ET-Dummy-1"]["dropped"] > 1000
    kept = lines["instances"]["ET-Dummy-1"]["pending"]
    assert kept + lines["instances"]["ET-Dummy-1"]["dropped"] == 2000
    svc.start()
    wait_until(lambda: h.fw.backlog()["executor_lines"]["pending"] == 0 and h.fw.backlog()["count"] == 0,
               what="everything delivered")
    posted = [e["message"] for e in svc.entries]
    crashes = [i for i, e in enumerate(svc.entries) if e.get("event") == "crashed"]
    assert len(crashes) == 40 and crashes == list(range(40))  # the supervisor's events first
    numbers = [int(m.split()[2]) for m in posted if m.startswith("ET-Dummy-1: line ")]
    assert numbers == list(range(2000 - kept, 2000))  # the newest lines, in order
    assert "ET-Dummy-2: not mine" in posted
    books = h.fw.backlog()["executor_lines"]["instances"]
    assert books["ET-Dummy-1"]["relayed"] == kept and books["ET-Dummy-2"] == {"relayed": 1, "pending": 0, "dropped": 0}
    wait_until(lambda: any(e.event == "executor_lines_dropped" and e.exec_id == "ET-Dummy-1" for e in h.published),
               what="the drop notice")


def test_executor_lines_survive_a_restart_of_the_forwarder(tmp_path: Path, svc: DevService,
                                                           harness: Callable[..., Harness]) -> None:
    config = make_config(tmp_path, svc.url)
    svc.stop()
    first = harness(config)
    first.fw.start()
    for k in range(10):
        first.fw.add_line("ET-Dummy-3", "info", f"line {k}")
    first.fw.close()
    second = harness(config)
    assert second.fw.backlog()["executor_lines"]["instances"]["ET-Dummy-3"]["pending"] == 10
    svc.start()
    second.fw.start()
    assert svc.wait_for(lambda es: len(es) >= 10, 10)
    assert [e["message"] for e in svc.entries] == [f"ET-Dummy-3: line {k}" for k in range(10)]


def test_a_late_note_names_the_day_when_not_today() -> None:
    from exec_supervisor.events.payload import build_payload, encode_payload, iso_time, mark_delayed

    then = round(time.time()) - 3 * 86400
    data = encode_payload({**build_payload(info(5), "en"), "time": iso_time(then)})
    marked = json.loads(mark_delayed(data, then + 3 * 86400))
    day = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(then))
    assert marked["message"] == f"ET-Dummy-5: running (pid 1005) (delayed 259200 s, at {day})"
    assert marked["time"] == iso_time(then)
    fresh = encode_payload(build_payload(info(6), "en"))
    assert mark_delayed(fresh, time.time()) is fresh, "an event on time is sent byte for byte as spooled"
