"""Config values: durations, sizes, signals, id ranges and commands, parsed from what YAML gives.

Pure functions; each raises ValueError with a sentence fit to follow "key: ".
"""

from __future__ import annotations

import math
import re
import reprlib
import shlex
import signal
from typing import Any

from .constants import MAX_DURATION, MAX_ID, MAX_ID_DIGITS, MAX_IDS, SHOWN_KEY_RE


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 200, 60


def show_value(value: Any, limit: int = 60) -> str:
    """A value for a message: repr, shortened (never used for secrets).

    reprlib, because a YAML alias can make a list that is huge when written out.
    """
    if isinstance(value, int) and value.bit_length() > 200:  # repr() of a 4300-digit int raises
        return f"<a number of about {int(value.bit_length() * 0.30103)} digits>"
    try:
        text = _REPR.repr(value)
    except Exception:  # pragma: no cover - a YAML value always has a repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_path(path: str) -> str:
    """A path for a message: its end matters most, so a long one loses its start."""
    text = repr(path)
    return text if len(text) <= 160 else "'..." + text[-157:]


def env_name_shown(name: Any) -> str:
    """An env var name for a message, or a mask: `API_TOKEN=sk-...` pasted as a name is a secret."""
    if isinstance(name, str) and SHOWN_KEY_RE.fullmatch(name):
        return name
    return "<name not shown>"


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- scalar types


_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|K|M|G)?\s*")
_SIZE_UNITS = {
    None: 1, "B": 1, "K": 1024, "KiB": 1024, "M": 1024**2, "MiB": 1024**2, "G": 1024**3,
    "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or '500ms' / '2s' / '1m' / '1h' / '1d'."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(
            f"expected a duration like 500ms, 2s, 1m, 1h or a number of seconds, got {kind_of(value)}"
        )
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if not match:
            raise ValueError(
                f"{show_value(value)} is not a duration; use a number of seconds or 500ms, 2s, 1m, 1h, 1d"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float is surely longer than a year
            seconds = math.inf
    if math.isinf(seconds) and not isinstance(value, float):
        raise ValueError("a number that large is longer than 365 days; that is surely a mistake")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{show_value(value)} is not a duration; it must be a finite number of seconds")
    if seconds < 0:
        raise ValueError(f"{show_value(value)}: a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"{show_value(value)} is longer than 365 days; that is surely a mistake")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a number or '64KiB' / '10MiB' / '1GiB'."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a size like 10MiB or a whole number of bytes, got {kind_of(value)}")
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if not match:
            raise ValueError(f"{show_value(value)} is not a size; use bytes or KiB, MiB, GiB (like 10MiB)")
        number = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
        if math.isinf(number):
            raise ValueError("a size that large is surely a mistake; use bytes or KiB, MiB, GiB (like 10MiB)")
        size = int(number)
    else:
        size = value
    if size < 0:
        raise ValueError(f"{show_value(value)}: a size cannot be negative")
    return size


def parse_signal(value: Any) -> int:
    """Signal number from TERM / SIGTERM / 15."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a signal name like TERM, got {kind_of(value)}")
    if isinstance(value, int):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise ValueError(f"{value} is not a signal number; use a name like TERM") from None
    name = value.strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    member = signal.Signals.__members__.get(name)
    if member is None or name in ("SIG_DFL", "SIG_IGN"):
        raise ValueError(f"{show_value(value)} is not a signal; use a name like TERM, INT, QUIT, HUP")
    return int(member)


class _IdError(ValueError):
    """An ids problem; `index` is the list item it concerns, if any."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def parse_ids(value: Any) -> tuple[int, ...]:
    """Ids from 7 | '0-3' | '0-3, 7' | [0, 2, '5-9'], checked for duplicates and overlaps."""
    items = value if isinstance(value, list) else [value]
    seen: dict[int, str] = {}
    for index, item in enumerate(items):
        where = index if isinstance(value, list) else None
        try:
            numbers = _expand_id_item(item)
        except ValueError as exc:
            raise _IdError(str(exc), where) from None
        if len(seen) + len(numbers) > MAX_IDS:
            raise _IdError(f"more than {MAX_IDS} ids in one type; that is surely a mistake", where)
        for number in numbers:
            if number in seen:
                raise _IdError(f"id {number} is given twice ({seen[number]} and {show_value(item)})", where)
            seen[number] = show_value(item)
    if not seen:
        raise _IdError("no ids given (to run no instance of this type, use count: 0)")
    return tuple(sorted(seen))


def _expand_id_item(item: Any) -> list[int]:
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise ValueError(f"expected an id (an integer >= 0) or a range like '0-3', got {kind_of(item)}")
    if isinstance(item, int):
        if item < 0:
            raise ValueError(f"id {show_value(item)} is negative; ids are integers >= 0")
        if item > MAX_ID:
            raise ValueError(_TOO_LARGE)
        return [item]
    numbers: list[int] = []
    for part in item.split(","):
        text = part.strip()
        if re.fullmatch(r"\d+", text):
            numbers.append(_bounded_id(text))
            continue
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
        if not match:
            raise ValueError(f"{show_value(item)} is not an id or a range like '0-3'")
        low, high = _bounded_id(match.group(1)), _bounded_id(match.group(2))
        if low > high:
            raise ValueError(f"range {show_value(text)} runs backwards")
        if high - low + 1 > MAX_IDS:
            raise ValueError(f"range {show_value(text)} holds more than {MAX_IDS} ids; that is surely a mistake")
        numbers.extend(range(low, high + 1))
    if len(set(numbers)) != len(numbers):
        twice = next(n for n in numbers if numbers.count(n) > 1)
        raise ValueError(f"id {twice} is given twice in {show_value(item)}")
    return numbers


_TOO_LARGE = (f"an id has at most {MAX_ID_DIGITS} digits (its log file name and the executor's --id "
              "must stay usable)")


def _bounded_id(text: str) -> int:
    digits = text.lstrip("0")
    if len(digits) > MAX_ID_DIGITS:  # before int(): no 4300-digit conversion, no huge number kept
        raise ValueError(_TOO_LARGE)
    return int(digits or "0")


def split_command(value: Any) -> Any:
    """A command or args: a list, or a string split the way a shell would."""
    if not isinstance(value, (str, list)):
        raise ValueError(f"expected a list, or a string split like a shell command line, got {kind_of(value)}")
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {show_value(value)} like a shell would: {exc}") from None
    if isinstance(value, list):
        # YAML turns `--port, 8080` into an int; a command line only holds text.
        value = [
            str(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else item
            for item in value
        ]
    return value


def no_nul(values: list[str]) -> list[str]:
    for index, item in enumerate(values):
        if "\x00" in item:
            raise ValueError(f"item {index} contains a NUL character")
    return values


def not_bool(value: Any) -> Any:
    # pydantic takes true as 1; in a config that is always a slip.
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {value}")
    return value


def none_is_empty(value: Any) -> Any:
    # A section whose keys are all commented out reads as null: treat it as empty.
    return {} if value is None else value


def path_text(value: Any) -> Any:
    if isinstance(value, str) and ("\x00" in value or not value.strip()):
        raise ValueError("expected a path" if not value.strip() else "the path contains a NUL character")
    return value
