"""Farm config: YAML in, typed records out. Pure: nothing here imports the rest of the package.

    constants.py  names and limits of the format
    values.py     parsers of durations, sizes, signals, id ranges, commands; value display
    errors.py     Problem (one line: file:line: key: message) and ConfigError (all of them)
    yamlmarks.py  the YAML loader that remembers where every key stood
    listen.py     listen addresses of the http: section (host:port)
    farm.py       what the daemon holds: plain records, InstanceSpec, FarmConfig, their JSON form
    models.py     the validation schema: pydantic models per section (the CLI's side only)
    problems.py   the collector that turns validation errors into operator sentences
    checks.py     filesystem checks (programs, scripts, folders) and placeholders
    loader.py     load(): the one entry point (validated models in, records out)
    validate.py   the daemon's way in: load() in a short-lived child, the FarmConfig back as JSON

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
- Every problem is a Problem with file, line and dotted key; load() gathers all
  of them and raises one ConfigError, and nothing else ever escapes it.
"""

from typing import Any

from .constants import DEFAULT_ARGS, MAX_ID, MAX_IDS, NAME_RE, PLACEHOLDERS, RESERVED_ENV
from .errors import ConfigError, Problem
from .farm import (AuthConfig, Backoff, ControlConfig, EventsConfig, ExecutorType, FarmConfig, HttpConfig, Incidents,
                   InstanceSpec, ServiceConfig)
from .values import parse_duration, parse_ids, parse_signal, parse_size

# Imported on first use: they bring pydantic and PyYAML, which the daemon never loads (validate.py).
_LAZY = {"load": "loader", "ExecutorSettings": "models", "SupervisorConfig": "models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "load", "ConfigError", "Problem", "FarmConfig", "InstanceSpec", "ExecutorType", "ExecutorSettings", "Backoff", "Incidents",
    "AuthConfig", "ServiceConfig", "SupervisorConfig", "EventsConfig", "ControlConfig", "HttpConfig",
    "parse_duration", "parse_ids", "parse_signal", "parse_size",
    "DEFAULT_ARGS", "MAX_ID", "MAX_IDS", "NAME_RE", "PLACEHOLDERS", "RESERVED_ENV",
]
