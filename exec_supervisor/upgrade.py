"""In-place upgrade: the daemon re-executes itself (same pid) with the installed code and carries on.

    1. refuse while anything long is in progress (a reload, a scale, a rolling restart, start-up)
    2. check the installed code: `python -m exec_supervisor start CONFIG --resume PREVIEW --dry-run`
       in a subprocess (the interpreter running the daemon, sys.executable; so a `pip install -U`
       into this environment is what the new image runs), within a timeout
    3. hand over: the control socket stops accepting (clients queue in its backlog), requests in
       flight finish, the event forwarder stops with its spool synced, the loop stops handling
       child exits (SIGCHLD stays pending, blocked), the whole runtime state goes to
       state_dir/handover.json (0600)
    4. execve() with `--resume FILE --fds lock=N,control=M`: the state_dir lock and the listening
       control socket are the only descriptors kept. Executors stay our children (same pid); the
       ones that exit meanwhile wait as zombies and are reaped by the new image with their real status.

The new image (daemon.run with resume=...) restores the engine from the file (or, if that
fails, adopts the live processes it names), reconciles (a config changed on disk is applied
as a reload would), and emits `upgraded`. This module owns steps 1-4 and the file; it must
not reach into the engine's instances (supervise/handover.py does) nor serve HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .events import locallog
from .supervise import handover
from .supervise.engine import PRIVATE_ENV, write_json_atomic

log = logging.getLogger("exec_supervisor")

STATE_FILE = "handover.json"
CHECK_FILE = "upgrade-check.json"
CHECK_TIMEOUT = 60.0
CHECK_OUTPUT_MAX = 64 * 1024


class UpgradeRefused(Exception):
    """Nothing was done; the message says why (the daemon keeps running as it was)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


# -P (3.11+): the working directory does not go first on sys.path, so a source tree the daemon
# happens to run in cannot stand in for the installed package.
_SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []


def new_image_command(config_path: Path, state_file: Path, *extra: str) -> list[str]:
    """The installed code, run by the interpreter that runs the daemon now."""
    return [sys.executable, *_SAFE_PATH, "-m", "exec_supervisor", "start", str(config_path), "--resume",
            str(state_file), *extra]


def _shown(command: list[str]) -> str:
    return f"{command[0]} -m exec_supervisor"


def busy_reason(daemon: Any) -> str | None:
    """Why an upgrade cannot start now, or None."""
    engine = daemon.engine
    if getattr(daemon, "shape", None) is not None:
        # The new image would be a whole farm's `start`: run-one is replaced by its platform instead.
        return "run-one does not upgrade in place; restart it (systemctl restart, a new pod)"
    if daemon.stopping or engine.stopping:
        return "the daemon is stopping"
    if not daemon.ready:
        return "the farm is still starting; try again once it has started"
    if daemon.upgrading:
        return "an upgrade is already in progress"
    if daemon.reload_in_progress:
        return "a reload is in progress; try again when it has finished"
    if engine.operations:
        what = ", ".join(sorted(engine.operations))
        return f"a {what} is in progress; try again when it has finished (or interrupt it)"
    return None


def write_private(path: Path, data: Any) -> None:
    """JSON, atomically, readable by the daemon's user only (it names every pid of the farm)."""
    old = os.umask(0o077)
    try:
        write_json_atomic(path, data)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)


def _check_env() -> dict[str, str]:
    # The check must not talk to systemd or take fds meant for the daemon.
    return {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}


