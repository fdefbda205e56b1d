"""Commands that look at a running farm: `status` (filters, --watch, exit code 4), `describe`, `incidents`.

Owns: what the operator sees of the farm's state. Must not: change anything.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from .app import EXIT_NOT_RUNNING, call, client as make_client, control_options, main
from .completion import complete_exec_id, complete_target
from .style import STATE_COLOURS, Painter, wants_colour

STATES = tuple(s for s in STATE_COLOURS if s != "gone")


def _states(value: str | None) -> set[str] | None:
    if not value:
        return None
    wanted = {s.strip() for s in value.split(",") if s.strip()}
    unknown = sorted(wanted - set(STATES))
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: not a state (states: {', '.join(STATES)})",
                                 param_hint="--state")
    return wanted


def _fetch(client: Any, target: str) -> dict[str, Any]:
    from ..control.client import path_with_query

    return call(client, "GET", path_with_query("/v1/status", target=target))


@main.command()
@click.argument("target", required=False, default="all", shell_complete=complete_target)
@click.option("--state", "state_filter", metavar="STATE[,STATE...]", default=None,
              help=f"Only instances in these states ({', '.join(STATES)}).")
@click.option("-w", "--watch", is_flag=True, help="Refresh in place every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=1.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's JSON answer.")
@control_options
def status(target: str, state_filter: str | None, watch: bool, interval: float, as_json: bool,
           config_path: str | None, socket_path: str | None) -> None:
    """Show every instance (or TARGET: all | <Type> | ET-<Type>-<id>) and the supervisor.

    Exits 4 when a desired instance is not running (starting, backoff, exited, fatal),
    3 when no daemon runs: usable from scripts and monitoring.
    """
    from .render import not_running, render_status

    states = _states(state_filter)
    client = make_client(config_path, socket_path)
    if watch:
        _watch(client, target, states, interval)
        return
    data = _fetch(client, target)
    if states:
        data["instances"] = [r for r in data.get("instances", []) if r.get("state") in states]
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render_status(data, Painter(wants_colour()), states))
    if not_running(data.get("instances", [])):
        sys.exit(EXIT_NOT_RUNNING)


def _watch(client: Any, target: str, states: set[str] | None, interval: float) -> None:
    """Redraw the status every interval, in place on a terminal (like `watch`), until Ctrl-C."""
    from ..control.client import ClientError, path_with_query
    from .render import render_status

    terminal = sys.stdout.isatty()
    paint = Painter(wants_colour())
    try:
        if terminal:
            sys.stdout.write("\x1b[?25l")  # hide the cursor while redrawing
        while True:
            started = time.monotonic()
            try:
                code, data = client.call("GET", path_with_query("/v1/status", target=target), timeout=10)
                body = render_status(data, paint, states) if code == 200 else \
                    f"exec-supervisor: {data.get('error') or f'HTTP {code}'}"
            except ClientError as exc:  # the daemon restarting: keep watching, say so
                body = f"exec-supervisor: {exc}"
            head = paint(f"Every {interval:g}s: exec-supervisor status {target}", bold=True) + \
                f"    {time.strftime('%Y-%m-%d %H:%M:%S')}"
            frame = f"{head}\n\n{body}\n"
            if terminal:
                sys.stdout.write("\x1b[H\x1b[2J" + frame)
            else:
                sys.stdout.write(frame + "\n")
            sys.stdout.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        from .app import quiet_stdout

        quiet_stdout()
    finally:
        if terminal:
            sys.stdout.write("\x1b[?25h")
            sys.stdout.flush()


@main.command()
@click.argument("exec_id", metavar="ET-<Type>-<id>", shell_complete=complete_exec_id)
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's JSON answer.")
@control_options
def describe(exec_id: str, as_json: bool, config_path: str | None, socket_path: str | None) -> None:
    """Everything about one instance: command line, cwd, environment (secrets masked), log file,
    restarts, last exit, and its last state transitions with times and reasons."""
    from urllib.parse import quote

    from .render import render_describe

    data = call(make_client(config_path, socket_path), "GET", "/v1/describe/" + quote(exec_id, safe=""))
    click.echo(json.dumps(data, indent=2) if as_json else render_describe(data, Painter(wants_colour())))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's JSON answer.")
@control_options
def incidents(as_json: bool, config_path: str | None, socket_path: str | None) -> None:
    """Open incidents (correlated failures of a type, or farm-wide) and the last 20 resolved."""
    from .render import incident_line

    data = call(make_client(config_path, socket_path), "GET", "/v1/incidents")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    paint = Painter(wants_colour())
    now = time.time()
    lines = [paint("open", bold=True)] + [paint("  " + incident_line(i, now), fg="red") for i in data["open"]]
    if not data["open"]:
        lines.append("  none")
    lines.append(paint("recent", bold=True))
    lines += ["  " + incident_line(i, now) for i in data["recent"]] or ["  none"]
    click.echo("\n".join(lines))
