"""Runtime overrides (scaled id sets, instances held stopped) on disk, and the farm-wide bound.

Owns overrides.json in state_dir (read at start and by `check`, written before a command
takes effect) and the arithmetic of a scale: the ids it gives a type, and whether the farm
stays within supervisor.max_instances. Pure functions and file writes; it must not touch
instances or processes (the engine does, after a write here succeeded).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..config import MAX_ID

FILE = "overrides.json"


class CommandFailed(Exception):
    """An operator command that could not take effect; nothing was changed. The message says why."""


def write_json_atomic(path: Path, data: Any) -> None:
    """The file is the old one or the new one, never half of it, readable by the daemon's user only;
    a failed write leaves no temporary behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        with open(fd, "w") as handle:
            # dumps, not dump: dump takes json's pure-Python encoder and writes piece by piece
            handle.write(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_overrides(state_dir: Path, scaled: Mapping[str, tuple[int, ...]], scaled_at: Mapping[str, float],
                    held: set[str]) -> None:
    """Record the overrides, or raise CommandFailed (state_dir full or unwritable)."""
    path = state_dir / FILE
    try:
        write_json_atomic(path, {"scaled": {t: list(ids) for t, ids in scaled.items()},
                                 "scaled_at": dict(scaled_at), "held": sorted(held)})
    except OSError as exc:
        raise CommandFailed(f"cannot record the change in {path}: {exc.strerror or exc}; nothing was changed") from None


def read_overrides(state_dir: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, float], set[str]]:
    """The runtime overrides a daemon of state_dir keeps: (scaled ids, when scaled, held exec ids).

    Also read by `check`, to say which types a daemon would not run as configured."""
    try:
        data = json.loads((state_dir / FILE).read_text())
        scaled_data, when_data = data.get("scaled") or {}, data.get("scaled_at") or {}
        held_data = data.get("held") or []
    except (OSError, ValueError, AttributeError):
        return {}, {}, set()
    scaled: dict[str, tuple[int, ...]] = {}
    scaled_at: dict[str, float] = {}
    if isinstance(scaled_data, dict):
        for type_name, ids in scaled_data.items():
            if isinstance(ids, list):
                scaled[type_name] = tuple(sorted({i for i in ids if isinstance(i, int) and 0 <= i <= MAX_ID}))
                when = when_data.get(type_name) if isinstance(when_data, dict) else None
                if isinstance(when, (int, float)) and not isinstance(when, bool):
                    scaled_at[type_name] = float(when)
    held = {e for e in held_data if isinstance(e, str)} if isinstance(held_data, list) else set()
    return scaled, scaled_at, held


def iter_ids(ids: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(set(ids)))


def next_ids(type_name: str, current: tuple[int, ...], count: int | None = None,
             ids: Iterable[int] | None = None) -> tuple[int, ...]:
    """The ids a scale gives a type: ids as given, or a count: up adds after the highest, down drops the highest."""
    if ids is not None:
        return iter_ids(ids)
    assert count is not None and count >= 0
    if count <= len(current):
        return current[:count]
    start = (max(current) + 1) if current else 0
    if start + count - len(current) - 1 > MAX_ID:
        raise ValueError(f"{type_name}: scaling to {count} would need ids past {MAX_ID}, the largest an id "
                         "can be; give the ids instead")
    return current + tuple(range(start, start + count - len(current)))


def limit_problem(counts: Mapping[str, int], bound: int) -> str | None:
    """Why these instance counts per type go over supervisor.max_instances, or None."""
    total = sum(counts.values())
    if total <= bound:
        return None
    biggest = sorted(counts.items(), key=lambda item: -item[1])[:3]
    shown = ", ".join(f"{name}: {n}" for name, n in biggest) + (", ..." if len(counts) > 3 else "")
    return f"{total} instances in all ({shown}), more than supervisor.max_instances ({bound}); nothing was changed"
