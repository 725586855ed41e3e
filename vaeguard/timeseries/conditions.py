"""Time conditions for a conditional VAE: where in the day and the week a window ends.

Encoded as (sin, cos) pairs so 23:55 sits next to 00:00 and Sunday next to Monday; a
conditional VAE can then learn "what normal looks like at this time" instead of averaging the
daily cycle away. Timestamps are epoch seconds (naive timestamps are read as UTC).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vaeguard.errors import ConfigError, DataError

#: Period of each condition in seconds, and the phase offset that makes day_of_week 0 = Monday.
PERIODS = {"hour_of_day": 86_400.0, "day_of_week": 7 * 86_400.0}
#: 1970-01-01 was a Thursday: shift by three days so the weekly phase starts on Monday 00:00.
_WEEK_OFFSET = 3 * 86_400.0


class TimeConditions:
    """Cyclic encoding of the window-end time: two columns (sin, cos) per named condition."""

    def __init__(self, names: Sequence[str] = ()):
        unknown = [n for n in names if n not in PERIODS]
        if unknown:
            raise ConfigError(
                f"conditions: unknown time condition(s) {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(PERIODS)}"
            )
        if len(set(names)) != len(names):
            raise ConfigError("conditions: each time condition may appear once")
        self.names = tuple(names)

    @property
    def width(self) -> int:
        return 2 * len(self.names)

    @property
    def columns(self) -> list[str]:
        return [f"{n}_{f}" for n in self.names for f in ("sin", "cos")]

    def encode(self, epoch_seconds: np.ndarray | Sequence[float]) -> np.ndarray:
        """(n, width) float32 encoding of n timestamps (epoch seconds)."""
        t = np.asarray(epoch_seconds, dtype="float64").reshape(-1)
        out = np.empty((t.shape[0], self.width), dtype="float32")
        for i, name in enumerate(self.names):
            offset = _WEEK_OFFSET if name == "day_of_week" else 0.0
            phase = 2.0 * math.pi * np.mod(t + offset, PERIODS[name]) / PERIODS[name]
            out[:, 2 * i] = np.sin(phase)
            out[:, 2 * i + 1] = np.cos(phase)
        return out


def to_epoch_seconds(value: Any) -> float:
    """A record's timestamp as epoch seconds (the ingestion contract's rule,
    `vaeguard.ingest.to_timestamp`); also takes `datetime` objects. Naive times are UTC.
    Raises `DataError` otherwise."""
    from vaeguard.ingest import Rejection, to_timestamp

    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.timestamp()
    seconds = to_timestamp(value)
    if isinstance(seconds, Rejection):
        raise DataError(seconds.detail)
    return seconds
