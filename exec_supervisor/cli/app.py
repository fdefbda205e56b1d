"""The `exec-supervisor` group, its global options, and the plumbing every command shares.

Owns: exit codes, finding the daemon (--socket, the runtime registry, then the config's
own keys, then the default places), one request with operator-facing errors, streams.
Must not: render tables (render/), parse configs beyond what locates a socket.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from .. import __version__

# 4 is supervisorctl's spirit (its status exits 3 when a process is not running; 3 is taken here).
EXIT_FAILED, EXIT_USAGE, EXIT_NO_DAEMON, EXIT_NOT_RUNNING = 1, 2, 3, 4
DEFAULT_CONFIG = "configs/farm.yaml"
CONFIG_ENV = "EXEC_SUPERVISOR_CONFIG"


def fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def load_or_exit(path: str, environ: dict[str, str] | None = None) -> Any:
    from .. import config as config_mod  # pydantic is slow to import: only the commands that need it

    try:
        return config_mod.load(path, environ)
    except config_mod.ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_USAGE)


COMMAND_ORDER = ("start", "status", "describe", "logs", "scale", "stop", "restart", "signal", "reload", "events", "incidents",
                 "upgrade", "shutdown", "check", "systemd-unit", "dev-service", "run-one", "export",
                 "supervisord-listener")


class Group(click.Group):
    """Lists commands in the order an operator meets them (the README's), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        rank = {name: index for index, name in enumerate(COMMAND_ORDER)}
        return sorted(self.commands, key=lambda name: (rank.get(name, len(rank)), name))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="exec-supervisor")
@click.option("-c", "--config", "config_path", metavar="PATH", default=None,
              help=f"The farm config, to find its daemon (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG}).")
@click.option("--socket", "socket_path", metavar="PATH", default=None,
              help="The daemon's control socket (instead of finding it from the config).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, socket_path: str | None) -> None:
    """Supervise farms of WeFastAPI executors (ET-<Name>-<id>).

    \b
    Run a farm:      exec-supervisor start CONFIG [--tail]
    Operate it:      status, describe, logs, scale, start|stop|restart|signal TARGET,
                     reload, events, upgrade, shutdown
                     (find the daemon with -c CONFIG, $EXEC_SUPERVISOR_CONFIG or --socket PATH,
                     before or after the command)
    Exit codes:      0 done, 1 the daemon could not do it, 2 bad usage or config,
                     3 no daemon running, 4 (status) a desired instance is not running
    Completion:      eval "$(_EXEC_SUPERVISOR_COMPLETE=bash_source exec-supervisor)"  (zsh_source, fish_source)
    """
    ctx.obj = {"config": config_path, "socket": socket_path}


# --------------------------------------------------------------------------- finding the daemon


def control_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """-c/--config and --socket after the subcommand too; they win over the ones before it."""
    function = click.option(
        "--socket", "socket_path", metavar="PATH", default=None,
        help="The daemon's control socket (instead of finding it from the config).",
    )(function)
    function = click.option(
        "-c", "--config", "config_path", metavar="PATH", default=None,
        help=f"The farm config, to find its daemon (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG}).",
    )(function)
    return function


def resolve_target(config_path: str | None, socket_path: str | None) -> tuple[str, str | None]:
    """(config, socket) from the subcommand's options, else the group's, else the environment."""
    ctx = click.get_current_context(silent=True)
    root = (ctx.find_root().obj if ctx is not None else None) or {}
    config = config_path or root.get("config") or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    return config, socket_path or root.get("socket")


def find_socket(config_path: str, socket_path: str | None) -> Path:
    """The daemon's socket: --socket, else the daemon's own record, else the config, else the default places.

    The config is read last and leniently: a broken file must never lock the operator
    out of the daemon that runs it.
    """
    from ..control import registry
    from ..control.client import SYSTEMD_STATE_DIRECTORY, ClientError, pick_socket

    if socket_path:
        return Path(socket_path)
    entry, stale = registry.lookup(config_path)
    if entry is not None:
        return Path(entry.socket)
    note = "".join(f"; {e.file} is stale ({e.stale})" for e in stale[:1])
    try:
        path = pick_socket(config_path, None)
    except ClientError as exc:
        if not os.path.exists(config_path):
            raise ClientError(f"{exc}{note}", exc.exit_code) from None
        # Unreadable or not YAML: the places a daemon uses when the config sets neither key.
        base = Path(os.path.abspath(config_path)).parent
        for candidate in (base / ".exec-supervisor" / "control.sock",
                          Path(SYSTEMD_STATE_DIRECTORY) / "control.sock"):
            if candidate.exists():
                return candidate
        raise ClientError(f"{exc}; no running daemon of it is recorded{note}", exc.exit_code) from None
    if stale and not path.exists():
        raise ClientError(f"no daemon is running for {config_path}{note}", EXIT_NO_DAEMON)
    return path


def client(config_path: str | None, socket_path: str | None, timeout: float | None = None) -> Any:
    from ..control.client import Client, ClientError

    config, sock = resolve_target(config_path, socket_path)
    try:
        path = find_socket(config, sock)
    except ClientError as exc:
        fail(f"exec-supervisor: {exc}", exc.exit_code)
    return Client(path, timeout=timeout if timeout is not None else 30.0)


def call(client: Any, method: str, path: str, body: Any = None, timeout: float | None = None) -> dict[str, Any]:
    """One request; exits with the right code on anything but success."""
    from ..control.client import ClientError, exit_code_for

    try:
        status, data = client.call(method, path, body, timeout)
    except ClientError as exc:
        fail(f"exec-supervisor: {exc}", exc.exit_code)
    if status >= 300:
        if isinstance(data, dict):
            for error in data.get("errors") or []:
                click.echo(str(error), err=True)
            message = data.get("error") or f"HTTP {status}"
        else:
            message = f"HTTP {status}"
        fail(f"exec-supervisor: {message}", exit_code_for(status))
    return data if isinstance(data, dict) else {}


def report_lagging(data: dict[str, Any]) -> None:
    from ..control.render import describe_exit

    for item in data.get("lagging") or []:
        click.echo(f"  {item.get('exec_id')}: {item.get('state')} (last exit: {describe_exit(item.get('last_exit'))})",
                   err=True)


def stream(client: Any, path: str, on_chunk: Callable[[bytes], None]) -> None:
    from ..control.client import ClientError

    try:
        for chunk in client.stream(path):
            on_chunk(chunk)
    except ClientError as exc:
        fail(f"exec-supervisor: {exc}", exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(0)
    except BrokenPipeError:
        quiet_stdout()
        sys.exit(0)


def quiet_stdout() -> None:
    # The reader went away (`| head`): point stdout at /dev/null so the exit flush does not complain.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def write_raw(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 instance', '2 instances'."""
    return f"{count} {word if count == 1 else (many or word + 's')}"
