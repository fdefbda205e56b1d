"""Validation in a short-lived child: the child's side, and the reading of its answer.

The daemon never imports pydantic or PyYAML (together with the models about 12 MiB that
would stay resident for the daemon's life). It runs `CHILD_CODE` with its own interpreter,
and the child runs load() and prints one JSON line: the FarmConfig (farm.py's JSON form)
or its problems. A pathological YAML (an alias bomb, say) then costs the child's memory,
never the daemon's. Apart from the child's main(), the one OS call here is PendingCheck: the
child started with subprocess, as `start` does before anything else (it validates while the
daemon imports itself) and before the engine reaps children; once the engine runs, a reload
spawns it through the engine (daemon/readconfig.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, Problem
from .farm import FarmConfig, farm_from_json, farm_to_json

# What the child runs (python -c). Its sys.path[0] (the caller's working directory for -c) is
# replaced by the folder this package was imported from: the child validates with the daemon's
# own code, never with a source tree that happens to be in the working directory.
CHILD_CODE = ("import sys; sys.path[0] = sys.argv[1]; "
              "from exec_supervisor.config.validate import main; sys.exit(main(sys.argv[2]))")
# Bounds of the answer the daemon reads (a FarmConfig of 10,000 ids is about 70 KB).
ANSWER_MAX_BYTES = 64 * 1024 * 1024
TIMEOUT_SECONDS = 120.0


class PendingCheck:
    """The validating child of one config file, started now; result() waits for its answer."""

    def __init__(self, config_path: str | Path) -> None:
        import subprocess

        self.config_path = config_path
        self._process = subprocess.Popen(child_argv(config_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT)

    def result(self, timeout: float = TIMEOUT_SECONDS) -> FarmConfig:
        """The FarmConfig, or ConfigError (its problems, or why the child gave no answer in time)."""
        import subprocess

        try:
            output, _ = self._process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            raise ConfigError([Problem(str(self.config_path), None, "",
                                       f"cannot be validated within {timeout:g}s (is the file built to be slow "
                                       "to read?)")]) from None
        return farm_from_answer(self.config_path, output, self._process.returncode)


def child_argv(config_path: str | Path) -> list[str]:
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    return [sys.executable, "-c", CHILD_CODE, package_parent, str(config_path)]


def main(config_path: str) -> int:
    """The child: one JSON line on stdout; exit 0 (a farm) or 2 (its problems)."""
    from .loader import load

    try:
        farm = load(config_path)
    except ConfigError as exc:
        problems = [[p.file, p.line, p.key, p.message] for p in exc.problems]
        sys.stdout.write(json.dumps({"problems": problems}) + "\n")
        return 2
    sys.stdout.write('{"farm":' + farm_to_json(farm) + "}\n")
    return 0


def farm_from_answer(config_path: str | Path, output: bytes, exit_code: int) -> FarmConfig:
    """The child's FarmConfig, or ConfigError: its problems, or one saying why there is no answer."""
    answer: Any = None
    lines = output.decode(errors="replace").strip().splitlines()
    if lines and lines[-1].startswith("{"):
        try:
            answer = json.loads(lines[-1])
        except ValueError:
            answer = None
    if isinstance(answer, dict) and exit_code == 2 and isinstance(answer.get("problems"), list):
        raise ConfigError([Problem(str(f), line, str(key), str(message))
                           for f, line, key, message in answer["problems"]])
    if isinstance(answer, dict) and exit_code == 0 and isinstance(answer.get("farm"), dict):
        try:
            return farm_from_json(answer["farm"])
        except (KeyError, TypeError, ValueError) as exc:
            why = f"its answer is not a config ({type(exc).__name__})"
    else:
        # The last line of a crash (MemoryError, say), never a whole traceback.
        last = next((line for line in reversed(lines) if line.strip()), "")
        how = f"exit status {exit_code}" if exit_code >= 0 else f"killed by signal {-exit_code}"
        why = f"the checking process failed ({how}{': ' + last[:300] if last else ''})"
    raise ConfigError([Problem(str(config_path), None, "", f"cannot be validated: {why}")])
