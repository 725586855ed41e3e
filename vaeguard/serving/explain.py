"""Score rows → score records: severity bands and top-k contributions, written once for every
model kind, vectorized over the batch (per-row Python work is only building the outputs)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vaeguard.contributions import FLOAT_MAX, finite, top_contributions
from vaeguard.scored import ScoredRecord
from vaeguard.severity import levels, severities

# Re-exported: the serving classes and the benchmarks import these from here.
__all__ = [
    "FLOAT_MAX",
    "finite",
    "labels_of",
    "p_values_of",
    "score_records",
    "severities",
    "top_contributions",
]

#: A score record carries at most this many string labels of its input, each at most this long
#: (labels route alerts; an unbounded one would make the record too large to produce).
MAX_LABELS = 32
MAX_LABEL_CHARS = 256


def labels_of(record: dict[str, Any]) -> dict[str, str]:
    """The record's string fields (conditions, tags) that route alerts, bounded in size."""
    out = {k: v for k, v in record.items() if type(v) is str and k != "key" and k != "ts"}
    if len(out) <= MAX_LABELS and all(
        len(k) <= MAX_LABEL_CHARS and len(v) <= MAX_LABEL_CHARS for k, v in out.items()
    ):
        return out
    out = {}
    for k, v in record.items():
        if type(v) is str and k != "key" and k != "ts" and len(k) <= MAX_LABEL_CHARS:
            out[k] = v if len(v) <= MAX_LABEL_CHARS else v[: MAX_LABEL_CHARS - 1] + "…"
            if len(out) >= MAX_LABELS:
                break
    return out


def score_records(
    items: Sequence[Any],
    entities: Sequence[str | None],
    timestamps: Sequence[Any],
    scores: np.ndarray,
    threshold: float,
    contributions: list[list[dict[str, Any]]],
    *,
    bands: Sequence[tuple[str, float]],
    model_version: str,
    likelihood: Sequence[float] | None = None,
    decision: np.ndarray | None = None,
    inclusive: bool = False,
    p_values: Sequence[float] | None = None,
    alert_p: float | None = None,
    median: float | None = None,
) -> list[ScoredRecord]:
    """One `ScoredRecord` per row; ``items`` are the `Inbound` records the rows report on.

    ``decision`` (default: the scores) is what the threshold is applied to, e.g. a window
    model's likelihood output while the record keeps the raw score. Severity is relative to
    the model's calibration (`vaeguard.severity.levels`): ``alert_p`` is the tail probability
    at which it alerts (with ``p_values``), ``median`` its median normal score otherwise."""
    scores = finite(scores)
    decided = scores if decision is None else finite(decision)
    level = levels(decided, threshold, p_values=p_values, alert_p=alert_p, median=median)
    anomalous, severity = severities(decided, threshold, bands, inclusive=inclusive, level=level)
    threshold = float(threshold)
    score_l = scores.tolist()
    threshold_of = (
        "anomaly_likelihood" if decision is not None and decision is likelihood else "score"
    )
    out = []
    for i, item in enumerate(items):
        out.append(
            ScoredRecord(
                key=entities[i],
                ts=timestamps[i],
                score=score_l[i],
                threshold=threshold,
                is_anomaly=anomalous[i],
                severity=severity[i],
                contributions=contributions[i],
                model_version=model_version,
                source=item.source,
                labels=labels_of(item.record),
                anomaly_likelihood=None if likelihood is None else _finite(likelihood[i]),
                p_value=None if p_values is None else p_values[i],
                threshold_of=threshold_of,
            )
        )
    return out


def p_values_of(log10_tails: np.ndarray) -> list[float]:
    """Tail probabilities from their log10 (which the likelihood keeps), for score records."""
    return np.power(10.0, np.minimum(np.asarray(log10_tails, dtype="float64"), 0.0)).tolist()


def _finite(v: float) -> float:
    v = float(v)
    if math.isfinite(v):
        return v
    return 0.0 if math.isnan(v) else math.copysign(FLOAT_MAX, v)
