"""`export supervisord`: the farm as a supervisord.conf fragment (for conf.d / [include]).

    [program:et-<type>]            per type and contiguous id range (a further range at N:
                                   et-<type>-<N>): numprocs, numprocs_start, process_name
                                   ET-<Type>-%(process_num)d, the executor's own command line with
                                   %(process_num)d as the id, the ET_* environment, cwd,
                                   stopasgroup/killasgroup, startsecs, stopwaitsecs, stopsignal,
                                   autorestart/exitcodes from the restart policy, the log file
    [eventlistener:exec-supervisor] `exec-supervisor supervisord-listener CONFIG`, PROCESS_STATE
                                   events -> our lifecycle events, spooled and forwarded

supervisord runs the executors itself (not run-one): the listener gives back the events.
What supervisord cannot express is said in the fragment's head (exponential backoff, jitter,
retrying forever, output tails in crash events). Written with configparser (no interpolation,
so supervisord's own %(...)s expansions pass through); literal '%' in values is doubled.
Reads only config/. Must not: write a secret (service.auth's variables are read by the
listener from supervisord's environment).
"""

from __future__ import annotations

import configparser
import io
import os

from ..config import FarmConfig
from ..config.farm import placeholder_values
from ..supervise.osproc import signal_name
from .common import ExportError, executable, id_ranges

LISTENER = "exec-supervisor"
PROCESS_NUM = "%(process_num)d"
MARK = "\0process_num\0"  # stands for the id while a command line is filled in
RETRIES_FOREVER = 1000  # supervisord has no "forever": this many failed starts in a row -> FATAL
STOP_MARGIN_SECONDS = 5  # stopwaitsecs above stop_timeout: the executor's own graceful stop first


def _percent(text: str) -> str:
    """A value for supervisord: literal % doubled, the id placeholder as %(process_num)d."""
    return text.replace("%", "%%").replace(MARK, PROCESS_NUM)


def _word(text: str) -> str:
    """One word of a supervisord command line (split with shlex, so quote like a shell)."""
    import shlex

    return shlex.quote(text)


def _env_value(text: str) -> str:
    # supervisord parses KEY="value",KEY2="value2": a quote or backslash is escaped.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def program_command(cfg: FarmConfig, type_name: str) -> str:
    executor = cfg.executors[type_name]
    values = placeholder_values(type_name, 0, cfg.service.host)
    values.update(id=MARK, exec_id=f"ET-{type_name}-{MARK}")
    argv = [cfg.programs[type_name], *(a.format_map(values) for a in executor.command[1:]),
            *(a.format_map(values) for a in executor.args)]
    return _percent(" ".join(_word(a) for a in argv))


def program_sections(cfg: FarmConfig, type_name: str) -> list[tuple[str, dict[str, str]]]:
    executor = cfg.executors[type_name]
    env = dict(sorted(executor.env.items()))
    env.update(ET_EXEC_ID=f"ET-{type_name}-{MARK}", ET_NAME=type_name, ET_ID=MARK, ET_SERVICE_HOST=cfg.service.host)
    restart = {"always": "true", "on-failure": "unexpected", "never": "false"}[executor.restart]
    retries = executor.max_restarts if executor.max_restarts is not None else RETRIES_FOREVER
    sections = []
    for index, (first, last) in enumerate(id_ranges(cfg.ids_of(type_name))):  # with hosts: this host's share
        name = f"et-{type_name.lower()}" + (f"-{first}" if index else "")
        sections.append((f"program:{name}", {
            "command": program_command(cfg, type_name),
            "process_name": f"ET-{type_name}-{PROCESS_NUM}",
            "numprocs": str(last - first + 1),
            "numprocs_start": str(first),
            "directory": _percent(executor.cwd),
            "environment": ",".join(f"{k}={_percent(_env_value(v))}" for k, v in env.items()),
            "autostart": "true",
            "autorestart": restart,
            "exitcodes": ",".join(str(c) for c in executor.success_exit_codes),
            "startsecs": str(int(round(executor.start_seconds))),
            "startretries": str(retries),
            "stopsignal": signal_name(executor.stop_signal).removeprefix("SIG"),
            "stopwaitsecs": str(int(round(executor.stop_timeout)) + STOP_MARGIN_SECONDS),
            "stopasgroup": "true",
            "killasgroup": "true",
            "redirect_stderr": "true",
            "stdout_logfile": _percent(os.path.join(str(cfg.log_dir), f"ET-{type_name}-{MARK}.log")),
            "stdout_logfile_maxbytes": str(executor.log_max_bytes),
            "stdout_logfile_backups": str(executor.log_backups),
        }))
    return sections


def render(cfg: FarmConfig, command: list[str] | None = None) -> str:
    exe = command or executable()
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keep keys as written
    seen: dict[str, str] = {}
    for type_name in cfg.executors:
        if not cfg.ids_of(type_name):
            continue  # numprocs cannot be 0
        for section, values in program_sections(cfg, type_name):
            if section in seen:
                raise ExportError(f"{cfg.path.name}: executors.{type_name}: [{section}] clashes with one of "
                                  f"{seen[section]} (type names that differ only in case)")
            seen[section] = type_name
            parser[section] = values
    parser[f"eventlistener:{LISTENER}"] = {
        "command": _percent(" ".join(_word(a) for a in [*exe, "supervisord-listener", str(cfg.path)])),
        "events": "PROCESS_STATE",
        "buffer_size": "10000",
        "autostart": "true",
        "autorestart": "true",
        "startsecs": "1",
        "stopwaitsecs": "10",
        # stdout is the protocol's channel; the listener's own log lines go to stderr.
        "stderr_logfile": _percent(os.path.join(str(cfg.log_dir), "exec-supervisor-listener.log")),
    }
    out = io.StringIO()
    parser.write(out)
    head = (f"; {cfg.path}: exec-supervisor export supervisord. Include it from supervisord.conf\n"
            f"; ([include] files = ...); the listener needs [unix_http_server] or [inet_http_server] and\n"
            "; [rpcinterface:supervisor] (for exit codes and log paths) and service.auth's variables in\n"
            "; supervisord's environment. Not expressible in supervisord: exponential backoff and jitter\n"
            f"; (supervisord waits 1, 2, 3 ... s between failed starts), retrying forever ({RETRIES_FOREVER}\n"
            "; failed starts in a row -> FATAL), restart_window, which signal killed an instance.\n")
    return head + out.getvalue()
