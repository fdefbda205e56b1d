"""Incidents: correlated failures become one incident on the log page; restarts stop stampeding.

Real daemons, real executors (tests/programs/outage.py fails while a cause file exists) and a
recording log API on loopback (DevService). Windows and intervals are small to keep this short.
"""

from __future__ import annotations

import json
import os
import re
import signal as sig
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Farm, wait_until
from exec_supervisor.control.client import UnixHTTPConnection
from exec_supervisor.devservice import DevService
from exec_supervisor.supervise.incidents import normalise

OUTAGE = Path(__file__).resolve().parent / "programs" / "outage.py"


@pytest.fixture
def svc() -> Iterator[DevService]:
    service = DevService().start()
    yield service
    service.stop()


def outage_type(cause: Path, count: int, own: Path | None = None, **extra: Any) -> dict[str, Any]:
    args = [str(cause)] + ([str(own) + "-{id}"] if own is not None else [])
    return {"command": [sys.executable, str(OUTAGE)], "args": args, "count": count, **extra}


def write(farm: Farm, svc: DevService, executors: dict[str, dict[str, Any]], incidents: dict[str, Any],
          start_seconds: float = 0.3, backoff: dict[str, Any] | None = None) -> None:
    farm.write(executors, service={"host": svc.url}, events={"forward": True, "min_level": "info"},
               defaults={"start_seconds": start_seconds, "stop_timeout": 2,
                         "backoff": backoff or {"initial": 0.2, "max": 1, "jitter": 0},
                         "incidents": incidents})


def of_kind(entries: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("event") == kind]


