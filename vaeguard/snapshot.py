"""Versioned state snapshots (window featurizer, likelihoods, the daemon's window state): the
header check every `restore` starts with, so a file of another kind or version is refused with
one clear line before any of it is read."""

from __future__ import annotations

import math
from typing import Any

from vaeguard.errors import DataError


def check_header(state: Any, fmt: str, version: int, what: str) -> None:
    """Raise `DataError` unless ``state`` is a dict with this ``format`` and ``version``."""
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise DataError(f"not a {what} (format field missing or wrong)")
    if state.get("version") != version:
        raise DataError(
            f"{what} version {state.get('version')!r} is not supported (expected {version})"
        )


def is_finite_number(value: Any) -> bool:
    """A JSON number (not a boolean) that is finite: what a snapshot or a manifest may hold
    where it holds a measurement."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any, low: int = 0) -> bool:
    """A JSON integer (not a boolean) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low
