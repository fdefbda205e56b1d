"""A full state_dir: events lost while it is full leave a visible seq gap and one events_lost
notice once space is back; operator commands take effect or fail cleanly, never later.

The state_dir is a small tmpfs mounted for the test (root on these machines; skipped otherwise).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Farm, wait_until
from exec_supervisor.devservice import DevService
from exec_supervisor.events.messages import format_message
from exec_supervisor.events import Event
from test_control import cli, ok, status

SLEEP = shutil.which("sleep")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "state"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs (run as root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def svc() -> Iterator[DevService]:
    service = DevService().start()
    yield service
    service.stop()


class Filler:
    """Keeps the file system under directory full: takes every free page, and every page freed
    later (the spool deletes delivered segments), until stopped; then gives the space back."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "filler"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        self._stop = threading.Event()
        self._fill()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        for size in (1 << 20, 4096):
            while True:
                try:
                    os.write(self.fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self._fill()

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        os.close(self.fd)
        self.path.unlink()


def supervisor_seqs(svc: DevService) -> set[int]:
    return {e["seq"] for e in list(svc.entries) if isinstance(e.get("seq"), int)}


def of_kind(svc: DevService, kind: str) -> list[dict[str, Any]]:
    seen: dict[int, dict[str, Any]] = {}
    for entry in list(svc.entries):
        if entry.get("event") == kind:
            seen.setdefault(entry["seq"], entry)
    return list(seen.values())


def test_events_lost_on_a_full_state_dir_are_announced_and_commands_fail_cleanly(
        small_disk: Path, farm: Farm, svc: DevService) -> None:
    # Before: a failed spool append consumed no seq (the service saw no gap and was never told),
    # and scale/stop answered 500 yet took effect at the next unrelated reconcile.
    farm.state_dir = small_disk
    farm.write({"Crashy": farm.program("exit-after:0.1:3", count=1), "B": {"command": [SLEEP, "10000"],
                "args": [], "count": 1}},
               service={"host": svc.url}, events={"forward": True, "min_level": "info"},
               defaults={"start_seconds": 5, "backoff": {"initial": 0.05, "max": 0.1, "jitter": 0}})
    farm.start()
    farm.wait_log("ET-B-0: running", timeout=30)
    assert svc.wait_for(lambda es: sum(e.get("event") == "crashed" for e in es) >= 3, 20), farm.log()
    filler = Filler(small_disk)
    try:
        wait_until(lambda: (status(farm)["supervisor"]["backlog"] or {}).get("lost", 0) >= 2, 30,
                   what="events lost to the full state_dir")
        # an operator command that cannot be recorded fails now, cleanly, and is not applied later
        result = cli(farm, "scale", "B", "3")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "nothing was changed" in result.stderr and "Traceback" not in result.stderr, result.stderr
        result = cli(farm, "stop", "B")
        assert result.returncode == 1 and "nothing was changed" in result.stderr, result.stderr
        ok(farm, "reload")  # an unrelated reconcile: before, it applied the failed scale
        wait_until(lambda: "ET-B-0" in farm.instances(), 5)
        assert sorted(k for k in farm.instances() if k.startswith("ET-B")) == ["ET-B-0"]
        assert {t["type"]: t["desired"] for t in status(farm)["types"]}["B"] == 1
        # space comes back: one events_lost notice, and the gap it announces is exactly what is missing
    finally:
        filler.release()
    assert svc.wait_for(lambda es: any(e.get("event") == "events_lost" for e in es), 30), farm.log()[-3000:]
    [entry] = of_kind(svc, "events_lost")
    notice = entry["detail"]
    assert entry["level"] == "error"
    assert notice["lost"] >= 2 and notice["first_seq"] <= notice["last_seq"] < entry["seq"]
    assert "lost" in entry["message"] and str(notice["first_seq"]) in entry["message"]
    # later events keep arriving, and every seq up to the notice is delivered or announced lost
    assert svc.wait_for(lambda es: max(supervisor_seqs(svc)) > entry["seq"] + 2, 20)
    received = supervisor_seqs(svc)
    missing = set(range(1, entry["seq"])) - received
    assert missing, "events were lost: their seqs must be missing"
    assert len(missing) == notice["lost"], (len(missing), notice)
    assert min(missing) == notice["first_seq"] and max(missing) == notice["last_seq"]
    assert len(of_kind(svc, "events_lost")) == 1
    assert "Traceback" not in farm.log()
    ok(farm, "scale", "B", "3", "--wait")  # with space, the same command works
    assert farm.stop() == 0


def test_events_lost_message_in_both_languages() -> None:
    detail = {"lost": 12, "by_level": {"error": 4, "info": 8}, "first_seq": 100, "last_seq": 111,
              "reason": "No space left on device"}
    event = Event(event="events_lost", level="error", supervisor="farm", detail=detail)
    english = format_message(event, "en")
    chinese = format_message(event, "zh")
    assert "12" in english and "100-111" in english and "No space left on device" in english
    assert "12" in chinese and "100-111" in chinese and "丢失" in chinese
