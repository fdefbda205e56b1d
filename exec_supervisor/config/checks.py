"""Filesystem checks of a config: programs, scripts, folders and placeholders.

The only part of config/ that looks at the machine, and it only looks (stat, access,
PATH lookup): nothing is created or run.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import stat
import string
import sys
from pathlib import Path
from typing import Any, Mapping


from .constants import MAX_ARG_STRLEN, MAX_FORMAT_WIDTH, MAX_ID, MAX_INSTANCES_CEILING
from .farm import ExecutorType, FarmConfig, placeholder_values
from .problems import Collector
from .values import env_name_shown, show_path, show_value


def absolute(base_dir: Path, text: str) -> str:
    """A config path made absolute against the config file's folder (symlinks kept)."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(text)))


def dir_problem(path: str) -> str | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"{show_path(path)} does not exist"
    except OSError as exc:
        return f"cannot use {show_path(path)}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{show_path(path)} is not a directory"
    if not os.access(path, os.X_OK):
        return f"{show_path(path)} cannot be entered (permission denied)"
    return None


def not_a_dir_problem(path: str) -> str | None:
    """For folders the daemon creates: fine if missing, wrong if something else is there."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot use {show_path(path)}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{show_path(path)} exists and is not a directory"
    return None


def _program_problem(program: str) -> str | None:
    try:
        info = os.stat(program)
    except FileNotFoundError:
        return f"{show_path(program)} does not exist"
    except OSError as exc:
        return f"cannot use {show_path(program)}: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return f"{show_path(program)} is a directory, not a program"
    if not os.access(program, os.X_OK):
        return f"{show_path(program)} is not executable (chmod +x?)"
    return None


# --------------------------------------------------------------------------- the checks


def check_placeholders(
    collector: Collector, path: tuple[Any, ...], items: list[str], allowed: tuple[str, ...], offset: int = 0,
    sample: Mapping[str, str] | None = None,
) -> None:
    """Every placeholder known, and every item fillable (so planned() can never fail)."""
    sample = sample or placeholder_values("Type", 0, "http://127.0.0.1/")
    for index, item in enumerate(items):
        where = path + (index + offset,)
        try:
            parsed = [(f, spec or "") for _, f, spec, _ in string.Formatter().parse(item) if f is not None]
        except ValueError as exc:
            collector.add(where, f"{show_value(item)}: {exc} (write {{{{ and }}}} for literal braces)")
            continue
        fields = [f for f, _ in parsed]
        spec_problem = next((p for p in (_spec_problem(f, spec) for f, spec in parsed) if p), None)
        if spec_problem:
            collector.add(where, spec_problem)
            continue
        unknown = [name for name in fields if name not in allowed]
        if unknown:
            shown = [a for a in allowed if not a.isupper()]  # env names show once, in lower case
            collector.add(
                where,
                f"unknown placeholder {{{unknown[0]}}}; use {', '.join('{' + a + '}' for a in shown)} "
                "(write {{ and }} for literal braces)",
            )
            continue
        try:
            item.format_map({k: v for k, v in sample.items() if k in allowed})
        except Exception as exc:  # e.g. {id:d} or {id.x}
            collector.add(where, f"{show_value(item)}: cannot fill its placeholders ({exc})")


def _spec_problem(field: str, spec: str) -> str | None:
    """A format spec may pad ({id:0>6}); a huge width would allocate without bound at each spawn."""
    if "{" in spec or "}" in spec:
        return f"{{{field}:...}}: a placeholder's format spec cannot hold another placeholder"
    for number in re.findall(r"\d+", spec):
        if len(number) > 6 or int(number) > MAX_FORMAT_WIDTH:
            return (f"{{{field}:{spec[:20]}{'...' if len(spec) > 20 else ''}}}: a width or precision over "
                    f"{MAX_FORMAT_WIDTH} is surely a mistake")
    return None


def resolve_program(
    collector: Collector,
    where: tuple[Any, ...],
    executor: ExecutorType,
    cwd: str,
    environ: Mapping[str, str],
) -> str | None:
    raw = executor.command[0]
    if raw == "{python}":
        if not sys.executable:
            collector.add(where, "{python}: the running interpreter's path is unknown; name a program")
            return None
        return sys.executable
    if "{" in raw or "}" in raw:
        collector.add(where, f"{show_value(raw)}: only {{python}} may stand for the program")
        return None
    if "/" in raw:
        program = os.path.normpath(os.path.join(cwd, os.path.expanduser(raw)))
    else:
        search = executor.env.get("PATH", environ.get("PATH", os.defpath))
        try:
            found = shutil.which(raw, path=search)
        except (OSError, ValueError):  # pragma: no cover - defensive
            found = None
        if found is None:
            collector.add(where, f"{show_value(raw)} is not found on PATH")
            return None
        program = os.path.abspath(found)
    problem = _program_problem(program)
    if problem:
        collector.add(where, problem)
        return None
    return program


def check_script(
    collector: Collector, where: tuple[Any, ...], executor: ExecutorType, cwd: str
) -> None:
    """`{python} script.py`: the script must exist too, or every instance dies at once."""
    program = os.path.basename(executor.command[0])
    if executor.command[0] != "{python}" and not re.fullmatch(r"python[0-9.]*", program):
        return
    if len(executor.command) < 2:
        return
    script = executor.command[1]
    if script.startswith("-") or "{" in script:
        return
    path = os.path.normpath(os.path.join(cwd, os.path.expanduser(script)))
    try:
        is_file = os.path.isfile(path)
    except (OSError, ValueError):
        is_file = False
    if not is_file:
        relative = "" if os.path.isabs(os.path.expanduser(script)) else " (relative to the type's cwd)"
        collector.add(where, f"script {show_path(path)} does not exist{relative}")


# --------------------------------------------------------------------------- whole instances


def default_max_instances() -> int:
    """supervisor.max_instances when the config leaves it out: a quarter of the tasks this machine allows.

    The tightest of kernel.pid_max, kernel.threads-max and the soft RLIMIT_NPROC, divided by 4:
    each instance is budgeted four tasks (its main process and a few threads or children), and
    the rest of the machine keeps room to fork. At most MAX_INSTANCES_CEILING.
    """
    limits = []
    for name in ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"):
        try:
            with open(name) as handle:
                limits.append(int(handle.read().strip()))
        except (OSError, ValueError):
            continue
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY and soft > 0:
        limits.append(soft)
    tasks = min(limits) if limits else 32768
    return max(1, min(MAX_INSTANCES_CEILING, tasks // 4))


def _arg_max() -> int:
    try:
        value = os.sysconf("SC_ARG_MAX")
    except (OSError, ValueError):  # pragma: no cover - Linux always answers
        value = -1
    return value if value > 0 else 2 * 1024 * 1024


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape")) + 1  # with its NUL


def check_instances(
    collector: Collector,
    farm: FarmConfig,
    raw_executors: Any,
    defaults: Mapping[str, Any],
    environ: Mapping[str, str],
    explicit: bool,
) -> None:
    """What can only fail at spawn: E2BIG (one string over MAX_ARG_STRLEN, or argv + environment
    over ARG_MAX), and more instances than supervisor.max_instances.

    Measured with the largest id there can be, so a scale to any id spawns as well.
    """
    inherited = sum(_size(f"{k}={v}") + 8 for k, v in environ.items())
    arg_max = _arg_max()
    for type_name, executor in farm.executors.items():
        own = raw_executors.get(type_name) if isinstance(raw_executors, dict) else None
        own = own if isinstance(own, dict) else {}

        def where(key: str, *rest: Any) -> tuple[Any, ...]:
            inherited_key = key not in own and key in defaults
            return (("defaults", key) if inherited_key else ("executors", type_name, key)) + rest

        try:
            spec = farm.instance_spec(type_name, MAX_ID)
        except Exception as exc:  # pragma: no cover - placeholders were checked to fill
            collector.add(("executors", type_name), f"cannot build its command line ({type(exc).__name__})")
            continue
        n_command = len(executor.command) - 1
        oversized = False
        for index, arg in enumerate(spec.argv[1:]):
            size = _size(arg)
            if size > MAX_ARG_STRLEN:
                oversized = True
                at = (where("command", index + 1) if index < n_command
                      else where("args", index - n_command) if isinstance(own.get("args", defaults.get("args")), list)
                      else where("args"))
                collector.add(at, f"an argument of {size - 1} bytes (once filled in); the kernel refuses one over "
                                  f"{MAX_ARG_STRLEN - 1} bytes (E2BIG)")
        for name, value in executor.env.items():
            size = _size(f"{name}={value}")
            if size > MAX_ARG_STRLEN:
                oversized = True
                at = ("executors", type_name, "env", name) if name in (own.get("env") or {}) else ("defaults", "env", name)
                collector.add(at, f"the variable {env_name_shown(name)} is {size - 1} bytes long (value not shown); "
                                  f"the kernel refuses one over {MAX_ARG_STRLEN - 1} bytes (E2BIG)")
        if oversized:
            continue
        env = dict(environ)
        env.update(spec.env)
        total = sum(_size(a) + 8 for a in spec.argv) + sum(_size(f"{k}={v}") + 8 for k, v in env.items()) + 16
        if total > arg_max:
            collector.add(("executors", type_name),
                          f"an instance's command line and environment take {total} bytes, over the kernel's "
                          f"limit of {arg_max} (ARG_MAX; the supervisor's own environment takes {inherited} of it): "
                          "it could never start (E2BIG)")
    counts = {name: len(farm.ids_of(name)) for name in farm.executors}  # with hosts:, this host's share
    total = sum(counts.values())
    if total > farm.max_instances:
        biggest = sorted(counts.items(), key=lambda item: -item[1])[:3]
        shown = ", ".join(f"{name}: {n}" for name, n in biggest) + (
            ", ..." if len(farm.executors) > len(biggest) else "")
        origin = "supervisor.max_instances" if explicit else "supervisor.max_instances, this machine's default"
        collector.add(("executors",), f"{total} instances in all ({shown}), more than {farm.max_instances} "
                                      f"({origin}; see the README)")
