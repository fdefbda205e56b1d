"""Human sentences for events, in English (default) and Chinese (events.language: zh).

WeFastAPI's UI and the seed executor speak Chinese, so operators of a Chinese
service can have the supervisor's lines match their executors' own.
"""

from __future__ import annotations

from typing import Callable

from . import incidentmsgs
from .event import Event


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 10:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value:.0f}s"
    return f"{value / 3600:.1f}h"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _how_ended(e: "Event", zh: bool) -> str:
    if e.detail.get("error"):  # it never ran: the reason it could not start
        return str(e.detail["error"])
    if e.detail.get("status_unknown"):  # adopted: not our child, so nobody can read its exit status
        return "退出状态未知 (监督进程重启后接管的进程)" if zh else "exit status unknown (adopted after a supervisor restart)"
    if e.signal:
        return f"被信号 {e.signal} 终止" if zh else f"killed by {e.signal}"
    return f"退出码 {e.exit_code}" if zh else f"exit code {e.exit_code}"


def _plan(e: "Event", zh: bool) -> str:
    if e.restart_in is None:
        return "不再重启" if zh else "not restarting"
    if zh:
        return f"{_seconds(e.restart_in)} 后重启 (第 {e.restarts} 次重启)"
    return f"restarting in {_seconds(e.restart_in)} (restart {e.restarts})"


_LEVEL_ZH = {"debug": "调试", "info": "信息", "warning": "警告", "error": "错误"}


def _by_level(counts: object, zh: bool) -> str:
    if not isinstance(counts, dict) or not counts:
        return "?"
    if zh:
        return ", ".join(f"{_LEVEL_ZH.get(level, level)} {n}" for level, n in counts.items())
    return ", ".join(f"{n} {level}" for level, n in counts.items())


def _seq_range(d: dict) -> str:
    first, last = d.get("first_seq"), d.get("last_seq")
    if first is None or last is None:
        return ""
    return f", seq {first}-{last}" if first != last else f", seq {first}"


def _with_output(text: str, e: "Event") -> str:
    return f"{text}\n{e.output}" if e.output else text


