"""Farm config: YAML in, typed models out.

Pure apart from reading the file and checking that commands exist. Every
problem becomes a `Problem` with the file, line and dotted key it concerns;
`load()` gathers all of them and raises one `ConfigError`.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import signal
import socket
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

try:  # the C loader is ~10x faster; fall back when libyaml is missing
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
PLACEHOLDERS = ("id", "name", "exec_id", "service_host")
DEFAULT_ARGS = ("--service-host", "{service_host}", "--id", "{id}")

# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """All problems of one config file, each printable as one line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


# --------------------------------------------------------------------------- scalar types

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "K": 1024, "KiB": 1024, "M": 1024**2, "MiB": 1024**2, "G": 1024**3,
    "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or '500ms' / '2s' / '1m' / '1h' / '1d'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 2s, 500ms, 1m, 1h or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(
            f"{value!r} is not a duration; use a number of seconds or 500ms, 2s, 1m, 1h, 1d"
        )
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a number or '64KiB' / '10MiB' / '1GiB'."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 10MiB or a number of bytes")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    else:
        raise ValueError(f"{value!r} is not a size; use bytes or KiB, MiB, GiB (10MiB)")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def parse_signal(value: Any) -> int:
    """Signal number from TERM / SIGTERM / 15."""
    if isinstance(value, bool):
        raise ValueError("expected a signal name like TERM")
    if isinstance(value, int):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise ValueError(f"{value} is not a signal number") from None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
    raise ValueError(f"{value!r} is not a signal; use a name like TERM, INT, QUIT, HUP")


def parse_ids(value: Any) -> tuple[int, ...]:
    """Ids from 7 | '0-3' | [0, 2, '5-9'], checked for duplicates and overlaps."""
    items = value if isinstance(value, list) else [value]
    seen: dict[int, str] = {}
    for item in items:
        for number in _expand_id_item(item):
            if number in seen:
                raise ValueError(f"id {number} is listed twice ({seen[number]} and {item!r})")
            seen[number] = repr(item)
    if not seen:
        raise ValueError("no ids given")
    return tuple(sorted(seen))


def _expand_id_item(item: Any) -> range:
    if isinstance(item, bool):
        raise ValueError(f"{item!r} is not an id")
    if isinstance(item, int):
        if item < 0:
            raise ValueError(f"id {item} is negative; ids are integers >= 0")
        return range(item, item + 1)
    if isinstance(item, str):
        text = item.strip()
        if text.isdigit():
            return range(int(text), int(text) + 1)
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if low > high:
                raise ValueError(f"range {item!r} runs backwards")
            return range(low, high + 1)
    raise ValueError(f"{item!r} is not an id or a range like '0-3'")


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split command {value!r}: {exc}") from None
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Signal = Annotated[int, BeforeValidator(parse_signal)]
IdSet = Annotated[tuple[int, ...], BeforeValidator(parse_ids)]
Command = Annotated[list[str], BeforeValidator(_split_command)]

# --------------------------------------------------------------------------- models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backoff(_Strict):
    initial: Duration = 1.0
    max: Duration = 60.0
    factor: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> "Backoff":
        if self.max < self.initial:
            raise ValueError(f"max ({self.max}s) is below initial ({self.initial}s)")
        return self


class ExecutorSettings(_Strict):
    """Keys allowed both in `defaults` and in each executor type."""

    args: list[str] = list(DEFAULT_ARGS)
    env: dict[str, str] = {}
    cwd: str = "."
    restart: Literal["always", "on-failure", "never"] = "always"
    success_exit_codes: list[Annotated[int, Field(ge=0, le=255)]] = [0]
    start_seconds: Duration = 3.0
    backoff: Backoff = Backoff()
    max_restarts: Annotated[int, Field(ge=1)] | None = None
    restart_window: Duration = 600.0
    stop_signal: Signal = int(signal.SIGTERM)
    stop_timeout: Duration = 10.0
    log_max_bytes: Size = 10 * 1024**2
    log_backups: Annotated[int, Field(ge=0, le=1000)] = 5

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


class ExecutorType(ExecutorSettings):
    command: Command
    ids: IdSet | None = None
    count: Annotated[int, Field(ge=0, le=100_000)] | None = None

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str]) -> list[str]:
        if not value or not value[0]:
            raise ValueError("command is empty")
        return value

    @model_validator(mode="after")
    def _ids_or_count(self) -> "ExecutorType":
        if self.ids is not None and self.count is not None:
            raise ValueError("give either ids or count, not both")
        if self.ids is None and self.count is None:
            raise ValueError("missing ids (like 0-3) or count (like 4)")
        return self

    @property
    def id_list(self) -> tuple[int, ...]:
        return self.ids if self.ids is not None else tuple(range(self.count or 0))


class AuthConfig(_Strict):
    """How the supervisor authenticates to the log API. Holds env var names and a file path, never secrets."""

    token_env: str | None = None
    token_file: str | None = None
    username_env: str | None = None
    password_env: str | None = None

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


