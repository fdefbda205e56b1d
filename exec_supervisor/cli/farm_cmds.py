"""Commands that change a running farm: start/stop/restart/signal TARGET, scale, reload, shutdown.

Owns: turning the operator's words into control API requests and saying what was done.
Must not: decide anything the daemon decides (what a reload changes is computed by the daemon).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import click

from .app import EXIT_FAILED, call, client as make_client, control_options, fail, main, plural, report_lagging
from .completion import complete_target, complete_type
from .progress import status_rows, with_progress

AT_REST = ("stopped", "exited", "fatal")


def _progress_poll(client: Any, command: str, target: str, before: dict[str, Any]) -> Any:
    from copy import copy

    probe = copy(client)

    def poll() -> tuple[int, int] | None:
        answer = status_rows(probe, target)
        if answer is None:
            return None
        rows = answer[0]
        if command == "stop":
            done = sum(1 for r in rows if r.get("state") in AT_REST)
        elif command == "restart":
            done = sum(1 for r in rows if r.get("state") == "running" and r.get("pid") != before.get(r.get("exec_id")))
        else:
            done = sum(1 for r in rows if r.get("state") == "running")
        return done, len(rows)

    return poll


def instance_command(command: str, target: str, config_path: str | None, socket_path: str | None, no_wait: bool,
                     timeout: float | None, rolling: bool = False) -> None:
    body: dict[str, Any] = {"target": target, "wait": not no_wait}
    if rolling:
        body["rolling"] = True
    if timeout is not None:
        body["timeout"] = timeout
    client = make_client(config_path, socket_path)
    # Waiting is bounded by the daemon (stop/start timeouts per instance), so the socket need not be.
    client.timeout = 30.0 if no_wait else (timeout + 30 if timeout is not None and not rolling else None)
    if no_wait:
        data = call(client, "POST", f"/v1/{command}", body)
    else:
        answer = status_rows(client, target)
        before = {r.get("exec_id"): r.get("pid") for r in (answer[0] if answer else [])}
        label = {"start": "running", "stop": "stopped", "restart": "restarted"}[command]
        data = with_progress(lambda: call(client, "POST", f"/v1/{command}", body),
                             _progress_poll(client, command, target, before), label)
    names = data.get("instances") or []
    verb = {"start": "started", "stop": "stopped", "restart": "restarted"}[command]
    if not names:
        click.echo(f"{target}: no instances")
    elif data.get("ok", True):
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        click.echo(f"{verb}{' (rolling)' if rolling else ''}: {shown}")
    if not data.get("ok", True):
        click.echo(f"exec-supervisor: {data.get('error', 'not done')}", err=True)
        report_lagging(data)
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("target", shell_complete=complete_target)
@click.option("--no-wait", is_flag=True, help="Return once the stop signal is sent.")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=None, help="Seconds to wait.")
@control_options
def stop(target: str, no_wait: bool, timeout: float | None, config_path: str | None, socket_path: str | None) -> None:
    """Stop TARGET (all | <Type> | ET-<Type>-<id>) and keep it stopped (also across reloads) until started."""
    instance_command("stop", target, config_path, socket_path, no_wait, timeout)


@main.command()
@click.argument("target", shell_complete=complete_target)
@click.option("--rolling", is_flag=True, help="One at a time, each running again before the next.")
@click.option("--no-wait", is_flag=True, help="Return without waiting for running (not with --rolling).")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=None, help="Seconds to wait.")
@control_options
def restart(target: str, rolling: bool, no_wait: bool, timeout: float | None, config_path: str | None,
            socket_path: str | None) -> None:
    """Restart TARGET (all | <Type> | ET-<Type>-<id>)."""
    instance_command("restart", target, config_path, socket_path, no_wait, timeout, rolling)


# --------------------------------------------------------------------------- scale


def parse_scale(spec: tuple[str, ...]) -> dict[str, Any]:
    """`NAME COUNT`, `NAME IDS` (like 0-4,10) or `NAME=VALUE ...` -> {"NAME": count | "ids"}."""
    if len(spec) == 2 and "=" not in spec[0] and "=" not in spec[1]:
        pairs = [(spec[0], spec[1])]
    else:
        if not spec or any("=" not in item for item in spec):
            raise click.UsageError("expected NAME COUNT, NAME IDS (like 0-4,10), NAME=COUNT [NAME=COUNT ...] "
                                   "or NAME --reset")
        pairs = [tuple(item.split("=", 1)) for item in spec]  # type: ignore[misc]
    changes: dict[str, Any] = {}
    for name, value in pairs:
        value = value.strip()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise click.UsageError(f"{name!r} is not a type name")
        if name in changes:
            raise click.UsageError(f"{name} is given twice")
        if re.fullmatch(r"\d{1,9}", value):
            changes[name] = int(value)
        elif re.fullmatch(r"[\d\s,-]+", value) and re.search(r"\d", value) and not value.startswith("-"):
            changes[name] = value
        else:
            raise click.UsageError(f"{name}: {value!r} is not a count (like 10) or an id set (like 0-4,10)")
    return changes


def _reset_changes(names: tuple[str, ...]) -> dict[str, Any]:
    """Each type back to the ids of the daemon's config (the daemon then drops the runtime scale)."""
    for name in names:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise click.UsageError(f"{name!r} is not a type name")
    if len(set(names)) != len(names):
        raise click.UsageError("a type is given twice")
    return {name: "config" for name in names}


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("spec", nargs=-1, required=True, metavar="NAME COUNT | NAME IDS | NAME=COUNT... | NAME --reset",
                shell_complete=complete_type)
