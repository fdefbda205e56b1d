"""`supervisord-listener CONFIG`: supervisord's PROCESS_STATE events as our lifecycle events.

supervisord starts it as `[eventlistener:exec-supervisor]` (see export/supervisord.py) and
talks the event listener protocol on its stdin/stdout (supervisor.childutils: READY, a header
line, a payload, RESULT OK). Each PROCESS_STATE_* of an `ET-<Type>-<id>` process of this
farm becomes the Event the daemon would have published, with the same name and level, so
the same sentences (en/zh), and goes to the same durable spool and forwarder (auth, retries,
at least once). The spool is `<state_dir>/supervisord-listener/events`: a log API that is down
costs nothing but a backlog, delivered when it is back, also after the listener restarts.

    STARTING -> spawned (debug)      RUNNING -> running (info)        STOPPING -> stopping (debug)
    STOPPED  -> stopped (info)       EXITED  -> exited (expected) or crashed (error)
    BACKOFF  -> crashed (it died before startsecs; supervisord retries)   FATAL -> fatal (error)

Exit codes and signals come from supervisord's XML-RPC interface (SUPERVISOR_SERVER_URL, set
by supervisord): the `exited: NAME (exit status N | terminated by SIGX; ...)` line of its own log
(readLog), else the process info (which says -1 for any signal: "killed by SIG?"); the log file
for the crash's last lines too. The listener always answers OK
at once: spooling is one write. Processes of other programs are ignored.

Must not: block supervisord (no network on the protocol path), print anything on stdout but
the protocol, or let one bad event end the listener.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import Any, TextIO

from .config import FarmConfig
from .events import Event, locallog
from .events.event import INSTANCE_EVENT_LEVELS

log = logging.getLogger("exec_supervisor")

PROCESS_RE = re.compile(r"ET-([A-Za-z][A-Za-z0-9_]*)-([0-9]{1,9})")
UNKNOWN_SIGNAL = "SIG?"  # supervisord keeps -1 for "killed by a signal", not which one
TAIL_LINES = 20
TAIL_BYTES = 2048
MAIN_LOG_TAIL = 16384  # bytes of supervisord's own log read to find how a process ended


class Listener:
    def __init__(self, cfg: FarmConfig, rpc: Any = None) -> None:
        self.cfg = cfg
        self.rpc = rpc
        self.restarts: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.log_offsets: dict[str, int] = {}
        self._lock = threading.Lock()  # the main thread and the forwarder's threads both publish
        self.forwarder: Any = None

    # ------------------------------------------------------------------ events out

    def start_forwarding(self) -> None:
        if not self.cfg.events.forward:
            return
        from .events.forwarder import EventForwarder

        self.forwarder = EventForwarder(self.cfg, self.publish)
        self.forwarder.start()

    def publish(self, event: Event) -> None:
        with self._lock:
            locallog.event_sink(event)
            if self.forwarder is not None:
                self.forwarder.sink(event)

    # ------------------------------------------------------------------ events in

    def handle(self, headers: dict[str, str], payload: str) -> Event | None:
        """One supervisord event -> our Event (published), or None when it is not ours."""
        kind = headers.get("eventname", "")
        if not kind.startswith("PROCESS_STATE_"):
            return None
        fields = dict(item.split(":", 1) for item in payload.split() if ":" in item)
        name = fields.get("processname", "")
        match = PROCESS_RE.fullmatch(name)
        if not match or match.group(1) not in self.cfg.executors:
            return None
        type_name, instance_id = match.group(1), int(match.group(2))
        executor = self.cfg.executors[type_name]
        state = kind[len("PROCESS_STATE_"):]
        pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else None
        now = time.monotonic()
        common: dict[str, Any] = {"exec_id": name, "type": type_name, "id": instance_id, "pid": pid}
        info = self._info(fields.get("groupname", ""), name) if state in ("EXITED", "BACKOFF", "FATAL") else {}
        if state == "STARTING":
            kind_out = "spawned"
            self.started[name] = now
            self.log_offsets[name] = _size(info.get("stdout_logfile") or self._log_path(name))
        elif state == "RUNNING":
            kind_out = "running"
        elif state == "STOPPING":
            kind_out = "stopping"
        elif state == "STOPPED":
            kind_out = "stopped"
        elif state in ("EXITED", "BACKOFF"):
            expected = state == "EXITED" and fields.get("expected") == "1"
            kind_out = "exited" if expected else "crashed"
            restart_due = executor.restart == "always" or (executor.restart == "on-failure" and not expected)
            restart_in = None
            if restart_due and (state == "BACKOFF" or not expected or executor.restart == "always"):
                self.restarts[name] = self.restarts.get(name, 0) + 1
                # supervisord: at once after an exit from RUNNING, 1, 2, 3 ... s after failed starts
                restart_in = 0.0 if state == "EXITED" else float(self.restarts[name])
            code, signal_name = self._how_it_ended(name, pid, info)
            common.update(
                exit_code=code,
                signal=signal_name,
                runtime=now - self.started.get(name, now),
                restart_in=restart_in,
                output=None if expected else self._tail(name, info),
            )
        elif state == "FATAL":
            kind_out = "fatal"
            common.update(detail={"error": info.get("spawnerr") or "supervisord gave up starting it (startretries)"})
        else:
            return None
        event = Event(event=kind_out, level=INSTANCE_EVENT_LEVELS[kind_out], supervisor=self.cfg.name,
                      restarts=self.restarts.get(name, 0), **common)
        self.publish(event)
        return event

    def _info(self, group: str, name: str) -> dict[str, Any]:
        if self.rpc is None:
            return {}
        try:
            return dict(self.rpc.supervisor.getProcessInfo(f"{group}:{name}"))
        except Exception as exc:  # supervisord busy or restarting: the event goes out without the extras
            log.debug("supervisord getProcessInfo(%s) failed: %s", name, exc)
            return {}

    def _how_it_ended(self, name: str, pid: int | None, info: dict[str, Any]) -> tuple[int | None, str | None]:
        """(exit code, signal name). supervisord logs `exited: NAME (exit status 3; not expected)` or
        `(terminated by SIGKILL; ...)` as it reaps; its process info holds the code only until the
        restart (at once with autorestart), and -1 for any signal."""
        if self.rpc is not None:
            try:
                text = str(self.rpc.supervisor.readLog(-MAIN_LOG_TAIL, 0))
            except Exception as exc:  # no logfile, or supervisord busy: fall back to the process info
                log.debug("supervisord readLog failed: %s", exc)
            else:
                found = re.findall(rf"exited: {re.escape(name)} \((?:exit status (\d+)|terminated by (SIG[A-Z0-9]+))", text)
                if found:
                    code, signal_name = found[-1]
                    return (int(code), None) if code else (None, signal_name)
        code = info.get("exitstatus")
        if code is None or (pid is not None and info.get("pid") not in (0, pid)):
            return None, UNKNOWN_SIGNAL if code == -1 else None
        return (None, UNKNOWN_SIGNAL) if code == -1 else (int(code), None)

    def _log_path(self, name: str) -> str:
        return os.path.join(str(self.cfg.log_dir), f"{name}.log")

    def _tail(self, name: str, info: dict[str, Any]) -> str | None:
        from .supervise.osproc import read_tail

        path = info.get("stdout_logfile") or self._log_path(name)
        return read_tail(path, self.log_offsets.get(name, 0), TAIL_LINES, TAIL_BYTES) or None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def serve(cfg: FarmConfig, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """The protocol loop, until supervisord closes stdin (or stops us with SIGTERM)."""
    from supervisor import childutils

    rpc = None
    if os.environ.get("SUPERVISOR_SERVER_URL"):
        rpc = childutils.getRPCInterface(os.environ)
    listener = Listener(cfg, rpc)
    listener.start_forwarding()
    protocol = childutils.listener
    try:
        while True:
            protocol.ready(stdout)
            line = stdin.readline()
            if not line:
                return
            headers = childutils.get_headers(line)
            payload = stdin.read(int(headers.get("len", "0")))
            try:
                listener.handle(headers, payload)
            except Exception:  # one odd event must not end the listener (supervisord would restart it)
                log.exception("supervisord-listener: cannot handle %s", headers.get("eventname"))
            protocol.ok(stdout)
    finally:
        if listener.forwarder is not None:
            listener.forwarder.stop(timeout=2.0)
        locallog.flush()


def run(config_path: str) -> int:
    import dataclasses
    import signal

    from . import config as config_mod

    cfg = config_mod.load(config_path)
    # A spool of its own: never shared with a daemon or a run-one of the same config.
    cfg = dataclasses.replace(cfg, state_dir=cfg.state_dir / "supervisord-listener")
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    locallog.setup(False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # supervisord's stop: the finally above flushes
    serve(cfg)
    return 0
