"""The daemon's own log on stderr: one line per event, journald-aware.

Under systemd (JOURNAL_STREAM set) lines carry `<N>` priority prefixes and no
timestamp of their own, since journald adds both time and level.
"""

from __future__ import annotations

import logging
import os
import sys

from .events import Event, format_message

_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
_EVENT_LEVEL = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

log = logging.getLogger("exec_supervisor")


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_JOURNAL_PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


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
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if quiet else logging.DEBUG)
    log.propagate = False


def event_sink(event: Event) -> None:
    """Bus subscriber: the first line of the event's message (no output tail) at its level."""
    level = _EVENT_LEVEL.get(event.level, logging.INFO)
    if log.isEnabledFor(level):
        log.log(level, format_message(event).split("\n", 1)[0])
