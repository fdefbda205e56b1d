"""Process plumbing shared by all adapters: launching in a new session, resource
readings from /proc, and the final sweep that guarantees nothing outlives a run."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import psutil

CLK_TCK = os.sysconf("SC_CLK_TCK")
MARKER_VAR = "BENCH_RUN"


def raise_nofile(need: int = 0) -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit: a favourable setting for every peer
    (supervisord would otherwise top out at a few hundred instances). Where the hard limit is
    below `need` (a 10,000-instance farm holds a pidfd per instance, and more), root raises the
    hard limit too, up to fs.nr_open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if need > hard:
        ceiling = read_int("/proc/sys/fs/nr_open") or need
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, ceiling),) * 2)
        except (ValueError, OSError):  # not root: the hard limit stays
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


KERNEL_LIMITS = ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max", "/proc/sys/fs/nr_open",
                 "/proc/sys/fs/file-max")


def kernel_limits() -> dict[str, int | None]:
    """The machine-wide ceilings a 10,000-instance farm meets first (printed in the report)."""
    out: dict[str, int | None] = {p.removeprefix("/proc/sys/").replace("/", "."): read_int(p)
                                  for p in KERNEL_LIMITS}
    soft, _hard = resource.getrlimit(resource.RLIMIT_NPROC)
    out["RLIMIT_NPROC"] = None if soft == resource.RLIM_INFINITY else soft
    return out


def pss(pids: Sequence[int]) -> int:
    """Proportional set size in bytes (smaps_rollup): shared pages counted by share, unlike RSS."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            pass
    return total


def launch(argv: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path | None = None,
           nofile_soft: int | None = None) -> subprocess.Popen[bytes]:
    """Start a supervisor in its own session (so its process group can be killed as one),
    with stdin from /dev/null and stdout/stderr to a file (a pipe nobody drains could block it)."""
    def pre() -> None:
        if nofile_soft is not None:
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, hard))
    out = open(log_path, "ab")
    try:
        return subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=pre if nofile_soft is not None else None)
    finally:
        out.close()


def cpu_ns(pid: int) -> int | None:
    """CPU time of a process in ns. Sums the per-thread schedstat (ns resolution) and takes
    the larger of that and utime+stime from stat (10 ms ticks, but it keeps dead threads)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return max(total, ticks * 1_000_000_000 // CLK_TCK)


@dataclass
class Footprint:
    rss: int
    threads: int
    fds: int


def footprint(pids: Sequence[int]) -> Footprint:
    rss = threads = fds = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                rss += p.memory_info().rss
                threads += p.num_threads()
                fds += p.num_fds()
        except psutil.Error:
            pass
    return Footprint(rss, threads, fds)


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read()
    except OSError:
        return False


def marked_pids(marker: str) -> list[int]:
    """Every process whose environment carries this run's marker (whoever its parent is now)."""
    needle = f"{MARKER_VAR}={marker}".encode() + b"\0"
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and _environ_has(int(name), needle):
            out.append(int(name))
    return out


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def sweep(marker: str, rounds: int = 20) -> list[int]:
    """SIGKILL every live process carrying the marker; repeat while a dying supervisor may
    still fork. Returns the pids that had to be killed (anything here is a cleanup finding)."""
    killed: list[int] = []
    for _ in range(rounds):
        pids = [p for p in marked_pids(marker) if not is_zombie(p)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return sorted(set(killed))


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
