"""The http: listener, /metrics and the page's API: real daemons, real sockets, a real Prometheus.

Browser tests of the page are in test_webpage.py.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Farm, wait_until
from exec_supervisor.control.client import UnixHTTPConnection

prometheus_client = pytest.importorskip("prometheus_client", reason="needs prometheus-client: pip install -e '.[test]'")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

SLEEP = shutil.which("sleep")
TOKEN = "observe-test-token-0123456789abcdef"
URL_RE = re.compile(r"web status page and metrics at (http://\S+/) ")


def sleeper(**extra: Any) -> dict[str, Any]:
    return {"command": [SLEEP, "10000"], "args": [], **extra}


def cli(farm: Farm, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exec_supervisor.cli", *args, str(config or farm.config_path)]
                          if args[0] == "check" else
                          [sys.executable, "-m", "exec_supervisor.cli", *args, "-c", str(farm.config_path)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def status(farm: Farm) -> dict[str, Any]:
    result = cli(farm, "status", "--json")
    assert result.returncode in (0, 4), result.stderr  # 4: a desired instance is not running
    return json.loads(result.stdout)


def url_of(farm: Farm) -> str:
    farm.wait_log("web status page and metrics at ")
    match = URL_RE.search(farm.log())
    assert match, farm.log()
    return match.group(1)


def request(url: str, method: str = "GET", path: str = "/", body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value}, through prometheus_client's own parser."""
    code, head, body = request(url, path="/metrics", headers=headers)
    assert code == 200, body
    assert head["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def of(metrics: dict[str, Any], name: str, **labels: str) -> float | None:
    for key, value in metrics.get(name, {}).items():
        if all((k, v) in key for k, v in labels.items()):
            return value
    return None


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("http_section, key, message", [
    ({"listen": "0.0.0.0:9464"}, "http.listen", "reachable from other machines"),
    ({"listen": ":9464"}, "http.listen", "every address is reachable from other machines"),
    ({"listen": "10.1.2.3:9464"}, "http.listen", "set http.token_env or http.token_file"),
    ({"listen": "127.0.0.1:9464", "actions": True}, "http.actions", "actions: true needs a token"),
    ({"listen": "127.0.0.1:9464", "metrics_auth": True}, "http.metrics_auth", "needs a token"),
    ({"listen": "::1:9464"}, "http.listen", "an IPv6 address goes in brackets"),
    ({"listen": "127.0.0.1:99999"}, "http.listen", "port 99999 is above 65535"),
    ({"listne": "127.0.0.1:9464"}, "http.listne", "did you mean 'listen'?"),
    ({"listen": "127.0.0.1:9464", "token_env": "s3cr3tTOKENvalue1234"}, "http.token_env", "value not shown"),
    ({"token_env": "A_TOKEN", "token_file": "t"}, "http", "use one of token_env or token_file"),
])
def test_http_config_is_checked(farm: Farm, http_section: dict[str, Any], key: str, message: str) -> None:
    farm.write({"A": sleeper(count=1)}, http=http_section)
    result = cli(farm, "check")
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if f": {key}: " in line]
    assert lines and message in lines[0], result.stderr
    assert re.match(r".*farm\.yaml:\d+: ", lines[0])
    assert "s3cr3tTOKENvalue1234" not in result.stderr


@pytest.mark.parametrize("http_section", [
    {"listen": "[::1]:9464"}, {"listen": "localhost:0"}, {"listen": "127.0.0.5:1"},
    {"listen": "0.0.0.0:9464", "token_env": "WEB_TOKEN", "actions": True, "metrics_auth": True},
    {"listen": "[::]:9464", "token_file": "web.token"},
])
def test_http_config_accepts(farm: Farm, http_section: dict[str, Any]) -> None:
    farm.write({"A": sleeper(count=1)}, http=http_section)
    result = cli(farm, "check")
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- metrics