@click.option("--reset", is_flag=True, help="Drop the runtime scale of the named types: follow the config again.")
@click.option("--wait", is_flag=True, help="Return once every instance of the types runs (or is gone).")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=None, help="Seconds to wait (with --wait).")
@control_options
def scale(spec: tuple[str, ...], reset: bool, wait: bool, timeout: float | None, config_path: str | None,
          socket_path: str | None) -> None:
    """Change how many instances of a type run, without touching the others.

    \b
    scale HelloWorld 10          ids are added after the highest; scaling down drops the highest
    scale HelloWorld 0-4,10      exactly these ids
    scale HelloWorld=10 Other=2  several types
    scale HelloWorld --reset     back to the config's ids/count
    The new count survives daemon restarts until --reset or the type's ids/count change in the config.
    """
    client = make_client(config_path, socket_path)
    changes = _reset_changes(spec) if reset else parse_scale(spec)
    body: dict[str, Any] = {"scale": changes, "wait": wait}
    if timeout is not None:
        body["timeout"] = timeout
    socket_timeout = (timeout or 3600) + 30 if wait else 300

    def request() -> dict[str, Any]:
        return call(client, "POST", "/v1/scale", body, timeout=socket_timeout)

    if wait:
        from copy import copy

        probe = copy(client)

        def poll() -> tuple[int, int] | None:
            answer = status_rows(probe, "all")
            if answer is None:
                return None
            types = [t for t in answer[1] if t.get("type") in changes]
            return sum(t.get("running", 0) for t in types), sum(t.get("desired", 0) for t in types)

        data = with_progress(request, poll, "running")
    else:
        data = request()
    for result in data.get("results", []):
        done = ", ".join(f"{result.get(k)} {k}" for k in ("started", "stopped") if result.get(k))
        click.echo(f"{result.get('type')}: {result.get('old')} -> {plural(result.get('new', 0), 'instance')}"
                   + (f" ({done})" if done else "") + ("; follows the config again" if reset else ""))
    if not data.get("ok", True):
        click.echo(f"exec-supervisor: {data.get('error', 'not done')}", err=True)
        report_lagging(data)
        sys.exit(EXIT_FAILED)
    if wait:
        click.echo("target reached")


# --------------------------------------------------------------------------- reload, shutdown


def _names(ids: list[str], limit: int = 8) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


@main.command()
@click.option("--dry-run", is_flag=True, help="Say what would start, stop and restart; change nothing.")
@click.option("--rolling", is_flag=True, help="Restart changed instances --batch at a time, each batch running "
                                              "before the next (instead of all at once).")
