"""How the daemon reads its config file: load() runs in a child (config/validate.py), the result comes back.

At start nothing reaps children yet, so the daemon waits for the child itself (PendingCheck, which
`start` begins before the daemon imports itself); once the engine runs it reaps every child
(waitpid(-1)), so a reload's child is spawned like a health probe (osproc.spawn_captured) and
the engine hands its status over (Engine.watch_helper): the wait never blocks the loop. Either
way a config that takes too long to check (a YAML built to be slow) is killed after
config.validate.TIMEOUT_SECONDS and reported, never applied.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from ..config import ConfigError, FarmConfig, Problem
from ..config.validate import ANSWER_MAX_BYTES, TIMEOUT_SECONDS, PendingCheck, child_argv, farm_from_answer
from ..supervise import osproc


def read_config(config_path: str | Path, timeout: float = TIMEOUT_SECONDS) -> FarmConfig:
    """Before the engine starts (nothing else reaps children yet): the FarmConfig of config_path, or ConfigError."""
    return PendingCheck(config_path).result(timeout)


async def read_config_async(config_path: str | Path, engine: Any, timeout: float = TIMEOUT_SECONDS) -> FarmConfig:
    """While the engine runs (a reload): the same, without blocking the loop."""
    loop = asyncio.get_running_loop()
    pid, fd = osproc.spawn_captured(child_argv(config_path), os.environb, ".")
    status_future = engine.watch_helper(pid)
    output = bytearray()
    read_all = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        output.extend(chunk)
        if (not chunk or len(output) > ANSWER_MAX_BYTES) and not read_all.done():
            read_all.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(asyncio.gather(asyncio.shield(read_all), asyncio.shield(status_future)), timeout)
    except asyncio.TimeoutError:
        os.kill(pid, signal.SIGKILL)
        await status_future
        raise _too_slow(config_path, timeout) from None
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    if len(output) > ANSWER_MAX_BYTES:
        raise ConfigError([Problem(str(config_path), None, "", "cannot be validated: the answer is too large")])
    return farm_from_answer(config_path, bytes(output), os.waitstatus_to_exitcode(status_future.result()))


def _too_slow(config_path: str | Path, timeout: float) -> ConfigError:
    return ConfigError([Problem(str(config_path), None, "",
                                f"cannot be validated within {timeout:g}s (is the file built to be slow to read?)")])
