"""Delivery bookkeeping for the forwarder: counters, state, the recent list, dead letters.

Owns what the control API shows about event delivery (``backlog()``'s dict and
the ``events`` command's recent list), the outage / recovery accounting and its
log lines (each problem logged once until delivery works again), the tally of
refused events for the ``events_refused`` notice, and the dead-letter file.

The sender thread decides (retry, back off, dead-letter); this module only
records and reports what it decided. It must not send anything, touch the
spool's contents (only read its numbers) or publish events: it hands the
forwarder what to publish. Plain ints and strings are written by the sender
thread and read by others without a lock, as before; the recent list and the
refusal tally are shared with the event loop and the flusher, so they lock.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .auth import refusal_advice
from .payload import iso_time, payload_time
from .spool import Record, Spool

__all__ = ["DEAD_LETTER_FILE", "DEAD_LETTER_MAX_BYTES", "Recent", "DeadLetterFile", "DeliveryStatus"]

log = logging.getLogger("exec_supervisor")

DEAD_LETTER_FILE = "events-dead-letters.jsonl"
DEAD_LETTER_MAX_BYTES = 16 * 1024 * 1024  # then rotated once to .1


class Recent:
    """The last n payloads with their delivery status, for the `events` command."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: deque[dict[str, Any]] = deque()
        self._by_seq: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, seq: int, level: str, payload: dict[str, Any]) -> None:
        entry = {"seq": seq, **payload, "level": level, "status": "queued"}
        with self._lock:
            self._items.append(entry)
            self._by_seq[seq] = entry
            while len(self._items) > self._size:
                self._by_seq.pop(self._items.popleft()["seq"], None)

    def mark(self, seq: int, status: str) -> None:
        with self._lock:
            entry = self._by_seq.get(seq)
            if entry is not None:
                entry["status"] = status

    def last(self, n: int) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._items)[-n:] if n > 0 else []
            return [dict(item) for item in items]


