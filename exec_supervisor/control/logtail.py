"""Reading an instance's log file for the control API: its tail, then what is appended.

Owns the file reading behind `GET /v1/logs/<exec id>`: bounded reads of the last
lines, and a follower that survives the daemon's copytruncate rotations. It reads
the files only: it must not rotate, truncate or write them (supervise/ owns that),
and it knows nothing of HTTP.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..supervise.logfiles import nofollow_opener

MAX_TAIL_BYTES = 4 * 1024 * 1024
FOLLOW_CHUNK = 256 * 1024


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def read_tail(path: Path, lines: int, max_bytes: int = MAX_TAIL_BYTES) -> tuple[bytes, int]:
    """The last `lines` lines of path (reading at most max_bytes) and the offset of its end."""
    try:
        handle = open(path, "rb", opener=nofollow_opener)
    except OSError:
        return b"", 0
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if lines <= 0:
            return b"", size
        position, chunks, read, newlines = size, [], 0, 0
        while position > 0 and read < max_bytes:
            step = min(64 * 1024, position, max_bytes - read)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            newlines += chunk.count(b"\n", 0, len(chunk) - 1 if not chunks else len(chunk))
            chunks.append(chunk)
            read += step
            # `lines` newlines before the last byte: the last `lines` lines are complete.
            if newlines >= lines:
                break
        data = b"".join(reversed(chunks))
    trailing = data.endswith(b"\n")
    body = data[:-1] if trailing else data
    extra = body.count(b"\n") - lines  # whole lines beyond the ones asked for
    if extra >= 0:
        start = 0
        for _ in range(extra + 1):  # extra is at most one block's worth of lines
            start = body.index(b"\n", start) + 1
    elif position > 0:  # fewer lines than asked within max_bytes: drop the cut first line
        start = body.find(b"\n") + 1 if b"\n" in body else len(data)
    else:
        start = 0
    return data[start:], size


class LogFollower:
    """Reads what an instance appends to its log, across the daemon's copytruncate rotations.

    A rotation copies the file to `<log>.1` and truncates it; it runs on the daemon's
    loop, so a follower (on the same loop) never sees one half done. When `.1` changed
    since the last look, the rest of the old content is read from `.1`, then the live
    file from 0: nothing written before the rotation is lost or repeated.
    """

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.backup = path.with_name(path.name + ".1")
        self.offset = offset
        self.backup_id = _identity(self.backup)
        self.backup_offset: int | None = None  # reading the rest of a rotated copy

    def step(self, limit: int = FOLLOW_CHUNK) -> bytes:
        """Up to `limit` new bytes (b'' when nothing is new)."""
        if self.backup_offset is None:
            backup_id = _identity(self.backup)
            if backup_id != self.backup_id:
                self.backup_id = backup_id
                if backup_id is not None and backup_id[2] > self.offset:
                    self.backup_offset = self.offset
                self.offset = 0
            else:
                size = _identity(self.path)
                if size is not None and size[2] < self.offset:
                    self.offset = 0  # truncated without a copy (log_backups: 0) or by hand
        if self.backup_offset is not None:
            data = self._read(self.backup, self.backup_offset, limit)
            self.backup_offset += len(data)
            if len(data) < limit:
                self.backup_offset = None  # done with the copy; the live file continues
            if data:
                return data
        data = self._read(self.path, self.offset, limit)
        self.offset += len(data)
        return data

    @staticmethod
    def _read(path: Path, offset: int, limit: int) -> bytes:
        try:
            with open(path, "rb", opener=nofollow_opener) as handle:
                handle.seek(offset)
                return handle.read(limit)
        except OSError:
            return b""
