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

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, field_validator, model_validator

from .models import Strict, _env_name_only, _secret_path
from .values import show_value

_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.%a-zA-Z]+)\]:(\d{1,5})")
_PLAIN = re.compile(r"([A-Za-z0-9.-]*):(\d{1,5})")


def parse_listen(text: Any) -> tuple[str, int]:
    """'127.0.0.1:9464' | '[::1]:9464' | 'localhost:9464' | ':9464' -> (host, port); ValueError otherwise.

    Port 0 asks the kernel for a free port (the URL is then logged and shown in status).
    An empty host (':9464') means every address, as in Go's and Prometheus' --web.listen-address.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected host:port like 127.0.0.1:9464, got {show_value(text)}")
    value = text.strip()
    match = _BRACKETED.fullmatch(value)
    if match:
        host = match.group(1)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{show_value(text)}: {host!r} in brackets is not an IPv6 address") from None
    else:
        match = _PLAIN.fullmatch(value)
        if not match:
            raise ValueError(f"{show_value(text)} is not host:port (like 127.0.0.1:9464 or [::1]:9464; "
                             "an IPv6 address goes in brackets)")
        host = match.group(1)
    port = int(match.group(2))
    if port > 65535:
        raise ValueError(f"{show_value(text)}: port {port} is above 65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def url_of(host: str, port: int) -> str:
    shown = host or "0.0.0.0"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


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

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen else None

    @property
    def has_token(self) -> bool:
        return bool(self.token_env or self.token_file)


def http_problems(http: HttpConfig) -> list[tuple[str, str]]:
    """(key, message) for settings that are valid one by one but unsafe together."""
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
