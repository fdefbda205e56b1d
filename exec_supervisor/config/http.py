"""The `http:` section: the TCP listener for /metrics, the web status page and its read-only API.

Pure like the rest of config/: the listen address is parsed, never resolved or bound.
The rules an operator relies on (README "Web status page and metrics"):

- `listen` unset: no TCP listener at all.
- A listener on anything but a loopback address (127.0.0.0/8, ::1, localhost) needs a
  token: without one, anyone who can reach the port would read the farm.
- `actions: true` and `metrics_auth: true` need a token too: actions are never open.
- The token is named (token_env) or stored in a file (token_file), never written in
  the config; its value never appears in a message.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, field_validator, model_validator

from . import farm
from .listen import is_loopback, parse_listen
from .models import Strict, _env_name_only, _secret_path


class HttpConfig(Strict):
    listen: str | None = None
    token_env: Annotated[str | None, BeforeValidator(_env_name_only)] = None
    token_file: Annotated[str | None, BeforeValidator(_secret_path)] = None
    metrics_auth: bool = False
    actions: bool = False

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_listen(value)
        return value.strip()

    @model_validator(mode="after")
    def _one_token_source(self) -> "HttpConfig":
        if self.token_env and self.token_file:
            raise ValueError("use one of token_env or token_file")
        return self


def http_problems(http: farm.HttpConfig) -> list[tuple[str, str]]:
    """(key, message) for settings that are valid one by one but unsafe together (on the section's record)."""
    problems = []
    address = http.address
    if address is not None and not is_loopback(address[0]) and not http.has_token:
        where = f"{address[0] or 'every address'}"
        problems.append(("listen", f"{where} is reachable from other machines, so the page, its API and /metrics "
                                   "would be open to them: set http.token_env or http.token_file (a Bearer token), "
                                   "or listen on 127.0.0.1 or [::1]"))
    if http.actions and not http.has_token:
        problems.append(("actions", "actions: true needs a token (http.token_env or http.token_file): "
                                    "restart/stop/start/scale from the page are never open"))
    if http.metrics_auth and not http.has_token:
        problems.append(("metrics_auth", "metrics_auth: true needs a token (http.token_env or http.token_file)"))
    return problems
