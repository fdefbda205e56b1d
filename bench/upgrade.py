"""In-place upgrade of a farm of N executors: how long it takes, and that no executor noticed.

    python bench/upgrade.py [--n 1000] [--repeats 3]

Runs a real daemon on a temporary farm of N `sleep` executors, then `exec-supervisor upgrade`
`--repeats` times. For each upgrade: the time from launching the command to the daemon's
`upgraded` event (and the event's own phases: the check of the installed code, the handover,
the new image's start), and whether every executor pid and the daemon's pid are unchanged
(read from /proc, not from the daemon). Baselines in the same run: a no-op `reload` (the
floor of any control command on this farm) and what an upgrade cost before: `shutdown` then
`start` until N run again, which restarts every executor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from exec_supervisor.control.client import Client, ClientError  # noqa: E402

CLI = [sys.executable, "-m", "exec_supervisor.cli"]


def executors(daemon_pid: int) -> dict[str, int]:
    """exec id -> pid of each live child of the daemon carrying ET_EXEC_ID (from /proc)."""
    found = {}
    for tid in os.listdir(f"/proc/{daemon_pid}/task"):
        try:
            children = Path(f"/proc/{daemon_pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for pid in map(int, children):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"ET_EXEC_ID="):
                    found[item[11:].decode()] = pid
    return found


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def running(client: Client) -> int:
    try:
        status, data = client.call("GET", "/v1/status", timeout=30)
    except ClientError:
        return 0
    return data["supervisor"]["running"] if status == 200 else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="es-bench-upgrade-"))
    config = work / "farm.yaml"
    config.write_text(yaml.safe_dump({
        "service": {"host": "http://127.0.0.1:9/"},
        "supervisor": {"name": "bench-upgrade", "state_dir": str(work / "state"), "log_dir": str(work / "logs"),
                       "on_restart": "stop"},
        "events": {"forward": False},
        "defaults": {"start_seconds": 1, "stop_timeout": 5},
        "executors": {"Work": {"command": [shutil.which("sleep"), "100000"], "args": [], "count": args.n}},
    }))
    client = Client(work / "state" / "control.sock", timeout=60)
    log = open(work / "daemon.log", "wb")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*CLI, "start", str(config), "-q"], stdout=log, stderr=log, cwd=work)

    daemon = start()
    results: dict[str, Any] = {"n": args.n, "upgrades": []}
    try:
        wait(lambda: running(client) == args.n, 300, f"{args.n} running")
        for _ in range(args.repeats):
            before = executors(daemon.pid)
            assert len(before) == args.n, len(before)
            t0 = time.time()
            done = subprocess.run([*CLI, "upgrade", "-c", str(config)], capture_output=True, text=True, timeout=300)
            took_cli = time.time() - t0
            if done.returncode != 0:
                raise SystemExit(f"upgrade failed: {done.stderr}")
            events = client.call("GET", "/v1/events?n=1000")[1]["events"]
            upgraded = [e for e in events if e["event"] == "upgraded"][-1]
            after = executors(daemon.pid)
            results["upgrades"].append({
                "to_upgraded_event": round(upgraded["time"] - t0, 3),
                "command": round(took_cli, 3),
                "phases": upgraded["detail"]["phases"],
                "carried": upgraded["detail"]["instances"],
                "executor_pids_unchanged": after == before,
                "daemon_pid_unchanged": daemon.poll() is None and client.call("GET", "/v1/health")[1]["pid"] == daemon.pid,
            })
            print(json.dumps(results["upgrades"][-1]), flush=True)
            time.sleep(1)

        reloads = []
        for _ in range(args.repeats):
            t0 = time.time()
            subprocess.run([*CLI, "reload", "-c", str(config)], capture_output=True, timeout=300, check=True)
            reloads.append(time.time() - t0)
        results["noop_reload"] = round(statistics.median(reloads), 3)

        # What an upgrade meant before: the daemon stops every executor, and a new one starts them all.
        before = executors(daemon.pid)
        t0 = time.time()
        subprocess.run([*CLI, "shutdown", "-c", str(config)], capture_output=True, timeout=300, check=True)
        daemon.wait(60)
        daemon = start()
        wait(lambda: running(client) == args.n, 300, f"{args.n} running again")
        results["restart_daemon"] = round(time.time() - t0, 3)
        results["restart_daemon_executors_restarted"] = len(set(before.values()) - set(executors(daemon.pid).values()))
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
        log.close()
    ups = results["upgrades"]
    median = statistics.median(u["to_upgraded_event"] for u in ups)
    results["median_upgrade"] = median
    print(json.dumps(results, indent=2))
    print(f"\nN={args.n}: upgrade {median:.2f} s median (command to `upgraded`), "
          f"{sum(u['executor_pids_unchanged'] for u in ups)}/{len(ups)} with every executor pid unchanged; "
          f"no-op reload {results['noop_reload']:.2f} s ({median / results['noop_reload']:.1f}x); "
          f"shutdown + start {results['restart_daemon']:.2f} s ({results['restart_daemon'] / median:.1f}x the upgrade), "
          f"restarting {results['restart_daemon_executors_restarted']} executors")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
