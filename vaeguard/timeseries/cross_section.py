"""`CrossSection`: each metric of a multi-metric entity judged against the others at the same time.

The metrics of one host or service are driven by a common load. A view predicts a metric's
newest slots from the window's older slots, so the load's own noise at those slots stays in
every metric's residual and a shift of a few noise standard deviations in one metric is
hidden in it. Regressed on the *other* metrics at the same moment (and the time conditions),
the common part cancels and what is left is the metric's own noise: the shift stands out.

One linear fit per metric on the newest slot of each training window (every time point once),
its residuals scaled robustly (median, interquartile range). A window's term for metric j is
half the square of the largest standardized mean residual over its newest 1 and `POOL` slots:
a one-point spike and a few points' small shift both count, in nats-like units. These terms
join the views' terms and are judged the same way, each against the entity's own history of
it (`vaeguard.timeseries.views.ViewLikelihood`), so the alert budget holds for them too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vaeguard.errors import DataError
from vaeguard.snapshot import is_count, is_finite_number

#: The longest run of newest slots whose mean residual is judged (besides the newest alone).
POOL = 5
#: Fewest fully observed training rows a fit needs (fewer: the entity's terms are left out).
MIN_ROWS = 64
#: Smallest residual scale, in the window's scaled units (a metric the others explain exactly).
MIN_SCALE = 1e-3
_IQR_TO_SIGMA = 1.349


def _slots(x: np.ndarray, channels: int, window: int) -> np.ndarray:
    return np.asarray(x, dtype="float64").reshape(x.shape[0], channels, window)


class CrossSection:
    """Per-metric linear fits on the other metrics at the same slot, and their residual scale.

    ``metrics`` are the indices of the metric channels among the window's channels (a derived
    channel, such as the seasonal residual, takes no part)."""

    def __init__(
        self,
        names: list[str],
        metrics: list[int],
        coef: np.ndarray,
        center: np.ndarray,
        scale: np.ndarray,
        fill: np.ndarray,
        rows: int,
    ):
        self.names = list(names)
        self.metrics = list(metrics)
        self.coef = np.asarray(coef, dtype="float64")  # M × (1 + conditions + M - 1)
        self.center = np.asarray(center, dtype="float64")  # median residual per metric
        self.scale = np.asarray(scale, dtype="float64")  # robust residual sd per metric
        self.fill = np.asarray(fill, dtype="float64")  # a missing other metric's stand-in
        self.rows = int(rows)

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        c: np.ndarray | None,
        mask: np.ndarray,
        *,
        names: list[str],
        metrics: list[int],
        channels: int,
        window: int,
    ) -> CrossSection | None:
        """Fit on training windows (`WindowFeaturizer` rows); None when fewer than `MIN_ROWS`
        windows have every metric observed at their newest slot."""
        values = _slots(x, channels, window)[:, metrics, -1]
        seen = _slots(mask, channels, window)[:, metrics, -1] > 0
        full = seen.all(axis=1) & np.isfinite(values).all(axis=1)
        if int(full.sum()) < MIN_ROWS:
            return None
        v = values[full]
        cond = _conditions(c, x.shape[0])[full]
        m = len(metrics)
        coef = np.zeros((m, 1 + cond.shape[1] + m - 1))
        center, scale = np.zeros(m), np.ones(m)
        for j in range(m):
            design = _design(cond, np.delete(v, j, axis=1))
            beta, *_ = np.linalg.lstsq(design, v[:, j], rcond=None)
            residual = v[:, j] - design @ beta
            q1, med, q3 = np.quantile(residual, [0.25, 0.5, 0.75])
            coef[j], center[j] = beta, med
            scale[j] = max((q3 - q1) / _IQR_TO_SIGMA, MIN_SCALE)
        return cls(names, metrics, coef, center, scale, np.median(v, axis=0), int(full.sum()))

    def terms(
        self, x: np.ndarray, c: np.ndarray | None, mask: np.ndarray, *, channels: int, window: int
    ) -> np.ndarray:
        """Each window's term per metric (rows × metrics); 0 where a metric has no observed
        slot among the newest `POOL`."""
        n, m = x.shape[0], len(self.metrics)
        if n == 0:
            return np.zeros((0, m))
        pool = min(POOL, window)
        values, seen, predicted = self._newest(x, c, mask, channels, window, pool)
        z = (values - predicted - self.center[None, :, None]) / self.scale[None, :, None]
        z = np.where(seen, z, 0.0)
        best = np.zeros((n, m))
        for length in sorted({1, pool}):
            count = seen[:, :, -length:].sum(axis=2)
            pooled = np.abs(z[:, :, -length:].sum(axis=2)) / np.sqrt(np.maximum(count, 1))
            best = np.maximum(best, pooled)
        return 0.5 * best**2

    def expected(
        self, x: np.ndarray, c: np.ndarray | None, mask: np.ndarray, *, channels: int, window: int
    ) -> np.ndarray:
        """Each window's newest value of each metric as the others at that slot predict it
        (rows × metrics; an unobserved other metric counts at its training median)."""
        return self._newest(x, c, mask, channels, window, 1)[2][:, :, 0] + self.center

    def _newest(self, x, c, mask, channels: int, window: int, slots: int):
        """Over the newest ``slots`` slots (rows × metrics × slots): the metrics' values, where
        they were observed, and the fits' predictions from the other metrics at each slot and
        the window's time conditions (an unobserved other metric at its training median),
        before the residuals' median is added."""
        n, m = x.shape[0], len(self.metrics)
        values = _slots(x, channels, window)[:, self.metrics, -slots:]
        seen = (_slots(mask, channels, window)[:, self.metrics, -slots:] > 0) & np.isfinite(values)
        filled = np.where(seen, values, self.fill[None, :, None])
        cond = _conditions(c, n)
        predicted = np.zeros((n, m, slots))
        for j in range(m):
            others = np.delete(filled, j, axis=1)  # n × (M-1) × slots
            base = self.coef[j, 0] + cond @ self.coef[j, 1 : 1 + cond.shape[1]]
            predicted[:, j] = base[:, None] + np.einsum(
                "nkp,k->np", others, self.coef[j, -(m - 1) :]
            )
        return values, seen, predicted

    # -- as plain data (a bundle's window section, the daemon's refit state) ----------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": list(self.names),
            "channels": list(self.metrics),
            "coef": [[float(v) for v in row] for row in self.coef],
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
            "fill": [float(v) for v in self.fill],
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, d: Any, *, names: list[str], metrics: list[int], n_conditions: int):
        """Read back `to_dict`; `DataError` unless it is a fit for these metrics (finite
        numbers, the shapes they need, positive scales)."""
        bad = DataError("cross_section: not a fit for this model's metrics")
        if not isinstance(d, dict) or d.get("metrics") != list(names):
            raise bad
        if d.get("channels") != list(metrics):
            raise bad
        m = len(metrics)
        rows, coef = d.get("rows"), d.get("coef")
        if not is_count(rows):
            raise bad
        if not isinstance(coef, list) or len(coef) != m:
            raise bad
        width = 1 + n_conditions + m - 1
        if not all(isinstance(r, list) and len(r) == width for r in coef):
            raise bad
        vectors = [d.get(k) for k in ("center", "scale", "fill")]
        if not all(isinstance(v, list) and len(v) == m for v in vectors):
            raise bad
        numbers = [v for r in coef for v in r] + [v for vec in vectors for v in vec]
        if not all(is_finite_number(v) for v in numbers):
            raise bad
        if not all(s > 0 for s in d["scale"]):
            raise bad
        return cls(names, metrics, np.array(coef, dtype="float64"), *vectors, rows)


def _conditions(c: np.ndarray | None, n: int) -> np.ndarray:
    if c is None:
        return np.zeros((n, 0))
    out = np.asarray(c, dtype="float64").reshape(n, -1)
    return np.where(np.isfinite(out), out, 0.0)


def _design(cond: np.ndarray, others: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(cond.shape[0]), cond, others])
