"""What a handler reads from a request: the JSON body, flags, numbers, counts, and targets.

Owns the validation of request input: every bad value becomes a 400/404 HttpError
with one line saying what and where. It must not change any state: resolving a
target reads the engine's instances and config, nothing more.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..supervise.instance import Instance
from .httpserver import HttpError as ApiError, Request

TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
EXEC_ID_RE = re.compile(r"ET-[A-Za-z][A-Za-z0-9_]*-[0-9]+")
MAX_DEPTH = 16  # of a request body: the API's own bodies are two levels deep


async def body_of(request: Request) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body)."""
    raw = await request.read()  # at most the server's max_body (413)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # [[[[...: the decoder recurses once per level
        raise ApiError(400, f"the request body is nested too deeply (at most {MAX_DEPTH} levels)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if _depth_over(data, MAX_DEPTH):  # what handlers (and error messages) walk stays shallow
        raise ApiError(400, f"the request body is nested too deeply (at most {MAX_DEPTH} levels)")
    return data


def _depth_over(data: Any, limit: int) -> bool:
    """True if data nests more than limit lists/objects deep (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))
    return False


def flag(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", ""):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ApiError(400, f"{name} must be true or false, got {value!r}")


def number(value: Any, name: str, default: float | None, low: float, high: float) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool):
        raise ApiError(400, f"{name} must be a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, f"{name} must be a number, got {value!r}") from None
    if not low <= result <= high:  # also refuses NaN
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return result


def count(value: Any, name: str, default: int, high: int) -> int:
    if value is None:
        return default
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"\d{1,9}", text):
        raise ApiError(400, f"{name} must be a whole number >= 0, got {value!r}")
    result = int(text)
    if result > high:
        raise ApiError(400, f"{name} must be at most {high}, got {result}")
    return result


def shorten(text: str) -> str:
    """Request text quoted back in an error, cut to 80 characters."""
    return text if len(text) <= 80 else text[:77] + "..."


def known_type(engine: Any, type_name: str) -> None:
    """404 unless type_name is an executor type of this farm."""
    if type_name not in engine.config.executors:
        known = ", ".join(engine.config.executors) or "none"
        raise ApiError(404, f"no executor type {type_name!r} in this farm (types: {known})")


def known_instance(engine: Any, exec_id: str) -> Instance:
    """The farm's instance of exec_id, or 404."""
    instance = engine.instances.get(exec_id)
    if instance is None:
        raise ApiError(404, f"no instance {exec_id} in this farm (see status)")
    return instance


def select(engine: Any, target: Any) -> list[Instance]:
    """`all`, a type name of the farm or an exec id of the farm; anything else is refused."""
    if not isinstance(target, str) or not target:
        raise ApiError(400, "target must be 'all', a type name (HelloWorld) or an exec id (ET-HelloWorld-3)")
    if target in ("all", "*"):
        return ordered(engine, engine.instances.values())
    if TYPE_RE.fullmatch(target):
        known_type(engine, target)
        return ordered(engine, (i for i in engine.instances.values() if i.spec.type == target))
    if EXEC_ID_RE.fullmatch(target):
        return [known_instance(engine, target)]
    raise ApiError(400, f"{shorten(target)!r} is not 'all', a type name or an exec id (ET-<Name>-<id>)")


def ordered(engine: Any, instances: Any) -> list[Instance]:
    """Instances in config order of their types, then by id."""
    order = {name: index for index, name in enumerate(engine.config.executors)}
    return sorted(instances, key=lambda i: (order.get(i.spec.type, len(order)), i.spec.type, i.spec.id))
