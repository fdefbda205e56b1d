"""The restart gate of a type while its incident is open: one shared backoff, one probe, then batches.

Owns when each of the type's instances may start again: instances come to it from their one
restart path (Instance._restart_now asks the engine, which asks the incident tracker); a gate
answers "now" or holds a Ticket (the instance's timer) and later calls Instance.admitted().
It never spawns, signals or stops a process itself, and knows nothing of events.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from typing import Any, Iterable

from ..config import ExecutorType
from .timers import backoff_delay


class Ticket:
    """An instance waiting at a gate; cancelled like a loop handle (the instance's timer slot)."""

    __slots__ = ("instance", "cancelled")

    def __init__(self, instance: Any) -> None:
        self.instance = instance
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Gate:
    """The restarts of one type while its incident is open: shared backoff, one probe, then batches."""

    def __init__(self, type_name: str, policy: ExecutorType) -> None:
        self.type = type_name
        self.policy = policy
        self.level = 1  # failed probes (and relapses) so far: the shared backoff's exponent
        self.probe: Any = None
        self.next_probe_at = 0.0
        self.released = False  # the probe stayed up: the others follow in batches
        self.queue: collections.deque[Ticket] = collections.deque()
        self.batch_start = 0.0
        self.batch_used = 0
        self.handle: asyncio.TimerHandle | None = None
        self.spacing = backoff_delay(policy, 1)
        self.next_probe_at = time.monotonic() + self.spacing  # the first probe: one interval after the opening

    def nominal(self) -> float:
        backoff = self.policy.backoff
        return min(backoff.max, backoff.initial * backoff.factor ** max(0, self.level - 1))

    def failed(self, instance: Any, now: float) -> float:
        """An instance of the type failed while gated; returns its restart delay."""
        if instance is self.probe or self.released:
            # The probe did not stay up, or the cause is back after a release: back off, together.
            self.probe = None
            self.released = False
            self.level += 1
            self.spacing = backoff_delay(self.policy, self.level)
            self.next_probe_at = now + self.spacing
        self._schedule(now)
        # Full jitter across the instances: each comes back to the gate at a random point of the interval.
        return max(self.next_probe_at - now, random.uniform(0.0, self.nominal()))

    def _budget(self, now: float) -> bool:
        cfg = self.policy.incidents
        every, batch = (cfg.restart_every, cfg.restart_batch) if cfg else (1.0, 10)
        if now - self.batch_start >= every:
            self.batch_start, self.batch_used = now, 0
        if self.batch_used < batch:
            self.batch_used += 1
            return True
        return False

    def admit(self, instance: Any) -> Ticket | None:
        now = time.monotonic()
        if self.released and not self.queue and self._budget(now):
            return None
        if not self.released and self.probe is None and now >= self.next_probe_at and not self.queue:
            self.probe = instance
            return None
        ticket = Ticket(instance)
        self.queue.append(ticket)
        self._schedule(now)
        return ticket

    def _schedule(self, now: float) -> None:
        if self.handle is not None or not self.queue:
            return
        if self.released:
            cfg = self.policy.incidents
            when = self.batch_start + (cfg.restart_every if cfg else 1.0) if self.batch_used else now
        elif self.probe is None:
            when = self.next_probe_at
        else:
            return  # the probe's outcome moves it on
        self.handle = asyncio.get_running_loop().call_at(max(when, now), self.pump)

    def pump(self) -> None:
        """Start whoever may start now: the next probe, or the next batch."""
        self.handle = None
        now = time.monotonic()
        while self.queue:
            if self.released:
                if not self._budget(now):
                    break
            elif self.probe is not None or now < self.next_probe_at:
                break
            ticket = self.queue.popleft()
            if ticket.cancelled:
                if self.released:
                    self.batch_used -= 1
                continue
            if not self.released:
                self.probe = ticket.instance
            if not ticket.instance.admitted():
                if self.released:
                    self.batch_used -= 1
                else:
                    self.probe = None
        self._schedule(now)

    def up(self, instance: Any, waiting: Iterable[Any]) -> None:
        """An instance of the type reached running: the probe staying up releases the rest at once
        (waiting: the type's instances in backoff, whose own timers would spread them out)."""
        if instance is not self.probe:
            return
        self.probe = None
        self.released = True
        self.level = 1
        self.spacing = backoff_delay(self.policy, 1)
        self.batch_start, self.batch_used = time.monotonic(), 1  # the probe was this batch's first
        queued = {id(t.instance) for t in self.queue if not t.cancelled}
        self.queue.extend(Ticket(i) for i in waiting if id(i) not in queued)
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.pump()

    def gone(self, instance: Any) -> None:
        """The probe left the race without an outcome (stopped, removed): let the next one try."""
        if instance is self.probe:
            self.probe = None
            self._schedule(time.monotonic())

    def close(self) -> None:
        """The incident is over: everyone waiting starts now (ordinary restarts from here on)."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        queue, self.queue = self.queue, collections.deque()
        for ticket in queue:
            if not ticket.cancelled:
                ticket.instance.admitted()
