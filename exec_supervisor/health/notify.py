"""The farm's sd_notify socket: one datagram socket for every instance, the sender's pid from the kernel.

Executors find it in NOTIFY_SOCKET, exactly as under systemd, so `sdnotify`,
`systemd.daemon.notify`, `cysystemd` and the toolkit all work unchanged. SO_PASSCRED
makes the kernel attach the sender's real pid to each datagram (SCM_CREDENTIALS): the
pid is never taken from the message (supervise/credsocket.py). This module owns the
socket's limits and the message format only; which instance a pid belongs to, and what a message does, is decided by
the caller (health/service.py).
"""

from __future__ import annotations

from pathlib import Path

from ..supervise.credsocket import CredentialSocket, socket_address as _address

STATUS_MAX_CHARS = 200


def socket_address(state_dir: Path) -> str:
    """<state_dir>/notify.sock, or an abstract name derived from state_dir when that path is too long."""
    return _address(state_dir, "notify")


class NotifySocket(CredentialSocket):
    """The farm's sd_notify socket; `address` is what NOTIFY_SOCKET holds."""

    max_datagram = 4096  # systemd's NOTIFY_BUFFER_MAX: a longer datagram is refused whole
    batch = 512
    # Enough for 1000 instances to ping in the same instant (the queue length itself is the
    # kernel's net.unix.max_dgram_qlen; a full queue makes a non-blocking sender retry later).
    receive_buffer = 4 * 1024 * 1024


def parse(data: bytes) -> dict[str, str]:
    """KEY=VALUE per line, as sd_notify(3) writes them; the last of a repeated key wins."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


def one_line(text: str, limit: int = STATUS_MAX_CHARS) -> str:
    """A STATUS= text fit for a status column: control characters out, capped."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."
