"""The forwarder's flusher thread: the spool made durable about once a second, and notices.

Owns the fsync tick (``Spool.sync()``: new lines, heads and next seq in
state.json, consumed segments deleted), the warning events about what the
spool's size cap dropped and what the service refused for good (each at most
once per notice interval), the one ``events_lost`` error event about events that
could not be written at all (once the spool's file system has room again), and the
one rate-limited error line for spool writes and fsyncs that fail (one limiter: a
full disk fails both).

It must not deliver, retry or change the spool's contents beyond ``sync()`` and
taking its drop report; it publishes its notices through the callable the
forwarder hands it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from .delivery import DeliveryStatus
from .spool import Spool

__all__ = ["Flusher"]

log = logging.getLogger("exec_supervisor")

ROOM_FOR_NOTICE = 64 * 1024  # free bytes in the spool's file system before events_lost is tried
LOST_NOTICE_RETRY = 2.0  # seconds before a notice that did not reach the spool is tried again


class Flusher:
    """Runs the ``events-flusher`` thread between start() and stop(); sync_quietly() works any time."""

    def __init__(self, spool: Spool, status: DeliveryStatus, emit: Callable[[str, str, dict[str, Any]], None],
                 flush_interval: float, notice_interval: float, more: tuple[Spool, ...] = (),
                 notices: Callable[[], None] | None = None) -> None:
        self.spool = spool
        self._more = more  # other spools synced on the same tick (executors' lines)
        self._more_notices = notices
        self.flush_interval = flush_interval
        self.notice_interval = notice_interval
        self._status = status
        self._emit = emit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_drop_notice = float("-inf")
        self._last_refusal_notice = float("-inf")
        self._last_more_notice = float("-inf")
        self._write_error_logged = 0.0
        self._lost_notice_after = float("-inf")

    def _has_room(self) -> bool:
        """Room for the notice in the spool's file system (a full disk would lose it too)."""
        try:
            info = os.statvfs(self.spool.directory)
        except OSError:
            return False
        return info.f_bavail * info.f_frsize >= ROOM_FOR_NOTICE

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="events-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.sync_quietly()
            try:
                self._notices()
            except Exception:  # pragma: no cover - a bug here must not kill the flusher
                log.exception("event forwarder: notice failed")

    def sync_quietly(self) -> None:
        """spool.sync(); an OSError becomes a rate-limited error line (tried again next tick)."""
        try:
            self.spool.sync()
            for spool in self._more:
                spool.sync()
        except OSError as exc:
            now = time.monotonic()
            if now - self._write_error_logged > 60:
                self._write_error_logged = now
                log.error("cannot fsync the event spool %s: %s", self.spool.directory, exc.strerror or exc)

    def write_failed(self, exc: Exception, lost: int) -> None:
        """An event could not be appended to the spool (it is lost): say so, at most once a minute."""
        now = time.monotonic()
        if now - self._write_error_logged > 60:
            self._write_error_logged = now
            log.error(
                "cannot write to the event spool %s: %s; %d event(s) lost so far",
                self.spool.directory, getattr(exc, "strerror", None) or exc, lost,
            )

    def _notices(self) -> None:
        now = time.monotonic()
        if now >= self._lost_notice_after:
            lost = self.spool.lost_report()
            if lost and self._has_room():
                # The forwarder clears the report once this notice is in the spool; if it is
                # lost too, its own seq joins the report and the next try says so.
                self._lost_notice_after = now + LOST_NOTICE_RETRY
                log.error("event spool: %d event(s) could not be written (%s), seq %d-%d; they are lost",
                          lost["lost"], lost["reason"], lost["first_seq"], lost["last_seq"])
                self._emit("events_lost", "error", lost)
        if now - self._last_drop_notice >= self.notice_interval:
            drops = self.spool.take_drops()
            if drops:
                self._last_drop_notice = now
                log.warning(
                    "event spool full (events.spool_max_bytes = %d): dropped %d oldest event(s) %s, seq %d-%d",
                    self.spool.max_bytes, drops["dropped"], drops["by_level"], drops["first_seq"], drops["last_seq"],
                )
                self._emit("events_dropped", "warning", drops)
        if self._more_notices is not None and now - self._last_more_notice >= self.notice_interval:
            self._last_more_notice = now
            self._more_notices()
        if now - self._last_refusal_notice >= self.notice_interval:
            refusals = self._status.take_refusals()
            if refusals:
                self._last_refusal_notice = now
                self._emit("events_refused", "warning", refusals)

