"""End to end: a real `exec-supervisor start` daemon, real crashing executors, a real HTTP service.

The service is the DevService stand-in on 127.0.0.1; events travel through the
daemon's bus, the on-disk spool and the forwarder's sender thread.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Farm, wait_until

from exec_supervisor.devservice import DevService


@pytest.fixture
def svc() -> Iterator[DevService]:
    service = DevService().start()
    yield service
    service.stop()


def crashy_farm(farm: Farm, svc: DevService, ids: str = "0-1") -> None:
    farm.write(
        {"Crashy": farm.program("exit-after:0.2:3", ids=ids)},
        service={"host": svc.url},
        events={"forward": True, "min_level": "info"},
        defaults={"start_seconds": 5},
    )


def seqs_in_order(entries: list[dict[str, Any]]) -> list[int]:
    """First arrival of each seq (at least once allows repeats), checked gapless from 1."""
    seen: list[int] = []
    for entry in entries:
        if entry["seq"] not in seen:
            seen.append(entry["seq"])
    assert seen == list(range(1, len(seen) + 1)), seen
    return seen


def spooled(state_dir: Path) -> list[dict[str, Any]]:
    lines = []
    for segment in sorted((state_dir / "events").glob("*.jsonl")):
        for line in segment.read_bytes().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass  # a line being written right now
    return sorted(lines, key=lambda payload: payload["seq"])


def test_crash_event_carries_exit_code_and_last_output(farm: Farm, svc: DevService) -> None:
    crashy_farm(farm, svc)
    farm.start()
    assert svc.wait_for(lambda es: sum(e.get("event") == "crashed" for e in es) >= 2, 20), farm.log()
    started = next(e for e in svc.entries if e["event"] == "supervisor_started")
    assert started["level"] == "info" and started["message"].startswith("exec-supervisor@test: started 2 instances")
    crash = next(e for e in svc.entries if e["event"] == "crashed")
    assert crash["level"] == "error" and crash["exit_code"] == 3 and crash["signal"] is None
    assert crash["exec_id"] in ("ET-Crashy-0", "ET-Crashy-1") and crash["type"] == "Crashy"
    assert crash["pid"] > 0 and crash["restarts"] >= 1 and crash["supervisor"] == "test"
    head, *output = crash["message"].split("\n")
    assert head.startswith(f"{crash['exec_id']}: crashed with exit code 3 after ")
    assert "restarting in" in head
    # The last lines the instance wrote, in order.
    assert output[-2].startswith(f"{crash['exec_id']}: started mode=exit-after:0.2:3")
    assert output[-1] == f"{crash['exec_id']}: exiting"

    assert farm.stop() == 0
    # The daemon's last words reach the service before it exits.
    assert any(e["event"] == "supervisor_stopped" for e in svc.entries)
    seqs_in_order(svc.entries)


def test_sigkilled_daemon_delivers_its_backlog_after_a_restart(farm: Farm, svc: DevService) -> None:
    svc.stop()  # the service is down (its port stays reserved for the restart below)
    crashy_farm(farm, svc)
    farm.start()
    wait_until(lambda: sum(p["event"] == "crashed" for p in spooled(farm.state_dir)) >= 4, 20,
               what="crash events in the spool")
    farm.daemon.send_signal(signal.SIGKILL)
    farm.daemon.wait(10)
    backlog = spooled(farm.state_dir)
    assert [p["seq"] for p in backlog] == list(range(1, len(backlog) + 1))

    svc.start()
    farm.start()
    last = backlog[-1]["seq"]
    assert svc.wait_for(lambda es: any(e["seq"] > last and e["event"] == "supervisor_started" for e in es), 20), \
        farm.log()
    assert svc.wait_for(lambda es: {e["seq"] for e in es} >= set(range(1, last + 1)), 10)
    arrived = {e["seq"]: e for e in svc.entries}
    for payload in backlog:  # exactly what was spooled before the SIGKILL
        assert {k: v for k, v in arrived[payload["seq"]].items() if not k.startswith("_")} == payload
    seqs_in_order(svc.entries)  # and seq goes on after the restart, no reuse, no gap
    assert farm.stop() == 0
