"""The executor toolkit (exec_supervisor.executor) and the example executors.

Real executor scripts run as subprocesses against a real DevService on
127.0.0.1. Nothing is mocked; waits poll a condition with a deadline.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from exec_supervisor.devservice import DevService
from exec_supervisor.executor import Executor, ServiceAuthError, ServiceError

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "executors" / "et_hello_world.py"
SEED_STYLE = REPO / "executors" / "et_seed_style.py"


# --------------------------------------------------------------------------- helpers


class Proc:
    """A running executor with its output collected line by line (stdout and stderr apart)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ET_")}
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace",
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._eof = 0  # streams at end of file: the process is gone, expect() stops waiting
        self._readers = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _pump(self, stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof += 1
            self._cond.notify_all()

    def expect(self, pattern: str, timeout: float = 15, stream: str = "out") -> str:
        sink = self.out if stream == "out" else self.err
        rx = re.compile(pattern)
        with self._cond:
            found: list[str] = []

            def seen() -> bool:
                found[:] = [line for line in sink if rx.search(line)]
                return bool(found) or self._eof == 2

            if not self._cond.wait_for(seen, timeout=timeout) or not found:
                raise AssertionError(f"no {stream} line matching {pattern!r}; out={self.out} err={self.err}")
            return found[0]

    def wait(self, timeout: float = 15) -> int:
        code = self.popen.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=5)
        return code

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def svc() -> Iterator[DevService]:
    service = DevService().start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def down_url() -> Iterator[str]:
    """The URL of a service that is not running (a port we just had and gave back)."""
    service = DevService().start()
    service.stop()
    yield service.url


def run_script(tmp_path: Path, procs: list[Proc], body: str, *args: str,
               env: dict[str, str] | None = None, name: str = "et_test.py") -> Proc:
    script = tmp_path / name
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    proc = Proc([sys.executable, str(script), *args], cwd=tmp_path, env=env)
    procs.append(proc)
    return proc


def messages(svc: DevService) -> list[str]:
    return svc.messages()


# --------------------------------------------------------------------------- identity


def test_identity_from_command_line_env_and_extra_options(monkeypatch: pytest.MonkeyPatch) -> None:
    et = Executor("Demo", argv=["--service-host", "http://10.0.0.1:8083", "--id", "7"], install_signals=False)
    assert et.service_host == "http://10.0.0.1:8083/"  # the trailing slash is added
    assert (et.id, et.exec_id) == (7, "ET-Demo-7")

    monkeypatch.setenv("ET_SERVICE_HOST", "http://svc.example:9000/")
    monkeypatch.setenv("ET_ID", "12")
    et = Executor("Demo", argv=[], install_signals=False)
    assert (et.service_host, et.exec_id) == ("http://svc.example:9000/", "ET-Demo-12")
    et = Executor("Demo", argv=["--id", "3"], install_signals=False)  # the command line wins
    assert et.exec_id == "ET-Demo-3"

    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="small")
    et = Executor("Demo", argv=["--model", "big", "--id", "1"], parser=parser, install_signals=False)
    assert et.args.model == "big" and et.exec_id == "ET-Demo-1"

    et = Executor("Demo", argv=["--id", "2", "--extra", "x"], known_only=True, install_signals=False)
    assert et.extra_argv == ["--extra", "x"]
    with pytest.raises(SystemExit) as exc:  # like the seed's argparse: unknown options exit 2
        Executor("Demo", argv=["--extra"], install_signals=False)
    assert exc.value.code == 2

    monkeypatch.delenv("ET_SERVICE_HOST")
    monkeypatch.delenv("ET_ID")
    et = Executor("Demo", argv=[], install_signals=False)
    assert (et.service_host, et.exec_id) == ("http://127.0.0.1:8083/", "ET-Demo-0")


# --------------------------------------------------------------------------- service_request


def toolkit(svc_url: str, **kw: object) -> Executor:
    kw.setdefault("backoff_initial", 0.02)
    kw.setdefault("backoff_max", 0.2)
    return Executor("Req", argv=["--service-host", svc_url], install_signals=False, **kw)  # type: ignore[arg-type]


