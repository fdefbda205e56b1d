"""The `exec-supervisor` command line: a thin adapter over config, daemon and the control API.

Exit codes: 0 done, 1 the daemon could not do it, 2 bad usage or bad config, 3 no daemon.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from typing import Any, Callable

import click

from . import __version__

EXIT_FAILED, EXIT_USAGE, EXIT_NO_DAEMON = 1, 2, 3
DEFAULT_CONFIG = "configs/farm.yaml"
# A target is `all`, a type name or an exec id: never a path, so `start farm.yaml` is the daemon.
_TARGET_RE = re.compile(r"all|\*|[A-Za-z][A-Za-z0-9_]*|ET-[A-Za-z][A-Za-z0-9_]*-[0-9]+")


def _fail(message: str, code: int) -> None:
    click.echo(message, err=True)
    sys.exit(code)


def _load_or_exit(path: str, environ: dict[str, str] | None = None) -> Any:
    from . import config as config_mod  # pydantic is slow to import: only the commands that need it

    try:
        return config_mod.load(path, environ)
    except config_mod.ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="exec-supervisor")
def main() -> None:
    """Supervise farms of WeFastAPI executors (ET-<Name>-<id>).

    \b
    Run a farm:      exec-supervisor start CONFIG
    Operate it:      status, scale, start|stop|restart TARGET, reload, logs, events, shutdown
                     (find the daemon with -c CONFIG, $EXEC_SUPERVISOR_CONFIG or --socket PATH)
    """


# --------------------------------------------------------------------------- control plumbing


def control_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--socket", "socket_path", metavar="PATH", default=None,
        help="The daemon's control socket (instead of finding it from the config).",
    )(function)
    function = click.option(
        "-c", "--config", "config_path", metavar="PATH", envvar="EXEC_SUPERVISOR_CONFIG", default=DEFAULT_CONFIG,
        show_default="$EXEC_SUPERVISOR_CONFIG, else configs/farm.yaml",
        help="The farm config, to find the daemon's socket.",
    )(function)
    return function


def _client(config_path: str | None, socket_path: str | None, timeout: float | None = None) -> Any:
    from .control.client import Client, ClientError, pick_socket

    try:
        path = pick_socket(config_path, socket_path)
    except ClientError as exc:
        _fail(f"exec-supervisor: {exc}", exc.exit_code)
    return Client(path, timeout=timeout if timeout is not None else 30.0)


def _call(client: Any, method: str, path: str, body: Any = None, timeout: float | None = None) -> dict[str, Any]:
    """One request; exits with the right code on anything but success."""
    from .control.client import ClientError, exit_code_for

    try:
        status, data = client.call(method, path, body, timeout)
    except ClientError as exc:
        _fail(f"exec-supervisor: {exc}", exc.exit_code)
    if status >= 300:
        if isinstance(data, dict):
            for error in data.get("errors") or []:
                click.echo(str(error), err=True)
            message = data.get("error") or f"HTTP {status}"
        else:
            message = f"HTTP {status}"
        _fail(f"exec-supervisor: {message}", exit_code_for(status))
    return data if isinstance(data, dict) else {}


def _report_lagging(data: dict[str, Any]) -> None:
    from .control.render import describe_exit

    for item in data.get("lagging") or []:
        click.echo(f"  {item.get('exec_id')}: {item.get('state')} (last exit: {describe_exit(item.get('last_exit'))})",
                   err=True)


def _stream(client: Any, path: str, on_chunk: Callable[[bytes], None]) -> None:
    from .control.client import ClientError

    try:
        for chunk in client.stream(path):
            on_chunk(chunk)
    except ClientError as exc:
        _fail(f"exec-supervisor: {exc}", exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(0)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(0)


def _quiet_stdout() -> None:
    # The reader went away (`| head`): point stdout at /dev/null so the exit flush does not complain.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _write_raw(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


# --------------------------------------------------------------------------- running the daemon


@main.command()
@click.argument("what", metavar="CONFIG|TARGET")
@click.option("-q", "--quiet", is_flag=True,
              help="Daemon: log only info and above (leave out the spawned/stopping transitions).")
@control_options
@click.option("--no-wait", is_flag=True, help="TARGET: return without waiting for running.")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=None, help="TARGET: seconds to wait.")
def start(what: str, quiet: bool, config_path: str, socket_path: str | None, no_wait: bool,
          timeout: float | None) -> None:
    """Run the farm of CONFIG in the foreground, or start TARGET in a running farm.

    \b
    start CONFIG     the daemon, until SIGTERM or Ctrl-C (the way systemd runs it)
    start TARGET     all | <Type> | ET-<Type>-<id>: start instances (also fatal,
                     exited and held-stopped ones), waiting until they run
    """
    if _TARGET_RE.fullmatch(what) and not os.path.isfile(what):
        _instance_command("start", what, config_path, socket_path, no_wait, timeout)
        return
    from . import config as config_mod, daemon

    try:
        code = daemon.run(what, quiet=quiet)
    except config_mod.ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_USAGE)
    except daemon.DaemonError as exc:
        _fail(f"exec-supervisor: {exc}", exc.exit_code)
    sys.exit(code)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def check(config: str) -> None:
    """Validate CONFIG and print the planned instances."""
    cfg = _load_or_exit(config)
    planned = cfg.planned()
    width = max((len(spec.exec_id) for spec in planned), default=7)
    click.echo(f"{'EXEC ID':<{width}}  COMMAND")
    for spec in planned:
        click.echo(f"{spec.exec_id:<{width}}  {shlex.join(spec.argv)}")
    click.echo(
        f"{config}: OK: {len(planned)} instance{'s' * (len(planned) != 1)} of "
        f"{len(cfg.executors)} type{'s' * (len(cfg.executors) != 1)}; "
        f"state in {cfg.state_dir}, logs in {cfg.log_dir}"
    )


# --------------------------------------------------------------------------- operating a running farm


@main.command()
@click.argument("target", required=False, default="all")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's JSON answer.")
@control_options
def status(target: str, as_json: bool, config_path: str, socket_path: str | None) -> None:
    """Show every instance (or TARGET: all | <Type> | ET-<Type>-<id>) and the supervisor."""
    from .control.client import path_with_query
    from .control.render import render_status

    data = _call(_client(config_path, socket_path), "GET", path_with_query("/v1/status", target=target))
    click.echo(json.dumps(data, indent=2) if as_json else render_status(data))


def _parse_scale(spec: tuple[str, ...]) -> dict[str, Any]:
    """`NAME COUNT`, `NAME IDS` (like 0-4,10) or `NAME=VALUE ...` -> {"NAME": count | "ids"}."""
    if len(spec) == 2 and "=" not in spec[0] and "=" not in spec[1]:
        pairs = [(spec[0], spec[1])]
    else:
        if not spec or any("=" not in item for item in spec):
            raise click.UsageError("expected NAME COUNT, NAME IDS (like 0-4,10) or NAME=COUNT [NAME=COUNT ...]")
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


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("spec", nargs=-1, required=True, metavar="NAME COUNT | NAME IDS | NAME=COUNT...")
@click.option("--wait", is_flag=True, help="Return once every instance of the types runs (or is gone).")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=None, help="Seconds to wait (with --wait).")
@control_options
def scale(spec: tuple[str, ...], wait: bool, timeout: float | None, config_path: str, socket_path: str | None) -> None:
    """Change how many instances of a type run, without touching the others.

    \b
    scale HelloWorld 10          ids are added after the highest; scaling down drops the highest
    scale HelloWorld 0-4,10      exactly these ids
    scale HelloWorld=10 Other=2  several types
    The new count survives daemon restarts until the type's ids/count change in the config.
    """
    changes = _parse_scale(spec)
    body: dict[str, Any] = {"scale": changes, "wait": wait}
    if timeout is not None:
        body["timeout"] = timeout
    client = _client(config_path, socket_path)
    data = _call(client, "POST", "/v1/scale", body, timeout=(timeout or 3600) + 30 if wait else 300)
    for result in data.get("results", []):
        done = ", ".join(f"{result.get(k)} {k}" for k in ("started", "stopped") if result.get(k))
        click.echo(f"{result.get('type')}: {result.get('old')} -> {result.get('new')} instances"
                   + (f" ({done})" if done else ""))
    if not data.get("ok", True):
        click.echo(f"exec-supervisor: {data.get('error', 'not done')}", err=True)
        _report_lagging(data)
        sys.exit(EXIT_FAILED)
    if wait:
        click.echo("target reached")


def _instance_command(command: str, target: str, config_path: str, socket_path: str | None, no_wait: bool,
                      timeout: float | None, rolling: bool = False) -> None:
    body: dict[str, Any] = {"target": target, "wait": not no_wait}
    if rolling:
        body["rolling"] = True
    if timeout is not None:
        body["timeout"] = timeout
    client = _client(config_path, socket_path)
    # Waiting is bounded by the daemon (stop/start timeouts per instance), so the socket need not be.
    socket_timeout = 30.0 if no_wait else (timeout + 30 if timeout is not None and not rolling else None)
    client.timeout = socket_timeout
    data = _call(client, "POST", f"/v1/{command}", body)
    names = data.get("instances") or []
    verb = {"start": "started", "stop": "stopped", "restart": "restarted"}[command]
    if not names:
        click.echo(f"{target}: no instances")
    elif data.get("ok", True):
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        click.echo(f"{verb}{' (rolling)' if rolling else ''}: {shown}")
    if not data.get("ok", True):
        click.echo(f"exec-supervisor: {data.get('error', 'not done')}", err=True)
        _report_lagging(data)
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("target")
@click.option("--no-wait", is_flag=True, help="Return once the stop signal is sent.")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=None, help="Seconds to wait.")
@control_options
def stop(target: str, no_wait: bool, timeout: float | None, config_path: str, socket_path: str | None) -> None:
    """Stop TARGET (all | <Type> | ET-<Type>-<id>) and keep it stopped (also across reloads) until started."""
    _instance_command("stop", target, config_path, socket_path, no_wait, timeout)


@main.command()
@click.argument("target")
@click.option("--rolling", is_flag=True, help="One at a time, each running again before the next.")
@click.option("--no-wait", is_flag=True, help="Return without waiting for running (not with --rolling).")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=None, help="Seconds to wait.")
@control_options
def restart(target: str, rolling: bool, no_wait: bool, timeout: float | None, config_path: str,
            socket_path: str | None) -> None:
    """Restart TARGET (all | <Type> | ET-<Type>-<id>)."""
    _instance_command("restart", target, config_path, socket_path, no_wait, timeout, rolling)


@main.command()
@control_options
def reload(config_path: str, socket_path: str | None) -> None:
    """Re-read the daemon's config and apply the difference (like SIGHUP); a bad config changes nothing."""
    data = _call(_client(config_path, socket_path, timeout=300), "POST", "/v1/reload", {})
    click.echo(
        f"reloaded: {data.get('started', 0)} started, {data.get('stopped', 0)} stopped, "
        f"{data.get('restarted', 0)} restarted, {data.get('unchanged', 0)} unchanged"
    )


