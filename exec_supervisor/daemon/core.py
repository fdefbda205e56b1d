"""The daemon: wires config, engine, event sinks and signals onto one asyncio loop.

Owns the process's life: run() reads the config (in a child: readconfig.py), takes the state
lock (statedir.py), sets up signals and the loop thread, and Daemon runs extensions, takes
over what is already running (an upgrade's state or a dead daemon's executors), reconciles,
and shuts down. Reload is a mixin (reload.py); the upgrade's mechanics are upgrade.py's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..config import ConfigError, FarmConfig
from ..config.validate import PendingCheck
from ..events import Event, EventBus, locallog
from ..supervise import handover, osproc
from ..supervise.containment import CgroupUnavailable
from ..supervise.engine import Engine
from .readconfig import read_config
from .reload import Reloading
from .statedir import DaemonError, StateLock, prepare_dirs

log = logging.getLogger("exec_supervisor")

MEMORY_RELEASE_SECONDS = 10.0
# Read from a SignalFd by the event loop (see run); blocked in every thread of the daemon.
HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
Shape = Callable[[FarmConfig], FarmConfig]


def _upgrade() -> Any:
    """upgrade.py, imported when an upgrade starts or resumes: the daemon's memory is a benchmarked target."""
    from .. import upgrade

    return upgrade


