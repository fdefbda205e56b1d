"""Farm config: YAML in, typed models out.

Pure apart from reading the file and checking that commands, scripts and
folders exist. Every problem becomes a `Problem` with the file, line and
dotted key it concerns; `load()` gathers all of them and raises one
`ConfigError`, and nothing else ever escapes it, whatever the file holds.

Rules an operator can rely on (README documents the keys):

- Relative paths (supervisor.state_dir/log_dir, control.socket,
  service.auth.token_file, each type's cwd) resolve against the config file's
  folder, never the caller's working directory; `~` is expanded.
- A relative program path containing '/' resolves against the type's cwd; a
  bare name is looked up on PATH (the type's env PATH if it sets one);
  "{python}" is the interpreter running exec-supervisor.
- `defaults` holds any executor key except command, ids and count; each type
  overrides it key by key, and `env` and `backoff` merge key by key.
- Error messages never repeat the values of service.auth keys or env values:
  those are where secrets end up when pasted into the wrong place.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import reprlib
import shlex
import shutil
import signal
import socket
import stat
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

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
from pydantic_core import PydanticCustomError

try:  # the C parser is ~10x faster; fall back when libyaml is missing
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # use with fullmatch
# What service.auth's *_env keys accept: capitals, which also catches most pasted tokens.
AUTH_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
PLACEHOLDERS = ("id", "name", "exec_id", "service_host")
DEFAULT_ARGS = ("--service-host", "{service_host}", "--id", "{id}")
# Set by the supervisor for every instance; a config may not set them.
RESERVED_ENV = ("ET_EXEC_ID", "ET_NAME", "ET_ID", "ET_SERVICE_HOST")
# Keys that only make sense per type (see _check_defaults).
PER_TYPE_KEYS = ("command", "ids", "count")
MAX_IDS = 100_000  # per type; a typo like 0-1000000 must not eat the machine
MAX_DURATION = 365 * 86400.0

# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        # One problem, one line, whatever odd characters a key or file name holds.
        return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class ConfigError(Exception):
    """All problems of one config file, each printable as one line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 200, 60


def _show(value: Any, limit: int = 60) -> str:
    """A value for a message: repr, shortened (never used for secrets).

    reprlib, because a YAML alias can make a list that is huge when written out.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # pragma: no cover - a YAML value always has a repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_path(path: str) -> str:
    """A path for a message: its end matters most, so a long one loses its start."""
    text = repr(path)
    return text if len(text) <= 160 else "'..." + text[-157:]


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- scalar types

_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|K|M|G)?\s*")
_SIZE_UNITS = {
    None: 1, "B": 1, "K": 1024, "KiB": 1024, "M": 1024**2, "MiB": 1024**2, "G": 1024**3,
    "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or '500ms' / '2s' / '1m' / '1h' / '1d'."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(
            f"expected a duration like 500ms, 2s, 1m, 1h or a number of seconds, got {_kind(value)}"
        )
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if not match:
            raise ValueError(
                f"{_show(value)} is not a duration; use a number of seconds or 500ms, 2s, 1m, 1h, 1d"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{_show(value)} is not a duration; it must be a finite number of seconds")
    if seconds < 0:
        raise ValueError(f"{_show(value)}: a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"{_show(value)} is longer than 365 days; that is surely a mistake")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a number or '64KiB' / '10MiB' / '1GiB'."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a size like 10MiB or a whole number of bytes, got {_kind(value)}")
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if not match:
            raise ValueError(f"{_show(value)} is not a size; use bytes or KiB, MiB, GiB (like 10MiB)")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    else:
        size = value
    if size < 0:
        raise ValueError(f"{_show(value)}: a size cannot be negative")
    return size


def parse_signal(value: Any) -> int:
    """Signal number from TERM / SIGTERM / 15."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a signal name like TERM, got {_kind(value)}")
    if isinstance(value, int):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise ValueError(f"{value} is not a signal number; use a name like TERM") from None
    name = value.strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    member = signal.Signals.__members__.get(name)
    if member is None or name in ("SIG_DFL", "SIG_IGN"):
        raise ValueError(f"{_show(value)} is not a signal; use a name like TERM, INT, QUIT, HUP")
    return int(member)


