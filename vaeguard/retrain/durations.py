"""Human durations ("90s", "30m", "24h", "1h30m", "7d") for settings such as the training window."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration string; a bare number is seconds. Raises ValueError with the input."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"duration must be positive, got {text}")
        return float(text)
    s = str(text).strip().lower().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pos, total = 0, 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or total == 0:
            raise ValueError(
                f"{text!r} is not a duration (examples: 90s, 30m, 24h, 1h30m, 7d)"
            ) from None
        return total
    if value <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


def looks_like_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True
