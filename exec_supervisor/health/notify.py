"""The farm's sd_notify socket: one datagram socket for every instance, the sender's pid from the kernel.

Executors find it in NOTIFY_SOCKET, exactly as under systemd, so `sdnotify`,
`systemd.daemon.notify`, `cysystemd` and the toolkit all work unchanged. SO_PASSCRED
makes the kernel attach the sender's real pid to each datagram (SCM_CREDENTIALS): the
pid is never taken from the message. This module owns the socket and the message
format only; which instance a pid belongs to, and what a message does, is decided by
the caller (health/service.py).
"""

from __future__ import annotations

import array
import os
import socket
import struct
from pathlib import Path
from typing import Iterator

from ..digests import sha256_hex

# systemd's NOTIFY_BUFFER_MAX: a longer datagram is refused whole.
MAX_DATAGRAM = 4096
# Datagrams read per wake-up of the loop, so a flood cannot starve the rest of it.
BATCH = 512
# Enough for 1000 instances to ping in the same instant (the queue length itself is the
# kernel's net.unix.max_dgram_qlen; a full queue makes a non-blocking sender retry later).
RECEIVE_BUFFER = 4 * 1024 * 1024
STATUS_MAX_CHARS = 200
_UCRED = struct.Struct("iII")
_FD_ROOM = socket.CMSG_SPACE(16 * 4)  # fds sent along (FDSTORE=1) are closed, never kept
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + _FD_ROOM
_MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0x40000000)
_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1


def socket_address(state_dir: Path) -> str:
    """<state_dir>/notify.sock, or an abstract name derived from state_dir when that path is too long."""
    path = str(state_dir / "notify.sock")
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    digest = sha256_hex(os.fsencode(str(state_dir)), 24)
    return f"@exec-supervisor/{digest}/notify"


class NotifySocket:
    """A bound AF_UNIX datagram socket with SO_PASSCRED; `address` is what NOTIFY_SOCKET holds."""

    def __init__(self, address: str, fd: int | None = None) -> None:
        """Bind address anew, or (fd) take over the socket an upgrading image kept open for us."""
        self.address = address
        self.refused = 0  # datagrams refused: too long, or without credentials
        if fd is not None:
            self.sock = _adopt(fd, address)
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
                try:  # FORCE passes rmem_max when we are root
                    sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
                    break
                except OSError:
                    continue
            if address.startswith("@"):
                sock.bind(b"\0" + address[1:].encode())
            else:
                # One daemon per state_dir (the state lock): a file here is a dead daemon's socket.
                try:
                    os.unlink(address)
                except FileNotFoundError:
                    pass
                sock.bind(address)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def hand_over(self) -> int:
        """A duplicate of the socket for the next image of the daemon; this one closes, the path stays."""
        fd = os.dup(self.sock.fileno())
        self.sock.close()
        return fd

    def receive(self) -> Iterator[tuple[int, bytes]]:
        """(sender pid, payload) for each datagram waiting now, at most BATCH."""
        recvmsg = self.sock.recvmsg
        flags = socket.MSG_DONTWAIT | _MSG_CMSG_CLOEXEC
        for _ in range(BATCH):
            try:
                data, ancillary, msg_flags, _ = recvmsg(MAX_DATAGRAM, _ANCILLARY, flags)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack_from(payload)[0]
                elif kind == socket.SCM_RIGHTS:
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


def _adopt(fd: int, address: str) -> socket.socket:
    sock = socket.socket(fileno=fd)
    try:
        sock.set_inheritable(False)
        sock.setblocking(False)
        name = sock.getsockname()
        expected: str | bytes = b"\0" + address[1:].encode() if address.startswith("@") else address
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_DGRAM or name != expected:
            raise OSError(f"the socket handed over is not {address}")
    except BaseException:
        sock.close()
        raise
    return sock


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
