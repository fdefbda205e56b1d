"""systemd integration: sd_notify from the daemon, and the unit file for a farm.

sd_notify is a datagram to the AF_UNIX socket named by NOTIFY_SOCKET (a path, or
an abstract name written with a leading '@'). The daemon tells systemd:

  READY=1                      once the first reconcile has spawned every instance
  STATUS=...                   running/desired counts, debounced, kept current
  RELOADING=1 MONOTONIC_USEC=  when a reload starts (SIGHUP or the reload command), READY=1 after
  STOPPING=1                   when the farm starts stopping
  WATCHDOG=1                   every WATCHDOG_USEC/2, from a loop timer: a stuck loop stops the pings

Nothing here is needed outside systemd: without NOTIFY_SOCKET the notifier is a no-op.
The engine already keeps NOTIFY_SOCKET, WATCHDOG_* and friends out of the executors' environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger("exec_supervisor")

STATUS_DEBOUNCE_SECONDS = 0.5

# What the shipped unit and `systemd-unit` use; keep both in step (a test checks the shipped file).
UNIT_NAME = "exec-supervisor.service"
DEFAULT_EXECUTABLE = "/usr/local/bin/exec-supervisor"
DEFAULT_CONFIG = "/etc/exec-supervisor/farm.yaml"
DEFAULT_STOP_TIMEOUT = 10.0
STATE_DIRECTORY = "/var/lib/exec-supervisor"  # StateDirectory=exec-supervisor
LOGS_DIRECTORY = "/var/log/exec-supervisor"   # LogsDirectory=exec-supervisor
WATCHDOG_SEC = 30
STOP_MARGIN_SECONDS = 30  # TimeoutStopSec = largest stop_timeout + this (parallel stops, then the sweep)


# --------------------------------------------------------------------------- sd_notify


class Notifier:
    """Sends sd_notify datagrams. Never raises: systemd going away must not hurt the farm."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if address.startswith("@"):
            self.address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self.address = address
        self._sock: socket.socket | None = None
        self._failed_logged = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if self.address is None or not fields:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
            return True
        except OSError as exc:
            if not self._failed_logged:
                self._failed_logged = True
                log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when systemd wants none."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were exec'd by a wrapper that kept it)
    return usec / 2 / 1_000_000


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SdNotify:
    """Daemon extension: tells systemd about readiness, status, reloads, stops, and that the loop lives."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.notifier = Notifier(environ)
        self.watchdog = watchdog_interval(environ) if self.notifier.enabled else None
        self._daemon: Any = None
        self._status_handle: asyncio.TimerHandle | None = None
        self._watchdog_handle: asyncio.TimerHandle | None = None
        self._last_status = ""
        self._phase = "starting"

    # -- extension hooks

    async def start(self, daemon: Any) -> None:
        if not self.notifier.enabled:
            return
        self._daemon = daemon
        daemon.engine.on_state_change(self._on_state_change)
        self.notifier.send("STATUS=starting instances")
        if self.watchdog:
            self._ping()

    async def started(self, daemon: Any) -> None:
        """After the first reconcile: every instance has been spawned."""
        if not self.notifier.enabled:
            return
        self._phase = "running"
        self.notifier.send("READY=1", f"MAINPID={os.getpid()}", "STATUS=" + self._status_text())

    async def reloading(self, daemon: Any) -> None:
        if self.notifier.enabled and self._phase == "running":
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading the config")

    async def reloaded(self, daemon: Any, result: dict[str, Any]) -> None:
        if not self.notifier.enabled or self._phase != "running":
            return
        self._last_status = self._status_text()
        status = self._last_status if result.get("ok") else f"{self._last_status} (last reload refused: bad config)"
        self.notifier.send("READY=1", "STATUS=" + status)

    async def upgrading(self, daemon: Any) -> None:
        """Before an in-place re-exec: the new image (same pid, same NOTIFY_SOCKET) sends READY=1."""
        if self.notifier.enabled:
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                               "STATUS=upgrading in place (executors keep running)")

    async def upgrade_failed(self, daemon: Any) -> None:
        if self.notifier.enabled:
            self.notifier.send("READY=1", "STATUS=" + self._status_text() + " (last upgrade failed)")

    async def stopping(self, daemon: Any) -> None:
        if not self.notifier.enabled:
            return
        self._phase = "stopping"
        running = daemon.engine.live_count()
        self.notifier.send("STOPPING=1", f"STATUS=stopping {running} instances")

    async def stop(self, daemon: Any) -> None:
        for handle in (self._status_handle, self._watchdog_handle):
            if handle is not None:
                handle.cancel()
        self._status_handle = self._watchdog_handle = None
        self.notifier.close()

    # -- internals

    def _status_text(self) -> str:
        engine = self._daemon.engine
        counts = engine.counts()
        text = f"{counts['running']}/{counts['desired']} instances running"
        trouble = {}
        for instance in engine.instances.values():
            state = instance.state.value
            if state in ("backoff", "fatal", "exited"):
                trouble[state] = trouble.get(state, 0) + 1
        if trouble:
            text += " (" + ", ".join(f"{n} {state}" for state, n in sorted(trouble.items())) + ")"
        return text

    def _on_state_change(self, instance: Any) -> None:
        if self._status_handle is None and self._phase != "stopped":
            loop = asyncio.get_running_loop()
            self._status_handle = loop.call_later(STATUS_DEBOUNCE_SECONDS, self._send_status)

    def _send_status(self) -> None:
        self._status_handle = None
        if self._phase == "stopping":
            running = self._daemon.engine.live_count()
            text = f"stopping: {running} instances left"
        else:
            text = self._status_text()
        if text != self._last_status:
            self._last_status = text
            self.notifier.send("STATUS=" + text)

    def _ping(self) -> None:
        # A loop timer: when the loop is stuck (a blocking call, a busy loop) no ping goes out
        # and systemd's watchdog restarts the service, which is what we want.
        self.notifier.send("WATCHDOG=1")
        assert self.watchdog is not None
        self._watchdog_handle = asyncio.get_running_loop().call_later(self.watchdog, self._ping)


# --------------------------------------------------------------------------- unit file


# In the farm's unit and in every unit `export systemd` writes.
HARDENING = """\
# Hardening that executors do not notice. Left out on purpose:
#   ProtectHome=   executors (or their models, venvs, caches) often live under /home
#   PrivateTmp=    executors share /tmp with other programs on the host (sockets, hand-offs)
#   PrivateDevices=, ProtectClock=, DeviceAllow=   close /dev (ProtectClock implies a DeviceAllow
#                  list): GPU executors need /dev/nvidia*, /dev/dri
#   MemoryDenyWriteExecute=, RestrictNamespaces=, SystemCallFilter=   break JITs and sandboxes
#   ProtectControlGroups=   makes /sys/fs/cgroup read-only, the delegated cgroup too (Delegate=yes)
# ProtectSystem=full makes /usr, /boot and /etc read-only: keep state and logs out of /etc.
# NoNewPrivileges=yes: executors cannot gain privileges through setuid programs (sudo).
NoNewPrivileges=yes
ProtectSystem=full
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
"""


def executable_command() -> list[str]:
    """How systemd should start this installation: the console script next to this interpreter."""
    beside = Path(sys.executable).parent / "exec-supervisor"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    import shutil  # only for unit rendering: the daemon never needs it

    found = shutil.which("exec-supervisor")
    if found and "/shims/" not in found:  # a pyenv shim depends on the caller's shell setup
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "exec_supervisor.cli"]


def _quote(arg: str) -> str:
    """A systemd command-line word (systemd splits like a shell, and expands % and $)."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and all(c.isalnum() or c in "/._-+=:,@" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")


