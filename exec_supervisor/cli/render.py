"""What the operator reads: the status table (coloured on a terminal), describe's sheet, scale notes.

Owns: turning the daemon's JSON answers into text. Must not: talk to the daemon or exit.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from ..control.render import describe_exit, human_bytes, human_duration, render_backlog
from .style import Painter



def not_running(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Desired instances that do not run: what `status` exits 4 for."""
    out = []
    for row in rows:
        desired = row.get("desired")
        if desired is None:  # an older daemon: everything not held stopped is desired
            desired = not row.get("held") and row.get("state") != "stopping"
        if desired and row.get("state") != "running":
            out.append(row)
    return out


def scale_note(summary: dict[str, Any]) -> str | None:
    if summary.get("scaled") is None:
        return None
    when = summary.get("scaled_at")
    since = time.strftime(" on %Y-%m-%d %H:%M", time.localtime(when)) if isinstance(when, (int, float)) else ""
    if summary["scaled"] != summary.get("configured"):
        text = f"scaled to {summary['scaled']}{since}, config says {summary['configured']}"
    else:
        text = f"ids {summary.get('ids')} set at runtime{since}, config says {summary.get('configured_ids')}"
    return text + f"; `scale {summary['type']} --reset` follows the config"


def describe_health(row: dict[str, Any], now: float) -> str:
    """ok / failing n of m / unhealthy / none, and how long ago the last heartbeat came."""
    text = str(row.get("health") or "none")
    beat = row.get("heartbeat")
    if isinstance(beat, (int, float)):
        text += f", beat {human_duration(max(0.0, now - beat))} ago"
    return text