class Daemon(Reloading):
    def __init__(self, cfg: FarmConfig, signals: osproc.SignalFd | None = None,
                 resume: dict[str, Any] | None = None, inherited: dict[str, int] | None = None,
                 shape: Shape | None = None) -> None:
        """signals: HANDLED_SIGNALS as a SignalFd; without one, asyncio's signal handlers (main thread only).
        resume: the state an upgrading image handed over; inherited: the descriptors it kept open.
        shape: applied to the config at every (re)load (run-one keeps one instance of the farm this way)."""
        self.config = cfg
        self.shape = shape
        self.resume = resume
        self.inherited = dict(inherited or {})
        self.lock: StateLock | None = None
        self.ready = False  # the first reconcile is done
        self.upgrading = False
        self.carry: dict[str, Any] = {}
        self.start_args: list[str] = []  # what `start` had besides CONFIG (-q, --tail): kept by an upgrade  # what extensions hand over to the next image (hand_over hooks)
        self.upgrades = int((resume or {}).get("upgrades") or 0)
        self.last_upgrade: dict[str, Any] | None = (resume or {}).get("last_upgrade")
        self._signals = signals
        self.bus = EventBus()
        self.engine = Engine(cfg, self.bus)
        self.started_at = float((resume or {}).get("started_at") or time.time())
        self._stop = asyncio.Event()
        self._sigints = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.forwarder: Any = None
        self.metrics: Any = None  # observe.metrics.Metrics, made at the first scrape
        # Control server, sd_notify, ...: each has async start/stopping/stop(daemon), and may have
        # started(daemon) (after the first reconcile), reloading(daemon), reloaded(daemon, result).
        self.extensions: list[Any] = []
        self._stop_reason = "asked to stop"
        self._reload_lock = asyncio.Lock()
        self._transitions_at_release = -1

    # ------------------------------------------------------------------ events

    def emit(self, kind: str, level: str = "info", **detail: Any) -> None:
        self.bus.publish(Event(event=kind, level=level, supervisor=self.config.name, detail=detail))

    def publish_threadsafe(self, event: Event) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.bus.publish, event)

    def _release_memory(self) -> None:
        """Now, and every MEMORY_RELEASE_SECONDS while instances change state: bursts (a farm
        coming up, a crash storm) leave freed heap behind that glibc would keep for good. An
        idle farm is left alone: a trim costs a few milliseconds with a thousand instances."""
        if self.engine.transitions != self._transitions_at_release:
            self._transitions_at_release = self.engine.transitions
            osproc.release_free_memory()
        if self._loop is not None and not self._stop.is_set():
            self._loop.call_later(MEMORY_RELEASE_SECONDS, self._release_memory)

    # ------------------------------------------------------------------ signals

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            log.info("exec-supervisor@%s: %s: stopping the farm", self.config.name, reason)
            self._stop_reason = reason
        self.engine.stopping = True  # also ends a start-up still spawning
        self._stop.set()

    def _on_sigint(self) -> None:
        self._sigints += 1
        if self._sigints == 1:
            self.request_stop("SIGINT; press Ctrl-C again to kill at once")
        else:
            log.warning("exec-supervisor@%s: second SIGINT: killing every instance now", self.config.name)
            self.engine.kill_all()
            self.request_stop("second SIGINT")

    def _on_sighup(self) -> None:
        asyncio.get_running_loop().create_task(self.reload())

    def _on_sigusr2(self) -> None:
        async def upgrade() -> None:
            try:
                await self.upgrade()
            except _upgrade().UpgradeRefused as exc:
                log.error("exec-supervisor@%s: SIGUSR2: upgrade refused: %s", self.config.name, exc)

        asyncio.get_running_loop().create_task(upgrade())

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def reload_in_progress(self) -> bool:
        return self._reload_lock.locked()

    # ------------------------------------------------------------------ upgrade (upgrade.py)

    @property
    def reads_signalfd(self) -> bool:
        return self._signals is not None

    def pause_child_exits(self) -> None:
        """Leave SIGCHLD pending (blocked, unread): an image that re-executes hands exits over."""
        if self._loop is not None and self._signals is not None:
            self._loop.remove_reader(self._signals.fd)

    def resume_child_exits(self) -> None:
        if self._loop is not None and self._signals is not None:
            self._loop.add_reader(self._signals.fd, self._on_signals)

    def handover_state(self, requested: float) -> dict[str, Any]:
        return _upgrade().handover_state(self, requested)

    async def upgrade(self, check_timeout: float | None = None) -> dict[str, Any]:
        """Check the installed code, then re-execute in place with the whole state (upgrade.py)."""
        upgrade = _upgrade()
        return await upgrade.upgrade(self, check_timeout or upgrade.CHECK_TIMEOUT)

    def _on_signals(self) -> None:
        assert self._signals is not None
        for number in self._signals.read():
            try:
                self._signal_handlers[number]()
            except Exception:  # a bug handling one signal must not cost the others (a SIGTERM)
                log.exception("handling signal %d failed", number)

    async def hook(self, name: str, *args: Any) -> None:
        """Call an optional extension hook; a failing extension is logged, never fatal."""
        await self._hook(name, *args)

    async def _hook(self, name: str, *args: Any) -> None:
        for extension in self.extensions:
            method = getattr(extension, name, None)
            if method is None:
                continue
            try:
                await method(self, *args)
            except Exception:
                log.exception("extension %s.%s failed", type(extension).__name__, name)

    # ------------------------------------------------------------------ main

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        try:
            self.engine.setup_containment(self.config.containment)
        except CgroupUnavailable as exc:
            raise DaemonError(f"{self.config.path.name}: supervisor.containment: cgroup: {exc}", 2) from None
        if self._signals is not None:
            self._signal_handlers: dict[int, Callable[[], None]] = {
                signal.SIGCHLD: self.engine.on_child_exits,
                signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
                signal.SIGINT: self._on_sigint,
                signal.SIGHUP: self._on_sighup,
                signal.SIGUSR2: self._on_sigusr2,
            }
            loop.add_reader(self._signals.fd, self._on_signals)
        else:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            loop.add_signal_handler(signal.SIGUSR2, self._on_sigusr2)
        self.engine.attach(loop, signal_handler=self._signals is None)
        # The forwarder first: it gives each event its seq, which the log line of a folded one shows.
        self._start_forwarder()
        self.bus.subscribe(locallog.event_sink)
        carried = self._take_over()
        self.engine.claim_cgroups()  # instances carried over or adopted keep their cgroup
        await self._start_extensions()
        info = self.engine.containment_info()
        log.info("exec-supervisor@%s: containment: %s%s", self.config.name, info["mode"],
                 f" ({info['cgroup']})" if info["cgroup"] else "")
        # Clients find this daemon through the entry even when its config file is broken.
        from ..control import registry

        entry = registry.record(self.config.path, self.config.socket_path, state_dir=str(self.config.state_dir))
        try:
            return await self._supervise(loop, carried)
        finally:
            registry.remove(entry)

    async def _supervise(self, loop: asyncio.AbstractEventLoop, carried: int) -> int:
        done = await self.engine.reconcile()
        self._release_memory()  # start-up's garbage (config models, YAML, the first spawns)
        counts = self.engine.counts()
        if self.resume is not None:
            _upgrade().announce(self, carried, done)
        else:
            self.emit("supervisor_started", instances=counts["desired"], types=len(self.config.executors),
                      pid=os.getpid(), version=__version__, started=done["started"])
            if carried:
                self.emit("adopted", instances=carried)
        self.ready = True
        if not self._stop.is_set():
            await self._hook("started")  # sd_notify READY=1: every instance has been spawned
        await self._stop.wait()
        self.emit("supervisor_stopping", instances=self.engine.live_count(),
                  reason=self._stop_reason)
        for extension in reversed(self.extensions):
            try:
                await extension.stopping(self)
            except Exception:
                log.exception("extension %s.stopping failed", type(extension).__name__)
        await self.engine.shutdown()
        self.emit("supervisor_stopped", uptime=time.time() - self.started_at)
        for extension in reversed(self.extensions):
            try:
                await extension.stop(self)
            except Exception:
                log.exception("extension %s.stop failed", type(extension).__name__)
        if self.forwarder is not None:
            await loop.run_in_executor(None, self.forwarder.stop)
        self.engine.detach(loop)
        if self._signals is not None:
            loop.remove_reader(self._signals.fd)
        return 0

    def _announce_overrides(self) -> None:
        """A runtime scale outlives the daemon: say at start which types it keeps off their config."""
        for type_name, ids in self.engine.scaled.items():
            log.warning("%s", scale_override_note(type_name, len(ids), len(self.config.ids_of(type_name)),
                                                  self.engine.scaled_at.get(type_name)))
        if self.engine.held:
            log.warning("%d instance%s held stopped by `exec-supervisor stop` (`exec-supervisor start TARGET` "
                        "runs them again): %s", len(self.engine.held), "" if len(self.engine.held) == 1 else "s",
                        ", ".join(sorted(self.engine.held)[:8]) + (" ..." if len(self.engine.held) > 8 else ""))

    def _take_over(self) -> int:
        """Learn of the instances already running: handed over by an upgrade, or left by a dead
        daemon (adopted, or stopped with supervisor.on_restart: stop). Returns how many were taken."""
        engine = self.engine
        if self.resume is not None:
            return _upgrade().resume_engine(self)
        engine.load_overrides()
        self._announce_overrides()
        for warning in self.config.secret_env_warnings():
            log.warning("%s", warning)
        adopted = handover.adopt_previous(engine) if self.config.on_restart == "adopt" else 0
        if adopted:
            log.warning("adopted %d executors left running by a previous exec-supervisor", adopted)
        left = engine.stop_previous_leftovers()
        if left:
            log.warning("stopped %d executors left running by a previous exec-supervisor", left)
        return adopted

    async def _start_extensions(self) -> None:
        """Start each extension; if one cannot start, undo the others and the forwarder, then report."""
        started: list[Any] = []
        try:
            for extension in self.extensions:
                await extension.start(self)
                started.append(extension)
        except Exception as exc:
            for extension in reversed(started):
                try:
                    await extension.stop(self)
                except Exception:
                    log.exception("extension %s.stop failed", type(extension).__name__)
            if self.forwarder is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.forwarder.stop)
            if self.engine.cgroups is not None:
                self.engine.cgroups.close()
            if isinstance(exc, DaemonError):
                raise
            code = getattr(exc, "exit_code", None)
            if isinstance(code, int):  # an extension's own operator-facing error (e.g. the control socket)
                raise DaemonError(str(exc), code) from None
            raise

    def start_forwarder(self) -> None:
        self._start_forwarder()

    def _start_forwarder(self) -> None:
        if not self.config.events.forward:
            return
        from ..events.forwarder import EventForwarder, SpoolError

        try:
            self.forwarder = EventForwarder(self.config, self.publish_threadsafe)
        except SpoolError as exc:
            raise DaemonError(f"{self.config.path.name}: events: cannot use the event spool: {exc}") from None
        self.bus.subscribe(self.forwarder.sink)
        self.forwarder.start()