def crash_farm(farm: Farm, **http: Any) -> str:
    farm.write({
        "Steady": sleeper(count=3),
        "Crashy": {**farm.program("exit:3"), "count": 2,
                   "backoff": {"initial": 0.2, "max": 0.2, "jitter": 0}},
    }, http={"listen": "127.0.0.1:0", **http})
    farm.start()
    return url_of(farm)


def test_metrics_match_status_while_instances_crash_and_restart(farm: Farm) -> None:
    url = crash_farm(farm)
    wait_until(lambda: all(r["state"] == "running" for r in status(farm)["instances"] if r["type"] == "Steady"),
               20, what="Steady running")
    assert status(farm)["supervisor"]["http"] == url
    victim = "ET-Steady-1"
    os.kill(farm.instances()[victim], signal.SIGKILL)

    def consistent() -> bool:
        before = status(farm)
        metrics = scrape(url)
        after = status(farm)
        rows = {r["exec_id"]: r for r in before["instances"]}
        stable = [r for r in after["instances"] if rows[r["exec_id"]]["state"] == r["state"]
                  and rows[r["exec_id"]]["restarts"] == r["restarts"]]
        if rows[victim]["restarts"] < 1 or rows[victim]["state"] != "running":
            return False
        for row in stable:
            labels = {"exec_id": row["exec_id"], "type": row["type"], "id": str(row["id"])}
            assert of(metrics, "exec_supervisor_instance_up", **labels) == (1.0 if row["state"] == "running" else 0.0)
            for state in ("stopped", "starting", "running", "backoff", "exited", "fatal", "stopping"):
                assert of(metrics, "exec_supervisor_instance_state", state=state, **labels) == \
                    (1.0 if state == row["state"] else 0.0), (row, state)
            assert of(metrics, "exec_supervisor_instance_restarts_total", **labels) == row["restarts"]
            if row["pid"] is not None and row["state"] == "running":
                assert of(metrics, "exec_supervisor_instance_resident_memory_bytes", **labels) > 0
                assert of(metrics, "exec_supervisor_instance_cpu_seconds_total", **labels) >= 0
                assert abs(of(metrics, "exec_supervisor_instance_start_time_seconds", **labels) - row["started"]) < 0.01
        crashed = of(metrics, "exec_supervisor_instance_last_exit_code", exec_id="ET-Crashy-0")
        assert crashed == 3.0
        assert of(metrics, "exec_supervisor_instance_last_exit_signal", exec_id=victim) == float(signal.SIGKILL)
        assert of(metrics, "exec_supervisor_desired_instances", type="Steady") == 3
        assert of(metrics, "exec_supervisor_running_instances", type="Steady") == sum(
            1 for r in after["instances"] if r["type"] == "Steady" and r["state"] == "running")
        assert of(metrics, "exec_supervisor_events_emitted_total", event="crashed", level="error") >= 2
        assert of(metrics, "exec_supervisor_build_info")  == 1.0
        assert of(metrics, "process_resident_memory_bytes") > 0
        assert of(metrics, "exec_supervisor_events_forwarding") == 0.0
        return {r["exec_id"] for r in stable} >= {"ET-Steady-0", "ET-Steady-1", "ET-Steady-2"}

    wait_until(consistent, 30, interval=0.2, what="/metrics agreeing with status --json")
    # The control socket serves the same exposition.
    connection = UnixHTTPConnection(str(farm.state_dir / "control.sock"), timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    assert response.status == 200
    assert f'exec_supervisor_instance_up{{exec_id="{victim}",id="1",type="Steady"}}' in body


def test_promtool_accepts_the_exposition(farm: Farm) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("needs the Debian package prometheus (promtool): apt-get install prometheus")
    url = crash_farm(farm)
    wait_until(lambda: (of(scrape(url), "exec_supervisor_instance_restarts_total", exec_id="ET-Crashy-1") or 0) >= 1,
               20, what="a restart")
    body = request(url, path="/metrics")[2]
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_real_prometheus_scrapes_every_instance_and_sees_a_restart(farm: Farm, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs the Debian package prometheus: apt-get install prometheus")
    farm.write({"Steady": sleeper(count=5), "Other": sleeper(ids=[7, 9])}, http={"listen": "127.0.0.1:0"})
    farm.start(wait_instances=7)
    url = url_of(farm)
    target = urllib.parse.urlsplit(url).netloc
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "farm", "static_configs": [{"targets": [target]}]}],
    }))
    server = subprocess.Popen([
        binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ], stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}"

    def query(expression: str) -> list[dict[str, Any]]:
        try:
            code, _, body = request(api, path="/api/v1/query?" + urllib.parse.urlencode({"query": expression}))
        except OSError:
            return []
        if code != 200:
            return []
        return json.loads(body)["data"]["result"]

    try:
        wait_until(lambda: len(query("exec_supervisor_instance_up == 1")) == 7, 60, interval=0.5,
                   what="Prometheus seeing all 7 instances up")
        found = {r["metric"]["exec_id"] for r in query("exec_supervisor_instance_up")}
        assert found == {*(f"ET-Steady-{i}" for i in range(5)), "ET-Other-7", "ET-Other-9"}
        os.kill(farm.instances()["ET-Other-9"], signal.SIGKILL)
        grew = 'increase(exec_supervisor_instance_restarts_total{exec_id="ET-Other-9"}[1m]) > 0'
        wait_until(lambda: query(grew), 60, interval=0.5, what="Prometheus seeing the restart")
        assert query('exec_supervisor_instance_restarts_total{exec_id="ET-Other-9"}')[0]["value"][1] == "1"
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --------------------------------------------------------------------------- the listener's rules


