"""run-one: one instance of a farm config, supervised in the foreground; a correct container PID 1.

Not a second supervisor: it is the daemon (daemon.run) with the config shaped, at every
(re)load, into a farm of exactly one instance (`restrict`): the same engine, restart policy
and backoff, event spool and forwarder with auth, control socket. What it adds:

- which instance: `--exec-id ET-X-3`, `--type X --id 3`, or `--id-from-hostname` (the trailing
  `-<N>` of the host name, as a StatefulSet pod's name has; the type from `--type`, from a
  host name `et-<type>-<N>`, or the config's only type);
- a state_dir of its own (`<state_dir>/<exec id>` unless `--state-dir`), so several run-one
  on one host never share a lock, a socket or a spool;
- `--log-to stdout`: the instance writes to run-one's own stdout/stderr (the platform
  collects it; crash events then carry no output tail);
- an end: when the instance will not run again (exited with no restart due, fatal, or stopped
  through the control API) run-one stops and exits, so a container never runs without its
  executor. As PID 1 it reaps every zombie (the engine reaps with waitpid(-1) on SIGCHLD) and
  SIGTERM/SIGINT stop the instance's process group (stop_signal, SIGKILL after stop_timeout).

Exit status: 0 after a stop that was asked for (SIGTERM, SIGINT, `stop`) and went cleanly,
137 when the instance had to be SIGKILLed, the instance's own exit code (128+N for signal N)
when it ended for good on its own, 127 when it could not be started at all, 2 bad usage/config.

Must not: reach into the engine's internals (it watches events on the bus), or change what
the daemon does for a whole farm.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import signal
import socket
from pathlib import Path
from typing import Any

from .config import ConfigError, FarmConfig
from .config.errors import Problem
from .events import Event

log = logging.getLogger("exec_supervisor")

EXEC_ID_RE = re.compile(r"ET-([A-Za-z][A-Za-z0-9_]*)-([0-9]{1,9})")
HOSTNAME_ID_RE = re.compile(r"^(.*)-([0-9]{1,9})$")
EXIT_KILLED = 128 + signal.SIGKILL
EXIT_NOT_STARTED = 127


class UsageError(Exception):
    """Bad run-one arguments: one line, exit code 2."""


def pick_instance(cfg: FarmConfig, exec_id: str | None = None, type_name: str | None = None,
                  instance_id: int | None = None, from_hostname: bool = False,
                  hostname: str | None = None) -> tuple[str, int]:
    """(type, id) from the options; raises UsageError naming what is wrong."""
    given = sum(bool(x) for x in (exec_id, instance_id is not None, from_hostname))
    if given != 1:
        raise UsageError("give exactly one of --exec-id ET-<Type>-<id>, --id N (with --type) or --id-from-hostname")
    if exec_id:
        match = EXEC_ID_RE.fullmatch(exec_id)
        if not match:
            raise UsageError(f"--exec-id {exec_id!r} is not an exec id like ET-HelloWorld-3")
        if type_name and type_name != match.group(1):
            raise UsageError(f"--type {type_name} does not match --exec-id {exec_id}")
        type_name, instance_id = match.group(1), int(match.group(2))
    elif from_hostname:
        host = hostname if hostname is not None else socket.gethostname()
        match = HOSTNAME_ID_RE.match(host)
        if not match:
            raise UsageError(f"--id-from-hostname: host name {host!r} does not end in -<N> (like et-helloworld-3)")
        instance_id = int(match.group(2))
        if not type_name:
            prefix = match.group(1).lower()
            found = [name for name in cfg.executors if prefix in (f"et-{name.lower()}", name.lower())]
            if len(found) == 1:
                type_name = found[0]
            elif len(cfg.executors) == 1:
                type_name = next(iter(cfg.executors))
            else:
                raise UsageError(f"--id-from-hostname: host name {host!r} names no type of "
                                 f"{cfg.path.name} ({', '.join(cfg.executors)}); add --type")
    if not type_name:
        if len(cfg.executors) != 1:
            raise UsageError(f"--id needs --type: {cfg.path.name} has types {', '.join(cfg.executors)}")
        type_name = next(iter(cfg.executors))
    if type_name not in cfg.executors:
        raise UsageError(f"{cfg.path.name}: executors: no type {type_name!r} (types: {', '.join(cfg.executors)})")
    assert instance_id is not None
    return type_name, instance_id


def restrict(cfg: FarmConfig, type_name: str, instance_id: int, state_dir: Path | None = None,
             log_dir: Path | None = None, log_to_stdout: bool = False) -> FarmConfig:
    """The farm of exactly ET-<type>-<id>. The id need not be in the type's configured ids
    (a StatefulSet scaled up, like `scale` adding ids); hosts: shares do not apply."""
    if type_name not in cfg.executors:
        raise ConfigError([Problem(str(cfg.path), None, f"executors.{type_name}",
                                   "the type run-one runs is gone from the config")])
    executor = cfg.executors[type_name].replace(ids=(instance_id,), count=None, hosts=None)
    exec_id = f"ET-{type_name}-{instance_id}"
    own_state = state_dir if state_dir is not None else cfg.state_dir / exec_id
    return dataclasses.replace(
        cfg,
        executors={type_name: executor},
        programs={type_name: cfg.programs[type_name]},
        state_dir=own_state,
        log_dir=own_state if log_to_stdout else (log_dir if log_dir is not None else cfg.log_dir),
        # The config's control.socket would be shared by every run-one: each gets its state_dir's.
        control=cfg.control.replace(socket=None),
        name=f"{cfg.name}/{exec_id}",
        output="inherit" if log_to_stdout else "files",
    )


class EndWithInstance:
    """Daemon extension: stop run-one when its instance will not run again; pick the exit status."""

    def __init__(self, exec_id: str) -> None:
        self.exec_id = exec_id
        self.code = 0
        self._daemon: Any = None
        self._unsubscribe: Any = None

    async def start(self, daemon: Any) -> None:
        self._daemon = daemon
        self._unsubscribe = daemon.bus.subscribe(self._on_event)

    async def stopping(self, daemon: Any) -> None:
        pass

    async def stop(self, daemon: Any) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_event(self, event: Event) -> None:
        if event.exec_id != self.exec_id:
            return
        daemon = self._daemon
        if event.event == "stopped":
            instance = daemon.engine.instances.get(self.exec_id)
            if daemon.engine.stopping:
                self.code = EXIT_KILLED if event.detail.get("killed") else self.code
            elif instance is None or not instance.want_running:
                self.code = EXIT_KILLED if event.detail.get("killed") else 0
                daemon.request_stop(f"{self.exec_id} was stopped")
        elif event.event in ("exited", "fatal") or (event.event == "crashed" and event.restart_in is None):
            if event.detail.get("error"):
                self.code = EXIT_NOT_STARTED
            elif event.signal:
                self.code = 128 + int(getattr(signal.Signals, event.signal, 0) or 0) or 1
            else:
                self.code = event.exit_code or (1 if event.event == "fatal" else 0)
            daemon.request_stop(f"{self.exec_id} {event.event} and will not be restarted")


def run(config_path: str, exec_id: str | None = None, type_name: str | None = None,
        instance_id: int | None = None, from_hostname: bool = False, state_dir: str | None = None,
        log_dir: str | None = None, log_to: str = "file", quiet: bool = False) -> int:
    """Supervise one instance until it ends for good or run-one is stopped; returns the exit status.

    Raises ConfigError, UsageError or daemon.DaemonError for the CLI to print."""
    from . import daemon
    from .daemon.readconfig import read_config

    cfg = read_config(config_path)
    chosen_type, chosen_id = pick_instance(cfg, exec_id, type_name, instance_id, from_hostname)
    own_state = Path(state_dir).resolve() if state_dir else None  # options are relative to the caller's cwd
    own_logs = Path(log_dir).resolve() if log_dir else None
    to_stdout = log_to == "stdout"

    def shape(loaded: FarmConfig) -> FarmConfig:
        return restrict(loaded, chosen_type, chosen_id, own_state, own_logs, to_stdout)

    watcher = EndWithInstance(f"ET-{chosen_type}-{chosen_id}")
    code = daemon.run(config_path, quiet=quiet, extensions=[lambda: watcher], shape=shape, loaded=cfg)
    return code or watcher.code
