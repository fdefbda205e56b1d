"""Where a running daemon's control socket is, without reading its config.

A config being edited may be invalid; the operator must still reach the daemon that
runs it (`status`, `stop`, `shutdown`, and `reload` to hear what is wrong). So each
daemon records itself at start, keyed by its config file's real path, in a small
JSON file, and removes the file as it exits:

    $XDG_RUNTIME_DIR/exec-supervisor/<name>-<hash>.json   when the daemon's XDG_RUNTIME_DIR is set
    /run/exec-supervisor/<name>-<hash>.json               as root (systemd), otherwise
    <config folder>/.<config file name>.daemon.json       when neither can be written

A client looks in all three places. An entry whose daemon is gone (a SIGKILLed one
leaves its file) is recognised by its pid and start time and reported as stale.
This module owns those files only; it never reads the config and never talks to a daemon.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..digests import sha256_hex

ROOT_RUNTIME_DIR = "/run/exec-supervisor"


@dataclass(frozen=True)
class Entry:
    """One daemon's record: its socket, pid, and whether that pid still is that daemon."""

    file: Path
    config: str
    socket: str
    pid: int
    started: float
    stale: str | None  # why the entry no longer describes a live daemon, or None


def config_key(config_path: str | os.PathLike[str]) -> str:
    """The real path of the config: the same file reached through a symlink or `..` is one daemon."""
    return os.path.realpath(os.fspath(config_path))


def _entry_name(key: str) -> str:
    digest = sha256_hex(key.encode(errors="surrogateescape"), 16)
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in os.path.basename(key))[:40]
    return f"{stem}-{digest}.json"


def _fallback_file(key: str) -> Path:
    return Path(os.path.dirname(key)) / f".{os.path.basename(key)}.daemon.json"


def candidate_files(config_path: str | os.PathLike[str]) -> list[Path]:
    """Every place a daemon of this config may have recorded itself, most likely first."""
    key = config_key(config_path)
    name = _entry_name(key)
    dirs = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "exec-supervisor")
    dirs.append(Path(f"/run/user/{os.geteuid()}/exec-supervisor"))
    dirs.append(Path(ROOT_RUNTIME_DIR))
    seen: list[Path] = []
    for folder in dirs:
        if folder / name not in seen:
            seen.append(folder / name)
    seen.append(_fallback_file(key))
    return seen


def _write_places(key: str) -> list[Path]:
    places = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        places.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "exec-supervisor" / _entry_name(key))
    if os.geteuid() == 0:
        places.append(Path(ROOT_RUNTIME_DIR) / _entry_name(key))
    places.append(_fallback_file(key))
    return places


def _process_start(pid: int) -> float | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    try:
        return float(data[data.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def record(config_path: str | os.PathLike[str], socket_path: str | os.PathLike[str], **extra: Any) -> Path | None:
    """Write this daemon's entry (atomically) in the first place that takes it; None if none does."""
    key = config_key(config_path)
    pid = os.getpid()
    data = {"config": key, "socket": os.path.abspath(os.fspath(socket_path)), "pid": pid,
            "process_start": _process_start(pid), "started": time.time(), **extra}
    payload = json.dumps(data, separators=(",", ":")).encode()
    for place in _write_places(key):
        tmp = place.with_name(f".{place.name}.{pid}.tmp")
        try:
            place.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
            os.replace(tmp, place)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            continue
        if place != _fallback_file(key):  # a folder made for entries, never the config's own folder
            _prune(place.parent, keep=place)
        return place
    return None


def _prune(folder: Path, keep: Path) -> None:
    """Entries of SIGKILLed daemons in a shared runtime folder: removed when another daemon starts."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        place = folder / name
        if not name.endswith(".json") or place == keep:
            continue
        entry = _read(place)
        if entry is not None and entry.stale is not None and _process_start(entry.pid) is None:
            try:
                place.unlink()
            except OSError:
                pass


def remove(place: Path | None) -> None:
    """Remove our entry, unless a newer daemon of the same config has replaced it since."""
    if place is None:
        return
    try:
        data = json.loads(place.read_bytes())
        if data.get("pid") == os.getpid():
            place.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _read(place: Path) -> Entry | None:
    try:
        data = json.loads(place.read_bytes())
        pid, socket_path = int(data["pid"]), str(data["socket"])
        started, config = float(data.get("started") or 0), str(data.get("config") or "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    stale = None
    now_start = _process_start(pid)
    if now_start is None:
        stale = f"its daemon (pid {pid}) is no longer running"
    elif data.get("process_start") is not None and now_start != data.get("process_start"):
        stale = f"its daemon (pid {pid}) is no longer running (that pid is another process now)"
    elif not os.path.exists(socket_path):
        stale = f"its socket {socket_path} is gone"
    return Entry(place, config, socket_path, pid, started, stale)


def lookup(config_path: str | os.PathLike[str]) -> tuple[Entry | None, list[Entry]]:
    """The live entry of this config's daemon (or None), and the stale ones found on the way."""
    key = config_key(config_path)
    stale = []
    for place in candidate_files(config_path):
        entry = _read(place)
        if entry is None or (entry.config and entry.config != key):
            continue
        if entry.stale is None:
            return entry, stale
        stale.append(entry)
    return None, stale
