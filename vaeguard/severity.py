"""Severity bands: how far beyond the model's own alert level a score lies, so that a band
means the same on every model.

The unit is decades of tail probability beyond the alert level. A record whose p-value (its
probability on normal data, `vaeguard.thresholds`) is p, on a model that alerts at tail
probability α (the alert budget / 1,000), has the level log10(α / p): 0 at the threshold, 1
for a score ten times rarer on normal data than the rarest that alerts, 3 for one a thousand
times rarer. So with the default bands a "critical" record is one that normal data produces at
most a thousandth as often as an alert, whatever the model, its units or its stream.

A model without a fitted tail (a quantile, SPOT, contamination or manual threshold) has no
p-values; its level is the margin above the threshold in multiples of the threshold's own
height above the median normal score (the same bands: 1 = twice as far from the median as the
threshold, 3 = four times), and in nats only where neither is known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NORMAL = "normal"
#: (name, minimum level), ascending: decades of tail probability beyond the alert level
#: (see the module's docstring). A score above the threshold has at least the first.
DEFAULT_BANDS: tuple[tuple[str, float], ...] = (
    ("warning", 0.0),
    ("major", 1.0),
    ("critical", 3.0),
)


def levels(
    scores,
    threshold: float,
    *,
    p_values=None,
    alert_p: float | None = None,
    median: float | None = None,
) -> np.ndarray:
    """Each score's level: log10(alert_p / p) where p-values and the alert level are known,
    else (score − threshold) / (threshold − median) where the median normal score lies below
    the threshold, else score − threshold (nats)."""
    s = np.asarray(scores, dtype="float64")
    if p_values is not None and alert_p is not None and 0.0 < alert_p < 1.0:
        p = np.asarray([np.nan if v is None else v for v in p_values], dtype="float64")
        p = np.clip(np.where(np.isfinite(p), p, 1.0), 1e-300, 1.0)
        return math.log10(alert_p) - np.log10(p)
    margin = s - threshold
    if median is not None and math.isfinite(median) and threshold > median:
        with np.errstate(over="ignore"):  # a threshold a hair above the median: infinitely far
            return margin / (threshold - median)
    return margin


def severity(
    score: float,
    threshold: float,
    bands: Sequence[tuple[str, float]] = DEFAULT_BANDS,
    *,
    p_value: float | None = None,
    alert_p: float | None = None,
    median: float | None = None,
) -> str:
    """The band of one score (`severities` for one row, its level from `levels`)."""
    scores = np.asarray([score], dtype="float64")
    level = levels(
        scores,
        threshold,
        p_values=None if p_value is None else [p_value],
        alert_p=alert_p,
        median=median,
    )
    return severities(scores, threshold, bands, level=level)[1][0]


def severities(
    scores: np.ndarray,
    threshold: float,
    bands: Sequence[tuple[str, float]],
    *,
    inclusive: bool = False,
    level: np.ndarray | None = None,
) -> tuple[list[bool], list[str]]:
    """(is_anomaly, severity name) per row: "normal" unless anomalous, else the highest band
    its level reaches, at least the first (the bands start at 0).

    A score above the threshold is anomalous (at or above it with ``inclusive``: an alert level
    such as a likelihood's 1.0 is reached, not exceeded). ``level``: each row's
    `vaeguard.severity.levels` (default: the margin above the threshold)."""
    anomalous = scores >= threshold if inclusive else scores > threshold
    names = [NORMAL, *(b for b, _ in bands)]
    minimums = np.asarray([m for _, m in bands], dtype="float64")
    margin = np.maximum(scores - threshold if level is None else level, 0.0)
    band = np.where(anomalous, np.searchsorted(minimums, margin, side="right"), 0)
    return anomalous.tolist(), [names[b] for b in band.tolist()]


def rank(name: str, bands: Sequence[tuple[str, float]] = DEFAULT_BANDS) -> int:
    """Order of a severity name (normal = 0), for routing rules such as "major or worse"."""
    names = [NORMAL, *(b for b, _ in bands)]
    if name not in names:
        raise ValueError(f"unknown severity {name!r}; known: {', '.join(names)}")
    return names.index(name)
