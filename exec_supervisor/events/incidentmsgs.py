"""Sentences for the incident events (incident_opened, incident_digest, incident_resolved), en and zh.

Pure: reads an Event's detail (made by supervise/incidents.py) and returns text; messages.py
calls it. Never reads anything else.
"""

from __future__ import annotations

from typing import Any

from .event import Event


def _s(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    if value < 10:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value:.0f}s"
    return f"{value / 3600:.1f}h"


def _what(d: dict[str, Any], zh: bool) -> str:
    types = d.get("types") or []
    if d.get("scope") == "farm":
        return (f"全局事件 {d.get('incident')} ({len(types)} 个类型同时失败: {', '.join(types)})" if zh
                else f"farm-wide incident {d.get('incident')} ({len(types)} types failing together: {', '.join(types)})")
    return f"{types[0] if types else '?'} 的事件 {d.get('incident')}" if zh \
        else f"incident {d.get('incident')} of {types[0] if types else '?'}"


def _seqs(d: dict[str, Any], zh: bool) -> str:
    folded = d.get("folded") or 0
    if not folded:
        return ""
    if zh:
        return f"; 合并了 {folded} 条实例事件 (seq {d.get('first_seq')}-{d.get('last_seq')})"
    return f"; {folded} instance events folded into this (seq {d.get('first_seq')}-{d.get('last_seq')})"


def _common(d: dict[str, Any], zh: bool) -> str:
    parts = []
    if d.get("exit"):
        parts.append(f"{d['exit']} ({d.get('exit_count')}x)")
    if d.get("line"):
        parts.append(f"{'最后一行' if zh else 'last line'} {d['line']!r} ({d.get('line_count')}x)")
    example = d.get("example") or {}
    shown = ""
    if example:
        shown = (f"; {'例如' if zh else 'e.g.'} {example.get('exec_id')}: {example.get('exit')}"
                 + (f", {example['line']!r}" if example.get("line") else ""))
    if not parts:
        return shown
    return ("; 共同点: " if zh else "; in common: ") + ", ".join(parts) + shown


def en(e: Event) -> str:
    d = e.detail
    what = _what(d, False)
    if e.event == "incident_opened":
        tail = f"; instance events are summarised every {_s(d.get('digest_every'))}" \
            if d.get("forward") == "digest" else ""
        return (f"{what} opened: {d.get('failed')} of {d.get('of')} instances failed within {_s(d.get('within'))} "
                f"({d.get('failures')} failures){_common(d, False)}. Restarts are paced (probe first){tail}")
    if e.event == "incident_digest":
        return (f"{what} still open after {_s(d.get('open_for'))}: {d.get('failures')} failures since the last "
                f"summary ({d.get('total_failures')} in all), {d.get('down')} of {d.get('of')} instances down now, "
                f"restarts spaced {_s(d.get('restart_spacing'))}{_seqs(d, False)}")
    ids = d.get("exec_ids") or []
    return (f"{what} resolved after {_s(d.get('duration'))}: {d.get('failures')} failures in all, "
            f"{len(ids)} instances hit ({', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''})")


def zh(e: Event) -> str:
    d = e.detail
    what = _what(d, True)
    if e.event == "incident_opened":
        tail = f"; 实例事件每 {_s(d.get('digest_every'))} 汇总一次" if d.get("forward") == "digest" else ""
        return (f"{what} 开始: {d.get('of')} 个实例中有 {d.get('failed')} 个在 {_s(d.get('within'))} 内失败 "
                f"(共 {d.get('failures')} 次){_common(d, True)}。重启已放缓 (先试一个){tail}")
    if e.event == "incident_digest":
        return (f"{what} 已持续 {_s(d.get('open_for'))}: 自上次汇总以来失败 {d.get('failures')} 次 "
                f"(累计 {d.get('total_failures')} 次), 当前 {d.get('of')} 个实例中 {d.get('down')} 个未运行, "
                f"重启间隔 {_s(d.get('restart_spacing'))}{_seqs(d, True)}")
    ids = d.get("exec_ids") or []
    return (f"{what} 已恢复, 持续 {_s(d.get('duration'))}: 累计失败 {d.get('failures')} 次, "
            f"受影响实例 {len(ids)} 个 ({', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''})")


def folded_note(e: Event, zh_text: bool) -> str:
    """Appended to a folded instance event's first line (the daemon's log, the control API)."""
    seq = f", seq {e.seq}" if e.seq is not None else ""
    return f" (已合并到事件 {e.folded}{seq})" if zh_text else f" (folded into incident {e.folded}{seq})"
