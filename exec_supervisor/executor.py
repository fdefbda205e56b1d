"""Executor toolkit: write a WeFastAPI executor in ten lines.

    from exec_supervisor.executor import Executor

    et = Executor("HelloWorld")          # parses --service-host / --id like the seed
    et.log("debug", "已启动")             # prints "[debug] ET-HelloWorld-0: 已启动", sends it in the background

    @et.run                              # loops until SIGTERM/SIGINT, then exits 0
    def work():
        print("Hello World")
        et.wait(360)                     # a sleep that returns at once on stop

This module depends on `requests` and the standard library only, and imports
nothing else from exec_supervisor: it must keep working when frozen by
PyInstaller or copied next to an executor as a single file. That is why it
stays one module, longer than the package's other modules.

What it fixes compared with the seed's boilerplate (seed/complex_tasks.md):
- every request has connect/read timeouts and retries with capped exponential
  backoff and jitter instead of "every 60 s, forever";
- `log()` never blocks the work: messages go through a bounded background
  queue (oldest dropped, and counted, when full) with a short flush at exit;
- a 401 explains what to do (token-exempt IP lists, or a token);
- SIGTERM/SIGINT stop the executor cleanly and promptly (exit status 0);
- under exec-supervisor (``$ET_LOG_SOCKET``), `log()` hands each line to the
  supervisor, which keeps it on disk and delivers it with its own credentials:
  nothing is lost to an outage or a crash of this process, and no token is needed.
- under a supervisor that sets NOTIFY_SOCKET (exec-supervisor, systemd) it says
  READY=1 when run() starts its loop (or at `et.ready()`), sends WATCHDOG=1 from
  every wait() and loop round (at most every WATCHDOG_USEC/2) and `et.status(text)`
  shows a line in the supervisor's status; without NOTIFY_SOCKET all of it is a no-op.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import errno
import faulthandler
import json
import math
import os
import random
import select
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import requests

__all__ = [
    "Executor", "ServiceError", "ServiceAuthError", "LEVELS", "DEFAULT_SERVICE_HOST",
    "log", "wait", "run", "service_request", "stopped", "current", "local_address", "public_ip",
    "ready", "status", "Notifier",
]

LEVELS = ("debug", "info", "warning", "error")
DEFAULT_SERVICE_HOST = "http://127.0.0.1:8083/"
LOG_PATH = "api/bases/logs/"

ENV_SERVICE_HOST = "ET_SERVICE_HOST"
ENV_ID = "ET_ID"
ENV_TOKEN = "ET_SERVICE_TOKEN"
# Under exec-supervisor: the daemon's log socket. A line sent there is the supervisor's to
# deliver (durably, with its credentials); without it, log() posts to the service itself.
ENV_LOG_SOCKET = "ET_LOG_SOCKET"
# How long log() may wait for room in the daemon's socket queue before posting directly.
LOG_SOCKET_WAIT = 0.05

# Answers worth trying again: the service is restarting, overloaded or rate limiting.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

class ServiceError(Exception):
    """A request to the service failed for good (or was abandoned because the executor is stopping)."""

    def __init__(self, message: str, status: int | None = None,
                 response: requests.Response | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.response = response


class ServiceAuthError(ServiceError):
    """401 from the service; the message says how to get this host accepted."""


@dataclass
class _Item:
    level: str
    message: str  # already prefixed with the exec id and capped in size


# ---------------------------------------------------------------------------- helpers


def local_address(service_host: str = DEFAULT_SERVICE_HOST) -> str:
    """The local IP this host uses to reach the service (what its exemption list must hold).

    A UDP connect sends no packet; it only asks the kernel for the route.
    """
    parts = urlsplit(service_host)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return s.getsockname()[0]
    except OSError:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"


def public_ip(url: str = "http://ifconfig.me/ip", timeout: float = 1.0,
              fallback: str | None = None) -> str:
    """This host's public IP as an outside service sees it, or `fallback` when offline.

    requests' timeout does not cover DNS resolution, which can hang for many
    seconds without a network, so the lookup runs in a daemon thread and is
    abandoned after `timeout`.
    """
    result: list[str] = []

    def lookup() -> None:
        try:
            r = requests.get(url, timeout=timeout)
            text = r.text.strip()
            if r.status_code == 200 and text and len(text) <= 45 and " " not in text:
                result.append(text)
        except Exception:  # offline, DNS failure, proxy error...: use the fallback
            pass

    t = threading.Thread(target=lookup, name="public-ip", daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else (fallback if fallback is not None else local_address())


def _wait_readable(sock: socket.socket, timeout: float | None) -> None:
    """Block until sock is readable or timeout passes (restarted after signals, PEP 475)."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.poll(None if timeout is None else math.ceil(timeout * 1000))
    else:  # Windows: select() works on sockets
        select.select([sock], [], [], timeout)


