"""Commands that read what happened: `logs` (one instance or several, interleaved) and `events`.

Owns: printing log and event streams. Must not: read files itself (the daemon serves them).
"""

from __future__ import annotations

import json
import sys

import click

from .app import call, client as make_client, control_options, fail, main, quiet_stdout, stream, write_raw
from .completion import complete_exec_id


@main.command()
@click.argument("exec_id", metavar="ET-<Type>-<id>", shell_complete=complete_exec_id)
@click.option("-n", "--lines", type=click.IntRange(0, 100_000), default=50, show_default=True,
              help="Lines from the end.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the instance writes (across rotations).")
@control_options
def logs(exec_id: str, lines: int, follow: bool, config_path: str | None, socket_path: str | None) -> None:
    """Print (and follow) an instance's log file."""
    from ..control.client import ClientError, exit_code_for, log_path, path_with_query

    client = make_client(config_path, socket_path)
    path = path_with_query(log_path(exec_id), n=lines, follow=1 if follow else None)
    if follow:
        stream(client, path, write_raw)
        return
    try:
        status, raw = client.fetch("GET", path, timeout=60)
    except ClientError as exc:
        fail(f"exec-supervisor: {exc}", exc.exit_code)
    if status >= 300:
        try:
            message = json.loads(raw).get("error")
        except (ValueError, AttributeError):
            message = raw.decode(errors="replace")
        fail(f"exec-supervisor: {message}", exit_code_for(status))
    try:
        write_raw(raw)
    except BrokenPipeError:
        quiet_stdout()


@main.command()
@click.option("-n", "--lines", type=click.IntRange(0, 1000), default=50, show_default=True,
              help="Recent events to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they happen.")
@click.option("--json", "as_json", is_flag=True, help="JSON (one object per line with -f).")
@control_options
def events(lines: int, follow: bool, as_json: bool, config_path: str | None, socket_path: str | None) -> None:
    """Recent lifecycle events and the delivery backlog to the log API."""
    from ..control.client import path_with_query
    from ..control.render import render_backlog, render_event

    client = make_client(config_path, socket_path)
    if follow:
        buffer = b""

        def on_chunk(chunk: bytes) -> None:
            nonlocal buffer
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                if not line.strip():
                    continue
                if as_json:
                    click.echo(line.decode(errors="replace"))
                else:
                    try:
                        click.echo(render_event(json.loads(line)))
                    except ValueError:
                        continue
                sys.stdout.flush()

        stream(client, path_with_query("/v1/events", n=lines, follow=1), on_chunk)
        return
    data = call(client, "GET", path_with_query("/v1/events", n=lines))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for event in data.get("events", []):
        click.echo(render_event(event))
    click.echo(render_backlog(data.get("forwarding"), data.get("backlog")))
