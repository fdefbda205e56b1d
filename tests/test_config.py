"""Config loading and validation (exec_supervisor.config).

Real files in tmp_path, no mocks. The table of bad configs is the heart of it:
each entry is a config, the dotted key and line the problem must be reported
at, and a fragment of the message.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from exec_supervisor.config import (
    Backoff,
    ConfigError,
    ExecutorType,
    FarmConfig,
    InstanceSpec,
    Problem,
    load,
    parse_duration,
    parse_ids,
    parse_signal,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
OK_TYPE = """\
executors:
  A:
    command: ["{python}", "-c", "pass"]
    count: 1
"""


def write(directory: Path, text: str, name: str = "farm.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path | str, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load(path, environ)
    assert caught.value.problems, "ConfigError without problems"
    assert str(caught.value) == "\n".join(map(str, caught.value.problems))
    return caught.value.problems


# --------------------------------------------------------------------------- the table of bad configs

# (id, config, line, dotted key, message fragment). Files named in SETUP exist next to the config.
BAD = [
    # ---- unknown keys, at every depth, with a suggestion
    ("top-level typo", "executor:\n  A: {}\n", 1, "executor", "did you mean 'executors'?"),
    ("top-level unknown", OK_TYPE + "plugins: []\n", 5, "plugins", "unknown key; known keys: control, defaults"),
    ("service typo", "service:\n  hots: http://x/\n" + OK_TYPE, 2, "service.hots", "did you mean 'host'?"),
    ("supervisor typo", "supervisor:\n  stat_dir: x\n" + OK_TYPE, 2, "supervisor.stat_dir", "did you mean 'state_dir'?"),
    ("defaults typo", "defaults:\n  restrat: never\n" + OK_TYPE, 2, "defaults.restrat", "did you mean 'restart'?"),
    ("executor typo", OK_TYPE + "    comand: x\n", 5, "executors.A.comand", "did you mean 'command'?"),
    ("backoff typo", OK_TYPE + "    backoff:\n      intial: 1s\n", 6, "executors.A.backoff.intial", "did you mean 'initial'?"),
    ("defaults backoff typo", "defaults:\n  backoff: {factr: 2}\n" + OK_TYPE, 2, "defaults.backoff.factr", "did you mean 'factor'?"),
    ("auth typo", "service:\n  auth:\n    tokenenv: X\n" + OK_TYPE, 3, "service.auth.tokenenv", "did you mean 'token_env'?"),
    ("events typo", "events:\n  min_lvl: info\n" + OK_TYPE, 2, "events.min_lvl", "did you mean 'min_level'?"),
    ("control typo", "control:\n  sockt: x.sock\n" + OK_TYPE, 2, "control.sockt", "did you mean 'socket'?"),
    # ---- wrong types
    ("name is a list", "supervisor:\n  name: [a]\n" + OK_TYPE, 2, "supervisor.name", "expected text, got a list"),
    ("state_dir is a number", "supervisor:\n  state_dir: 5\n" + OK_TYPE, 2, "supervisor.state_dir", "expected text"),
    ("section is a list", "events: [info]\n" + OK_TYPE, 1, "events", "expected a map"),
    ("defaults is text", "defaults: fast\n" + OK_TYPE, 1, "defaults", "expected a map of executor keys"),
    ("type is a list", "executors:\n  A: [1]\n", 2, "executors.A", "expected a map of executor keys"),
    ("env is a list", OK_TYPE + "    env: [A]\n", 5, "executors.A.env", "expected a map"),
    ("backoff is a number", OK_TYPE + "    backoff: 3\n", 5, "executors.A.backoff", "expected a map"),
    ("restart bad", OK_TYPE + "    restart: sometimes\n", 5, "executors.A.restart", "must be one of 'always', 'on-failure' or 'never'"),
    ("restart yaml bool", OK_TYPE + "    restart: no\n", 5, "executors.A.restart", "must be one of"),
    ("log_backups text", OK_TYPE + "    log_backups: many\n", 5, "executors.A.log_backups", "expected a whole number"),
    ("log_backups negative", OK_TYPE + "    log_backups: -1\n", 5, "executors.A.log_backups", "must be >= 0"),
    ("count is true", "executors:\n  A:\n    command: [\"{python}\"]\n    count: true\n", 4, "executors.A.count", "expected a whole number"),
    ("count negative", "executors:\n  A:\n    command: [\"{python}\"]\n    count: -1\n", 4, "executors.A.count", "must be >= 0"),
    ("max_restarts zero", OK_TYPE + "    max_restarts: 0\n", 5, "executors.A.max_restarts", "must be >= 1"),
    ("exit code out of range", OK_TYPE + "    success_exit_codes:\n      - 0\n      - 300\n", 7, "executors.A.success_exit_codes.1", "must be <= 255"),
    ("forward not bool", "events:\n  forward: maybe\n" + OK_TYPE, 2, "events.forward", "expected true or false"),
    ("language unknown", "events:\n  language: fr\n" + OK_TYPE, 2, "events.language", "must be one of 'en' or 'zh'"),
    ("jitter above 1", OK_TYPE + "    backoff: {jitter: 2}\n", 5, "executors.A.backoff.jitter", "must be <= 1"),
    ("factor infinite", OK_TYPE + "    backoff: {factor: .inf}\n", 5, "executors.A.backoff.factor", "finite"),
    ("socket_mode too big", "control:\n  socket_mode: 999\n" + OK_TYPE, 2, "control.socket_mode", "not an octal mode"),
    ("args item is a map", OK_TYPE + "    args:\n      - --id\n      - {a: 1}\n", 7, "executors.A.args.1", "expected text, got a map"),
    # ---- durations, sizes, signals
    ("duration unit", OK_TYPE + "    start_seconds: 2 weeks\n", 5, "executors.A.start_seconds", "'2 weeks' is not a duration"),
    ("duration negative", OK_TYPE + "    stop_timeout: -1\n", 5, "executors.A.stop_timeout", "cannot be negative"),
    ("duration list", OK_TYPE + "    restart_window: [1]\n", 5, "executors.A.restart_window", "expected a duration"),
    ("duration in defaults", "defaults:\n  stop_timeout: soon\n" + OK_TYPE, 2, "defaults.stop_timeout", "is not a duration"),
    ("duration in backoff", "defaults:\n  backoff:\n    initial: 1s\n    max: fast\n" + OK_TYPE, 4, "defaults.backoff.max", "'fast' is not a duration"),
    ("backoff max below initial", OK_TYPE + "    backoff: {initial: 1m, max: 2s}\n", 5, "executors.A.backoff", "max (2s) is below initial (60s)"),
    ("duration too long", OK_TYPE + "    restart_window: 400d\n", 5, "executors.A.restart_window", "longer than 365 days"),
    ("size junk", OK_TYPE + "    log_max_bytes: 10MB!\n", 5, "executors.A.log_max_bytes", "'10MB!' is not a size"),
    ("size float", OK_TYPE + "    log_max_bytes: 1.5\n", 5, "executors.A.log_max_bytes", "expected a size"),
    ("size in events", "events:\n  spool_max_bytes: lots\n" + OK_TYPE, 2, "events.spool_max_bytes", "is not a size"),
    ("signal name", OK_TYPE + "    stop_signal: NOPE\n", 5, "executors.A.stop_signal", "'NOPE' is not a signal"),
    ("signal number", OK_TYPE + "    stop_signal: 999\n", 5, "executors.A.stop_signal", "999 is not a signal number"),
    # ---- ids and count
    ("ids duplicate item", "executors:\n  A:\n    command: [\"{python}\"]\n    ids:\n      - 0-3\n      - 2\n", 6, "executors.A.ids.1", "id 2 is given twice ('0-3' and 2)"),
    ("ids overlapping ranges", "executors:\n  A:\n    command: [\"{python}\"]\n    ids: [0-3, 3-5]\n", 4, "executors.A.ids.1", "id 3 is given twice"),
    ("ids overlap in a string", "executors:\n  A:\n    command: [\"{python}\"]\n    ids: 0-3, 2\n", 4, "executors.A.ids", "id 2 is given twice"),
    ("ids backwards", "executors:\n  A:\n    command: [\"{python}\"]\n    ids: 3-1\n", 4, "executors.A.ids", "runs backwards"),
    ("ids negative", "executors:\n  A:\n    command: [\"{python}\"]\n    ids: [1, -1]\n", 4, "executors.A.ids.1", "id -1 is negative"),
    ("ids junk", "executors:\n  A:\n    command: [\"{python}\"]\n    ids: some\n", 4, "executors.A.ids", "'some' is not an id or a range"),
    ("ids empty", "executors:\n  A:\n    command: [\"{python}\"]\n    ids: []\n", 4, "executors.A.ids", "no ids given"),
    ("ids huge range", "executors:\n  A:\n    command: [\"{python}\"]\n    ids: 0-99999999999\n", 4, "executors.A.ids", "more than 100000 ids"),
    ("ids and count", "executors:\n  A:\n    command: [\"{python}\"]\n    ids: 0-3\n    count: 4\n", 5, "executors.A.count", "either ids or count, not both"),
    ("neither ids nor count", "executors:\n  A:\n    command: [\"{python}\"]\n", 2, "executors.A.ids", "missing; give ids (like 0-3) or count"),
    ("ids in defaults", "defaults:\n  ids: 0-3\n" + OK_TYPE, 2, "defaults.ids", "ids belongs in each executor type"),
    ("count in defaults", "defaults:\n  count: 2\n" + OK_TYPE, 2, "defaults.count", "count belongs in each executor type"),
    # ---- type names and the executors map
    ("name with dash", "executors:\n  Hello-World:\n    command: [\"{python}\"]\n    count: 1\n", 2, "executors.Hello-World", "must match [A-Za-z][A-Za-z0-9_]*"),
    ("name starts with digit", "executors:\n  1A:\n    command: [\"{python}\"]\n    count: 1\n", 2, "executors.1A", "must match"),
    ("name is a number", "executors:\n  7:\n    command: [\"{python}\"]\n    count: 1\n", 2, "executors.7", "type name 7 must match"),
    ("name with trailing newline", 'executors:\n  "A\\n":\n    command: ["{python}"]\n    count: 1\n', 2, "executors.'A\\n'", "must match"),
    ("empty executors", "service: {}\nexecutors: {}\n", 2, "executors", "no executor types"),
    ("null executors", "executors:\n", 1, "executors", "no executor types"),
    ("executors is a list", "executors:\n  - A\n", 1, "executors", "expected a map of executor types"),
    ("executors is false", "executors: false\n", 1, "executors", "expected a map of executor types (like HelloWorld: ...), got true/false"),
    ("executors is an empty list", "executors: []\n", 1, "executors", "got a list"),
    ("missing executors", "# a farm\nsupervisor:\n  name: x\n", 2, "executors", "missing; list the executor types"),
    ("null type", "executors:\n  A:\n", 2, "executors.A.command", "missing; give the program to run"),
    # ---- commands
    ("command missing", "executors:\n  A:\n    count: 1\n", 2, "executors.A.command", "missing; give the program"),
    ("command empty", "executors:\n  A:\n    command: ''\n    count: 1\n", 3, "executors.A.command", "command is empty"),
    ("command bad quoting", "executors:\n  A:\n    command: prog 'unclosed\n    count: 1\n", 3, "executors.A.command", "cannot split"),
    ("command is a map", "executors:\n  A:\n    command: {a: 1}\n    count: 1\n", 3, "executors.A.command", "expected a list, or a string"),
    ("command in defaults", "defaults:\n  command: [\"{python}\"]\n" + OK_TYPE, 2, "defaults.command", "command belongs in each executor type, not in defaults"),
    ("program does not exist", "executors:\n  A:\n    command: ./nope.sh --flag\n    count: 1\n", 3, "executors.A.command", "nope.sh' does not exist"),
    ("program not executable", "executors:\n  A:\n    command: [./plain.sh]\n    count: 1\n", 3, "executors.A.command.0", "plain.sh' is not executable (chmod +x?)"),
    ("program is a folder", "executors:\n  A:\n    command: [./sub]\n    count: 1\n", 3, "executors.A.command.0", "is a directory, not a program"),
    ("program not on PATH", "executors:\n  A:\n    command: no-such-program-4711 --x\n    count: 1\n", 3, "executors.A.command", "'no-such-program-4711' is not found on PATH"),
    ("program relative to cwd", "executors:\n  A:\n    command: [bin/tool.sh]\n    cwd: .\n    count: 1\n", 3, "executors.A.command.0", "bin/tool.sh' does not exist"),
    ("python script missing", "executors:\n  A:\n    command:\n      - \"{python}\"\n      - missing.py\n    count: 1\n", 5, "executors.A.command.1", "missing.py' does not exist"),
    ("placeholder as program", "executors:\n  A:\n    command: [\"{name}\"]\n    count: 1\n", 3, "executors.A.command.0", "only {python} may stand for the program"),
    # ---- placeholders
    ("unknown placeholder in args", OK_TYPE + "    args:\n      - --id\n      - \"{idd}\"\n", 7, "executors.A.args.1", "unknown placeholder {idd}; use {id}, {name}, {exec_id}, {service_host}"),
    ("python placeholder in args", OK_TYPE + "    args: [\"{python}\"]\n", 5, "executors.A.args.0", "unknown placeholder {python}"),
    ("unknown placeholder in command", "executors:\n  A:\n    command: [\"{python}\", \"-c\", \"pass\", \"{nme}\"]\n    count: 1\n", 3, "executors.A.command.3", "unknown placeholder {nme}"),
    ("placeholder in string command", "executors:\n  A:\n    command: '{python} -c pass {x}'\n    count: 1\n", 3, "executors.A.command", "unknown placeholder {x}"),
    ("placeholder bad format", OK_TYPE + "    args: [\"{id:d}\"]\n", 5, "executors.A.args.0", "cannot fill its placeholders"),
    ("placeholder unbalanced", OK_TYPE + "    args: [\"{id\"]\n", 5, "executors.A.args.0", "write {{ and }} for literal braces"),
    ("placeholder in defaults args", "defaults:\n  args: [\"{bogus}\"]\n" + OK_TYPE, 2, "defaults.args.0", "unknown placeholder {bogus}"),
    ("placeholder in string args", OK_TYPE + "    args: --id {ID}\n", 5, "executors.A.args", "unknown placeholder {ID}"),
    # ---- env, cwd, folders
    ("env reserved", OK_TYPE + "    env: {ET_ID: 3}\n", 5, "executors.A.env", "ET_ID is set by the supervisor"),
    ("env bad name", OK_TYPE + "    env: {\"A=B\": 1}\n", 5, "executors.A.env", "not a usable environment variable name"),
    ("env value nested", OK_TYPE + "    env:\n      TOKEN: [s3cr3t-value]\n", 6, "executors.A.env.TOKEN", "expected text"),
    ("cwd missing", OK_TYPE + "    cwd: nowhere\n", 5, "executors.A.cwd", "nowhere' does not exist"),
    ("cwd is a file", OK_TYPE + "    cwd: plain.sh\n", 5, "executors.A.cwd", "plain.sh' is not a directory"),
    ("cwd missing in defaults", "defaults:\n  cwd: nowhere\n" + OK_TYPE, 2, "defaults.cwd", "nowhere' does not exist"),
    ("state_dir is a file", "supervisor:\n  state_dir: plain.sh\n" + OK_TYPE, 2, "supervisor.state_dir", "exists and is not a directory"),
    # ---- service
    ("host not a URL", "service:\n  host: 127.0.0.1:8083\n" + OK_TYPE, 2, "service.host", "is not an http:// or https:// URL"),
    ("host bad port", "service:\n  host: http://x:99999/\n" + OK_TYPE, 2, "service.host", "is not an http:// or https:// URL"),
    ("host with credentials", "service:\n  host: http://me:hunter2@x/\n" + OK_TYPE, 2, "service.host", "holds credentials; put them in service.auth"),
    ("auth token pasted", "service:\n  auth:\n    token_env: ghp_0123456789abcdefghijABCDEFGHIJ\n" + OK_TYPE, 3, "service.auth.token_env", "not the secret itself (value not shown)"),
    ("auth all-caps token", "service:\n  auth:\n    token_env: AKIAIOSFODNN7EXAMPLE\n" + OK_TYPE, 3, "service.auth.token_env", "value not shown"),
    ("auth token as key", "service:\n  auth:\n    ghp_0123456789abcdefghijABCDEFGHIJ0123: 1\n" + OK_TYPE, 3, "service.auth.<key not shown>", "unknown key"),
    ("auth two methods", "service:\n  auth: {token_env: TOKEN, token_file: t.txt}\n" + OK_TYPE, 2, "service.auth", "use one of token_env, token_file"),
    ("auth half a pair", "service:\n  auth:\n    username_env: LOG_USER\n" + OK_TYPE, 2, "service.auth", "username_env and password_env go together"),
    ("auth token file not a path", "service:\n  auth:\n    token_file: [a]\n" + OK_TYPE, 3, "service.auth.token_file", "must be the path of a file"),
    # ---- the file itself
    ("duplicate key", "executors:\n  A:\n    command: [\"{python}\"]\n    count: 1\n    count: 2\n", 5, "executors.A.count", "key given twice (first on line 4)"),
    ("duplicate section", OK_TYPE + "executors:\n  B: {}\n", 5, "executors", "key given twice (first on line 1)"),
    ("yaml syntax", "executors:\n  A: [1,\n", 3, "", "not valid YAML"),
    ("yaml tab", "executors:\n\tA: 1\n", 2, "", "not valid YAML: found character that cannot start any token "
                                               "(a tab, column 1: YAML indents with spaces only)"),
    ("yaml bad date", "supervisor:\n  name: 2024-13-45\n" + OK_TYPE, 2, "", "not valid YAML: cannot read this value (month must be in 1..12)"),
    ("yaml unknown tag", "supervisor:\n  name: !!python/name:os.system\n" + OK_TYPE, 2, "", "not valid YAML"),
    ("yaml unhashable key", "executors:\n  ? [a]\n  : 1\n", 2, "", "not valid YAML: found unhashable key"),
    ("top level list", "- executors\n- A\n", 1, "", "the top level must be a map of sections"),
    ("top level scalar", "\n\njust some text\n", 3, "", "the top level must be a map of sections (service, supervisor, defaults, executors, events, control, http), not text"),
    ("empty file", "", 1, "", "the file is empty"),
    ("only comments", "# nothing here\n", 1, "", "the file is empty"),
]

SETUP_FILES = {"plain.sh": 0o644, "sub/": 0o755}


def _setup(directory: Path) -> None:
    for name, mode in SETUP_FILES.items():
        if name.endswith("/"):
            (directory / name).mkdir()
        else:
            (directory / name).write_text("#!/bin/sh\n")
            (directory / name).chmod(mode)


@pytest.mark.parametrize(
    "config, line, key, fragment", [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_config(tmp_path, monkeypatch, config, line, key, fragment):
    _setup(tmp_path)
    write(tmp_path, config)
    monkeypatch.chdir(tmp_path)  # so the file is shown as given: farm.yaml
    found = problems_of("farm.yaml")
    expected = f"farm.yaml:{line}: {key}: " if key else f"farm.yaml:{line}: "
    lines = [str(p) for p in found]
    assert any(text.startswith(expected) and fragment in text for text in lines), "\n".join(lines)
    for problem in found:
        assert "\n" not in str(problem)
        assert problem.file == "farm.yaml"
        assert problem.line is not None, str(problem)


def test_table_covers_many_cases():
    assert len(BAD) >= 100
    assert len({case[0] for case in BAD}) == len(BAD)


SECRETS = [
    ("service:\n  auth:\n    token_env: ghp_0123456789abcdefghijABCDEFGHIJ\n", "ghp_0123456789abcdefghijABCDEFGHIJ"),
    ("service:\n  auth:\n    token_file: [hunter2-hunter2]\n", "hunter2-hunter2"),
    ("service:\n  auth:\n    password_env: {s3cr3t-pass: 1}\n", "s3cr3t-pass"),
    ('service:\n  auth:\n    token_file: "xoxb-1234-abcd\\n"\n', "xoxb-1234-abcd"),
    ("service:\n  auth:\n    username_env: 12345678901234567890\n", "12345678901234567890"),
    ("service:\n  auth:\n    eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0: 1\n", "eyJhbGciOiJIUzI1NiJ9"),
    ("service:\n  host: https://user:hunter2pass@example.com/\n", "hunter2pass"),
    ("defaults:\n  env:\n    API_KEY: [sk-live-abcdef]\n", "sk-live-abcdef"),
]


@pytest.mark.parametrize("section, secret", SECRETS, ids=[s for _, s in SECRETS])
def test_secrets_are_never_echoed(tmp_path, section, secret):
    path = write(tmp_path, section + OK_TYPE)
    found = problems_of(path)
    assert found
    for problem in found:
        assert secret not in str(problem)
        # not even a good part of it
        assert secret[: len(secret) // 2] not in str(problem)


def test_all_problems_at_once(tmp_path):
    path = write(tmp_path, """\
        defaults:
          stop_timeout: soon
        executors:
          A:
            command: ["{python}"]
            ids: 0-3, 3
          B-2:
            command: ["{python}"]
            count: 1
        """)
    found = problems_of(path)
    assert [(p.line, p.key) for p in found] == [
        (2, "defaults.stop_timeout"),
        (6, "executors.A.ids"),
        (7, "executors.B-2"),
    ]


def test_many_problems_in_one_type_are_all_reported(tmp_path):
    path = write(tmp_path, """\
        executors:
          A:
            comand: x
            ids: [1, 1]
            restart: sometimes
            args: ["{nope}"]
            cwd: nowhere
        """)
    keys = {p.key for p in problems_of(path)}
    assert keys == {
        "executors.A.command", "executors.A.comand", "executors.A.ids.1",
        "executors.A.restart", "executors.A.args.0", "executors.A.cwd",
    }


def test_inherited_problem_is_reported_once_at_defaults(tmp_path):
    path = write(tmp_path, """\
        defaults:
          cwd: nowhere
          args: ["{bad}"]
        executors:
          A: {command: ["{python}"], count: 1}
          B: {command: ["{python}"], count: 1}
        """)
    assert [(p.line, p.key) for p in problems_of(path)] == [(2, "defaults.cwd"), (3, "defaults.args.0")]


def test_problems_are_sorted_by_line(tmp_path):
    path = write(tmp_path, "executors:\n  Z-1: {command: x, count: 1}\n  A-1: {command: y, count: 1}\n")
    lines = [p.line for p in problems_of(path)]
    assert lines == sorted(lines)


def test_problem_format():
    assert str(Problem("farm.yaml", 12, "executors.HelloWorld.ids", "no ids given")) == (
        "farm.yaml:12: executors.HelloWorld.ids: no ids given"
    )
    assert str(Problem("farm.yaml", None, "", "no such file")) == "farm.yaml: no such file"
    assert str(Problem("a\nb.yaml", 1, "k\tx", "m")) == "a\\nb.yaml:1: k\\tx: m"


# --------------------------------------------------------------------------- unreadable and non-YAML files


def test_missing_file(tmp_path):
    [problem] = problems_of(tmp_path / "nope.yaml")
    assert problem.message == "no such file"
    assert str(problem) == f"{tmp_path / 'nope.yaml'}: no such file"


def test_directory_instead_of_file(tmp_path):
    [problem] = problems_of(tmp_path)
    assert "is a directory" in problem.message


def test_binary_file(tmp_path):
    path = tmp_path / "farm.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    [problem] = problems_of(path)
    assert "not a YAML file" in problem.message


def test_nul_character_in_text(tmp_path):
    path = tmp_path / "farm.yaml"
    path.write_text("executors:\n  A: \x00\n")
    [problem] = problems_of(path)
    assert problem.line == 2 and "not valid YAML" in problem.message


def test_nul_in_path():
    [problem] = problems_of("farm\x00.yaml")
    assert "cannot read it" in problem.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, OK_TYPE)
    path.chmod(0)
    try:
        [problem] = problems_of(path)
    finally:
        path.chmod(0o644)
    assert "permission denied" in problem.message


def test_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "farm.yaml"
    path.write_text("\ufeff" + OK_TYPE, encoding="utf-8")
    assert load(path).ids_of("A") == (0,)


# --------------------------------------------------------------------------- good configs


def test_example_farm_loads():
    farm = load(REPO / "configs" / "farm.yaml")
    planned = farm.planned()
    assert [spec.exec_id for spec in planned] == [f"ET-HelloWorld-{i}" for i in range(4)]
    for spec in planned:
        assert spec.argv[0] == sys.executable
        assert (Path(spec.cwd) / spec.argv[1]).is_file()  # the script, relative to the type's cwd
        assert spec.argv[2:] == ("--service-host", farm.service.host, "--id", str(spec.id))
        assert dict(spec.env)["ET_EXEC_ID"] == spec.exec_id
    assert farm.state_dir == REPO / "configs" / ".exec-supervisor"
    assert farm.log_dir == REPO / "configs" / "logs"


def test_planned_instances_argv_and_env(tmp_path):
    path = write(tmp_path, """\
        service:
          host: http://example.com:8083
        executors:
          Hello:
            command: ["{python}", "-c", "pass", "{name}"]
            ids: [0, 2, "5-6"]
            env: {PORT: 80, DEBUG: true, EMPTY: null}
            args: ["--host", "{service_host}", "--id", "{id}", "--me={exec_id}", "{{literal}}", 8080]
        """)
    farm = load(path)
    assert isinstance(farm, FarmConfig)
    assert farm.service.host == "http://example.com:8083/"  # trailing slash added
    planned = farm.planned()
    assert [s.exec_id for s in planned] == ["ET-Hello-0", "ET-Hello-2", "ET-Hello-5", "ET-Hello-6"]
    spec = planned[1]
    assert isinstance(spec, InstanceSpec)
    assert spec.argv == (
        sys.executable, "-c", "pass", "Hello",
        "--host", "http://example.com:8083/", "--id", "2", "--me=ET-Hello-2", "{literal}", "8080",
    )
    assert dict(spec.env) == {
        "PORT": "80", "DEBUG": "true", "EMPTY": "",
        "ET_EXEC_ID": "ET-Hello-2", "ET_NAME": "Hello", "ET_ID": "2",
        "ET_SERVICE_HOST": "http://example.com:8083/",
    }
    assert spec.cwd == str(tmp_path)
    assert spec.launch_key == (spec.argv, spec.env, spec.cwd)


def test_default_args(tmp_path):
    farm = load(write(tmp_path, OK_TYPE))
    [spec] = farm.planned()
    assert spec.argv == (sys.executable, "-c", "pass", "--service-host", "http://127.0.0.1:8083/", "--id", "0")


def test_instance_spec_outside_the_configured_ids(tmp_path):
    farm = load(write(tmp_path, OK_TYPE))
    spec = farm.instance_spec("A", 42)
    assert spec.exec_id == "ET-A-42" and spec.argv[-1] == "42"


@pytest.mark.parametrize(
    "ids, expected",
    [
        ("ids: 7", (7,)),
        ("ids: 0-3", (0, 1, 2, 3)),
        ('ids: "0-3"', (0, 1, 2, 3)),
        ('ids: [0, 2, "5-9"]', (0, 2, 5, 6, 7, 8, 9)),
        ("ids: 0-1, 4", (0, 1, 4)),
        ('ids: ["3"]', (3,)),
        ("count: 4", (0, 1, 2, 3)),
        ("count: 0", ()),
        ("ids: 5\n    count: null", (5,)),
    ],
)
def test_id_forms(tmp_path, ids, expected):
    farm = load(write(tmp_path, f'executors:\n  A:\n    command: ["{{python}}"]\n    {ids}\n'))
    assert farm.ids_of("A") == expected
    assert [s.id for s in farm.planned()] == list(expected)


def test_defaults_and_merging(tmp_path):
    path = write(tmp_path, """\
        defaults:
          restart: on-failure
          stop_timeout: 2s
          stop_signal: INT
          env: {A: "1", B: "2"}
          backoff: {initial: 500ms, max: 1m}
          log_max_bytes: 1MiB
        executors:
          X:
            command: ["{python}"]
            count: 1
            env: {B: "3", C: "4"}
            backoff: {max: 2m}
            stop_timeout: 1h
          Y:
            command: ["{python}"]
            count: 1
            env:
            backoff:
        """)
    farm = load(path)
    x, y = farm.executors["X"], farm.executors["Y"]
    assert x.env == {"A": "1", "B": "3", "C": "4"}
    assert x.backoff == Backoff(initial=0.5, max=120.0, factor=2.0, jitter=0.1)
    assert x.stop_timeout == 3600.0 and y.stop_timeout == 2.0
    assert x.restart == y.restart == "on-failure"
    assert x.stop_signal == y.stop_signal == signal.SIGINT
    assert x.log_max_bytes == y.log_max_bytes == 1024**2
    assert y.env == {"A": "1", "B": "2"}  # an empty env/backoff keeps the defaults
    assert y.backoff == Backoff(initial=0.5, max=60.0)
    assert isinstance(x, ExecutorType)


def test_empty_sections_are_fine(tmp_path):
    path = write(tmp_path, "service:\nsupervisor:\ndefaults:\nevents:\ncontrol:\n" + OK_TYPE)
    farm = load(path)
    assert farm.service.host == "http://127.0.0.1:8083/"


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "work" / "bin").mkdir(parents=True)
    tool = conf / "work" / "bin" / "tool.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (conf / "secret").mkdir()
    (conf / "secret" / "token").write_text("x")
    write(conf, """\
        service:
          auth: {token_file: secret/token}
        supervisor:
          state_dir: state
          log_dir: ../logs
        control:
          socket: run/ctl.sock
        executors:
          T:
            command: bin/tool.sh --x
            cwd: work
            count: 1
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    farm = load(Path("..") / "conf" / "farm.yaml", environ={"PATH": ""})
    assert farm.base_dir == conf
    assert farm.state_dir == conf / "state"
    assert farm.log_dir == tmp_path / "logs"
    assert farm.socket_path == conf / "run" / "ctl.sock"
    assert farm.service.auth.token_file == str(conf / "secret" / "token")
    [spec] = farm.planned()
    assert spec.cwd == str(conf / "work")
    assert spec.argv == (str(tool), "--x", "--service-host", "http://127.0.0.1:8083/", "--id", "0")


