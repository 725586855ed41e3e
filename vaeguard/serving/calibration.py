"""A tabular model's alert budget, kept on the scores of the recent normal rows.

A threshold calibrated once, at training, holds its false-alarm rate only while the process
stays as it was; a slowly drifting one (a sensor warming up, traffic growing) then alarms on
every row. `FollowingThreshold` starts from the bundle's calibration scores and, after each
batch, adds the batch's scores to a bounded history of recent scores, from which the budget's
threshold is estimated again by the same rule as at training (`vaeguard.thresholds.fit_tail`:
the rank among the history, a fitted Pareto tail beyond it). Rows far beyond the threshold
(a tenth of the budget's tail probability) are left out, so an incident is not learned as
normal; on a stationary stream that leaves out a tenth of a budget's share of the rows. A drift
too fast to follow that way keeps alarming, shows in ``vaeguard_score_drift_psi``, and is what
retraining is for.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from vaeguard.thresholds import UNLEARNED_DECADES, Threshold, fit_tail, log10_tails, tail_value

#: Recent scores the threshold is estimated from.
HISTORY = 2000


class FollowingThreshold:
    """The budget threshold of a tabular model, re-estimated on recent normal rows' scores."""

    def __init__(self, threshold: Threshold, history: int = HISTORY):
        reference = threshold.params.get("reference")
        budget = threshold.params.get("budget")
        if threshold.method != "budget" or not reference or budget is None:
            raise ValueError("a following threshold needs a threshold calibrated by its budget")
        self.level = math.log10(float(budget) / 1000.0)
        self.scores: deque[float] = deque((float(v) for v in reference), maxlen=history)
        self._fit()

    def _fit(self) -> None:
        values = np.sort(np.fromiter(self.scores, dtype="float64", count=len(self.scores)))
        self._values = values
        self._tail = fit_tail(values, 1e-6 * max(1.0, float(np.abs(values).max())))
        self.value = tail_value(values, self._tail, self.level)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Each score's tail probability against the current history."""
        return np.power(10.0, log10_tails(self._values, self._tail, scores))

    def learn(self, scores: np.ndarray, p_values: np.ndarray) -> None:
        """Add a scored batch to the history (but rows far beyond the threshold) and refit."""
        scores = np.asarray(scores, dtype="float64")
        keep = np.isfinite(scores) & (p_values > 10 ** (self.level - UNLEARNED_DECADES))
        if keep.any():
            self.scores.extend(scores[keep].tolist())
            self._fit()

    def replay(self, scores: np.ndarray, batch: int) -> np.ndarray:
        """Flags of ``scores`` judged in order, ``batch`` rows at a time, learning after each
        batch as the daemon does (benchmarks replay a stream this way)."""
        scores = np.asarray(scores, dtype="float64")
        flags = np.zeros(len(scores), dtype=bool)
        for i in range(0, len(scores), batch):
            part = scores[i : i + batch]
            flags[i : i + batch] = part > self.value
            self.learn(part, self.p_values(part))
        return flags