class _IdError(ValueError):
    """An ids problem; `index` is the list item it concerns, if any."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def parse_ids(value: Any) -> tuple[int, ...]:
    """Ids from 7 | '0-3' | '0-3, 7' | [0, 2, '5-9'], checked for duplicates and overlaps."""
    items = value if isinstance(value, list) else [value]
    seen: dict[int, str] = {}
    for index, item in enumerate(items):
        where = index if isinstance(value, list) else None
        try:
            numbers = _expand_id_item(item)
        except ValueError as exc:
            raise _IdError(str(exc), where) from None
        if len(seen) + len(numbers) > MAX_IDS:
            raise _IdError(f"more than {MAX_IDS} ids in one type; that is surely a mistake", where)
        for number in numbers:
            if number in seen:
                raise _IdError(f"id {number} is given twice ({seen[number]} and {_show(item)})", where)
            seen[number] = _show(item)
    if not seen:
        raise _IdError("no ids given (to run no instance of this type, use count: 0)")
    return tuple(sorted(seen))


def _expand_id_item(item: Any) -> list[int]:
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise ValueError(f"expected an id (an integer >= 0) or a range like '0-3', got {_kind(item)}")
    if isinstance(item, int):
        if item < 0:
            raise ValueError(f"id {item} is negative; ids are integers >= 0")
        return [item]
    numbers: list[int] = []
    for part in item.split(","):
        text = part.strip()
        if re.fullmatch(r"\d+", text):
            numbers.append(int(text))
            continue
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
        if not match:
            raise ValueError(f"{_show(item)} is not an id or a range like '0-3'")
        low, high = int(match.group(1)), int(match.group(2))
        if low > high:
            raise ValueError(f"range {_show(text)} runs backwards")
        if high - low + 1 > MAX_IDS:
            raise ValueError(f"range {_show(text)} holds more than {MAX_IDS} ids; that is surely a mistake")
        numbers.extend(range(low, high + 1))
    if len(set(numbers)) != len(numbers):
        twice = next(n for n in numbers if numbers.count(n) > 1)
        raise ValueError(f"id {twice} is given twice in {_show(item)}")
    return numbers


def _split_command(value: Any) -> Any:
    """A command or args: a list, or a string split the way a shell would."""
    if not isinstance(value, (str, list)):
        raise ValueError(f"expected a list, or a string split like a shell command line, got {_kind(value)}")
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {_show(value)} like a shell would: {exc}") from None
    if isinstance(value, list):
        # YAML turns `--port, 8080` into an int; a command line only holds text.
        value = [
            str(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else item
            for item in value
        ]
    return value


def _no_nul(values: list[str]) -> list[str]:
    for index, item in enumerate(values):
        if "\x00" in item:
            raise ValueError(f"item {index} contains a NUL character")
    return values


def _not_bool(value: Any) -> Any:
    # pydantic takes true as 1; in a config that is always a slip.
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {value}")
    return value


def _none_is_empty(value: Any) -> Any:
    # A section whose keys are all commented out reads as null: treat it as empty.
    return {} if value is None else value


def _path_text(value: Any) -> Any:
    if isinstance(value, str) and ("\x00" in value or not value.strip()):
        raise ValueError("expected a path" if not value.strip() else "the path contains a NUL character")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Signal = Annotated[int, BeforeValidator(parse_signal)]
IdSet = Annotated[tuple[int, ...], BeforeValidator(parse_ids)]
Command = Annotated[list[str], BeforeValidator(_split_command)]
Int = Annotated[int, BeforeValidator(_not_bool)]
PathText = Annotated[str, BeforeValidator(_path_text)]

# --------------------------------------------------------------------------- models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Backoff(_Strict):
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


class ExecutorSettings(_Strict):
    """Keys allowed both in `defaults` and in each executor type."""

    args: Annotated[list[str], BeforeValidator(_split_command)] = list(DEFAULT_ARGS)
    env: Annotated[dict[str, str], BeforeValidator(_none_is_empty)] = {}
    cwd: PathText = "."
    restart: Literal["always", "on-failure", "never"] = "always"
    success_exit_codes: list[Annotated[Int, Field(ge=0, le=255)]] = [0]
    start_seconds: Duration = 3.0
    backoff: Annotated[Backoff, BeforeValidator(_none_is_empty)] = Backoff()
    max_restarts: Annotated[Int, Field(ge=1)] | None = None
    restart_window: Duration = 600.0
    stop_signal: Signal = int(signal.SIGTERM)
    stop_timeout: Duration = 10.0
    log_max_bytes: Size = 10 * 1024**2
    log_backups: Annotated[Int, Field(ge=0, le=1000)] = 5

    @field_validator("args")
    @classmethod
    def _args_without_nul(cls, value: list[str]) -> list[str]:
        return _no_nul(value)

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
                raise ValueError(f"{_show(name)} is not a usable environment variable name")
            if name in RESERVED_ENV:
                raise ValueError(f"{name} is set by the supervisor for each instance; remove it")
            if "\x00" in text:
                raise ValueError(f"the value of {name} contains a NUL character")
        return value


class ExecutorType(ExecutorSettings):
    command: Command
    ids: IdSet | None = None
    count: Annotated[Int, Field(ge=0, le=MAX_IDS)] | None = None

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str]) -> list[str]:
        if not value or not value[0]:
            raise ValueError("command is empty; give the program to run")
        return _no_nul(value)

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


class AuthConfig(_Strict):
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


class ServiceConfig(_Strict):
    host: str = "http://127.0.0.1:8083/"
    auth: Annotated[AuthConfig, BeforeValidator(_none_is_empty)] = AuthConfig()

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
            raise ValueError(f"{_show(value)} is not an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("holds credentials; put them in service.auth instead (value not shown)")
        if parts.query or parts.fragment:
            raise ValueError(f"{_show(value)}: the base URL cannot have a ?query or #fragment")
        # Executors append 'api/...' to it; without the slash the service answers 307.
        return value if value.endswith("/") else value + "/"


class SupervisorConfig(_Strict):
    name: str = Field(default_factory=socket.gethostname, min_length=1)
    state_dir: PathText | None = None
    log_dir: PathText | None = None

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError(f"{_show(value)} holds control characters")
        return value


class EventsConfig(_Strict):
    min_level: Literal["debug", "info", "warning", "error"] = "info"
    language: Literal["en", "zh"] = "en"
    spool_max_bytes: Size = 64 * 1024**2
    forward: bool = True


class ControlConfig(_Strict):
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
                raise ValueError(f"{_show(value)} is not an octal mode like 0660") from None
        if isinstance(value, int) and value > 0o777:
            if set(str(value)) <= set("01234567"):
                return int(str(value), 8)
            raise ValueError(f"{value} is not an octal mode like 0660")
        return value


# The top-level sections that are plain models (defaults and executors are checked by hand).
_SECTIONS: dict[str, type[_Strict]] = {
    "service": ServiceConfig,
    "supervisor": SupervisorConfig,
    "events": EventsConfig,
    "control": ControlConfig,
}
_TOP_KEYS = ("service", "supervisor", "defaults", "executors", "events", "control")

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

    @property
    def socket_path(self) -> Path:
        # load() makes control.socket absolute (against the config file's folder).
        return Path(self.control.socket) if self.control.socket else self.state_dir / "control.sock"

    def ids_of(self, type_name: str) -> tuple[int, ...]:
        return self.executors[type_name].id_list

    def instance_spec(self, type_name: str, instance_id: int) -> InstanceSpec:
        """The spec of one instance (which need not be in the configured id set: scale adds ids)."""
        executor = self.executors[type_name]
        exec_id = f"ET-{type_name}-{instance_id}"
        values = _placeholder_values(type_name, instance_id, self.service.host)
        # Interned: most arguments (the service host, say) are the same text for every instance.
        argv = (self.programs[type_name],) + tuple(
            sys.intern(arg.format_map(values)) for arg in executor.command[1:]
        ) + tuple(sys.intern(arg.format_map(values)) for arg in executor.args)
        env = dict(executor.env)
        env.update(
            ET_EXEC_ID=exec_id,
            ET_NAME=type_name,
            ET_ID=str(instance_id),
            ET_SERVICE_HOST=self.service.host,
        )
        cwd = sys.intern(os.path.normpath(os.path.join(self.base_dir, executor.cwd)))
        return InstanceSpec(type_name, instance_id, exec_id, argv, tuple(sorted(env.items())), cwd)

    def planned(self) -> list[InstanceSpec]:
        return [
            self.instance_spec(name, instance_id)
            for name, executor in self.executors.items()
            for instance_id in executor.id_list
        ]


def _placeholder_values(type_name: str, instance_id: int, service_host: str) -> dict[str, str]:
    return {
        "id": str(instance_id),
        "name": type_name,
        "exec_id": f"ET-{type_name}-{instance_id}",
        "service_host": service_host,
        "python": sys.executable,
    }


# --------------------------------------------------------------------------- reading YAML with lines


class _MarkedLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """A safe loader that remembers the line of every map key and list item, and duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.keep: list[Any] = []  # the containers, so their id() stays theirs
        self.starts: dict[int, int] = {}  # id(container) -> line it starts on
        self.marks: dict[int, dict[Any, int]] = {}  # id(container) -> key/index -> line
        self.duplicates: list[tuple[int, Any, int, int]] = []  # id(map), key, line, first line

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # e.g. `2024-13-45` is a timestamp with a bad month
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({exc})", node.start_mark
            ) from None


