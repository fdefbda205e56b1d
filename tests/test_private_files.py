"""Private state and logs: state_dir 0700, its files 0600, logs 0640 with supervisor.log_group,
and no log is ever opened, rotated or served through a symlink or as another user's file."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Farm, wait_until


def a_group() -> grp.struct_group:
    for name in ("adm", "daemon", "nogroup", "users"):
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    pytest.skip("needs a group other than the caller's (adm, daemon, nogroup or users)")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_state_dir_is_private_and_logs_are_0640_with_the_log_group(farm: Farm) -> None:
    group = a_group()
    farm.state_dir.mkdir(mode=0o755)
    os.chmod(farm.state_dir, 0o755)
    old = farm.state_dir / "overrides.json"  # as an older version left it: world-readable
    old.write_text('{"scaled": {}, "held": []}')
    os.chmod(old, 0o644)
    farm.write({"S": {**farm.program("sleep"), "count": 2}},
               supervisor={"log_group": group.gr_name})
    farm.start(wait_instances=2)
    wait_until(lambda: (farm.state_dir / "instances.json").exists(), what="instances.json")
    assert mode(farm.state_dir) == 0o700
    files = [p for p in farm.state_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert {"daemon.lock", "spawns.jsonl", "instances.json", "overrides.json"} <= {p.name for p in files}
    loose = {str(p): oct(mode(p)) for p in files if mode(p) & 0o077}
    assert not loose, f"readable by others: {loose}"
    for i in range(2):
        log = farm.log_dir / f"ET-S-{i}.log"
        assert mode(log) == 0o640 and log.stat().st_gid == group.gr_gid
    assert farm.stop() == 0


def test_a_missing_log_group_stops_the_start_with_one_line(farm: Farm) -> None:
    farm.write({"S": {**farm.program("sleep"), "count": 1}}, supervisor={"log_group": "no-such-group-here"})
    daemon = farm.start()
    assert daemon.wait(30) == 2
    assert farm.log().strip().splitlines()[-1] == (
        "exec-supervisor: farm.yaml: supervisor.log_group: there is no group named 'no-such-group-here' "
        "on this machine")


def test_a_symlink_or_foreign_file_in_log_dir_is_never_written_rotated_or_served(farm: Farm, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET\n")
    os.chmod(secret, 0o600)
    farm.log_dir.mkdir()
    (farm.log_dir / "ET-Linked-0.log").symlink_to(secret)  # planted in a shared log_dir
    (farm.log_dir / "ET-Chatty-0.log.1").symlink_to(secret)  # where the next rotation writes
    foreign = farm.log_dir / "ET-Foreign-0.log"
    foreign.write_text("someone else's\n")
    os.chown(foreign, 65534, 65534)
    farm.write({
        "Linked": {**farm.program("sleep"), "count": 1},
        "Foreign": {**farm.program("sleep"), "count": 1},
        "Chatty": {**farm.program("chatty:200"), "count": 1, "log_max_bytes": 4096, "log_backups": 1},
    })
    farm.start()
    log = farm.wait_log("the log file is a symbolic link (refused)")
    farm.wait_log("the log file belongs to uid 65534, not to the supervisor (refused)")
    assert "ET-Linked-0: could not start: the log file is a symbolic link" in log
    rotated = farm.log_dir / "ET-Chatty-0.log.1"
    wait_until(lambda: not rotated.is_symlink() and rotated.exists(), 20, what="a rotation of ET-Chatty-0")
    assert mode(rotated) == 0o640
    served = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "logs", "ET-Linked-0",
                             "-c", str(farm.config_path)], capture_output=True, text=True, timeout=30)
    assert "TOPSECRET" not in served.stdout + served.stderr
    assert farm.stop() == 0
    assert secret.read_text() == "TOPSECRET\n" and mode(secret) == 0o600
    assert foreign.read_text() == "someone else's\n"
    assert (farm.log_dir / "ET-Linked-0.log").is_symlink()
