"""`start --tail`: the instances' output in the foreground, interleaved, each line prefixed `ET-X-N | `.

Read from the log files (the daemon relays no bytes through pipes), by one thread of the
foreground process that looks at log_dir a few times a second: files that appear are followed
from their start, files there before from their end. A copytruncate rotation is noticed by the
file shrinking. Owns: that thread. Must not: touch the engine (it only reads files).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any

from .style import Painter, wants_colour

POLL_SECONDS = 0.2
READ_LIMIT = 256 * 1024
LOG_NAME_RE = re.compile(r"(ET-[A-Za-z][A-Za-z0-9_]*-[0-9]+)\.log")


class Interleaver:
    """Whole lines of several files, each prefixed with its exec id (padded, coloured on a terminal)."""

    def __init__(self, out: Any = None, paint: Painter | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.paint = paint if paint is not None else Painter(wants_colour(self.out))
        self.width = 0
        self.colours: dict[str, int] = {}
        self.partial: dict[str, bytes] = {}

    def feed(self, exec_id: str, data: bytes, final: bool = False) -> None:
        data = self.partial.pop(exec_id, b"") + data
        *lines, rest = data.split(b"\n")
        if rest and final:
            lines.append(rest)
        elif rest:
            self.partial[exec_id] = rest
        if not lines:
            return
        self.width = max(self.width, len(exec_id))
        index = self.colours.setdefault(exec_id, len(self.colours))
        prefix = self.paint.prefix(f"{exec_id:<{self.width}} |", index)
        text = "".join(f"{prefix} {line.decode(errors='replace').rstrip(chr(13))}\n" for line in lines)
        self.out.write(text)
        self.out.flush()


class DirTail:
    """Follows every ET-*.log file in a folder."""

    def __init__(self, folder: str, sink: Interleaver) -> None:
        self.folder = folder
        self.sink = sink
        self.offsets: dict[str, int] = {}
        self.first = True

    def step(self) -> None:
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in sorted(names):
            match = LOG_NAME_RE.fullmatch(name)
            if match is None:
                continue
            path = os.path.join(self.folder, name)
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            offset = self.offsets.get(name)
            if offset is None:
                offset = size if self.first else 0  # old output is not this run's
            elif size < offset:
                offset = 0  # rotated (copy + truncate): the new content starts at 0
            if size > offset:
                try:
                    with open(path, "rb") as handle:
                        handle.seek(offset)
                        data = handle.read(READ_LIMIT)
                except OSError:
                    data = b""
                offset += len(data)
                self.sink.feed(match.group(1), data)
            self.offsets[name] = offset
        self.first = False


class TailExtension:
    """Daemon extension: starts the tail thread before the first spawn, stops it after the last stop."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tail: DirTail | None = None

    async def start(self, daemon: Any) -> None:
        self._tail = DirTail(str(daemon.config.log_dir), Interleaver())
        self._tail.step()  # what is there now is an earlier run's
        self._thread = threading.Thread(target=self._run, name="tail", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._tail is not None
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._tail.step()
            except (OSError, ValueError):  # stdout closed: nothing more to show
                return

    async def stopping(self, daemon: Any) -> None:
        pass

    async def stop(self, daemon: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._tail is not None:
            try:
                self._tail.step()  # the last words of the stopped instances
            except (OSError, ValueError):
                pass