def _construct_map(loader: _MarkedLoader, node: yaml.MappingNode) -> Any:
    data: dict[Any, Any] = {}
    loader.keep.append(data)
    loader.starts[id(data)] = node.start_mark.line + 1
    yield data
    own = [key_node for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge"]
    data.update(loader.construct_mapping(node))  # flattens `<<` merges into node.value
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:  # merged keys first, then the map's own
        lines[loader.construct_object(key_node)] = key_node.start_mark.line + 1
    first: dict[Any, int] = {}
    for key_node in own:
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in first:
            loader.duplicates.append((id(data), key, line, first[key]))
        else:
            first[key] = line
    loader.marks[id(data)] = lines


def _construct_seq(loader: _MarkedLoader, node: yaml.SequenceNode) -> Any:
    data: list[Any] = []
    loader.keep.append(data)
    loader.starts[id(data)] = node.start_mark.line + 1
    yield data
    data.extend(loader.construct_sequence(node))
    loader.marks[id(data)] = {i: item.start_mark.line + 1 for i, item in enumerate(node.value)}


_MarkedLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_MarkedLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


class _LineIndex:
    """Maps a key path (through the loaded data) to the line of that key or list item."""

    def __init__(self, root: Any, loader: _MarkedLoader) -> None:
        self.root = root
        self.keep = loader.keep
        self.starts = loader.starts
        self.marks = loader.marks
        self.duplicates: list[tuple[tuple[Any, ...], int, int]] = []
        if loader.duplicates:
            paths = self._container_paths()
            for container, key, line, first in loader.duplicates:
                if container in paths:
                    self.duplicates.append((paths[container] + (key,), line, first))

    def _container_paths(self) -> dict[int, tuple[Any, ...]]:
        paths: dict[int, tuple[Any, ...]] = {}
        stack: list[tuple[Any, tuple[Any, ...]]] = [(self.root, ())]
        while stack:
            value, path = stack.pop()
            if not isinstance(value, (dict, list)) or id(value) in paths:
                continue
            paths[id(value)] = path
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((child, path + (key,)) for key, child in items)
        return paths

    def line(self, path: tuple[Any, ...]) -> int | None:
        current = self.root
        line = self.starts.get(id(current))
        for part in path:
            marks = self.marks.get(id(current))
            if marks is None or not isinstance(current, (dict, list)):
                break
            try:
                found = marks.get(part)
            except TypeError:  # an unhashable part
                break
            if found is None:
                break
            line = found
            current = current[part]
        return line


def _has(mapping: dict[Any, Any], key: Any) -> bool:
    try:
        return key in mapping
    except TypeError:
        return False


def _read_yaml(path: Path, display: str) -> tuple[Any, _LineIndex]:
    def fail(message: str, line: int | None = None) -> ConfigError:
        return ConfigError([Problem(display, line, "", message)])

    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("is a directory, not a config file") from None
    except PermissionError:
        raise fail("cannot read it: permission denied") from None
    except UnicodeDecodeError:
        raise fail("not a YAML file: it is not UTF-8 text") from None
    except OSError as exc:
        raise fail(f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL character in the path
        raise fail(f"cannot read it: {exc}") from None
    loader = _MarkedLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        if node is not None and id(data) not in loader.starts:
            loader.keep.append(data)
            loader.starts[id(data)] = node.start_mark.line + 1  # a scalar: where it is
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "unreadable"
        raise fail(f"not valid YAML: {what}", mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise fail(f"not valid YAML: character {exc.character!r} is not allowed", line) from None
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from None
    except RecursionError:
        raise fail("not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return data, _LineIndex(data, loader)


# --------------------------------------------------------------------------- collecting problems


def _is_secret(path: tuple[Any, ...]) -> bool:
    """Values under these keys are never repeated in a message."""
    return (
        path[:2] == ("service", "auth")
        or path[:2] == ("defaults", "env")
        or (len(path) > 2 and path[0] == "executors" and path[2] == "env")
    )


def _key_text(part: Any, secret: bool) -> str:
    if isinstance(part, str) and re.fullmatch(r"[A-Za-z0-9_.@+-]*", part) and part:
        # A pasted token can look like a key: under auth, only short identifiers are shown.
        if not secret or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", part):
            return part
        return "<key not shown>"
    if secret:
        return "<key not shown>"
    return _show(part, 40)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(
        _key_text(part, path[:2] == ("service", "auth") and i >= 2) for i, part in enumerate(path)
    )


class _Collector:
    def __init__(self, file: str, index: _LineIndex) -> None:
        self.file = file
        self.index = index
        self.problems: list[Problem] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, path: tuple[Any, ...], message: str, line: int | None = None) -> None:
        problem = Problem(self.file, line or self.index.line(path), _dotted(path), message)
        if (problem.key, problem.message) not in self._seen:
            self._seen.add((problem.key, problem.message))
            self.problems.append(problem)

    def add_validation(
        self,
        prefix: tuple[Any, ...],
        error: ValidationError,
        model: type[BaseModel],
        data: Any,
        skip: tuple[str, ...] = (),
    ) -> set[Any]:
        """Report pydantic's errors; return the first-level keys that had one."""
        bad: set[Any] = set()
        for item in error.errors(include_url=False):
            if item["type"] in skip:
                continue
            path, owner = _resolve_loc(model, data, item["loc"])
            if path:
                bad.add(path[0])
            full = prefix + path
            value_at = _value_at(data, path)
            kind = item["type"]
            if kind == "extra_forbidden":
                known = list(getattr(owner, "model_fields", {}) or [])
                self.add(full, "unknown key" + _did_you_mean(str(path[-1]), known))
            elif kind == "missing":
                self.add(full, "missing (required)")
            elif kind == "value_error":
                exc = (item.get("ctx") or {}).get("error")
                index = getattr(exc, "index", None)
                if index is not None and isinstance(value_at, list):
                    full = full + (index,)
                self.add(full, str(exc) if exc is not None else _clean_message(item["msg"]))
            else:
                secret = _is_secret(full)
                if "[key]" in item["loc"]:
                    message = f"the key must be text, not {_kind(path[-1] if path else None)}"
                else:
                    message = _type_message(item, None if secret else item.get("input"), secret)
                self.add(full, message)
        return bad


def _resolve_loc(model: type[BaseModel], data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
    """pydantic's loc without its own tags (union branches, '[key]', ...), and the model owning the last key.

    A part is kept when it is a key of the data or a field of the model at that depth.
    """
    path: list[Any] = []
    current_model: Any = model
    owner: Any = model
    current = data
    for part in loc:
        fields = getattr(current_model, "model_fields", None) or {}
        in_model = isinstance(part, str) and part in fields
        if isinstance(current, dict) and _has(current, part):
            child: Any = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            child = current[part]
        elif in_model:
            child = None
        else:
            continue
        path.append(part)
        owner = current_model
        annotation = fields[part].annotation if in_model else None
        current_model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        current = child
    return tuple(path), owner


def _value_at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        if isinstance(data, dict) and _has(data, part):
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _type_message(item: Mapping[str, Any], value: Any, secret: bool) -> str:
    kind = item["type"]
    ctx = item.get("ctx") or {}
    got = f", got {_kind(value)}" if not secret else ""
    scalar = isinstance(value, (str, int, float, bool))
    shown = "" if secret else f", not {_show(value)}" if scalar else got
    if kind == "string_type":
        return f"expected text{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number{shown}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number{shown}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false{shown}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list{got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a map (key: value){got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}{shown}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        sign = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"must be {sign} {bound}{shown}"
    if kind == "string_too_short":
        return "must not be empty"
    return _clean_message(item["msg"])


def _clean_message(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message[0].lower() + message[1:] if message else message


def _did_you_mean(key: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if known:
        return f"; known keys: {', '.join(sorted(known))}"
    return ""


# --------------------------------------------------------------------------- filesystem checks


def _absolute(base_dir: Path, text: str) -> str:
    """A config path made absolute against the config file's folder (symlinks kept)."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(text)))


def _dir_problem(path: str) -> str | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"{_show_path(path)} does not exist"
    except OSError as exc:
        return f"cannot use {_show_path(path)}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{_show_path(path)} is not a directory"
    if not os.access(path, os.X_OK):
        return f"{_show_path(path)} cannot be entered (permission denied)"
    return None


def _not_a_dir_problem(path: str) -> str | None:
    """For folders the daemon creates: fine if missing, wrong if something else is there."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot use {_show_path(path)}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{_show_path(path)} exists and is not a directory"
    return None


def _program_problem(program: str) -> str | None:
    try:
        info = os.stat(program)
    except FileNotFoundError:
        return f"{_show_path(program)} does not exist"
    except OSError as exc:
        return f"cannot use {_show_path(program)}: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return f"{_show_path(program)} is a directory, not a program"
    if not os.access(program, os.X_OK):
        return f"{_show_path(program)} is not executable (chmod +x?)"
    return None


# --------------------------------------------------------------------------- the checks


def _check_placeholders(
    collector: _Collector, path: tuple[Any, ...], items: list[str], allowed: tuple[str, ...], offset: int = 0
) -> None:
    """Every placeholder known, and every item fillable (so planned() can never fail)."""
    sample = _placeholder_values("Type", 0, "http://127.0.0.1/")
    for index, item in enumerate(items):
        where = path + (index + offset,)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(item) if f is not None]
        except ValueError as exc:
            collector.add(where, f"{_show(item)}: {exc} (write {{{{ and }}}} for literal braces)")
            continue
        unknown = [name for name in fields if name not in allowed]
        if unknown:
            collector.add(
                where,
                f"unknown placeholder {{{unknown[0]}}}; use {', '.join('{' + a + '}' for a in allowed)} "
                "(write {{ and }} for literal braces)",
            )
            continue
        try:
            item.format_map({k: v for k, v in sample.items() if k in allowed})
        except Exception as exc:  # e.g. {id:d} or {id.x}
            collector.add(where, f"{_show(item)}: cannot fill its placeholders ({exc})")


def _resolve_program(
    collector: _Collector,
    where: tuple[Any, ...],
    executor: ExecutorType,
    cwd: str,
    environ: Mapping[str, str],
) -> str | None:
    raw = executor.command[0]
    if raw == "{python}":
        if not sys.executable:
            collector.add(where, "{python}: the running interpreter's path is unknown; name a program")
            return None
        return sys.executable
    if "{" in raw or "}" in raw:
        collector.add(where, f"{_show(raw)}: only {{python}} may stand for the program")
        return None
    if "/" in raw:
        program = os.path.normpath(os.path.join(cwd, os.path.expanduser(raw)))
    else:
        search = executor.env.get("PATH", environ.get("PATH", os.defpath))
        try:
            found = shutil.which(raw, path=search)
        except (OSError, ValueError):  # pragma: no cover - defensive
            found = None
        if found is None:
            collector.add(where, f"{_show(raw)} is not found on PATH")
            return None
        program = os.path.abspath(found)
    problem = _program_problem(program)
    if problem:
        collector.add(where, problem)
        return None
    return program


def _check_script(
    collector: _Collector, where: tuple[Any, ...], executor: ExecutorType, cwd: str
) -> None:
    """`{python} script.py`: the script must exist too, or every instance dies at once."""
    program = os.path.basename(executor.command[0])
    if executor.command[0] != "{python}" and not re.fullmatch(r"python[0-9.]*", program):
        return
    if len(executor.command) < 2:
        return
    script = executor.command[1]
    if script.startswith("-") or "{" in script:
        return
    path = os.path.normpath(os.path.join(cwd, os.path.expanduser(script)))
    try:
        is_file = os.path.isfile(path)
    except (OSError, ValueError):
        is_file = False
    if not is_file:
        collector.add(where, f"script {_show_path(path)} does not exist (relative to the type's cwd)")


def _merge(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in own.items():
        # env and backoff are maps: a type adds to the defaults instead of replacing them.
        if key in ("env", "backoff") and isinstance(merged.get(key), dict) and isinstance(value, (dict, type(None))):
            merged[key] = {**merged[key], **(value or {})}
        else:
            merged[key] = value
    return merged


def _check_defaults(collector: _Collector, raw: Any) -> dict[str, Any]:
    """Validate `defaults`; return the part of it that is fine to merge into each type."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        collector.add(("defaults",), f"expected a map of executor keys (restart, backoff, ...), got {_kind(raw)}")
        return {}
    usable = dict(raw)
    for key in PER_TYPE_KEYS:
        # Decision: command, ids and count are per type. Each type is a different
        # program with its own instances; a default command would make a type that
        # forgot its own silently run another type's program.
        if key in usable:
            del usable[key]
            collector.add(("defaults", key), f"{key} belongs in each executor type, not in defaults")
    try:
        ExecutorSettings.model_validate(usable)
    except ValidationError as exc:
        for key in collector.add_validation(("defaults",), exc, ExecutorSettings, usable):
            usable.pop(key, None)
    return usable


def _check_type(
    collector: _Collector,
    type_name: Any,
    own: Any,
    defaults: dict[str, Any],
    base_dir: Path,
    environ: Mapping[str, str],
) -> tuple[ExecutorType, str] | None:
    path = ("executors", type_name)
    usable = True
    if not isinstance(type_name, str) or not NAME_RE.fullmatch(type_name):
        collector.add(
            path,
            f"type name {_show(type_name)} must match [A-Za-z][A-Za-z0-9_]* "
            "(a '-' would make ET-<Name>-<id> ambiguous)",
        )
        usable = False
    if own is None:
        own = {}
    if not isinstance(own, dict):
        collector.add(path, f"expected a map of executor keys (command, ids, ...), got {_kind(own)}")
        return None
    if "command" not in own:
        collector.add(path + ("command",), 'missing; give the program to run, like ["{python}", my_executor.py]')
    if own.get("ids") is None and own.get("count") is None:
        collector.add(path + ("ids",), "missing; give ids (like 0-3) or count (like 4)")
    elif own.get("ids") is not None and own.get("count") is not None:
        later = max(("ids", "count"), key=lambda k: collector.index.line(path + (k,)) or 0)
        collector.add(path + (later,), "give either ids or count, not both")
    merged = _merge(defaults, own)
    command_ok = "command" in own
    try:
        executor = ExecutorType.model_validate(merged)
    except ValidationError as exc:
        usable = False
        bad = collector.add_validation(path, exc, ExecutorType, merged,
                                       skip=("ids_or_count", "ids_and_count", "missing"))
        # Check what is left (command, cwd, args) too, so every problem shows in one go.
        partial = {k: v for k, v in merged.items() if k not in bad and k not in ("ids", "count")}
        partial.setdefault("command", ["-"])  # a stand-in, not checked below
        try:
            executor = ExecutorType.model_validate({**partial, "count": 0})
        except ValidationError:  # pragma: no cover - every bad key was taken out
            return None
        command_ok = "command" in own and "command" not in bad

    def where(key: str) -> tuple[Any, ...]:
        # A problem with an inherited value belongs to defaults (and is reported once).
        return path + (key,) if key in own or key not in defaults else ("defaults", key)

    cwd = _absolute(base_dir, executor.cwd)
    problem = _dir_problem(cwd)
    if problem:
        collector.add(where("cwd"), problem)
        usable = False
    if where("args")[0] != "defaults":  # inherited args are checked once, at defaults.args
        _check_argv(collector, path + ("args",), own.get("args"), executor.args, PLACEHOLDERS)
    if not command_ok:
        return None
    command_is_list = isinstance(own.get("command"), list)
    _check_argv(collector, path + ("command",), own.get("command"), executor.command[1:],
                PLACEHOLDERS + ("python",), offset=1)
    program = None
    if not problem:
        program_at = path + ("command", 0) if command_is_list else path + ("command",)
        program = _resolve_program(collector, program_at, executor, cwd, environ)
    if program is not None:
        script_at = path + ("command", 1) if command_is_list else path + ("command",)
        _check_script(collector, script_at, executor, cwd)
    if program is None or not usable:
        return None
    return executor.model_copy(update={"cwd": cwd}), program


def _check_argv(
    collector: _Collector,
    where: tuple[Any, ...],
    raw: Any,
    items: list[str],
    allowed: tuple[str, ...],
    offset: int = 0,
) -> None:
    """Placeholders of args/command: per list item, or at the key when it was one string."""
    if isinstance(raw, list):
        _check_placeholders(collector, where, items, allowed, offset)
        return
    shadow = _Collector(collector.file, collector.index)
    _check_placeholders(shadow, where, items, allowed)
    for problem in shadow.problems:
        collector.add(where, problem.message)


def _check_section(
    collector: _Collector, name: str, raw: Any, model: type[_Strict]
) -> _Strict | None:
    value = {} if raw is None else raw
    if not isinstance(value, dict):
        collector.add((name,), f"expected a map (key: value), got {_kind(value)}")
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        collector.add_validation((name,), exc, model, value)
        return None


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> FarmConfig:
    """Read and validate a farm config; raise ConfigError listing every problem.

    Nothing but ConfigError leaves this function, whatever the file holds.
    """
    try:
        display = os.fspath(path)
        if isinstance(display, bytes):
            display = os.fsdecode(display)
    except Exception:
        display = repr(path)
    try:
        return _load(path, display, os.environ if environ is None else environ)
    except ConfigError:
        raise
    except Exception as exc:  # a bug here must still not become a traceback for the operator
        raise ConfigError(
            [Problem(display, None, "",
                     f"internal error while checking this config ({type(exc).__name__}); please report it")]
        ) from exc


def _load(path: Any, display: str, environ: Mapping[str, str]) -> FarmConfig:
    config_path = Path(os.path.abspath(path))
    data, index = _read_yaml(config_path, display)
    collector = _Collector(display, index)
    for dup_path, line, first in index.duplicates:
        collector.add(dup_path, f"key given twice (first on line {first}); keep one", line=line)
    if data is None:
        raise ConfigError([Problem(display, 1, "", "the file is empty; it needs at least an executors map")])
    if not isinstance(data, dict):
        raise ConfigError([
            Problem(display, index.line(()) or 1, "",
                    f"the top level must be a map of sections ({', '.join(_TOP_KEYS)}), not {_kind(data)}")
        ])

    for key in data:
        if key not in _TOP_KEYS:
            collector.add((key,), "unknown key" + _did_you_mean(str(key), _TOP_KEYS))
    sections = {name: _check_section(collector, name, data.get(name), model) for name, model in _SECTIONS.items()}
    defaults = _check_defaults(collector, data.get("defaults"))

    base_dir = config_path.parent
    executors: dict[str, ExecutorType] = {}
    programs: dict[str, str] = {}
    raw_executors = data.get("executors")
    if "executors" not in data:
        collector.add(("executors",), "missing; list the executor types to run (see configs/farm.yaml)")
    elif raw_executors is None or raw_executors == {}:
        collector.add(("executors",), "no executor types; add at least one (see configs/farm.yaml)")
    elif not isinstance(raw_executors, dict):
        collector.add(("executors",),
                      f"expected a map of executor types (like HelloWorld: ...), got {_kind(raw_executors)}")
    else:
        if "args" in defaults:
            try:
                default_args = ExecutorSettings.model_validate({"args": defaults["args"]}).args
            except ValidationError:  # pragma: no cover - bad args were taken out of defaults
                default_args = []
            _check_argv(collector, ("defaults", "args"), defaults["args"], default_args, PLACEHOLDERS)
        for type_name, own in raw_executors.items():
            checked = _check_type(collector, type_name, own, defaults, base_dir, environ)
            if checked is not None:
                executors[type_name], programs[type_name] = checked

    service = sections["service"]
    if isinstance(service, ServiceConfig) and service.auth.token_file:
        # Made absolute, not checked: the file may be provisioned after the farm starts
        # (the forwarder reads it when it needs it and reports a missing one, without
        # its content), and a missing log API token must not keep executors from running.
        token_file = _absolute(base_dir, service.auth.token_file)
        service = service.model_copy(update={"auth": service.auth.model_copy(update={"token_file": token_file})})

    supervisor = sections["supervisor"]
    state_dir = log_dir = ""
    if isinstance(supervisor, SupervisorConfig):
        # systemd's StateDirectory= / LogsDirectory= when the config does not say.
        state_dir = _absolute(base_dir, supervisor.state_dir or environ.get("STATE_DIRECTORY", "").split(":")[0]
                              or ".exec-supervisor")
        log_dir = _absolute(base_dir, supervisor.log_dir or environ.get("LOGS_DIRECTORY", "").split(":")[0] or "logs")
        for key, folder in (("state_dir", state_dir), ("log_dir", log_dir)):
            if (problem := _not_a_dir_problem(folder)):
                collector.add(("supervisor", key), problem)

    control = sections["control"]
    if isinstance(control, ControlConfig) and control.socket:
        control = control.model_copy(update={"socket": _absolute(base_dir, control.socket)})

    if collector.problems:
        raise ConfigError(sorted(collector.problems, key=lambda p: (p.line or 0, p.key)))
    assert isinstance(service, ServiceConfig) and isinstance(supervisor, SupervisorConfig)
    assert isinstance(control, ControlConfig) and isinstance(sections["events"], EventsConfig)
    return FarmConfig(
        path=config_path,
        base_dir=base_dir,
        service=service,
        name=supervisor.name,
        state_dir=Path(state_dir),
        log_dir=Path(log_dir),
        events=sections["events"],
        control=control,
        executors=executors,
        programs=programs,
    )