class Notifier:
    """sd_notify(3) in a few lines: datagrams to the socket named by $NOTIFY_SOCKET.

    A no-op without NOTIFY_SOCKET. Heartbeats never block (a full queue skips one, the
    next comes soon); READY=1 and STATUS= wait up to a second for room.
    """

    def __init__(self, environ: "dict[str, str] | os._Environ[str] | None" = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = (
            b"\0" + address[1:].encode() if address.startswith("@") else address if address.startswith("/") else None
        )
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.watchdog: float | None = None  # seconds between heartbeats: half of WATCHDOG_USEC
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            usec = 0
        pid = env.get("WATCHDOG_PID", "")
        if self.address is not None and usec > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog = usec / 2e6
        self._last_beat = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str, block: bool = True) -> bool:
        if self.address is None:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(1.0)
                if block:
                    self._sock.sendto(message.encode("utf-8", "replace"), self.address)
                else:
                    self._sock.sendto(message.encode("utf-8", "replace"), socket.MSG_DONTWAIT, self.address)
                return True
            except OSError:  # no supervisor listening, or its queue full: never the executor's problem
                return False

    def heartbeat(self) -> None:
        """WATCHDOG=1, if a watchdog is set and half its period has passed since the last one."""
        if self.watchdog is None:
            return
        now = time.monotonic()
        if now - self._last_beat >= self.watchdog:
            if self.send("WATCHDOG=1", block=False):
                self._last_beat = now

    def next_beat_in(self) -> float | None:
        if self.watchdog is None:
            return None
        return max(0.0, self._last_beat + self.watchdog - time.monotonic())


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


# ---------------------------------------------------------------------------- the executor

_default: "Executor | None" = None