def test_service_request_retries_5xx_and_429_then_succeeds(svc: DevService) -> None:
    et = toolkit(svc.url)
    svc.fail_count, svc.fail_status = 3, 503
    r = et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "after 503s"})
    assert r.status_code == 200 and r.json() == {}
    assert svc.requests_seen == 4 and svc.messages() == ["after 503s"]

    svc.fail_count, svc.fail_status = 2, 429
    et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "after 429s"})
    assert svc.requests_seen == 7

    svc.fail_count, svc.fail_status = 1, 500
    with pytest.raises(ServiceError) as exc:  # retry=False: one attempt only
        et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "x"}, retry=False)
    assert exc.value.status == 500

    svc.fail_status = 502
    with pytest.raises(ServiceError) as exc:
        et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "x"}, max_attempts=3)
    assert exc.value.status == 502 and svc.requests_seen == 8 + 3
    svc.fail_status = None


def test_service_request_does_not_retry_permanent_errors(svc: DevService) -> None:
    et = toolkit(svc.url)
    with pytest.raises(ServiceError) as exc:
        et.service_request("POST", "api/bases/logs/", {"level": "fatal", "message": "x"})
    assert exc.value.status == 422 and "422" in str(exc.value)
    assert svc.requests_seen == 1


def test_backoff_is_exponential_capped_and_jittered() -> None:
    et = Executor("B", argv=[], install_signals=False, backoff_initial=0.5, backoff_max=30)
    for attempt in range(40):
        step = min(30.0, 0.5 * 2**attempt)
        values = {et._backoff(attempt) for _ in range(20)}
        assert all(step / 2 <= v <= step for v in values)
        assert len(values) > 1  # jitter: a farm does not retry in lockstep


def test_service_request_backoff_timing(down_url: str) -> None:
    et = toolkit(down_url, backoff_initial=0.1, backoff_max=0.2)
    started = time.monotonic()
    with pytest.raises(ServiceError, match="unreachable"):
        et.service_request("GET", "api/", max_attempts=4)
    elapsed = time.monotonic() - started
    # waits: 0.05-0.1, 0.1-0.2, then capped 0.1-0.2
    assert 0.25 <= elapsed < 3.0


def test_read_timeout_then_retry_succeeds(svc: DevService) -> None:
    et = toolkit(svc.url, read_timeout=0.2)
    svc.delay = 5
    started = time.monotonic()
    with pytest.raises(ServiceError, match="timed out"):
        et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "slow"}, retry=False)
    assert time.monotonic() - started < 2

    # With retries, a service that recovers is reached.
    def recover() -> None:
        deadline = time.monotonic() + 10
        while svc.requests_seen < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # poll for two timed-out attempts
        svc.delay = 0

    t = threading.Thread(target=recover)
    t.start()
    r = et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "eventually"})
    t.join()
    assert r.status_code == 200
    assert "eventually" in svc.messages()


def test_stop_flag_ends_retries(svc: DevService) -> None:
    et = toolkit(svc.url, backoff_initial=20, backoff_max=20)
    svc.fail_status = 503

    def stop_soon() -> None:
        deadline = time.monotonic() + 10
        while svc.requests_seen < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        et.stop()

    t = threading.Thread(target=stop_soon)
    t.start()
    started = time.monotonic()
    with pytest.raises(ServiceError, match="stopping"):
        et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "x"})
    assert time.monotonic() - started < 5  # not the 10-20 s backoff
    t.join()
    assert et.stopped and et.wait(100) is True  # wait() returns at once when stopped


def test_401_hint_and_token_header(svc: DevService, monkeypatch: pytest.MonkeyPatch) -> None:
    svc.token, svc.require_auth = "tok-SECRET-1", True
    et = toolkit(svc.url)
    with pytest.raises(ServiceAuthError) as exc:
        et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "x"})
    text = str(exc.value)
    assert exc.value.status == 401 and "未认证" in text
    assert "token-exempt IP networks" in text and "127.0.0.1" in text and "ET_SERVICE_TOKEN" in text
    assert svc.requests_seen == 1  # a 401 is not retried

    monkeypatch.setenv("ET_SERVICE_TOKEN", "wrong-SECRET")
    et = toolkit(svc.url)
    with pytest.raises(ServiceAuthError) as exc:
        et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "x"})
    assert "rejected the token" in str(exc.value) and "SECRET" not in str(exc.value)

    monkeypatch.setenv("ET_SERVICE_TOKEN", "tok-SECRET-1")
    et = toolkit(svc.url)
    assert et.service_request("POST", "api/bases/logs/", {"level": "info", "message": "ok"}).status_code == 200
    assert svc.auth_headers[-1] == "Bearer tok-SECRET-1"


# --------------------------------------------------------------------------- log() in real executors

