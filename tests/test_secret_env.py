"""No secret of the supervisor's reaches an executor's environment (grandchildren included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import Farm, marked_processes, wait_until


def environ_of(pid: int) -> dict[str, str]:
    """The environment the kernel holds for pid (what any process of the same user can read)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_service_auth_variables_are_removed_from_every_instance_and_its_grandchildren(farm: Farm) -> None:
    farm.write(
        {
            "Family": {**farm.program("grandchildren"), "count": 2, "stop_timeout": 0.5},
            # A type that really needs the password names it in its own env (empty: the supervisor's value).
            "Admin": {**farm.program("sleep"), "count": 1, "env": {"LOG_API_PASSWORD": ""}},
        },
        service={"host": "http://127.0.0.1:9/", "auth": {"username_env": "LOG_API_USER",
                                                         "password_env": "LOG_API_PASSWORD"}},
    )
    secrets = {"LOG_API_USER": "admin-user-9f3", "LOG_API_PASSWORD": "pw-7c1e-secret"}
    os.environ.update(secrets)
    try:
        farm.start(wait_instances=3)
    finally:
        for name in secrets:
            del os.environ[name]
    farm.wait_started(3)
    wait_until(lambda: len(marked_processes(farm.mark)) >= 3 + 2 * 2, what="grandchildren started")
    checked = 0
    for process in marked_processes(farm.mark):
        env = environ_of(process.pid)
        exec_id = env["ET_EXEC_ID"]
        raw = Path(f"/proc/{process.pid}/environ").read_bytes()
        if exec_id == "ET-Admin-0":
            assert env["LOG_API_PASSWORD"] == secrets["LOG_API_PASSWORD"]
            assert "LOG_API_USER" not in env and b"admin-user-9f3" not in raw
        else:
            assert not set(secrets) & set(env), f"{exec_id} (pid {process.pid}) holds a service.auth variable"
            assert b"pw-7c1e-secret" not in raw and b"admin-user-9f3" not in raw
        checked += 1
    assert checked >= 7
    # The daemon says which type was handed the credential, and why it does not need it.
    log = farm.wait_log("executors.Admin.env.LOG_API_PASSWORD")
    assert "pw-7c1e-secret" not in log
    assert farm.stop() == 0


def test_check_warns_when_a_type_copies_a_service_auth_variable(tmp_path: Path) -> None:
    config = tmp_path / "farm.yaml"
    config.write_text(
        "service: {host: 'http://127.0.0.1:9/', auth: {token_env: LOG_API_TOKEN}}\n"
        f"supervisor: {{state_dir: {tmp_path}/state, log_dir: {tmp_path}/logs}}\n"
        "executors:\n"
        "  Plain: {command: [sleep, '60'], count: 1}\n"
        "  Needy: {command: [sleep, '60'], count: 1, env: {LOG_API_TOKEN: ''}}\n"
    )
    done = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "check", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, done.stdout
    assert "executors.Needy.env.LOG_API_TOKEN" in warnings[0] and "service.auth.token_env" in warnings[0]
