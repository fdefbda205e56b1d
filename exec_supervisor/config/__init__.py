"""Farm config: YAML in, typed models out. Pure: nothing here imports the rest of the package.

    constants.py  names and limits of the format
    values.py     parsers of durations, sizes, signals, id ranges, commands; value display
    errors.py     Problem (one line: file:line: key: message) and ConfigError (all of them)
    yamlmarks.py  the YAML loader that remembers where every key stood
    models.py     pydantic models per section, InstanceSpec, FarmConfig
    problems.py   the collector that turns validation errors into operator sentences
    checks.py     filesystem checks (programs, scripts, folders) and placeholders
    loader.py     load(): the one entry point

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

from .constants import DEFAULT_ARGS, MAX_ID, MAX_IDS, NAME_RE, PLACEHOLDERS, RESERVED_ENV
from .errors import ConfigError, Problem
from .loader import load
from .models import (AuthConfig, Backoff, ControlConfig, EventsConfig, ExecutorSettings, ExecutorType, FarmConfig, Incidents,
                     InstanceSpec, ServiceConfig, SupervisorConfig)
from .values import parse_duration, parse_ids, parse_signal, parse_size

__all__ = [
    "load", "ConfigError", "Problem", "FarmConfig", "InstanceSpec", "ExecutorType", "ExecutorSettings", "Backoff", "Incidents",
    "AuthConfig", "ServiceConfig", "SupervisorConfig", "EventsConfig", "ControlConfig",
    "parse_duration", "parse_ids", "parse_signal", "parse_size",
    "DEFAULT_ARGS", "MAX_ID", "MAX_IDS", "NAME_RE", "PLACEHOLDERS", "RESERVED_ENV",
]
