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


# -- streams: labelled incidents -------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    """One labelled incident: a run of consecutive anomalous rows of one entity."""

    entity: str | None
    #: The file rows (1-based) of its first and last labelled point.
    first_row: int
    last_row: int
    #: The file row of the first alert that detects it (None: missed).
    alert_row: int | None
    #: The entity's points from the incident's first to that alert (0: on its first point).
    delay: int | None
    #: What that alert names first (a window record's top metric), when known.
    named: str | None = None

    @property
    def detected(self) -> bool:
        return self.alert_row is not None


@dataclass(frozen=True)
class IncidentEvaluation:
    """How a stream's alerts read against labelled incidents, counted as an operator counts
    pages: incidents detected, how late, and the alerts that page for nothing.

    An incident is detected by an alert on the entity's points from its first point to ``lag``
    points after its last (a window keeps seeing a point for ``lag`` points). An alert on a
    scored point outside every incident's ``[first, last + lag + aftermath]`` is a false alert;
    an alert in the ``aftermath`` after that is the incident's follow-up and counts for neither.
    """

    incidents: int
    detected: int
    #: Points from an incident's first point to its detecting alert: median and worst.
    median_delay: float | None
    max_delay: int | None
    alerts: int
    #: Alerts within an incident's detection span.
    true_alerts: int
    false_alerts: int
    #: Scored points outside every incident and its aftermath: the false alerts' denominator.
    quiet_points: int
    false_alerts_per_1000: float | None
    #: Share of the alerts, follow-ups left out, that fall in an incident's detection span.
    alert_precision: float | None
    lag: int
    aftermath: int
    each: tuple[Incident, ...]
    #: The entities with false alerts, most first: (entity, false alerts, quiet points).
    noisiest: tuple[tuple[str | None, int, int], ...] = ()

    @property
    def recall(self) -> float | None:
        return self.detected / self.incidents if self.incidents else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recall"] = self.recall
        d["noisiest"] = [
            {"entity": e, "false_alerts": f, "quiet_points": q} for e, f, q in self.noisiest
        ]
        return d


def judge_incidents(
    labels, alerts, scored, entities, *, lag: int, aftermath: int, named=None, rows=None
) -> IncidentEvaluation:
    """Label runs per entity (file order is each entity's time order) against the alerts.

    ``labels``, ``alerts`` and ``scored`` (the point got a score; points that only filled a
    window or were refused cannot alert) are per point, ``entities`` each point's entity,
    ``named`` (optional) what each point's record names first and ``rows`` (default 1, 2, …)
    its row in the file.
    """
    y = np.asarray(labels).astype(bool).ravel()
    a = np.asarray(alerts).astype(bool).ravel()
    s = np.asarray(scored).astype(bool).ravel()
    ents = list(entities)
    if not (y.shape == a.shape == s.shape) or len(ents) != y.size:
        raise DataError(f"{y.size} labels for {a.size} alerts, {s.size} rows, {len(ents)} entities")
    if lag < 1 or aftermath < 0:
        raise ValueError("lag must be at least 1 and aftermath at least 0")
    row = np.arange(1, y.size + 1) if rows is None else np.asarray(rows, dtype=np.int64)
    if row.shape != y.shape:
        raise DataError(f"{y.size} labels but {row.size} row numbers")
    rows_of: dict[Any, list[int]] = {}
    for i, e in enumerate(ents):
        rows_of.setdefault(e, []).append(i)
    each: list[Incident] = []
    noisy: list[tuple[Any, int, int]] = []
    quiet = np.zeros(y.size, dtype=bool)
    in_span = np.zeros(y.size, dtype=bool)
    for entity, rows in rows_of.items():
        idx = np.asarray(rows)
        ey, ea = y[idx], a[idx]
        n = idx.size
        near = np.zeros(n, dtype=bool)  # in some incident's span or aftermath
        edges = np.diff(np.r_[0, ey.astype(int), 0])
        for start, stop in zip(
            np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True
        ):
            span_end = min(n, stop + lag)
            near[start : min(n, span_end + aftermath)] = True
            in_span[idx[start:span_end]] = True
            hits = np.flatnonzero(ea[start:span_end])
            first = int(hits[0]) if hits.size else None
            each.append(
                Incident(
                    entity=entity,
                    first_row=int(row[idx[start]]),
                    last_row=int(row[idx[stop - 1]]),
                    alert_row=None if first is None else int(row[idx[start + first]]),
                    delay=first,
                    named=None if first is None or named is None else named[idx[start + first]],
                )
            )
        entity_quiet = ~near & s[idx]
        quiet[idx[entity_quiet]] = True
        n_false = int((ea & entity_quiet).sum())
        if n_false:
            noisy.append((entity, n_false, int(entity_quiet.sum())))
    each.sort(key=lambda i: i.first_row)
    noisy.sort(key=lambda e: (-e[1], e[2]))
    delays = [i.delay for i in each if i.delay is not None]
    true_alerts = int((a & in_span).sum())
    false_alerts = int((a & quiet).sum())
    counted = true_alerts + false_alerts
    n_quiet = int(quiet.sum())
    return IncidentEvaluation(
        incidents=len(each),
        detected=len(delays),
        median_delay=float(np.median(delays)) if delays else None,
        max_delay=max(delays) if delays else None,
        alerts=int(a.sum()),
        true_alerts=true_alerts,
        false_alerts=false_alerts,
        quiet_points=n_quiet,
        false_alerts_per_1000=1000.0 * false_alerts / n_quiet if n_quiet else None,
        alert_precision=true_alerts / counted if counted else None,
        lag=int(lag),
        aftermath=int(aftermath),
        each=tuple(each),
        noisiest=tuple(noisy),
    )