LOOP_SCRIPT = """
    import argparse
    from exec_supervisor.executor import Executor
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", type=int, default=1000)  # an option of the executor's own
    et = Executor("Loop", parser=parser, backoff_initial=0.05, backoff_max=0.2)
    et.queue_size = et.args.queue
    for i in range(30):
        et.log("info", f"msg-{i}")
    print("logged", flush=True)
    n = 0

    @et.run
    def work():
        global n
        n += 1
        print(f"working {n}", flush=True)
        et.wait(0.05)
"""


def test_log_prints_like_the_seed_and_delivers(tmp_path: Path, procs: list[Proc], svc: DevService) -> None:
    p = run_script(tmp_path, procs, LOOP_SCRIPT, "--service-host", svc.url, "--id", "5", "--queue", "100")
    p.expect("^logged$")
    assert p.out[:2] == ["[info] ET-Loop-5: msg-0", "[info] ET-Loop-5: msg-1"]
    assert svc.wait_for(lambda e: len(e) >= 30)
    assert svc.messages()[:30] == [f"ET-Loop-5: msg-{i}" for i in range(30)]
    assert {e["level"] for e in svc.entries[:30]} == {"info"}
    p.signal(signal.SIGTERM)
    assert p.wait() == 0


def test_queue_while_service_down_bound_holds_and_backlog_arrives(
    tmp_path: Path, procs: list[Proc], svc: DevService
) -> None:
    svc.stop()  # down before the executor starts
    p = run_script(tmp_path, procs, LOOP_SCRIPT, "--service-host", svc.url, "--id", "1", "--queue", "10")
    p.expect("^logged$")
    p.expect("^working 5$")  # log() did not block: the work goes on with the service down
    p.expect("log queue full", stream="err")
    assert p.popen.poll() is None

    svc.start()
    assert svc.wait_for(lambda e: any(m["message"].endswith("msg-29") for m in e), timeout=15)
    got = [m for m in svc.messages() if "msg-" in m]
    # At most the queue (10) plus the one message in flight when the service went away.
    assert len(got) <= 11
    assert got[-10:] == [f"ET-Loop-1: msg-{i}" for i in range(20, 30)]  # newest kept, in order
    [warning] = [e for e in svc.entries if e["level"] == "warning"]
    dropped = int(re.search(r"(\d+) log message\(s\) dropped", warning["message"]).group(1))  # type: ignore[union-attr]
    assert dropped + len(got) == 30
    p.signal(signal.SIGTERM)
    assert p.wait() == 0


def test_shutdown_flush_delivers_backlog(tmp_path: Path, procs: list[Proc], svc: DevService) -> None:
    svc.delay = 0.02  # a little slow: the script exits long before the sender is done
    p = run_script(tmp_path, procs, """
        from exec_supervisor.executor import Executor
        et = Executor("Flush")
        for i in range(25):
            et.log("debug", f"m{i}")
        print("exiting", flush=True)
    """, "--service-host", svc.url)
    assert p.wait() == 0
    assert svc.messages() == [f"ET-Flush-0: m{i}" for i in range(25)]


def test_shutdown_flush_is_bounded_when_service_hangs(tmp_path: Path, procs: list[Proc], svc: DevService) -> None:
    svc.delay = 60  # accepts connections, never answers
    started = time.monotonic()
    p = run_script(tmp_path, procs, """
        from exec_supervisor.executor import Executor
        et = Executor("Hang", flush_timeout=1.0)
        for i in range(5):
            et.log("info", f"m{i}")
    """, "--service-host", svc.url)
    assert p.wait(timeout=15) == 0
    assert time.monotonic() - started < 6
    assert any(re.search(r"\d log message\(s\) not delivered", line) for line in p.err), p.err


def test_sigterm_during_wait_exits_promptly_with_0(tmp_path: Path, procs: list[Proc], svc: DevService) -> None:
    p = run_script(tmp_path, procs, """
        from exec_supervisor.executor import Executor
        et = Executor("Waiter")
        et.log("info", "ready")

        @et.run
        def work():
            et.wait(360)
    """, "--service-host", svc.url, "--id", "2")
    assert svc.wait_for(lambda e: "ET-Waiter-2: ready" in [m["message"] for m in e])
    started = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0
    assert time.monotonic() - started < 3  # promptly, not after the 360 s wait
    assert "ET-Waiter-2: stopping (SIGTERM)" in svc.messages()  # flushed before exit


