"""Forward lifecycle events to the WeFastAPI log API, durably and in order.

    EventBus --sink()--> Spool (one write(), on the event loop)
                            |
          sender thread ----+--> POST <service.host>api/bases/logs/   (one event per request,
                            |                                          in seq order, at least once)
          flusher thread ---+--> fsync + state.json about once a second, drop / refusal notices

Supervision never waits for the network: ``sink()`` only renders the event and
appends one line to the spool; executors' own lines (``add_line()``) go to a spool
of their own, delivered after the supervisor's events. What the sender does with
each answer of the service (retry, backoff, dead letters) is sender.py's table.

Secrets (tokens, passwords) only ever go into request headers and the token
form; they never reach a log line, an event, ``backlog()`` or an exception text.

This module owns EventForwarder, the one object the daemon sees: the bus side
(filter, render, append, wake the sender), the lifecycle (start, stop with its
deadline, close), config reloads and what the control API shows (``backlog()``,
``recent()``). Its neighbours carry out the rest: sender.py runs the sender
thread and its delivery policy, flusher.py the flusher thread, payload.py builds
each event's JSON, auth.py holds the credentials, delivery.py keeps the counters,
the status, the one-time error lines and the dead-letter file, execlines.py the
executor-line spool, and spool.py stores what is pending. It must not deliver,
touch the spool's files or word a credential into anything.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from .delivery import DEAD_LETTER_FILE, DeadLetterFile, DeliveryStatus
from .execlines import ExecutorLines
from .flusher import Flusher
from .event import LEVEL_RANK, Event
from .payload import FOLDED_KEY, build_payload, encode_payload
from .sender import LOG_PATH, TOKEN_PATH, Sender
from .spool import Spool, SpoolError

__all__ = ["EventForwarder", "SpoolError", "LOG_PATH", "TOKEN_PATH", "DEAD_LETTER_FILE", "build_payload"]

log = logging.getLogger("exec_supervisor")


class EventForwarder:
    """Spools events from the bus and delivers them to the service's log API.

    Keyword arguments tune timing (the defaults suit production; tests shrink them).
    """

    def __init__(
        self,
        config: Any,
        publish: Callable[[Event], None],
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        backoff_jitter: float = 0.2,
        probe_interval: float = 3.0,
        slow_retry: float = 30.0,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        flush_interval: float = 1.0,
        notice_interval: float = 10.0,
        recovery_notice_after: float = 5.0,
        recent_size: int = 500,
        segment_bytes: int | None = None,
        line_rate: float | None = None,
        line_burst: float | None = None,
    ) -> None:
        self._publish = publish
        self._min_rank = LEVEL_RANK[config.events.min_level]
        self._language = config.events.language
        self._name = config.name
        self._state_dir = config.state_dir
        self.spool = Spool(config.state_dir / "events", config.events.spool_max_bytes, segment_bytes)
        for problem in self.spool.problems:
            log.warning("event spool: %s", problem)
        # Executors' own log lines: a spool of their own, delivered after the supervisor's events.
        self.lines = ExecutorLines(
            config.state_dir, config.events.spool_max_bytes,
            config.events.executor_lines_per_second if line_rate is None else line_rate,
            config.events.executor_lines_burst if line_burst is None else line_burst, segment_bytes)
        for problem in self.lines.problems:
            log.warning("executor line spool: %s", problem)
        self._dead_letters = DeadLetterFile(config.state_dir)
        self._status = DeliveryStatus(self.spool.directory, recent_size)
        self._recent = self._status.recent  # sink() adds to it per event: one attribute lookup less
        self._flusher = Flusher(self.spool, self._status, self._emit, flush_interval, notice_interval,
                                more=(self.lines.spool,), notices=self._line_notices)

        self._sender = Sender(
            config, self.spool, self.lines, self._status, self._dead_letters, self._emit,
            backoff_initial=backoff_initial, backoff_max=backoff_max, backoff_jitter=backoff_jitter,
            probe_interval=probe_interval, slow_retry=slow_retry, connect_timeout=connect_timeout,
            read_timeout=read_timeout, recovery_notice_after=recovery_notice_after)
        self._wake = self._sender.wake  # sink() sets it per event: one attribute lookup less
        self._running = False
        self._stopped = False

    # ------------------------------------------------------------------ the bus side

    def sink(self, event: Event) -> None:
        """EventBus subscriber: filter, render, append to the spool. No network, no fsync."""
        if LEVEL_RANK.get(event.level, LEVEL_RANK["info"]) < self._min_rank:
            return
        payload = build_payload(event, self._language)
        level = payload["level"]
        if event.folded is not None:
            # Spooled like any event (its seq is used and durable) but the sender only counts it:
            # the incident's digest names it by its seq range. Always the payload's last key.
            payload[FOLDED_KEY] = event.folded
        try:
            # The forwarder's own notices never make room by dropping more.
            seq = self.spool.append(level, encode_payload(payload),
                                    over_cap=event.event in ("events_dropped", "events_lost"))
        except (OSError, ValueError) as exc:
            self._status.lost += 1
            self._flusher.write_failed(exc, self._status.lost)
            return
        event.seq = seq
        if event.event == "events_lost":
            self.spool.clear_lost(event.detail)  # announced: later losses get a notice of their own
        self._recent.add(seq, level, payload)
        lines = self.lines.spool
        if lines.pending_bytes and self.spool.pending_bytes + lines.pending_bytes > self.spool.max_bytes:
            lines.max_bytes = max(1, self.spool.max_bytes - self.spool.pending_bytes)  # the supervisor's first
        if self._running:
            self._wake.set()
        elif self._stopped:
            self._flusher.sync_quietly()  # no flusher thread any more: make late events durable now

    def add_line(self, exec_id: str, level: str, message: str) -> bool:
        """Spool one of an executor's own log lines (event loop). False: dropped (rate limit, full disk)."""
        try:
            added = self.lines.add(exec_id, level, message, self.spool.max_bytes - self.spool.pending_bytes)
        except (OSError, ValueError) as exc:
            self._flusher.write_failed(exc, self._status.lost)
            return False
        if added:
            if self._running:
                self._wake.set()
            elif self._stopped:
                self._flusher.sync_quietly()
        return added

    def _line_notices(self) -> None:
        """Flusher thread: one warning event per instance whose lines were dropped since the last one."""
        for exec_id, dropped in self.lines.take_drops().items():
            book = self.lines.of(exec_id) or {}
            self._publish(Event(event="executor_lines_dropped", level="warning", supervisor=self._name,
                                exec_id=exec_id, detail={"dropped": dropped, "total": book.get("dropped", dropped),
                                                         "rate": self.lines.rate}))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the sender and flusher threads (again after a stop(), too)."""
        if self._running:
            return
        if self.spool.closed:
            raise SpoolError("the forwarder was closed; create a new one")
        self._stopped = False
        self._sender.prepare()
        pending = self.spool.pending_count
        if pending:
            log.info("event spool: %d event(s) from before are waiting to be delivered", pending)
        self._running = True
        self._sender.start()
        self._flusher.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Deliver what is pending for at most `timeout` s, then stop; the rest stays in the spool."""
        if self._running:
            self._sender.stop(timeout)
            self._flusher.stop()
            self._running = False
            self._stopped = True
            self._sender.close_channel()
        self._flusher.sync_quietly()

    def close(self, timeout: float = 0.0) -> None:
        """stop() and release the spools (their locks and files); for tests and a final exit."""
        self.stop(timeout)
        self.spool.close()
        self.lines.spool.close()

    def reconfigure(self, config: Any) -> None:
        """Apply a reloaded config: host, auth and events settings, without a restart."""
        self._min_rank = LEVEL_RANK[config.events.min_level]
        self._language = config.events.language
        self._name = config.name
        self.spool.max_bytes = config.events.spool_max_bytes
        self.lines.set_max_bytes(config.events.spool_max_bytes)
        self.lines.rate = config.events.executor_lines_per_second
        self.lines.burst = config.events.executor_lines_burst
        if config.state_dir != self._state_dir:
            log.warning(
                "supervisor.state_dir changed to %s; the event spool stays in %s until the daemon restarts",
                config.state_dir, self._state_dir,
            )
        self._sender.reload(config)

    # ------------------------------------------------------------------ inspection

    def backlog(self) -> dict[str, Any]:
        """Pending count and bytes, counters, state and last error: what the control API shows."""
        backlog = self._status.backlog(self.spool)
        backlog["executor_lines"] = self.lines.summary()
        return backlog

    def bearer(self) -> str | None:
        """The token the supervisor sends now (the relay adds it to what it passes on), or None."""
        auth = self._sender.auth
        return auth.token if auth is not None else None

    def recent(self, n: int) -> list[dict[str, Any]]:
        return self._recent.last(n)

    # ------------------------------------------------------------------ notices

    def _emit(self, kind: str, level: str, detail: dict[str, Any]) -> None:
        try:
            self._publish(Event(event=kind, level=level, supervisor=self._name, detail=detail))
        except Exception:
            log.exception("event forwarder: publishing %s failed", kind)