@main.command()
@click.argument("exec_id", metavar="ET-<Type>-<id>")
@click.option("-n", "--lines", type=click.IntRange(0, 100_000), default=50, show_default=True,
              help="Lines from the end.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the instance writes (across rotations).")
@control_options
def logs(exec_id: str, lines: int, follow: bool, config_path: str, socket_path: str | None) -> None:
    """Print (and follow) an instance's log file."""
    from .control.client import ClientError, exit_code_for, log_path, path_with_query

    client = _client(config_path, socket_path)
    path = path_with_query(log_path(exec_id), n=lines, follow=1 if follow else None)
    if follow:
        _stream(client, path, _write_raw)
        return
    try:
        status, raw = client.fetch("GET", path, timeout=60)
    except ClientError as exc:
        _fail(f"exec-supervisor: {exc}", exc.exit_code)
    if status >= 300:
        try:
            message = json.loads(raw).get("error")
        except (ValueError, AttributeError):
            message = raw.decode(errors="replace")
        _fail(f"exec-supervisor: {message}", exit_code_for(status))
    try:
        _write_raw(raw)
    except BrokenPipeError:
        _quiet_stdout()


@main.command()
@click.option("-n", "--lines", type=click.IntRange(0, 1000), default=50, show_default=True,
              help="Recent events to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they happen.")
