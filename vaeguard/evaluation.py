"""Ranking and threshold metrics for labelled evaluation, in NumPy (no scikit-learn at run time).

Definitions match scikit-learn's `roc_auc_score` and `average_precision_score`, ties included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vaeguard.errors import DataError


def _check(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype="float64").ravel()
    if y.shape != s.shape:
        raise DataError(f"{y.size} labels but {s.size} scores")
    if y.all() or not y.any():
        raise DataError("evaluation needs both normal and anomalous rows in the labels")
    return y, s


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve = P(score of an anomaly > score of a normal), ties count ½."""
    y, s = _check(y_true, scores)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype="float64")
    sorted_s = s[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = 0.5 * (a + b - 1) + 1.0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, highest score first."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tp = np.cumsum(y_sorted)[last_of_group]
    fp = (last_of_group + 1) - tp
    return tp.astype("float64"), fp.astype("float64"), s_sorted[last_of_group]


def average_precision(y_true, scores) -> float:
    """Σ (R_k − R_{k−1}) · P_k over distinct thresholds (the step-wise area, no interpolation)."""
    y, s = _check(y_true, scores)
    tp, fp, _ = _curve(y, s)
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1(y_true, scores) -> tuple[float, float]:
    """The best F1 over all thresholds, and the threshold reaching it."""
    y, s = _check(y_true, scores)
    tp, fp, thresholds = _curve(y, s)
    f1 = 2 * tp / (tp + fp + y.sum())
    k = int(np.argmax(f1))
    return float(f1[k]), float(thresholds[k])


@dataclass(frozen=True)
class Flagged:
    """How a set of flags reads against the labels: precision, recall, F1, and the share of the
    normal rows flagged (the false-alarm rate an operator lives with)."""

    precision: float
    recall: float
    f1: float
    false_alarm_rate: float

    @classmethod
    def of(cls, y: np.ndarray, flagged: np.ndarray) -> Flagged:
        tp = float((flagged & y).sum())
        precision = tp / flagged.sum() if flagged.any() else 0.0
        recall = tp / y.sum()
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        return cls(float(precision), float(recall), float(f1), float(flagged[~y].mean()))


@dataclass(frozen=True)
class Evaluation:
    roc_auc: float
    average_precision: float
    precision: float
    recall: float
    f1: float
    #: Share of the normal rows above the threshold.
    false_alarm_rate: float
    best_f1: float
    best_f1_threshold: float
    threshold: float
    rows: int
    anomalies: int
    #: The rows judged in order as the daemon judges a stream (a budget threshold following the
    #: normal rows); None when the model's threshold does not follow.
    stream: Flagged | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(y_true, scores, threshold: float, stream_flags=None) -> Evaluation:
    """All of the above, plus precision / recall / F1 and the false-alarm rate at a given
    threshold (score > threshold) and, given ``stream_flags``, of those flags."""
    y, s = _check(y_true, scores)
    fixed = Flagged.of(y, s > threshold)
    stream = None
    if stream_flags is not None:
        flags = np.asarray(stream_flags).astype(bool).ravel()
        if flags.shape != y.shape:
            raise DataError(f"{y.size} labels but {flags.size} stream flags")
        stream = Flagged.of(y, flags)
    bf1, bthr = best_f1(y, s)
    return Evaluation(
        roc_auc=roc_auc(y, s),
        average_precision=average_precision(y, s),
        precision=fixed.precision,
        recall=fixed.recall,
        f1=fixed.f1,
        false_alarm_rate=fixed.false_alarm_rate,
        best_f1=bf1,
        best_f1_threshold=bthr,
        threshold=float(threshold),
        rows=int(s.size),
        anomalies=int(y.sum()),
        stream=stream,
    )
