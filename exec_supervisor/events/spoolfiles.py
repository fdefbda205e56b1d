"""The files of the event spool directory and their in-memory index.

Layout (``<state_dir>/events/``)::

    lock                              flock()ed by the one process using the spool
    state.json                        {"next_seq": N, "heads": {"debug": h, ...}}  (atomic rename)
    debug-0000000000001187.jsonl      segment files: one JSON object per line,
    info-0000000000001188.jsonl       named after their level and the seq of their
    error-0000000000001190.jsonl      first line; each line starts with {"seq":N,

Owns the file formats: naming and scanning segment files, indexing one at
startup (cutting off a torn last line, skipping garbled ones), creating a new
one, appending a line with one ``write()`` (never leaving half a line),
reading and atomically replacing ``state.json``, fsyncing the directory. The
index of a segment is three arrays (seq, offset, length: 24 bytes per pending
event); the payloads stay on disk.

It must not decide anything: which segment to append to, what counts as
consumed, when to sync or delete, and all locking belong to spool.py.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .event import LEVELS

__all__ = ["STATE_FILE", "LOCK_FILE", "Record", "Segment", "Stream", "read_state", "write_state", "list_segments",
           "index_segment", "create_segment", "write_line", "fsync_dir"]

STATE_FILE = "state.json"
LOCK_FILE = "lock"
_SEGMENT_RE = re.compile(r"^(debug|info|warning|error)-(\d{16})\.jsonl$")
# A complete event line as the spool writes it: {"seq":N,...}. Checked cheaply (a full
# 64 MiB spool is indexed at startup); a line garbled inside yet matching this would take
# a disk fault, and the service's 422 would send it to the dead letters.
_LINE_RE = re.compile(rb'^\{"seq":([1-9]\d{0,17})[,}][^\n]*\}$', re.M)


@dataclass(frozen=True)
class Record:
    """One pending event: its seq, level and the JSON line (without the newline)."""

    seq: int
    level: str
    data: bytes

    def payload(self) -> dict[str, Any]:
        return json.loads(self.data)


class Segment:
    """One open segment file and the index of its lines."""

    __slots__ = ("path", "first_seq", "fd", "size", "seqs", "offsets", "lengths", "pos", "writable")

    def __init__(self, path: Path, first_seq: int, fd: int, writable: bool) -> None:
        self.path = path
        self.first_seq = first_seq
        self.fd = fd
        self.size = 0  # bytes in the file (offset of the next append)
        self.seqs = array("q")
        self.offsets = array("q")
        self.lengths = array("q")
        self.pos = 0  # index of the first record not yet consumed
        self.writable = writable  # the stream's current append target (created by this process)

    @property
    def consumed(self) -> bool:
        return self.pos >= len(self.seqs)


class Stream:
    """The segments of one level, oldest first, and what of them is pending."""

    __slots__ = ("level", "segments", "head", "count", "nbytes")

    def __init__(self, level: str) -> None:
        self.level = level
        self.segments: deque[Segment] = deque()
        self.head = 0  # highest consumed seq of this level
        self.count = 0  # pending records
        self.nbytes = 0  # their bytes, newlines included

    def first_pending(self) -> tuple[Segment, int]:
        for seg in self.segments:
            if seg.pos < len(seg.seqs):
                return seg, seg.pos
        raise LookupError(self.level)  # only called when count > 0


def read_state(directory: Path, problems: list[str]) -> tuple[int, dict[str, int]]:
    """(next_seq, heads by level) from state.json; defaults (and a note in `problems`) if unreadable."""
    state_path = directory / STATE_FILE
    heads = {level: 0 for level in LEVELS}
    next_seq = 1
    try:
        raw = json.loads(state_path.read_bytes())
        next_seq = int(raw["next_seq"])
        for level in LEVELS:
            heads[level] = int(raw.get("heads", {}).get(level, 0))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        problems.append(
            f"{state_path} was unreadable ({exc.__class__.__name__}); "
            "events still in the spool will be sent again (duplicates, no loss)"
        )
    return next_seq, heads


def write_state(directory: Path, state: tuple[Any, ...]) -> None:
    """Replace state.json atomically with (next_seq, *heads in LEVELS order); fsyncs the file, not the directory."""
    data = json.dumps({"next_seq": state[0], "heads": dict(zip(LEVELS, state[1:]))}).encode()
    tmp = directory / (STATE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / STATE_FILE)


def list_segments(directory: Path) -> list[tuple[str, int, str]]:
    """(level, first seq, file name) of every segment file, by level then seq; removes stale .tmp files."""
    found: list[tuple[str, int, str]] = []
    for name in os.listdir(directory):
        match = _SEGMENT_RE.match(name)
        if match:
            found.append((match.group(1), int(match.group(2)), name))
        elif name.endswith(".tmp"):
            try:
                os.unlink(directory / name)  # a state write that died before its rename
            except OSError:
                pass
    return sorted(found, key=lambda f: (f[0], f[1]))


def index_segment(stream: Stream, first_seq: int, path: Path, last: int, problems: list[str]) -> int:
    """Index the pending lines of one segment into `stream`; returns the highest seq of the stream so far."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    try:
        data = _read_all(fd)
    except OSError:
        os.close(fd)
        raise
    seg = Segment(path, first_seq, fd, writable=False)
    end = data.rfind(b"\n") + 1
    if end < len(data):
        # A torn last line: the write (or the power) was cut mid-line.
        os.ftruncate(fd, end)
        os.fsync(fd)
        problems.append(
            f"{path.name}: cut off an incomplete last line ({len(data) - end} bytes) "
            "left by a crash or power loss"
        )
    seg.size = end
    lines = data.count(b"\n", 0, end)
    good = 0
    head = stream.head
    for match in _LINE_RE.finditer(data, 0, end):
        seq = int(match.group(1))
        if seq <= last:
            continue  # out of order: counted as bad below
        good += 1
        last = seq
        if seq > head:
            start = match.start()
            size = match.end() + 1 - start
            seg.seqs.append(seq)
            seg.offsets.append(start)
            seg.lengths.append(size)
            stream.count += 1
            stream.nbytes += size
    bad = lines - good
    if bad:
        problems.append(f"{path.name}: skipped {bad} unreadable or out-of-order line(s)")
    if not seg.seqs:
        os.close(fd)
        try:
            os.unlink(path)  # everything in it was consumed before the restart
        except OSError:
            pass
    else:
        stream.segments.append(seg)
    return last


def create_segment(directory: Path, level: str, seq: int) -> Segment:
    """A new, empty segment file for `level` whose first line will be `seq`."""
    path = directory / f"{level}-{seq:016d}.jsonl"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
    return Segment(path, seq, fd, writable=True)


def write_line(seg: Segment, line: bytes) -> None:
    """Append one line; on an error, cut back what was written of it and raise."""
    view = memoryview(line)
    written = 0
    try:
        while written < len(line):
            written += os.write(seg.fd, view[written:])
    except OSError:
        if written:
            try:  # never leave half a line for the next append to run into
                os.ftruncate(seg.fd, seg.size)
            except OSError:
                pass
        raise


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
