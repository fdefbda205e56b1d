"""load(): a config file in, a validated FarmConfig out, or one ConfigError with every problem.

Reads the file (yamlmarks), merges defaults into each type, validates with the models,
runs the filesystem checks, and gathers problems; nothing else ever escapes it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from .checks import (absolute, check_instances, check_placeholders, check_script, default_max_instances, dir_problem,
                     not_a_dir_problem, resolve_program)
from .constants import MAX_NAME_LENGTH, NAME_RE, PER_TYPE_KEYS, PLACEHOLDERS
from .errors import ConfigError, Problem
from .farm import RECORDS, FarmConfig, probe_values
from .http import HttpConfig, http_problems
from .models import (SECTIONS, TOP_KEYS, ControlConfig, EventsConfig, ExecutorSettings, ExecutorType, ServiceConfig,
                     Strict, SupervisorConfig)
from .problems import Collector, did_you_mean
from .values import kind_of, show_value
from .yamlmarks import read_yaml


def _merge(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in own.items():
        # env, backoff and incidents are maps: a type adds to the defaults instead of replacing them.
        if key in ("env", "backoff", "incidents") and isinstance(merged.get(key), dict) and isinstance(value, (dict, type(None))):
            merged[key] = {**merged[key], **(value or {})}
        else:
            merged[key] = value
    return merged


def _check_defaults(collector: Collector, raw: Any) -> dict[str, Any]:
    """Validate `defaults`; return the part of it that is fine to merge into each type."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        collector.add(("defaults",), f"expected a map of executor keys (restart, backoff, ...), got {kind_of(raw)}")
        return {}
    usable = dict(raw)
    for key in PER_TYPE_KEYS:
        # Decision: command, ids and count are per type. Each type is a different
        # program with its own instances; a default command would make a type that
        # forgot its own silently run another type's program.
        if key in usable:
            del usable[key]
            collector.add(("defaults", key), f"{key} belongs in each executor type, not in defaults")
    try:
        ExecutorSettings.model_validate(usable)
    except ValidationError as exc:
        for key in collector.add_validation(("defaults",), exc, ExecutorSettings, usable):
            usable.pop(key, None)
    return usable


