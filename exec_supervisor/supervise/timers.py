"""Timers of the supervision loop: start_seconds deadlines on a slack grid, and restart backoff.

Owns no process and no state of an instance; instance.py and engine.py use these.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
from typing import Callable, Protocol

from ..config import ExecutorType

log = logging.getLogger("exec_supervisor")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


# start_seconds deadlines are rounded up to this grid (timer slack, like Linux's timerslack or
# systemd's AccuracySec=): instances that come up within the same few milliseconds share one
# wake-up of the loop, and nobody can tell 20 ms on a start_seconds check.
TIMER_SLACK = 0.02
# How late a grid slot may run when nothing else wakes the loop. A pass that runs anyway (an
# exit batch: see SlackTimers.run_due) takes the slots due by then, so while instances churn
# their start_seconds checks cost no wake-up of their own.
TIMER_LATE = 0.02


class SlackTimers:
    """Deadlines rounded up to the TIMER_SLACK grid, one list of callbacks per grid slot.

    Every spawn sets a start_seconds deadline. As a loop timer each would cost a handle, heap
    operations in Python, a cancel at most exits and often a wake-up of its own; here it is a
    list append, a slot's entries run together, and a slot runs with the first pass of the
    loop after its time (at most TIMER_LATE later). Entries are never cancelled: each callback
    is handed the token it was set with and does nothing when that token is no longer current.
    """

    def __init__(self) -> None:
        self._slots: dict[int, list[tuple[Callable[[float], None], float]]] = {}
        self._order: list[int] = []  # heap of the slots in _slots
        self._wakeups: dict[int, asyncio.TimerHandle] = {}

    def call_at(self, when: float, callback: Callable[[float], None], token: float) -> None:
        """Call callback(token) at, or a little after, `when` (the loop's clock)."""
        slot = math.ceil(when / TIMER_SLACK)
        entries = self._slots.get(slot)
        if entries is None:
            entries = self._slots[slot] = []
            heapq.heappush(self._order, slot)
            loop = asyncio.get_running_loop()
            self._wakeups[slot] = loop.call_at(slot * TIMER_SLACK + TIMER_LATE, self._wake_up, loop)
        entries.append((callback, token))

    def run_due(self, now: float) -> None:
        """Run every slot due by now (the loop's clock)."""
        order = self._order
        while order and order[0] * TIMER_SLACK <= now:
            slot = heapq.heappop(order)
            self._wakeups.pop(slot).cancel()  # the loop drops a cancelled timer without waking
            for callback, token in self._slots.pop(slot):
                try:
                    callback(token)
                except Exception:  # as the loop does for a failing timer: log it, run the others
                    log.exception("timer callback %r failed", callback)

    def _wake_up(self, loop: asyncio.AbstractEventLoop) -> None:
        self.run_due(loop.time())


def backoff_delay(policy: ExecutorType, failures: int) -> float:
    """Delay before restart number `failures` (1-based) of a run of failures."""
    backoff = policy.backoff
    delay = min(backoff.max, backoff.initial * backoff.factor ** max(0, failures - 1))
    if backoff.jitter and delay:
        delay *= 1 + random.uniform(-backoff.jitter, backoff.jitter)
    return max(0.0, delay)
