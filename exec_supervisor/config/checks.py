"""Filesystem checks of a config: programs, scripts, folders and placeholders.

The only part of config/ that looks at the machine, and it only looks (stat, access,
PATH lookup): nothing is created or run.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import string
import sys
from pathlib import Path
from typing import Any, Mapping


from .models import ExecutorType, placeholder_values
from .problems import Collector
from .values import show_path, show_value


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
    collector: Collector, path: tuple[Any, ...], items: list[str], allowed: tuple[str, ...], offset: int = 0
) -> None:
    """Every placeholder known, and every item fillable (so planned() can never fail)."""
    sample = placeholder_values("Type", 0, "http://127.0.0.1/")
    for index, item in enumerate(items):
        where = path + (index + offset,)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(item) if f is not None]
        except ValueError as exc:
            collector.add(where, f"{show_value(item)}: {exc} (write {{{{ and }}}} for literal braces)")
            continue
        unknown = [name for name in fields if name not in allowed]
        if unknown:
            collector.add(
                where,
                f"unknown placeholder {{{unknown[0]}}}; use {', '.join('{' + a + '}' for a in allowed)} "
                "(write {{ and }} for literal braces)",
            )
            continue
        try:
            item.format_map({k: v for k, v in sample.items() if k in allowed})
        except Exception as exc:  # e.g. {id:d} or {id.x}
            collector.add(where, f"{show_value(item)}: cannot fill its placeholders ({exc})")


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
        collector.add(where, f"script {show_path(path)} does not exist (relative to the type's cwd)")
