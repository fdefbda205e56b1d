"""Live progress while a command waits on the daemon: "6/10 running" in place on a terminal, a line per step otherwise.

The command's own request runs on a thread; this thread asks the daemon for status a few
times a second (short requests on their own connections) and shows what changed.
Owns: the waiting display. Must not: decide what a command does.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

POLL_SECONDS = 0.25


def with_progress(work: Callable[[], Any], poll: Callable[[], tuple[int, int] | None], label: str) -> Any:
    """Run work() (which may exit), showing poll()'s (done, total) while it runs; returns work()'s value."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # SystemExit included: raised again on the main thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="request", daemon=True)
    thread.start()
    terminal = _isatty()
    last: tuple[int, int] | None = None
    thread.join(POLL_SECONDS)
    try:
        while thread.is_alive():
            try:
                counts = poll()
            except Exception:  # progress is a courtesy: never fail the command for it
                counts = None
            if counts is not None and counts != last and thread.is_alive():
                text = f"{counts[0]}/{counts[1]} {label}"
                sys.stderr.write(f"\r\x1b[K{text}" if terminal else text + "\n")
                sys.stderr.flush()
                last = counts
            thread.join(POLL_SECONDS)
    finally:
        if terminal and last is not None:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _isatty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def status_rows(client: Any, target: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(instances, types) of target, or None when the daemon does not answer quickly."""
    from ..control.client import ClientError, path_with_query

    try:
        code, data = client.call("GET", path_with_query("/v1/status", target=target), timeout=5)
    except ClientError:
        return None
    if code != 200 or not isinstance(data, dict):
        return None
    return data.get("instances") or [], data.get("types") or []