quote_word = _quote  # for export/systemd.py
seconds_text = _seconds


def render_unit(
    command: list[str] | None = None,
    config_path: str = DEFAULT_CONFIG,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    read_write_paths: list[str] | None = None,
    keep_executors: bool = False,
) -> str:
    """The unit text. Defaults give the shipped configs/exec-supervisor.service.

    keep_executors: KillMode=process, so executors outlive a crash of the daemon and the restarted
    daemon adopts them; the price is that systemd no longer cleans up after the farm (see below)."""
    command = command or [DEFAULT_EXECUTABLE]
    exec_start = " ".join(_quote(a) for a in [*command, "start", config_path])
    timeout_stop = _seconds(max(stop_timeout, 0) + STOP_MARGIN_SECONDS)
    extra_rw = ""
    if read_write_paths:
        words = " ".join(_quote("-" + p) for p in read_write_paths)
        extra_rw = (
            "# The config's own state_dir / log_dir (ProtectSystem= would make them read-only under /etc, /usr):\n"
            f"ReadWritePaths={words}\n"
        )
    if keep_executors:
        kill_mode = (
            "# SIGTERM to the daemon only, which stops its instances itself. KillMode=process: when the daemon\n"
            "# crashes, its executors keep running and the daemon systemd restarts adopts them (on_restart:\n"
            "# adopt). The price: systemd kills nothing but the daemon, ever. An executor still alive after\n"
            "# TimeoutStopSec (or left by a daemon that could not stop it) stays running outside any daemon's\n"
            "# care until the next start adopts or stops it, and systemd reports it as a left-over process.\n"
            "KillMode=process\n")
    else:
        kill_mode = (
            "# SIGTERM to the daemon only: it stops its instances in parallel (stop_signal, then SIGKILL after\n"
            "# stop_timeout) and exits. systemd SIGKILLs whatever is left after TimeoutStopSec. Also when the\n"
            "# daemon crashes: its executors die with it (no adoption); `exec-supervisor upgrade` keeps them\n"
            "# across an upgrade. `systemd-unit --keep-executors` writes KillMode=process instead.\n"
            "KillMode=mixed\n")
    return f"""\
# exec-supervisor: runs the executor farm of {config_path} under systemd.
# Install: copy to /etc/systemd/system/{UNIT_NAME}, then:
#   systemctl daemon-reload && systemctl enable --now exec-supervisor
# Operate: exec-supervisor status|scale|restart|logs ... -c {config_path}
#          systemctl reload exec-supervisor   (re-reads the config, restarts only what changed)
# Upgrade: pip install -U exec-supervisor && exec-supervisor upgrade -c {config_path}
#          (re-executes the daemon in place: same pid, no executor restarted, systemd sees a reload)

[Unit]
Description=exec-supervisor: WeFastAPI executor farm ({config_path})
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
{kill_mode}KillSignal=SIGTERM
TimeoutStopSec={timeout_stop}
# Starting may first stop executors a crashed daemon left behind (up to stop_timeout).
TimeoutStartSec={_seconds(max(stop_timeout, 0) + 60)}
Restart=on-failure
RestartSec=2
# The daemon pings from its event loop every WatchdogSec/2; a stuck loop gets restarted.
WatchdogSec={WATCHDOG_SEC}
# state_dir and log_dir when the config leaves them unset: /var/lib/exec-supervisor, /var/log/exec-supervisor.
StateDirectory=exec-supervisor
StateDirectoryMode=0700
LogsDirectory=exec-supervisor
LogsDirectoryMode=0750
{extra_rw}LimitNOFILE=65536
# A farm is many processes (and their threads): the default TasksMax would cap it.
TasksMax=infinity
# The unit's cgroup is the daemon's to manage: each instance gets a cgroup of its own in it
# (supervisor.containment), so nothing an executor starts can escape its stop.
Delegate=yes
Environment=PYTHONUNBUFFERED=1
SyslogIdentifier=exec-supervisor
#User=exec-supervisor
#Group=exec-supervisor

{HARDENING}
[Install]
WantedBy=multi-user.target
"""


def unit_for_config(cfg: Any, keep_executors: bool = False) -> str:
    """The unit filled in for a loaded FarmConfig (interpreter path, config path, timeouts)."""
    stop_timeout = max((e.stop_timeout for e in cfg.executors.values()), default=DEFAULT_STOP_TIMEOUT)
    extra = []
    for path, systemd_dir in ((cfg.state_dir, STATE_DIRECTORY), (cfg.log_dir, LOGS_DIRECTORY)):
        if str(path) != systemd_dir:
            extra.append(str(path))
    socket_dir = str(Path(cfg.socket_path).parent)
    if socket_dir not in extra and socket_dir != STATE_DIRECTORY:
        extra.append(socket_dir)
    return render_unit(executable_command(), str(cfg.path), stop_timeout, extra, keep_executors)