class Executor:
    """One executor process: identity, service access, background logging, clean shutdown.

    Command line (like the seed): `--service-host URL` (default $ET_SERVICE_HOST,
    else http://127.0.0.1:8083/) and `--id N` (default $ET_ID, else 0). Add options
    of your own by passing an argparse `parser` (the two are added to it); read
    them from `et.args`. Unknown options exit with status 2 like the seed, unless
    `known_only=True` (then they are kept in `et.extra_argv`).

    A Bearer token for the service is read from $ET_SERVICE_TOKEN (optional).
    """

    def __init__(
        self,
        name: str,
        *,
        argv: list[str] | None = None,
        parser: argparse.ArgumentParser | None = None,
        known_only: bool = False,
        token: str | None = None,
        queue_size: int = 1000,
        max_message_chars: int = 32_000,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        flush_timeout: float = 2.0,
        install_signals: bool = True,
    ) -> None:
        global _default
        self.name = name
        parser = parser or argparse.ArgumentParser(description=f"ExecTasks {name}")
        env_id = os.environ.get(ENV_ID, "").strip()
        parser.add_argument(
            "--service-host", dest="service_host", type=str,
            default=os.environ.get(ENV_SERVICE_HOST) or DEFAULT_SERVICE_HOST,
            help="ServiceHost (default: $ET_SERVICE_HOST or %(default)s)",
        )
        parser.add_argument(
            "--id", dest="id", type=int, default=int(env_id) if env_id.lstrip("-").isdigit() else 0,
            help="ID (default: $ET_ID or 0)",
        )
        if known_only:
            self.args, self.extra_argv = parser.parse_known_args(argv)
        else:
            self.args, self.extra_argv = parser.parse_args(argv), []
        host = self.args.service_host.strip()
        # API paths are appended to the host, so it must end with a slash.
        self.service_host: str = host if host.endswith("/") else host + "/"
        self.id: int = self.args.id
        self.exec_id: str = f"ET-{name}-{self.id}"

        self.token: str | None = token if token is not None else (os.environ.get(ENV_TOKEN) or None)
        self.timeout = (connect_timeout, read_timeout)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.flush_timeout = flush_timeout
        self.max_message_chars = max_message_chars
        self.queue_size = max(1, queue_size)

        # Stop flag. The signal handler only flips a bool and writes one byte
        # to a socketpair: it must not take locks the interrupted main thread
        # may hold (threading.Event would). wait() selects on the other end.
        self._stopped = False
        self._stop_signal: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._last_sigint = 0.0

        # Log queue, drained by one sender thread.
        self._cond = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._in_flight = 0
        self._sender: threading.Thread | None = None
        self._closing = False
        self._flush_deadline: float | None = None
        self.dropped = 0            # messages dropped because the queue was full
        self.failed = 0             # messages the service refused for good (e.g. 422)
        self.delivered = 0
        self._dropped_unreported = 0
        self._outage_reported = False
        self._auth_reported = False
        self._failing_at_close = False
        self._closed = False

        self._local = threading.local()  # one requests.Session per thread (Session is not thread-safe)
        self._log_socket_address = os.environ.get(ENV_LOG_SOCKET) or None
        self._log_socket: socket.socket | None = None
        self._log_socket_lock = threading.Lock()
        self._log_socket_full_at = -math.inf
        self.handed_over = 0        # lines given to the supervisor's log socket
        self.notifier = Notifier()
        self._ready_sent = False
        if self.notifier.watchdog is not None and not faulthandler.is_enabled():
            # A missed watchdog brings SIGABRT first: this prints every thread's stack to the log.
            faulthandler.enable()

        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        atexit.register(self.close)
        if _default is None:
            _default = self

    # ------------------------------------------------------------------ stop / wait

    @property
    def stopped(self) -> bool:
        """True once SIGTERM/SIGINT arrived or stop() was called."""
        return self._stopped

    def stop(self) -> None:
        """Ask the executor to stop (what SIGTERM does); safe from any thread."""
        self._stopped = True
        try:
            self._wake_w.send(b"\0")
        except OSError:  # buffer full or closed: it is readable already
            pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if signum == signal.SIGINT and self._stopped and now - self._last_sigint > 1.0:
            # A second Ctrl-C, not the echo of the first: PyInstaller's bootloader
            # forwards the terminal's SIGINT, so one keypress arrives twice.
            raise KeyboardInterrupt
        if signum == signal.SIGINT and not self._stopped:
            self._last_sigint = now
        if self._stop_signal is None:
            self._stop_signal = signum
        self.stop()

    def wait(self, seconds: float | None = None) -> bool:
        """Sleep up to `seconds` (None: until stopped); return True early when stopping.

        Use it instead of time.sleep() so SIGTERM ends the executor at once. Under a
        supervisor's watchdog it sends the heartbeats while it waits.
        """
        if self._stopped:
            return True
        notifier = self.notifier
        notifier.heartbeat()
        deadline = None if seconds is None else time.monotonic() + max(0.0, seconds)
        while not self._stopped:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            beat = notifier.next_beat_in()
            pause = remaining if beat is None else beat if remaining is None else min(remaining, beat)
            try:
                _wait_readable(self._wake_r, pause)
            except (OSError, ValueError):  # closed at exit: nothing to wait for
                break
            notifier.heartbeat()
        return self._stopped

    # ------------------------------------------------------------------ supervisor notifications

    def ready(self) -> None:
        """Tell the supervisor this executor is ready (READY=1); run() does it when its loop starts.

        Call it yourself after a slow start-up (loading a model) when the config says `ready: notify`.
        """
        if not self._ready_sent:
            self._ready_sent = self.notifier.send("READY=1") or not self.notifier.enabled

    def status(self, text: str) -> None:
        """A one-line status shown in the supervisor's `status` ("model loaded", "job 17/40")."""
        self.notifier.send("STATUS=" + " ".join(str(text).split()))

    def heartbeat(self) -> None:
        """WATCHDOG=1 now if due; wait() and run() call it, a long computation may call it too."""
        self.notifier.heartbeat()

    # ------------------------------------------------------------------ service access

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def _url(self, path: str) -> str:
        return path if "//" in path else f"{self.service_host}{path.lstrip('/')}"

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter (50-100% of the step) so a farm does not retry in lockstep."""
        step = min(self.backoff_max, self.backoff_initial * (2 ** min(attempt, 30)))
        return step * random.uniform(0.5, 1.0)

    def auth_hint(self, status_text: str = "") -> str:
        """What to tell an operator when the service answers 401."""
        ip = local_address(self.service_host)
        # The address the service sees: 127.0.0.1 when it runs on this machine,
        # else this host's address on the way to it (unless NAT rewrites it).
        where = f"this host's IP ({ip})" if ip.startswith("127.") else \
            f"this host's IP ({ip}, or the public address the service sees if there is NAT in between)"
        if self.token:
            what = (f"the service rejected the token in ${ENV_TOKEN} (expired or invalid): "
                    f"set a fresh token, or add {where}")
        else:
            what = f"the service requires authentication: add {where}"
        return (f"401 Unauthorized from {self.service_host} {status_text}".rstrip() + f" - {what} "
                "to the service's token-exempt IP networks or token-exempt IP hosts "
                "(令牌豁免 IP 网络列表 / 令牌豁免 IP 主机列表)"
                + ("" if self.token else f", or set ${ENV_TOKEN} to a valid Bearer token"))

    def _attempt(self, method: str, url: str, data: Any, headers: dict[str, str] | None,
                 timeout: Any, **kw: Any) -> requests.Response:
        hdrs = dict(headers or {})
        if self.token and not any(k.lower() == "authorization" for k in hdrs):
            hdrs["Authorization"] = f"Bearer {self.token}"
        method = method.upper()
        if method in ("GET", "HEAD"):
            return self._session().request(method, url, params=data, headers=hdrs, timeout=timeout, **kw)
        return self._session().request(method, url, json=data, headers=hdrs, timeout=timeout, **kw)

    def service_request(
        self,
        method: str,
        path: str = "api/",
        data: Any = None,
        *,
        headers: dict[str, str] | None = None,
        retry: bool = True,
        max_attempts: int | None = None,
        timeout: float | tuple[float, float] | None = None,
        **kw: Any,
    ) -> requests.Response:
        """Call the service and return its 2xx response.

        `path` is appended to --service-host (an absolute URL is used as is);
        `data` is sent as JSON (as query parameters for GET). Connection errors,
        timeouts, 5xx and 429 are retried with backoff while `retry` is true,
        up to `max_attempts` (None: until success or stop()). Raises
        ServiceAuthError on 401, ServiceError on any other failure or when the
        executor is stopping. Extra keyword arguments go to requests.
        """
        url = self._url(path)
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            response: requests.Response | None = None
            try:
                response = self._attempt(method, url, data, headers, timeout or self.timeout, **kw)
                status = response.status_code
                if 200 <= status < 300:
                    return response
                body = _redact(response.text[:300], self.token)
                if status == 401:
                    raise ServiceAuthError(self.auth_hint(body), status, response)
                error = f"service answered {status} {response.reason} for {method.upper()} {url}: {body}"
                if status not in RETRY_STATUSES:
                    raise ServiceError(error, status, response)
            except requests.exceptions.Timeout as err:
                error = f"service request timed out ({type(err).__name__}) for {method.upper()} {url}"
            except requests.exceptions.ConnectionError:
                error = f"service unreachable (connection failed) for {method.upper()} {url}"
            except requests.exceptions.RequestException as err:
                raise ServiceError(f"service request failed for {method.upper()} {url}: "
                                   f"{_redact(str(err), self.token)}") from None
            if not retry or (max_attempts is not None and attempt >= max_attempts):
                raise ServiceError(error, status, response)
            if self._stopped:
                raise ServiceError(f"{error} (not retried: stopping)", status, response)
            delay = self._backoff(attempt - 1)
            if status == 429 and response is not None:
                delay = max(delay, min(self.backoff_max, _retry_after(response)))
            print(f"{self.exec_id}: {error}; retrying in {delay:.1f}s", file=sys.stderr, flush=True)
            if self.wait(delay):
                raise ServiceError(f"{error} (not retried: stopping)", status, response)

    # ------------------------------------------------------------------ logging

    def log(self, level: str, message: str) -> None:
        """Print `[level] ET-Name-N: message` and queue it for the service's log API.

        Never blocks on the network. level: debug | info | warning | error.
        """
        level = str(level).lower()
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
        message = str(message)
        try:
            print(f"[{level}] {self.exec_id}: {message}", flush=True)
        except (OSError, ValueError):  # stdout gone (closed pipe): keep working
            pass
        text = f"{self.exec_id}: {message}"
        if len(text) > self.max_message_chars:
            # The service accepts anything (50 MB was tried): the sender has to cap it.
            cut = len(text) - self.max_message_chars
            text = text[: self.max_message_chars] + f"\n... [{cut} characters cut]"
        if self._log_socket_address is not None and self._hand_over(level, text):
            return
        first_drop = False
        with self._cond:
            if self._closed:
                return
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.dropped += 1
                self._dropped_unreported += 1
                first_drop = self._dropped_unreported == 1
            self._queue.append(_Item(level, text))
            self._cond.notify_all()  # the sender, and any flush() waiter
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, name="et-log-sender", daemon=True)
                self._sender.start()
        if first_drop:  # once per outage, outside the lock (stderr may be a slow pipe)
            print(f"{self.exec_id}: log queue full ({self.queue_size}); dropping the oldest "
                  "messages until the service takes them again", file=sys.stderr, flush=True)

    def _hand_over(self, level: str, text: str) -> bool:
        """Send one line to the supervisor's log socket; False: post it directly instead.

        A datagram per line: whole, in order, and the kernel tells the supervisor our pid.
        Waits at most LOG_SOCKET_WAIT for room; a supervisor that is gone is not asked again."""
        data = json.dumps({"level": level, "message": text}, ensure_ascii=False).encode("utf-8")
        with self._log_socket_lock:
            for attempt in (1, 2):
                sock = self._log_socket
                try:
                    if sock is None:
                        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                        sock.setblocking(False)
                        address = self._log_socket_address or ""
                        sock.connect(b"\0" + address[1:].encode() if address.startswith("@") else address)
                        self._log_socket = sock
                    try:
                        sock.send(data)
                    except BlockingIOError:
                        # The supervisor's queue is full: wait a moment for room, then post directly.
                        # Once it was full, later lines do not wait again for a second (a flood
                        # must not turn into 50 ms per line).
                        now = time.monotonic()
                        if now - self._log_socket_full_at < 1.0:
                            return False
                        _, writable, _ = select.select([], [sock], [], LOG_SOCKET_WAIT)
                        if not writable:
                            self._log_socket_full_at = now
                            return False
                        sock.send(data)
                    self.handed_over += 1
                    return True
                except BlockingIOError:
                    return False
                except OSError as err:
                    if sock is not None:
                        sock.close()
                    self._log_socket = None
                    if err.errno == errno.EMSGSIZE:
                        return False  # too big for a datagram: this one line is posted directly
                    if attempt == 2:  # the supervisor is gone: post ourselves from now on
                        self._log_socket_address = None
                        return False
            return False

    @property
    def pending(self) -> int:
        """Messages not yet delivered (queued or in flight)."""
        with self._cond:
            return len(self._queue) + self._in_flight

    def _sender_wait(self, seconds: float) -> None:
        """Back off for `seconds`; once close() starts the final flush, retry every 0.1 s instead."""
        with self._cond:
            end = time.monotonic() + seconds
            while True:
                now = time.monotonic()
                if self._closing:
                    end = min(end, now + 0.1)
                remaining = end - now
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _send_loop(self) -> None:
        url = self._url(LOG_PATH)
        failures = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                if self._flush_deadline is not None and time.monotonic() >= self._flush_deadline:
                    return
                item = self._queue.popleft()
                self._in_flight = 1
            delivered = False
            while not delivered:
                timeout = self.timeout
                deadline = self._flush_deadline
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        with self._cond:  # give it back so close() counts it as undelivered
                            self._queue.appendleft(item)
                            self._in_flight = 0
                        return
                    timeout = (min(timeout[0], remaining), min(timeout[1], remaining))
                status, error = self._post_once(url, item, timeout)
                if status is not None and 200 <= status < 300:
                    delivered = True
                    failures = 0
                    self._on_delivered()
                elif status is not None and status not in RETRY_STATUSES and status != 401:
                    # A permanent refusal (422...) of this one message must not block the rest.
                    self.failed += 1
                    print(f"{self.exec_id}: the service refused a log message: {error}", file=sys.stderr, flush=True)
                    delivered = True
                else:
                    if self._flush_deadline is not None and self._failing_at_close:
                        # Exiting while the service was already unreachable or refusing
                        # us: one last try is enough, do not hold up the exit for seconds.
                        with self._cond:
                            self._queue.appendleft(item)
                            self._in_flight = 0
                        return
                    if status == 401:
                        if not self._auth_reported:
                            self._auth_reported = True
                            print(f"{self.exec_id}: {self.auth_hint(error)}", file=sys.stderr, flush=True)
                    elif not self._outage_reported:
                        self._outage_reported = True
                        print(f"{self.exec_id}: log service problem: {error}; {self.pending} message(s) kept, "
                              "retrying in the background", file=sys.stderr, flush=True)
                    self._sender_wait(self._backoff(failures))
                    failures += 1
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()

    def _post_once(self, url: str, item: _Item, timeout: Any) -> tuple[int | None, str]:
        try:
            r = self._attempt("POST", url, {"level": item.level, "message": item.message}, None, timeout)
            return r.status_code, _redact(f"{r.status_code} {r.reason} {r.text[:300]}", self.token)
        except requests.exceptions.Timeout:
            return None, "timed out"
        except requests.exceptions.ConnectionError:
            return None, f"cannot connect to {self.service_host}"
        except Exception as err:  # whatever it is, the sender thread must survive it and retry
            return None, _redact(f"{type(err).__name__}: {err}", self.token)

    def _on_delivered(self) -> None:
        self.delivered += 1
        if self._outage_reported or self._auth_reported:
            self._outage_reported = self._auth_reported = False
            again = "accepts our log messages again" if self._auth_reported else "reachable again"
            print(f"{self.exec_id}: log service {again}", file=sys.stderr, flush=True)
        with self._cond:
            dropped, self._dropped_unreported = self._dropped_unreported, 0
            if dropped:
                # Tell the service's log page about the gap, right where it happened.
                self._queue.appendleft(_Item("warning", f"{self.exec_id}: {dropped} log message(s) dropped "
                                                        f"while the service was unreachable (queue of {self.queue_size} full)"))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued message is delivered; False on timeout. The executor keeps running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Final flush (up to `flush_timeout` s): deliver what can be delivered, report the rest."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._closing = True
            self._failing_at_close = self._outage_reported or self._auth_reported
            self._flush_deadline = time.monotonic() + (self.flush_timeout if timeout is None else timeout)
            sender = self._sender
            self._cond.notify_all()
        if sender is not None:
            sender.join(max(0.0, self._flush_deadline - time.monotonic()) + 0.5)
        left = self.pending
        if left:
            print(f"{self.exec_id}: {left} log message(s) not delivered to {self.service_host} "
                  "before exit", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ run

    def run(self, loop_fn: Callable[[], Any] | None = None, *, interval: float = 0.0, exit: bool = True) -> Any:
        """Call loop_fn() again and again until stopped; usable as a decorator (@et.run).

        A clean stop (SIGTERM/SIGINT/stop()) exits with status 0. An exception
        escaping loop_fn is logged at error level with its traceback, the log
        is flushed and the process exits with status 1, so the supervisor
        restarts it and the service shows why. `interval` waits between calls.
        With exit=False the exit status is returned instead.
        """
        if loop_fn is None:
            return lambda fn: self.run(fn, interval=interval, exit=exit)
        code = 0
        try:
            self.ready()
            while not self._stopped:
                self.notifier.heartbeat()
                loop_fn()
                if interval > 0:
                    self.wait(interval)
        except KeyboardInterrupt:
            self.log("warning", "interrupted")
            code = 130
        except Exception:
            self.log("error", f"unhandled exception, exiting:\n{traceback.format_exc().rstrip()}")
            code = 1
        else:
            if self._stop_signal is not None:
                self.log("debug", f"stopping ({signal.Signals(self._stop_signal).name})")
        self.notifier.send("STOPPING=1", block=False)  # no heartbeats expected while the log flushes
        self.close()
        if exit:
            sys.exit(code)
        return code


def _retry_after(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0


# ---------------------------------------------------------------------------- module-level convenience


def current() -> Executor:
    """The first Executor created in this process."""
    if _default is None:
        raise RuntimeError("create an Executor(name) first")
    return _default


def log(level: str, message: str) -> None:
    current().log(level, message)


def wait(seconds: float | None = None) -> bool:
    return current().wait(seconds)


def ready() -> None:
    current().ready()


def status(text: str) -> None:
    current().status(text)


def stopped() -> bool:
    return current().stopped


def service_request(method: str, path: str = "api/", data: Any = None, **kw: Any) -> requests.Response:
    return current().service_request(method, path, data, **kw)


def run(loop_fn: Callable[[], Any] | None = None, **kw: Any) -> Any:
    return current().run(loop_fn, **kw)
