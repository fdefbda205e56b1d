"""The JSON the forwarder exchanges with the log API: the body of one event, and the answer's text.

Owns the wire format of one event (field names, level normalisation, the time
format, the message length cap) and how an answer's ``detail`` and
``Retry-After`` are read. Pure functions: no I/O, no state, no logging. It must
not know about the spool, the sender thread or credentials.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from . import messages
from .event import LEVEL_RANK, Event
from .httpclient import Answer

__all__ = ["MAX_MESSAGE_CHARS", "iso_time", "build_payload", "encode_payload", "payload_time",
           "mark_delayed", "answer_detail", "retry_after", "FOLDED_KEY", "FOLDED_MARK"]

# The service accepts any size; the sender caps what one event may carry.
MAX_MESSAGE_CHARS = 8000
_TRUNCATED = "\n... (truncated)"


def iso_time(timestamp: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-11-28T10:15:02.123+00:00."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


def build_payload(event: Event, language: str = "en") -> dict[str, Any]:
    """The JSON body for one event, without its seq (the spool assigns that)."""
    level = event.level if event.level in LEVEL_RANK else str(event.level).lower()
    if level not in LEVEL_RANK:
        level = "info"  # the service answers 422 to anything else
    message = messages.render(event, language)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - len(_TRUNCATED)] + _TRUNCATED
    payload: dict[str, Any] = {
        "level": level,
        "message": message,
        "event": event.event,
        "exec_id": event.exec_id,
        "type": event.type,
        "id": event.id,
        "pid": event.pid,
        "exit_code": event.exit_code,
        "signal": event.signal,
        "restarts": event.restarts,
        "runtime": None if event.runtime is None else round(event.runtime, 3),
        "restart_in": None if event.restart_in is None else round(event.restart_in, 3),
        "supervisor": event.supervisor,
        "time": iso_time(event.time),
    }
    if event.detail:
        payload["detail"] = event.detail
    return payload


# An event folded into an incident carries this key, always last: spooled, counted, never posted.
FOLDED_KEY = "folded_into"
# Inside a JSON string a quote is escaped, so these bytes can only be the top-level key.
FOLDED_MARK = b',"folded_into":"'


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The compact UTF-8 JSON the spool stores and the sender posts as is."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def payload_time(data: bytes, default: float) -> float:
    """The epoch time of an encoded payload (its ``time`` field), or `default` if it has none."""
    try:
        return datetime.fromisoformat(json.loads(data)["time"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return default


# An event sent this late says when it happened: the service's log page stamps arrival time.
DELAY_NOTE_SECONDS = 5.0
_TIME_KEY = b'"time":"'


def mark_delayed(data: bytes, now: float, language: str = "en", after: float = DELAY_NOTE_SECONDS) -> bytes:
    """`data` as is, or, when its event happened more than `after` seconds before `now`, with
    " (delayed 12 s, at 10:15:02)" at the end of its message's first line (local time; the date too
    when not today)."""
    start = data.find(_TIME_KEY)
    if start < 0:
        return data
    start += len(_TIME_KEY)
    try:
        when = datetime.fromisoformat(data[start:data.index(b'"', start)].decode()).timestamp()
    except (ValueError, UnicodeDecodeError):
        return data
    delay = now - when
    if delay <= after:
        return data
    try:
        payload = json.loads(data)
    except ValueError:
        return data
    message = payload.get("message")
    if not isinstance(message, str):
        return data
    local = datetime.fromtimestamp(when)
    stamp = local.strftime("%H:%M:%S" if local.date() == datetime.fromtimestamp(now).date() else "%Y-%m-%d %H:%M:%S")
    note = f"（延迟 {delay:.0f} 秒, 发生于 {stamp}）" if language == "zh" else f" (delayed {delay:.0f} s, at {stamp})"
    first, newline, rest = message.partition("\n")
    payload["message"] = first + note + newline + rest
    return encode_payload(payload)


def answer_detail(response: Answer) -> str:
    """The service's `detail`, shortened; never echoes request data."""
    try:
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else body
    except ValueError:
        detail = response.text
    if not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False, default=str)
    detail = " ".join(detail.split())
    return detail[:300] + ("..." if len(detail) > 300 else "")


def retry_after(response: Answer) -> float | None:
    """The answer's Retry-After in seconds (the delta-seconds form), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