@click.option("--json", "as_json", is_flag=True, help="JSON (one object per line with -f).")
@control_options
def events(lines: int, follow: bool, as_json: bool, config_path: str, socket_path: str | None) -> None:
    """Recent lifecycle events and the delivery backlog to the log API."""
    from .control.client import path_with_query
    from .control.render import render_backlog, render_event

    client = _client(config_path, socket_path)
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

        _stream(client, path_with_query("/v1/events", n=lines, follow=1), on_chunk)
        return
    data = _call(client, "GET", path_with_query("/v1/events", n=lines))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for event in data.get("events", []):
        click.echo(render_event(event))
    click.echo(render_backlog(data.get("forwarding"), data.get("backlog")))


@main.command()
@click.option("--no-wait", is_flag=True, help="Return once the daemon has been asked to stop.")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=300, show_default=True,
              help="Seconds to wait for the daemon to exit.")
@control_options
def shutdown(no_wait: bool, timeout: float, config_path: str, socket_path: str | None) -> None:
    """Stop every instance and the daemon (like SIGTERM)."""
    from .control.client import wait_gone

    client = _client(config_path, socket_path)
    data = _call(client, "POST", "/v1/shutdown", {})
    pid, count = data.get("pid"), data.get("instances", 0)
    if no_wait:
        click.echo(f"exec-supervisor (pid {pid}) is stopping {count} instances")
        return
    if not wait_gone(client, timeout):
        _fail(f"exec-supervisor: the daemon (pid {pid}) is still stopping after {timeout:g}s", EXIT_FAILED)
    click.echo(f"exec-supervisor (pid {pid}) stopped {count} instances and exited")