def test_sigint_stops_cleanly_too(tmp_path: Path, procs: list[Proc], svc: DevService) -> None:
    p = run_script(tmp_path, procs, """
        from exec_supervisor.executor import Executor
        et = Executor("Int")
        print("up", flush=True)
        et.run(lambda: et.wait(360))
    """, "--service-host", svc.url)
    p.expect("^up$")
    p.signal(signal.SIGINT)
    assert p.wait(timeout=10) == 0


def test_unhandled_exception_exits_nonzero_with_traceback_logged(
    tmp_path: Path, procs: list[Proc], svc: DevService
) -> None:
    p = run_script(tmp_path, procs, """
        from exec_supervisor.executor import Executor
        et = Executor("Boom")

        def step(n):
            if n == 2:
                raise RuntimeError("boom at step 2")

        count = [0]

        @et.run
        def work():
            count[0] += 1
            step(count[0])
    """, "--service-host", svc.url, "--id", "9")
    assert p.wait() == 1
    [error] = [e for e in svc.entries if e["level"] == "error"]
    assert error["message"].startswith("ET-Boom-9: unhandled exception, exiting:\nTraceback (most recent call last):")
    assert 'in step' in error["message"] and error["message"].endswith("RuntimeError: boom at step 2")
    assert any("RuntimeError: boom at step 2" in line for line in p.out)


def test_log_sender_401_hint_once_and_token_from_env(tmp_path: Path, procs: list[Proc]) -> None:
    with DevService(token="tok-SECRET-2", exempt=False) as svc:
        body = """
            from exec_supervisor.executor import Executor
            et = Executor("Auth", backoff_initial=0.05, backoff_max=0.1, flush_timeout=0.5)
            for i in range(3):
                et.log("info", f"m{i}")
            print("logged", flush=True)
            et.run(lambda: et.wait(360))
        """
        p = run_script(tmp_path, procs, body, "--service-host", svc.url)
        p.expect("401 Unauthorized", stream="err")
        p.expect("^logged$")
        deadline = time.monotonic() + 10
        while svc.requests_seen < 5 and time.monotonic() < deadline:
            time.sleep(0.01)  # poll: the sender keeps retrying (slowly) with the message kept
        p.signal(signal.SIGTERM)
        assert p.wait() == 0
        hints = [line for line in p.err if "401 Unauthorized" in line]
        assert len(hints) == 1, p.err  # one clear error, not one per retry
        assert "token-exempt IP networks" in hints[0] and "127.0.0.1" in hints[0]
        assert svc.entries == []

        p = run_script(tmp_path, procs, body, "--service-host", svc.url,
                       env={"ET_SERVICE_TOKEN": "tok-SECRET-2"}, name="et_tok.py")
        assert svc.wait_for(lambda e: len(e) >= 3)
        p.signal(signal.SIGTERM)
        assert p.wait() == 0
        assert set(svc.auth_headers[-3:]) == {"Bearer tok-SECRET-2"}
        assert not any("SECRET" in line for line in p.out + p.err)


def test_oversized_message_is_capped_and_refused_message_skipped(svc: DevService) -> None:
    et = Executor("Cap", argv=["--service-host", svc.url], install_signals=False, max_message_chars=1000)
    et.log("info", "x" * 100_000)
    assert et.flush(timeout=10)
    [entry] = svc.entries
    assert len(entry["message"]) < 1100 and entry["message"].endswith("characters cut]")
    with pytest.raises(ValueError):
        et.log("fatal", "not a level")
    et.log("INFO", "case is forgiven")  # lowered before sending: the service is case-sensitive
    assert et.flush(timeout=10)
    assert svc.entries[-1]["level"] == "info"


def test_toolkit_works_copied_alone_with_module_level_shortcuts(
    tmp_path: Path, procs: list[Proc], svc: DevService
) -> None:
    # An executor project may just copy the one file: it must not need the rest of the package.
    (tmp_path / "et_toolkit.py").write_text((REPO / "exec_supervisor" / "executor.py").read_text("utf-8"), "utf-8")
    p = run_script(tmp_path, procs, """
        import sys
        import et_toolkit as et
        et.Executor("Solo")
        assert not [m for m in sys.modules if m.startswith("exec_supervisor")], "package imported"
        et.log("info", "alone")
        et.run(lambda: et.wait(360))
    """, "--service-host", svc.url, "--id", "6")
    assert svc.wait_for(lambda e: "ET-Solo-6: alone" in [m["message"] for m in e])
    p.signal(signal.SIGTERM)
    assert p.wait() == 0


