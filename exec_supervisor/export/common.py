"""What every export target needs: id ranges, names, the run-one command line, errors.

Reads only config/. Must not: start anything, read secrets (only the names of the variables
that hold them), or depend on another target's module.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..config import FarmConfig


class ExportError(Exception):
    """A config this target cannot express, or bad options: one line for the operator, exit 2."""


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous (first, last) ranges of ids, ascending: [0-3, 10, 20-22] -> [(0,3), (10,10), (20,22)]."""
    ranges: list[tuple[int, int]] = []
    for value in sorted(set(ids)):
        if ranges and value == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], value)
        else:
            ranges.append((value, value))
    return ranges


def slug(text: str) -> str:
    """A DNS-label-friendly form: lower case, '_' and other characters as '-'."""
    value = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return value or "farm"


def farm_name(cfg: FarmConfig) -> str:
    """The farm's name in other engines: the config file's name without its suffix (farm.yaml -> farm)."""
    return slug(cfg.path.stem)


def executable() -> list[str]:
    """How the target should run this installation of exec-supervisor."""
    beside = Path(sys.executable).parent / "exec-supervisor"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("exec-supervisor")
    if found and "/shims/" not in found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "exec_supervisor"]


def raw_config(cfg: FarmConfig) -> dict[str, Any]:
    """The config file's own YAML as plain data (it has been validated already)."""
    with open(cfg.path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    return data if isinstance(data, dict) else {}


def auth_env_names(cfg: FarmConfig) -> list[str]:
    """The environment variables service.auth reads (never their values)."""
    auth = cfg.service.auth
    return [name for name in (auth.token_env, auth.username_env, auth.password_env) if name]


def max_stop_timeout(cfg: FarmConfig) -> float:
    return max((e.stop_timeout for e in cfg.executors.values()), default=10.0)


def ignored_hosts(cfg: FarmConfig) -> list[str]:
    """Types whose config has a hosts: map (a target that places instances itself ignores it)."""
    return [name for name, executor in cfg.executors.items() if getattr(executor, "hosts", None)]
