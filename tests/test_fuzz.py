"""Property-based fuzzing (hypothesis) of what an operator or a hostile client can hand the daemon.

- Configs: generated farm configs (known keys with hostile values, odd keys, odd nesting) and
  mangled bytes. Loading gives a FarmConfig or one ConfigError whose problems are one line each
  with the file (and a line when they concern a key); `check` exits 0 or 2 with no traceback,
  within a few seconds.
- Control requests: random methods, paths, queries and bodies (JSON of any shape, or bytes) on a
  live daemon's socket. Every answer is a well-formed HTTP response below 500 within a few
  seconds, the daemon keeps answering `health` after each, and its log never shows a traceback.

Examples are bounded so the whole file runs well under a minute.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import Farm
from exec_supervisor.config import ConfigError, load
from exec_supervisor.control.client import UnixHTTPConnection

SLEEP = shutil.which("sleep")
FUZZ = settings(database=None, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)

# --------------------------------------------------------------------------- configs

SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([0, 1, -1, 2**63, 10**30, 10**400, 0x7FFFFFFF]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["0-3", "5-2", "0-99999999", "1,2,2", "{id}", "{id:>9999999}", "{nope}", "{", "}", "{{",
                     "10MiB", "1e400", "99999999999999999999999s", "TERM", "SIGKILL", "-5", "\x00", "é" * 3,
                     "API_TOKEN=sk-live-0123456789abcdef", "../" * 40, "/dev/zero", "~", "", " "]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
EXECUTOR_KEYS = ["command", "ids", "count", "args", "env", "cwd", "restart", "success_exit_codes", "start_seconds",
                 "backoff", "max_restarts", "restart_window", "stop_signal", "stop_timeout", "log_max_bytes",
                 "log_backups", "restrat"]
SECTION_KEYS = {
    "service": ["host", "auth"], "supervisor": ["name", "state_dir", "log_dir", "max_instances"],
    "events": ["forward", "min_level", "language", "spool_max_bytes"], "control": ["socket", "socket_mode", "group"],
}


@st.composite
def configs(draw: Any) -> Any:
    data: dict[Any, Any] = {}
    for section, keys in SECTION_KEYS.items():
        if draw(st.booleans()):
            data[section] = {k: draw(VALUES) for k in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))}
    if draw(st.booleans()):
        data["defaults"] = {k: draw(VALUES) for k in draw(st.lists(st.sampled_from(EXECUTOR_KEYS), max_size=3,
                                                                   unique=True))}
    executors = {}
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.one_of(st.sampled_from(["A", "B_2", "x" * 120, "bad-name", "9"]), st.text(max_size=6)))
        executor: dict[str, Any] = {"command": draw(st.one_of(st.just([SLEEP, "100"]), VALUES))}
        if draw(st.booleans()):
            executor["count"] = draw(st.one_of(st.integers(0, 3), VALUES))
        else:
            executor["ids"] = draw(VALUES)
        for key in draw(st.lists(st.sampled_from(EXECUTOR_KEYS), max_size=4, unique=True)):
            executor[key] = draw(VALUES)
        executors[name] = executor
    data["executors"] = draw(st.one_of(st.just(executors), VALUES)) if draw(st.integers(0, 9)) == 0 else executors
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text(max_size=10))] = draw(VALUES)
    return data


def dumped(data: Any) -> bytes:
    try:
        return yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), allow_unicode=True,
                         width=10**6).encode()
    except (yaml.YAMLError, ValueError):
        return repr(data).encode()  # what the dumper cannot write is still a file an operator could have


def assert_clean_outcome(path: Path) -> None:
    started = time.monotonic()
    try:
        load(path, {"PATH": os.environ.get("PATH", "")})
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            text = str(problem)
            assert "\n" not in text and text.startswith(f"{path}"), text
            assert "internal error" not in text, text
            if problem.key:
                assert problem.line is not None, text
            if ".env" in problem.key or "auth" in problem.key:  # where secrets live: never echoed
                assert "sk-live-0123456789abcdef" not in text, text
    assert time.monotonic() - started < 5, "loading a config must never take seconds"


@settings(FUZZ, max_examples=200)
@given(data=configs(), mangle=st.one_of(st.none(), st.tuples(st.integers(0, 2000), st.binary(min_size=1, max_size=8))))
def test_fuzz_configs_load_cleanly(tmp_path_factory: Any, data: Any, mangle: Any) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "farm.yaml"
    raw = dumped(data)
    if mangle is not None:
        at, junk = mangle
        at = min(at, len(raw))
        raw = raw[:at] + junk + raw[at:]
    path.write_bytes(raw)
    assert_clean_outcome(path)


def test_fuzz_configs_through_check(tmp_path: Path) -> None:
    """The real CLI on a sample: exit 0 or 2, file:line problems, no traceback, no hang."""
    seen: list[int] = []

    @settings(FUZZ, max_examples=12)
    @given(data=configs())
    def one(data: Any) -> None:
        path = tmp_path / "farm.yaml"
        path.write_bytes(dumped(data))
        result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "check", str(path)],
                                capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        assert result.returncode in (0, 2), (result.returncode, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-2000:]
        if result.returncode == 2:
            for line in result.stderr.splitlines():
                assert line.startswith(f"{path}:"), line
        seen.append(result.returncode)

    one()
    assert seen


# --------------------------------------------------------------------------- control requests

PATHS = st.one_of(
    st.sampled_from(["/v1", "/v1/", "/v1/health", "/v1/status", "/v1/events", "/v1/logs/ET-A-0", "/v1/logs/ET-A-9",
                     "/v1/logs/..%2f..%2fetc%2fpasswd", "/v1/scale", "/v1/start", "/v1/stop", "/v1/restart",
                     "/v1/reload", "/", "//v1//status", "/v1/status/", "/v1/logs/", "/%00", "/v1/" + "a" * 3000]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40).map(lambda t: "/" + t),
)
QUERY_VALUES = st.one_of(st.text(max_size=12), st.sampled_from(["all", "A", "ET-A-0", "-1", "1e9", "99999999999",
                                                                  "nan", "", "ET-A-" + "9" * 50]))
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
              st.sampled_from(["all", "A", "ET-A-0", "0-3", "0-99999999", 10**30, -1, 3, 0])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)
BODIES = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.fixed_dictionaries({}, optional={"target": JSON_VALUES, "scale": JSON_VALUES, "timeout": JSON_VALUES,
                                        "rolling": JSON_VALUES}).map(lambda d: {**d, "wait": False}),
    JSON_VALUES,
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
)


def _request(socket_path: str, method: str, target: str, body: bytes | None, timeout: float) -> int:
    connection = UnixHTTPConnection(socket_path, timeout=timeout)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_fuzz_control_requests(farm: Farm) -> None:
    farm.write({"A": {"command": [SLEEP, "10000"], "args": [], "count": 1}},
               supervisor={"max_instances": 12}, defaults={"stop_timeout": 1})
    farm.start(wait_instances=1)
    socket_path = str(farm.state_dir / "control.sock")
    statuses: list[int] = []

    @settings(FUZZ, max_examples=80)
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]), path=PATHS,
           query=st.dictionaries(st.sampled_from(["target", "n", "x", "follow"]), QUERY_VALUES, max_size=3),
           body=BODIES)
    def one(method: str, path: str, query: dict[str, str], body: Any) -> None:
        query.pop("follow", None)  # a follow stream is meant to stay open
        if path.rstrip("/").endswith("shutdown"):
            return
        from urllib.parse import quote, urlencode

        target = quote(path, safe="/%") + ("?" + urlencode(query) if query else "")
        raw = body if isinstance(body, bytes) or body is None else (
            body.encode() if isinstance(body, str) else json.dumps(body).encode())
        started = time.monotonic()
        try:
            status = _request(socket_path, method, target, raw, timeout=10)
        except (http.client.HTTPException, ConnectionError) as exc:
            raise AssertionError(f"{method} {target[:80]}: no well-formed answer ({exc!r})") from None
        assert time.monotonic() - started < 10
        assert status < 500, (method, target[:200], raw[:200] if raw else raw, status)
        statuses.append(status)
        assert farm.daemon is not None and farm.daemon.poll() is None, "the daemon died"
        assert _request(socket_path, "GET", "/v1/health", None, timeout=5) == 200

    one()
    assert statuses and any(s == 200 for s in statuses)
    log = farm.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    assert farm.stop() == 0
