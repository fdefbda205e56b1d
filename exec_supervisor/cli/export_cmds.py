"""`export kubernetes|systemd|supervisord CONFIG`: the farm as another engine's configuration.

Owns: the options of each target and where the text goes (stdout, or files for systemd).
Must not: build the text itself (export/ does), talk to a daemon.
"""

from __future__ import annotations

import click

from .app import EXIT_USAGE, fail, load_or_exit, main


def _as_host(cfg: object, host: str | None) -> object:
    """The config as the daemon named host sees it (hosts: shares); refuses a name with no share."""
    import dataclasses

    if host is not None:
        cfg = dataclasses.replace(cfg, name=host)  # type: ignore[type-var]
    problem = cfg.share_problem()  # type: ignore[attr-defined]
    if problem:
        fail(f"exec-supervisor export: {problem}", EXIT_USAGE)
    return cfg


@main.group("export")
def export() -> None:
    """Print the farm as Kubernetes manifests, systemd units or a supervisord config.

    \b
    Kubernetes pods and systemd units run each instance with `run-one` (restart policy,
    backoff, events as under the daemon); supervisord runs the executors itself and the
    `supervisord-listener` it is given turns its process events into ours.
    """


@export.command("kubernetes")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--image", required=True, help="Container image holding exec-supervisor and the executors.")
@click.option("--namespace", default=None, help="metadata.namespace of every object.")
@click.option("--auth-secret", metavar="NAME", default=None,
              help="Secret holding service.auth's variables (keys = the variable names; `token` for token_file).")
@click.option("--spool", type=click.Choice(["emptydir", "pvc"]), default="emptydir", show_default=True,
              help="The event spool's volume: emptyDir (survives container restarts) or a PVC per pod "
                   "(survives the pod).")
@click.option("--spool-size", metavar="SIZE", default=None, help="The PVC's request (default: spool_max_bytes + 16Mi).")
@click.option("--image-config-dir", metavar="DIR", default=None,
              help="Where the config file's folder is in the image (default: the same path as here); "
                   "each type's cwd is placed under it.")
@click.option("--command", "command", metavar="PATH", default="exec-supervisor", show_default=True,
              help="exec-supervisor in the image.")
def export_kubernetes(config: str, image: str, namespace: str | None, auth_secret: str | None, spool: str,
                      spool_size: str | None, image_config_dir: str | None, command: str) -> None:
    """Manifests for `kubectl apply -f -`: a ConfigMap, per type and id range a StatefulSet and a Service."""
    from ..export import kubernetes
    from ..export.common import ExportError, ignored_hosts

    cfg = load_or_exit(config)
    try:
        text = kubernetes.render(cfg, image, namespace=namespace, auth_secret=auth_secret, spool=spool,
                                 spool_size=spool_size, image_config_dir=image_config_dir, command=[command])
    except ExportError as exc:
        fail(f"exec-supervisor export kubernetes: {exc}", EXIT_USAGE)
    hosts = ignored_hosts(cfg)
    if hosts:
        click.echo(f"exec-supervisor export kubernetes: hosts: of {', '.join(hosts)} ignored: the cluster places "
                   "the pods (every id of the type is exported)", err=True)
    click.echo(text, nl=False)


@export.command("systemd")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--dir", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write the units into (e.g. /etc/systemd/system).")
@click.option("--host", metavar="NAME", default=None, help="With hosts: shares, the target wants NAME's share.")
def export_systemd(config: str, out_dir: str, host: str | None) -> None:
    """Template units et-<type>@.service (run-one --id %i) and <farm>.target wanting every instance."""
    import os
    from pathlib import Path

    from .. import systemd
    from ..export import systemd as units
    from ..export.common import ExportError, executable

    # Read the config the way the units will: with systemd's StateDirectory / LogsDirectory.
    environ = {**os.environ, "STATE_DIRECTORY": systemd.STATE_DIRECTORY, "LOGS_DIRECTORY": systemd.LOGS_DIRECTORY}
    cfg = _as_host(load_or_exit(config, environ), host)
    try:
        files = units.units(cfg, executable())
    except ExportError as exc:
        fail(f"exec-supervisor export systemd: {exc}", EXIT_USAGE)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
    except OSError as exc:
        fail(f"exec-supervisor export systemd: --dir {out_dir}: {exc.strerror}", EXIT_USAGE)
    for name in files:
        click.echo(str(out / name))
    click.echo(units.install_hint(out, cfg), err=True)


@export.command("supervisord")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--host", metavar="NAME", default=None, help="With hosts: shares, the programs of NAME's share.")
def export_supervisord(config: str, host: str | None) -> None:
    """A supervisord.conf fragment: [program:et-<type>] per id range and the event listener."""
    from ..export import supervisord
    from ..export.common import ExportError, auth_env_names

    cfg = _as_host(load_or_exit(config), host)
    try:
        text = supervisord.render(cfg)
    except ExportError as exc:
        fail(f"exec-supervisor export supervisord: {exc}", EXIT_USAGE)
    if auth_env_names(cfg):
        click.echo(f"exec-supervisor export supervisord: warning: supervisord gives its whole environment to every "
                   f"program, so the executors would see {', '.join(auth_env_names(cfg))}; prefer "
                   "service.auth.token_file under supervisord", err=True)
    click.echo(text, nl=False)
