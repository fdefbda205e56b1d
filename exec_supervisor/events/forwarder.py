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
connection error, timeout,  keep it, retry with capped exponential backoff and jitter
5xx, 408, 425, 429          (Retry-After honoured up to the cap)
401 / 403                   keep it, log ONE error saying how to fix it, renew the token if
                            the supervisor logs in with username/password, retry slowly
3xx, 404, 405               keep it (service.host points at the wrong place: every event
                            would fail the same way), log ONE error, retry slowly
any other 4xx (422, ...)    move that one event to <state_dir>/events-dead-letters.jsonl
                            with the answer, and go on with the next
==========================  =================================================================

Secrets (tokens, passwords) only ever go into request headers and the token
form; they never reach a log line, an event, ``backlog()`` or an exception text.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from . import messages
from .httpclient import Answer, Channel, TransportError
from .event import LEVEL_RANK, Event
from .spool import Record, Spool, SpoolError

__all__ = ["EventForwarder", "SpoolError", "LOG_PATH", "TOKEN_PATH", "build_payload"]

log = logging.getLogger("exec_supervisor")

LOG_PATH = "api/bases/logs/"
TOKEN_PATH = "api/bases/token/standard/open/"
DEAD_LETTER_FILE = "events-dead-letters.jsonl"
DEAD_LETTER_MAX_BYTES = 16 * 1024 * 1024  # then rotated once to .1
# The service accepts any size; the sender caps what one event may carry.
MAX_MESSAGE_CHARS = 8000
_TRUNCATED = "\n... (truncated)"
_RETRYABLE = {408, 425, 429}
_ENDPOINT_PROBLEM = {404, 405}


def iso_time(timestamp: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-11-28T10:15:02.123+00:00."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


def build_payload(event: Event, language: str = "en") -> dict[str, Any]:
    """The JSON body for one event, without its seq (the spool assigns that)."""
    level = event.level if event.level in LEVEL_RANK else str(event.level).lower()
    if level not in LEVEL_RANK:
        level = "info"  # the service answers 422 to anything else
    message = messages.render(event, language)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - len(_TRUNCATED)] + _TRUNCATED
    payload: dict[str, Any] = {
        "level": level,
        "message": message,
        "event": event.event,
        "exec_id": event.exec_id,
        "type": event.type,
        "id": event.id,
        "pid": event.pid,
        "exit_code": event.exit_code,
        "signal": event.signal,
        "restarts": event.restarts,
        "runtime": None if event.runtime is None else round(event.runtime, 3),
        "restart_in": None if event.restart_in is None else round(event.restart_in, 3),
        "supervisor": event.supervisor,
        "time": iso_time(event.time),
    }
    if event.detail:
        payload["detail"] = event.detail
    return payload


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


class _AuthProblem(Exception):
    """The service (or the local auth config) refuses us; retry slowly, log once."""


class _Auth:
    """The credentials of one config generation. Holds secrets: never log or repr it."""

    __slots__ = ("mode", "token", "username", "password", "problem", "expires_at", "renew_at", "exempt", "renewed")

    def __init__(self, config: Any) -> None:
        auth = config.service.auth
        self.mode = "none"
        self.token: str | None = None
        self.username: str | None = None
        self.password: str | None = None
        self.problem: str | None = None  # a config problem, worded without the secret
        self.expires_at = 0.0
        self.renew_at = 0.0
        self.renewed = False  # already got a fresh token after the current 401
        self.exempt = False
        if auth.token_env:
            self.mode = "token"
            self.token = os.environ.get(auth.token_env, "").strip() or None
            if self.token is None:
                self.problem = f"service.auth.token_env: the environment variable {auth.token_env} is not set or empty"
            elif not _header_safe(self.token):
                self.token = None
                self.problem = (f"service.auth.token_env: the environment variable {auth.token_env} holds characters "
                                "a token cannot have (value not shown)")
        elif auth.token_file:
            self.mode = "token"
            self.token, self.problem = _read_token_file(config)
        elif auth.username_env:
            self.mode = "password"
            self.username = os.environ.get(auth.username_env) or None
            self.password = os.environ.get(auth.password_env or "") or None
            missing = [name for name, value in ((auth.username_env, self.username), (auth.password_env, self.password)) if not value]
            if missing:
                self.problem = f"service.auth: the environment variable(s) {', '.join(missing)} are not set or empty"

    def __repr__(self) -> str:
        return f"<_Auth {self.mode}>"