def api_get(farm: Farm, path: str) -> dict[str, Any]:
    connection = UnixHTTPConnection(str(farm.state_dir / "control.sock"), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200, response.status
        return json.loads(response.read())
    finally:
        connection.close()


def cli(farm: Farm, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli", *args, "-c", str(farm.config_path)],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode in (0, 4) and "Traceback" not in result.stderr, (result.stdout, result.stderr)
    return result.stdout


def starts(farm: Farm) -> dict[str, list[float]]:
    """exec id -> the times its executor printed its start line, from each instance's log file."""
    found: dict[str, list[float]] = {}
    for path in farm.log_dir.glob("*.log"):
        found[path.stem] = [float(t) for t in re.findall(r"started t=([\d.]+)", path.read_text(errors="replace"))]
    return found


def test_an_outage_of_20_instances_is_one_incident_with_every_seq_accounted(farm: Farm, svc: DevService,
                                                                           tmp_path: Path) -> None:
    cause = tmp_path / "service-down"
    cause.write_text("down")
    incidents = {"threshold": 3, "window": "5s", "digest_every": "1s", "resolve_after": "1s",
                 "group_wait": "0.3s", "restart_batch": 20, "restart_every": "0.2s"}
    # start_seconds well above a Python executor's start-up under load: a failing one never counts as up.
    write(farm, svc, {"Api": outage_type(cause, 20)}, incidents, start_seconds=1.0)
    farm.start()
    assert svc.wait_for(lambda es: of_kind(es, "incident_opened"), 20), svc.messages()
    assert svc.wait_for(lambda es: len(of_kind(es, "incident_digest")) >= 2, 20), svc.messages()
    # While it is open, its restarts are paced: one probe per shared backoff interval, not 20 per round.
    paced_from = time.time()
    assert svc.wait_for(lambda es: len(of_kind(es, "incident_digest")) >= 4, 20), svc.messages()
    shown = cli(farm, "incidents")
    assert re.search(r"INC-1 \(Api\): open for .*, \d+/20 down, \d+ failures of 20 instances", shown), shown
    assert "INC-1 (Api): open" in cli(farm, "status")
    during = sum(1 for times in starts(farm).values() for t in times if t >= paced_from)
    cause.unlink()
    removed = time.time()
    assert svc.wait_for(lambda es: of_kind(es, "incident_resolved"), 30), svc.messages()
    wait_until(lambda: len(farm.instances()) == 20, 10, what="all 20 running")
    entries = list(svc.entries)
    assert len(of_kind(entries, "incident_opened")) == 1
    assert len(of_kind(entries, "incident_resolved")) == 1
    opened = of_kind(entries, "incident_opened")[0]
    resolved = of_kind(entries, "incident_resolved")[0]
    detail = opened["detail"]
    assert detail["types"] == ["Api"] and detail["scope"] == "type" and detail["of"] == 20
    assert detail["failed"] >= 3 and detail["exit"] == "exit code 1"
    assert detail["line"] == "ConnectionRefusedError: [Errno <n>] Connection refused: <addr>:<n>"
    assert re.fullmatch(r"ConnectionRefusedError: \[Errno 111\] Connection refused: 127\.0\.0\.1:\d+",
                        detail["example"]["line"])
    assert "ConnectionRefusedError" in opened["message"] and opened["level"] == "error"
    assert sorted(resolved["detail"]["exec_ids"]) == sorted(f"ET-Api-{i}" for i in range(20))
    # No instance event reached the log API while it was open.
    inside = [e for e in entries if e.get("exec_id") and opened["seq"] < e["seq"] < resolved["seq"]]
    assert inside == []
    # Digests at the configured interval (at most one per second), each saying what it folded.
    digests = of_kind(entries, "incident_digest")
    stamps = [time.mktime(time.strptime(d["time"][:19], "%Y-%m-%dT%H:%M:%S")) + float("0." + d["time"][20:23])
              for d in digests if not d["detail"].get("final")]
    assert all(b - a >= 0.9 for a, b in zip(stamps, stamps[1:])), stamps
    assert all(d["detail"]["failures"] >= 0 and "restart_spacing" in d["detail"] for d in digests)
    # Every seq is either received or covered by a digest's range; the folded counts add up.
    received = {e["seq"] for e in entries}
    covered: set[int] = set()
    folded = 0
    for digest in digests:
        if digest["detail"]["folded"]:
            covered |= set(range(digest["detail"]["first_seq"], digest["detail"]["last_seq"] + 1))
            folded += digest["detail"]["folded"]
    last = max(received)
    assert set(range(1, last + 1)) <= received | covered
    assert folded == len(covered - received) and folded > 20
    assert all(e["seq"] > resolved["seq"] or e["seq"] not in covered or not e.get("exec_id") for e in entries)
    # Nothing is lost: the folded events are in the daemon's log and the control API with their seq.
    assert re.search(r"ET-Api-\d+: .* \(folded into incident INC-1, seq \d+\)", farm.log())
    events = api_get(farm, "/v1/events?n=1000")["events"]
    assert any(e["folded"] == "INC-1" and e["seq"] for e in events)
    assert api_get(farm, "/v1/events?n=1")["backlog"]["folded"] == folded
    # Paced while open: far fewer starts than 20 per backoff round (about 3 seconds at a 1 s cap).
    assert during < 20, during
    # The farm comes back as one: every instance started within one backoff interval (cap 1 s)
    # of the probe staying up (start_seconds 1 after its start).
    after = sorted(t for times in starts(farm).values() for t in times if t >= removed)
    last_starts = [max(times) for times in starts(farm).values()]
    assert max(last_starts) - after[0] <= 1.0 + 1.0, (after[0], sorted(last_starts))
    # And the incident is listed as recent.
    assert re.search(r"recent\n  INC-1 \(Api\): resolved .* ago after", cli(farm, "incidents"))
    view = api_get(farm, "/v1/incidents")
    assert view["open"] == [] and view["recent"][0]["incident"] == "INC-1"
    farm.stop()


def test_threshold_counts_distinct_instances_not_restarts(farm: Farm, svc: DevService, tmp_path: Path) -> None:
    cause = tmp_path / "service-down"
    own = tmp_path / "own"
    write(farm, svc, {"Api": outage_type(cause, 20, own)},
          {"threshold": 3, "window": "60s", "digest_every": "1s", "resolve_after": "1s", "group_wait": 0})
    farm.start()
    farm.wait_log("20 instances")
    wait_until(lambda: sum(len(t) for t in starts(farm).values()) >= 20, 20, what="20 starts")
    Path(f"{own}-0").write_text("2")  # instance 0 crashes twice
    pids = farm.instances()
    os.kill(pids["ET-Api-0"], sig.SIGTERM)  # exit 0 then restart reads its own cause: 2 crashes
    assert svc.wait_for(lambda es: len([e for e in of_kind(es, "crashed") if e["exec_id"] == "ET-Api-0"]) >= 2, 20)
    Path(f"{own}-1").write_text("1")
    os.kill(pids["ET-Api-1"], sig.SIGTERM)
    assert svc.wait_for(lambda es: [e for e in of_kind(es, "crashed") if e["exec_id"] == "ET-Api-1"], 20)
    wait_until(lambda: len(farm.instances()) == 20, 20, what="all running again")
    assert of_kind(list(svc.entries), "incident_opened") == []  # 3 crashes, 2 instances: no incident
    assert api_get(farm, "/v1/incidents")["open"] == []
    Path(f"{own}-2").write_text("1")
    os.kill(pids["ET-Api-2"], sig.SIGTERM)
    assert svc.wait_for(lambda es: of_kind(es, "incident_opened"), 20), svc.messages()
    opened = of_kind(list(svc.entries), "incident_opened")[0]["detail"]
    assert opened["failed"] == 3 and opened["failures"] == 4 and opened["of"] == 20
    assert svc.wait_for(lambda es: of_kind(es, "incident_resolved"), 20), svc.messages()
    farm.stop()


def test_two_failing_types_are_one_farm_wide_incident_and_a_third_is_untouched(farm: Farm, svc: DevService,
                                                                             tmp_path: Path) -> None:
    cause = tmp_path / "service-down"
    cause.write_text("down")
    other = tmp_path / "other-cause"
    other.write_text("down")
    incidents = {"threshold": 3, "window": "5s", "digest_every": "1s", "resolve_after": "1s", "group_wait": "1s"}
    write(farm, svc, {"Web": outage_type(cause, 5), "Jobs": outage_type(cause, 5),
                      "Side": outage_type(other, 2)}, incidents,  # 2 instances: below the threshold
          start_seconds=2.0)  # well above a Python executor's start-up under load: Side never counts as up
    farm.start()
    assert svc.wait_for(lambda es: of_kind(es, "incident_opened"), 20), svc.messages()
    assert svc.wait_for(lambda es: len([e for e in of_kind(es, "crashed") if e["type"] == "Side"]) >= 12, 30)
    cause.unlink()
    assert svc.wait_for(lambda es: of_kind(es, "incident_resolved"), 30), svc.messages()
    other.unlink()
    entries = list(svc.entries)
    opened = of_kind(entries, "incident_opened")
    assert len(opened) == 1, [e["message"] for e in opened]
    assert opened[0]["detail"]["scope"] == "farm" and sorted(opened[0]["detail"]["types"]) == ["Jobs", "Web"]
    assert "farm-wide" in opened[0]["message"]
    # Side: every event posted, its restarts on its own backoff (0.2, 0.4, 0.8, 1, 1 ...: jitter 0).
    side = [e for e in of_kind(entries, "crashed") if e["type"] == "Side"]
    assert all(not e.get("folded_into") for e in side)
    for entry in side:
        assert entry["restart_in"] == pytest.approx(min(1.0, 0.2 * 2 ** (entry["restarts"] - 1)), abs=0.01)
    farm.stop()


def test_incidents_off_keeps_every_event(farm: Farm, svc: DevService, tmp_path: Path) -> None:
    cause = tmp_path / "service-down"
    cause.write_text("down")
    write(farm, svc, {"Api": outage_type(cause, 4)}, "off")  # type: ignore[arg-type]
    farm.start()
    assert svc.wait_for(lambda es: len(of_kind(es, "crashed")) >= 16, 20)
    assert not [e for e in svc.entries if e["event"].startswith("incident_")]
    farm.stop()


def test_normalisation_groups_numbers_and_addresses_not_different_exceptions() -> None:
    a = "ConnectionRefusedError: [Errno 111] Connection refused: 127.0.0.1:8083 (pid 4121, 2026-12-06T07:01:02Z)"
    b = "ConnectionRefusedError: [Errno 111] Connection refused: 10.2.0.17:9000 (pid 77, 2026-12-06T08:11:12Z)"
    c = "ConnectionRefusedError: [Errno 111] Connection refused: [::1]:8083 (pid 5, 2026-12-06T07:01:02.5+00:00)"
    assert normalise(a) == normalise(b)
    assert normalise(a).startswith("ConnectionRefusedError: [Errno <n>] Connection refused: <addr>:<n>")
    assert normalise("TimeoutError: timed out after 30.5s at 0x7f3a2c") == \
        normalise("TimeoutError: timed out after 12s at 0x55d0")
    assert normalise(a) != normalise("TimeoutError: [Errno 110] Connection timed out: 127.0.0.1:8083")
    assert normalise(a) != normalise("PermissionError: [Errno 13] Permission denied: '/dev/nvidia0'")
    assert normalise("CUDA error: out of memory on device 0") != normalise("CUDA error: device-side assert on device 0")
    assert "<addr>" in normalise(c)


def test_incident_messages_in_english_and_chinese() -> None:
    from exec_supervisor.events import Event
    from exec_supervisor.events.messages import format_message

    base = {"incident": "INC-7", "scope": "farm", "types": ["Web", "Jobs"]}
    opened = Event(event="incident_opened", level="error", supervisor="s", detail={
        **base, "failed": 9, "of": 10, "failures": 14, "within": 3.2, "forward": "digest", "digest_every": 60,
        "exit": "exit code 1", "exit_count": 14, "line": "ConnectionRefusedError: <addr>:<n>", "line_count": 12,
        "example": {"exec_id": "ET-Web-3", "exit": "exit code 1", "line": "ConnectionRefusedError: 10.0.0.1:80"}})
    digest = Event(event="incident_digest", level="warning", supervisor="s", detail={
        **base, "failures": 5, "total_failures": 19, "down": 10, "of": 10, "restart_spacing": 4.0, "open_for": 60,
        "folded": 31, "first_seq": 100, "last_seq": 140})
    resolved = Event(event="incident_resolved", level="info", supervisor="s", detail={
        **base, "duration": 125, "failures": 40, "exec_ids": ["ET-Web-0", "ET-Jobs-1"]})
    en = [format_message(e) for e in (opened, digest, resolved)]
    assert en[0].startswith("exec-supervisor@s: farm-wide incident INC-7 (2 types failing together: Web, Jobs) "
                            "opened: 9 of 10 instances failed within 3.2s (14 failures)")
    assert "e.g. ET-Web-3: exit code 1, 'ConnectionRefusedError: 10.0.0.1:80'" in en[0]
    assert "31 instance events folded into this (seq 100-140)" in en[1] and "restarts spaced 4.0s" in en[1]
    assert "resolved after 125s: 40 failures in all, 2 instances hit (ET-Web-0, ET-Jobs-1)" in en[2]
    zh = [format_message(e, "zh") for e in (opened, digest, resolved)]
    assert "全局事件 INC-7" in zh[0] and "10 个实例中有 9 个" in zh[0]
    assert "合并了 31 条实例事件 (seq 100-140)" in zh[1] and "已恢复" in zh[2]
    crashed = Event(event="crashed", level="error", supervisor="s", exec_id="ET-Web-1", type="Web", id=1,
                    exit_code=1, runtime=0.1, restart_in=1.0, restarts=2, output="boom", folded="INC-7", seq=120)
    assert format_message(crashed).split("\n")[0].endswith("(folded into incident INC-7, seq 120)")
