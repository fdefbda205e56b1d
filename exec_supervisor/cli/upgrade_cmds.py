"""`exec-supervisor upgrade`, and the check the daemon runs the installed code with before one.

Owns: asking a running daemon to re-execute itself in place and waiting until it reports the
upgrade; `start CONFIG --resume FILE --dry-run` (what that check runs).
Must not: re-execute anything itself (the daemon does: upgrade.py).
"""

from __future__ import annotations

import json
import sys
import time

import click

from .. import __version__
from .app import EXIT_FAILED, call, client as make_client, control_options, fail, load_or_exit, main


def dry_run(config_path: str, state_path: str) -> None:
    """The check an upgrade makes of the installed code: one JSON line and exit 0, or why not and exit 1."""
    from .. import upgrade

    cfg = load_or_exit(config_path)
    try:
        answer = upgrade.dry_run(cfg, state_path)
    except Exception as exc:  # whatever the new code trips on is the answer: it must not take over
        fail(f"exec-supervisor {__version__}: cannot resume from {state_path}: {type(exc).__name__}: {exc}",
             EXIT_FAILED)
    click.echo(json.dumps(answer))
    sys.exit(0)


@main.command()
@click.option("--timeout", type=click.FloatRange(1, 3600), default=60, show_default=True,
              help="Seconds for the installed code to pass its check, and again for the new image to resume.")
@control_options
def upgrade(timeout: float, config_path: str | None, socket_path: str | None) -> None:
    """Re-execute the running daemon in place with the installed code; no executor notices.

    \b
    The daemon first runs the installed exec-supervisor (its own interpreter, -m exec_supervisor)
    on the state it will hand over; only if that passes does it re-execute itself: same pid, same
    control socket, same event sequence, every instance carried over. Refused while a reload,
    scale, rolling restart or waiting command is in progress. Also: SIGUSR2 to the daemon.
    """
    from ..control.client import ClientError

    client = make_client(config_path, socket_path, timeout=timeout + 30)
    data = call(client, "POST", "/v1/upgrade", {"timeout": timeout})
    if not data.get("ok"):
        fail(f"exec-supervisor: {data.get('error', 'upgrade refused')}", EXIT_FAILED)
    pid, before = data.get("pid"), data.get("upgrades", 0)
    click.echo(f"the installed code ({data.get('to')}) passed its check; re-executing pid {pid} in place ...",
               err=True)
    deadline = time.monotonic() + timeout
    health: dict = {}
    while True:  # the new image answers on the same socket once it has resumed
        try:
            status, health = client.call("GET", "/v1/health", timeout=5)
        except ClientError:
            status = 0
        if status == 200 and isinstance(health, dict) and (health.get("upgrades") or 0) > before:
            break
        if time.monotonic() > deadline:
            fail(f"exec-supervisor: the daemon (pid {pid}) did not report the upgrade within {timeout:g}s; "
                 "see its log", EXIT_FAILED)
        time.sleep(0.05)
    if health.get("pid") != pid:
        fail(f"exec-supervisor: the daemon's pid changed ({pid} -> {health.get('pid')})", EXIT_FAILED)
    last = health.get("last_upgrade") or {}
    click.echo(f"upgraded in place (pid {pid}): {last.get('from')} -> {last.get('to')}, "
               f"{last.get('instances')} instances carried over in {last.get('seconds')}s")