# --------------------------------------------------------------------------- the example executors


def test_hello_world_on_the_toolkit(tmp_path: Path, procs: list[Proc], svc: DevService) -> None:
    p = Proc([sys.executable, str(HELLO), "--service-host", svc.url, "--id", "3"], cwd=tmp_path)
    procs.append(p)
    line = p.expect(r"^\[debug\] ET-HelloWorld-3: 已启动 \S+$")
    ip = line.rsplit(" ", 1)[1]
    assert svc.wait_for(lambda e: f"ET-HelloWorld-3: 已启动 {ip}" in [m["message"] for m in e])
    assert svc.entries[0]["level"] == "debug"
    started = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.wait() == 0
    assert time.monotonic() - started < 3


def test_hello_world_survives_an_unreachable_service(tmp_path: Path, procs: list[Proc], down_url: str) -> None:
    p = Proc([sys.executable, str(HELLO), "--service-host", down_url, "--id", "0"], cwd=tmp_path)
    procs.append(p)
    p.expect(r"^\[debug\] ET-HelloWorld-0: 已启动 ")
    p.expect("log service problem", stream="err")
    assert p.popen.poll() is None
    p.signal(signal.SIGTERM)
    assert p.wait() == 0


def test_hello_world_rejects_unknown_options_like_the_seed(tmp_path: Path, procs: list[Proc]) -> None:
    p = Proc([sys.executable, str(HELLO), "--id", "0", "--bogus"], cwd=tmp_path)
    procs.append(p)
    assert p.wait() == 2


def test_seed_style_executor(tmp_path: Path, procs: list[Proc], svc: DevService) -> None:
    p = Proc([sys.executable, str(SEED_STYLE), "--service-host", svc.url, "--id", "4"], cwd=tmp_path)
    procs.append(p)
    p.expect(r"^\[debug\] ET-SeedStyle-4: 已启动 \S+$")
    assert svc.wait_for(lambda e: any(m["message"].startswith("ET-SeedStyle-4: 已启动") for m in e))
    p.signal(signal.SIGTERM)
    assert p.wait() == 0


def test_seed_style_executor_offline_and_401(tmp_path: Path, procs: list[Proc], down_url: str) -> None:
    p = Proc([sys.executable, str(SEED_STYLE), "--service-host", down_url, "--id", "0"], cwd=tmp_path)
    procs.append(p)
    p.expect(r"^\[debug\] ET-SeedStyle-0: 已启动")
    p.expect("未知服务或网络异常")
    p.signal(signal.SIGTERM)  # also mid-retry: exits at once
    assert p.wait(timeout=5) == 0

    with DevService(token="t", exempt=False) as svc:
        p = Proc([sys.executable, str(SEED_STYLE), "--service-host", svc.url, "--id", "1"], cwd=tmp_path)
        procs.append(p)
        line = p.expect("401")
        assert "令牌豁免" in line and svc.requests_seen == 1  # the hint, and no pointless retries
        assert p.popen.poll() is None
        p.signal(signal.SIGTERM)
        assert p.wait() == 0


def test_log_hands_lines_to_the_supervisor_socket_and_posts_directly_when_it_is_gone(
        tmp_path: Path, svc: DevService, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import socket as socket_mod

    address = str(tmp_path / "log.sock")
    daemon_side = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
    daemon_side.bind(address)
    daemon_side.settimeout(5)
    monkeypatch.setenv("ET_LOG_SOCKET", address)
    et = Executor("Sock", argv=["--service-host", svc.url, "--id", "4"], install_signals=False)
    try:
        et.log("warning", "to the supervisor")
        assert json.loads(daemon_side.recv(65536)) == {"level": "warning", "message": "ET-Sock-4: to the supervisor"}
        assert et.handed_over == 1 and et.pending == 0 and svc.entries == []
        # A full queue makes log() wait a moment at most, then post directly: never a block.
        started = time.monotonic()
        for k in range(1000):
            et.log("debug", f"flood {k}")
        assert time.monotonic() - started < 5  # one 50 ms wait per second of fullness, at most
        assert et.handed_over < 1001
        assert svc.wait_for(lambda es: any("flood" in e["message"] for e in es), 10)  # the overflow, posted
        daemon_side.close()
        os.unlink(address)  # the supervisor is gone: from now on the executor posts itself
        et.log("info", "posted myself")
        assert svc.wait_for(lambda es: any(e["message"] == "ET-Sock-4: posted myself" for e in es), 10)
    finally:
        et.close(1.0)
