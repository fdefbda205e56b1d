"""The `exec-supervisor` command line: a thin adapter over config, daemon and the control API.

Exit codes: 0 done, 1 the daemon could not do it, 2 bad usage or bad config, 3 no daemon.
"""

from __future__ import annotations

import shlex
import sys

import click

from . import __version__, config as config_mod

EXIT_FAILED, EXIT_USAGE, EXIT_NO_DAEMON = 1, 2, 3


def _fail(message: str, code: int) -> None:
    click.echo(message, err=True)
    sys.exit(code)


def _load_or_exit(path: str) -> config_mod.FarmConfig:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="exec-supervisor")
def main() -> None:
    """Supervise farms of WeFastAPI executors (ET-<Name>-<id>)."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="Also log debug events (spawned, stopping).")
def start(config: str, verbose: bool) -> None:
    """Run the farm in the foreground until SIGTERM or Ctrl-C."""
    from . import daemon

    try:
        code = daemon.run(config, verbose=verbose)
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
        f"{config}: OK: {len(planned)} instances of {len(cfg.executors)} types; "
        f"state in {cfg.state_dir}, logs in {cfg.log_dir}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
