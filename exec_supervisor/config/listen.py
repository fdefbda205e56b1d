"""Listen addresses of the `http:` section: parsed, never resolved or bound. Pure (no pydantic):
the daemon's web listener uses these without loading the config models."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

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