async def check_new_image(daemon: Any, timeout: float = CHECK_TIMEOUT) -> dict[str, Any]:
    """Run the installed code on a copy of the state it would resume from; its JSON answer,
    or UpgradeRefused (status 500-ish as 1 for the CLI) saying what went wrong."""
    state_dir: Path = daemon.config.state_dir
    preview = state_dir / CHECK_FILE
    output = state_dir / ".upgrade-check.out"
    write_private(preview, daemon.handover_state(requested=time.monotonic()))
    command = new_image_command(daemon.config.path, preview, "--dry-run")
    engine = daemon.engine
    try:
        pid = os.posix_spawn(
            command[0], command, _check_env(),
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_OPEN, 1, str(output), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                          (os.POSIX_SPAWN_DUP2, 1, 2)],
            setsigmask=(),
        )
    except OSError as exc:
        preview.unlink(missing_ok=True)
        raise UpgradeRefused(f"cannot run the installed code ({command[0]}): {exc.strerror or exc}", 500) from None
    status_future = engine.watch_helper(pid)  # the engine reaps every child: it hands us this one's status
    try:
        status = await asyncio.wait_for(asyncio.shield(status_future), timeout)
    except asyncio.TimeoutError:
        os.kill(pid, signal.SIGKILL)
        await status_future
        raise UpgradeRefused(f"the installed code did not answer the check within {timeout:g}s "
                             f"({_shown(command)}); nothing was changed", 500) from None
    finally:
        preview.unlink(missing_ok=True)
    try:
        with open(output, "rb") as handle:
            text = handle.read(CHECK_OUTPUT_MAX).decode(errors="replace")
    except OSError:
        text = ""
    output.unlink(missing_ok=True)
    code = os.waitstatus_to_exitcode(status)
    answer = None
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                answer = json.loads(line)
            except ValueError:
                pass
            break
    if code != 0 or not isinstance(answer, dict) or not answer.get("ok"):
        lines = [line for line in text.strip().splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {code}"
        raise UpgradeRefused(f"the installed code failed the check ({_shown(command)}): {why[:500]}; "
                             "nothing was changed", 500)
    return answer


def execute(daemon: Any, state: dict[str, Any], fds: dict[str, int]) -> None:
    """Write the state and replace this process's image (returns only if execve failed)."""
    state_file = daemon.config.state_dir / STATE_FILE
    write_private(state_file, state)
    for fd in fds.values():
        os.set_inheritable(fd, True)
    command = new_image_command(daemon.config.path, state_file, *daemon.start_args,
                                "--fds", ",".join(f"{name}={fd}" for name, fd in sorted(fds.items())))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.execve(command[0], command, dict(os.environ))
    except OSError as exc:
        log.error("upgrade: execve %s failed: %s; carrying on with the running code", command[0], exc.strerror)
        for fd in fds.values():
            os.set_inheritable(fd, False)


def parse_fds(text: str | None) -> dict[str, int]:
    """`lock=3,control=7` -> {"lock": 3, "control": 7}; bad parts are left out."""
    fds: dict[str, int] = {}
    for part in (text or "").split(","):
        name, _, number = part.partition("=")
        if name and number.isdigit():
            fds[name] = int(number)
    return fds


def read_state(path: str) -> dict[str, Any]:
    """The handover file written by the old image (handover.StateError when unusable)."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError) as exc:
        raise handover.StateError(f"cannot read {path}: {exc}") from None
    handover.check(data)
    return data


def dry_run(config: Any, state_path: str) -> dict[str, Any]:
    """What `start --resume FILE --dry-run` prints: this code can load the config, read the state
    and has every module the daemon needs (the check an upgrade makes before it commits)."""
    from . import daemon, systemd  # noqa: F401  (imported to prove they import)
    from .daemon import core, reload  # noqa: F401
    from .control import server  # noqa: F401
    from .events import forwarder  # noqa: F401

    data = read_state(state_path)
    records = handover.check(data)
    wanted = set()
    for type_name in config.executors:
        ids = (data.get("scaled") or {}).get(type_name)
        for instance_id in (ids if isinstance(ids, list) else config.ids_of(type_name)):
            wanted.add(f"ET-{type_name}-{instance_id}")
    live = [r for r in records if r.get("pid")]
    for record in records:
        handover.State(record["state"])  # every field the restore reads must be there
        int(record["restarts"]), float(record["started_at"]), float(record["restart_at"])
    return {"ok": True, "version": __version__, "instances": len(records), "live": len(live),
            "leaving": sorted(r["exec_id"] for r in records if r["exec_id"] not in wanted)[:20]}


# --------------------------------------------------------------------------- the old image


def handover_state(daemon: Any, requested: float) -> dict[str, Any]:
    """The engine's runtime state plus what the daemon itself carries across a re-exec."""
    state = handover.snapshot(daemon.engine, daemon.engine.retiring)
    state.update({"version": __version__, "pid": os.getpid(), "config": str(daemon.config.path),
                  "started_at": daemon.started_at, "requested": requested, "upgrades": daemon.upgrades,
                  "last_upgrade": daemon.last_upgrade})
    return state


async def upgrade(daemon: Any, check_timeout: float = CHECK_TIMEOUT) -> dict[str, Any]:
    """Check the installed code, then start the handover. Returns (for the caller's answer, which
    goes out first: the handover waits for requests in flight) what is being done; raises
    UpgradeRefused, having changed nothing."""
    requested = time.monotonic()
    reason = busy_reason(daemon)
    if reason is None and not daemon.reads_signalfd:
        reason = "this daemon reads signals without a signalfd; restart it instead"
    if reason:
        raise UpgradeRefused(f"upgrade refused: {reason}")
    daemon.upgrading = True  # commands that change the farm wait (409) while the check runs
    try:
        answer = await check_new_image(daemon, check_timeout)
    finally:
        daemon.upgrading = False
    reason = busy_reason(daemon)  # a SIGHUP reload may have begun during the check
    if reason:
        raise UpgradeRefused(f"upgrade refused: {reason}")
    daemon.upgrading = True
    log.info("exec-supervisor@%s: upgrading in place from %s to %s (%d instances)", daemon.config.name,
             __version__, answer.get("version"), daemon.engine.live_count())
    daemon.carry["checked"] = time.monotonic()
    asyncio.get_running_loop().create_task(_hand_over(daemon, requested))
    return {"ok": True, "pid": os.getpid(), "from": __version__, "to": answer.get("version"),
            "instances": daemon.engine.live_count(), "upgrades": daemon.upgrades}


async def _hand_over(daemon: Any, requested: float) -> None:
    await asyncio.sleep(0)  # the upgrade request's answer is queued before the control socket drains
    await daemon.hook("upgrading")  # sd_notify RELOADING=1
    fds: dict[str, int] = {}
    for extension in daemon.extensions:
        method = getattr(extension, "hand_over", None)
        if method is not None:
            try:
                fds.update(await method(daemon))
            except Exception:
                log.exception("extension %s.hand_over failed", type(extension).__name__)
    # From here on nothing awaits: child exits stay pending (SIGCHLD blocked, unread) for the new image.
    daemon.pause_child_exits()
    if daemon.forwarder is not None:
        daemon.forwarder.close(timeout=0.1)  # its spool synced; the new image reopens it and goes on
    locallog.flush()
    assert daemon.lock is not None and daemon.lock.fd is not None
    fds["lock"] = daemon.lock.fd
    state = handover_state(daemon, requested)
    state.update(daemon.carry, handed_over=time.monotonic())
    execute(daemon, state, fds)
    # execve failed: carry on as before with the running code.
    daemon.resume_child_exits()
    daemon.forwarder = None
    daemon.start_forwarder()
    daemon.inherited = {k: v for k, v in fds.items() if k != "lock"}
    await daemon.hook("upgrade_failed")
    daemon.upgrading = False
    daemon.emit("upgrade_failed", level="error", error="execve failed; the running code carries on")
    daemon.engine.on_child_exits()


# --------------------------------------------------------------------------- the new image


def resume_engine(daemon: Any) -> int:
    """Restore the engine from the handed-over state; if that fails, adopt the live executors it
    (or instances.json) names, so none is ever left unsupervised. Returns how many were carried."""
    engine = daemon.engine
    try:
        return handover.restore(engine, daemon.resume, children=True)["carried"]
    except Exception as exc:
        log.error("upgrade: cannot restore the handed-over state (%s); adopting its live executors", exc)
        daemon.resume = {**daemon.resume, "fallback": str(exc)}
    engine.load_overrides()
    wanted = {e: v for e, v in engine.desired().items() if e not in engine.held}
    adopted = 0
    for record in daemon.resume.get("instances") or ():
        exec_id = record.get("exec_id") if isinstance(record, dict) else None
        if isinstance(exec_id, str) and exec_id not in engine.instances:
            try:
                if handover.adopt_one(engine, exec_id, record, wanted, children=True) is not None:
                    adopted += 1
            except (KeyError, TypeError, ValueError):
                continue
    adopted += handover.adopt_previous(engine, children=True)  # instances.json: what the state missed
    engine.stop_previous_leftovers()
    return adopted


def announce(daemon: Any, carried: int, done: dict[str, int]) -> None:
    """The `upgraded` event, once the new image has reconciled."""
    resume = daemon.resume
    now = time.monotonic()
    marks = [resume.get(k) for k in ("requested", "checked", "handed_over")] + [now]
    phases = {}
    if all(isinstance(m, (int, float)) for m in marks):
        # the check of the installed code; draining requests and saving state; the new image's start
        phases = {name: round(b - a, 3) for name, a, b in zip(("check", "handover", "resume"), marks, marks[1:])}
    requested = marks[0]
    seconds = round(now - requested, 3) if isinstance(requested, (int, float)) and requested <= now else None
    daemon.upgrades += 1
    daemon.last_upgrade = {"from": resume.get("version"), "to": __version__, "time": time.time(),
                           "seconds": seconds, "instances": carried}
    detail = {**daemon.last_upgrade, "pid": os.getpid(), "restarted": done["restarted"],
              "started": done["started"], "stopped": done["stopped"], "phases": phases}
    if resume.get("fallback"):
        detail["fallback"] = resume["fallback"]
    daemon.emit("upgraded", **detail)
    log.debug("exec-supervisor@%s: upgrade phases (s): %s", daemon.config.name, phases)
