"""Health: readiness (READY=1), start_timeout, the watchdog, probes, max_memory, and the notify socket.

Real daemons, real executors (the examples in executors/ and tests/programs/), the real
datagram socket; events travel to the DevService log API stand-in on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Farm, wait_until
from exec_supervisor.control.client import Client
from exec_supervisor.devservice import DevService

REPO = Path(__file__).resolve().parent.parent
SLOW = REPO / "executors" / "et_slow_model.py"
HANG = REPO / "executors" / "et_hang.py"
NOTIFIER = REPO / "tests" / "programs" / "notifier.py"


@pytest.fixture
def svc() -> Iterator[DevService]:
    service = DevService().start()
    yield service
    service.stop()


def rows(farm: Farm) -> dict[str, dict[str, Any]]:
    code, data = Client(farm.state_dir / "control.sock").call("GET", "/v1/status")
    assert code == 200, data
    return {row["exec_id"]: row for row in data["instances"]}


def row(farm: Farm, exec_id: str) -> dict[str, Any]:
    return rows(farm)[exec_id]


def events(svc: DevService, kind: str, exec_id: str | None = None) -> list[dict[str, Any]]:
    return [e for e in svc.entries if e.get("event") == kind and (exec_id is None or e.get("exec_id") == exec_id)]


def notifier(mode: str, **extra: Any) -> dict[str, Any]:
    """tests/programs/notifier.py: sends what `mode` says over NOTIFY_SOCKET (see its docstring)."""
    return {"command": [sys.executable, str(NOTIFIER)], "args": [], "env": {"NOTIFY_MODE": mode}, **extra}


def forwarding(svc: DevService) -> dict[str, Any]:
    return {"service": {"host": svc.url}, "events": {"forward": True, "min_level": "debug"}}


# --------------------------------------------------------------------------- ready: notify, start_timeout


def test_ready_notify_keeps_starting_until_ready(farm: Farm, svc: DevService) -> None:
    farm.write({"Slow": {"command": [sys.executable, str(SLOW)], "count": 1, "ready": "notify",
                         "start_timeout": "30s", "env": {"ET_LOAD_SECONDS": "2"}}}, **forwarding(svc))
    farm.start(wait_instances=1)
    pid = farm.instances()["ET-Slow-0"]
    wait_until(lambda: "loading the model" in (row(farm, "ET-Slow-0")["status_text"] or ""), 15,
               what="the loading status text")
    early = row(farm, "ET-Slow-0")
    # Alive far past start_seconds (0.3 s in these tests), still starting: only READY=1 counts.
    assert early["state"] == "starting" and early["ready"] is False, early
    spawned_at = time.monotonic()
    running = wait_until(lambda: (r := row(farm, "ET-Slow-0"))["state"] == "running" and r, 20,
                         what="running after READY=1")
    assert running["ready"] is True and running["pid"] == pid
    assert running["status_text"].startswith("model loaded")
    assert svc.wait_for(lambda es: events(svc, "running", "ET-Slow-0"), 10)
    event = events(svc, "running", "ET-Slow-0")[0]
    assert event["level"] == "info" and "READY=1 after" in event["message"], event
    assert 1.5 <= event["detail"]["after"] < 20, event
    assert not events(svc, "crashed") and not events(svc, "start_timeout")
    assert svc.wait_for(lambda es: events(svc, "status_changed", "ET-Slow-0"), 10)
    assert events(svc, "status_changed")[0]["level"] == "debug"
    del spawned_at
    assert farm.stop() == 0


def test_never_ready_is_killed_at_start_timeout_and_backs_off(farm: Farm, svc: DevService) -> None:
    farm.write({"Slow": {"command": [sys.executable, str(SLOW)], "count": 1, "ready": "notify",
                         "start_timeout": "1.5s", "max_restarts": 2, "restart_window": "5m",
                         "env": {"ET_LOAD_SECONDS": "-1"}}}, **forwarding(svc))
    farm.start(wait_instances=1)
    first = farm.instances()["ET-Slow-0"]
    assert svc.wait_for(lambda es: events(svc, "start_timeout", "ET-Slow-0"), 20), farm.log()
    timeout = events(svc, "start_timeout")[0]
    assert timeout["level"] == "error" and "no READY=1 within 1.5s" in timeout["message"], timeout
    assert "loading the model" in timeout["message"]  # its last status and output lines
    # Stopped through the stop path (SIGTERM: the toolkit exits 0 at once), then backoff like a crash.
    assert svc.wait_for(lambda es: events(svc, "crashed", "ET-Slow-0"), 10), farm.log()
    crash = events(svc, "crashed")[0]
    assert crash["detail"]["cause"] == "start_timeout" and crash["restart_in"] is not None, crash
    assert "stopped for start timeout" in crash["message"]
    assert events(svc, "stopping", "ET-Slow-0")[0]["detail"]["signal"] == "SIGTERM"  # came before crashed
    second = wait_until(lambda: farm.instances().get("ET-Slow-0") not in (None, first), 10, what="a new run")
    assert second
    # Two restarts within the window (max_restarts 2) -> fatal: start timeouts count as failures.
    assert svc.wait_for(lambda es: events(svc, "fatal", "ET-Slow-0"), 30), farm.log()
    assert len(events(svc, "start_timeout")) == 3
    assert row(farm, "ET-Slow-0")["state"] == "fatal"
    assert farm.stop() == 0


# --------------------------------------------------------------------------- watchdog


def test_missed_watchdog_aborts_with_a_stack_and_restarts_same_exec_id(farm: Farm, svc: DevService) -> None:
    farm.write({"Hang": {"command": [sys.executable, str(HANG)], "count": 1, "ready": "notify",
                         "watchdog": "1s", "env": {"ET_HANG_AFTER": "1.5"}, "stop_timeout": 5}}, **forwarding(svc))
    farm.start(wait_instances=1)
    first = farm.instances()["ET-Hang-0"]
    wait_until(lambda: row(farm, "ET-Hang-0")["heartbeat"], 10, what="a first heartbeat")
    assert svc.wait_for(lambda es: events(svc, "unhealthy", "ET-Hang-0"), 20), farm.log()
    hung_at = time.time()
    unhealthy = events(svc, "unhealthy")[0]
    assert unhealthy["level"] == "error" and unhealthy["detail"]["check"] == "watchdog", unhealthy
    # Reported within watchdog + a small margin of the last heartbeat.
    silent = unhealthy["detail"]["silent"]
    assert 1.0 <= silent < 1.0 + 0.5, unhealthy
    assert "no WATCHDOG=1 for" in unhealthy["message"] and "in driver_call()" in unhealthy["message"]
    assert "entering the driver call that hangs" in unhealthy["message"]  # its last output lines
    assert svc.wait_for(lambda es: events(svc, "stopping", "ET-Hang-0"), 10)
    assert events(svc, "stopping", "ET-Hang-0")[0]["detail"]["signal"] == "SIGABRT"
    assert svc.wait_for(lambda es: events(svc, "crashed", "ET-Hang-0"), 10), farm.log()
    crash = events(svc, "crashed", "ET-Hang-0")[0]
    assert crash["signal"] == "SIGABRT" and crash["detail"]["cause"] == "watchdog", crash
    # Restarted with the same exec id, through backoff.
    again = wait_until(lambda: farm.instances().get("ET-Hang-0") not in (None, first)
                       and farm.instances()["ET-Hang-0"], 15, what="ET-Hang-0 again")
    assert again != first and hung_at
    # faulthandler (enabled by the toolkit under a watchdog) wrote every thread's stack to the log.
    log_text = (farm.log_dir / "ET-Hang-0.log").read_text(errors="replace")
    assert "Fatal Python error: Aborted" in log_text
    assert "in driver_call" in log_text and "et_hang.py" in log_text
    assert farm.stop() == 0


def test_watchdog_trigger_and_heartbeats_from_a_forked_child(farm: Farm, svc: DevService) -> None:
    # The main process never pings; a forked child does, then asks to be treated as hung.
    farm.write({"Fork": notifier("fork-ping:1.5:trigger", count=1, watchdog="1s")}, **forwarding(svc))
    farm.start(wait_instances=1)
    wait_until(lambda: row(farm, "ET-Fork-0")["heartbeat"], 10, what="a heartbeat from the child")
    # Running for longer than the 1 s watchdog on the child's heartbeats alone; the first
    # failure is the trigger, not a missed heartbeat.
    assert svc.wait_for(lambda es: events(svc, "unhealthy", "ET-Fork-0"), 20), farm.log()
    unhealthy = events(svc, "unhealthy", "ET-Fork-0")[0]
    assert unhealthy["detail"].get("trigger") is True, unhealthy
    assert "WATCHDOG=trigger" in unhealthy["message"]
    assert farm.stop() == 0


# --------------------------------------------------------------------------- the socket itself


def test_unrelated_sender_changes_nothing(farm: Farm, tmp_path: Path) -> None:
    farm.write({"Wait": notifier("status-then-sleep", count=1, ready="notify")})
    farm.start(wait_instances=1)
    wait_until(lambda: row(farm, "ET-Wait-0")["status_text"] == "waiting", 10, what="its status text")
    address = (farm.state_dir / "notify.sock")
    assert address.exists()
    # A process of no instance, on the very socket, even claiming to be the instance's pid.
    pid = farm.instances()["ET-Wait-0"]
    code = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM);"
        f"[s.sendto(m.encode(), {str(address)!r}) for m in "
        f"['READY=1', 'STATUS=hijacked', 'WATCHDOG=trigger', 'MAINPID={pid}\\nREADY=1']]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    # Its own environment says ET_EXEC_ID too: still no descendant of the daemon, still nobody.
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30,
                   env={**os.environ, "ET_EXEC_ID": "ET-Wait-0"})
    code, data = Client(farm.state_dir / "control.sock").call("GET", "/v1/status")
    wait_until(lambda: Client(farm.state_dir / "control.sock").call("GET", "/v1/status")[1]["supervisor"]
               ["health"]["notify_unknown_senders"] >= 8, 10, what="8 ignored datagrams")
    now = row(farm, "ET-Wait-0")
    assert now["state"] == "starting" and now["status_text"] == "waiting" and now["ready"] is False
    assert now["health"] == "none" and now["pid"] == pid
    assert farm.stop() == 0


def test_sdnotify_from_pypi_works_unchanged(farm: Farm) -> None:
    pytest.importorskip("sdnotify", reason="needs sdnotify: pip install -e '.[test]'")
    code = ("import sdnotify, time; n = sdnotify.SystemdNotifier(); n.notify('STATUS=via sdnotify');"
            "n.notify('READY=1'); time.sleep(1000)")
    farm.write({"Lib": {"command": [sys.executable, "-c", code], "args": [], "count": 1, "ready": "notify",
                        "start_timeout": "20s"}})
    farm.start(wait_instances=1)
    running = wait_until(lambda: (r := row(farm, "ET-Lib-0"))["state"] == "running" and r, 20, what="running")
    assert running["status_text"] == "via sdnotify" and running["ready"] is True
    assert farm.stop() == 0


# --------------------------------------------------------------------------- probes

PROBE_CHECK = ("import os, sys\n"
               "bad = os.path.exists(os.environ['PROBE_FLAG'])\n"
               "open(os.environ['PROBE_COUNT'], 'a').write('fail\\n' if bad else 'ok\\n')\n"
               "print('probe says: ' + ('broken' if bad else 'fine'))\n"
               "sys.exit(1 if bad else 0)\n")


def test_exec_probe_unhealthy_after_exactly_failures(farm: Farm, svc: DevService, tmp_path: Path) -> None:
    flag, count = tmp_path / "broken", tmp_path / "probes.txt"
    farm.write({"P": notifier("ping-then-sleep", count=1, ready="notify",
                              env={"PROBE_FLAG": str(flag), "PROBE_COUNT": str(count), "NOTIFY_MODE": "ping-then-sleep"},
                              probe={"exec": [sys.executable, "-c", PROBE_CHECK, "{exec_id}"], "every": "0.3s",
                                     "timeout": "5s", "failures": 3})}, **forwarding(svc))
    farm.start(wait_instances=1)
    first = farm.instances()["ET-P-0"]
    wait_until(lambda: count.exists() and count.read_text().count("ok") >= 2, 20, what="two good probes")
    assert row(farm, "ET-P-0")["health"] == "ok"
    flag.touch()
    wait_until(lambda: row(farm, "ET-P-0")["health"].startswith("failing"), 20, what="failing n of 3")
    assert row(farm, "ET-P-0")["health"] in ("failing 1 of 3", "failing 2 of 3")
    assert svc.wait_for(lambda es: events(svc, "unhealthy", "ET-P-0"), 20), farm.log()
    event = events(svc, "unhealthy", "ET-P-0")[0]
    assert event["detail"]["check"] == "probe" and event["detail"]["failures"] == 3, event
    assert event["detail"]["reason"] == "exit code 1" and "probe says: broken" in event["message"], event
    assert "failed 3 times in a row" in event["message"]
    flag.unlink()  # healthy again after the restart
    again = wait_until(lambda: farm.instances().get("ET-P-0") not in (None, first), 20, what="a restart")
    assert again
    lines = count.read_text().split()
    # Exactly `failures` failed probes made it unhealthy: none ran after the third.
    assert lines.count("fail") == 3, lines
    assert svc.wait_for(lambda es: events(svc, "crashed", "ET-P-0"), 10)
    assert events(svc, "crashed", "ET-P-0")[0]["detail"]["cause"] == "probe"
    assert farm.stop() == 0


def test_http_probe_unhealthy_after_exactly_failures(farm: Farm, svc: DevService) -> None:
    import http.server
    import threading

    answers: list[tuple[int, float]] = []
    healthy = threading.Event()
    healthy.set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            code = 200 if healthy.is_set() else 503
            answers.append((code, time.time()))
            body = b"fine" if code == 200 else b"database unreachable"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        farm.write({"H": notifier("ping-then-sleep", count=1, ready="notify",
                                  env={"PORT": str(port), "NOTIFY_MODE": "ping-then-sleep"},
                                  probe={"http": "http://127.0.0.1:{port}/health?id={id}", "every": "0.3s",
                                         "timeout": "2s", "failures": 2})}, **forwarding(svc))
        farm.start(wait_instances=1)
        wait_until(lambda: sum(code == 200 for code, _ in answers) >= 2, 20, what="two good probes")
        healthy.clear()
        assert svc.wait_for(lambda es: events(svc, "unhealthy", "ET-H-0"), 20), farm.log()
        event = events(svc, "unhealthy", "ET-H-0")[0]
        assert event["detail"]["reason"] == "HTTP 503 Service Unavailable", event
        assert event["detail"]["probe"] == "http://127.0.0.1:{port}/health?id={id}"  # as configured
        assert "database unreachable" in event["message"]
        # Exactly `failures` failed answers before it was declared unhealthy (the restarted
        # instance's probes may come after, and count for that run).
        # The event's time is in whole milliseconds; the next run's probes come after the stop
        # and the backoff (0.1 s) at the earliest.
        declared = datetime.fromisoformat(event["time"]).timestamp() + 0.05
        assert sum(code == 503 and at < declared for code, at in answers) == 2, (answers, declared)
        healthy.set()
        assert svc.wait_for(lambda es: events(svc, "crashed", "ET-H-0"), 10)
        assert farm.stop() == 0
    finally:
        server.shutdown()
        server.server_close()


def test_hanging_probe_is_killed_at_timeout(farm: Farm, svc: DevService) -> None:
    hang = "import time; print('probe hangs', flush=True); time.sleep(1000)"
    farm.write({"Z": notifier("ping-then-sleep", count=1, ready="notify",
                              probe={"exec": [sys.executable, "-c", hang], "every": "1s", "timeout": "0.5s",
                                     "failures": 1})}, **forwarding(svc))
    farm.start(wait_instances=1)
    assert svc.wait_for(lambda es: events(svc, "unhealthy", "ET-Z-0"), 20), farm.log()
    event = events(svc, "unhealthy", "ET-Z-0")[0]
    assert event["detail"]["reason"] == "killed after its timeout of 0.5s", event
    assert "probe hangs" in event["message"]
    assert farm.stop() == 0  # the farm fixture then checks that no probe was left running


# --------------------------------------------------------------------------- max_memory and whole-tree figures

BLOAT = ("import os, signal, sys, time\n"
         "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
         "print('started', flush=True)\n"
         "if os.fork() == 0:\n"
         "    blocks = []\n"
         "    for _ in range(30):\n"
         "        blocks.append(b'x' * (10 << 20))\n"
         "        time.sleep(0.05)\n"
         "    print('child holds 300 MiB', flush=True)\n"
         "while True:\n"
         "    time.sleep(3600)\n")


def test_max_memory_counts_the_child_and_restarts(farm: Farm, svc: DevService) -> None:
    farm.write({"Fat": {"command": [sys.executable, "-c", BLOAT], "args": [], "count": 1,
                        "max_memory": "100MiB"}}, **forwarding(svc))
    farm.start(wait_instances=1)
    first = farm.instances()["ET-Fat-0"]
    # status shows the whole tree: the main process alone stays near 10 MiB.
    tree = wait_until(lambda: (r := row(farm, "ET-Fat-0"))["rss"] and r["rss"] > 100 * 2**20 and r, 20,
                      what="the tree's RSS above 100 MiB in status")
    assert tree["processes"] == 2, tree
    assert svc.wait_for(lambda es: events(svc, "unhealthy", "ET-Fat-0"), 30), farm.log()
    event = events(svc, "unhealthy", "ET-Fat-0")[0]
    detail = event["detail"]
    assert detail["check"] == "memory" and detail["limit"] == 100 * 2**20 and detail["rss"] > 100 * 2**20
    assert detail["processes"] == 2 and detail["biggest"]["pid"] != first, detail
    assert "is above max_memory 100.0 MiB" in event["message"] and "RSS of its process tree" in event["message"]
    assert svc.wait_for(lambda es: events(svc, "crashed", "ET-Fat-0"), 10)
    assert events(svc, "crashed", "ET-Fat-0")[0]["detail"]["cause"] == "memory"
    wait_until(lambda: farm.instances().get("ET-Fat-0") not in (None, first), 15, what="restarted")
    assert farm.stop() == 0


# --------------------------------------------------------------------------- messages, config


def test_health_events_read_well_in_english_and_chinese() -> None:
    from exec_supervisor.events import Event
    from exec_supervisor.events.messages import render

    def event(kind: str, **fields: Any) -> Event:
        return Event(event=kind, level="error", supervisor="s", exec_id="ET-A-0", type="A", id=0, pid=7,
                     restarts=1, **fields)

    cases = [
        (event("unhealthy", detail={"check": "memory", "rss": 3 * 2**30, "limit": 2 * 2**30, "processes": 3}),
         "ET-A-0: unhealthy: memory: RSS of its process tree 3.0 GiB is above max_memory 2.0 GiB (3 processes)",
         "ET-A-0: 不健康: 内存: 进程树 RSS 3.0 GiB 超过 max_memory 2.0 GiB (3 个进程)"),
        (event("unhealthy", detail={"check": "watchdog", "silent": 31.0, "timeout": 30.0, "status": "job 3/9"}),
         "ET-A-0: unhealthy: watchdog: no WATCHDOG=1 for 31s (watchdog 30s) (STATUS: job 3/9); stopping it",
         "ET-A-0: 不健康: 看门狗: 31s 内没有 WATCHDOG=1 (watchdog 30s) (STATUS: job 3/9); 停止后按退避重启"),
        (event("start_timeout", detail={"timeout": 120.0}),
         "ET-A-0: start timeout: no READY=1 within 120s (start_timeout); stopping it",
         "ET-A-0: 启动超时: 120s 内未收到 READY=1 (start_timeout); 停止后按退避重启"),
        (event("crashed", signal="SIGABRT", runtime=40.0, restart_in=2.0, detail={"cause": "watchdog"}),
         "ET-A-0: stopped for unhealthy (watchdog): killed by SIGABRT after 40s; restarting in 2.0s (restart 1)",
         "ET-A-0: 因不健康 (watchdog)已停止: 被信号 SIGABRT 终止, 运行了 40s; 2.0s 后重启 (第 1 次重启)"),
        (event("status_changed", detail={"status": "model loaded"}), "ET-A-0: status: model loaded",
         "ET-A-0: 状态: model loaded"),
    ]
    for value, english, chinese in cases:
        assert render(value, "en").startswith(english), render(value, "en")
        assert render(value, "zh").startswith(chinese), render(value, "zh")


@pytest.mark.parametrize("text, key, fragment", [
    ("    start_timeout: 5s\n", "executors.A.start_timeout", "start_timeout needs ready: notify"),
    ("    ready: notfy\n", "executors.A.ready", "must be one of 'start_seconds' or 'notify'"),
    ("    watchdog: soon\n", "executors.A.watchdog", "'soon' is not a duration"),
    ("    max_memory: 4 GiBs\n", "executors.A.max_memory", "is not a size"),
    ("    probe: {exec: [x], evry: 3s}\n", "executors.A.probe.evry", "did you mean 'every'?"),
    ("    probe: {http: 'ftp://x/'}\n", "executors.A.probe.http", "is not an http:// or https:// URL"),
    ("    probe: {every: 1s}\n", "executors.A.probe", "give exactly one of exec (a command) or http (a URL)"),
    ("    probe: {http: 'http://127.0.0.1:{prot}/'}\n", "executors.A.probe.http", "unknown placeholder {prot}"),
    ("    probe: {exec: [no-such-program-here]}\n", "executors.A.probe.exec.0", "is not found on PATH"),
    ("    env: {NOTIFY_SOCKET: /x}\n", "executors.A.env", "NOTIFY_SOCKET is set by the supervisor"),
])
def test_health_keys_are_validated(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    from exec_supervisor.config import ConfigError, load

    path = tmp_path / "farm.yaml"
    path.write_text('executors:\n  A:\n    command: ["{python}", "-c", "pass"]\n    count: 1\n' + text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    problems = [p for p in caught.value.problems if p.key == key]
    assert problems and fragment in problems[0].message, caught.value.problems
    assert problems[0].line == 5 and str(problems[0]).startswith(f"{path}:5: {key}: ")


def test_health_keys_load(tmp_path: Path) -> None:
    from exec_supervisor.config import load

    path = tmp_path / "farm.yaml"
    path.write_text('defaults: {ready: notify, start_timeout: 2m}\nexecutors:\n  A:\n'
                    '    command: ["{python}", "-c", "pass"]\n    count: 1\n    watchdog: 1500ms\n'
                    '    max_memory: 4GiB\n    env: {PORT: 8080}\n'
                    '    probe: {http: "http://127.0.0.1:{port}/health", every: 5s, grace: 30s}\n')
    config = load(path)
    executor = config.executors["A"]
    assert (executor.ready, executor.start_timeout, executor.watchdog) == ("notify", 120.0, 1.5)
    assert executor.max_memory == 4 * 2**30 and executor.probe is not None
    assert (executor.probe.every, executor.probe.timeout, executor.probe.failures, executor.probe.grace) == \
        (5.0, 2.0, 3, 30.0)
    assert dict(config.instance_spec("A", 0).env)["WATCHDOG_USEC"] == "1500000"
    assert "WATCHDOG_PID" not in dict(config.instance_spec("A", 0).env)


# --------------------------------------------------------------------------- the toolkit


TOOLKIT_EXECUTOR = (
    "import sys; from exec_supervisor.executor import Executor\n"
    "et = Executor('Kit', argv=['--id', '3'])\n"
    "et.status('warming up')\n"
    "rounds = []\n"
    "def work():\n"
    "    rounds.append(1)\n"
    "    if len(rounds) > 4: et.stop()\n"
    "    et.wait(0.5)\n"
    "et.run(work)\n"
)


def test_toolkit_says_ready_status_and_paces_heartbeats(tmp_path: Path) -> None:
    address = str(tmp_path / "n.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    got: list[str] = []
    done = threading.Event()

    def collect() -> None:  # as the daemon does: read while it runs (the kernel queues only 10)
        while not done.is_set():
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                continue

    reader = threading.Thread(target=collect)
    reader.start()
    try:
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000", "PYTHONPATH": str(REPO)}
        run = subprocess.run([sys.executable, "-c", TOOLKIT_EXECUTOR], env=env, timeout=60, capture_output=True)
        assert run.returncode == 0, run.stderr
        wait_until(lambda: got and got[-1] == "STOPPING=1", 5, what="STOPPING=1")
    finally:
        done.set()
        reader.join()
        sock.close()
    assert got[0] == "STATUS=warming up" and got[1] == "READY=1", got
    beats = got.count("WATCHDOG=1")
    # About 2.5 s of wait() at one heartbeat per 0.2 s (WATCHDOG_USEC/2), never more often.
    assert 8 <= beats <= 16, got
    assert got[-1] == "STOPPING=1" and got.count("READY=1") == 1
    # Without NOTIFY_SOCKET: nothing to send to, and nothing breaks.
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    quiet = subprocess.run([sys.executable, "-c", TOOLKIT_EXECUTOR], env={**env, "PYTHONPATH": str(REPO)},
                           timeout=60, capture_output=True)
    assert quiet.returncode == 0, quiet.stderr


def test_an_upgrade_keeps_readiness_status_and_the_watchdog(farm: Farm, svc: DevService) -> None:
    farm.write({"Beat": notifier("ping-then-sleep", count=1, ready="notify", watchdog="1.5s",
                                 env={"NOTIFY_MODE": "ping-then-sleep", "PING_EVERY": "0.3"})}, **forwarding(svc))
    farm.start(wait_instances=1)
    pid = farm.instances()["ET-Beat-0"]
    wait_until(lambda: (r := row(farm, "ET-Beat-0"))["state"] == "running" and r["status_text"] == "pinging", 15,
               what="running with its status text")
    client = Client(farm.state_dir / "control.sock")
    assert client.call("POST", "/v1/upgrade", {})[0] == 202
    wait_until(lambda: client.call("GET", "/v1/health")[1].get("upgrades") == 1, 60, what="the upgrade done")
    after = row(farm, "ET-Beat-0")
    assert after["pid"] == pid and after["state"] == "running" and after["ready"] is True, (after, farm.log()[-3000:])
    assert after["status_text"] == "pinging" and after["health"] == "ok", after
    # The same socket path: heartbeats go on reaching the new image, the watchdog is armed again.
    beat = after["heartbeat"]
    wait_until(lambda: row(farm, "ET-Beat-0")["heartbeat"] > beat, 10, what="a heartbeat after the upgrade")
    time.sleep(2 * 1.5)  # two watchdog periods: nothing may fire while the heartbeats come
    assert not events(svc, "unhealthy") and row(farm, "ET-Beat-0")["pid"] == pid
    assert farm.stop() == 0


def test_a_probe_added_by_reload_starts_without_a_restart(farm: Farm, svc: DevService) -> None:
    spec = notifier("ping-then-sleep", count=1, ready="notify")
    farm.write({"R": spec}, **forwarding(svc))
    farm.start(wait_instances=1)
    pid = farm.instances()["ET-R-0"]
    wait_until(lambda: row(farm, "ET-R-0")["state"] == "running", 15, what="running")
    failing = [sys.executable, "-c", "print('not today'); raise SystemExit(3)"]
    farm.write({"R": {**spec, "probe": {"exec": failing, "every": "0.2s", "failures": 2}}}, **forwarding(svc))
    code, answer = Client(farm.state_dir / "control.sock").call("POST", "/v1/reload", {})
    assert code == 200 and answer["ok"] and answer["restarted"] == 0, answer
    assert svc.wait_for(lambda es: events(svc, "unhealthy", "ET-R-0"), 20), farm.log()
    event = events(svc, "unhealthy", "ET-R-0")[0]
    assert event["pid"] == pid and event["detail"]["reason"] == "exit code 3" and "not today" in event["message"]
    assert farm.stop() == 0
