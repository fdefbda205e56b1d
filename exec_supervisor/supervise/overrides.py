"""The runtime overrides a daemon keeps in state_dir/overrides.json: ids set by `scale` (and when),
instances held stopped by `stop`. They survive daemon restarts.

Owns reading that file, forgivingly (a damaged file means no overrides). The engine writes it
(Engine.save_overrides); `check` reads it to say which types a daemon would not run as configured.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_overrides(state_dir: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, float], set[str]]:
    """The runtime overrides a daemon of state_dir keeps: (scaled ids, when scaled, held exec ids).

    Also read by `check`, to say which types a daemon would not run as configured."""
    try:
        data = json.loads((state_dir / "overrides.json").read_text())
        scaled_data, when_data = data.get("scaled") or {}, data.get("scaled_at") or {}
        held_data = data.get("held") or []
    except (OSError, ValueError, AttributeError):
        return {}, {}, set()
    scaled: dict[str, tuple[int, ...]] = {}
    scaled_at: dict[str, float] = {}
    if isinstance(scaled_data, dict):
        for type_name, ids in scaled_data.items():
            if isinstance(ids, list):
                scaled[type_name] = tuple(sorted({i for i in ids if isinstance(i, int) and i >= 0}))
                when = when_data.get(type_name) if isinstance(when_data, dict) else None
                if isinstance(when, (int, float)) and not isinstance(when, bool):
                    scaled_at[type_name] = float(when)
    held = {e for e in held_data if isinstance(e, str)} if isinstance(held_data, list) else set()
    return scaled, scaled_at, held
