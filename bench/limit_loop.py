#!/usr/bin/env python3
"""The "physical limit" reference: the least a supervisor can possibly do.

posix_spawn N instances (each in its own session, output straight to its log
file), wait on their pidfds with epoll, respawn the moment one exits, and on
SIGTERM forward SIGTERM to every instance and exit once all are gone. No
config parsing, no state, no logging, no backoff: whatever a real supervisor
costs above this is its own overhead.

Usage: limit_loop.py SPEC.json   where SPEC = {"argv": [...], "count": N,
"env": {...}, "log_dir": "/abs"}
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    argv: list[str] = spec["argv"]
    count: int = spec["count"]
    log_dir: str = spec["log_dir"]
    base_env = dict(os.environ, **spec.get("env", {}))
    # Wake the epoll loop on SIGTERM/SIGINT through a pipe, so a signal that
    # arrives while we are still spawning is seen at once.
    rd, wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wr)
    stopping = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    ep = select.epoll()
    ep.register(rd, select.EPOLLIN)
    by_fd: dict[int, tuple[int, int]] = {}    # pidfd -> (pid, instance index)
    envs = [dict(base_env, ET_EXEC_ID=f"ET-Limit-{i}") for i in range(count)]
    logs = [os.path.join(log_dir, f"ET-Limit-{i}.log") for i in range(count)]

    def spawn(i: int) -> None:
        pid = os.posix_spawn(argv[0], argv, envs[i], setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, logs[i], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ])
        fd = os.pidfd_open(pid)
        by_fd[fd] = (pid, i)
        ep.register(fd, select.EPOLLIN)

    def reap(fd: int) -> int:
        pid, i = by_fd.pop(fd)
        ep.unregister(fd)
        os.close(fd)
        os.waitpid(pid, 0)
        return i

    for i in range(count):
        if stopping:
            break
        spawn(i)
    # drain the wakeup pipe now and then; its bytes only mean "look at `stopping`"
    while True:
        if stopping:
            break
        for fd, _ev in ep.poll():
            if fd == rd:
                try:
                    os.read(rd, 512)
                except BlockingIOError:
                    pass
                continue
            i = reap(fd)
            if not stopping:
                spawn(i)
    for pid, _i in list(by_fd.values()):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    while by_fd:
        for fd, _ev in ep.poll(1.0):
            if fd != rd:
                reap(fd)
            else:
                try:
                    os.read(rd, 512)
                except BlockingIOError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
