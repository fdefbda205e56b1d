"""The daemon's folders and its one-per-state_dir lock; DaemonError, what start-up reports to the operator.

state_dir is private (0700, files 0600: crash output, pids and tokens' traces live there);
log_dir must be writable; the flock on state_dir/daemon.lock keeps a second daemon out and
is released by the kernel when the daemon dies, however it dies.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import logging
import os
import stat
from pathlib import Path

from ..config import FarmConfig

log = logging.getLogger("exec_supervisor")


class DaemonError(Exception):
    """A problem the operator can fix; printed as one line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StateLock:
    """One daemon per state_dir: an flock held for the daemon's life (released by the kernel if it dies)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DaemonError(
                f"another exec-supervisor (pid {holder}) is already running with state_dir {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def adopt(self, fd: int) -> bool:
        """Keep holding the lock through a descriptor inherited across an in-place upgrade."""
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except OSError:
            return False
        if not same:
            return False
        os.set_inheritable(fd, False)
        self._fd = fd
        return True

    @property
    def fd(self) -> int | None:
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def prepare_dirs(cfg: FarmConfig) -> int | None:
    """Make state_dir private and log_dir usable; returns supervisor.log_group's gid (or None)."""
    for key, path, mode in (("supervisor.state_dir", cfg.state_dir, 0o700), ("supervisor.log_dir", cfg.log_dir, 0o750)):
        try:
            path.mkdir(mode=mode, parents=True, exist_ok=True)
            probe = path / f".write-test-{os.getpid()}"  # run-one processes share a log_dir
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise DaemonError(f"{cfg.path.name}: {key}: cannot use {path}: {exc.strerror}", 2) from None
    make_private(cfg)
    if cfg.log_group is None:
        return None
    try:
        return grp.getgrnam(cfg.log_group).gr_gid
    except KeyError:
        if cfg.log_group.isdigit():
            return int(cfg.log_group)
        raise DaemonError(f"{cfg.path.name}: supervisor.log_group: there is no group named {cfg.log_group!r} "
                          "on this machine", 2) from None


def make_private(cfg: FarmConfig) -> None:
    """state_dir 0700 and every file in it 0600 (crash output, pids, tokens' traces live there).

    When the control socket is inside it and control.group may use it, the group gets search
    permission only (0710): it reaches the socket, and lists or reads nothing.
    """
    mode, gid = 0o700, -1
    if cfg.control.group and cfg.socket_path.parent == cfg.state_dir:
        try:
            gid = grp.getgrnam(cfg.control.group).gr_gid
        except KeyError:
            gid = int(cfg.control.group) if cfg.control.group.isdigit() else -1
        mode = 0o710 if gid != -1 else 0o700
    try:
        os.chown(cfg.state_dir, -1, gid)
        os.chmod(cfg.state_dir, mode)
        for root, dirs, files in os.walk(cfg.state_dir):  # written by an older version, or by hand
            for name in dirs + files:
                path = os.path.join(root, name)
                info = os.lstat(path)  # a symlink is left alone (chmod would change its target)
                if (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)) and info.st_mode & 0o077:
                    os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
    except OSError as exc:
        log.warning("cannot make %s private: %s", cfg.state_dir, exc.strerror or exc)
