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

import array
import json
import os
import socket
import struct
from pathlib import Path
from typing import Iterator

from ..digests import sha256_hex

# The toolkit caps a message at 32000 characters: up to 4 bytes each in UTF-8, plus the JSON.
MAX_DATAGRAM = 160 * 1024
BATCH = 256  # datagrams read per wake-up of the loop, so a flood cannot starve the rest of it
RECEIVE_BUFFER = 8 * 1024 * 1024
_UCRED = struct.Struct("iII")
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(16 * 4)
_MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0x40000000)
_SUN_PATH_MAX = 107


def socket_address(state_dir: Path) -> str:
    """<state_dir>/log.sock, or an abstract name derived from state_dir when that path is too long."""
    path = str(state_dir / "log.sock")
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    digest = sha256_hex(os.fsencode(str(state_dir)), 24)
    return f"@exec-supervisor/{digest}/log"


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


class LineSocket:
    """A bound AF_UNIX datagram socket with SO_PASSCRED; `address` is what ET_LOG_SOCKET holds."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.refused = 0  # datagrams without credentials or too long
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
                    break
                except OSError:
                    continue
            if address.startswith("@"):
                sock.bind(b"\0" + address[1:].encode())
            else:
                try:  # one daemon per state_dir (the state lock): a file here is a dead daemon's
                    os.unlink(address)
                except FileNotFoundError:
                    pass
                sock.bind(address)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    @classmethod
    def inherited(cls, address: str, fd: int) -> "LineSocket":
        """The socket an upgrading daemon kept open across its re-exec (OSError if it is not that one)."""
        sock = socket.socket(fileno=fd)
        name = sock.getsockname()
        expected = b"\0" + address[1:].encode() if address.startswith("@") else address
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_DGRAM or name != expected:
            sock.close()
            raise OSError(f"descriptor {fd} is not the log socket {address}")
        sock.set_inheritable(False)
        sock.setblocking(False)
        self = cls.__new__(cls)
        self.address, self.refused, self.sock = address, 0, sock
        return self

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> Iterator[tuple[int, bytes]]:
        """(sender pid, datagram) for each datagram waiting now, at most BATCH."""
        recvmsg = self.sock.recvmsg
        flags = socket.MSG_DONTWAIT | _MSG_CMSG_CLOEXEC
        for _ in range(BATCH):
            try:
                data, ancillary, msg_flags, _ = recvmsg(MAX_DATAGRAM, _ANCILLARY, flags)
            except OSError:  # BlockingIOError: nothing more now
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack_from(payload)[0]
                elif kind == socket.SCM_RIGHTS:  # descriptors sent along are closed, never kept
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            if msg_flags & socket.MSG_TRUNC or pid <= 0:
                self.refused += 1
                continue
            yield pid, data

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            try:
                os.unlink(self.address)
            except OSError:
                pass