def _check_type(
    collector: Collector,
    type_name: Any,
    own: Any,
    defaults: dict[str, Any],
    base_dir: Path,
    environ: Mapping[str, str],
) -> tuple[ExecutorType, str, str | None] | None:
    path = ("executors", type_name)
    usable = True
    if not isinstance(type_name, str) or not NAME_RE.fullmatch(type_name):
        collector.add(
            path,
            f"type name {show_value(type_name)} must match [A-Za-z][A-Za-z0-9_]* "
            "(a '-' would make ET-<Name>-<id> ambiguous)",
        )
        usable = False
    elif len(type_name) > MAX_NAME_LENGTH:
        collector.add(path, f"type name is {len(type_name)} characters long, at most {MAX_NAME_LENGTH}: it is part "
                            "of every instance's log file name")
        usable = False
    if own is None:
        own = {}
    if not isinstance(own, dict):
        collector.add(path, f"expected a map of executor keys (command, ids, ...), got {kind_of(own)}")
        return None
    if "command" not in own:
        collector.add(path + ("command",), 'missing; give the program to run, like ["{python}", my_executor.py]')
    if own.get("ids") is None and own.get("count") is None:
        collector.add(path + ("ids",), "missing; give ids (like 0-3) or count (like 4)")
    elif own.get("ids") is not None and own.get("count") is not None:
        later = max(("ids", "count"), key=lambda k: collector.index.line(path + (k,)) or 0)
        collector.add(path + (later,), "give either ids or count, not both")
    merged = _merge(defaults, own)
    command_ok = "command" in own
    try:
        executor = ExecutorType.model_validate(merged)
    except ValidationError as exc:
        usable = False
        bad = collector.add_validation(path, exc, ExecutorType, merged,
                                       skip=("ids_or_count", "ids_and_count", "missing"))
        # Check what is left (command, cwd, args) too, so every problem shows in one go.
        partial = {k: v for k, v in merged.items() if k not in bad and k not in ("ids", "count")}
        partial.setdefault("command", ["-"])  # a stand-in, not checked below
        try:
            executor = ExecutorType.model_validate({**partial, "count": 0})
        except ValidationError:  # pragma: no cover - every bad key was taken out
            return None
        command_ok = "command" in own and "command" not in bad

    def where(key: str) -> tuple[Any, ...]:
        # A problem with an inherited value belongs to defaults (and is reported once).
        return path + (key,) if key in own or key not in defaults else ("defaults", key)

    cwd = absolute(base_dir, executor.cwd)
    problem = dir_problem(cwd)
    if problem:
        collector.add(where("cwd"), problem)
        usable = False
    if where("args")[0] != "defaults":  # inherited args are checked once, at defaults.args
        _check_argv(collector, path + ("args",), own.get("args"), executor.args, PLACEHOLDERS)
    if not command_ok:
        return None
    command_is_list = isinstance(own.get("command"), list)
    _check_argv(collector, path + ("command",), own.get("command"), executor.command[1:],
                PLACEHOLDERS + ("python",), offset=1)
    program = None
    if not problem:
        program_at = path + ("command", 0) if command_is_list else path + ("command",)
        program = resolve_program(collector, program_at, executor, cwd, environ)
    if program is not None:
        script_at = path + ("command", 1) if command_is_list else path + ("command",)
        check_script(collector, script_at, executor, cwd)
    if executor.hosts is not None:
        _check_hosts(collector, path, executor)
    probe_program = _check_health(collector, path, own, defaults, executor, cwd, environ, where)
    if program is None or not usable or probe_program is False:
        return None
    return executor.model_copy(update={"cwd": cwd}), program, probe_program


START_TIMEOUT_WHY = ("start_timeout needs ready: notify (with ready: start_seconds an instance counts as started "
                     "after start_seconds, so nothing is left to time out); add ready: notify or remove start_timeout")


def _check_health(
    collector: Collector,
    path: tuple[Any, ...],
    own: Mapping[str, Any],
    defaults: Mapping[str, Any],
    executor: ExecutorType,
    cwd: str,
    environ: Mapping[str, str],
    where: Any,
) -> str | None | bool:
    """start_timeout's precondition, and the probe's placeholders and program.

    Returns the probe's resolved program (None without an exec probe), or False on a problem.
    """
    if "start_timeout" in own and own["start_timeout"] is not None and executor.ready != "notify":
        collector.add(path + ("start_timeout",), START_TIMEOUT_WHY)
    probe = executor.probe
    if probe is None:
        return None
    at = where("probe")
    sample = probe_values(executor, "Type", 0, "http://127.0.0.1/")
    shadow = Collector(collector.file, collector.index)
    if probe.exec is not None:
        raw = (own.get("probe") or defaults.get("probe") or {}).get("exec")
        items = probe.exec[1:]
        allowed = tuple(sample)
        if isinstance(raw, list):
            check_placeholders(collector, at + ("exec",), items, allowed, 1, sample)
        else:
            check_placeholders(shadow, at + ("exec",), items, allowed, 0, sample)
        program_at = at + ("exec", 0) if isinstance(raw, list) else at + ("exec",)
        program = resolve_program(collector, program_at, executor.model_copy(update={"command": probe.exec}),
                                  cwd, environ)
        for problem in shadow.problems:
            collector.add(at + ("exec",), problem.message)
        return False if program is None or shadow.problems else program
    check_placeholders(shadow, at + ("http",), [probe.http or ""], tuple(sample), 0, sample)
    for problem in shadow.problems:
        collector.add(at + ("http",), problem.message)
    return False if shadow.problems else None