class DeadLetterFile:
    """<state_dir>/events-dead-letters.jsonl: one line per event the service refused for good."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DEAD_LETTER_FILE

    def write(self, record: Record, status: int, detail: str, url: str) -> None:
        """Append the refused payload with the answer; rotate once past the size cap. Never raises."""
        try:
            payload: Any = json.loads(record.data)
        except ValueError:
            payload = record.data.decode("utf-8", "replace")
        line = json.dumps(
            {"time": iso_time(time.time()), "status": status, "reason": detail, "url": url, "payload": payload},
            ensure_ascii=False,
        )
        try:
            if self.path.exists() and self.path.stat().st_size > DEAD_LETTER_MAX_BYTES:
                os.replace(self.path, self.path.with_name(DEAD_LETTER_FILE + ".1"))
            # crash output is in there: readable by the daemon's user only, never through a symlink
            with open(self.path, "a", encoding="utf-8", opener=_private) as handle:
                handle.write(line + "\n")
        except OSError as exc:
            log.error("cannot write the dead-letter file %s: %s", self.path, exc.strerror or exc)


class DeliveryStatus:
    """Counters and state of one forwarder, and the one-time log lines about its problems."""

    def __init__(self, spool_directory: Path, recent_size: int) -> None:
        self.spool_directory = spool_directory
        self.url = ""  # the log API URL the messages name; the sender sets it with each config
        self.recent = Recent(recent_size)
        self.delivered = 0
        self.retried = 0  # attempts that failed and will be tried again (outage, 401, wrong endpoint)
        self.last_delivered_at: float | None = None
        self.dead_letters = 0
        self.lost = 0  # could not even be written to the spool (disk full)
        self.folded = 0  # consumed without a post: folded into an incident's digest
        self.state = "idle"
        self.last_error: str | None = None
        self._outage_since: float | None = None
        self._last_failure = 0.0  # time of the latest failed attempt of the current outage
        self._cause = "unreachable"  # the outage's latest kind: unreachable | errors | refused | misconfigured
        self._outage_logged = False
        self._auth_logged = False
        self._endpoint_logged = False
        self._recovery: dict[str, Any] | None = None
        self._refusals: dict[str, Any] = {}
        self._refusals_lock = threading.Lock()

    def config_applied(self, url: str, first: bool) -> None:
        """A (re)loaded config: its problems deserve to be logged again."""
        self.url = url
        self._auth_logged = False
        self._endpoint_logged = False
        if not first:
            self._outage_logged = False

    def sent(self, record: Record, mark: bool = True) -> None:
        """The service took `record` (the caller acked it in the spool). mark: it is in the recent list."""
        self.delivered += 1
        self.last_delivered_at = time.time()
        if mark:
            self.recent.mark(record.seq, "sent")
        if self._outage_since is not None:
            # How long delivery was really impossible: to the last failed attempt, not to this
            # success (the wait between the two is the retry interval, not the outage).
            now = time.time()
            outage = max(0.0, self._last_failure - self._outage_since)
            self._recovery = {"since": self._outage_since, "outage": outage, "delayed": 0, "max_delay": 0.0,
                              "cause": self._cause, "resumed_after": max(0.0, now - self._last_failure)}
            self._outage_since = None
            log.info("event forwarder: the log API at %s accepts events again (after %.1fs of %s)",
                     self.url, outage, self._cause)
        self._outage_logged = self._auth_logged = self._endpoint_logged = False
        self.state = "ok"
        self.last_error = None
        if self._recovery is not None:
            self._recovery["delayed"] += 1
            delay = time.time() - payload_time(record.data, time.time())
            self._recovery["max_delay"] = max(self._recovery["max_delay"], delay)

    def folded_away(self, record: Record) -> None:
        """An event folded into an incident: consumed (acked) without a post; its digest names its seq."""
        self.folded += 1
        self.recent.mark(record.seq, "folded")

    def finish_recovery(self, notice_after: float) -> dict[str, Any] | None:
        """The backlog is empty: the detail of the delivery_recovered event to publish, if the outage was long enough."""
        recovery, self._recovery = self._recovery, None
        if recovery is None or recovery["outage"] < notice_after:
            return None
        detail = {
            "delayed": recovery["delayed"],
            "max_delay": round(recovery["max_delay"], 3),
            "outage": round(recovery["outage"], 3),
            "cause": recovery["cause"],
            "resumed_after": round(recovery["resumed_after"], 3),
        }
        log.info(
            "event forwarder: backlog delivered: %d event(s) were delayed up to %.1fs",
            detail["delayed"], detail["max_delay"],
        )
        return detail

    def _failure(self, cause: str) -> None:
        now = time.time()
        self.retried += 1
        if self._outage_since is None:
            self._outage_since = now
        self._last_failure = now
        self._cause = cause

    def outage(self, reason: str, backoff_max: float, cause: str = "unreachable") -> None:
        """No answer (cause "unreachable"), or one worth retrying (5xx, 408, 425, 429: "errors")."""
        self.last_error = reason
        self._failure(cause)
        self.state = "retrying"
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "event forwarder: cannot deliver events (%s); keeping them in the spool %s and retrying "
                "with backoff up to %gs",
                reason, self.spool_directory, backoff_max,
            )

    def refused(self, reason: str, config: Any, slow_retry: float) -> None:
        """401 / 403 (or credentials that cannot work): log ONE error saying how to fix it."""
        self.last_error = f"refused by the service: {reason}"
        self._failure("refused")
        self.state = "unauthorized"
        if not self._auth_logged:
            self._auth_logged = True
            self._outage_logged = True
            log.error(
                "event forwarder: the WeFastAPI service at %s refused the supervisor's events (%s). To fix it, %s. "
                "Events are kept in the spool and retried every %gs (or at once after a reload).",
                self.url, reason, refusal_advice(config, self.url), slow_retry,
            )

    def wrong_endpoint(self, status: int, detail: str, location: str | None, config_path: Any,
                       slow_retry: float) -> None:
        """3xx, 404, 405: service.host points at the wrong place; log ONE error."""
        moved = f" to {location}" if location else ""
        self.last_error = f"POST {self.url}: {status} {detail}{moved}"
        self._failure("misconfigured")
        self.state = "misconfigured"
        if not self._endpoint_logged:
            self._endpoint_logged = True
            self._outage_logged = True
            log.error(
                "event forwarder: POST %s answered %d%s: service.host in %s does not look like the WeFastAPI "
                "service's base URL (it must end with '/', e.g. http://127.0.0.1:8083/). Events are kept and "
                "retried every %gs (or at once after a reload).",
                self.url, status, moved, config_path, slow_retry,
            )

    def dead_lettered(self, record: Record, status: int, detail: str, path: Path, mark: bool = True) -> None:
        """The service refused `record` for good; it went to the dead-letter file at `path`."""
        self.dead_letters += 1
        if mark:
            self.recent.mark(record.seq, "dead")
        log.warning(
            "event forwarder: the service refused event seq %d (%s %s); moved it to %s",
            record.seq, status, detail, path,
        )
        with self._refusals_lock:
            self._refusals["refused"] = self._refusals.get("refused", 0) + 1
            self._refusals.update(status=status, reason=detail[:200], file=str(path), last_seq=record.seq)

    def take_refusals(self) -> dict[str, Any] | None:
        """The refusals since the last call (for the one events_refused notice), or None."""
        if not self._refusals:
            return None
        with self._refusals_lock:
            refusals, self._refusals = self._refusals, {}
        return refusals

    def backlog(self, spool: Spool) -> dict[str, Any]:
        """The status dict the control API shows."""
        oldest_age = None
        try:
            record = spool.peek()
        except OSError:
            record = None
        if record is not None:
            oldest_age = max(0.0, time.time() - payload_time(record.data, time.time()))
        return {
            "count": spool.pending_count,
            "bytes": spool.pending_bytes,
            "oldest_age": None if oldest_age is None else round(oldest_age, 3),
            "last_error": self.last_error,
            "delivered": self.delivered,
            "retried": self.retried,
            "last_delivered_at": self.last_delivered_at,
            "dead_letters": self.dead_letters,
            "dropped": spool.dropped_total,
            "lost": self.lost,
            "folded": self.folded,
            "next_seq": spool.next_seq,
            "state": self.state,
        }


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
