"""Versioned state snapshots (window featurizer, likelihoods, the daemon's window state): the
header check every `restore` starts with, so a file of another kind or version is refused with
one clear line before any of it is read."""

from __future__ import annotations

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
