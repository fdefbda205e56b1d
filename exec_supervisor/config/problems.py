"""Config problems: the Problem record, ConfigError, and the sentences an operator reads.

Collects every problem with file, line and dotted key, suggests the key meant
("did you mean"), and masks values (and key names) that look like secrets.
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any, Mapping

from pydantic import (
    BaseModel,
    ValidationError,
)

from .constants import SHOWN_KEY_RE
from .errors import Problem
from .values import kind_of, show_value
from .yamlmarks import LineIndex, has_key


def _is_secret(path: tuple[Any, ...]) -> bool:
    """Values under these keys are never repeated in a message."""
    return (
        path[:2] == ("service", "auth")
        or path[:2] == ("defaults", "env")
        or (len(path) > 2 and path[0] == "executors" and path[2] == "env")
    )


def _key_text(part: Any, secret: bool) -> str:
    if isinstance(part, str) and re.fullmatch(r"[A-Za-z0-9_.@+-]*", part) and part:
        # A pasted token can look like a key: under auth and env, only short identifiers are shown.
        if not secret or SHOWN_KEY_RE.fullmatch(part):
            return part if len(part) <= 60 else part[:40] + "..."
        return "<key not shown>"
    if secret:
        return "<key not shown>"
    return show_value(part, 40)


def _secret_key_from(path: tuple[Any, ...]) -> int:
    """The index in path from which keys may be secrets (names under auth and env), or len(path)."""
    if path[:2] in (("service", "auth"), ("defaults", "env")):
        return 2
    if len(path) > 2 and path[0] == "executors" and path[2] == "env":
        return 3
    return len(path)


def _dotted(path: tuple[Any, ...]) -> str:
    start = _secret_key_from(path)
    return ".".join(_key_text(part, i >= start) for i, part in enumerate(path))


class Collector:
    def __init__(self, file: str, index: LineIndex) -> None:
        self.file = file
        self.index = index
        self.problems: list[Problem] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, path: tuple[Any, ...], message: str, line: int | None = None) -> None:
        problem = Problem(self.file, line or self.index.line(path), _dotted(path), message)
        if (problem.key, problem.message) not in self._seen:
            self._seen.add((problem.key, problem.message))
            self.problems.append(problem)

    def add_validation(
        self,
        prefix: tuple[Any, ...],
        error: ValidationError,
        model: type[BaseModel],
        data: Any,
        skip: tuple[str, ...] = (),
    ) -> set[Any]:
        """Report pydantic's errors; return the first-level keys that had one."""
        bad: set[Any] = set()
        for item in error.errors(include_url=False):
            if item["type"] in skip:
                continue
            path, owner = _resolve_loc(model, data, item["loc"])
            if path:
                bad.add(path[0])
            full = prefix + path
            value_at = _value_at(data, path)
            kind = item["type"]
            if kind == "extra_forbidden":
                known = list(getattr(owner, "model_fields", {}) or [])
                self.add(full, "unknown key" + did_you_mean(str(path[-1]), known))
            elif kind == "missing":
                self.add(full, "missing (required)")
            elif kind == "value_error":
                exc = (item.get("ctx") or {}).get("error")
                index = getattr(exc, "index", None)
                if index is not None and isinstance(value_at, list):
                    full = full + (index,)
                self.add(full, str(exc) if exc is not None else _clean_message(item["msg"]))
            else:
                secret = _is_secret(full)
                if "[key]" in item["loc"]:
                    message = f"the key must be text, not {kind_of(path[-1] if path else None)}"
                else:
                    message = _type_message(item, None if secret else item.get("input"), secret)
                self.add(full, message)
        return bad


def _resolve_loc(model: type[BaseModel], data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
    """pydantic's loc without its own tags (union branches, '[key]', ...), and the model owning the last key.

    A part is kept when it is a key of the data or a field of the model at that depth.
    """
    path: list[Any] = []
    current_model: Any = model
    owner: Any = model
    current = data
    for part in loc:
        fields = getattr(current_model, "model_fields", None) or {}
        in_model = isinstance(part, str) and part in fields
        if isinstance(current, dict) and has_key(current, part):
            child: Any = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            child = current[part]
        elif in_model:
            child = None
        else:
            continue
        path.append(part)
        owner = current_model
        annotation = fields[part].annotation if in_model else None
        current_model = _model_in(annotation)
        current = child
    return tuple(path), owner


def _model_in(annotation: Any) -> Any:
    """The model class an annotation names, also inside Optional[...] (None otherwise)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _value_at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        if isinstance(data, dict) and has_key(data, part):
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _type_message(item: Mapping[str, Any], value: Any, secret: bool) -> str:
    kind = item["type"]
    ctx = item.get("ctx") or {}
    got = f", got {kind_of(value)}" if not secret else ""
    scalar = isinstance(value, (str, int, float, bool))
    shown = "" if secret else f", not {show_value(value)}" if scalar else got
    if kind == "string_type":
        return f"expected text{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number{shown}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number{shown}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false{shown}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list{got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a map (key: value){got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}{shown}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        sign = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"must be {sign} {bound}{shown}"
    if kind == "string_too_short":
        return "must not be empty"
    return _clean_message(item["msg"])


def _clean_message(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message[0].lower() + message[1:] if message else message


def did_you_mean(key: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if known:
        return f"; known keys: {', '.join(sorted(known))}"
    return ""


# --------------------------------------------------------------------------- filesystem checks