class ServiceConfig(_Strict):
    host: str = "http://127.0.0.1:8083/"
    auth: AuthConfig = AuthConfig()

    @field_validator("host")
    @classmethod
    def _http_url_with_slash(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        # Executors append 'api/...' to it; without the slash the service answers 307.
        return value if value.endswith("/") else value + "/"


class SupervisorConfig(_Strict):
    name: str = Field(default_factory=socket.gethostname)
    state_dir: str | None = None
    log_dir: str | None = None


class EventsConfig(_Strict):
    min_level: Literal["debug", "info", "warning", "error"] = "info"
    language: Literal["en", "zh"] = "en"
    spool_max_bytes: Size = 64 * 1024**2
    forward: bool = True


class ControlConfig(_Strict):
    socket: str | None = None
    socket_mode: int = 0o600
    group: str | None = None

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        # YAML reads 0660 as decimal 660 and '0o660' as a string: accept both as octal.
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError:
                raise ValueError(f"{value!r} is not an octal mode like 0660") from None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0o777:
            return int(str(value), 8) if set(str(value)) <= set("01234567") else value
        return value


class _RawFarm(_Strict):
    service: ServiceConfig = ServiceConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    defaults: dict[str, Any] = {}
    executors: dict[str, dict[str, Any]]
    events: EventsConfig = EventsConfig()
    control: ControlConfig = ControlConfig()


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
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
    executors: Mapping[str, ExecutorType]
    # The resolved program path per type, after {python} and PATH lookup.
    programs: Mapping[str, str]

    @property
    def socket_path(self) -> Path:
        return Path(self.control.socket) if self.control.socket else self.state_dir / "control.sock"

    def ids_of(self, type_name: str) -> tuple[int, ...]:
        return self.executors[type_name].id_list

    def instance_spec(self, type_name: str, instance_id: int) -> InstanceSpec:
        """The spec of one instance (which need not be in the configured id set: scale adds ids)."""
        executor = self.executors[type_name]
        exec_id = f"ET-{type_name}-{instance_id}"
        values = {
            "id": str(instance_id),
            "name": type_name,
            "exec_id": exec_id,
            "service_host": self.service.host,
            "python": sys.executable,
        }
        argv = (self.programs[type_name],) + tuple(
            arg.format_map(values) for arg in executor.command[1:]
        ) + tuple(arg.format_map(values) for arg in executor.args)
        env = dict(executor.env)
        env.update(
            ET_EXEC_ID=exec_id,
            ET_NAME=type_name,
            ET_ID=str(instance_id),
            ET_SERVICE_HOST=self.service.host,
        )
        cwd = str((self.base_dir / executor.cwd).resolve())
        return InstanceSpec(type_name, instance_id, exec_id, argv, tuple(sorted(env.items())), cwd)

    def planned(self) -> list[InstanceSpec]:
        return [
            self.instance_spec(name, instance_id)
            for name, executor in self.executors.items()
            for instance_id in executor.id_list
        ]


# --------------------------------------------------------------------------- loading


class _LineIndex:
    """Maps a key path to the line it sits on, from PyYAML's node marks."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        self.duplicates: list[tuple[tuple[Any, ...], int]] = []

    def walk(self, node: yaml.Node, path: tuple[Any, ...] = ()) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    self.duplicates.append((path + (key,), key_node.start_mark.line + 1))
                seen.add(key)
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                self.walk(value_node, path + (key,))
                self.lines[path + (key,)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, path + (index,))

    def line(self, path: tuple[Any, ...]) -> int | None:
        for end in range(len(path), -1, -1):
            if (found := self.lines.get(tuple(str(p) if isinstance(p, str) else p for p in path[:end]))):
                return found
        return None


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


class _Collector:
    def __init__(self, file: str, index: _LineIndex) -> None:
        self.file = file
        self.index = index
        self.problems: list[Problem] = []

    def add(self, path: tuple[Any, ...], message: str) -> None:
        self.problems.append(Problem(self.file, self.index.line(path), _dotted(path), message))

    def add_validation(self, prefix: tuple[Any, ...], error: ValidationError, model: type[BaseModel]) -> None:
        for item in error.errors(include_url=False):
            loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            # pydantic names Annotated/Union branches in loc; drop those that are not keys.
            loc = tuple(p for p in loc if p not in ("list[str]", "int", "none", "constrained-int"))
            path = prefix + loc
            if item["type"] == "extra_forbidden":
                self.add(path, "unknown key" + _did_you_mean(str(loc[-1]), _known_keys(model, loc[:-1])))
            elif item["type"] == "missing":
                self.add(path, "missing (required)")
            else:
                self.add(path, _clean_message(item["msg"]))


def _clean_message(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message[0].lower() + message[1:] if message else message


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(getattr(current, "model_fields", {}) or [])


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if known:
        return f"; known keys: {', '.join(sorted(known))}"
    return ""


def _read_yaml(path: Path, display: str) -> tuple[Any, _LineIndex]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(display, None, "", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(display, None, "", "is a directory, not a config file")]) from None
    except PermissionError:
        raise ConfigError([Problem(display, None, "", "cannot read it: permission denied")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(display, None, "", f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise ConfigError([Problem(display, None, "", f"cannot read it: {exc.strerror}")]) from None
    index = _LineIndex()
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([Problem(display, line, "", f"not valid YAML: {what}")]) from None
    if node is not None:
        index.walk(node)
    return data, index


def _resolve_program(
    collector: _Collector, type_name: str, executor: ExecutorType, base_dir: Path
) -> str | None:
    raw = executor.command[0]
    path = ("executors", type_name, "command")
    if raw == "{python}":
        return sys.executable
    if "{" in raw:
        collector.add(path, f"{raw!r}: only {{python}} may stand for the program")
        return None
    cwd = (base_dir / executor.cwd).resolve()
    if "/" in raw:
        program = (cwd / os.path.expanduser(raw)).resolve()
    else:
        search = executor.env.get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(raw, path=search)
        if found is None:
            collector.add(path, f"{raw!r} is not found on PATH")
            return None
        program = Path(found)
    if not program.exists():
        collector.add(path, f"{str(program)!r} does not exist")
        return None
    if program.is_dir() or not os.access(program, os.X_OK):
        collector.add(path, f"{str(program)!r} is not executable (chmod +x?)")
        return None
    return str(program)


def _check_placeholders(collector: _Collector, path: tuple[Any, ...], items: list[str], allowed: tuple[str, ...]) -> None:
    for index, item in enumerate(items):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(item) if f is not None]
        except ValueError as exc:
            collector.add(path + (index,), f"{item!r}: {exc}")
            continue
        for name in fields:
            if name not in allowed:
                collector.add(
                    path + (index,),
                    f"unknown placeholder {{{name}}}; use {', '.join('{' + a + '}' for a in allowed)} "
                    "(write {{ and }} for literal braces)",
                )


def _merge(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in own.items():
        # env and backoff are maps: a type adds to the defaults instead of replacing them.
        if key in ("env", "backoff") and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> FarmConfig:
    """Read and validate a farm config; raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    display = os.fspath(path)
    config_path = Path(path).absolute()
    data, index = _read_yaml(config_path, display)
    collector = _Collector(display, index)
    for dup_path, line in index.duplicates:
        collector.problems.append(Problem(display, line, _dotted(dup_path), "key given twice"))
    if data is None:
        raise ConfigError([Problem(display, 1, "", "the file is empty; it needs at least an executors map")])
    if not isinstance(data, dict):
        raise ConfigError([Problem(display, 1, "", "the top level must be a map of sections (service, executors, ...)")])

    try:
        raw = _RawFarm.model_validate(data)
    except ValidationError as exc:
        collector.add_validation((), exc, _RawFarm)
        # Go on with what is usable so every problem is reported in one go.
        raw = None

    base_dir = config_path.parent
    executors: dict[str, ExecutorType] = {}
    programs: dict[str, str] = {}
    raw_defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    raw_executors = data.get("executors")
    defaults_ok = True
    try:
        ExecutorSettings.model_validate(raw_defaults)
    except ValidationError as exc:
        defaults_ok = False
        collector.add_validation(("defaults",), exc, ExecutorSettings)

    if isinstance(raw_executors, dict):
        if not raw_executors:
            collector.add(("executors",), "no executor types; add at least one (see configs/farm.yaml)")
        for type_name, own in raw_executors.items():
            path = ("executors", type_name)
            if not isinstance(type_name, str) or not NAME_RE.match(type_name):
                collector.add(path, f"type name {type_name!r} must match [A-Za-z][A-Za-z0-9_]* "
                              "(a '-' would make ET-<Name>-<id> ambiguous)")
                continue
            if not isinstance(own, dict):
                continue  # already reported by _RawFarm
            try:
                executor = ExecutorType.model_validate(_merge(raw_defaults if defaults_ok else {}, own))
            except ValidationError as exc:
                collector.add_validation(path, exc, ExecutorType)
                continue
            _check_placeholders(collector, path + ("args",), executor.args, PLACEHOLDERS)
            _check_placeholders(collector, path + ("command",), executor.command[1:], PLACEHOLDERS + ("python",))
            program = _resolve_program(collector, type_name, executor, base_dir)
            if program is not None:
                executors[type_name] = executor
                programs[type_name] = program
            cwd = (base_dir / executor.cwd)
            if not cwd.is_dir():
                collector.add(path + ("cwd",), f"{str(cwd)!r} is not a directory")
    elif raw_executors is None and "executors" in data:
        collector.add(("executors",), "no executor types; add at least one (see configs/farm.yaml)")

    if collector.problems or raw is None:
        raise ConfigError(sorted(collector.problems, key=lambda p: (p.line or 0, p.key)))

    state_dir = raw.supervisor.state_dir or environ.get("STATE_DIRECTORY", "").split(":")[0] or ".exec-supervisor"
    log_dir = raw.supervisor.log_dir or environ.get("LOGS_DIRECTORY", "").split(":")[0] or "logs"
    return FarmConfig(
        path=config_path,
        base_dir=base_dir,
        service=raw.service,
        name=raw.supervisor.name,
        state_dir=(base_dir / state_dir).resolve(),
        log_dir=(base_dir / log_dir).resolve(),
        events=raw.events,
        control=raw.control,
        executors=executors,
        programs=programs,
    )
