"""The validated config as the daemon holds it: plain frozen records, InstanceSpec and FarmConfig.

No pydantic and no YAML here, so that the daemon never imports them: config/models.py
validates (in a short-lived child process, see config/validate.py, or in the CLI) and
loader.py turns each validated model into the record of the same name below. A record
has exactly the fields and defaults of its model (tests/test_config_records.py holds
them together). Also the JSON form of a FarmConfig, which is how the child hands it over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from .constants import DEFAULT_ARGS
from .listen import parse_listen

_RECORD = dataclass(frozen=True, kw_only=True)


@_RECORD
class Backoff:
    initial: float = 1.0
    max: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1


@_RECORD
class Probe:
    exec: list[str] | None = None
    http: str | None = None
    every: float = 10.0
    timeout: float = 2.0
    failures: int = 3
    grace: float = 0.0


@_RECORD
class Incidents:
    threshold: tuple[str, ...] = ("3",)
    window: float = 30.0
    digest_every: float = 60.0
    resolve_after: float = 60.0
    forward: Literal["digest", "all"] = "digest"
    group_wait: float = 2.0
    restart_batch: int = 10
    restart_every: float = 1.0


@_RECORD
class ExecutorType:
    """One executor type with the defaults merged in (its cwd made absolute by the loader)."""

    command: list[str] = field(default_factory=list)
    ids: tuple[int, ...] | None = None
    count: int | None = None
    hosts: dict[str, tuple[int, ...]] | None = None
    args: list[str] = field(default_factory=lambda: list(DEFAULT_ARGS))
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "."
    restart: Literal["always", "on-failure", "never"] = "always"
    success_exit_codes: list[int] = field(default_factory=lambda: [0])
    start_seconds: float = 3.0
    backoff: Backoff = field(default_factory=Backoff)
    max_restarts: int | None = None
    restart_window: float = 600.0
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 10.0
    log_max_bytes: int = 10 * 1024**2
    log_backups: int = 5
    ready: Literal["start_seconds", "notify"] = "start_seconds"
    start_timeout: float | None = None
    watchdog: float | None = None
    probe: Probe | None = None
    max_memory: int | None = None
    incidents: Incidents | None = field(default_factory=Incidents)

    @property
    def id_list(self) -> tuple[int, ...]:
        return self.ids if self.ids is not None else tuple(range(self.count or 0))

    def replace(self, **changes: Any) -> "ExecutorType":
        return dataclasses.replace(self, **changes)


@_RECORD
class AuthConfig:
    """How the supervisor authenticates to the log API: env var names and a file path, never secrets."""

    token_env: str | None = None
    token_file: str | None = None
    username_env: str | None = None
    password_env: str | None = None


@_RECORD
class ServiceConfig:
    host: str = "http://127.0.0.1:8083/"
    auth: AuthConfig = field(default_factory=AuthConfig)
    relay: bool = False


@_RECORD
class EventsConfig:
    min_level: Literal["debug", "info", "warning", "error"] = "info"
    language: Literal["en", "zh"] = "en"
    spool_max_bytes: int = 64 * 1024**2
    forward: bool = True
    executor_lines_per_second: int = 100
    executor_lines_burst: int = 1000


@_RECORD
class ControlConfig:
    socket: str | None = None
    socket_mode: int = 0o600
    group: str | None = None

    def replace(self, **changes: Any) -> "ControlConfig":
        return dataclasses.replace(self, **changes)


@_RECORD
class HttpConfig:
    """The TCP listener of the page and /metrics; listen None: none."""

    listen: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    metrics_auth: bool = False
    actions: bool = False

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen else None

    @property
    def has_token(self) -> bool:
        return bool(self.token_env or self.token_file)


# The record each validated model becomes (by the model's class name) and what nests in each.
RECORDS: dict[str, type] = {cls.__name__: cls for cls in (
    Backoff, Probe, Incidents, ExecutorType, AuthConfig, ServiceConfig, EventsConfig, ControlConfig, HttpConfig)}
_NESTED: dict[type, dict[str, type]] = {
    ExecutorType: {"backoff": Backoff, "probe": Probe, "incidents": Incidents},
    ServiceConfig: {"auth": AuthConfig},
}

# --------------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """What one instance runs. A change in argv/env/cwd means a restart; policy changes apply in place."""

    type: str
    id: int
    exec_id: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str

    @property
    def launch_key(self) -> tuple[Any, ...]:
        return (self.argv, self.env, self.cwd)


@dataclass(frozen=True)
class FarmConfig:
    path: Path
    base_dir: Path
    service: ServiceConfig
    name: str
    state_dir: Path
    log_dir: Path
    events: EventsConfig
    control: ControlConfig
    # Each type with defaults merged in; its cwd is absolute.
    executors: Mapping[str, ExecutorType]
    # The resolved program path per type, after {python} and PATH lookup.
    programs: Mapping[str, str]
    # The TCP listener of the page and /metrics (config/http.py); its listen is None when off.
    http: HttpConfig
    # Farm-wide bound on instances (configured and scaled): supervisor.max_instances or the machine's default.
    max_instances: int = 100_000
    on_restart: str = "adopt"  # supervisor.on_restart
    # "files": each instance writes <log_dir>/<exec id>.log; "inherit": instances write to the
    # supervisor's own stdout/stderr (run-one --log-to stdout, where a platform collects output).
    output: Literal["files", "inherit"] = "files"
    # The same as programs for each type's exec probe, if it has one.
    probe_programs: Mapping[str, str] = field(default_factory=dict)
    containment: str = "auto"  # supervisor.containment: auto | cgroup | process
    log_group: str | None = None  # supervisor.log_group

    @property
    def socket_path(self) -> Path:
        # load() makes control.socket absolute (against the config file's folder).
        return Path(self.control.socket) if self.control.socket else self.state_dir / "control.sock"

    def ids_of(self, type_name: str) -> tuple[int, ...]:
        """The ids this daemon runs: all of the type's, or with hosts: the share of supervisor.name."""
        executor = self.executors[type_name]
        if executor.hosts is None:
            return executor.id_list
        return executor.hosts.get(self.name, ())

    def host_names(self) -> list[str]:
        """Every host name that has a share of some type."""
        return sorted({host for executor in self.executors.values() for host in (executor.hosts or {})})

    def share_problem(self) -> str | None:
        """Why this daemon would run nothing: its name matches no share (a typo must not run nothing quietly)."""
        names = self.host_names()
        if not names or self.name in names or any(self.ids_of(t) for t in self.executors):
            return None
        return (f"{self.path.name}: supervisor.name {self.name!r} matches no share in hosts: (known: "
                f"{', '.join(names)}), so this daemon would run no instance; set supervisor.name (default: "
                "the host name) to one of them")

    def hosts_warnings(self) -> list[str]:
        """Ids of a type with hosts: that no host runs."""
        found = []
        for type_name, executor in self.executors.items():
            if executor.hosts is None:
                continue
            shared = {i for ids in executor.hosts.values() for i in ids}
            left = [i for i in executor.id_list if i not in shared]
            if left:
                shown = ", ".join(str(i) for i in left[:10]) + (" ..." if len(left) > 10 else "")
                found.append(f"{self.path}: executors.{type_name}.hosts: ids {shown} are in no host's share: "
                             "no daemon runs them")
        return found

    def instance_spec(self, type_name: str, instance_id: int, relay: str | None = None) -> InstanceSpec:
        """The spec of one instance (which need not be in the configured id set: scale adds ids).

        relay: the daemon's relay URL when service.relay is on; the instance's service host is then
        <relay><exec id>/ (the relay tells instances apart by that path)."""
        executor = self.executors[type_name]
        exec_id = f"ET-{type_name}-{instance_id}"
        service_host = f"{relay}{exec_id}/" if relay and self.service.relay else self.service.host
        values = placeholder_values(type_name, instance_id, service_host)
        # Interned: most arguments (the service host, say) are the same text for every instance.
        argv = (self.programs[type_name],) + tuple(
            sys.intern(arg.format_map(values)) for arg in executor.command[1:]
        ) + tuple(sys.intern(arg.format_map(values)) for arg in executor.args)
        env = dict(executor.env)
        env.update(
            ET_EXEC_ID=exec_id,
            ET_NAME=type_name,
            ET_ID=str(instance_id),
            ET_SERVICE_HOST=service_host,
        )
        if executor.watchdog:
            # As systemd sets it; a changed watchdog restarts the instance, which must learn the new pace.
            # No WATCHDOG_PID: see the README (Health: the protocol).
            env["WATCHDOG_USEC"] = str(max(1, round(executor.watchdog * 1_000_000)))
        cwd = sys.intern(os.path.normpath(os.path.join(self.base_dir, executor.cwd)))
        return InstanceSpec(type_name, instance_id, exec_id, argv, tuple(sorted(env.items())), cwd)

    def secret_env_warnings(self) -> list[str]:
        """One line per type whose env: hands it a service.auth variable (the supervisor's credential)."""
        auth = self.service.auth
        keys = {auth.token_env: "token_env", auth.username_env: "username_env", auth.password_env: "password_env"}
        found = []
        for type_name, executor in self.executors.items():
            for name in executor.env:
                if name in keys and name:
                    how = "passes the supervisor's value" if executor.env[name] == "" else "sets it"
                    found.append(
                        f"{self.path}: executors.{type_name}.env.{name}: {how} to every instance of {type_name}, "
                        f"but it is service.auth.{keys[name]}, the supervisor's credential; executors' log lines "
                        "reach the service through the supervisor without it"
                    )
        return found

    def planned(self) -> list[InstanceSpec]:
        return [
            self.instance_spec(name, instance_id)
            for name in self.executors
            for instance_id in self.ids_of(name)
        ]


