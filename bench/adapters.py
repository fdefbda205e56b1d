"""One small adapter per supervisor: write the config for "N instances of argv",
give the command that runs it in the foreground, and (where the tool has one)
scale and status commands. Starting, stopping and all measuring are shared
(see runner.py / workloads.py) and never use a supervisor's own status output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
TYPE_NAME = "Sleeper"
# exec-supervisor's default supervisor.max_instances is a quarter of kernel.pid_max (8192 at 32768):
# farms this big get an explicit bound of N
MAX_INSTANCES_FROM = 5000


@dataclass
class Farm:
    """What every supervisor is asked to run."""

    argv: list[str]
    count: int
    env: dict[str, str]
    # exec-supervisor only: alive this long = running (resets the backoff)
    start_seconds: float = 1.0
    # rotation threshold; chatty raises it so that no output is deleted while it is counted
    log_max_bytes: int | None = None
    forward_events: bool = False
    service_url: str = "http://127.0.0.1:9/"
    extra: dict[str, object] = field(default_factory=dict)


def _run_quiet(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def venv_version(package: str) -> str | None:
    py = VENV / "bin" / "python"
    if not py.exists():
        return None
    r = _run_quiet([str(py), "-c",
                    f"import importlib.metadata as m; print(m.version({package!r}))"])
    return r.stdout.strip() or None


class Adapter:
    name = "?"
    # one line on how to read this column
    blurb = ""
    supports_scale = False

    def available(self) -> str | None:
        """None when usable, otherwise why not (shown in the report)."""
        return None

    def versions(self) -> dict[str, str]:
        return {}

    def settings(self, farm: Farm) -> dict[str, str]:
        return {}

    def write_config(self, farm: Farm, workdir: Path) -> None:
        raise NotImplementedError

    def command(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    # ----------------------------------------------------------------- optional scale/status
    def scale_commands(self, farm: Farm, workdir: Path, count: int, current: int) -> list[list[str]]:
        """Commands (run in order, timed together) that take the farm from current to count."""
        return []

    def status_command(self, workdir: Path) -> list[str] | None:
        return None


# ============================================================================ supervisord

class Supervisord(Adapter):
    name = "supervisord"
    blurb = "supervisor (PyPI `supervisor`) from bench/.venv"
    supports_scale = True

    def __init__(self, nofile_soft: int | None = None) -> None:
        # nofile_soft: run under this soft RLIMIT_NOFILE and minfds (the 1024 probe)
        self.nofile_soft = nofile_soft
        if nofile_soft is not None:
            self.name = f"supervisord-nofile{nofile_soft}"

    def _bin(self, tool: str) -> Path:
        return VENV / "bin" / tool

    def available(self) -> str | None:
        if not self._bin("supervisord").exists():
            return "bench/.venv has no supervisord (run bash bench/setup_peers.sh)"
        return None

    def versions(self) -> dict[str, str]:
        return {"supervisor": venv_version("supervisor") or "?"}

    def _minfds(self, farm: Farm) -> int:
        if self.nofile_soft is not None:
            return self.nofile_soft
        # pipes per instance (stdin + stdout with redirect_stderr) plus log file, with room
        return max(1024, 4 * farm.count + 256)

    def settings(self, farm: Farm) -> dict[str, str]:
        s = {
            "nodaemon": "true (foreground)",
            "loglevel": "warn (state changes are not written to supervisord.log)",
            "minfds": str(self._minfds(farm)),
            "minprocs": str(max(200, farm.count + 256)),
            "startsecs": "0 (an instance counts as started at once)",
            "autorestart": "true",
            "startretries": "1000",
            "redirect_stderr": "true (one pipe less per instance)",
            "stdout_logfile": "<log_dir>/ET-<Name>-<id>.log",
            "stdout_logfile_maxbytes": "0 (no rotation)" if farm.log_max_bytes else "50MB (default)",
            "stopwaitsecs": "10",
        }
        if self.nofile_soft is not None:
            s["RLIMIT_NOFILE soft"] = f"{self.nofile_soft} (probe: supervisord's behaviour at the usual default)"
        return s

    def _conf(self, workdir: Path) -> Path:
        return workdir / "supervisord.conf"

    def write_config(self, farm: Farm, workdir: Path, with_program: bool = True) -> None:
        def esc(s: str) -> str:
            return s.replace("%", "%%")
        env = ",".join(f'{k}="{esc(v)}"' for k, v in farm.env.items())
        program = f"""