def _check_hosts(collector: Collector, path: tuple[Any, ...], executor: ExecutorType) -> None:
    """Each share within the type's ids, and no id in two shares (it would run on both hosts)."""
    known = set(executor.id_list)
    owner: dict[int, str] = {}
    for host, ids in (executor.hosts or {}).items():
        outside = [i for i in ids if i not in known]
        if outside:
            collector.add(path + ("hosts", host), f"ids {', '.join(map(str, outside[:10]))} are not in this "
                                                  "type's ids")
        twice = [(i, owner[i]) for i in ids if i in owner]
        if twice:
            collector.add(path + ("hosts", host), f"id {twice[0][0]} is also in the share of {twice[0][1]}; "
                                                  "each id runs on one host")
        for i in ids:
            owner.setdefault(i, host)


def _check_argv(
    collector: Collector,
    where: tuple[Any, ...],
    raw: Any,
    items: list[str],
    allowed: tuple[str, ...],
    offset: int = 0,
) -> None:
    """Placeholders of args/command: per list item, or at the key when it was one string."""
    if isinstance(raw, list):
        check_placeholders(collector, where, items, allowed, offset)
        return
    shadow = Collector(collector.file, collector.index)
    check_placeholders(shadow, where, items, allowed)
    for problem in shadow.problems:
        collector.add(where, problem.message)


def _check_section(
    collector: Collector, name: str, raw: Any, model: type[Strict]
) -> Strict | None:
    value = {} if raw is None else raw
    if not isinstance(value, dict):
        collector.add((name,), f"expected a map (key: value), got {kind_of(value)}")
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        collector.add_validation((name,), exc, model, value)
        return None


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> FarmConfig:
    """Read and validate a farm config; raise ConfigError listing every problem.

    Nothing but ConfigError leaves this function, whatever the file holds.
    """
    try:
        display = os.fspath(path)
        if isinstance(display, bytes):
            display = os.fsdecode(display)
    except Exception:
        display = repr(path)
    try:
        return _load(path, display, os.environ if environ is None else environ)
    except ConfigError:
        raise
    except Exception as exc:  # a bug here must still not become a traceback for the operator
        raise ConfigError(
            [Problem(display, None, "",
                     f"internal error while checking this config ({type(exc).__name__}); please report it")]
        ) from exc