def _read_token_file(config: Any) -> tuple[str | None, str | None]:
    path = config.base_dir / os.path.expanduser(config.service.auth.token_file)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return None, f"service.auth.token_file: cannot read {path}: {exc.strerror or exc.__class__.__name__}"
    except UnicodeDecodeError:
        return None, f"service.auth.token_file: {path} is not UTF-8 text"
    if not token:
        return None, f"service.auth.token_file: {path} is empty"
    if not _header_safe(token):
        return None, f"service.auth.token_file: {path} holds characters a token cannot have (value not shown)"
    return token, None


def _header_safe(token: str) -> bool:
    """A token goes into an HTTP header: printable ASCII only (a bad one would be echoed in an error)."""
    return token.isascii() and token.isprintable()


def _detail(response: Answer) -> str:
    """The service's `detail`, shortened; never echoes request data."""
    try:
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else body
    except ValueError:
        detail = response.text
    if not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False, default=str)
    detail = " ".join(detail.split())
    return detail[:300] + ("..." if len(detail) > 300 else "")


def _local_ip(url: str) -> str | None:
    """The address this host uses to reach the service (what its exemption list must hold)."""
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(addr)  # UDP connect: picks the route, sends nothing
            return probe.getsockname()[0]
    except OSError:
        return None


class _Recent:
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
        slow_retry: float = 30.0,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        flush_interval: float = 1.0,
        notice_interval: float = 10.0,
        recovery_notice_after: float = 5.0,
        recent_size: int = 500,
        segment_bytes: int | None = None,
    ) -> None:
        self._config = config
        self._publish = publish
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_jitter = backoff_jitter
        self.slow_retry = slow_retry
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.flush_interval = flush_interval
        self.notice_interval = notice_interval
        self.recovery_notice_after = recovery_notice_after

        self._min_rank = LEVEL_RANK[config.events.min_level]
        self._language = config.events.language
        self._name = config.name
        self._state_dir = config.state_dir
        self.spool = Spool(config.state_dir / "events", config.events.spool_max_bytes, segment_bytes)
        for problem in self.spool.problems:
            log.warning("event spool: %s", problem)
        self.dead_letter_path = config.state_dir / DEAD_LETTER_FILE
        self._recent = _Recent(recent_size)

        self._wake = threading.Event()  # something to send, or stop/reload
        self._interrupt = threading.Event()  # cut a backoff wait short: stop/reload
        self._flusher_stop = threading.Event()
        self._sender: threading.Thread | None = None
        self._flusher: threading.Thread | None = None
        self._running = False
        self._stopped = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._reload = threading.Lock()
        self._reload_config: Any = None

        # Owned by the sender thread once started.
        self._url = config.service.host + LOG_PATH
        self._token_url = config.service.host + TOKEN_PATH
        self._auth: _Auth | None = None
        self._channel: Channel | None = None
        self._failures = 0
        self._outage_since: float | None = None
        self._outage_logged = False
        self._auth_logged = False
        self._endpoint_logged = False
        self._recovery: dict[str, Any] | None = None

        # Counters (read by backlog(); plain ints are fine across threads).
        self.delivered = 0
        self.dead_letters = 0
        self.lost = 0  # could not even be written to the spool (disk full)
        self.state = "idle"
        self.last_error: str | None = None
        self._refusals: dict[str, Any] = {}
        self._refusals_lock = threading.Lock()
        self._last_drop_notice = float("-inf")
        self._last_refusal_notice = float("-inf")
        self._write_error_logged = 0.0

    # ------------------------------------------------------------------ the bus side

    def sink(self, event: Event) -> None:
        """EventBus subscriber: filter, render, append to the spool. No network, no fsync."""
        if LEVEL_RANK.get(event.level, LEVEL_RANK["info"]) < self._min_rank:
            return
        payload = build_payload(event, self._language)
        level = payload["level"]
        try:
            # The forwarder's own drop notice never makes room by dropping more.
            seq = self.spool.append(level, _encode(payload), over_cap=event.event == "events_dropped")
        except (OSError, ValueError) as exc:
            self.lost += 1
            now = time.monotonic()
            if now - self._write_error_logged > 60:
                self._write_error_logged = now
                log.error(
                    "cannot write to the event spool %s: %s; %d event(s) lost so far",
                    self.spool.directory, getattr(exc, "strerror", None) or exc, self.lost,
                )
            return
        self._recent.add(seq, level, payload)
        if self._running:
            self._wake.set()
        elif self._stopped:
            self._sync_quietly()  # no flusher any more: make late events durable now

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
        self._flusher_stop.clear()
        self._apply_config(self._config, first=True)
        pending = self.spool.pending_count
        if pending:
            log.info("event spool: %d event(s) from before are waiting to be delivered", pending)
        self._running = True
        self._sender = threading.Thread(target=self._run_sender, name="events-sender", daemon=True)
        self._flusher = threading.Thread(target=self._run_flusher, name="events-flusher", daemon=True)
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
            self._flusher_stop.set()
            if self._flusher is not None:
                self._flusher.join(5.0)
            self._running = False
            self._stopped = True
            if self._channel is not None:
                self._channel.close()
                self._channel = None
        self._sync_quietly()

    def close(self, timeout: float = 0.0) -> None:
        """stop() and release the spool (its lock and files); for tests and a final exit."""
        self.stop(timeout)
        self.spool.close()

    def reconfigure(self, config: Any) -> None:
        """Apply a reloaded config: host, auth and events settings, without a restart."""
        self._min_rank = LEVEL_RANK[config.events.min_level]
        self._language = config.events.language
        self._name = config.name
        self.spool.max_bytes = config.events.spool_max_bytes
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
        oldest_age = None
        try:
            record = self.spool.peek()
        except OSError:
            record = None
        if record is not None:
            oldest_age = max(0.0, time.time() - _record_time(record, time.time()))
        return {
            "count": self.spool.pending_count,
            "bytes": self.spool.pending_bytes,
            "oldest_age": None if oldest_age is None else round(oldest_age, 3),
            "last_error": self.last_error,
            "delivered": self.delivered,
            "dead_letters": self.dead_letters,
            "dropped": self.spool.dropped_total,
            "lost": self.lost,
            "next_seq": self.spool.next_seq,
            "state": self.state,
        }

    def recent(self, n: int) -> list[dict[str, Any]]:
        return self._recent.last(n)

    # ------------------------------------------------------------------ flusher thread

    def _run_flusher(self) -> None:
        while not self._flusher_stop.wait(self.flush_interval):
            self._sync_quietly()
            try:
                self._notices()
            except Exception:  # pragma: no cover - a bug here must not kill the flusher
                log.exception("event forwarder: notice failed")

    def _sync_quietly(self) -> None:
        try:
            self.spool.sync()
        except OSError as exc:
            now = time.monotonic()
            if now - self._write_error_logged > 60:
                self._write_error_logged = now
                log.error("cannot fsync the event spool %s: %s", self.spool.directory, exc.strerror or exc)

    def _notices(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_notice >= self.notice_interval:
            drops = self.spool.take_drops()
            if drops:
                self._last_drop_notice = now
                log.warning(
                    "event spool full (events.spool_max_bytes = %d): dropped %d oldest event(s) %s, seq %d-%d",
                    self.spool.max_bytes, drops["dropped"], drops["by_level"], drops["first_seq"], drops["last_seq"],
                )
                self._emit("events_dropped", "warning", drops)
        if self._refusals and now - self._last_refusal_notice >= self.notice_interval:
            self._last_refusal_notice = now
            with self._refusals_lock:
                refusals, self._refusals = self._refusals, {}
            self._emit("events_refused", "warning", refusals)

    def _emit(self, kind: str, level: str, detail: dict[str, Any]) -> None:
        try:
            self._publish(Event(event=kind, level=level, supervisor=self._name, detail=detail))
        except Exception:
            log.exception("event forwarder: publishing %s failed", kind)

    # ------------------------------------------------------------------ sender thread

    def _apply_config(self, config: Any, first: bool = False) -> None:
        self._url = config.service.host + LOG_PATH
        self._token_url = config.service.host + TOKEN_PATH
        auth = _Auth(config)
        if auth.problem:
            log.error("event forwarder: %s; sending events without a token", auth.problem)
        self._auth = auth
        self._failures = 0
        self._auth_logged = False
        self._endpoint_logged = False
        if not first:
            self._outage_logged = False

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
                self.state = "error"
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
            except OSError as exc:
                self.last_error = f"cannot read the spool: {exc.strerror or exc}"
                log.error("event forwarder: %s", self.last_error)
                self._pause(self.slow_retry)
                continue
            if record is None:
                self._finish_recovery()
                if self._stopping:
                    return
                self._wake.wait(30.0)  # sink(), stop() and reconfigure() wake it; no idle polling
                continue
            outcome, delay = self._deliver(record)
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

    def _deliver(self, record: Record) -> tuple[str, float]:
        """One attempt; returns (outcome, seconds to wait before the next attempt)."""
        auth = self._auth
        assert auth is not None
        headers = {"Content-Type": "application/json"}
        try:
            token = self._token(auth)
        except _AuthProblem as exc:
            return self._refused(str(exc))
        except TransportError as exc:
            return self._failed(f"cannot get a token from {self._token_url}: {exc}")
        if token:
            headers["Authorization"] = "Bearer " + token
        try:
            response = self._http().post(self._url, record.data, headers, self._timeouts())
        except TransportError as exc:
            return self._failed(f"POST {self._url}: {exc}")
        status = response.status
        if 200 <= status < 300:
            self._delivered(record)
            return "sent", 0.0
        detail = _detail(response)
        if status in (401, 403):
            if self._renew_after_refusal(auth, token):
                return "retry", 0.0
            return self._refused(f"{status} {detail}")
        if 300 <= status < 400 or status in _ENDPOINT_PROBLEM:
            where = response.headers.get("Location")
            return self._wrong_endpoint(status, detail, where)
        if status >= 500 or status in _RETRYABLE:
            retry_after = _retry_after(response)
            self.last_error = f"POST {self._url}: {status} {detail}"
            self._outage(self.last_error)
            return "retry", self._backoff(retry_after)
        self._dead_letter(record, status, detail)
        return "dead", 0.0

    def _token(self, auth: _Auth) -> str | None:
        if auth.mode != "password" or auth.exempt or auth.problem:
            return auth.token
        now = time.monotonic()
        if auth.token is not None and now < auth.renew_at:
            return auth.token
        try:
            self._fetch_token(auth)
        except TransportError:
            if auth.token is not None and now < auth.expires_at:
                return auth.token  # renewal failed, the old token still works: try later
            raise
        return auth.token

    def _fetch_token(self, auth: _Auth) -> None:
        form = urlencode({"username": auth.username or "", "password": auth.password or ""}).encode()
        response = self._http().post(self._token_url, form, {"Content-Type": "application/x-www-form-urlencoded"},
                                     self._timeouts())
        if response.status == 200:
            try:
                body = response.json()
                token = str(body["access_token"])
                minutes = float(body.get("expires_minutes") or 720)
            except (ValueError, KeyError, TypeError):
                raise _AuthProblem(f"the token route {self._token_url} answered 200 without an access_token") from None
            if not _header_safe(token):
                raise _AuthProblem(f"the token route {self._token_url} answered a token with characters a token "
                                   "cannot have (value not shown)")
            now = time.monotonic()
            lifetime = max(1.0, minutes * 60)
            auth.token = token
            auth.expires_at = now + lifetime
            # Renew well before it runs out: at 80 %, and at least a minute early when it lives long enough.
            auth.renew_at = now + max(lifetime * 0.5, min(lifetime * 0.8, lifetime - 60))
            return
        detail = _detail(response)
        if response.status == 401 and "白名单" in detail:
            # The service exempts this address from tokens (and so will not issue one).
            auth.exempt = True
            auth.token = None
            log.info("event forwarder: the service exempts this host from tokens; sending events without one")
            return
        if response.status in (401, 403, 422):
            raise _AuthProblem(
                f"the service refused the username/password from {self._auth_env_names()} "
                f"at {self._token_url} ({response.status} {detail})"
            )
        raise TransportError(f"{response.status} {detail}")  # 5xx and co: an outage, retried like one

    def _auth_env_names(self) -> str:
        auth = self._config.service.auth
        return f"${auth.username_env} / ${auth.password_env}"

    def _renew_after_refusal(self, auth: _Auth, used: str | None) -> bool:
        """After a 401: True when fresh credentials are worth an immediate retry (once per refusal)."""
        if auth.renewed:
            return False
        if auth.mode == "password" and not auth.problem:
            auth.renewed = True
            if auth.exempt:
                auth.exempt = False  # the exemption went away: log in
            else:
                auth.token = None  # revoked or expired early: get a new one
                auth.renew_at = 0.0
            return True
        if auth.mode == "token" and self._config.service.auth.token_file:
            token, problem = _read_token_file(self._config)
            if token is not None and token != auth.token:
                auth.token, auth.problem = token, None  # the file was rotated
                auth.renewed = True
                return True
        return False

    # ------------------------------------------------------------------ outcomes

    def _delivered(self, record: Record) -> None:
        self.spool.ack(record.seq, record.level)
        if self._auth is not None:
            self._auth.renewed = False
        self.delivered += 1
        self._failures = 0
        self._recent.mark(record.seq, "sent")
        if self._outage_since is not None:
            outage = time.time() - self._outage_since
            self._recovery = {"since": self._outage_since, "outage": outage, "delayed": 0, "max_delay": 0.0}
            self._outage_since = None
            log.info("event forwarder: the log API at %s accepts events again (after %.1fs)", self._url, outage)
        self._outage_logged = self._auth_logged = self._endpoint_logged = False
        self.state = "ok"
        self.last_error = None
        if self._recovery is not None:
            self._recovery["delayed"] += 1
            delay = time.time() - _record_time(record, time.time())
            self._recovery["max_delay"] = max(self._recovery["max_delay"], delay)

    def _finish_recovery(self) -> None:
        recovery, self._recovery = self._recovery, None
        if recovery is None or recovery["outage"] < self.recovery_notice_after:
            return
        detail = {
            "delayed": recovery["delayed"],
            "max_delay": round(recovery["max_delay"], 3),
            "outage": round(recovery["outage"], 3),
        }
        log.info(
            "event forwarder: backlog delivered: %d event(s) were delayed up to %.1fs",
            detail["delayed"], detail["max_delay"],
        )
        self._emit("delivery_recovered", "warning", detail)

    def _outage(self, reason: str) -> None:
        if self._outage_since is None:
            self._outage_since = time.time()
        self.state = "retrying"
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "event forwarder: cannot deliver events (%s); keeping them in the spool %s and retrying "
                "with backoff up to %gs",
                reason, self.spool.directory, self.backoff_max,
            )

    def _failed(self, reason: str) -> tuple[str, float]:
        self.last_error = reason
        self._outage(reason)
        return "retry", self._backoff()

    def _refused(self, reason: str) -> tuple[str, float]:
        self.last_error = f"refused by the service: {reason}"
        if self._outage_since is None:
            self._outage_since = time.time()
        self.state = "unauthorized"
        if not self._auth_logged:
            self._auth_logged = True
            self._outage_logged = True
            auth = self._config.service.auth
            ip = _local_ip(self._url)
            host = f"this host's IP ({ip})" if ip else "this host's IP"
            if auth.token_env or auth.token_file or auth.username_env:
                how = (
                    f"check the token or credentials configured in service.auth of {self._config.path}, "
                    f"or add {host} to the service's token-exempt IP networks or hosts"
                )
            else:
                how = (
                    f"add {host} to the service's token-exempt IP networks or hosts, or configure "
                    f"service.auth (token_env, token_file, or username_env + password_env) in {self._config.path}"
                )
            log.error(
                "event forwarder: the WeFastAPI service at %s refused the supervisor's events (%s). To fix it, %s. "
                "Events are kept in the spool and retried every %gs (or at once after a reload).",
                self._url, reason, how, self.slow_retry,
            )
        return "retry", self.slow_retry

    def _wrong_endpoint(self, status: int, detail: str, location: str | None) -> tuple[str, float]:
        moved = f" to {location}" if location else ""
        self.last_error = f"POST {self._url}: {status} {detail}{moved}"
        if self._outage_since is None:
            self._outage_since = time.time()
        self.state = "misconfigured"
        if not self._endpoint_logged:
            self._endpoint_logged = True
            self._outage_logged = True
            log.error(
                "event forwarder: POST %s answered %d%s: service.host in %s does not look like the WeFastAPI "
                "service's base URL (it must end with '/', e.g. http://127.0.0.1:8083/). Events are kept and "
                "retried every %gs (or at once after a reload).",
                self._url, status, moved, self._config.path, self.slow_retry,
            )
        return "retry", self.slow_retry

    def _dead_letter(self, record: Record, status: int, detail: str) -> None:
        try:
            payload: Any = json.loads(record.data)
        except ValueError:
            payload = record.data.decode("utf-8", "replace")
        line = json.dumps(
            {"time": iso_time(time.time()), "status": status, "reason": detail, "url": self._url, "payload": payload},
            ensure_ascii=False,
        )
        try:
            if self.dead_letter_path.exists() and self.dead_letter_path.stat().st_size > DEAD_LETTER_MAX_BYTES:
                os.replace(self.dead_letter_path, self.dead_letter_path.with_name(DEAD_LETTER_FILE + ".1"))
            with open(self.dead_letter_path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError as exc:
            log.error("cannot write the dead-letter file %s: %s", self.dead_letter_path, exc.strerror or exc)
        self.spool.ack(record.seq, record.level)
        self.dead_letters += 1
        self._recent.mark(record.seq, "dead")
        log.warning(
            "event forwarder: the service refused event seq %d (%s %s); moved it to %s",
            record.seq, status, detail, self.dead_letter_path,
        )
        with self._refusals_lock:
            self._refusals["refused"] = self._refusals.get("refused", 0) + 1
            self._refusals.update(status=status, reason=detail[:200], file=str(self.dead_letter_path), last_seq=record.seq)


def _retry_after(response: Answer) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _record_time(record: Record, default: float) -> float:
    try:
        return datetime.fromisoformat(json.loads(record.data)["time"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return default
