"""A seasonal-residual metric: how far a value is from the same time one, two, … periods ago.

A 32-row window cannot see that "it should be at the daily peak now" (a missing peak looks
like a calm window). Subtracting the median of the values at the same time of the previous
``periods`` periods gives the window that context; the median (not the value one period ago)
keeps a past incident from being replayed as a new one a period later.

Causal: a point's residual uses earlier points only. Memory is bounded to ``periods`` periods of
one stream (one entity); points with no earlier period seen yet get no residual (missing). The
window featurizer keeps one per entity (`WindowSpec.seasonal`) as a derived channel.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from vaeguard.errors import ConfigError

#: Defaults: a daily season, the median of the 3 previous days, 1 h tolerance.
PERIOD = 86_400.0
PERIODS = 3
TOLERANCE = 3_600.0
#: The most periods a residual looks back: each point looks each of them up, so a bound keeps a
#: mistyped or corrupt value from stalling the stream.
MAX_PERIODS = 100


class SeasonalResidual:
    """``value − median(value at t − k·period, k = 1 … periods)`` of one stream, online.

    The value "at" a past time is the latest point at or before it, if at most ``tolerance``
    seconds older (irregular sampling); lags with no such point are skipped.
    """

    def __init__(
        self, period: float = PERIOD, periods: int = PERIODS, tolerance: float = TOLERANCE
    ):
        if not period > 0 or not 1 <= periods <= MAX_PERIODS or tolerance < 0:
            raise ConfigError(
                f"seasonal: need period > 0, periods between 1 and {MAX_PERIODS}, tolerance >= 0"
            )
        self.period = float(period)
        self.periods = int(periods)
        self.tolerance = float(tolerance)
        self._ts: list[float] = []
        self._values: list[float] = []

    def update(self, t: float, value: float) -> float:
        """Residual of a point (NaN when no earlier period is known), then remember it."""
        lags = []
        for k in range(1, self.periods + 1):
            target = t - k * self.period
            j = bisect.bisect_right(self._ts, target) - 1
            if j >= 0 and self._ts[j] >= target - self.tolerance:
                lags.append(self._values[j])
        out = value - float(np.median(lags)) if lags else float("nan")
        if np.isfinite(value) and (not self._ts or t >= self._ts[-1]):
            self._ts.append(t)
            self._values.append(value)
            horizon = t - self.periods * self.period - self.tolerance
            if self._ts[0] < horizon and len(self._ts) > 64:
                cut = bisect.bisect_left(self._ts, horizon)
                del self._ts[:cut], self._values[:cut]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ts": list(self._ts), "values": list(self._values)}

    def load_dict(self, state: dict[str, Any]) -> None:
        ts = [float(t) for t in state["ts"]]
        values = [float(v) for v in state["values"]]
        if len(ts) != len(values) or ts != sorted(ts):
            raise ValueError("seasonal state: ts and values must be equally long, ts sorted")
        if not all(np.isfinite(ts)) or not all(np.isfinite(values)):
            raise ValueError("seasonal state: non-finite entries")
        self._ts, self._values = ts, values