def _bytes(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "?"  # pragma: no cover


def _failed_check(d: dict, zh: bool) -> str:
    """Which health check failed, and how: the heart of an `unhealthy` event."""
    check = d.get("check")
    if check == "watchdog" and d.get("trigger"):
        return "执行端自报卡死 (WATCHDOG=trigger)" if zh else "the executor reported itself hung (WATCHDOG=trigger)"
    if check == "watchdog":
        if zh:
            return f"看门狗: {_seconds(d.get('silent'))} 内没有 WATCHDOG=1 (watchdog {_seconds(d.get('timeout'))})"
        return f"watchdog: no WATCHDOG=1 for {_seconds(d.get('silent'))} (watchdog {_seconds(d.get('timeout'))})"
    if check == "probe":
        if zh:
            return (f"探针 {d.get('probe', '?')} 连续失败 {d.get('failures', '?')} 次, 持续 "
                    f"{_seconds(d.get('failing_for'))} (最后: {d.get('reason', '?')})")
        return (f"probe {d.get('probe', '?')} failed {d.get('failures', '?')} times in a row over "
                f"{_seconds(d.get('failing_for'))} (last: {d.get('reason', '?')})")
    if check == "memory":
        if zh:
            return (f"内存: 进程树 RSS {_bytes(d.get('rss'))} 超过 max_memory {_bytes(d.get('limit'))} "
                    f"({d.get('processes', '?')} 个进程)")
        return (f"memory: RSS of its process tree {_bytes(d.get('rss'))} is above max_memory "
                f"{_bytes(d.get('limit'))} ({d.get('processes', '?')} processes)")
    return str(check)


def _health_text(e: "Event", zh: bool) -> str | None:
    """Messages of the health events, and of the exit that follows a health stop; None for others."""
    d = e.detail
    kind = e.event
    status = f" (STATUS: {d['status']})" if d.get("status") else ""
    if kind == "running" and d.get("ready") == "notify":
        if zh:
            return f"已就绪 运行中 (pid {e.pid}, 启动后 {_seconds(d.get('after'))} 收到 READY=1)"
        return f"ready, running (pid {e.pid}, READY=1 after {_seconds(d.get('after'))})"
    if kind == "start_timeout":
        if zh:
            text = (f"启动超时: {_seconds(d.get('timeout'))} 内未收到 READY=1 (start_timeout){status}; "
                    "停止后按退避重启")
        else:
            text = (f"start timeout: no READY=1 within {_seconds(d.get('timeout'))} (start_timeout){status}; "
                    "stopping it, then restarting with backoff")
        return _with_output(text, e)
    if kind == "unhealthy":
        then = "停止后按退避重启" if zh else "stopping it, then restarting with backoff"
        text = f"{'不健康' if zh else 'unhealthy'}: {_failed_check(d, zh)}{status}; {then}"
        text = _with_output(text, e)
        if d.get("probe_output"):
            text += ("\n探针输出:\n" if zh else "\nprobe output:\n") + str(d["probe_output"])
        return text
    if kind == "status_changed":
        return f"状态: {d.get('status') or ''}" if zh else f"status: {d.get('status') or ''}"
    cause = d.get("cause")
    if kind == "crashed" and cause:
        why = {"start_timeout": "启动超时" if zh else "start timeout"}.get(cause, f"{'不健康' if zh else 'unhealthy'} ({cause})")
        if zh:
            return f"因{why}已停止: {_how_ended(e, True)}, 运行了 {_seconds(e.runtime)}; {_plan(e, True)}"
        return f"stopped for {why}: {_how_ended(e, False)} after {_seconds(e.runtime)}; {_plan(e, False)}"
    return None


def _en(e: "Event") -> str:
    d = e.detail
    kind = e.event
    health = _health_text(e, False)
    if health is not None:
        return health
    if kind == "spawned":
        return f"spawned (pid {e.pid})"
    if kind == "running":
        return f"running (pid {e.pid})"
    if kind == "crashed" and d.get("error"):
        return f"could not start: {d['error']}; {_plan(e, False)}"
    if kind == "crashed" and d.get("status_unknown"):
        return f"exited; {_how_ended(e, False)} after {_seconds(e.runtime)}; {_plan(e, False)}"
    if kind == "crashed":
        verb = "crashed with" if not e.signal else "crashed:"
        return _with_output(
            f"{verb} {_how_ended(e, False)} after {_seconds(e.runtime)}; {_plan(e, False)}", e
        )
    if kind == "exited":
        return f"exited with {_how_ended(e, False)} after {_seconds(e.runtime)}; {_plan(e, False)}"
    if kind == "fatal":
        return _with_output(
            f"gave up after {e.restarts} restarts within {_seconds(d.get('window'))} "
            f"(last: {_how_ended(e, False)}); start it again by hand",
            e,
        )
    if kind == "stopping":
        return f"stopping (pid {e.pid}, {d.get('signal', 'SIGTERM')})"
    if kind == "stopped":
        killed = " (killed after stop timeout)" if d.get("killed") else ""
        return f"stopped{killed}"
    return _supervisor_en(e)


def _supervisor_en(e: "Event") -> str:
    d = e.detail
    kind = e.event
    if kind.startswith("incident_"):
        return incidentmsgs.en(e)
    if kind == "supervisor_started":
        return f"started {_count(d.get('instances', 0), 'instance')} of {_count(d.get('types', 0), 'type')} (pid {d.get('pid')})"
    if kind == "supervisor_stopping":
        return f"stopping {_count(d.get('instances', 0), 'instance')} ({d.get('reason', 'asked to stop')})"
    if kind == "supervisor_stopped":
        return f"stopped after {_seconds(d.get('uptime'))}"
    if kind == "reloaded":
        return (
            f"reloaded config: {d.get('started', 0)} started, {d.get('stopped', 0)} stopped, "
            f"{d.get('restarted', 0)} restarted, {d.get('unchanged', 0)} unchanged"
        )
    if kind == "reload_failed":
        return f"reload refused, config unchanged: {d.get('errors', '')}"
    if kind == "upgraded":
        fallback = f"; its state could not be read ({d['fallback']}), live executors were adopted" \
            if d.get("fallback") else ""
        return (f"upgraded in place from {d.get('from')} to {d.get('to')} in {_seconds(d.get('seconds'))} "
                f"(pid {d.get('pid')} unchanged): {_count(d.get('instances', 0), 'instance')} carried over, "
                f"{d.get('restarted', 0)} restarted for a changed config{fallback}")
    if kind == "upgrade_failed":
        return f"upgrade failed, still running the old code: {d.get('error', '')}"
    if kind == "adopted":
        return (f"adopted {_count(d.get('instances', 0), 'executor')} left running by a previous "
                "exec-supervisor (none restarted)")
    if kind == "scaled":
        return f"scaled {d.get('type')} from {d.get('old')} to {_count(d.get('new', 0), 'instance')}"
    if kind == "events_dropped":
        return (
            f"event spool full (events.spool_max_bytes): dropped {d.get('dropped', 0)} oldest events "
            f"({_by_level(d.get('by_level'), False)}){_seq_range(d)}; that gap in seq is intentional"
        )
    if kind == "events_lost":
        return (
            f"could not write {d.get('lost', 0)} event(s) to the event spool ({d.get('reason', '?')}; state_dir "
            f"full?): lost ({_by_level(d.get('by_level'), False)}){_seq_range(d)}; that gap in seq is those events"
        )
    if kind == "events_refused":
        return (
            f"the log API refused {d.get('refused', 0)} event(s) (last: {d.get('status')} {d.get('reason', '')}); "
            f"kept in {d.get('file', 'the dead-letter file')}"
        )
    if kind == "executor_lines_dropped":
        return (
            f"the supervisor dropped {d.get('dropped', 0)} of this executor's log lines (over "
            f"{d.get('rate')} lines/s, or the executor lines' share of the spool full; {d.get('total')} in all)"
        )
    if kind == "delivery_recovered":
        what = {
            "refused": "accepts the supervisor's events again after refusing them for",
            "misconfigured": "accepts events again after rejecting the address for",
            "errors": "accepts events again after answering errors for",
        }.get(d.get("cause", ""), "reachable again after")
        return (
            f"log API {what} {_seconds(d.get('outage'))}: {d.get('delayed', 0)} events "
            f"were delayed up to {_seconds(d.get('max_delay'))}"
        )
    return str(d.get("text", kind))


def _zh(e: "Event") -> str:
    d = e.detail
    kind = e.event
    health = _health_text(e, True)
    if health is not None:
        return health
    if kind.startswith("incident_"):
        return incidentmsgs.zh(e)
    if kind == "spawned":
        return f"已启动进程 (pid {e.pid})"
    if kind == "running":
        return f"已启动 运行中 (pid {e.pid})"
    if kind == "crashed" and d.get("error"):
        return f"无法启动: {d['error']}; {_plan(e, True)}"
    if kind == "crashed" and d.get("status_unknown"):
        return f"已退出: {_how_ended(e, True)}, 运行了 {_seconds(e.runtime)}; {_plan(e, True)}"
    if kind == "crashed":
        return _with_output(
            f"异常退出: {_how_ended(e, True)}, 运行了 {_seconds(e.runtime)}; {_plan(e, True)}", e
        )
    if kind == "exited":
        return f"已退出: {_how_ended(e, True)}, 运行了 {_seconds(e.runtime)}; {_plan(e, True)}"
    if kind == "fatal":
        return _with_output(
            f"放弃重启: {_seconds(d.get('window'))} 内已重启 {e.restarts} 次 "
            f"(最后: {_how_ended(e, True)}); 请手动启动",
            e,
        )
    if kind == "stopping":
        return f"正在停止 (pid {e.pid}, {d.get('signal', 'SIGTERM')})"
    if kind == "stopped":
        return "已停止 (超时后强制结束)" if d.get("killed") else "已停止"
    if kind == "supervisor_started":
        return f"已启动 {d.get('types', 0)} 种执行端共 {d.get('instances', 0)} 个实例 (pid {d.get('pid')})"
    if kind == "supervisor_stopping":
        return f"正在停止 {d.get('instances', 0)} 个实例 ({d.get('reason', '')})"
    if kind == "supervisor_stopped":
        return f"已停止, 运行了 {_seconds(d.get('uptime'))}"
    if kind == "reloaded":
        return (
            f"已重新加载配置: 启动 {d.get('started', 0)}, 停止 {d.get('stopped', 0)}, "
            f"重启 {d.get('restarted', 0)}, 未变 {d.get('unchanged', 0)}"
        )
    if kind == "reload_failed":
        return f"配置无效, 未作任何更改: {d.get('errors', '')}"
    if kind == "upgraded":
        fallback = f"; 状态无法读取 ({d['fallback']}), 已接管存活的执行端" if d.get("fallback") else ""
        return (f"已原地升级 {d.get('from')} -> {d.get('to')}, 用时 {_seconds(d.get('seconds'))} "
                f"(pid {d.get('pid')} 不变): 保留 {d.get('instances', 0)} 个实例, "
                f"因配置变更重启 {d.get('restarted', 0)} 个{fallback}")
    if kind == "upgrade_failed":
        return f"升级失败, 仍运行旧版本: {d.get('error', '')}"
    if kind == "adopted":
        return f"已接管上一个监督进程留下的 {d.get('instances', 0)} 个执行端 (未重启)"
    if kind == "scaled":
        return f"{d.get('type')} 实例数 {d.get('old')} -> {d.get('new')}"
    if kind == "events_dropped":
        return (
            f"事件缓存已满 (events.spool_max_bytes): 丢弃了 {d.get('dropped', 0)} 条最旧的事件 "
            f"({_by_level(d.get('by_level'), True)}){_seq_range(d)}; 该 seq 缺口是有意的"
        )
    if kind == "events_lost":
        return (
            f"无法写入事件缓存 ({d.get('reason', '?')}; state_dir 已满?): 丢失了 {d.get('lost', 0)} 条事件 "
            f"({_by_level(d.get('by_level'), True)}){_seq_range(d)}; 该 seq 缺口即这些事件"
        )
    if kind == "events_refused":
        return (
            f"日志接口拒收了 {d.get('refused', 0)} 条事件 (最后: {d.get('status')} {d.get('reason', '')}); "
            f"已保存到 {d.get('file', '死信文件')}"
        )
    if kind == "executor_lines_dropped":
        return (
            f"监督器丢弃了此执行器的 {d.get('dropped', 0)} 条日志 (超过每秒 {d.get('rate')} 条, "
            f"或执行器日志的缓存份额已满; 累计 {d.get('total')} 条)"
        )
    if kind == "delivery_recovered":
        what = {
            "refused": "重新接受监督器的事件 (此前拒收",
            "misconfigured": "重新接受事件 (此前地址被拒",
            "errors": "重新接受事件 (此前返回错误",
        }.get(d.get("cause", ""), "已恢复 (中断")
        return (
            f"日志接口{what} {_seconds(d.get('outage'))}): {d.get('delayed', 0)} 条事件延迟, "
            f"最长 {_seconds(d.get('max_delay'))}"
        )
    return str(d.get("text_zh", d.get("text", kind)))


_RENDERERS: dict[str, Callable[["Event"], str]] = {"en": _en, "zh": _zh}


def render(event: "Event", language: str = "en") -> str:
    """`ET-Name-N: text` for instance events, `exec-supervisor@name: text` for the supervisor's."""
    text = _RENDERERS.get(language, _en)(event)
    if event.folded is not None:
        note = incidentmsgs.folded_note(event, language == "zh")
        end = text.find("\n")
        text = text + note if end < 0 else text[:end] + note + text[end:]
    sender = event.exec_id or f"exec-supervisor@{event.supervisor}"
    return f"{sender}: {text}"


def format_message(event: Event, language: str = "en") -> str:
    """The human sentence for an event, prefixed with the sender's identity."""
    return render(event, language)
