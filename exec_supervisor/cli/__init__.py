"""The `exec-supervisor` command line: a thin adapter over config, daemon and the control API.

    app.py          the group, global options (-c/--config, --socket before or after the
                    command), exit codes, finding the daemon (registry first), requests
    daemon_cmds.py  start CONFIG [--tail], check, dev-service, systemd-unit
    farm_cmds.py    start/stop/restart TARGET, scale, reload, shutdown
    upgrade_cmds.py upgrade (in place), and the check the daemon runs before one
    view_cmds.py    status (--state, --watch, exit code 4)
    log_cmds.py     logs, events
    fleet_cmds.py   run-one, supervisord-listener
    export_cmds.py  export kubernetes|systemd|supervisord
    render.py       status table and describe sheet; style.py colours; progress.py live counts
    completion.py   shell completion of type names and exec ids from the running daemon
    tail.py         `start --tail`: the instances' log files, interleaved with prefixes

Exit codes: 0 done, 1 the daemon could not do it, 2 bad usage or bad config, 3 no daemon,
4 (status) a desired instance is not running.
"""

from __future__ import annotations

from . import daemon_cmds, export_cmds, farm_cmds, fleet_cmds, log_cmds, upgrade_cmds, view_cmds  # noqa: F401  (each adds its commands)
from .app import main

__all__ = ["main"]
