"""Memory of `run-one` next to the full daemon and to the executor it supervises.

    python bench/runone_rss.py

Starts, on one config of one `sleep` executor: `exec-supervisor run-one` (files and --log-to
stdout), `exec-supervisor start` (the daemon with the same one instance), and reads
/proc/<pid>/smaps_rollup of each supervisor, of the executor and of a bare Python interpreter
sleeping. Prints RSS, PSS and private memory in MiB, and the ratios to the executor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXECUTOR = ROOT / "tests" / "programs" / "misbehaving.py"


def rollup(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) / 1024
    return {"rss": values["Rss"], "pss": values["Pss"],
            "private": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)}


def settle(process: subprocess.Popen[bytes], seconds: float = 3.0) -> None:
    time.sleep(seconds)
    if process.poll() is not None:
        raise SystemExit(f"{process.args} exited with {process.returncode}")


def children(pid: int) -> list[int]:
    """Children of every thread (the supervisor spawns from its loop thread)."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        found += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return found


def main() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "farm.yaml"
        config.write_text(
            f"service: {{host: 'http://127.0.0.1:9/'}}\n"
            f"supervisor: {{name: bench, state_dir: {tmp}/state, log_dir: {tmp}/logs}}\n"
            f"executors:\n  Test: {{command: ['{{python}}', {EXECUTOR}], ids: 0, env: {{ET_TEST_MODE: sleep}}}}\n"
        )
        cli = [sys.executable, "-m", "exec_supervisor.cli"]
        rows: list[tuple[str, dict[str, float]]] = []
        executor = None
        for label, args in [
            ("run-one (log file)", ["run-one", str(config), "--id", "0"]),
            ("run-one --log-to stdout", ["run-one", str(config), "--id", "0", "--log-to", "stdout"]),
            ("daemon (start), 1 instance", ["start", str(config)]),
        ]:
            process = subprocess.Popen(cli + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                settle(process)
                rows.append((label, rollup(process.pid)))
                kids = children(process.pid)
                if executor is None and kids:
                    executor = rollup(kids[0])
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            settle(bare, 1.0)
            rows.append(("bare python3 (sleeping)", rollup(bare.pid)))
        finally:
            bare.kill()
            bare.wait()
        assert executor is not None
        rows.append(("the executor (python, sleeping)", executor))
        print(f"{'process':<34} {'RSS':>7} {'PSS':>7} {'private':>8}   RSS / executor's")
        for label, values in rows:
            print(f"{label:<34} {values['rss']:7.1f} {values['pss']:7.1f} {values['private']:8.1f}   "
                  f"{values['rss'] / executor['rss']:.2f}x")


if __name__ == "__main__":
    main()