def test_listener_access_rules(farm: Farm) -> None:
    farm.write({"A": sleeper(count=2)}, http={"listen": "127.0.0.1:0", "token_env": "OBSERVE_TEST_TOKEN",
                                               "actions": True})
    os.environ["OBSERVE_TEST_TOKEN"] = TOKEN
    try:
        farm.start(wait_instances=2)
    finally:
        del os.environ["OBSERVE_TEST_TOKEN"]
    url = url_of(farm)
    good = {"Authorization": f"Bearer {TOKEN}"}
    # The token's variable is the supervisor's: no instance inherits it.
    for pid in farm.instances().values():
        assert TOKEN.encode() not in Path(f"/proc/{pid}/environ").read_bytes()

    code, head, body = request(url, path="/")
    assert code == 200 and head["content-type"].startswith("text/html") and b"/static/app.js" in body
    assert "default-src 'self'" in head["content-security-policy"]
    assert request(url, path="/static/app.js")[0] == 200
    assert request(url, path="/static/..%2Fweb.py")[0] == 404
    assert request(url, path="/static/nothing.js")[0] == 404

    # Reads on a loopback listener are open, and answer as the control socket does.
    code, head, body = request(url, path="/v1/status")
    assert code == 200 and head["cache-control"] == "no-store"
    assert {r["exec_id"] for r in json.loads(body)["instances"]} == {"ET-A-0", "ET-A-1"}
    assert json.loads(request(url, path="/v1/health")[2])["ok"] is True
    assert "events" in json.loads(request(url, path="/v1/events?n=5")[2])
    code, head, _ = request(url, path="/v1/logs/ET-A-0?n=5")
    assert code == 200 and head["content-type"].startswith("text/plain")
    described = json.loads(request(url, path="/v1/instances/ET-A-0")[2])
    assert described["argv"] == [SLEEP, "10000"] and "ES_TEST_MARK" in described["env_names"]
    assert "OBSERVE_TEST_TOKEN" not in json.dumps(described)

    # DNS rebinding: a loopback listener answers loopback host names only.
    code, _, body = request(url, path="/v1/status", headers={"Host": "evil.example:80"})
    assert code == 403 and b"loopback host names" in body

    # Actions: refused without the token or with a wrong one, done with it.
    pid = farm.instances()["ET-A-1"]
    code, head, body = request(url, "POST", "/v1/restart", {"target": "ET-A-1"})
    assert code == 401 and head["www-authenticate"].startswith("Bearer") and b"needs the http token" in body
    code, _, _ = request(url, "POST", "/v1/restart", {"target": "ET-A-1"}, {"Authorization": "Bearer nope"})
    assert code == 401
    code, _, body = request(url, "POST", "/v1/restart", {"target": "ET-A-1"}, good)
    assert code == 200 and json.loads(body)["ok"] is True, body
    wait_until(lambda: farm.instances().get("ET-A-1") not in (None, pid), 20, what="a new pid")
    # Reload and shutdown stay on the control socket.
    code, _, body = request(url, "POST", "/v1/shutdown", {}, good)
    assert code == 403 and b"only served on the control socket" in body
    assert farm.daemon is not None and farm.daemon.poll() is None
    # /metrics is open unless metrics_auth.
    assert request(url, path="/metrics")[0] == 200
    assert TOKEN not in farm.log()


