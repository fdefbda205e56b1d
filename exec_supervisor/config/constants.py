"""Names and limits of the config format shared by every config module."""

from __future__ import annotations

import re

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

