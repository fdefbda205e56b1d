"""A bound AF_UNIX datagram socket whose datagrams carry the sender's pid from the kernel.

SO_PASSCRED makes the kernel attach the sender's real pid to each datagram (SCM_CREDENTIALS):
who sent it is never taken from the payload. The farm's sd_notify socket (health/notify.py)
and the executors' log socket (relay/linesocket.py) are both one of these; each owns its own
limits and message format, this module the socket: binding (a path, or an abstract name when
the path is too long), taking one over across an in-place upgrade, and reading in batches.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from pathlib import Path
from typing import Iterator

from ..digests import sha256_hex

_UCRED = struct.Struct("iII")
_FD_ROOM = socket.CMSG_SPACE(16 * 4)  # descriptors sent along (FDSTORE=1) are closed, never kept
_MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0x40000000)
_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1


def socket_address(state_dir: Path, name: str) -> str:
    """<state_dir>/<name>.sock, or an abstract name derived from state_dir when that path is too long."""
    path = str(state_dir / f"{name}.sock")
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    digest = sha256_hex(os.fsencode(str(state_dir)), 24)
    return f"@exec-supervisor/{digest}/{name}"


def _bind_name(address: str) -> str | bytes:
    return b"\0" + address[1:].encode() if address.startswith("@") else address


class CredentialSocket:
    """The bound socket; `address` is what the senders are told (a path, or @name for an abstract one)."""

    max_datagram = 4096  # longer datagrams are refused whole (counted in `refused`)
    batch = 256  # datagrams read per wake-up of the loop, so a flood cannot starve the rest of it
    receive_buffer = 4 * 1024 * 1024

    def __init__(self, address: str, fd: int | None = None) -> None:
        """Bind address anew, or (fd) take over the socket an upgrading image kept open for us."""
        self.address = address
        self.refused = 0  # datagrams refused: too long, or without credentials
        self.sock = _adopt(fd, address) if fd is not None else self._bind(address)

    def _bind(self, address: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
                try:  # FORCE passes rmem_max when we are root
                    sock.setsockopt(socket.SOL_SOCKET, option, self.receive_buffer)
                    break
                except OSError:
                    continue
            if not address.startswith("@"):
                # One daemon per state_dir (the state lock): a file here is a dead daemon's socket.
                try:
                    os.unlink(address)
                except FileNotFoundError:
                    pass
            sock.bind(_bind_name(address))
        except BaseException:
            sock.close()
            raise
        return sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def hand_over(self) -> int:
        """A duplicate of the socket for the next image of the daemon; this one closes, the path stays."""
        fd = os.dup(self.sock.fileno())
        self.sock.close()
        return fd

    def receive(self) -> Iterator[tuple[int, bytes]]:
        """(sender pid, payload) for each datagram waiting now, at most `batch`."""
        recvmsg = self.sock.recvmsg
        flags = socket.MSG_DONTWAIT | _MSG_CMSG_CLOEXEC
        ancillary_room = socket.CMSG_SPACE(_UCRED.size) + _FD_ROOM
        for _ in range(self.batch):
            try:
                data, ancillary, msg_flags, _ = recvmsg(self.max_datagram, ancillary_room, flags)
            except OSError:  # BlockingIOError: nothing more now
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
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_DGRAM or sock.getsockname() != _bind_name(address):
            raise OSError(f"descriptor {fd} handed over is not the socket {address}")
    except BaseException:
        sock.close()
        raise
    return sock
