"""Colour for a terminal, none for pipes and files: NO_COLOR (https://no-color.org) and TERM=dumb turn it off.

Owns the colour decision and the palette (states, instance prefixes); nothing else.
"""

from __future__ import annotations

import os
import sys
from typing import IO

import click

STATE_COLOURS = {
    "running": ("green", False),
    "starting": ("cyan", False),
    "stopping": ("cyan", False),
    "backoff": ("yellow", True),
    "exited": ("yellow", False),
    "fatal": ("red", True),
    "stopped": ("bright_black", False),
    "gone": ("bright_black", False),
}
# Instance prefixes in interleaved logs: distinct, readable on dark and light backgrounds.
PREFIX_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta",
                  "bright_green", "bright_yellow", "bright_blue")


def wants_colour(stream: IO[str] | None = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Painter:
    """click.style when colour is on, the plain text otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, fg: str | None = None, bold: bool = False, dim: bool = False) -> str:
        if not self.enabled or not (fg or bold or dim):
            return text
        # None, not False: click writes a reset code for every False it is given
        return click.style(text, fg=fg, bold=bold or None, dim=dim or None)

    def state(self, text: str, state: str) -> str:
        fg, bold = STATE_COLOURS.get(state, (None, False))
        return self(text, fg=fg, bold=bold)

    def prefix(self, text: str, index: int) -> str:
        return self(text, fg=PREFIX_COLOURS[index % len(PREFIX_COLOURS)])
