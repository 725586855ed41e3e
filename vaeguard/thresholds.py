"""Threshold calibration on held-out normal scores: an empirical quantile, or EVT (SPOT).

The quantile is exact for the false-positive rate it targets but cannot reach beyond the
calibration sample (1 in 10,000 needs well over 10,000 rows). SPOT (Siffer et al., KDD 2017)
fits a generalized Pareto distribution to the peaks over a high initial threshold and
extrapolates to risks far smaller than 1/n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaeguard.errors import DataError

METHODS = ("quantile", "spot")
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


def _clean(scores) -> np.ndarray:
    s = np.asarray(scores, dtype="float64").ravel()
    if s.size == 0:
        raise DataError("cannot calibrate a threshold on zero scores")
    if not np.isfinite(s).all():
        raise DataError("calibration scores contain NaN or infinite values")
    return s


def quantile_threshold(scores, target_fpr: float = 0.01) -> Threshold:
    """The (1 − target_fpr) empirical quantile: that share of normal rows scores above it."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError("target_fpr must be in (0, 1)")
    s = _clean(scores)
    value = float(np.quantile(s, 1.0 - target_fpr, method="higher"))
    return Threshold(value, "quantile", {"target_fpr": target_fpr}, int(s.size))


def spot_threshold(scores, risk: float = 1e-3, init_level: float = 0.98) -> Threshold:
    """SPOT's initial calibration: GPD over the peaks above the init_level quantile."""
    if not 0.0 < risk < 1.0:
        raise ValueError("risk must be in (0, 1)")
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


def calibrate(
    scores, method: str = "quantile", *, target_fpr: float = 0.01, risk: float = 1e-3
) -> Threshold:
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