def probe_values(executor: ExecutorType, type_name: str, instance_id: int, service_host: str) -> dict[str, str]:
    """What a probe's command or URL may use: the placeholders, and the type's env by name (PORT or port)."""
    values = {name.lower(): value for name, value in executor.env.items()}
    values.update(executor.env)
    values.update(placeholder_values(type_name, instance_id, service_host))
    return values


def placeholder_values(type_name: str, instance_id: int, service_host: str) -> dict[str, str]:
    return {
        "id": str(instance_id),
        "name": type_name,
        "exec_id": f"ET-{type_name}-{instance_id}",
        "service_host": service_host,
        "python": sys.executable,
    }




# --------------------------------------------------------------------------- the JSON form

_PATHS = ("path", "base_dir", "state_dir", "log_dir")
_SECTIONS = {"service": ServiceConfig, "events": EventsConfig, "control": ControlConfig, "http": HttpConfig}


def farm_to_json(farm: FarmConfig) -> str:
    """The whole FarmConfig as JSON (what the validating child prints for the daemon)."""
    return json.dumps(dataclasses.asdict(farm), default=str, separators=(",", ":"))


def farm_from_json(text: str | dict[str, Any]) -> FarmConfig:
    """The FarmConfig that farm_to_json wrote (as text or parsed); ValueError/KeyError/TypeError when it is not one."""
    data = json.loads(text) if isinstance(text, str) else text
    values: dict[str, Any] = dict(data)
    for key in _PATHS:
        values[key] = Path(data[key])
    for key, cls in _SECTIONS.items():
        values[key] = _record(cls, data[key])
    values["executors"] = {name: _record(ExecutorType, own) for name, own in data["executors"].items()}
    return FarmConfig(**values)


def _record(cls: type, data: dict[str, Any]) -> Any:
    values = dict(data)
    for key, nested in _NESTED.get(cls, {}).items():
        if values.get(key) is not None:
            values[key] = _record(nested, values[key])
    # JSON has no tuples: give back the ones the records hold.
    if cls is ExecutorType:
        if values.get("ids") is not None:
            values["ids"] = tuple(values["ids"])
        if values.get("hosts") is not None:
            values["hosts"] = {host: tuple(ids) for host, ids in values["hosts"].items()}
    elif cls is Incidents:
        values["threshold"] = tuple(values["threshold"])
    return cls(**values)


def shown_argv(argv: Any, cwd: str) -> list[str]:
    """The command line with each relative path that exists in the instance's cwd made absolute (display only)."""
    shown = []
    for arg in argv:
        if "/" in arg and not arg.startswith(("/", "-")) and "://" not in arg:
            candidate = os.path.normpath(os.path.join(cwd, arg))
            if os.path.exists(candidate):
                arg = candidate
        shown.append(arg)
    return shown
