"""The daemon's log socket: executors' `log()` lines as datagrams, the sender's pid from the kernel.

One AF_UNIX datagram socket for the farm, named in every instance's ET_LOG_SOCKET. Each
datagram is one line, the JSON the executor would have posted (``{"level", "message"}``).
SO_PASSCRED makes the kernel attach the sender's real pid (SCM_CREDENTIALS): who sent a
line is never taken from the line. A datagram socket keeps lines whole and in order per
sender, and a sender that finds the queue full gets EAGAIN at once, never a block.

Why not the sd_notify socket: its datagrams are capped at systemd's 4096 bytes (a log
line may be 32000 characters), and a flood of lines must not delay a watchdog ping.

This module owns the socket and the datagram format only; whose pid it is and where a
line goes is the caller's (relay/service.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..supervise.credsocket import CredentialSocket, socket_address as _address


def socket_address(state_dir: Path) -> str:
    """<state_dir>/log.sock, or an abstract name derived from state_dir when that path is too long."""
    return _address(state_dir, "log")


def parse_line(data: bytes) -> tuple[str, str] | None:
    """(level, message) of one datagram, or None when it is not a log line."""
    try:
        line = json.loads(data)
    except ValueError:
        return None
    if not isinstance(line, dict):
        return None
    level, message = line.get("level"), line.get("message")
    if not isinstance(level, str) or not isinstance(message, str):
        return None
    return level.lower(), message


class LineSocket(CredentialSocket):
    """The executors' log socket (SO_PASSCRED, supervise/credsocket.py); `address` is what ET_LOG_SOCKET holds."""

    # The toolkit caps a message at 32000 characters: up to 4 bytes each in UTF-8, plus the JSON.
    max_datagram = 160 * 1024
    batch = 256
    receive_buffer = 8 * 1024 * 1024

    @classmethod
    def inherited(cls, address: str, fd: int) -> "LineSocket":
        """The socket an upgrading daemon kept open across its re-exec (OSError if it is not that one)."""
        return cls(address, fd=fd)
