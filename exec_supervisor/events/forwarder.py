"""Forward lifecycle events to the WeFastAPI log API, durably and in order.

    EventBus --sink()--> Spool (one write(), on the event loop)
                            |
          sender thread ----+--> POST <service.host>api/bases/logs/   (one event per request,
                            |                                          in seq order, at least once)
          flusher thread ---+--> fsync + state.json about once a second, drop / refusal notices

Supervision never waits for the network: ``sink()`` only renders the event and
appends one line to the spool. The sender thread (one keep-alive
connection, see httpclient) delivers the oldest pending event and removes it only
after a 2xx answer. What it does with other answers:

==========================  =================================================================
no connection (refused,     keep it, probe again every probe_interval s (jittered): one cheap
reset, unreachable)         attempt, so delivery resumes within seconds of the service's return
read timeout, 5xx, 408,     keep it, retry with capped exponential backoff and jitter: the
425, 429                    service is there and says "not now" (Retry-After honoured up to the cap)
401 / 403                   keep it, log ONE error saying how to fix it, renew the token if
                            the supervisor logs in with username/password, retry slowly
3xx, 404, 405               keep it (service.host points at the wrong place: every event
                            would fail the same way), log ONE error, retry slowly
any other 4xx (422, ...)    move that one event to <state_dir>/events-dead-letters.jsonl
                            with the answer, and go on with the next
==========================  =================================================================

Secrets (tokens, passwords) only ever go into request headers and the token
form; they never reach a log line, an event, ``backlog()`` or an exception text.

This module owns the sender thread, the policy in the table above (retry,
backoff, slow retry, dead-lettering, the stop deadline) and the config reloads.
Its neighbours carry out the rest: flusher.py runs the flusher thread,
payload.py builds each event's JSON, auth.py holds the credentials and logs in,
delivery.py keeps the counters, the status the control API shows, the one-time
error lines and the dead-letter file, and spool.py stores what is pending. It
must not touch the spool's files or word a credential into anything but a
request header.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable

from .auth import AuthProblem, Credentials
from .delivery import DEAD_LETTER_FILE, DeadLetterFile, DeliveryStatus
from .execlines import ExecutorLines, line_body
from .flusher import Flusher
from .event import LEVEL_RANK, Event
from .httpclient import Channel, TransportError
from .payload import answer_detail, build_payload, encode_payload, mark_delayed, retry_after
from .spool import Record, Spool, SpoolError

__all__ = ["EventForwarder", "SpoolError", "LOG_PATH", "TOKEN_PATH", "DEAD_LETTER_FILE", "build_payload"]

log = logging.getLogger("exec_supervisor")

LOG_PATH = "api/bases/logs/"
TOKEN_PATH = "api/bases/token/standard/open/"
_RETRYABLE = {408, 425, 429}
FOLDED_KEY = "folded_into"
# Inside a JSON string a quote is escaped, so these bytes can only be the top-level key.
_FOLDED_MARK = b',"folded_into":"'

_ENDPOINT_PROBLEM = {404, 405}


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
        self._config = config
        self._publish = publish
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_jitter = backoff_jitter
        self.probe_interval = probe_interval
        self.slow_retry = slow_retry
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.recovery_notice_after = recovery_notice_after

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

        self._wake = threading.Event()  # something to send, or stop/reload
        self._interrupt = threading.Event()  # cut a backoff wait short: stop/reload
        self._sender: threading.Thread | None = None
        self._running = False
        self._stopped = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._reload = threading.Lock()
        self._reload_config: Any = None

        # Owned by the sender thread once started.
        self._url = config.service.host + LOG_PATH
        self._token_url = config.service.host + TOKEN_PATH
        self._auth: Credentials | None = None
        self._channel: Channel | None = None
        self._failures = 0  # consecutive failed attempts: the backoff's exponent

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
        self._stopping = False
        self._stopped = False
        self._interrupt.clear()
        self._apply_config(self._config, first=True)
        pending = self.spool.pending_count
        if pending:
            log.info("event spool: %d event(s) from before are waiting to be delivered", pending)
        self._running = True
        self._sender = threading.Thread(target=self._run_sender, name="events-sender", daemon=True)
        self._sender.start()
        self._flusher.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Deliver what is pending for at most `timeout` s, then stop; the rest stays in the spool."""
        if self._running:
            self._stop_deadline = time.monotonic() + max(0.0, timeout)
            self._stopping = True
            self._interrupt.set()
            self._wake.set()
            if self._sender is not None:
                self._sender.join(timeout + 1.0)
            self._flusher.stop()
            self._running = False
            self._stopped = True
            if self._channel is not None:
                self._channel.close()
                self._channel = None
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
        with self._reload:
            self._config = config
            self._reload_config = config
        self._interrupt.set()
        self._wake.set()

    # ------------------------------------------------------------------ inspection

    def backlog(self) -> dict[str, Any]:
        """Pending count and bytes, counters, state and last error: what the control API shows."""
        backlog = self._status.backlog(self.spool)
        backlog["executor_lines"] = self.lines.summary()
        return backlog

    def bearer(self) -> str | None:
        """The token the supervisor sends now (the relay adds it to what it passes on), or None."""
        auth = self._auth
        return auth.token if auth is not None else None

    def recent(self, n: int) -> list[dict[str, Any]]:
        return self._recent.last(n)

    # ------------------------------------------------------------------ notices

    def _emit(self, kind: str, level: str, detail: dict[str, Any]) -> None:
        try:
            self._publish(Event(event=kind, level=level, supervisor=self._name, detail=detail))
        except Exception:
            log.exception("event forwarder: publishing %s failed", kind)

    # ------------------------------------------------------------------ sender thread

    def _apply_config(self, config: Any, first: bool = False) -> None:
        self._url = config.service.host + LOG_PATH
        self._token_url = config.service.host + TOKEN_PATH
        auth = Credentials(config)
        if auth.problem:
            log.error("event forwarder: %s; sending events without a token", auth.problem)
        self._auth = auth
        self._failures = 0
        self._status.config_applied(self._url, first)

    def _take_reload(self) -> None:
        with self._reload:
            config, self._reload_config = self._reload_config, None
        if config is not None:
            self._apply_config(config)
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def _run_sender(self) -> None:
        while True:
            try:
                self._send_loop()
                return
            except Exception:  # pragma: no cover - a bug must not end delivery for good
                log.exception("event forwarder: unexpected error; events stay in the spool, retrying in %gs",
                              self.slow_retry)
                self._status.state = "error"
                if self._stopping:
                    return
                self._pause(self.slow_retry)

    def _send_loop(self) -> None:
        while True:
            self._take_reload()
            if self._stopping and time.monotonic() >= self._stop_deadline:
                return
            self._wake.clear()
            try:
                record = self.spool.peek()
                line = record is None
                if line:  # the supervisor's events first: a flood of lines never holds them back
                    record = self.lines.spool.peek()
            except OSError as exc:
                self._status.last_error = f"cannot read the spool: {exc.strerror or exc}"
                log.error("event forwarder: %s", self._status.last_error)
                self._pause(self.slow_retry)
                continue
            if record is None:
                recovered = self._status.finish_recovery(self.recovery_notice_after)
                if recovered is not None:
                    self._emit("delivery_recovered", "warning", recovered)
                if self._stopping:
                    return
                self._wake.wait(30.0)  # sink(), stop() and reconfigure() wake it; no idle polling
                continue
            if not line and _FOLDED_MARK in record.data:
                self.spool.ack(record.seq, record.level)
                self._status.folded_away(record)
                continue
            outcome, delay = self._deliver(record, line)
            if outcome == "sent":
                continue
            if self._stopping:
                return  # "try briefly": no backoff waits during a stop
            self._pause(delay)

    def _pause(self, seconds: float) -> None:
        self._interrupt.wait(seconds)
        self._interrupt.clear()

    def _backoff(self, retry_after: float | None = None) -> float:
        self._failures += 1
        delay = min(self.backoff_max, self.backoff_initial * (2 ** min(self._failures - 1, 30)))
        delay *= 1.0 - self.backoff_jitter * random.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _timeouts(self) -> tuple[float, float]:
        if self._stopping:
            left = max(0.05, self._stop_deadline - time.monotonic())
            return min(self.connect_timeout, left), min(self.read_timeout, left)
        return self.connect_timeout, self.read_timeout

    def _http(self) -> Channel:
        # Proxies and the CA bundle are read from the environment once per config.
        if self._channel is None:
            self._channel = Channel(self._url)
        return self._channel

    def _deliver(self, record: Record, line: bool = False) -> tuple[str, float]:
        """One attempt; returns (outcome, seconds to wait before the next attempt).

        line: an executor's line, posted as the executor would have ({"level", "message"})."""
        auth = self._auth
        assert auth is not None
        headers = {"Content-Type": "application/json"}
        try:
            token = self._token(auth)
        except AuthProblem as exc:
            return self._refused(str(exc))
        except TransportError as exc:
            return self._failed(f"cannot get a token from {self._token_url}: {exc}", exc.busy)
        if token:
            headers["Authorization"] = "Bearer " + token
        try:
            # An executor's line goes out exactly as the executor would have posted it.
            data = line_body(record.data) if line else mark_delayed(record.data, time.time(), self._language)
            response = self._http().post(self._url, data, headers, self._timeouts())
        except TransportError as exc:
            return self._failed(f"POST {self._url}: {exc}", exc.busy)
        status = response.status
        if 200 <= status < 300:
            if line:
                self.lines.spool.ack(record.seq, record.level)
                self.lines.consumed(record, True)
            else:
                self.spool.ack(record.seq, record.level)
            auth.renewed = False
            self._failures = 0
            self._status.sent(record, mark=not line)
            return "sent", 0.0
        detail = answer_detail(response)
        if status in (401, 403):
            if auth.renew_after_refusal():
                return "retry", 0.0
            return self._refused(f"{status} {detail}")
        if 300 <= status < 400 or status in _ENDPOINT_PROBLEM:
            where = response.headers.get("Location")
            return self._wrong_endpoint(status, detail, where)
        if status >= 500 or status in _RETRYABLE:
            wait = retry_after(response)
            self._status.outage(f"POST {self._url}: {status} {detail}", self.backoff_max, "errors")
            return "retry", self._backoff(wait)
        self._dead_letter(record, status, detail, line)
        return "dead", 0.0

    def _token(self, auth: Credentials) -> str | None:
        if auth.mode != "password" or auth.exempt or auth.problem:
            return auth.token
        now = time.monotonic()
        if auth.token is not None and now < auth.renew_at:
            return auth.token
        try:
            auth.log_in(self._http(), self._token_url, self._timeouts())
        except TransportError:
            if auth.token is not None and now < auth.expires_at:
                return auth.token  # renewal failed, the old token still works: try later
            raise
        return auth.token

    # ------------------------------------------------------------------ outcomes

    def _failed(self, reason: str, busy: bool) -> tuple[str, float]:
        if busy:
            self._status.outage(reason, self.backoff_max, "errors")
            return "retry", self._backoff()
        # Nobody there: the backoff would only delay noticing the return (by up to backoff_max).
        # Probing costs one refused connect; jitter keeps many farms from probing in step.
        self._status.outage(reason, self.backoff_max, "unreachable")
        return "retry", self.probe_interval * (1.0 - 0.5 * random.random())

    def _refused(self, reason: str) -> tuple[str, float]:
        self._status.refused(reason, self._config, self.slow_retry)
        return "retry", self.slow_retry

    def _wrong_endpoint(self, status: int, detail: str, location: str | None) -> tuple[str, float]:
        self._status.wrong_endpoint(status, detail, location, self._config.path, self.slow_retry)
        return "retry", self.slow_retry

    def _dead_letter(self, record: Record, status: int, detail: str, line: bool = False) -> None:
        self._dead_letters.write(record, status, detail, self._url)
        if line:
            self.lines.spool.ack(record.seq, record.level)
            self.lines.consumed(record, False)
        else:
            self.spool.ack(record.seq, record.level)
        self._status.dead_lettered(record, status, detail, self._dead_letters.path, mark=not line)