def scale_override_note(type_name: str, scaled: int, configured: int, when: float | None) -> str:
    """One line for the start log and `check`: a type that runs a runtime scale, not its config."""
    since = time.strftime(" on %Y-%m-%d %H:%M", time.localtime(when)) if when else ""
    return (f"{type_name}: {scaled} instance{'' if scaled == 1 else 's'}, scaled at runtime{since}; "
            f"the config says {configured}; `exec-supervisor scale {type_name} --reset` follows the config again")


def default_extensions() -> list[Callable[[], Any]]:
    """Always installed: health (the instances' notify socket, probes, memory), the control socket (status,
    scale, reload, ...), the http: listener (a no-op unless http.listen is set; after the control socket,
    whose handlers it reuses), sd_notify to systemd (a no-op outside systemd) and the executors' log
    socket (none without event forwarding)."""
    from ..control.server import ControlServer
    from ..health import Health
    from ..observe.web import WebServer
    from ..relay.service import LogSocket
    from ..systemd import SdNotify

    return [Health, ControlServer, WebServer, SdNotify, LogSocket]


def run(config_path: str, quiet: bool = False, extensions: list[Callable[[], Any]] | None = None,
        resume: str | None = None, fds: str | None = None, start_args: list[str] | None = None,
        shape: Shape | None = None, loaded: FarmConfig | None = None, pending: PendingCheck | None = None) -> int:
    """Load, lock, and supervise until stopped. Raises ConfigError / DaemonError for the CLI to print.

    The default extensions are always installed; `extensions` adds more (factories, called on the loop).
    resume/fds: the handover file and kept descriptors of an in-place upgrade (see upgrade.py);
    start_args: the options of `start` an upgrade re-executes the daemon with (-q, --tail).
    shape: a change made to the config at every (re)load (see Daemon).
    loaded: the config as the caller already read it (run-one reads it first to pick its instance);
    pending: its validating child, started by the caller while it imported the daemon (`start`).
    """
    inherited = _upgrade().parse_fds(fds) if fds else {}
    try:
        if loaded is not None:
            cfg = loaded
        else:
            cfg = pending.result() if pending is not None else read_config(config_path)
        if shape is not None:
            cfg = shape(cfg)
    except ConfigError:
        if resume is not None:
            log.error("upgrade: the new image cannot load %s; the executors keep running and the next "
                      "`exec-supervisor start` adopts them", config_path)
        raise
    share_problem = cfg.share_problem()
    if share_problem:  # a typo in supervisor.name or hosts: must not quietly run nothing
        raise DaemonError(share_problem, 2)
    log_gid = prepare_dirs(cfg)
    lock = StateLock(cfg.state_dir)
    if "lock" not in inherited or not lock.adopt(inherited.pop("lock")):
        lock.acquire()
    state: dict[str, Any] | None = None
    if resume is not None:
        try:
            state = _upgrade().read_state(resume)
        except handover.StateError as exc:
            log.error("upgrade: %s; adopting the live executors instead", exc)
            state = {"fallback": str(exc), "instances": []}
        Path(resume).unlink(missing_ok=True)
    locallog.setup(quiet)
    osproc.set_child_subreaper()
    osproc.raise_nofile_limit()
    osproc.use_one_malloc_arena()
    try:
        signals: osproc.SignalFd | None = osproc.SignalFd(HANDLED_SIGNALS)  # before any thread starts
    except OSError as exc:  # no signalfd (a seccomp filter, say): asyncio's handlers, on this thread
        log.debug("no signalfd (%s): signals come through Python handlers", exc)
        signals = None
    try:
        async def main() -> int:
            daemon = Daemon(cfg, signals, resume=state, inherited=inherited, shape=shape)
            daemon.engine.log_gid = log_gid
            daemon.start_args = list(start_args or ())
            daemon.lock = lock
            daemon.extensions = [make() for make in [*default_extensions(), *(extensions or [])]]
            return await daemon.run()

        if signals is None:
            code = asyncio.run(main())
        else:
            try:
                code = _on_loop_thread(lambda: asyncio.run(main()))
            finally:
                signals.close(ignore=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2))
        # The farm is down; a late Ctrl-C must not turn a clean exit into a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code
    finally:
        locallog.flush()  # event lines still held when the loop ended
        lock.release()


def _on_loop_thread(work: Callable[[], int]) -> int:
    """Run work (the event loop) on a thread of its own while the main thread waits for it.

    Orphans re-parented to a subreaper go to its main thread, spawned children are listed
    under the thread that spawned them: with the loop (which spawns) off the main thread,
    finding the orphans at an instance's exit reads a list of orphans, not of every instance.
    """
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the main thread, which raises it as before
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="exec-supervisor")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
