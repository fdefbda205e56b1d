"""The forwarder's sender thread: one event at a time to the WeFastAPI log API, and what each answer means.

The thread (one keep-alive connection, see httpclient) delivers the oldest
pending record, the supervisor's events before executors' lines, and removes it
from its spool only after a 2xx answer. What it does with other answers:

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

Owns the thread, that policy (retry, backoff, probing, slow retry, dead-lettering),
the stop deadline ("try briefly", then leave the rest in the spool), taking a reloaded
config on the thread, the token in use and the HTTP channel. It must not append to a
spool, touch the spool's files (only peek() and ack()), run the flusher, or word a
credential into anything but a request header. forwarder.py owns it and is its only
caller.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable

from .auth import AuthProblem, Credentials
from .delivery import DeadLetterFile, DeliveryStatus
from .execlines import ExecutorLines, line_body
from .httpclient import Channel, TransportError
from .payload import FOLDED_MARK, answer_detail, mark_delayed, retry_after
from .spool import Record, Spool

__all__ = ["Sender", "LOG_PATH", "TOKEN_PATH"]

log = logging.getLogger("exec_supervisor")

LOG_PATH = "api/bases/logs/"
TOKEN_PATH = "api/bases/token/standard/open/"
_RETRYABLE = {408, 425, 429}
_ENDPOINT_PROBLEM = {404, 405}


class Sender:
    """Runs the ``events-sender`` thread between start() and stop(); the forwarder wakes it."""

    def __init__(
        self,
        config: Any,
        spool: Spool,
        lines: ExecutorLines,
        status: DeliveryStatus,
        dead_letters: DeadLetterFile,
        emit: Callable[[str, str, dict[str, Any]], None],
        *,
        backoff_initial: float,
        backoff_max: float,
        backoff_jitter: float,
        probe_interval: float,
        slow_retry: float,
        connect_timeout: float,
        read_timeout: float,
        recovery_notice_after: float,
    ) -> None:
        self.spool = spool
        self.lines = lines
        self._status = status
        self._dead_letters = dead_letters
        self._emit = emit
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_jitter = backoff_jitter
        self.probe_interval = probe_interval
        self.slow_retry = slow_retry
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.recovery_notice_after = recovery_notice_after

        self.config = config  # the newest config: where fix-it advice points
        self.language = config.events.language  # of the "(delayed ...)" note
        self.wake = threading.Event()  # something to send, or stop/reload
        self._interrupt = threading.Event()  # cut a backoff wait short: stop/reload
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stop_deadline = 0.0
        self._reload = threading.Lock()
        self._reload_config: Any = None

        # Owned by the sender thread once started.
        self._url = config.service.host + LOG_PATH
        self._token_url = config.service.host + TOKEN_PATH
        self.auth: Credentials | None = None
        self._channel: Channel | None = None
        self._failures = 0  # consecutive failed attempts: the backoff's exponent

    # ------------------------------------------------------------------ the forwarder's side

    def prepare(self) -> None:
        """Before start(): clear a previous stop and apply the config (a new token, the URL)."""
        self._stopping = False
        self._interrupt.clear()
        self._apply_config(self.config, first=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Deliver what is pending for at most `timeout` s, then end the thread."""
        self._stop_deadline = time.monotonic() + max(0.0, timeout)
        self._stopping = True
        self._interrupt.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def reload(self, config: Any) -> None:
        """A reloaded config: the thread takes it before its next attempt, cutting a wait short."""
        self.language = config.events.language
        with self._reload:
            self.config = config
            self._reload_config = config
        self._interrupt.set()
        self.wake.set()

    # ------------------------------------------------------------------ the thread

    def _apply_config(self, config: Any, first: bool = False) -> None:
        self._url = config.service.host + LOG_PATH
        self._token_url = config.service.host + TOKEN_PATH
        auth = Credentials(config)
        if auth.problem:
            log.error("event forwarder: %s; sending events without a token", auth.problem)
        self.auth = auth
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

    def _run(self) -> None:
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
            self.wake.clear()
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
                self.wake.wait(30.0)  # sink(), stop() and reconfigure() wake it; no idle polling
                continue
            if not line and FOLDED_MARK in record.data:
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
        auth = self.auth
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
            data = line_body(record.data) if line else mark_delayed(record.data, time.time(), self.language)
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
        self._status.refused(reason, self.config, self.slow_retry)
        return "retry", self.slow_retry

    def _wrong_endpoint(self, status: int, detail: str, location: str | None) -> tuple[str, float]:
        self._status.wrong_endpoint(status, detail, location, self.config.path, self.slow_retry)
        return "retry", self.slow_retry

    def _dead_letter(self, record: Record, status: int, detail: str, line: bool = False) -> None:
        self._dead_letters.write(record, status, detail, self._url)
        if line:
            self.lines.spool.ack(record.seq, record.level)
            self.lines.consumed(record, False)
        else:
            self.spool.ack(record.seq, record.level)
        self._status.dead_lettered(record, status, detail, self._dead_letters.path, mark=not line)
