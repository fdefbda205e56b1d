"""The daemon's own log on stderr: one line per event, journald-aware.

Under systemd (JOURNAL_STREAM set) lines carry `<N>` priority prefixes and no
timestamp of their own, since journald adds both time and level.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

from .event import Event
from .messages import format_message

# Event lines are written many at a time: under churn one write per 50 ms instead of two or
# three per restart. The first event EVENT_LINES_DELAY or more after the oldest held line
# writes them, so while events keep coming no timer wakes the loop; when they stop, a timer
# writes them EVENT_LINES_LATE later. A line's time is its event's; the daemon writes what is
# held as it ends (see flush).
EVENT_LINES_DELAY = 0.05
EVENT_LINES_LATE = 0.05

_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
_EVENT_LEVEL = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

log = logging.getLogger("exec_supervisor")


class _LineFormatter(logging.Formatter):
    """A formatter that can also make its line from a level, a time and a message alone."""

    def line(self, level: int, created: float, message: str) -> str:
        """What format() gives for a record with these fields and no exception."""
        raise NotImplementedError


class _JournalFormatter(_LineFormatter):
    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_JOURNAL_PRIORITY.get(record.levelname, 6)}>{super().format(record)}"

    def line(self, level: int, created: float, message: str) -> str:
        return f"<{_JOURNAL_PRIORITY.get(logging.getLevelName(level), 6)}>{message}"


class _TerminalFormatter(_LineFormatter):
    """`asctime levelname message`, with the date and time part of asctime made once a second.

    The stock formatTime pays a localtime(), which stats /etc/localtime, and a strftime
    for every line, and every state transition is a line.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s")
        # (second, its text) in one tuple, so a concurrent logging thread never mixes two seconds
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return super().formatTime(record, datefmt)
        return self._asctime(record.created, record.msecs)

    def line(self, level: int, created: float, message: str) -> str:
        msecs = int((created - int(created)) * 1000)  # as LogRecord computes it
        return f"{self._asctime(created, msecs)} {logging.getLevelName(level):<7} {message}"

    def _asctime(self, created: float, msecs: float) -> str:
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime(self.default_time_format, self.converter(second)))
        return self.default_msec_format % (cached[1], msecs)


class _StderrHandler(logging.StreamHandler):
    """The daemon's stderr. Event lines may skip the LogRecord: see event_sink."""

    def __init__(self, formatter: _LineFormatter) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(formatter)
        self._lines = formatter
        self._held: list[tuple[int, Event]] = []
        self._write_handle: asyncio.TimerHandle | None = None
        self._write_thread = 0  # the thread whose loop holds _write_handle

    def hold_event(self, level: int, event: Event) -> None:
        """Queue the line handling a record of this level and the event's message would write.

        The line is made when written: made many at a time, it costs a fraction of what one
        made alone after the loop wakes does (everything it touches is out of the CPU's cache).
        """
        self.acquire()  # a record logged on another thread writes the held lines from there
        try:
            held = self._held
            held.append((level, event))
            if len(held) == 1:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop to write later on
                    self.write_held()
                    return
                self._write_handle = loop.call_later(EVENT_LINES_DELAY + EVENT_LINES_LATE, self.write_held)
                self._write_thread = threading.get_ident()
            elif event.time - held[0][1].time >= EVENT_LINES_DELAY:
                self.write_held()
        finally:
            self.release()

    def write_held(self) -> None:
        if not self._held:
            return
        self.acquire()
        try:
            handle, self._write_handle = self._write_handle, None
            # The loop drops a cancelled timer without waking for it. A timer is not to be
            # cancelled from another thread; left alone, it finds nothing to write.
            if handle is not None and threading.get_ident() == self._write_thread:
                handle.cancel()
            held, self._held = self._held, []
            line, terminator = self._lines.line, self.terminator
            text = "".join([line(level, event.time, _first_line(format_message(event))) + terminator
                            for level, event in held])
            self.stream.write(text)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(_event_record(logging.ERROR, "cannot write event lines"))
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        self.write_held()  # lines stay in the order they were made
        super().emit(record)

    def flush(self) -> None:
        self.write_held()
        super().flush()

    def takes_all(self, logger: logging.Logger, level: int) -> bool:
        """True when a record of this level from logger would reach this handler and nothing
        else, and the line write_held makes is the one emit would write."""
        handlers = logger.handlers
        return (len(handlers) == 1 and handlers[0] is self and not logger.propagate
                and not logger.filters and not self.filters and level >= self.level
                and self.formatter is self._lines)


_handler: _StderrHandler | None = None


def under_journald() -> bool:
    """True when our stderr is the journal stream systemd told us about."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup(quiet: bool = False) -> None:
    """Every state transition is logged by default (debug ones too); quiet keeps info and above."""
    global _handler
    _handler = _StderrHandler(_JournalFormatter() if under_journald() else _TerminalFormatter())
    log.handlers[:] = [_handler]
    log.setLevel(logging.INFO if quiet else logging.DEBUG)
    log.propagate = False


def event_sink(event: Event) -> None:
    """Bus subscriber: the first line of the event's message (no output tail) at its level."""
    level = _EVENT_LEVEL.get(event.level, logging.INFO)
    if not log.isEnabledFor(level):
        return
    handler = _handler
    if handler is not None and handler.takes_all(log, level):
        # Three events per instance restart: a LogRecord and logging's dispatch would cost
        # about twice what formatting and writing the line does, for the same output.
        handler.hold_event(level, event)
    else:
        log.handle(_event_record(level, _first_line(format_message(event))))


def _first_line(message: str) -> str:
    """An event's message without the output tail that may follow its first line."""
    end = message.find("\n")
    return message if end < 0 else message[:end]


def flush() -> None:
    """Write every held line now (the daemon calls this as it ends)."""
    if _handler is not None:
        _handler.write_held()


def _event_record(level: int, message: str) -> logging.LogRecord:
    # Made by hand: log.log would walk the stack (findCaller) for a caller that is always event_sink.
    return log.makeRecord(log.name, level, __file__, _SINK_LINE, message, None, None, "event_sink")


_SINK_LINE = event_sink.__code__.co_firstlineno
