"""The commands that take a farm beyond one daemon on one machine.

    run-one                one instance in the foreground (containers, systemd template units, supervisord)
    export kubernetes|systemd|supervisord   the farm as another engine's configuration
    supervisord-listener   supervisord's process events -> our lifecycle events, forwarded

Owns: these commands' options and exit codes. Must not: talk to a running daemon (the
farm's own commands do). Like the rest of cli/, only click is imported up front.
"""

from __future__ import annotations

import sys

import click

from .app import EXIT_USAGE, fail, main


@main.command("run-one")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--exec-id", metavar="ET-<Type>-<id>", default=None, help="The instance to run.")
@click.option("--type", "type_name", metavar="TYPE", default=None, help="Its type (with --id or --id-from-hostname).")
@click.option("--id", "instance_id", type=click.IntRange(0, 999_999_999), default=None, help="Its id.")
@click.option("--id-from-hostname", is_flag=True,
              help="The id is the host name's trailing -<N> (a StatefulSet pod's name: et-helloworld-3).")
@click.option("--log-to", type=click.Choice(["file", "stdout"]), default="file", show_default=True,
              help="The instance's output: <log_dir>/<exec id>.log, or run-one's own stdout/stderr.")
@click.option("--state-dir", metavar="DIR", default=None,
              help="Lock, control socket and event spool [default: <state_dir>/<exec id>].")
@click.option("--log-dir", metavar="DIR", default=None, help="Where the log file goes [default: log_dir].")
@click.option("-q", "--quiet", is_flag=True, help="Log only info and above.")
def run_one(config: str, exec_id: str | None, type_name: str | None, instance_id: int | None,
            id_from_hostname: bool, log_to: str, state_dir: str | None, log_dir: str | None, quiet: bool) -> None:
    """Run one instance of CONFIG in the foreground, supervised (restarts, events), as a container's PID 1.

    \b
    run-one farm.yaml --exec-id ET-HelloWorld-3
    run-one farm.yaml --type HelloWorld --id 3
    run-one farm.yaml --id-from-hostname --log-to stdout     (in a StatefulSet pod)
    Exits when the instance ends for good: 0 after an asked-for stop, else its exit status.
    """
    from .. import config as config_mod, daemon, runone

    try:
        code = runone.run(config, exec_id, type_name, instance_id, id_from_hostname, state_dir, log_dir, log_to,
                          quiet)
    except config_mod.ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_USAGE)
    except runone.UsageError as exc:
        fail(f"exec-supervisor run-one: {exc}", EXIT_USAGE)
    except daemon.DaemonError as exc:
        fail(f"exec-supervisor: {exc}", exc.exit_code)
    sys.exit(code)


@main.command("supervisord-listener")
@click.argument("config", type=click.Path(dir_okay=False))
def supervisord_listener(config: str) -> None:
    """supervisord's event listener: PROCESS_STATE events -> lifecycle events on the log API.

    Run by supervisord ([eventlistener:exec-supervisor], see `export supervisord`); it talks
    the listener protocol on stdin/stdout, so it is not for a terminal.
    """
    from .. import config as config_mod, supervisordlistener

    try:
        code = supervisordlistener.run(config)
    except config_mod.ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code)
