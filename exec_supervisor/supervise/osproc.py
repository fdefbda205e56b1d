"""The few OS calls the supervisor makes, kept in one place (Linux only)."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import threading
import time
from collections import abc
from pathlib import Path
from typing import Collection, Iterable, Mapping

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


def read_proc(path: str) -> bytes:
    """The whole of a /proc file. Plain os.read: a Python file object costs more than the
    read itself, and some of these files are read several times per instance restart."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_proc_head(path: str, size: int = 1024) -> bytes:
    """The start of a /proc file in one read (a stat line fits in 1 KiB)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


# getpid() is a system call (glibc caches nothing), and this runs at every instance exit.
_own_pid = os.getpid()


def _forked() -> None:
    global _own_pid
    _own_pid = os.getpid()
    for fd in _children_fds.values():
        os.close(fd)
    _children_fds.clear()  # they list the parent's children


os.register_at_fork(after_in_child=_forked)

# An open /proc/self/task/<tid>/children, re-read with pread: the path lookup of an open
# costs about as much as the read, and this runs at every instance exit.
_children_fds: dict[int, int] = {}
# A read of a seq_file stops short only at its end or when its buffer (at least a page) is
# full; a shorter answer than this is therefore the whole list, and the read that would
# return nothing (and walk the list once more) can be skipped.
_SEQ_COMPLETE_BELOW = 4096 - 64


def _read_children_file(tid: int) -> bytes:
    fd = _children_fds.get(tid)
    if fd is None:
        fd = _children_fds[tid] = os.open(f"/proc/self/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
    chunks = []
    offset = 0
    try:
        while chunk := os.pread(fd, 65536, offset):
            if not offset and len(chunk) < _SEQ_COMPLETE_BELOW:
                return chunk
            chunks.append(chunk)
            offset += len(chunk)
    except OSError:
        del _children_fds[tid]
        os.close(fd)
        raise
    return b"".join(chunks)


def adopted_children(known: Collection[int], on_main_list: int = 0) -> set[int]:
    """Our children not in known (pids we spawned and have not reaped): adopted orphans.

    The kernel hands an orphan to the first live thread of its subreaper, our main thread,
    while a spawned child is listed under the thread that spawned it. With the event loop on
    a thread of its own (see daemon.run), the main thread's list holds adopted orphans only,
    so this read, done at every instance exit, costs nothing per instance. With the loop on
    the main thread, the instances are on that list too and are left out by count first.
    on_main_list: how many of known the main thread lists even so (children carried over an
    in-place upgrade: execve leaves every child to the one thread that survives it).
    """
    try:
        data = _read_children_file(_own_pid)  # the main thread's id is the pid
    except OSError:
        return set()
    expected = len(known) if threading.current_thread() is threading.main_thread() else on_main_list
    if data.count(b" ") == expected:  # one "pid " per child: nothing but what we know
        return set()
    return set(map(int, data.split())).difference(known)


# How long to wait out an exec in progress: its new environment is set up within a millisecond.
EXEC_WINDOW_SECONDS = 0.005


def environ_value(pid: int, name: str) -> str | None:
    """One variable of a process's initial environment (None if gone, a zombie or unreadable).

    During an execve the environment reads as empty for a moment. A leftover that execs as its
    parent dies (a daemonizing executor) is caught in that window just when we look for it,
    so an empty answer from a live process is read again, for at most EXEC_WINDOW_SECONDS.
    """
    prefix = name.encode() + b"="
    deadline = time.monotonic() + EXEC_WINDOW_SECONDS
    while True:
        try:
            data = read_proc(f"/proc/{pid}/environ")
        except OSError:
            return None
        if data or time.monotonic() > deadline or _is_zombie(pid):
            break
        time.sleep(0.0002)
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def descends_from(pid: int, ancestor: int, max_depth: int = 64) -> bool:
    """True when ancestor is pid's parent, grandparent, ... (walks /proc/<pid>/stat)."""
    for _ in range(max_depth):
        try:
            stat = read_proc(f"/proc/{pid}/stat")
        except OSError:
            return False
        pid = int(stat[stat.rfind(b")") + 2:].split(None, 2)[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def _is_zombie(pid: int) -> bool:
    try:
        stat = read_proc(f"/proc/{pid}/stat")
    except OSError:
        return True  # gone: as final as a zombie
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] in (b"Z", b"X")


# One /proc scan serves every caller within this window: when a thousand instances reach
# their stop timeout together, each would otherwise scan all of /proc on the event loop.
PROC_SCAN_TTL = 0.02
_proc_scan: tuple[float, dict[int, list[int]]] = (-1.0, {})


def descendants(pids: Iterable[int]) -> set[int]:
    """Every living descendant of the given pids (one scan of /proc, shared for PROC_SCAN_TTL)."""
    global _proc_scan
    if time.monotonic() - _proc_scan[0] > PROC_SCAN_TTL:
        parent_of = _children_by_parent()
        _proc_scan = (time.monotonic(), parent_of)  # a scan can outlast the TTL: count from its end
    parent_of = _proc_scan[1]
    found: set[int] = set()
    stack = list(pids)
    while stack:
        for child in parent_of.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _children_by_parent() -> dict[int, list[int]]:
    parent_of: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = read_proc(f"/proc/{entry}/stat")
        except OSError:
            continue
        # The command name may hold spaces and parens: fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        parent_of.setdefault(int(fields[1]), []).append(int(entry))
    return parent_of




def is_running(pid: int, start_time: float | None) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (
            start_time is None or abs(process.create_time() - start_time) < 0.05
        )
    except psutil.Error:
        return False


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
