"""Configs that pass a naive validation but could never run, and config files that are not configs.

Each case runs the real `exec-supervisor check` and asserts what an operator must see: exit 2,
one `file:line: key: message` line per problem, no traceback, no hang, no secret.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exec_supervisor.config import load
from exec_supervisor.config.checks import default_max_instances

SLEEP = shutil.which("sleep")


def check(path: Path | str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exec_supervisor.cli", "check", str(path)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          cwd=os.path.dirname(path) if os.path.isabs(str(path)) else None)


def refused(path: Path | str, line: int | None, fragment: str, timeout: float = 20) -> str:
    """check exits 2 with a one-line problem at path:line containing fragment."""
    result = check(path, timeout)
    assert result.returncode == 2, (result.returncode, result.stdout[:500], result.stderr[:2000])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[:2000]
    where = f"{path}:{line}: " if line else f"{path}: "
    lines = result.stderr.splitlines()
    assert any(text.startswith(where) and fragment in text for text in lines), result.stderr[:2000]
    assert all(len(text) < 600 for text in lines), "a problem line must stay readable"
    return result.stderr


def farm(tmp_path: Path, executor: str, head: str = "") -> Path:
    path = tmp_path / "farm.yaml"
    args = "" if "args:" in executor else "    args: []\n"
    path.write_text(f"{head}events: {{forward: false}}\nexecutors:\n  A:\n    command: [{SLEEP}, '10']\n"
                    f"{args}{executor}")
    return path


# --------------------------------------------------------------------------- instances that could never spawn


def test_ids_too_large_for_a_log_file_name_or_an_int_to_str(tmp_path):
    # 260 digits passed check and then every spawn failed (file name too long); 4000 hex digits
    # were past Python's 4300-digit int-to-str limit and `check` died with a traceback.
    path = farm(tmp_path, f"    ids: [{'9' * 260}]\n")
    refused(path, 6, "executors.A.ids.0: an id has at most 18 digits")
    path = farm(tmp_path, f"    ids: [0x{'F' * 4000}]\n")
    refused(path, 6, "an id has at most 18 digits")
    path = farm(tmp_path, f"    ids: '0-3, {'7' * 5000}'\n")
    refused(path, 6, "an id has at most 18 digits")
    path = farm(tmp_path, f"    ids: [{'9' * 18}]\n")
    assert check(path).returncode == 0  # the largest id there can be


def test_type_name_too_long_for_a_log_file_name(tmp_path):
    path = tmp_path / "farm.yaml"
    path.write_text(f"executors:\n  {'A' * 300}:\n    command: [{SLEEP}]\n    count: 1\n")
    stderr = refused(path, 2, "type name is 300 characters long, at most 100")
    assert "A" * 100 not in stderr  # the key itself is shortened in the message


def test_argument_or_env_value_over_the_kernel_string_limit(tmp_path):
    # One argv or env string over MAX_ARG_STRLEN (128 KiB) is E2BIG at every spawn.
    path = farm(tmp_path, f"    count: 1\n    args: [a, '{'x' * 200 * 1024}']\n")
    refused(path, 6, "executors.A.args.1: an argument of 204800 bytes")
    path = farm(tmp_path, f"    count: 1\n    env:\n      BIG: '{'x' * 200 * 1024}'\n")
    stderr = refused(path, 8, "executors.A.env.BIG: the variable BIG is 204804 bytes long (value not shown)")
    assert "xxxxxxxx" not in stderr
    # a placeholder that grows past the limit once filled in
    host = "http://127.0.0.1/" + "p" * 140_000
    path = farm(tmp_path, "    count: 1\n    args: ['{service_host}']\n", head=f"service: {{host: '{host}'}}\n")
    refused(path, 7, "an argument of 140018 bytes (once filled in)")


def test_command_line_and_environment_over_arg_max(tmp_path):
    arg_max = os.sysconf("SC_ARG_MAX")
    pieces = arg_max // (100 * 1024) + 2
    args = ", ".join([f"'{'y' * 100 * 1024}'"] * pieces)
    path = farm(tmp_path, f"    count: 1\n    args: [{args}]\n")
    refused(path, 3, f"over the kernel's limit of {arg_max} (ARG_MAX")


def test_placeholder_width_is_bounded(tmp_path):
    # {id:>100000000} made a 100 MB argument per spawn; a wider one ended in a MemoryError traceback.
    for spec in ("{id:>100000000}", "{id:>99999999999999999999}", "{id:{name}}", "{id:.999999}"):
        path = farm(tmp_path, f"    count: 1\n    args: ['{spec}']\n")
        refused(path, 6, "executors.A.args.0: {id:")
    path = farm(tmp_path, "    count: 1\n    args: ['{id:0>6}']\n")
    assert check(path).returncode == 0, "padding an id stays possible"
    assert load(path).planned()[0].argv[-1] == "000000"


def test_max_instances_refused_by_check(tmp_path):
    path = tmp_path / "farm.yaml"
    path.write_text(f"supervisor: {{max_instances: 10}}\nexecutors:\n  A: {{command: [{SLEEP}], count: 8}}\n"
                    f"  B: {{command: [{SLEEP}], count: 3}}\n")
    refused(path, 2, "executors: 11 instances in all (A: 8, B: 3), more than 10 (supervisor.max_instances")
    path.write_text(f"supervisor: {{max_instances: 11}}\nexecutors:\n  A: {{command: [{SLEEP}], count: 8}}\n"
                    f"  B: {{command: [{SLEEP}], count: 3}}\n")
    assert check(path).returncode == 0
    path.write_text("supervisor: {max_instances: 0}\n" + f"executors:\n  A: {{command: [{SLEEP}], count: 1}}\n")
    refused(path, 1, "supervisor.max_instances: must be >= 1")
    # the default: a quarter of the tightest of pid_max, threads-max and RLIMIT_NPROC
    tasks = [int(Path("/proc/sys/kernel/pid_max").read_text()), int(Path("/proc/sys/kernel/threads-max").read_text())]
    soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if soft != resource.RLIM_INFINITY:
        tasks.append(soft)
    assert default_max_instances() == max(1, min(100_000, min(tasks) // 4))
    many = default_max_instances() + 1
    per_type = -(-many // 2)
    path.write_text(f"executors:\n  A: {{command: [{SLEEP}], count: {per_type}}}\n"
                    f"  B: {{command: [{SLEEP}], count: {per_type}}}\n")
    refused(path, 1, f"more than {default_max_instances()} (supervisor.max_instances, this machine's default")


# --------------------------------------------------------------------------- reading the file


def test_check_on_a_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "farm.yaml"
    os.mkfifo(fifo)
    refused(fifo, None, "cannot read it: it is a FIFO (named pipe), not a regular file", timeout=10)


def test_check_on_dev_zero_and_a_huge_file(tmp_path):
    refused("/dev/zero", None, "it is a character device, not a regular file", timeout=10)
    big = tmp_path / "farm.yaml"
    with open(big, "w") as handle:
        handle.write("# padding\n" * (500 * 1024))  # 5 MiB of comments
    refused(big, None, "it is larger than 4 MiB", timeout=10)


def test_huge_integer_duration_has_a_line(tmp_path):
    # float(10**400) raised OverflowError: "internal error (OverflowError)" without a line
    path = farm(tmp_path, f"    count: 1\n    stop_timeout: {'9' * 400}\n")
    refused(path, 7, "executors.A.stop_timeout: a number that large is longer than 365 days")
    path = farm(tmp_path, f"    count: 1\n    log_max_bytes: '{'9' * 400}MiB'\n")
    refused(path, 7, "executors.A.log_max_bytes: a size that large is surely a mistake")


def test_invalid_utf8_says_line_and_byte(tmp_path):
    path = tmp_path / "farm.yaml"
    path.write_bytes(b"executors:\n  A:\n    command: [/bin/sleep]  # caf\xe9\n    count: 1\n")
    refused(path, 3, "not UTF-8 text (byte 0xe9, byte 33 of line 3)")


def test_env_key_that_looks_like_a_secret_is_masked(tmp_path):
    secret = "sk-live-4f9a8b7c6d5e4f3a2b1c"
    for key in (f"API_TOKEN={secret}", secret):
        for section in ("executors", "defaults"):
            if section == "executors":
                path = farm(tmp_path, f"    count: 1\n    env:\n      '{key}': [1]\n      '{key}x': 'a'\n")
            else:
                path = farm(tmp_path, "    count: 1\n", head=f"defaults:\n  env:\n    '{key}': [1]\n")
            result = check(path)
            assert result.returncode == 2, result.stderr
            assert "env" in result.stderr
            assert secret[:10] not in result.stderr, result.stderr
            assert "Traceback" not in result.stderr
    path = farm(tmp_path, f"    count: 1\n    env:\n      'API_TOKEN={secret}': x\n")
    stderr = refused(path, 7, "executors.A.env: <name not shown> is not a usable environment variable name")
    assert secret[:10] not in stderr