def test_bare_program_is_looked_up_on_path(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "my-executor"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    path = write(tmp_path, "executors:\n  A:\n    command: my-executor --fast\n    count: 1\n")
    farm = load(path, environ={"PATH": str(bindir)})
    assert farm.programs["A"] == str(prog)
    assert farm.planned()[0].argv[:2] == (str(prog), "--fast")
    # the type's own PATH wins over the supervisor's
    path = write(tmp_path, f"executors:\n  A:\n    command: my-executor\n    count: 1\n    env: {{PATH: {bindir}}}\n")
    assert load(path, environ={"PATH": "/nonexistent"}).programs["A"] == str(prog)


def test_program_not_on_given_path(tmp_path):
    path = write(tmp_path, "executors:\n  A:\n    command: my-executor\n    count: 1\n")
    [problem] = problems_of(path, environ={"PATH": str(tmp_path)})
    assert problem.key == "executors.A.command" and "not found on PATH" in problem.message


def test_python_placeholder_and_string_command(tmp_path):
    (tmp_path / "run.py").write_text("pass\n")
    path = write(tmp_path, "executors:\n  A:\n    command: '{python} -u run.py --name {name}'\n    count: 1\n")
    [spec] = load(path).planned()
    assert spec.argv[:5] == (sys.executable, "-u", "run.py", "--name", "A")


def test_systemd_directories_are_used_when_not_configured(tmp_path):
    path = write(tmp_path, OK_TYPE)
    farm = load(path, environ={"STATE_DIRECTORY": "/var/lib/farm:/x", "LOGS_DIRECTORY": "/var/log/farm"})
    assert farm.state_dir == Path("/var/lib/farm") and farm.log_dir == Path("/var/log/farm")
    farm = load(path, environ={})
    assert farm.state_dir == tmp_path / ".exec-supervisor" and farm.log_dir == tmp_path / "logs"
    assert farm.socket_path == tmp_path / ".exec-supervisor" / "control.sock"


def test_socket_mode_forms(tmp_path):
    for text, mode in (("0660", 0o660), ("660", 0o660), ("'0o640'", 0o640), ("384", 0o600)):
        path = write(tmp_path, f"control:\n  socket_mode: {text}\n" + OK_TYPE)
        assert load(path).control.socket_mode == mode, text


def test_yaml_anchors_and_merge_keys(tmp_path):
    path = write(tmp_path, """\
        executors:
          A: &base
            command: ["{python}"]
            count: 2
            env: {X: "1"}
          B:
            <<: *base
            count: 3
        """)
    farm = load(path)
    assert farm.ids_of("B") == (0, 1, 2) and farm.executors["B"].env == {"X": "1"}


# --------------------------------------------------------------------------- parse_* helpers


@pytest.mark.parametrize(
    "value, seconds",
    [(0, 0.0), (3, 3.0), (1.5, 1.5), ("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0),
     ("1d", 86400.0), (" 2 s ", 2.0), ("10", 10.0), ("0.25s", 0.25)],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["2x", "-1s", "s", "", "1m30s", "2S", True, None, [1], -1, float("inf"), float("nan"), "400d"]
)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    "value, size",
    [(0, 0), (1000, 1000), ("64KiB", 65536), ("10MiB", 10 * 1024**2), ("1GiB", 1024**3),
     ("1.5KiB", 1536), ("10 MiB", 10 * 1024**2), ("100B", 100), ("1KB", 1000)],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["10MB!", "lots", "-1", -1, 1.5, True, None, [], "1TiB"])
def test_parse_size_rejects(value):
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize(
    "value, number",
    [("TERM", signal.SIGTERM), ("SIGTERM", signal.SIGTERM), ("term", signal.SIGTERM), ("INT", signal.SIGINT),
     ("HUP", signal.SIGHUP), ("KILL", signal.SIGKILL), (15, signal.SIGTERM), ("USR1", signal.SIGUSR1)],
)
def test_parse_signal(value, number):
    assert parse_signal(value) == number


@pytest.mark.parametrize("value", ["NOPE", "SIG", "SIG_IGN", "DFL", 0, 999, -1, True, None, 1.5, ""])
def test_parse_signal_rejects(value):
    with pytest.raises(ValueError):
        parse_signal(value)


@pytest.mark.parametrize(
    "value, ids",
    [(7, (7,)), (0, (0,)), ("0-3", (0, 1, 2, 3)), ([0, 2, "5-9"], (0, 2, 5, 6, 7, 8, 9)),
     ("4", (4,)), ([3, 1], (1, 3)), ("0-1, 5", (0, 1, 5)), (" 2 - 3 ", (2, 3)), ("5-5", (5,))],
)
def test_parse_ids(value, ids):
    assert parse_ids(value) == ids


@pytest.mark.parametrize(
    "value, fragment",
    [([0, 0], "id 0 is given twice"), (["0-3", "2-5"], "id 2 is given twice"), ("3-1", "runs backwards"),
     (-1, "negative"), ([], "no ids given"), ("a", "not an id"), (1.5, "expected an id"), (True, "expected an id"),
     (None, "expected an id"), ([[1]], "expected an id"), ("0-3,3", "given twice"), ("0-200000", "more than")],
)
def test_parse_ids_rejects(value, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        parse_ids(value)


# --------------------------------------------------------------------------- fuzz: only ConfigError, ever

FUZZ_VALUES = [
    None, True, False, 0, -1, 1, 7, 255, 256, 10**30, 1.5, -0.5, float("inf"), float("nan"),
    "", " ", "x", "0-3", "3-1", "2s", "10MiB", "TERM", "{python}", "{id}", "{", "}", "{id:d}", "{0}",
    "a\x00b", "\n", "~", "/", "..", "-", "http://x", "ftp://y", "0660", "ü", "A" * 300,
    [], [None], [1, "x"], [[1]], ["{python}", "-c", "pass"], {}, {"a": 1}, {"initial": "1s"},
    {"command": "x"}, {"token_env": "X"}, {"": None},
]

GOOD_TREE = {
    "service": {"host": "http://127.0.0.1:8083/", "auth": {"token_env": "LOG_API_TOKEN"}},
    "supervisor": {"name": "farm", "state_dir": "state", "log_dir": "logs"},
    "defaults": {
        "restart": "always", "success_exit_codes": [0], "start_seconds": 3,
        "backoff": {"initial": "1s", "max": "60s", "factor": 2, "jitter": 0.1},
        "max_restarts": None, "restart_window": "10m", "stop_signal": "TERM", "stop_timeout": "10s",
        "log_max_bytes": "10MiB", "log_backups": 5, "env": {"A": "1"}, "args": ["--id", "{id}"], "cwd": ".",
    },
    "executors": {
        "Hello": {"command": ["{python}", "-c", "pass"], "ids": [0, "2-3"], "env": {"B": "2"},
                  "args": ["--service-host", "{service_host}", "--id", "{id}"], "cwd": ".",
                  "backoff": {"max": "2m"}},
        "Other": {"command": "{python} -c pass", "count": 2},
    },
    "events": {"min_level": "info", "language": "en", "spool_max_bytes": "64MiB", "forward": True},
    "control": {"socket": "ctl.sock", "socket_mode": 0o600, "group": None},
}


def _positions(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _positions(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _positions(value, prefix + (index,))


def _replaced(tree, path, value):
    if not path:
        return value
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    copy[path[0]] = _replaced(tree[path[0]], path[1:], value)
    return copy


def _check_outcome(path: Path) -> None:
    try:
        farm = load(path)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            text = str(problem)
            assert "\n" not in text
            assert "internal error" not in problem.message, text
        return
    farm.planned()  # a config that loads can always be planned


def test_good_tree_loads(tmp_path):
    path = tmp_path / "farm.yaml"
    path.write_text(yaml.safe_dump(GOOD_TREE))
    assert len(load(path).planned()) == 5


def test_fuzz_every_position(tmp_path):
    rng = random.Random(4711)
    positions = list(_positions(GOOD_TREE))
    path = tmp_path / "farm.yaml"
    for position in positions:
        for value in rng.sample(FUZZ_VALUES, 6):
            path.write_text(yaml.dump(_replaced(GOOD_TREE, position, value), Dumper=DUMPER, allow_unicode=True))
            _check_outcome(path)
    # and unknown keys at every map
    for position in positions:
        node = GOOD_TREE
        for part in position:
            node = node[part]
        # env takes any variable name and executors any type name
        if isinstance(node, dict) and position[-1:] not in (("env",), ("executors",)):
            path.write_text(yaml.dump(_replaced(GOOD_TREE, position, {**node, "bogus_key": 1}), Dumper=DUMPER))
            found = problems_of(path)
            assert any(p.key.endswith("bogus_key") and "unknown key" in p.message for p in found), position


def test_fuzz_mangled_text(tmp_path):
    rng = random.Random(1234)
    text = (REPO / "configs" / "farm.yaml").read_text()
    (tmp_path / "configs").mkdir()
    (tmp_path / "executors").mkdir()
    (tmp_path / "executors" / "et_hello_world.py").write_text("pass\n")
    path = tmp_path / "configs" / "farm.yaml"
    path.write_text(text)
    assert len(load(path).planned()) == 4
    alphabet = ":-[]{}&*!|>'\"%@`#,? \t\n\x00\\0123456789abc"
    for _ in range(250):
        chars = list(text)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(chars))
            action = rng.random()
            if action < 0.4:
                del chars[at]
            elif action < 0.8:
                chars.insert(at, rng.choice(alphabet))
            else:
                chars[at] = rng.choice(alphabet)
        path.write_text("".join(chars))
        _check_outcome(path)
