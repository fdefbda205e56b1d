"""Executors' own log lines, spooled and delivered by the supervisor on their behalf.

An executor under the daemon hands its ``log()`` lines to the daemon (the log socket,
or the relay's HTTP listener); this module turns each into a spool record and keeps
the books per instance. It owns:

- the wire body: exactly what the executor would have posted, ``{"level", "message"}``
  with the message starting ``ET-<Name>-<id>: `` (a wrong or missing prefix is replaced
  with the sender's real one: an executor cannot post under another's exec id);
- the per-instance rate limit (a token bucket: a flooding executor loses its own
  excess lines, counted, never anyone else's);
- the executor lines' share of ``events.spool_max_bytes``: their own spool, capped at
  half of it and at whatever the supervisor's events leave, so a flood never pushes
  out a supervisor event;
- the counters ``status`` shows per instance: relayed (delivered), pending, dropped.

It must not send anything (the forwarder's sender thread delivers, supervisor events
first), nor know about sockets or processes: callers pass the sender's exec id.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from .event import LEVELS
from .payload import iso_time
from .spool import Record, Spool

__all__ = ["LINES_DIR", "ExecutorLines", "line_body", "with_prefix"]

log = logging.getLogger("exec_supervisor")

LINES_DIR = "executor-lines"
# The executor toolkit's own cap on a message; the service accepts more, the spool need not.
MAX_LINE_CHARS = 32_000
_PREFIX_RE = re.compile(r"^ET-[^\s:]{1,100}-\d{1,19}: ")


def with_prefix(exec_id: str, message: str) -> str:
    """The message as the service must show it: starting with the sender's own ``ET-<Name>-<id>: ``."""
    own = exec_id + ": "
    if message.startswith(own):
        return message
    match = _PREFIX_RE.match(message)
    return own + (message[match.end():] if match else message)


def line_body(data: bytes) -> bytes:
    """The JSON to post for a spooled line: ``{"level", "message"}`` and nothing else."""
    record = json.loads(data)
    return json.dumps({"level": record["level"], "message": record["message"]},
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _Books:
    __slots__ = ("relayed", "pending", "dropped", "tokens", "refilled", "unreported")

    def __init__(self, burst: float) -> None:
        self.relayed = 0
        self.pending = 0
        self.dropped = 0
        self.tokens = burst
        self.refilled = time.monotonic()
        self.unreported = 0  # dropped since the last executor_lines_dropped notice

    def view(self) -> dict[str, int]:
        return {"relayed": self.relayed, "pending": self.pending, "dropped": self.dropped}


class ExecutorLines:
    """The executor lines' spool and books. ``add`` runs on the event loop; ``delivered`` and
    the spool's drop hook on the sender thread or under the spool's lock: one lock for the books."""

    def __init__(self, state_dir: Path, spool_max_bytes: int, rate: float = 100.0, burst: float = 1000.0,
                 segment_bytes: int | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self._total_max = spool_max_bytes
        self.spool = Spool(state_dir / LINES_DIR, self.share, segment_bytes)
        self.problems = self.spool.problems
        self._lock = threading.Lock()
        self._books: dict[str, _Books] = {}
        self._owner: dict[int, str] = {}  # pending seq -> exec id
        self.refused = 0  # lines from a process that is no instance's
        for record in self.spool.pending():  # lines a previous daemon left: whose they are
            try:
                exec_id = json.loads(record.data)["exec_id"]
            except (ValueError, KeyError, TypeError):
                continue
            self._owner[record.seq] = exec_id
            self._book(exec_id).pending += 1
        self.spool.on_drop = self._dropped_by_cap

    @property
    def share(self) -> int:
        """Executor lines may hold at most half of events.spool_max_bytes."""
        return max(1, self._total_max // 2)

    def set_max_bytes(self, spool_max_bytes: int) -> None:
        self._total_max = spool_max_bytes
        self.spool.max_bytes = self.share

    def _book(self, exec_id: str) -> _Books:
        book = self._books.get(exec_id)
        if book is None:
            book = self._books[exec_id] = _Books(self.burst)
        return book

    def add(self, exec_id: str, level: str, message: str, room: int | None = None) -> bool:
        """Spool one line of `exec_id` (its prefix made right). False when rate-limited or not storable.

        room: the bytes the supervisor's own events leave of events.spool_max_bytes (the
        line's cap is the smaller of that and the executor share)."""
        level = level if level in LEVELS else "info"
        text = with_prefix(exec_id, message)
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + f"\n... [{len(text) - MAX_LINE_CHARS} characters cut]"
        now = time.monotonic()
        with self._lock:
            book = self._book(exec_id)
            book.tokens = min(self.burst, book.tokens + (now - book.refilled) * self.rate)
            book.refilled = now
            if book.tokens < 1.0:
                book.dropped += 1
                book.unreported += 1
                return False
            book.tokens -= 1.0
        cap = self.share if room is None else max(1, min(self.share, room))
        if cap != self.spool.max_bytes:
            self.spool.max_bytes = cap
        body = json.dumps({"exec_id": exec_id, "time": iso_time(time.time()), "level": level, "message": text},
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        # Booked before the append, which may drop older lines (or, bigger than the cap, this
        # one) through the hook. Only the event loop appends, so next_seq is this line's seq.
        seq = self.spool.next_seq
        with self._lock:
            book.pending += 1
            self._owner[seq] = exec_id
        try:
            self.spool.append(level, body)
        except (OSError, ValueError):
            with self._lock:
                if self._owner.pop(seq, None) is not None:
                    book.pending -= 1
                book.dropped += 1
                book.unreported += 1
            raise
        return True

    def _dropped_by_cap(self, seq: int) -> None:
        with self._lock:
            exec_id = self._owner.pop(seq, None)
            if exec_id is not None:
                book = self._book(exec_id)
                book.pending -= 1
                book.dropped += 1
                book.unreported += 1

    def consumed(self, record: Record, delivered: bool) -> None:
        """The sender took `record` off the spool: delivered, or dead-lettered."""
        with self._lock:
            exec_id = self._owner.pop(record.seq, None)
            if exec_id is not None:
                book = self._book(exec_id)
                book.pending -= 1
                if delivered:
                    book.relayed += 1
                else:
                    book.dropped += 1

    def take_drops(self) -> dict[str, int]:
        """exec id -> lines dropped since the last call (rate limit or full share)."""
        with self._lock:
            found = {e: b.unreported for e, b in self._books.items() if b.unreported}
            for exec_id in found:
                self._books[exec_id].unreported = 0
            return found

    def of(self, exec_id: str) -> dict[str, int] | None:
        with self._lock:
            book = self._books.get(exec_id)
            return None if book is None else book.view()

    def summary(self) -> dict[str, Any]:
        """What the events API shows: totals, the share, and the instances with lines."""
        with self._lock:
            books = {e: b.view() for e, b in self._books.items()}
        return {
            "pending": self.spool.pending_count,
            "bytes": self.spool.pending_bytes,
            "max_bytes": self.share,
            "relayed": sum(b["relayed"] for b in books.values()),
            "dropped": sum(b["dropped"] for b in books.values()),
            "refused": self.refused,
            "rate": self.rate,
            "burst": self.burst,
            "instances": books,
        }

    def forget(self, keep: set[str]) -> None:
        """Drop the books of instances that are gone and have nothing pending."""
        with self._lock:
            for exec_id in [e for e, b in self._books.items() if e not in keep and not b.pending]:
                del self._books[exec_id]
