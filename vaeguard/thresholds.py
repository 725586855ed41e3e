"""Threshold calibration on held-out normal scores: an alert budget, an empirical quantile,
or EVT (SPOT).

The alert budget (false alerts per 1,000 rows) is the one rule shared with window mode: the
score's tail probability is its rank among the calibration scores, and beyond the largest of
them a generalized Pareto tail fitted by probability-weighted moments with its shape taken at
an upper confidence bound (`fit_tail`), so a small calibration sample errs towards fewer alerts.

The quantile is exact for the false-positive rate it targets but cannot reach beyond the
calibration sample (1 in 10,000 needs well over 10,000 rows). SPOT (Siffer et al., KDD 2017)
fits a generalized Pareto distribution to the peaks over a high initial threshold and
extrapolates to risks far smaller than 1/n.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaeguard.errors import DataError
from vaeguard.snapshot import is_finite_number

METHODS = ("budget", "quantile", "spot")
#: SPOT needs this many peaks for the GPD fit to mean anything; fewer falls back to a quantile.
MIN_PEAKS = 10
#: SPOT lowers its initial level, when the sample is small, to keep at least this many peaks.
TARGET_PEAKS = 30


@dataclass
class Threshold:
    """A decision threshold on the anomaly score and how it was chosen (stored in the bundle)."""

    value: float
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    calibration_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "method": self.method,
            "params": self.params,
            "calibration_rows": self.calibration_rows,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Threshold:
        return cls(
            float(d["value"]),
            str(d["method"]),
            dict(d.get("params", {})),
            int(d.get("calibration_rows", 0)),
        )


#: Quantile levels of the calibration scores kept in a bundle (reference for drift and severity).
REFERENCE_LEVELS = np.linspace(0.0, 1.0, 101)


def _clean(scores) -> np.ndarray:
    s = np.asarray(scores, dtype="float64").ravel()
    if s.size == 0:
        raise DataError("cannot calibrate a threshold on zero scores")
    if not np.isfinite(s).all():
        raise DataError("calibration scores contain NaN or infinite values")
    return s


def is_finite_real(value: Any) -> bool:
    """A finite real number, NumPy scalars included, booleans not: what an estimator's numeric
    parameter must be."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_probability(name: str, value: Any) -> None:
    """`ValueError` naming ``name`` unless ``value`` is a real number in (0, 1) (a rate or a
    risk): one rule for the estimator's parameters, checked before training, and the
    threshold functions."""
    if not (is_finite_real(value) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def quantile_threshold(scores, target_fpr: float = 0.01) -> Threshold:
    """The (1 − target_fpr) empirical quantile: that share of normal rows scores above it."""
    check_probability("target_fpr", target_fpr)
    s = _clean(scores)
    value = float(np.quantile(s, 1.0 - target_fpr, method="higher"))
    return Threshold(value, "quantile", {"target_fpr": target_fpr}, int(s.size))


def contamination_threshold(scores, contamination: float) -> Threshold:
    """PyOD's threshold: the (1 − contamination) percentile of the training rows' scores."""
    scores = np.asarray(scores, dtype="float64")
    value = float(np.percentile(scores, 100.0 * (1.0 - contamination)))
    return Threshold(value, "contamination", {"contamination": float(contamination)}, len(scores))


def spot_threshold(scores, risk: float = 1e-3, init_level: float = 0.98) -> Threshold:
    """SPOT's initial calibration: GPD over the peaks above the init_level quantile."""
    check_probability("risk", risk)
    if not 0.5 <= init_level < 1.0:
        raise ValueError("init_level must be in [0.5, 1)")
    s = _clean(scores)
    init_level = max(0.5, min(init_level, 1.0 - TARGET_PEAKS / s.size))
    t = float(np.quantile(s, init_level))
    peaks = s[s > t] - t
    n, n_peaks = s.size, peaks.size
    if n_peaks < MIN_PEAKS:
        fallback = quantile_threshold(s, max(risk, 1.0 / n))
        fallback.method = "quantile"
        fallback.params.update(
            {"fallback_from": "spot", "reason": f"only {n_peaks} peaks over the initial threshold"}
        )
        return fallback
    gamma, sigma = fit_gpd(peaks)
    ratio = risk * n / n_peaks
    if abs(gamma) < 1e-9:
        value = t - sigma * math.log(ratio)
    else:
        value = t + (sigma / gamma) * (ratio ** (-gamma) - 1.0)
    params = {
        "risk": risk,
        "init_level": init_level,
        "initial_threshold": t,
        "gamma": gamma,
        "sigma": sigma,
        "peaks": int(n_peaks),
    }
    return Threshold(float(value), "spot", params, int(n))


#: The tail fit uses the largest ``max(MIN_EXCESSES, TAIL_SHARE × n)`` of n scores.
TAIL_SHARE = 0.05
MIN_EXCESSES = 10
#: How many standard errors the fitted tail shape is raised by (an upper confidence bound).
SHAPE_MARGIN = 1.0
#: The heaviest tail shape used (1: a tail as heavy as a Cauchy's).
MAX_SHAPE = 1.0


def fit_tail(values: np.ndarray, min_scale: float) -> tuple[float, float, float, float]:
    """(u, log10 of the share of scores above u, shape, scale) of a generalized Pareto tail
    fitted to the largest of the sorted ``values``, by probability-weighted moments (Hosking
    & Wallis, 1987), with the shape raised by `SHAPE_MARGIN` standard errors and never below
    0: a tail estimated from few points errs towards the heavier, so towards fewer alerts."""
    n = values.shape[0]
    k = min(n - 1, max(MIN_EXCESSES, math.ceil(TAIL_SHARE * n)))
    if k < 2:
        return float(values[-1]), 0.0, MAX_SHAPE, min_scale
    u = float(values[n - k - 1])
    excess = values[n - k :] - u
    a0 = float(excess.mean())
    weights = 1.0 - (np.arange(1, k + 1) - 0.35) / k
    a1 = float((weights * excess).mean())
    if a0 <= 0 or a0 - 2 * a1 <= 1e-12 * a0:
        shape, scale = MAX_SHAPE, max(a0, min_scale)
    else:
        shape = 2.0 - a0 / (a0 - 2.0 * a1)
        scale = 2.0 * a0 * a1 / (a0 - 2.0 * a1)
    shape = max(shape, 0.0)
    shape = min(MAX_SHAPE, shape + SHAPE_MARGIN * (1.0 + shape) / math.sqrt(k))
    scale = max(scale, min_scale)
    return u, math.log10(k / (n + 1)), shape, scale


def log10_tail_of(values: np.ndarray, tail: Sequence[float], x: float) -> float:
    """log10 P(score ≥ x) against the sorted past scores ``values`` and their `fit_tail`:
    the rank among them up to the tail's threshold, the fitted Pareto tail beyond it."""
    u, log10_share, shape, scale = tail
    if x <= u:
        n = values.shape[0]
        return math.log10((n - int(np.searchsorted(values, x, side="left")) + 1) / (n + 1))
    y = (x - u) / scale
    log_s = -y if shape < 1e-9 else -math.log1p(shape * y) / shape
    return max(log10_share + log_s / math.log(10.0), -300.0)


def log10_tails(values: np.ndarray, tail: Sequence[float], x: np.ndarray) -> np.ndarray:
    """`log10_tail_of` for an array of scores."""
    u, log10_share, shape, scale = tail
    x = np.asarray(x, dtype="float64")
    n = values.shape[0]
    out = np.log10((n - np.searchsorted(values, x, side="left") + 1) / (n + 1))
    beyond = x > u
    if beyond.any():
        y = (x[beyond] - u) / scale
        log_s = -y if shape < 1e-9 else -np.log1p(shape * y) / shape
        out[beyond] = np.maximum(log10_share + log_s / math.log(10.0), -300.0)
    return out


def tail_value(values: np.ndarray, tail: Sequence[float], log10_p: float) -> float:
    """The score whose tail probability is 10**log10_p (the inverse of `log10_tail_of`)."""
    u, log10_share, shape, scale = tail
    if log10_p >= log10_share:
        n = values.shape[0]
        # the smallest past score whose rank reaches the level, as a conservative threshold
        count = max(1, math.floor(10**log10_p * (n + 1)) - 1)
        return float(values[max(0, n - count)])
    ratio = 10 ** (log10_p - log10_share)
    if shape < 1e-9:
        return u - scale * math.log(ratio)
    return u + scale / shape * (ratio ** (-shape) - 1.0)


#: Decades beyond the budget's level from which a score is not learned as normal, in both
#: modes (an incident must not become the normal it is judged against; on a stationary stream
#: that leaves out a tenth of a budget's share of the scores).
UNLEARNED_DECADES = 1.0


def is_budget(value: Any) -> bool:
    """A valid alert budget: a finite number in (0, 1000) false alerts per 1,000."""
    return is_finite_number(value) and 0.0 < value < 1000.0


#: Sorted calibration scores kept with a budget threshold (evenly spaced order statistics
#: beyond this many): what the p-values of the body of the distribution are ranked against.
MAX_REFERENCE = 1000


def budget_threshold(scores, budget: float) -> Threshold:
    """The score a normal row exceeds with probability ``budget`` / 1000, by the same tail
    estimate as window mode's alert budget (`fit_tail`): the rank among the calibration
    scores where they reach that far, the fitted Pareto tail beyond."""
    if not is_budget(budget):
        raise ValueError("budget must be in (0, 1000) false alerts per 1,000 rows")
    s = np.sort(_clean(scores))
    n = s.size
    tail = fit_tail(s, 1e-6 * max(1.0, float(np.abs(s).max())))
    value = tail_value(s, tail, math.log10(budget / 1000.0))
    if n > MAX_REFERENCE:
        s = s[np.linspace(0, n - 1, MAX_REFERENCE).round().astype(int)]
    params = {
        "budget": float(budget),
        "tail": [float(v) for v in tail],
        "reference": [float(v) for v in s],
    }
    return Threshold(float(value), "budget", params, n)


def rebudget(threshold: Threshold, budget: float) -> Threshold:
    """The same calibration at another budget (a threshold calibrated by `budget_threshold`)."""
    tail, reference = threshold.params.get("tail"), threshold.params.get("reference")
    if threshold.method != "budget" or not tail or not reference:
        raise ValueError(
            f"its threshold was calibrated by {threshold.method!r}, which keeps no tail to "
            "re-derive it at another budget; retrain it (vaeguard train --budget)"
        )
    values = np.asarray(reference, dtype="float64")
    value = tail_value(values, tail, math.log10(budget / 1000.0))
    params = {**threshold.params, "budget": float(budget)}
    return Threshold(float(value), "budget", params, threshold.calibration_rows)


def p_values(threshold: Threshold, scores) -> np.ndarray | None:
    """Each score's probability on normal data (None unless the threshold has a tail fit)."""
    tail = threshold.params.get("tail")
    reference = threshold.params.get("reference")
    if threshold.method != "budget" or tail is None or not reference:
        return None
    values = np.asarray(reference, dtype="float64")
    return np.power(10.0, log10_tails(values, tail, scores))


def calibrate(
    scores,
    method: str = "quantile",
    *,
    target_fpr: float = 0.01,
    risk: float = 1e-3,
    budget: float = 10.0,
) -> Threshold:
    if method == "budget":
        return budget_threshold(scores, budget)
    if method == "quantile":
        return quantile_threshold(scores, target_fpr)
    if method == "spot":
        return spot_threshold(scores, risk)
    raise ValueError(f"unknown threshold method {method!r}; expected one of {', '.join(METHODS)}")


def gpd_log_likelihood(peaks: np.ndarray, gamma: float, sigma: float) -> float:
    if sigma <= 0:
        return -math.inf
    if abs(gamma) < 1e-9:
        return -peaks.size * math.log(sigma) - float(peaks.sum()) / sigma
    arg = 1.0 + gamma * peaks / sigma
    if (arg <= 0).any():
        return -math.inf
    return -peaks.size * math.log(sigma) - (1.0 + 1.0 / gamma) * float(np.log(arg).sum())


def fit_gpd(peaks: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (γ, σ) of a generalized Pareto distribution, by Grimshaw's trick.

    The 2-D likelihood maximization reduces to the roots of one function of x = γ/σ:
    u(x)·v(x) = 1 with u = mean(1/(1+x·Y)), v = 1 + mean(log(1+x·Y)). Roots are bracketed on a
    grid on both sides of zero and refined by bisection; the best candidate by likelihood wins,
    the exponential (γ = 0) case included.
    """
    y = np.asarray(peaks, dtype="float64")
    y_min, y_max, y_mean = float(y.min()), float(y.max()), float(y.mean())
    y_min = max(y_min, 1e-12 * max(y_max, 1.0))

    def w(x: float) -> float:
        s = 1.0 + x * y
        return float(np.mean(1.0 / s) * (1.0 + np.mean(np.log(s))) - 1.0)

    eps = 1e-8 / max(y_mean, 1e-12)
    intervals = [
        (-1.0 / y_max + eps, -eps),
        (eps, 2.0 * (y_mean - y_min) / (y_min**2) if y_mean > y_min else 1.0),
    ]
    roots: list[float] = []
    for lo, hi in intervals:
        if not lo < hi:
            continue
        grid = np.concatenate(
            [np.linspace(lo, hi, 200), np.geomspace(abs(lo), abs(hi), 200) * np.sign(lo)]
        )
        grid = np.unique(grid[(grid >= min(lo, hi)) & (grid <= max(lo, hi))])
        values = np.array([w(x) for x in grid])
        for k in np.nonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)[0]:
            a, b = grid[k], grid[k + 1]
            fa = values[k]
            for _ in range(60):
                mid = 0.5 * (a + b)
                fm = w(mid)
                if np.sign(fm) == np.sign(fa):
                    a, fa = mid, fm
                else:
                    b = mid
            roots.append(0.5 * (a + b))
    candidates = [(0.0, y_mean)]
    for x in roots:
        gamma = float(np.mean(np.log(1.0 + x * y)))
        if abs(x) > 0 and abs(gamma) > 1e-12:
            candidates.append((gamma, gamma / x))
    return max(candidates, key=lambda gs: gpd_log_likelihood(y, *gs))


#: Recent scores a following threshold is estimated from.
FOLLOW_HISTORY = 2000
#: Rows per batch when a file is judged as a stream (`vaeguard score`, `predict_stream`): the
#: daemon learns after every batch it scores, and a file judged in one batch would be judged
#: wholly by the threshold fixed at training.
FOLLOW_BATCH = 100


class FollowingThreshold:
    """The budget threshold of a tabular model, re-estimated on recent normal rows' scores.

    A threshold calibrated once holds its false-alarm rate only while the process stays as it
    was; a slowly drifting one then alarms on every row. This one starts from the calibration
    scores and, after each batch, adds the batch's scores to a bounded history and estimates
    the budget's threshold again by the same rule as at training. Rows a tenth of the budget's
    tail probability or less are left out, so an incident is not learned as normal; a drift too
    fast to follow keeps alarming, which is what retraining is for."""

    def __init__(self, threshold: Threshold, history: int = FOLLOW_HISTORY):
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
