"""The on-disk event spool: real files, real crashes (SIGKILLed subprocesses), no mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exec_supervisor.events.spool import STATE_FILE, Spool, SpoolError

ROOT = Path(__file__).resolve().parent.parent


def body(level: str = "info", **extra: object) -> bytes:
    return json.dumps({"level": level, "message": "x", **extra}).encode()


def seqs(spool: Spool) -> list[int]:
    return [record.seq for record in spool.pending()]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def test_append_peek_ack_in_seq_order_across_levels(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    levels = ["info", "error", "debug", "info", "warning", "error"]
    assigned = [spool.append(level, body(level, n=i)) for i, level in enumerate(levels)]
    assert assigned == [1, 2, 3, 4, 5, 6]
    delivered = []
    while (record := spool.peek()) is not None:
        payload = record.payload()
        assert payload["seq"] == record.seq and payload["level"] == record.level
        assert list(payload)[0] == "seq"  # seq leads every line
        delivered.append((record.seq, record.level, payload["n"]))
        assert spool.ack(record.seq, record.level)
    assert delivered == [(i + 1, level, i) for i, level in enumerate(levels)]
    assert spool.pending_count == 0 and spool.pending_bytes == 0
    assert not spool.ack(3, "debug")  # a second ack is harmless
    spool.close()


def test_lines_are_plain_json_in_the_file_before_append_returns(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append("error", body("error", message="ET-A-1: crashed\nlast line"))
    (segment,) = segments(tmp_path)
    assert segment.name == "error-0000000000000001.jsonl"
    line = segment.read_bytes()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["message"] == "ET-A-1: crashed\nlast line"
    spool.close()


def test_reopen_resumes_where_it_stopped_and_seq_continues(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(10):
        spool.append("info" if i % 2 else "error", body(n=i))
    for _ in range(4):
        record = spool.peek()
        spool.ack(record.seq, record.level)
    spool.close()

    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert seqs(spool) == [5, 6, 7, 8, 9, 10]
    assert spool.append("info", body()) == 11
    spool.close()


def test_seq_survives_a_fully_drained_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for _ in range(3):
        spool.append("info", body())
    while (record := spool.peek()) is not None:
        spool.ack(record.seq, record.level)
    spool.close()
    assert segments(tmp_path) == []  # consumed segments are deleted
    assert json.loads((tmp_path / STATE_FILE).read_text())["next_seq"] == 4

    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.peek() is None
    assert spool.append("info", body()) == 4
    spool.close()


CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from exec_supervisor.events.spool import Spool
    spool = Spool(sys.argv[1], max_bytes=1 << 20, segment_bytes=4096)
    for i in range(200):
        spool.append(("debug", "info", "warning", "error")[i % 4], b'{"level":"info","message":"m%d"}' % i)
        if i == 100:
            spool.sync()
        if i < 150:
            record = spool.peek()
            spool.ack(record.seq, record.level)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_loses_nothing_that_was_appended(tmp_path: Path) -> None:
    # Appended = written: the lines survive the process being SIGKILLed with no sync
    # after event 100. Acks after the last sync may be repeated (at least once), seq never reused.
    result = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path), str(ROOT)], capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    spool = Spool(tmp_path, max_bytes=1 << 20)
    pending = seqs(spool)
    assert pending == list(range(pending[0], 201))
    assert 101 <= pending[0] <= 151  # acked up to the sync at 101 are gone; the rest comes again
    assert spool.append("info", body()) == 201
    spool.close()


def test_torn_last_line_is_cut_off_and_startup_goes_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        spool.append("error", body("error", n=i))
    spool.close()
    (segment,) = segments(tmp_path)
    whole = segment.read_bytes()
    with open(segment, "ab") as handle:  # what a power loss mid-write leaves
        handle.write(b'{"seq":4,"level":"error","mess')

    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert seqs(spool) == [1, 2, 3]
    assert any("incomplete last line" in problem for problem in spool.problems)
    assert segment.read_bytes() == whole  # repaired on disk
    assert spool.append("error", body("error")) == 4  # in a new segment
    spool.close()
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert seqs(spool) == [1, 2, 3, 4] and spool.problems == []
    spool.close()


def test_garbage_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        spool.append("info", body(n=i))
    spool.close()
    (segment,) = segments(tmp_path)
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(lines[0] + b"\x00\x00\x00garbage\n" + lines[1] + b'{"seq":2,"dup":1}\n' + lines[2])

    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert seqs(spool) == [1, 2, 3]
    assert [r.payload()["n"] for r in spool.pending()] == [0, 1, 2]
    assert any("skipped 2" in problem for problem in spool.problems)
    spool.close()


def test_unreadable_state_means_duplicates_not_loss(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for _ in range(4):
        spool.append("info", body())
    record = spool.peek()
    spool.ack(record.seq, record.level)
    spool.close()
    (tmp_path / STATE_FILE).write_text("{not json")

    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert seqs(spool) == [1, 2, 3, 4]  # everything still on disk comes again
    assert spool.append("info", body()) == 5  # and seq is never reused
    assert any("unreadable" in problem for problem in spool.problems)
    spool.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolError, match="in use by another exec-supervisor"):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.close()
    Spool(tmp_path, max_bytes=1 << 20).close()


def test_segments_roll_and_consumed_ones_are_deleted_after_sync(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    for i in range(100):
        spool.append("info", body(n=i, pad="p" * 50))
    spool.sync()
    assert len(segments(tmp_path)) > 5
    for _ in range(90):
        record = spool.peek()
        spool.ack(record.seq, record.level)
    before = len(segments(tmp_path))
    spool.sync()
    after = segments(tmp_path)
    assert len(after) < before
    assert int(after[0].name.split("-")[1].split(".")[0]) <= 91  # the one holding seq 91 stays
    spool.close()
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    assert seqs(spool) == list(range(91, 101))
    spool.close()


def test_cap_drops_oldest_debug_then_info_never_error_while_lower_remain(tmp_path: Path) -> None:
    line = len(b'{"seq":10,') + len(body("debug", pad="x" * 80)) - 1 + 1
    spool = Spool(tmp_path, max_bytes=line * 20)
    plan = ["error", "debug", "info"] * 10  # 30 events, room for about 20
    for level in plan:
        spool.append(level, body(level, pad="x" * 80))
    by_level = spool.counts_by_level()
    assert spool.pending_bytes <= spool.max_bytes
    assert by_level["error"] == 10  # no error dropped while debug/info remained
    assert by_level["debug"] == 0  # all debug went first
    kept_info = [r.seq for r in spool.pending() if r.level == "info"]
    all_info = [i + 1 for i, level in enumerate(plan) if level == "info"]
    assert kept_info == all_info[len(all_info) - len(kept_info):]  # the oldest info went
    report = spool.take_drops()
    assert report["by_level"]["debug"] == 10 and report["dropped"] == 30 - spool.pending_count
    assert report["first_seq"] == 2
    assert spool.take_drops() is None  # reported once

    # Only errors left: now errors go, oldest first.
    for _ in range(15):
        spool.append("error", body("error", pad="x" * 80))
    assert spool.counts_by_level() == {"debug": 0, "info": 0, "warning": 0, "error": spool.pending_count}
    all_errors = [i + 1 for i, level in enumerate(plan) if level == "error"] + list(range(31, 46))
    kept = seqs(spool)
    assert kept == all_errors[len(all_errors) - len(kept):]  # the newest errors stay
    spool.close()
    # Drops are persisted like acks: they do not come back.
    spool = Spool(tmp_path, max_bytes=line * 20)
    assert seqs(spool) == kept
    spool.close()


def test_lowering_the_cap_drops_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for level in ["debug", "info", "error"] * 5:
        spool.append(level, body(level))
    spool.max_bytes = spool.pending_bytes // 2
    assert spool.pending_bytes <= spool.max_bytes
    assert spool.counts_by_level()["debug"] == 0 and spool.counts_by_level()["error"] == 5
    spool.close()
