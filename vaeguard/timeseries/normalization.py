"""Per-entity, scale-free normalization learned online.

One model serves many entities whose metrics live on different scales (a host's CPU in %, a
service's latency in ms), so every entity's values are turned into "how many of its own
standard deviations from its own mean" before they reach the VAE. The statistics are learned
from the entity's own past points only (causal), with a bounded memory so they follow a slow
drift, and updates are winsorized so one huge spike does not flatten everything after it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Points an entity needs before its statistics are trusted enough to winsorize updates.
WARMUP_POINTS = 30
#: Largest magnitude the statistics learn from (see `OnlineScaler.update`).
MAX_ABS = 1e150


class OnlineScaler:
    """Running mean and standard deviation of M metrics with exponential forgetting.

    Weighted like a plain average for the first ``memory`` points, then like an exponential
    moving average over about ``memory`` points. Missing values (NaN) are skipped per metric.
    Once warm, an update is clipped to ``mean ± clip_sigmas · scale``.
    """

    __slots__ = ("clip_sigmas", "count", "mean", "memory", "rel_floor", "var")

    def __init__(
        self, n_metrics: int, memory: int = 5000, clip_sigmas: float = 5.0, rel_floor: float = 1e-3
    ):
        if memory < 2:
            raise ValueError("memory must be at least 2")
        self.memory = int(memory)
        self.clip_sigmas = float(clip_sigmas)
        self.rel_floor = float(rel_floor)
        self.count = np.zeros(n_metrics, dtype="float64")
        self.mean = np.zeros(n_metrics, dtype="float64")
        self.var = np.zeros(n_metrics, dtype="float64")

    @property
    def scale(self) -> np.ndarray:
        """Standard deviation, floored so a constant metric does not divide by zero."""
        floor = self.rel_floor * np.maximum(np.abs(self.mean), 1.0)
        return np.maximum(np.sqrt(self.var), floor)

    def update(self, values: np.ndarray) -> None:
        """Learn from one point (an M-vector, NaN = missing)."""
        seen = np.isfinite(values)
        if not seen.any():
            return
        # Beyond ±1e150 the squared deviation would overflow float64 and poison the state
        # with inf / NaN (which no snapshot can hold): such a value is learned as ±1e150.
        x = np.clip(np.where(seen, values, self.mean), -MAX_ABS, MAX_ABS)
        if self.clip_sigmas > 0:
            warm = self.count >= WARMUP_POINTS
            if warm.any():
                bound = self.clip_sigmas * self.scale
                x = np.where(warm, np.clip(x, self.mean - bound, self.mean + bound), x)
        self.count = np.where(seen, np.minimum(self.count + 1, self.memory), self.count)
        alpha = np.where(seen, 1.0 / np.maximum(self.count, 1.0), 0.0)
        delta = x - self.mean
        self.mean = self.mean + alpha * delta
        self.var = (1.0 - alpha) * (self.var + alpha * delta * delta)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale-free values: (x − mean) / scale, elementwise over the last axis (metrics)."""
        return (values - self.mean) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(), "var": self.var.tolist()}

    def load_dict(self, state: dict[str, Any]) -> None:
        for name in ("count", "mean", "var"):
            arr = np.asarray(state[name], dtype="float64")
            if arr.shape != self.mean.shape:
                raise ValueError(
                    f"scaler state {name!r} has shape {arr.shape}, expected {self.mean.shape}"
                )
            setattr(self, name, arr)
