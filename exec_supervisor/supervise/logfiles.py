"""Instance log files, opened and rotated without ever following a symlink.

A log_dir may be shared (another user, or a process of the farm, can create names in it).
So the daemon opens each log itself, with O_NOFOLLOW, and accepts only a regular file owned
by its own user: a symlink planted as `ET-X-0.log` (to a root-only file, say) makes that spawn
fail with a clear error instead of making the daemon append to, and `logs` serve, another
file. The child gets the opened descriptor (posix_spawn dup2), never the path. Logs are mode
0640, group `supervisor.log_group` when set. Rotation (copy + truncate) opens the same way
and writes the copy to a fresh file (O_EXCL) that is renamed into place.

Owns these files only; no instance, no engine.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

LOG_MODE = 0o640
_COPY_CHUNK = 1 << 20


def nofollow_opener(path: str, flags: int) -> int:
    """For open(..., opener=): the same open, refusing a symlink as the last component."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def open_log(path: str, gid: int | None = None) -> int:
    """An instance's log opened for appending (created 0640): a descriptor for the child."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                     LOG_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "the log file is a symbolic link (refused)", path) from None
        raise
    try:
        _own_regular_file(fd, path)
        info = os.fstat(fd)
        if gid is not None and info.st_gid != gid:
            os.fchown(fd, -1, gid)
        if stat.S_IMODE(info.st_mode) != LOG_MODE:
            os.fchmod(fd, LOG_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _own_regular_file(fd: int, path: str | Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "the log file is not a regular file (refused)", str(path))
    if info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"the log file belongs to uid {info.st_uid}, not to the supervisor (refused)",
                      str(path))


def rotate_copytruncate(path: Path, backups: int, gid: int | None = None) -> bool:
    """Rotate path while its writer keeps the file open (O_APPEND): copy it away, then truncate.

    Renaming would leave the child writing into the renamed file; with copy+truncate it carries
    on writing at offset 0 of the same file (a tiny window between the copy and the cut remains).
    Returns False when the log is gone.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        _own_regular_file(fd, path)
        if backups > 0:
            for index in range(backups - 1, 0, -1):
                older = path.with_name(f"{path.name}.{index}")
                if os.path.lexists(older):
                    os.replace(older, path.with_name(f"{path.name}.{index + 1}"))  # renames a link, never follows
            tmp = path.with_name(f".{path.name}.1.tmp")
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, LOG_MODE)
            try:
                if gid is not None:
                    os.fchown(out, -1, gid)
                offset = 0
                # Reading to EOF also takes bytes written while we copy; then cut.
                while chunk := os.pread(fd, _COPY_CHUNK, offset):
                    os.write(out, chunk)
                    offset += len(chunk)
            finally:
                os.close(out)
            os.replace(tmp, path.with_name(f"{path.name}.1"))
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    return True
