"""Commands around the daemon itself: `start CONFIG` (and its first words), `check`, `dev-service`, `systemd-unit`.

Owns: running the daemon in the foreground and what it tells the operator at start.
Must not: talk to a running daemon (farm_cmds does).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Any

import click

from .app import (CONFIG_ENV, DEFAULT_CONFIG, EXIT_USAGE, control_options, fail, load_or_exit, main, plural,
                  resolve_target)
from .completion import complete_target

# A target is `all`, a type name or an exec id: never a path, so `start farm.yaml` is the daemon.
TARGET_RE = re.compile(r"all|\*|[A-Za-z][A-Za-z0-9_]*|ET-[A-Za-z][A-Za-z0-9_]*-[0-9]+")


class StartBanner:
    """Daemon extension: once every instance is spawned, say where things are and what to type next."""

    def __init__(self, config_arg: str) -> None:
        self.config_arg = config_arg

    async def start(self, daemon: Any) -> None:
        pass

    async def stopping(self, daemon: Any) -> None:
        pass

    async def stop(self, daemon: Any) -> None:
        pass

    async def started(self, daemon: Any) -> None:
        if daemon.resume is not None:
            return  # an in-place upgrade: the operator saw this when the daemon started
        cfg = daemon.config
        # The commands below find this daemon by its config: spell it the way the operator will type it.
        config = self.config_arg
        if os.path.realpath(config) == os.path.realpath(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG):
            prefix = "exec-supervisor"
        else:
            prefix = f"exec-supervisor -c {shlex.quote(config)}"
        lines = [
            f"exec-supervisor: {plural(daemon.engine.counts()['desired'], 'instance')} of "
            f"{plural(len(cfg.executors), 'type')}; logs in {cfg.log_dir}/ET-<Name>-<id>.log, "
            f"control socket {cfg.socket_path}",
        ]
        http = getattr(cfg, "http", None)
        url = getattr(http, "url", None) if http is not None else None
        if isinstance(url, str) and url:
            lines.append(f"  web page: {url}")
        lines += [
            f"  {prefix} status          from another terminal (also: logs all -f, scale, reload)",
            "  Ctrl-C stops the farm; a second Ctrl-C kills at once",
        ]
        from ..events import locallog

        locallog.flush()  # the start-up's event lines first, then these
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()


@main.command()
@click.argument("what", metavar="CONFIG|TARGET", required=False, shell_complete=complete_target)
@click.option("-q", "--quiet", is_flag=True,
              help="Daemon: log only info and above (leave out the spawned/stopping transitions).")
@click.option("--tail", is_flag=True,
              help="Daemon: also print the instances' output, interleaved, each line prefixed with its exec id.")
@control_options
@click.option("--no-wait", is_flag=True, help="TARGET: return without waiting for running.")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=None, help="TARGET: seconds to wait.")
# An in-place upgrade re-executes the daemon with these (see upgrade.py); not for operators.
@click.option("--resume", "resume", default=None, hidden=True)
@click.option("--fds", "fds", default=None, hidden=True)
@click.option("--dry-run", "dry_run", is_flag=True, hidden=True)
def start(what: str | None, quiet: bool, tail: bool, config_path: str | None, socket_path: str | None,
          no_wait: bool, timeout: float | None, resume: str | None = None, fds: str | None = None,
          dry_run: bool = False) -> None:
    """Run the farm of CONFIG in the foreground, or start TARGET in a running farm.

    \b
    start CONFIG     the daemon, until SIGTERM or Ctrl-C (the way systemd runs it);
                     without CONFIG, the one of -c / $EXEC_SUPERVISOR_CONFIG
    start TARGET     all | <Type> | ET-<Type>-<id>: start instances (also fatal,
                     exited and held-stopped ones), waiting until they run
    """
    if what is not None and TARGET_RE.fullmatch(what) and not os.path.isfile(what):
        from .farm_cmds import instance_command

        instance_command("start", what, config_path, socket_path, no_wait, timeout)
        return
    if what is None:
        what, _ = resolve_target(config_path, None)
    if resume is not None and dry_run:
        from .upgrade_cmds import dry_run as upgrade_dry_run

        upgrade_dry_run(what, resume)
    from ..config.validate import PendingCheck

    # The config is validated in a child (pydantic stays out of the daemon): started first, it
    # works while this process imports the daemon.
    pending = PendingCheck(what) if resume is None else None
    from .. import config as config_mod, daemon

    extensions: list[Any] = [lambda: StartBanner(what)]
    if tail:
        from .tail import TailExtension

        extensions.append(TailExtension)
    try:
        # An upgrade re-executes the daemon with the same options (and --resume).
        again = [*(["-q"] if quiet else []), *(["--tail"] if tail else [])]
        code = daemon.run(what, quiet=quiet, extensions=extensions, resume=resume, fds=fds, start_args=again,
                          pending=pending)
    except config_mod.ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_USAGE)
    except daemon.DaemonError as exc:
        fail(f"exec-supervisor: {exc}", exc.exit_code)
    sys.exit(code)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.option("-c", "--config", "config_path", metavar="PATH", default=None, help="The same as CONFIG.")
@click.option("--host", metavar="NAME", default=None,
              help="With hosts: shares, the plan of the daemon whose supervisor.name is NAME.")
def check(config: str | None, config_path: str | None, host: str | None) -> None:
    """Validate CONFIG and print the planned instances (and any runtime scale a daemon would keep)."""
    import dataclasses

    from ..config.farm import shown_argv
    from ..daemon import scale_override_note
    from ..supervise.overrides import read_overrides

    config = config or resolve_target(config_path, None)[0]
    cfg = load_or_exit(config)
    if host is not None:
        cfg = dataclasses.replace(cfg, name=host)
    if cfg.host_names():
        click.echo(f"host {cfg.name} (known: {', '.join(cfg.host_names())})")
    share_problem = cfg.share_problem()
    if share_problem:
        fail(share_problem, EXIT_USAGE)
    planned = cfg.planned()
    width = max((len(spec.exec_id) for spec in planned), default=7)
    click.echo(f"{'EXEC ID':<{width}}  COMMAND")
    for spec in planned:
        click.echo(f"{spec.exec_id:<{width}}  {shlex.join(shown_argv(spec.argv, spec.cwd))}")
    click.echo(
        f"{cfg.path}: OK: {plural(len(planned), 'instance')} of {plural(len(cfg.executors), 'type')}; "
        f"state in {cfg.state_dir}, logs in {cfg.log_dir}"
    )
    for warning in cfg.secret_env_warnings() + cfg.hosts_warnings():
        click.echo("warning: " + warning)
    scaled, scaled_at, held = read_overrides(cfg.state_dir)
    for type_name, ids in scaled.items():
        if type_name in cfg.executors:
            click.echo("note: " + scale_override_note(type_name, len(ids), len(cfg.ids_of(type_name)),
                                                      scaled_at.get(type_name)))
    held = {e for e in held if e.rsplit("-", 1)[0][3:] in cfg.executors}
    if held:
        click.echo(f"note: {plural(len(held), 'instance')} held stopped by `exec-supervisor stop`: "
                   + ", ".join(sorted(held)[:8]) + (" ..." if len(held) > 8 else ""))


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
    from .. import devservice

    password = os.environ.get(password_env) if password_env else None
    if username and not password:
        fail("dev-service: --username needs --password-env naming a set environment variable", EXIT_USAGE)
    devservice.serve_forever(host, port, token=token, username=username, password=password)


@main.command("systemd-unit")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--keep-executors", is_flag=True,
              help="KillMode=process: executors outlive a daemon crash and are adopted by the restarted "
                   "daemon; systemd then never kills them itself (see the unit's comment).")
def systemd_unit(config: str, keep_executors: bool) -> None:
    """Print a systemd unit for CONFIG (this installation's path, the config's timeouts)."""
    from .. import systemd

    # Read the config the way the service will: with systemd's StateDirectory / LogsDirectory.
    environ = {**os.environ, "STATE_DIRECTORY": systemd.STATE_DIRECTORY, "LOGS_DIRECTORY": systemd.LOGS_DIRECTORY}
    cfg = load_or_exit(config, environ)
    click.echo(systemd.unit_for_config(cfg, keep_executors), nl=False)
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
