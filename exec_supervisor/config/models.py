"""The config's validation schema: one pydantic model per section and per executor type.

Pure: no file is read here. Validators raise PydanticCustomError with operator-facing
sentences; problems.py turns them into file:line messages. What validation produces is
held in the plain records of farm.py (same names, same fields): only the validating side
(the CLI, or the daemon's short-lived child) ever imports this module.
"""

from __future__ import annotations

import re
import signal
import socket
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .constants import AUTH_ENV_NAME_RE, DEFAULT_ARGS, MAX_IDS, MAX_NAME_LENGTH, RESERVED_ENV
from .values import (env_name_shown, no_nul, none_is_empty, not_bool, parse_duration, parse_ids, parse_signal,
                     parse_size, path_text, show_value, split_command)

# What YAML gives, parsed before pydantic checks the type (values.py holds the parsers).
Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Signal = Annotated[int, BeforeValidator(parse_signal)]
IdSet = Annotated[tuple[int, ...], BeforeValidator(parse_ids)]
Command = Annotated[list[str], BeforeValidator(split_command)]
Int = Annotated[int, BeforeValidator(not_bool)]
PathText = Annotated[str, BeforeValidator(path_text)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Backoff(Strict):
    initial: Duration = 1.0
    max: Duration = 60.0
    factor: float = Field(2.0, ge=1.0, le=100.0)
    jitter: float = Field(0.1, ge=0.0, le=1.0)

    @field_validator("factor", "jitter", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value}")
        return value

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> "Backoff":
        if self.max < self.initial:
            raise ValueError(f"max ({self.max:g}s) is below initial ({self.initial:g}s)")
        return self


class Probe(Strict):
    """A check the daemon runs against a ready instance: a command (exit 0 = healthy) or an HTTP GET (2xx)."""

    exec: Command | None = None
    http: str | None = None
    every: Duration = 10.0
    timeout: Duration = 2.0
    failures: Annotated[Int, Field(ge=1, le=1000)] = 3
    grace: Duration = 0.0

    @field_validator("exec")
    @classmethod
    def _exec_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError("the probe command is empty; give the program to run")
        return None if value is None else no_nul(value)

    @field_validator("http")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # Placeholders may stand for the port: check the URL with them filled by a sample.
        sample = re.sub(r"\{[^{}]*\}", "1", value)
        try:
            parts = urlsplit(sample)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s|\x00", value):
            raise ValueError(f"{show_value(value)} is not an http:// or https:// URL")
        return value

    @field_validator("every", "timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 0.01:
            raise ValueError("must be at least 10ms")
        return value

    @model_validator(mode="after")
    def _one_check(self) -> "Probe":
        if (self.exec is None) == (self.http is None):
            raise PydanticCustomError("probe_kind", "give exactly one of exec (a command) or http (a URL)")
        return self


def _threshold(value: Any) -> Any:
    """incidents.threshold: a count of distinct instances (3), a share of the type ("50%"), or a list of both."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected a count like 3, a share like \"50%\", or a list of both")
    parsed: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"{show_value(item)} is not a count like 3 or a share like \"50%\"")
        text = str(item).strip()
        if text.endswith("%"):
            try:
                share = float(text[:-1])
            except ValueError:
                share = -1.0
            if not 0 < share <= 100:
                raise ValueError(f"{show_value(item)} is not a share between 0% and 100%")
            parsed.append(f"{share:g}%")
        else:
            try:
                count = int(text)
            except ValueError:
                raise ValueError(f"{show_value(item)} is not a count like 3 or a share like \"50%\"") from None
            if not 1 <= count <= MAX_IDS:
                raise ValueError(f"{count} is not a count of instances (1 or more)")
            parsed.append(str(count))
    return tuple(parsed)


class Incidents(Strict):
    """When a type's failures become one incident, and how its restarts are paced while it is open."""

    # Counts ("3") and shares ("50%") of the type's instances, as text; the lowest one reached opens.
    threshold: Annotated[tuple[str, ...], BeforeValidator(_threshold)] = ("3",)
    window: Duration = 30.0
    digest_every: Duration = 60.0
    resolve_after: Duration = 60.0
    forward: Literal["digest", "all"] = "digest"
    # Types reaching their threshold within this of each other are announced as one farm-wide incident.
    group_wait: Duration = 2.0
    # While open: at most restart_batch instances of the type start per restart_every (after the probe).
    restart_batch: Annotated[Int, Field(ge=1, le=MAX_IDS)] = 10
    restart_every: Duration = 1.0

    @model_validator(mode="after")
    def _positive(self) -> "Incidents":
        for key in ("window", "digest_every", "restart_every"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be more than 0s")
        return self


def _incidents(value: Any) -> Any:
    # `incidents: off` (YAML reads off as false) turns them off; on/true or an empty map: the defaults.
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "no", "false")):
        return None
    if value is True or value is None or (isinstance(value, str) and value.strip().lower() in ("on", "yes", "true")):
        return {}
    if not isinstance(value, dict) and not isinstance(value, Incidents):
        raise ValueError(f"expected a map (threshold, window, ...) or off, got {show_value(value)}")
    return value


class ExecutorSettings(Strict):
    """Keys allowed both in `defaults` and in each executor type."""

    args: Annotated[list[str], BeforeValidator(split_command)] = list(DEFAULT_ARGS)
    env: Annotated[dict[str, str], BeforeValidator(none_is_empty)] = {}
    cwd: PathText = "."
    restart: Literal["always", "on-failure", "never"] = "always"
    success_exit_codes: list[Annotated[Int, Field(ge=0, le=255)]] = [0]
    start_seconds: Duration = 3.0
    backoff: Annotated[Backoff, BeforeValidator(none_is_empty)] = Backoff()
    max_restarts: Annotated[Int, Field(ge=1)] | None = None
    restart_window: Duration = 600.0
    stop_signal: Signal = int(signal.SIGTERM)
    stop_timeout: Duration = 10.0
    log_max_bytes: Size = 10 * 1024**2
    log_backups: Annotated[Int, Field(ge=0, le=1000)] = 5
    # Health (see the README's Health section): readiness, heartbeat, a probe, a memory cap.
    ready: Literal["start_seconds", "notify"] = "start_seconds"
    start_timeout: Duration | None = None
    watchdog: Duration | None = None
    probe: Probe | None = None
    max_memory: Size | None = None

    @field_validator("start_timeout", "watchdog")
    @classmethod
    def _zero_is_off(cls, value: float | None) -> float | None:
        # systemd's WatchdogSec=0 means off; a timeout of 0 could never be met.
        if value is not None and 0 < value < 0.01:
            raise ValueError("must be at least 10ms (or 0/null for none)")
        return value or None

    @field_validator("max_memory")
    @classmethod
    def _memory_floor(cls, value: int | None) -> int | None:
        if value is not None and value < 1024 * 1024:
            raise ValueError(f"{value} bytes is below 1MiB; write a unit, like 4GiB or 512MiB")
        return value
    incidents: Annotated[Incidents | None, BeforeValidator(_incidents)] = Incidents()

    @field_validator("args")
    @classmethod
    def _args_without_nul(cls, value: list[str]) -> list[str]:
        return no_nul(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_as_text(cls, value: Any) -> Any:
        # YAML turns `PORT: 80` into an int; an environment only holds text.
        if isinstance(value, dict):
            return {
                k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                if isinstance(v, (str, int, float, bool)) or v is None
                else v
                for k, v in value.items()
            }
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        # Messages name the variable, never its value: env is where secrets live.
        for name, text in value.items():
            if not name or "=" in name or "\x00" in name:
                raise ValueError(f"{env_name_shown(name)} is not a usable environment variable name "
                                 "(no '=' or NUL; a secret goes in the value, not the name)")
            if name in RESERVED_ENV:
                raise ValueError(f"{name} is set by the supervisor for each instance; remove it")
            if "\x00" in text:
                raise ValueError(f"the value of {env_name_shown(name)} contains a NUL character")
        return value


def _hosts_map(value: Any) -> Any:
    """hosts: {gpu-01: 0-9, gpu-02: "10-19"}: which daemon (by supervisor.name) runs which ids."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ValueError("expected a map of host name: ids, like {gpu-01: 0-9, gpu-02: 10-19}")
    shares: dict[str, tuple[int, ...]] = {}
    for host, ids in value.items():
        if not isinstance(host, str) or not host or not host.isprintable() or any(c.isspace() for c in host):
            raise ValueError(f"{show_value(host)} is not a host name (supervisor.name of the daemon that runs the ids)")
        try:
            shares[host] = parse_ids(ids)
        except ValueError as exc:
            raise ValueError(f"{host}: {exc}") from None
    return shares


class ExecutorType(ExecutorSettings):
    command: Command
    ids: IdSet | None = None
    count: Annotated[Int, Field(ge=0, le=MAX_IDS)] | None = None
    # Shares of the ids per host (supervisor.name); None: every daemon runs every id.
    hosts: Annotated[dict[str, tuple[int, ...]] | None, BeforeValidator(_hosts_map)] = None

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str]) -> list[str]:
        if not value or not value[0]:
            raise ValueError("command is empty; give the program to run")
        return no_nul(value)

    @model_validator(mode="after")
    def _ids_or_count(self) -> "ExecutorType":
        if self.ids is not None and self.count is not None:
            raise PydanticCustomError("ids_and_count", "give either ids or count, not both")
        if self.ids is None and self.count is None:
            raise PydanticCustomError("ids_or_count", "missing ids (like 0-3) or count (like 4)")
        return self

    @property
    def id_list(self) -> tuple[int, ...]:
        return self.ids if self.ids is not None else tuple(range(self.count or 0))


def _env_name_only(value: Any) -> Any:
    # The value is never repeated: a token pasted here by mistake must not reach a log.
    # Names must be in capitals (the convention for environment variables), which
    # also catches most pasted tokens; an all-caps token has digits and no '_'.
    if value is None:
        return value
    if (
        not isinstance(value, str)
        or not AUTH_ENV_NAME_RE.fullmatch(value)
        or (len(value) >= 16 and "_" not in value and re.search(r"\d", value))
    ):
        raise ValueError(
            "must be the name of an environment variable in capitals (like LOG_API_TOKEN), "
            "not the secret itself (value not shown)"
        )
    return value


def _secret_path(value: Any) -> Any:
    if value is None:
        return value
    if not isinstance(value, str) or not value.strip() or "\x00" in value or "\n" in value:
        raise ValueError("must be the path of a file holding the token (value not shown)")
    return value


class AuthConfig(Strict):
    """How the supervisor authenticates to the log API. Holds env var names and a file path, never secrets."""

    token_env: Annotated[str | None, BeforeValidator(_env_name_only)] = None
    token_file: Annotated[str | None, BeforeValidator(_secret_path)] = None
    username_env: Annotated[str | None, BeforeValidator(_env_name_only)] = None
    password_env: Annotated[str | None, BeforeValidator(_env_name_only)] = None

    @model_validator(mode="after")
    def _one_method(self) -> "AuthConfig":
        methods = [
            bool(self.token_env),
            bool(self.token_file),
            bool(self.username_env or self.password_env),
        ]
        if sum(methods) > 1:
            raise ValueError("use one of token_env, token_file, or username_env + password_env")
        if bool(self.username_env) != bool(self.password_env):
            raise ValueError("username_env and password_env go together")
        return self


class ServiceConfig(Strict):
    host: str = "http://127.0.0.1:8083/"
    auth: Annotated[AuthConfig, BeforeValidator(none_is_empty)] = AuthConfig()
    # Executors get the daemon's loopback relay as their --service-host (relay/http.py).
    relay: bool = False

    @field_validator("host")
    @classmethod
    def _http_url_with_slash(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or re.search(r"\s|\x00", value)
        ):
            raise ValueError(f"{show_value(value)} is not an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("holds credentials; put them in service.auth instead (value not shown)")
        if parts.query or parts.fragment:
            raise ValueError(f"{show_value(value)}: the base URL cannot have a ?query or #fragment")
        # Executors append 'api/...' to it; without the slash the service answers 307.
        return value if value.endswith("/") else value + "/"


class SupervisorConfig(Strict):
    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=MAX_NAME_LENGTH)
    state_dir: PathText | None = None
    log_dir: PathText | None = None
    # None: sized for the machine (checks.default_max_instances).
    max_instances: Annotated[Int, Field(ge=1)] | None = None
    # What `start` does with executors a dead daemon left running: take them over, or stop them.
    on_restart: Literal["adopt", "stop"] = "adopt"
    # How the daemon knows an instance's processes: cgroup v2 when it can create cgroups, else process groups.
    containment: Literal["auto", "cgroup", "process"] = "auto"
    # Group of the instance logs (mode 0640), e.g. one whose members may read them; None: the daemon's.
    log_group: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")] | None = None

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError(f"{show_value(value)} holds control characters")
        return value


class EventsConfig(Strict):
    min_level: Literal["debug", "info", "warning", "error"] = "info"
    language: Literal["en", "zh"] = "en"
    spool_max_bytes: Size = 64 * 1024**2
    forward: bool = True
    # Executors' own log lines the supervisor takes per instance (a token bucket): beyond, dropped and counted.
    executor_lines_per_second: Annotated[Int, Field(ge=1, le=1_000_000)] = 100
    executor_lines_burst: Annotated[Int, Field(ge=1, le=10_000_000)] = 1000


class ControlConfig(Strict):
    socket: PathText | None = None
    socket_mode: Annotated[int, Field(ge=0, le=0o777)] = 0o600
    group: str | None = None

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        # YAML 1.1 reads 0660 as octal already, 660 as decimal and '0o660' as text:
        # accept all of them as the octal mode they mean.
        if isinstance(value, bool):
            raise ValueError(f"expected an octal mode like 0660, got {value}")
        if isinstance(value, str):
            try:
                return int(value.strip(), 8)
            except ValueError:
                raise ValueError(f"{show_value(value)} is not an octal mode like 0660") from None
        if isinstance(value, int) and value > 0o777:
            if set(str(value)) <= set("01234567"):
                return int(str(value), 8)
            raise ValueError(f"{value} is not an octal mode like 0660")
        return value


# The top-level sections that are plain models (defaults and executors are checked by hand).
SECTIONS: dict[str, type[Strict]] = {
    "service": ServiceConfig,
    "supervisor": SupervisorConfig,
    "events": EventsConfig,
    "control": ControlConfig,
}
TOP_KEYS = ("service", "supervisor", "defaults", "executors", "events", "control", "http")
