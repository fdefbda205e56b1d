"""Commands that read what happened: `logs` (one instance or several, interleaved) and `events`.

Owns: printing log and event streams. Must not: read files itself (the daemon serves them).
"""

from __future__ import annotations

import json
import re
import sys

import click

from .app import call, client as make_client, control_options, fail, main, quiet_stdout, stream, write_raw
from .completion import complete_exec_id
from .style import Painter, wants_colour

EXEC_ID_RE = re.compile(r"ET-[A-Za-z][A-Za-z0-9_]*-[0-9]+")


def parse_since(text: str) -> float:
    """`10m`, `2h`, `90s` ago, or a clock time `10:15`, `10:15:02`, or `2026-12-06 10:15` -> UNIX time."""
    import time
    from datetime import datetime

    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?\s*(s|m|h|d)", text):
        number, unit = float(re.match(r"[\d.]+", text).group()), text[-1]  # type: ignore[union-attr]
        return time.time() - number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    for form in ("%H:%M", "%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            when = datetime.strptime(text, form)
        except ValueError:
            continue
        if form.startswith("%H"):
            when = datetime.combine(datetime.now().date(), when.time())
        return when.timestamp()
    raise click.BadParameter(f"{text!r} is neither a duration (10m, 2h) nor a time (10:15, 2026-12-06 10:15)",
                             param_hint="--since")


class PrefixPainter:
    """`ET-X-N | line` from the daemon -> the prefix padded to the widest seen, coloured on a terminal."""

    def __init__(self) -> None:
        self.paint = Painter(wants_colour())
        self.width = 0
        self.colours: dict[bytes, int] = {}
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        out = []
        for line in lines:
            exec_id, sep, rest = line.partition(b" | ")
            if not sep:
                out.append(line.decode(errors="replace"))
                continue
            self.width = max(self.width, len(exec_id))
            index = self.colours.setdefault(exec_id, len(self.colours))
            prefix = self.paint.prefix(exec_id.decode().ljust(self.width) + " |", index)
            out.append(f"{prefix} {rest.decode(errors='replace')}")
        if out:
            sys.stdout.write("\n".join(out) + "\n")
            sys.stdout.flush()


@main.command()
@click.argument("target", metavar="TARGET", shell_complete=complete_exec_id)
@click.option("-n", "--lines", type=click.IntRange(0, 100_000), default=50, show_default=True,
              help="Lines from the end of each instance's log.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the instances write (across rotations).")
@click.option("--since", metavar="WHEN", default=None,
              help="Only instances whose log changed since WHEN (10m, 2h, 10:15, 2026-12-06 10:15), and "
                   "lines stamped earlier left out.")
@control_options
def logs(target: str, lines: int, follow: bool, since: str | None, config_path: str | None,
         socket_path: str | None) -> None:
    """Print (and follow) the log of TARGET: an exec id, or a type / `all` (interleaved, `ET-X-N | ` prefixes).

    An instance that was scaled away stays readable while its log file exists.
    """
    from ..control.client import ClientError, exit_code_for, log_path, path_with_query

    client = make_client(config_path, socket_path)
    when = parse_since(since) if since else None
    single = EXEC_ID_RE.fullmatch(target) is not None and when is None
    if single:
        path = path_with_query(log_path(target), n=lines, follow=1 if follow else None)
        on_chunk = write_raw
    else:
        path = path_with_query("/v1/logs", target=target, n=lines, follow=1 if follow else None,
                               since=f"{when:.3f}" if when is not None else None)
        painter = PrefixPainter()
        on_chunk = painter.feed
    if follow:
        stream(client, path, on_chunk)
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
        on_chunk(raw)
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