[program:{TYPE_NAME}]
command={esc(" ".join(farm.argv))}
process_name=%(program_name)s-%(process_num)d
numprocs={farm.count}
numprocs_start=0
startsecs=0
startretries=1000
autorestart=true
stopsignal=TERM
stopwaitsecs=10
redirect_stderr=true
stdout_logfile={esc(str(workdir / "logs"))}/ET-%(program_name)s-%(process_num)d.log
stdout_logfile_maxbytes={0 if farm.log_max_bytes else "50MB"}
stdout_logfile_backups=0
environment={env},ET_EXEC_ID="ET-%(program_name)s-%(process_num)d"
"""
        self._conf(workdir).write_text(f"""[supervisord]
nodaemon=true
logfile={esc(str(workdir / "supervisord.log"))}
loglevel=warn
pidfile={esc(str(workdir / "supervisord.pid"))}
childlogdir={esc(str(workdir / "logs"))}
minfds={self._minfds(farm)}
minprocs={max(200, farm.count + 256)}

[unix_http_server]
file={esc(str(workdir / "supervisor.sock"))}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{esc(str(workdir / "supervisor.sock"))}
""" + (program if with_program and farm.count > 0 else ""))

    def command(self, workdir: Path) -> list[str]:
        return [str(self._bin("supervisord")), "-c", str(self._conf(workdir))]

    def scale_commands(self, farm: Farm, workdir: Path, count: int, current: int) -> list[list[str]]:
        # supervisord's way to change numprocs: edit the file, then reread + update.
        self.write_config(Farm(**{**farm.__dict__, "count": count}), workdir)
        return [[str(self._bin("supervisorctl")), "-c", str(self._conf(workdir)), "update"]]

    def status_command(self, workdir: Path) -> list[str] | None:
        return [str(self._bin("supervisorctl")), "-c", str(self._conf(workdir)), "status"]


# ============================================================================ circus

class Circus(Adapter):
    blurb = "circus from bench/.venv"
    supports_scale = True

    def __init__(self, check_delay: float = 1.0) -> None:
        self.check_delay = check_delay
        self.name = "circus" if check_delay == 1.0 else f"circus-cd{check_delay:g}"

    def available(self) -> str | None:
        if not (VENV / "bin" / "circusd").exists():
            return "bench/.venv has no circusd (run bash bench/setup_peers.sh)"
        return None

    def versions(self) -> dict[str, str]:
        return {"circus": venv_version("circus") or "?", "pyzmq": venv_version("pyzmq") or "?",
                "tornado": venv_version("tornado") or "?"}

    def settings(self, farm: Farm) -> dict[str, str]:
        return {
            "check_delay": f"{self.check_delay:g}" + (
                " (the Arbiter's built-in default; an ini file without it gets 5, which restarts "
                "5x slower)" if self.check_delay == 1.0 else " (fast restarts, at an idle CPU cost)"),
            "warmup_delay": "0 (no pause between spawns)",
            "numprocesses": str(farm.count),
            "respawn": "true",
            "statsd / httpd": "off (no circusd-stats process)",
            "loglevel": "WARNING",
            "copy_env": "true, plus [env:...] with the marker",
            "stdout_stream / stderr_stream": "FileStream, one file per watcher "
            + ("(max_bytes 0: no rotation)" if farm.log_max_bytes else "(default rotation off)"),
            "graceful_timeout": "10",
        }

    def _ini(self, workdir: Path) -> Path:
        return workdir / "circus.ini"

    def _endpoint(self, workdir: Path) -> str:
        return f"ipc://{workdir / 'endpoint.sock'}"

    def write_config(self, farm: Farm, workdir: Path) -> None:
        log = workdir / "logs" / f"{TYPE_NAME}.log"
        cd = f"check_delay = {self.check_delay:g}\n"
        env = "".join(f"{k} = {v}\n" for k, v in farm.env.items())
        self._ini(workdir).write_text(f"""[circus]
{cd}endpoint = {self._endpoint(workdir)}
pubsub_endpoint = ipc://{workdir / 'pubsub.sock'}
statsd = False
httpd = False
loglevel = WARNING
logoutput = {workdir / 'circusd.log'}