def _load(path: Any, display: str, environ: Mapping[str, str]) -> FarmConfig:
    config_path = Path(os.path.abspath(path))
    data, index = read_yaml(config_path, display)
    collector = Collector(display, index)
    for dup_path, line, first in index.duplicates:
        collector.add(dup_path, f"key given twice (first on line {first}); keep one", line=line)
    if data is None:
        raise ConfigError([Problem(display, 1, "", "the file is empty; it needs at least an executors map")])
    if not isinstance(data, dict):
        raise ConfigError([
            Problem(display, index.line(()) or 1, "",
                    f"the top level must be a map of sections ({', '.join(TOP_KEYS)}), not {kind_of(data)}")
        ])

    for key in data:
        if key not in TOP_KEYS:
            collector.add((key,), "unknown key" + did_you_mean(str(key), TOP_KEYS))
    sections = {name: _check_section(collector, name, data.get(name), model)
                for name, model in {**SECTIONS, "http": HttpConfig}.items()}
    defaults = _check_defaults(collector, data.get("defaults"))

    base_dir = config_path.parent
    executors: dict[str, ExecutorType] = {}
    programs: dict[str, str] = {}
    probe_programs: dict[str, str] = {}
    raw_executors = data.get("executors")
    if "executors" not in data:
        collector.add(("executors",), "missing; list the executor types to run (see configs/farm.yaml)")
    elif raw_executors is None or raw_executors == {}:
        collector.add(("executors",), "no executor types; add at least one (see configs/farm.yaml)")
    elif not isinstance(raw_executors, dict):
        collector.add(("executors",),
                      f"expected a map of executor types (like HelloWorld: ...), got {kind_of(raw_executors)}")
    else:
        if "args" in defaults:
            try:
                default_args = ExecutorSettings.model_validate({"args": defaults["args"]}).args
            except ValidationError:  # pragma: no cover - bad args were taken out of defaults
                default_args = []
            _check_argv(collector, ("defaults", "args"), defaults["args"], default_args, PLACEHOLDERS)
        for type_name, own in raw_executors.items():
            checked = _check_type(collector, type_name, own, defaults, base_dir, environ)
            if checked is not None:
                executors[type_name], programs[type_name], probe_program = checked
                if probe_program:
                    probe_programs[type_name] = probe_program
        notify_types = [own for own in raw_executors.values()
                        if isinstance(own, dict) and own.get("ready", defaults.get("ready")) == "notify"]
        if defaults.get("start_timeout") is not None and defaults.get("ready") != "notify" and not notify_types:
            collector.add(("defaults", "start_timeout"), START_TIMEOUT_WHY)

    service = sections["service"]
    if isinstance(service, ServiceConfig) and service.auth.token_file:
        # Made absolute, not checked: the file may be provisioned after the farm starts
        # (the forwarder reads it when it needs it and reports a missing one, without
        # its content), and a missing log API token must not keep executors from running.
        token_file = absolute(base_dir, service.auth.token_file)
        service = service.model_copy(update={"auth": service.auth.model_copy(update={"token_file": token_file})})

    supervisor = sections["supervisor"]
    state_dir = log_dir = ""
    if isinstance(supervisor, SupervisorConfig):
        # systemd's StateDirectory= / LogsDirectory= when the config does not say.
        state_dir = absolute(base_dir, supervisor.state_dir or environ.get("STATE_DIRECTORY", "").split(":")[0]
                              or ".exec-supervisor")
        log_dir = absolute(base_dir, supervisor.log_dir or environ.get("LOGS_DIRECTORY", "").split(":")[0] or "logs")
        for key, folder in (("state_dir", state_dir), ("log_dir", log_dir)):
            if (problem := not_a_dir_problem(folder)):
                collector.add(("supervisor", key), problem)

    control = sections["control"]
    if isinstance(control, ControlConfig) and control.socket:
        control = control.model_copy(update={"socket": absolute(base_dir, control.socket)})

    http = sections["http"]
    if isinstance(http, HttpConfig):
        for key, message in http_problems(record_of(http)):
            collector.add(("http", key), message)
        if http.token_file:
            http = http.model_copy(update={"token_file": absolute(base_dir, http.token_file)})

    if collector.problems:
        raise ConfigError(sorted(collector.problems, key=lambda p: (p.line or 0, p.key)))
    assert isinstance(service, ServiceConfig) and isinstance(supervisor, SupervisorConfig)
    assert isinstance(control, ControlConfig) and isinstance(sections["events"], EventsConfig)
    assert isinstance(http, HttpConfig)
    farm = FarmConfig(
        path=config_path,
        base_dir=base_dir,
        service=record_of(service),
        name=supervisor.name,
        state_dir=Path(state_dir),
        log_dir=Path(log_dir),
        events=record_of(sections["events"]),
        control=record_of(control),
        executors={name: record_of(executor) for name, executor in executors.items()},
        programs=programs,
        http=record_of(http),
        max_instances=supervisor.max_instances or default_max_instances(),
        on_restart=supervisor.on_restart,
        probe_programs=probe_programs,
        containment=supervisor.containment,
        log_group=supervisor.log_group,
    )
    # What only a whole instance shows: its command line and environment as the kernel will get them.
    check_instances(collector, farm, raw_executors, defaults, environ, explicit=supervisor.max_instances is not None)
    if collector.problems:
        raise ConfigError(sorted(collector.problems, key=lambda p: (p.line or 0, p.key)))
    return farm


def record_of(model: Strict) -> Any:
    """The plain record (farm.py) of a validated model: the same fields, without pydantic."""
    record = RECORDS[type(model).__name__]
    values = {}
    for field in dataclasses.fields(record):
        value = getattr(model, field.name)
        values[field.name] = record_of(value) if isinstance(value, Strict) else value
    return record(**values)
