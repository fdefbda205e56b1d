"""Names and limits of the config format shared by every config module."""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # use with fullmatch
# What service.auth's *_env keys accept: capitals, which also catches most pasted tokens.
AUTH_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
# Keys shown in messages under env and service.auth: a short identifier. Anything else may be a
# secret pasted where a name belongs, and is masked like a value.
SHOWN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
PLACEHOLDERS = ("id", "name", "exec_id", "service_host")
DEFAULT_ARGS = ("--service-host", "{service_host}", "--id", "{id}")
# Set by the supervisor for every instance; a config may not set them.
RESERVED_ENV = ("ET_EXEC_ID", "ET_NAME", "ET_ID", "ET_SERVICE_HOST", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "ET_FARM")
# Keys that only make sense per type (see _check_defaults).
PER_TYPE_KEYS = ("command", "ids", "count", "hosts")
MAX_IDS = 100_000  # per type; a typo like 0-1000000 must not eat the machine
MAX_DURATION = 365 * 86400.0
# Bounds that keep every instance spawnable: ET-<Name>-<id>.log.<backup> stays far below
# NAME_MAX (255 bytes), and an id fits a 64-bit integer in any executor's argument parser.
MAX_NAME_LENGTH = 100
MAX_ID_DIGITS = 18
MAX_ID = 10**MAX_ID_DIGITS - 1
# Linux refuses (E2BIG) one argument or environment string over 32 pages (MAX_ARG_STRLEN)...
MAX_ARG_STRLEN = 32 * 4096
# ...and a config file is a few KiB: anything near this is not one (or is /dev/zero).
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# A placeholder's format spec ({id:0>6}) may pad, not allocate without bound.
MAX_FORMAT_WIDTH = 256
# The default of supervisor.max_instances never exceeds this (see checks.default_max_instances).
MAX_INSTANCES_CEILING = 100_000