def test_actions_off_and_metrics_auth(farm: Farm, tmp_path: Path) -> None:
    token_file = tmp_path / "web.token"
    token_file.write_text(TOKEN + "\n")
    farm.write({"A": sleeper(count=1)}, http={"listen": "127.0.0.1:0", "token_file": str(token_file),
                                              "metrics_auth": True})
    farm.start(wait_instances=1)
    url = url_of(farm)
    good = {"Authorization": f"Bearer {TOKEN}"}
    code, _, body = request(url, "POST", "/v1/stop", {"target": "all"}, good)
    assert code == 403 and b"http.actions: false" in body
    assert request(url, path="/metrics")[0] == 401
    assert request(url, path="/metrics", headers=good)[0] == 200


def sse_events(response: http.client.HTTPResponse, until: Any, timeout: float) -> list[tuple[str, Any]]:
    """Read SSE messages until until(messages) is true; returns them all."""
    seen: list[tuple[str, Any]] = []
    name, data = "message", ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = response.readline().decode()
        if not line:
            break
        line = line.rstrip("\n")
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "" and data:
            seen.append((name, json.loads(data)))
            name, data = "message", ""
            if until(seen):
                return seen
    raise AssertionError(f"SSE condition not met; got {[n for n, _ in seen]}")


def test_live_feed_shows_a_crash_and_restart(farm: Farm) -> None:
    farm.write({"A": sleeper(count=3)}, http={"listen": "127.0.0.1:0"})
    farm.start(wait_instances=3)
    url = url_of(farm)
    wait_until(lambda: all(r["state"] == "running" for r in status(farm)["instances"]), 20, what="running")
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", "/v1/stream")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
        first = sse_events(response, lambda seen: seen[-1][0] == "snapshot", 10)
        snapshot = first[-1][1]
        assert {r["e"] for r in snapshot["rows"]} == {"ET-A-0", "ET-A-1", "ET-A-2"}
        assert snapshot["header"]["running"] == 3 and snapshot["header"]["name"] == "test"
        killed_at = time.monotonic()
        os.kill(farm.instances()["ET-A-2"], signal.SIGKILL)

        def restarted(seen: list[tuple[str, Any]]) -> bool:
            # Changes within 0.15 s go out as one message: the row may skip backoff, not the crash.
            rows = [r for name, data in seen if name == "rows" for r in data if r["e"] == "ET-A-2"]
            return bool(rows) and rows[-1]["s"] in ("starting", "running") and rows[-1]["r"] == 1 \
                and rows[-1]["x"]["signal"] == "SIGKILL"
        seen = sse_events(response, restarted, 10)
        assert time.monotonic() - killed_at < 2.0
        def crashes(seen: list[tuple[str, Any]]) -> list[dict[str, Any]]:
            return [e for name, data in seen if name == "events" for e in data if e["event"] == "crashed"]
        crash = crashes(seen) or crashes(sse_events(response, crashes, 5))
        assert "SIGKILL" in crash[0]["en"] and "SIGKILL" in crash[0]["zh"]
    finally:
        connection.close()