[watcher:{TYPE_NAME}]
cmd = {farm.argv[0]}
args = {" ".join(farm.argv[1:])}
numprocesses = {farm.count}
warmup_delay = 0
respawn = True
copy_env = True
graceful_timeout = 10
stop_signal = TERM
stdout_stream.class = FileStream
stdout_stream.filename = {log}
stderr_stream.class = FileStream
stderr_stream.filename = {log}

[env:{TYPE_NAME}]
{env}""")

    def command(self, workdir: Path) -> list[str]:
        return [str(VENV / "bin" / "circusd"), str(self._ini(workdir))]

    def _ctl(self, workdir: Path) -> list[str]:
        return [str(VENV / "bin" / "circusctl"), "--endpoint", self._endpoint(workdir), "--timeout", "60"]

    def scale_commands(self, farm: Farm, workdir: Path, count: int, current: int) -> list[list[str]]:
        if current == 0:
            # a watcher with numprocesses = 0 is stopped: incr, then start it
            return [self._ctl(workdir) + ["incr", TYPE_NAME, str(count)],
                    self._ctl(workdir) + ["start", TYPE_NAME]]
        op = "incr" if count > current else "decr"
        return [self._ctl(workdir) + [op, TYPE_NAME, str(abs(count - current))]]

    def status_command(self, workdir: Path) -> list[str] | None:
        return self._ctl(workdir) + ["status"]


# ============================================================================ exec-supervisor

def exec_supervisor_bin() -> Path | None:
    """The real console script next to this interpreter: a pyenv shim would add
    ~100 ms of bash forks to every start and every status call."""
    here = Path(sys.executable).parent / "exec-supervisor"
    if here.exists():
        return here
    found = shutil.which("exec-supervisor")
    return Path(found) if found else None


class ExecSupervisor(Adapter):
    name = "exec-supervisor"
    blurb = "this repository, from the current interpreter's install"

    def __init__(self) -> None:
        self._help: str | None = None

    def _help_text(self, *sub: str) -> str:
        exe = exec_supervisor_bin()
        if exe is None:
            return ""
        try:
            r = _run_quiet([str(exe), *sub, "--help"], timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return r.stdout + r.stderr if r.returncode == 0 else ""

    def available(self) -> str | None:
        if exec_supervisor_bin() is None:
            return "no exec-supervisor console script (pip install -e .)"
        if not self._help_text("start"):
            return "`exec-supervisor start` does not exist yet"
        return None

    @property
    def supports_scale(self) -> bool:  # type: ignore[override]
        return bool(self._help_text("scale")) and bool(self._help_text("status"))

    def versions(self) -> dict[str, str]:
        try:
            import exec_supervisor
            return {"exec-supervisor": exec_supervisor.__version__}
        except ImportError:
            return {"exec-supervisor": "?"}

    def settings(self, farm: Farm) -> dict[str, str]:
        return {
            "start_seconds": f"{farm.start_seconds:g}",
            "backoff": "initial 0s, max 1s, factor 2, jitter 0 (restart at once)",
            "stop_timeout": "10s",
            "incidents": "off (the restart workload's 20 kills in a few seconds are, by design, an incident "
                         "that paces restarts; the features section measures them switched on)",
            "http.listen": "unset (the features section measures the listener switched on)",
            "supervisor.max_instances": f"N when N >= {MAX_INSTANCES_FROM} (the default, a quarter of "
                                        "kernel.pid_max, is below 10,000 on a 32768 pid_max)",
            "events.forward": "true (events workload only)" if farm.forward_events else "false",
            "log_max_bytes": f"{farm.log_max_bytes}" if farm.log_max_bytes else "default",
            "args": "[] (the instance programs take no --service-host/--id)",
        }

    def _conf(self, workdir: Path) -> Path:
        return workdir / "farm.yaml"

    def write_config(self, farm: Farm, workdir: Path) -> None:
        defaults: dict[str, object] = {
            "start_seconds": farm.start_seconds,
            "backoff": {"initial": "0s", "max": "1s", "factor": 2, "jitter": 0},
            "stop_timeout": "10s",
        }
        if farm.log_max_bytes:
            defaults["log_max_bytes"] = farm.log_max_bytes
        # incidents off unless a workload says otherwise (features on/off): see settings()
        defaults["incidents"] = farm.extra.get("incidents", False)
        supervisor: dict[str, object] = {"name": "bench", "state_dir": str(workdir / "state"),
                                         "log_dir": str(workdir / "logs")}
        if farm.count >= MAX_INSTANCES_FROM:
            supervisor["max_instances"] = farm.count
        conf = {
            "service": {"host": farm.service_url},
            "supervisor": supervisor,
            "events": {"forward": farm.forward_events},
            "defaults": defaults,
            "executors": {TYPE_NAME: {"command": farm.argv, "args": [], "count": farm.count,
                                      "env": farm.env, **dict(farm.extra.get("executor_keys") or {})}},
        }
        if farm.extra.get("http_listen"):
            conf["http"] = {"listen": farm.extra["http_listen"]}
        # JSON is valid YAML and needs no quoting rules of our own
        self._conf(workdir).write_text(json.dumps(conf, indent=2) + "\n")

    def command(self, workdir: Path) -> list[str]:
        return [str(exec_supervisor_bin()), "start", str(self._conf(workdir))]

    def scale_commands(self, farm: Farm, workdir: Path, count: int, current: int) -> list[list[str]]:
        return [[str(exec_supervisor_bin()), "scale", "-c", str(self._conf(workdir)),
                 TYPE_NAME, str(count), "--wait"]]

    def status_command(self, workdir: Path) -> list[str] | None:
        return [str(exec_supervisor_bin()), "status", "-c", str(self._conf(workdir)), "--json"]

    def status_table_command(self, workdir: Path) -> list[str]:
        return [str(exec_supervisor_bin()), "status", "-c", str(self._conf(workdir))]

    def control_socket(self, workdir: Path) -> Path:
        return workdir / "state" / "control.sock"


# ============================================================================ the limit

class Limit(Adapter):
    name = "limit"
    blurb = "bench/limit_loop.py: posix_spawn + pidfd/epoll respawn, nothing else"

    def settings(self, farm: Farm) -> dict[str, str]:
        return {"spawn": "os.posix_spawn, setsid, stdout/stderr opened by the child",
                "restart": "at once on pidfd readiness", "stop": "SIGTERM to all, reap via pidfds"}

    def write_config(self, farm: Farm, workdir: Path) -> None:
        (workdir / "limit.json").write_text(json.dumps({
            "argv": farm.argv, "count": farm.count, "env": farm.env,
            "log_dir": str(workdir / "logs")}))

    def command(self, workdir: Path) -> list[str]:
        return [sys.executable, str(BENCH / "limit_loop.py"), str(workdir / "limit.json")]


def all_adapters() -> list[Adapter]:
    return [ExecSupervisor(), Supervisord(), Circus(), Circus(check_delay=0.1), Limit()]


def env_base() -> dict[str, str]:
    """Environment for supervisors: ours minus anything that would change their behaviour."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "COV_", "BENCH_"))}
    return env
