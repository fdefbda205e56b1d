"""The OS calls that act on processes, kept in one place (Linux only).

Spawning executors and helpers (posix_spawn, each in its own session), signals (to a pid, a
process group, and the daemon's own signalfd), reaping (waitpid), the daemon's process-wide
settings (subreaper, malloc arenas, RLIMIT_NOFILE), and the two file reads an instance's exit
needs (its log's size and tail). Reading another process's state from /proc is procfs.py.
Knows nothing of instances, the engine or the config: plain values in, plain values out.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from collections import abc
from pathlib import Path
from typing import Iterable, Mapping

from .logfiles import nofollow_opener

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def set_child_subreaper() -> bool:
    """Orphaned descendants become our children, so none escapes to PID 1."""
    return _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def release_free_memory() -> None:
    """Give the heap's free memory back to the kernel (glibc keeps it for reuse otherwise).

    Building the config models and spawning the farm leave a few MiB of freed heap behind
    that the steady state never needs again; a supervisor should not hold it for its whole
    life. A no-op on a libc without malloc_trim.
    """
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


def use_one_malloc_arena() -> None:
    """Make every thread allocate from the main heap (MALLOC_ARENA_MAX=1). Call before threads start.

    glibc gives each new thread a heap of its own; the daemon's few threads allocate little
    and seldom at the same time, and a second heap is only more memory held in fragments.
    A no-op on a libc without mallopt.
    """
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, 1)


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: 1000 instances need fds for log files and the loop."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


# Dispositions a child must not inherit: Python ignores SIGPIPE/SIGXFSZ, and exec keeps ignored signals.
_DEFAULT_IN_CHILD = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_home_fd: int | None = None


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def encode_env(env: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[bytes, bytes]:
    """An environment encoded for spawn(); encoding the shared part once saves it at every restart."""
    # collections.abc, not typing: isinstance against typing.Mapping walks the ABCs per call
    items = env.items() if isinstance(env, abc.Mapping) else env
    # str.encode as os.fsencode does it, without its checks for bytes and path-like values
    return {name.encode(_FS_ENCODING, _FS_ERRORS): value.encode(_FS_ENCODING, _FS_ERRORS) for name, value in items}


def spawn(argv: tuple[str, ...], env: Mapping[str, str] | Mapping[bytes, bytes], cwd: str,
          log_fd: int | None) -> int:
    """Start argv in its own session (pgid = pid) with stdout+stderr on log_fd (None: the
    daemon's own, output: inherit); returns the pid.

    log_path None: the child keeps the daemon's stdout and stderr (run-one in a container).

    posix_spawn (vfork + exec in glibc) costs the daemon a quarter of what subprocess.Popen
    does. The child writes the log file itself (the daemon opened it: logfiles.open_log) and
    the daemon relays no bytes. posix_spawn has
    no working-directory action, so the daemon steps into cwd for the call and back out;
    every path the daemon itself uses is absolute.
    """
    global _home_fd
    if _home_fd is None:
        _home_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    os.chdir(cwd)
    try:
        return os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),  # dup2 clears close-on-exec on 1 and 2 only
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ] if log_fd is not None else [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
            setsid=True,
            setsigdef=_DEFAULT_IN_CHILD,
            setsigmask=(),  # the daemon blocks the signals it reads from a SignalFd; executors must not
        )
    finally:
        os.fchdir(_home_fd)


def spawn_captured(argv: tuple[str, ...] | list[str], env: Mapping[bytes, bytes], cwd: str) -> tuple[int, int]:
    """Start argv in its own session with stdout+stderr into a pipe; returns (pid, non-blocking read end).

    For short-lived helpers (health probes) whose output the daemon keeps a little of.
    """
    global _home_fd
    if _home_fd is None:
        _home_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.set_blocking(write_end, True)
        os.chdir(cwd)
        try:
            pid = os.posix_spawn(
                argv[0], list(argv), env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_end, 1),
                    (os.POSIX_SPAWN_DUP2, write_end, 2),
                ],
                setsid=True, setsigdef=_DEFAULT_IN_CHILD, setsigmask=(),
            )
        finally:
            os.fchdir(_home_fd)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return pid, read_end


class _SigSet(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong))))]


_SIGINFO_SIZE = 128  # sizeof(struct signalfd_siginfo); ssi_signo is its first field


class SignalFd:
    """Signals as a readable fd (signalfd(2)): they are blocked in this thread and in every
    thread started after it, and pending ones are read from the fd.

    Python's signal handling costs a child exit two loop passes (its C handler writes the
    wakeup fd, asyncio's handler writes its self-pipe again) and a Python-level handler call;
    this is one readable fd, and it works on any thread. Executors get an empty mask from
    spawn().
    """

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = frozenset(signals)
        mask = _SigSet()
        _libc.sigemptyset(ctypes.byref(mask))
        for number in self.signals:
            _libc.sigaddset(ctypes.byref(mask), number)
        signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        fd = _libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)
            raise OSError(err, os.strerror(err))
        self.fd = fd

    def read(self) -> list[int]:
        """The signals pending now, each once (standard signals do not queue)."""
        try:
            data = os.read(self.fd, _SIGINFO_SIZE * 16)
        except (BlockingIOError, InterruptedError):
            return []
        return [int.from_bytes(data[at:at + 4], "little") for at in range(0, len(data), _SIGINFO_SIZE)]

    def close(self, ignore: Iterable[int] = ()) -> None:
        """Stop reading; the signals in ignore are ignored from now on, the others unblocked."""
        os.close(self.fd)
        for number in ignore:
            signal.signal(number, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)


def reap() -> list[tuple[int, int]]:
    """Collect every exited child without blocking: [(pid, wait status)]."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append((pid, status))
    return reaped


def describe_status(status: int) -> tuple[int | None, str | None]:
    """(exit code, signal name) from a wait status."""
    if os.WIFSIGNALED(status):
        return None, signal_name(os.WTERMSIG(status))
    return os.waitstatus_to_exitcode(status), None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed uid; nothing more we can do
        return True


def signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


def read_tail(path: str | Path, since_offset: int, max_lines: int, max_bytes: int) -> str:
    """The last lines written to path after since_offset (a rotation resets the offset)."""
    try:
        with open(path, "rb", opener=nofollow_opener) as handle:
            size = handle.seek(0, os.SEEK_END)
            start = since_offset if since_offset <= size else 0
            start = max(start, size - max_bytes)
            handle.seek(start)
            data = handle.read(size - start)
    except OSError:
        return ""
    lines = data.decode(errors="replace").splitlines()
    if start > 0 and start != since_offset and lines:
        lines = lines[1:]  # the first line was cut by max_bytes
    return "\n".join(lines[-max_lines:])


def file_size(path: str | Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