def render_status(data: dict[str, Any], paint: Painter, states: set[str] | None = None) -> str:
    now = time.time()
    header: tuple[str, ...] = ("EXEC ID", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "LAST EXIT")
    instances = data.get("instances", [])
    # Health columns only where some instance has checks or a status text: narrow tables stay narrow.
    health = any(r.get("health") not in (None, "none") or r.get("status_text") for r in instances)
    if health:
        header = (*header, "HEALTH", "STATUS")
    rows = []
    for row in instances:
        state = row.get("state", "?")
        if states and state not in states:
            continue
        cpu = row.get("cpu_percent")
        rows.append((state, (
            row.get("exec_id", "?"), state + (" (held)" if row.get("held") else ""),
            str(row["pid"]) if row.get("pid") else "-",
            human_duration(row.get("uptime")),
            str(row.get("restarts", 0)),
            "-" if cpu is None else f"{cpu:.1f}",
            human_bytes(row.get("rss")),
            describe_exit(row.get("last_exit"), now),
            *((describe_health(row, now), row.get("status_text") or "-") if health else ()),
        )))
    lines = []
    if rows:
        widths = [max(len(header[i]), *(len(r[i]) for _, r in rows)) for i in range(len(header) - 1)]
        lines.append(paint("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[-1], bold=True))
        for state, cells in rows:
            padded = [c.ljust(w) for c, w in zip(cells, widths)] + [cells[-1]]
            padded[1] = paint.state(padded[1], state)
            lines.append("  ".join(padded))
        lines.append("")
    elif states:
        lines.append(f"no instance is {' or '.join(sorted(states))}")
        lines.append("")
    for summary in data.get("types", []):
        running, desired = summary["running"], summary["desired"]
        count = f"{running}/{desired} running"
        text = f"{summary['type']}: " + (paint(count, fg="green") if running == desired else
                                         paint(count, fg="yellow", bold=True))
        notes = []
        note = scale_note(summary)
        if note:
            notes.append(note)
        if summary.get("held"):
            notes.append(f"{summary['held']} held stopped")
        if notes:
            text += " (" + "; ".join(notes) + ")"
        lines.append(text)
    sup = data.get("supervisor", {})
    lines.append(
        f"exec-supervisor {sup.get('version', '?')} ({sup.get('name', '?')}): pid {sup.get('pid', '?')}, "
        f"{sup.get('state', '?')}, up {human_duration(sup.get('uptime'))}, "
        f"{sup.get('running', 0)}/{sup.get('desired', 0)} instances running, "
        f"CPU {sup.get('cpu_percent') if sup.get('cpu_percent') is not None else '-'}%, "
        f"RSS {human_bytes(sup.get('rss'))}"
    )
    lines.append(render_backlog(sup.get("forwarding"), sup.get("backlog")))
    for incident in data.get("incidents") or []:
        lines.append(paint("incident ", fg="red", bold=True) + incident_line(incident, now))
    return "\n".join(lines)


def incident_line(incident: dict[str, Any], now: float) -> str:
    """One incident: id, types, age, failures, what they have in common."""
    types = ", ".join(incident.get("types") or [])
    scope = "farm-wide, " if incident.get("scope") == "farm" else ""
    if incident.get("state") == "open":
        when = f"open for {human_duration(now - incident.get('opened', now))}, " \
               f"{incident.get('down', '?')}/{incident.get('of', '?')} down"
    else:
        when = f"resolved {human_duration(now - (incident.get('resolved') or now))} ago after " \
               f"{human_duration((incident.get('resolved') or now) - incident.get('opened', now))}"
    common = "; ".join(str(x) for x in (incident.get("exit"), incident.get("line")) if x)
    return (f"{incident.get('incident')} ({scope}{types}): {when}, {incident.get('failures', 0)} failures of "
            f"{incident.get('hit', 0)} instances, {incident.get('folded', 0)} events folded"
            + (f"; {common}" if common else ""))


def human_seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    for unit, size in (("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


def render_describe(info: dict[str, Any], paint: Painter) -> str:
    now = time.time()
    state = str(info.get("state", "?"))
    lines = [paint(str(info.get("exec_id")), bold=True) + "  " + paint.state(state, state)
             + (" (held stopped)" if info.get("held") else "")]

    def field(name: str, value: Any) -> None:
        lines.append(f"  {name + ':':<13}{value}")

    field("type", f"{info.get('type')} (id {info.get('id')})")
    field("pid", info.get("pid") or "-")
    field("uptime", human_duration(info.get("uptime")))
    field("restarts", info.get("restarts", 0))
    field("last exit", describe_exit(info.get("last_exit"), now))
    if info.get("cpu_percent") is not None or info.get("rss") is not None:
        cpu = info.get("cpu_percent")
        field("cpu / rss", f"{'-' if cpu is None else f'{cpu:.1f}%'} / {human_bytes(info.get('rss'))}")
    if info.get("health") is not None:
        field("health", describe_health(info, now) if isinstance(info["health"], str) else
              ", ".join(f"{k}={v}" for k, v in info["health"].items()))
    if info.get("status_text"):
        field("status", info["status_text"])
    field("command", shlex.join(info.get("argv") or []))
    field("cwd", info.get("cwd") or "-")
    field("log", info.get("log") or "-")
    policy = info.get("policy") or {}
    if policy:
        durations = ("start_seconds", "restart_window", "stop_timeout")
        field("policy", ", ".join(f"{k} {human_seconds(v) if k in durations else v}"
                                  for k, v in policy.items() if v is not None))
    env = info.get("env") or {}  # secret-looking values come masked by the daemon
    lines.append(f"  {'env:':<13}" + (info.get("env_note") or "") )
    width = max((len(name) for name in env), default=0)
    for name, value in env.items():
        lines.append(f"    {name:<{width}}  {value}")
    history = info.get("history") or []
    lines.append(f"  {'history:':<13}" + ("-" if not history else f"(last {len(history)} transitions)"))
    for item in history:
        when = item.get("time")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"
        to = str(item.get("state", "?"))
        reason = item.get("reason")
        lines.append(f"    {stamp}  {paint.state(to.ljust(8), to)}  {reason or ''}".rstrip())
    return "\n".join(lines)
