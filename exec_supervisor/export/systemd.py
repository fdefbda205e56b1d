"""`export systemd`: the farm as systemd template units, one unit instance per exec id.

    et-<type>@.service   ExecStart runs `run-one CONFIG --type <Type> --id %i --log-to stdout`:
                         each instance its own cgroup, journal (`journalctl -u et-helloworld@3`),
                         restart by systemd only if run-one itself dies (Restart=on-abnormal: the
                         instance's restart policy and backoff stay run-one's)
    <farm>.target        Wants= every configured instance; `systemctl start|stop <farm>.target`

The hardening is the shipped unit's (exec_supervisor/systemd.py: HARDENING). Type=notify: run-one
sends READY=1 once its instance is spawned and pings the watchdog from its loop. Reads only the
loaded config; writes nothing itself (the command writes the files).
"""

from __future__ import annotations

from typing import Any

from .. import systemd as shipped
from ..config import FarmConfig
from .common import ExportError, farm_name


def unit_base(type_name: str) -> str:
    return f"et-{type_name.lower()}"


def target_name(cfg: FarmConfig) -> str:
    return f"{farm_name(cfg)}.target"


def _read_write_paths(cfg: FarmConfig) -> str:
    extra = [str(p) for p, own in ((cfg.state_dir, shipped.STATE_DIRECTORY), (cfg.log_dir, shipped.LOGS_DIRECTORY))
             if str(p) != own]
    if not extra:
        return ""
    words = " ".join(shipped.quote_word("-" + p) for p in extra)
    return f"# The config's own state_dir / log_dir (ProtectSystem= would make them read-only under /etc, /usr):\n" \
           f"ReadWritePaths={words}\n"


def template_unit(cfg: FarmConfig, type_name: str, command: list[str]) -> str:
    executor = cfg.executors[type_name]
    target = target_name(cfg)
    exec_start = " ".join(shipped.quote_word(a) for a in [*command, "run-one", str(cfg.path), "--type", type_name])
    stop = shipped.seconds_text(executor.stop_timeout + shipped.STOP_MARGIN_SECONDS)
    return f"""\
# ET-{type_name}-<id> of {cfg.path} as systemd units (exec-supervisor export systemd).
# One unit per exec id: systemctl start {unit_base(type_name)}@3   journalctl -u {unit_base(type_name)}@3
# Status of one instance: exec-supervisor status --socket {shipped.STATE_DIRECTORY}/ET-{type_name}-<id>/control.sock

[Unit]
Description=exec-supervisor: ET-{type_name}-%i of {cfg.path}
PartOf={target}
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start} --id %i --log-to stdout
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM to run-one only: it stops the instance's group (stop_signal, SIGKILL after stop_timeout).
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={stop}
TimeoutStartSec={shipped.seconds_text(executor.stop_timeout + 60)}
# run-one restarts its executor with the config's policy and backoff, and exits when that policy
# gives up (max_restarts, restart: never): systemd restarts run-one only when it is killed.
Restart=on-abnormal
RestartSec=2
WatchdogSec={shipped.WATCHDOG_SEC}
# state_dir when the config leaves it unset: /var/lib/exec-supervisor/ET-{type_name}-<id> for each instance.
StateDirectory=exec-supervisor
StateDirectoryMode=0700
LogsDirectory=exec-supervisor
LogsDirectoryMode=0750
{_read_write_paths(cfg)}TasksMax=infinity
# run-one contains its instance in a cgroup of the unit's own (supervisor.containment).
Delegate=yes
Environment=PYTHONUNBUFFERED=1
SyslogIdentifier=et-{type_name.lower()}-%i
#User=exec-supervisor
#Group=exec-supervisor

{shipped.HARDENING}
[Install]
WantedBy={target}
"""


def target_unit(cfg: FarmConfig, ids: dict[str, tuple[int, ...]]) -> str:
    wants = [f"{unit_base(t)}@{i}.service" for t, type_ids in ids.items() for i in type_ids]
    lines = "\n".join(f"Wants={' '.join(wants[n:n + 8])}" for n in range(0, len(wants), 8))
    return f"""\
# Every instance of {cfg.path} (exec-supervisor export systemd).
# systemctl enable --now {target_name(cfg)}   starts them all; stop/restart it to stop/restart them all.

[Unit]
Description=exec-supervisor farm {farm_name(cfg)}: {len(wants)} instances of {cfg.path}
{lines}

[Install]
WantedBy=multi-user.target
"""


def units(cfg: FarmConfig, command: list[str], ids: dict[str, tuple[int, ...]] | None = None) -> dict[str, str]:
    """File name -> text. ids: the instances the target wants (default: every configured id)."""
    # With hosts:, this host's share (supervisor.name, or the command's --host).
    chosen = ids if ids is not None else {name: cfg.ids_of(name) for name in cfg.executors}
    seen: dict[str, str] = {}
    files: dict[str, str] = {}
    for type_name in cfg.executors:
        name = f"{unit_base(type_name)}@.service"
        if name in seen:
            raise ExportError(f"{cfg.path.name}: executors.{type_name}: its unit {name} clashes with the one of "
                              f"{seen[name]} (type names that differ only in case)")
        seen[name] = type_name
        files[name] = template_unit(cfg, type_name, command)
    files[target_name(cfg)] = target_unit(cfg, chosen)
    return files


def install_hint(out_dir: Any, cfg: FarmConfig) -> str:
    return (f"# install: sudo cp {out_dir}/* /etc/systemd/system/ && sudo systemctl daemon-reload && "
            f"sudo systemctl enable --now {target_name(cfg)}")
