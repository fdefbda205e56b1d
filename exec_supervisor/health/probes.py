"""Probes: a check the daemon runs against each running instance, for executors nobody can change.

    probe: {exec: [...] | http: URL, every: 10s, timeout: 2s, failures: 3, grace: 0}

- No thread per instance, nothing blocking the loop. An exec probe is a child process in its
  own session with its output in a non-blocking pipe; the engine's reaper collects it
  (Engine.watch_helper: its pid is no instance) and a loop timer SIGKILLs its group at `timeout`.
  An HTTP probe is a GET over asyncio streams, the protocol spoken by h11 (the control
  server's HTTP library), inside one wait_for(timeout): a task, not a thread.
- At most MAX_IN_FLIGHT probes at once; the rest queue. An instance's first probe comes at
  grace + a random part of `every`, so 1000 instances that became ready together do not
  probe together, and every later one `every` after its last started.
- A result counts only for the run it was made for (the instance's started_at): one from
  before a restart is dropped.

It decides healthy or not; the instance does the rest (fail_health: one `unhealthy` event,
the stop path, backoff as for a crash).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import signal
import time
from typing import Any
from urllib.parse import urlsplit

from ..config.farm import probe_values
from ..lazytls import load_ssl
from ..supervise import osproc
from ..supervise.instance import Instance, State

log = logging.getLogger("exec_supervisor")

MAX_IN_FLIGHT = 32
OUTPUT_KEEP_BYTES = 2048  # of a probe's output, the last this many are kept
BODY_KEEP_BYTES = 512  # of a failed HTTP answer's body


class Probes:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.in_flight = 0
        self._timers: dict[Instance, asyncio.TimerHandle] = {}
        self._chains: dict[Instance, float] = {}  # instance -> the run (started_at) its probes are for
        self._queue: collections.deque[tuple[Instance, float]] = collections.deque()
        self._failing_since: dict[Instance, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[ExecProbe] = set()  # exec probes in flight
        self._closed = False

    # ------------------------------------------------------------------ scheduling

    def state_changed(self, instance: Instance) -> None:
        probe = instance.policy.probe
        if instance.state is State.RUNNING and probe is not None:
            if self._chains.get(instance) != instance.started_at:  # one chain of probes per run
                self._chains[instance] = instance.started_at
                self._schedule(instance, probe.grace + random.uniform(0, probe.every), instance.started_at)
        elif instance.state is not State.RUNNING:
            self._chains.pop(instance, None)
            handle = self._timers.pop(instance, None)
            if handle is not None:
                handle.cancel()
            self._failing_since.pop(instance, None)

    def _schedule(self, instance: Instance, delay: float, token: float) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._timers[instance] = loop.call_later(delay, self._due, instance, token)

    def _due(self, instance: Instance, token: float) -> None:
        self._timers.pop(instance, None)
        if not self._current(instance, token):
            return
        if self.in_flight >= MAX_IN_FLIGHT:
            self._queue.append((instance, token))
            return
        self._run(instance, token)

    def _current(self, instance: Instance, token: float) -> bool:
        return (not self._closed and instance.state is State.RUNNING and instance.started_at == token
                and self._chains.get(instance) == token and instance.policy.probe is not None)

    def close(self) -> None:
        self._closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._queue.clear()
        for task in self._tasks:
            task.cancel()
        for running in list(self._running):
            # Not left to a next daemon image that would not know them (an in-place upgrade).
            osproc.signal_group(running.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ running one

    def _run(self, instance: Instance, token: float) -> None:
        probe = instance.policy.probe
        assert probe is not None
        self.in_flight += 1
        started = time.monotonic()
        spec = instance.spec
        values = probe_values(instance.policy, spec.type, spec.id, self.engine.config.service.host)
        if probe.http is not None:
            task = asyncio.get_running_loop().create_task(
                self._http(instance, token, started, probe.http.format_map(values), probe.timeout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        assert probe.exec is not None
        program = self.engine.config.probe_programs.get(spec.type, probe.exec[0])
        argv = [program, *(arg.format_map(values) for arg in probe.exec[1:])]
        env = self.engine.spawn_env(spec)  # the instance's own, without the supervisor's secrets
        try:
            pid, fd = osproc.spawn_captured(argv, env, spec.cwd)
        except OSError as exc:
            self._done(instance, token, started, False, f"cannot run the probe: {exc.strerror or exc}", None)
            return
        self._running.add(ExecProbe(self, instance, token, started, pid, fd, probe.timeout))

    async def _http(self, instance: Instance, token: float, started: float, url: str, timeout: float) -> None:
        try:
            status, reason, body = await asyncio.wait_for(http_get(url), timeout)
        except asyncio.TimeoutError:
            self._done(instance, token, started, False, f"no answer within {timeout:g}s (timeout)", None)
            return
        except asyncio.CancelledError:
            self.in_flight -= 1
            raise
        except (OSError, ValueError, EOFError) as exc:
            self._done(instance, token, started, False, _error_text(exc), None)
            return
        except Exception as exc:  # h11's protocol errors and anything else a bad server provokes
            self._done(instance, token, started, False, f"bad HTTP answer ({type(exc).__name__})", None)
            return
        ok = 200 <= status < 300
        self._done(instance, token, started, ok, f"HTTP {status} {reason}".rstrip(), None if ok else body)

    # ------------------------------------------------------------------ results

    def _done(self, instance: Instance, token: float, started: float, ok: bool, reason: str,
              output: str | None) -> None:
        self.in_flight -= 1
        self._next_from_queue()
        if not self._current(instance, token):
            return
        probe = instance.policy.probe
        assert probe is not None
        if ok:
            instance.failing_checks = 0
            self._failing_since.pop(instance, None)
        else:
            instance.failing_checks += 1
            since = self._failing_since.setdefault(instance, started)
            log.debug("%s: probe failed (%d of %d): %s", instance.spec.exec_id, instance.failing_checks,
                      probe.failures, reason)
            if instance.failing_checks >= probe.failures:
                what = " ".join(probe.exec) if probe.exec is not None else probe.http  # unfilled: env values stay out
                instance.fail_health("probe", {"probe": what, "failures": instance.failing_checks,
                                               "failing_for": round(time.monotonic() - since, 3),
                                               "reason": reason}, output=output)
                return
        self._schedule(instance, max(0.0, started + probe.every - time.monotonic()), token)

    def _next_from_queue(self) -> None:
        while self._queue and self.in_flight < MAX_IN_FLIGHT:
            instance, token = self._queue.popleft()
            if self._current(instance, token):
                self._run(instance, token)


class ExecProbe:
    """One exec probe in flight: its output pipe, its timeout, its exit (from the engine's reaper)."""

    __slots__ = ("probes", "instance", "token", "started", "pid", "fd", "output", "timer", "timed_out", "reason")

    def __init__(self, probes: Probes, instance: Instance, token: float, started: float, pid: int, fd: int,
                 timeout: float) -> None:
        self.probes, self.instance, self.token, self.started = probes, instance, token, started
        self.pid, self.fd = pid, fd
        self.output = bytearray()
        self.timed_out = False
        self.reason = ""
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._read)
        self.timer = loop.call_later(timeout, self._timeout, timeout)
        probes.engine.watch_helper(pid).add_done_callback(self._reaped)

    def _read(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # EOF: the exit comes from the reaper
            asyncio.get_running_loop().remove_reader(self.fd)
            return
        self.output += chunk
        if len(self.output) > 2 * OUTPUT_KEEP_BYTES:
            del self.output[:-OUTPUT_KEEP_BYTES]

    def _timeout(self, timeout: float) -> None:
        self.timed_out = True
        self.reason = f"killed after its timeout of {timeout:g}s"
        osproc.signal_group(self.pid, signal.SIGKILL)  # the reaper then calls _exited

    def _reaped(self, future: "asyncio.Future[int]") -> None:
        if not future.cancelled():
            self._exited(future.result())

    def _exited(self, status: int) -> None:
        self.timer.cancel()
        self._read()  # what the pipe still holds (a grandchild may keep it open: no waiting for EOF)
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.fd)
        os.close(self.fd)
        osproc.signal_group(self.pid, signal.SIGKILL)  # anything it left in its session
        code, signal_name = osproc.describe_status(status)
        if self.timed_out:
            reason = self.reason
        elif signal_name:
            reason = f"killed by {signal_name}"
        else:
            reason = f"exit code {code}"
        ok = not self.timed_out and code == 0 and signal_name is None
        text = bytes(self.output[-OUTPUT_KEEP_BYTES:]).decode("utf-8", "replace").strip()
        self.probes._running.discard(self)
        self.probes._done(self.instance, self.token, self.started, ok, reason, text or None)


async def http_get(url: str) -> tuple[int, str, str]:
    """GET url once (no keep-alive, no redirects): (status, reason, the start of the body)."""
    import h11

    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    context = None
    if https:  # like a Kubernetes probe: the certificate is not checked, only the answer
        ssl = load_ssl()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        connection = h11.Connection(h11.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        writer.write(connection.send(h11.Request(method="GET", target=target, headers=[
            ("Host", parts.netloc.rpartition("@")[2]), ("User-Agent", "exec-supervisor-probe"),
            ("Connection", "close")])))
        writer.write(connection.send(h11.EndOfMessage()))
        await writer.drain()
        status, reason, body = 0, "", bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                connection.receive_data(data)
                if not data and status:
                    break
                continue
            if isinstance(event, h11.Response):
                status, reason = event.status_code, event.reason.decode("latin-1", "replace")
                if 200 <= status < 300:
                    break  # healthy: the body does not matter
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) >= BODY_KEEP_BYTES:
                    break
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return status, reason, bytes(body[:BODY_KEEP_BYTES]).decode("utf-8", "replace").strip()
    finally:
        writer.close()


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}"[:200]