@click.option("--batch", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="Instances restarted together with --rolling.")
@control_options
def reload(dry_run: bool, rolling: bool, batch: int, config_path: str | None, socket_path: str | None) -> None:
    """Re-read the daemon's config and apply the difference (like SIGHUP); a bad config changes nothing."""
    client = make_client(config_path, socket_path, timeout=None if rolling else 300)
    body: dict[str, Any] = {"dry_run": dry_run, "rolling": rolling, "batch": batch}
    if rolling and not dry_run:
        from copy import copy

        probe = copy(client)
        before: dict[str, Any] = {}
        answer = status_rows(probe, "all")
        if answer is not None:
            before = {r.get("exec_id"): r.get("pid") for r in answer[0]}

        def poll() -> tuple[int, int] | None:
            # Changed instances are not known before the answer: count restarts of the farm's instances.
            rows = status_rows(probe, "all")
            if rows is None:
                return None
            moved = [r for r in rows[0] if r.get("exec_id") in before and r.get("pid") != before[r.get("exec_id")]]
            return sum(1 for r in moved if r.get("state") == "running"), len(moved)

        data = with_progress(lambda: call(client, "POST", "/v1/reload", body), poll, "restarted instances running")
    else:
        data = call(client, "POST", "/v1/reload", body)
    changes = data.get("changes") or {}
    head = "would" if dry_run else "reloaded:"
    verbs = (("started", "start"), ("stopped", "stop"), ("restarted", "restart"))
    if dry_run:
        parts = [f"{data.get(done, 0)} {word}" for done, word in verbs] + [f"{data.get('unchanged', 0)} unchanged"]
        click.echo(f"reload would: {', '.join(parts)} (nothing was changed)")
    else:
        click.echo(f"{head} {data.get('started', 0)} started, {data.get('stopped', 0)} stopped, "
                   f"{data.get('restarted', 0)} restarted{' (rolling)' if rolling else ''}, "
                   f"{data.get('unchanged', 0)} unchanged")
    for done, word in verbs:
        ids = changes.get(done) or []
        if ids:
            click.echo(f"  {word}: {' '.join(ids) if dry_run else _names(ids)}")
    for type_name in data.get("scale_dropped") or []:
        click.echo(f"  {type_name}: its ids/count changed in the config, which replaces its runtime scale")
    if not data.get("ok", True):
        click.echo(f"exec-supervisor: {data.get('error', 'not done')}", err=True)
        sys.exit(EXIT_FAILED)


@main.command("signal")
@click.argument("target", shell_complete=complete_target)
@click.argument("signal_name", metavar="SIGNAL")
@control_options
def send_signal(target: str, signal_name: str, config_path: str | None, socket_path: str | None) -> None:
    """Send SIGNAL (HUP, USR1, 10, ...) to the process group of each running instance of TARGET.

    The instances' state does not change: a signal that ends one is an exit like any other
    (restarted by its policy). Use stop/restart to stop or restart.
    """
    data = call(make_client(config_path, socket_path), "POST", "/v1/signal",
                {"target": target, "signal": signal_name})
    sent, skipped = data.get("signalled") or [], data.get("skipped") or []
    from signal import Signals

    try:
        name = Signals(int(data.get("signal", 0))).name
    except ValueError:
        name = str(data.get("signal"))
    if sent:
        click.echo(f"sent {name} to {plural(len(sent), 'instance')}: {_names(sent)}")
    if skipped:
        click.echo(f"not running, not signalled: {_names(skipped)}", err=not sent)
    if not data.get("ok", True):
        fail(f"exec-supervisor: {data.get('error', 'not done')}", EXIT_FAILED)


@main.command()
@click.option("--no-wait", is_flag=True, help="Return once the daemon has been asked to stop.")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=300, show_default=True,
              help="Seconds to wait for the daemon to exit.")
@control_options
def shutdown(no_wait: bool, timeout: float, config_path: str | None, socket_path: str | None) -> None:
    """Stop every instance and the daemon (like SIGTERM)."""
    from ..control.client import wait_gone

    client = make_client(config_path, socket_path)
    data = call(client, "POST", "/v1/shutdown", {})
    pid, count = data.get("pid"), data.get("instances", 0)
    if no_wait:
        click.echo(f"exec-supervisor (pid {pid}) is stopping {plural(count, 'instance')}")
        return
    if not wait_gone(client, timeout):
        fail(f"exec-supervisor: the daemon (pid {pid}) is still stopping after {timeout:g}s", EXIT_FAILED)
    click.echo(f"exec-supervisor (pid {pid}) stopped {plural(count, 'instance')} and exited")
