"""Human renderings of control API answers, for the CLI: status tables, events, durations, sizes.

Owns the text an operator reads (the CLI's output, byte for byte). Pure functions of
the API's JSON: it must not talk to the daemon (client.py) or read anything else.
"""

from __future__ import annotations

import time
from typing import Any


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"  # pragma: no cover


def describe_exit(last_exit: dict[str, Any] | None, now: float | None = None) -> str:
    if not last_exit:
        return "-"
    if last_exit.get("error"):
        what = f"spawn failed: {last_exit['error']}"
    elif last_exit.get("status_unknown"):
        what = "status unknown (adopted)"
    elif last_exit.get("signal"):
        what = str(last_exit["signal"])
    else:
        what = f"exit {last_exit.get('exit_code')}"
    when = last_exit.get("time")
    if isinstance(when, (int, float)):
        what += f", {human_duration((now or time.time()) - when)} ago"
    return what


def render_backlog(forwarding: Any, backlog: dict[str, Any] | None) -> str:
    if not forwarding:
        return "event delivery: off (events.forward: false)"
    if not backlog:
        return "event delivery: no figures yet"
    if backlog.get("error"):
        return f"event delivery: figures unavailable ({backlog['error']})"
    oldest = backlog.get("oldest_age")
    text = f"event delivery backlog: {backlog.get('count', 0)} pending"
    if oldest is not None:
        text += f", oldest {human_duration(oldest)} old"
    text += f"; last error: {backlog.get('last_error') or '-'}"
    lines = backlog.get("executor_lines")
    if isinstance(lines, dict) and (lines.get("pending") or lines.get("relayed") or lines.get("dropped")):
        text += (f"\nexecutor log lines: {lines.get('pending', 0)} pending, {lines.get('relayed', 0)} relayed, "
                 f"{lines.get('dropped', 0)} dropped")
        books = lines.get("instances") or {}
        dropping = sorted(((b.get("dropped", 0), e) for e, b in books.items() if b.get("dropped")), reverse=True)
        if dropping:
            text += " (" + ", ".join(f"{e}: {n}" for n, e in dropping[:3]) + (", ..." if len(dropping) > 3 else "") + ")"
    return text


def render_event(event: dict[str, Any]) -> str:
    when = event.get("time")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"
    message = str(event.get("message") or event.get("event"))
    first, _, rest = message.partition("\n")
    text = f"{stamp} {event.get('level', '?'):<7} {first}"
    if rest:
        text += "\n" + "\n".join("    " + line for line in rest.splitlines())
    return text
