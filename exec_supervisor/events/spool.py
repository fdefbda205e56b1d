"""The on-disk event spool: what has been emitted but not yet delivered.

Owns the queue's rules and state: seq assignment, the size cap (which events to
drop), what is consumed, when files may be deleted, the process lock and the
thread safety of all of it. The files themselves (layout, formats, indexing,
repairs at startup) are spoolfiles.py's. It must not know what an event means
or where it goes: it stores opaque JSON lines for the forwarder.

Each level has its own stream of append-only segments, and ``seq`` increases
across all of them, so delivery in seq order is a merge of four sorted
streams. Keeping levels apart makes the size cap cheap: dropping "the oldest
debug events" is advancing the debug stream's head, never rewriting a file.

A stream's *head* is the highest seq of that level that is consumed
(delivered, dead-lettered or dropped). Heads live in memory and are written
to ``state.json`` by ``sync()`` (about once a second); segment files are
deleted only after the state that makes them unnecessary is on disk, so a
crash can repeat a delivery (at least once) but never reuse or skip a seq.

Appending is one ``write()`` (the line is in the file, i.e. in the page cache,
when ``append`` returns: it survives the process being SIGKILLed); ``sync()``
fsyncs what was appended since the last call (power-loss exposure = the
interval between syncs). A torn last line (power loss, full disk) is cut off
when the spool is opened; a garbled line in the middle is skipped and
reported, and neither stops startup. New events always go to new segments
after a restart, so a repaired file is never appended to.

Memory: an index of 24 bytes per pending event (seq, offset, length in
arrays); the payloads stay on disk and are read back with ``pread``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path
from typing import Any, Callable

from .event import LEVELS
from .spoolfiles import (
    LOCK_FILE,
    STATE_FILE,
    Record,
    Segment,
    Stream,
    create_segment,
    fsync_dir,
    index_segment,
    list_segments,
    read_state,
    write_line,
    write_state,
)

__all__ = ["Spool", "SpoolError", "Record", "STATE_FILE"]

_MIN_SEGMENT = 64 * 1024
_MAX_SEGMENT = 4 * 1024 * 1024


class SpoolError(RuntimeError):
    """The spool cannot be used (locked by another process, unreadable directory)."""


class Spool:
    """Durable, size-capped queue of JSON event lines, delivered in seq order.

    Thread-safe: ``append`` (event loop), ``peek``/``ack`` (sender thread) and
    ``sync`` (flusher thread) may run concurrently; each holds the lock only
    for in-memory bookkeeping and a single write/pread, never for an fsync.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, segment_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._max_bytes = max(1, int(max_bytes))
        self.segment_bytes = segment_bytes or max(_MIN_SEGMENT, min(_MAX_SEGMENT, self._max_bytes // 16))
        self._streams = {level: Stream(level) for level in LEVELS}
        self._order = [self._streams[level] for level in LEVELS]  # drop order: lowest level first
        self._next_seq = 1
        self._pending_bytes = 0
        self._dirty: set[Segment] = set()
        self._dir_dirty = False
        self._written_state: tuple[Any, ...] | None = None
        self._drops: dict[str, int] = {}
        self._drop_range: list[int] = []  # [first, last] seq dropped since the last report
        self.dropped_total = 0
        # Called with each seq the cap drops (under the spool's lock: it must be quick, and not
        # call the spool). The executor lines' books use it.
        self.on_drop: Callable[[int], None] | None = None
        self._lost_report: dict[str, Any] = {}  # events that could not be written (see append)
        self.lost_total = 0
        self.closed = False
        # Human-readable notes about what opening the spool had to repair.
        self.problems: list[str] = []

        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use the event spool {self.directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise SpoolError(
                    f"the event spool {self.directory} is in use by another exec-supervisor "
                    "(two daemons must not share a state_dir)"
                ) from None
            raise SpoolError(f"cannot lock the event spool {self.directory}: {exc.strerror}") from None
        try:
            self._load()
        except BaseException:
            self._close_fds()
            raise

    # ------------------------------------------------------------------ opening

    def _load(self) -> None:
        next_seq, heads = read_state(self.directory, self.problems)
        for stream in self._order:
            stream.head = heads[stream.level]
        max_seq = 0
        last_seen = {level: 0 for level in LEVELS}
        for level, first_seq, name in list_segments(self.directory):
            last_seen[level] = index_segment(self._streams[level], first_seq, self.directory / name,
                                             last_seen[level], self.problems)
            max_seq = max(max_seq, last_seen[level])
        self._next_seq = max(next_seq, max_seq + 1, max(heads.values()) + 1, 1)
        self._written_state = self._state_key()
        self._pending_bytes = sum(s.nbytes for s in self._order)

    # ------------------------------------------------------------------ writing

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        with self._lock:
            self._max_bytes = max(1, int(value))
            if self._pending_bytes > self._max_bytes:
                self._enforce_cap()

    def append(self, level: str, body: bytes, over_cap: bool = False) -> int:
        """Write one event and return its seq.

        body is a UTF-8 JSON object (``{...}``); the spool puts ``"seq":N`` first in it.
        The line is in the file when this returns (not yet fsynced). On an OSError (disk
        full, ...) the event is lost but its seq is taken all the same, so the service sees the
        gap, and lost_report() says which seqs went; the error is raised. With over_cap, this one line may
        exceed the cap instead of dropping others (the notice *about* drops must not
        cause new drops, or a full spool would announce itself forever).
        """
        if not body.startswith(b"{"):
            raise ValueError("an event body must be a JSON object")
        rest = body[1:]
        with self._lock:
            if self.closed:
                raise OSError(errno.EBADF, "the event spool is closed")
            seq = self._next_seq
            line = b'{"seq":%d%s%s\n' % (seq, b"," if rest.strip() != b"}" else b"", rest)
            stream = self._streams[level]
            seg = stream.segments[-1] if stream.segments else None
            try:
                if seg is None or not seg.writable or seg.size >= self.segment_bytes:
                    seg = self._new_segment(stream, seq)
                write_line(seg, line)
            except OSError as exc:
                self._next_seq = seq + 1  # a lost event keeps its seq: the gap is the notice that it went
                self._lost(level, seq, exc)
                raise
            self._next_seq = seq + 1
            size = len(line)
            seg.seqs.append(seq)
            seg.offsets.append(seg.size)
            seg.lengths.append(size)
            seg.size += size
            stream.count += 1
            stream.nbytes += size
            self._pending_bytes += size
            self._dirty.add(seg)
            if self._pending_bytes > self._max_bytes and not over_cap:
                self._enforce_cap()
            return seq

    def _new_segment(self, stream: Stream, seq: int) -> Segment:
        if stream.segments:
            stream.segments[-1].writable = False
        seg = create_segment(self.directory, stream.level, seq)
        stream.segments.append(seg)
        self._dir_dirty = True
        return seg

    def _enforce_cap(self) -> None:
        """Drop the oldest events, lowest level first, until the pending bytes fit (lock held)."""
        excess = self._pending_bytes - self._max_bytes
        for stream in self._order:
            while excess > 0 and stream.count:
                seg, index = stream.first_pending()
                seq = seg.seqs[index]
                size = seg.lengths[index]
                self._consume(stream, seg, seq, size)
                excess -= size
                self._drops[stream.level] = self._drops.get(stream.level, 0) + 1
                self.dropped_total += 1
                if self.on_drop is not None:
                    self.on_drop(seq)
                if self._drop_range:
                    self._drop_range[0] = min(self._drop_range[0], seq)
                    self._drop_range[1] = max(self._drop_range[1], seq)
                else:
                    self._drop_range = [seq, seq]
            if excess <= 0:
                break

    def _consume(self, stream: Stream, seg: Segment, seq: int, size: int) -> None:
        seg.pos += 1
        stream.count -= 1
        stream.nbytes -= size
        self._pending_bytes -= size
        if seq > stream.head:
            stream.head = seq

    # ------------------------------------------------------------------ reading

    def peek(self) -> Record | None:
        """The pending event with the lowest seq, or None when nothing is pending (or closed)."""
        with self._lock:
            if self.closed:
                return None
            best: tuple[int, Stream, Segment, int] | None = None
            for stream in self._order:
                if stream.count:
                    seg, index = stream.first_pending()
                    seq = seg.seqs[index]
                    if best is None or seq < best[0]:
                        best = (seq, stream, seg, index)
            if best is None:
                return None
            seq, stream, seg, index = best
            length = seg.lengths[index]
            data = os.pread(seg.fd, length, seg.offsets[index])
            if len(data) != length:  # the file shrank under us: only a tampering hand does that
                raise OSError(errno.EIO, f"short read from {seg.path.name}")
            return Record(seq, stream.level, data[:-1])

    def ack(self, seq: int, level: str) -> bool:
        """Mark an event consumed (delivered or dead-lettered). False if it was already gone (dropped)."""
        with self._lock:
            stream = self._streams[level]
            if seq <= stream.head or self.closed:
                return False
            acked = False
            while stream.count:
                seg, index = stream.first_pending()
                current = seg.seqs[index]
                if current > seq:
                    break
                self._consume(stream, seg, current, seg.lengths[index])
                acked = acked or current == seq
            if seq > stream.head:
                stream.head = seq
            return acked

    # ------------------------------------------------------------------ housekeeping

    def _state_key(self) -> tuple[Any, ...]:
        return (self._next_seq,) + tuple(s.head for s in self._order)

    def sync(self, final: bool = False) -> None:
        """fsync new lines, persist heads and next seq, delete consumed segments.

        Called about once a second by one thread (the flusher) and at stop. The
        segment being appended to is kept even when consumed, unless `final`.
        """
        with self._sync_lock:
            with self._lock:
                if self.closed:
                    return
                dirty = list(self._dirty)
                self._dirty.clear()
                dir_dirty = self._dir_dirty
                self._dir_dirty = False
                state = self._state_key()
            try:
                for seg in dirty:
                    os.fsync(seg.fd)  # fds are only closed under _sync_lock, so this one is open
                if state != self._written_state:
                    write_state(self.directory, state)
                    dir_dirty = True
                if dir_dirty:
                    fsync_dir(self.directory)
            except BaseException:
                with self._lock:  # try again next time
                    self._dirty.update(s for s in dirty if s.fd >= 0)
                    self._dir_dirty = self._dir_dirty or dir_dirty
                raise
            self._written_state = state
            heads = dict(zip(LEVELS, state[1:]))
            with self._lock:
                for stream in self._order:
                    while stream.segments:
                        seg = stream.segments[0]
                        if (seg.writable and not final) or not seg.consumed or (seg.seqs and seg.seqs[-1] > heads[stream.level]):
                            break
                        stream.segments.popleft()
                        self._dirty.discard(seg)
                        os.close(seg.fd)
                        seg.fd = -1
                        try:
                            os.unlink(seg.path)
                        except FileNotFoundError:
                            pass

    def _lost(self, level: str, seq: int, exc: OSError) -> None:
        lost = self._lost_report
        if not lost:
            lost.update(lost=0, by_level={}, first_seq=seq, last_seq=seq)
        lost["lost"] += 1
        lost["by_level"][level] = lost["by_level"].get(level, 0) + 1
        lost["last_seq"] = seq
        lost["reason"] = exc.strerror or str(exc)
        self.lost_total += 1

    def lost_report(self) -> dict[str, Any] | None:
        """The events lost (not written) since the last clear_lost(): count, by level, seq range, reason."""
        with self._lock:
            if not self._lost_report:
                return None
            return {**self._lost_report, "by_level": dict(self._lost_report["by_level"])}

    def clear_lost(self, report: dict[str, Any]) -> None:
        """The notice of `report` is written: forget what it covered (and keep later losses)."""
        with self._lock:
            lost = self._lost_report
            if not lost:
                return
            for level, count in report.get("by_level", {}).items():
                left = lost["by_level"].get(level, 0) - count
                if left > 0:
                    lost["by_level"][level] = left
                else:
                    lost["by_level"].pop(level, None)
            lost["lost"] -= report.get("lost", 0)
            if lost["lost"] <= 0 or not lost["by_level"]:
                lost.clear()
            else:
                lost["first_seq"] = report.get("last_seq", lost["first_seq"]) + 1

    def take_drops(self) -> dict[str, Any] | None:
        """What the cap dropped since the last call (for the one warning event), or None."""
        with self._lock:
            if not self._drops:
                return None
            report = {
                "dropped": sum(self._drops.values()),
                "by_level": {level: self._drops[level] for level in LEVELS if level in self._drops},
                "first_seq": self._drop_range[0],
                "last_seq": self._drop_range[1],
            }
            self._drops = {}
            self._drop_range = []
            return report

    def close(self) -> None:
        """sync() and release the files and the lock. Idempotent."""
        if self.closed:
            return
        try:
            self.sync(final=True)
        finally:
            with self._sync_lock, self._lock:
                self.closed = True
                self._close_fds()

    def _close_fds(self) -> None:
        for stream in self._order:
            for seg in stream.segments:
                if seg.fd >= 0:
                    os.close(seg.fd)
                    seg.fd = -1
            stream.segments.clear()
        if getattr(self, "_lock_fd", -1) >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # ------------------------------------------------------------------ numbers

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def pending_count(self) -> int:
        with self._lock:
            return sum(s.count for s in self._order)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def counts_by_level(self) -> dict[str, int]:
        with self._lock:
            return {s.level: s.count for s in self._order}

    def pending(self) -> list[Record]:
        """Every pending record in seq order (reads them all: for tests and inspection)."""
        with self._lock:
            if self.closed:
                return []
            items = []
            for stream in self._order:
                for seg in stream.segments:
                    for index in range(seg.pos, len(seg.seqs)):
                        items.append((seg.seqs[index], stream.level, seg, index))
            items.sort(key=lambda item: item[0])
            return [
                Record(seq, level, os.pread(seg.fd, seg.lengths[i], seg.offsets[i])[:-1])
                for seq, level, seg, i in items
            ]