# --------------------------------------------------------------------------- dev service


@main.command("dev-service")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8083, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="DEV_SERVICE_TOKEN", default=None,
              help="Require this Bearer token (or set DEV_SERVICE_TOKEN, kept out of `ps`).")
@click.option("--username", default=None, help="Offer the token route for this user.")
@click.option("--password-env", default=None, metavar="VAR",
              help="Name of the environment variable holding that user's password.")
def dev_service(host: str, port: int, token: str | None, username: str | None, password_env: str | None) -> None:
    """A local stand-in of the WeFastAPI log API that prints every entry it receives."""
    from . import devservice

    password = os.environ.get(password_env) if password_env else None
    if username and not password:
        _fail("dev-service: --username needs --password-env naming a set environment variable", EXIT_USAGE)
    devservice.serve_forever(host, port, token=token, username=username, password=password)


# --------------------------------------------------------------------------- systemd


@main.command("systemd-unit")
@click.argument("config", type=click.Path(dir_okay=False))
def systemd_unit(config: str) -> None:
    """Print a systemd unit for CONFIG (this installation's path, the config's timeouts)."""
    from . import systemd

    # Read the config the way the service will: with systemd's StateDirectory / LogsDirectory.
    environ = {**os.environ, "STATE_DIRECTORY": systemd.STATE_DIRECTORY, "LOGS_DIRECTORY": systemd.LOGS_DIRECTORY}
    cfg = _load_or_exit(config, environ)
    click.echo(systemd.unit_for_config(cfg), nl=False)
    # ProtectSystem= makes /etc and /usr read-only: folders the config names there must exist beforehand.
    missing = [str(p) for p in (cfg.state_dir, cfg.log_dir) if str(p) not in (systemd.STATE_DIRECTORY,
               systemd.LOGS_DIRECTORY) and not p.exists()]
    prepare = f"sudo mkdir -p {' '.join(shlex.quote(m) for m in missing)} && " if missing else ""
    click.echo(
        f"# install: {prepare}exec-supervisor systemd-unit {shlex.quote(str(cfg.path))} | sudo tee "
        f"/etc/systemd/system/{systemd.UNIT_NAME} && sudo systemctl daemon-reload && "
        "sudo systemctl enable --now exec-supervisor",
        err=True,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
