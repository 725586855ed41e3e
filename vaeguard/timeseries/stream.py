"""Causal replay of a recorded stream: train on the past, score the present, retrain later.

This is the offline twin of the daemon loop (same featurizer, model and likelihood), used by
the NAB runner. It is causal by construction:

* every window is built from points at or before the one it scores (the featurizer runs once,
  in arrival order);
* the model that scores the records in ``[t_k, t_{k+1})`` was trained only on windows of
  records before ``t_k``; between two trainings the model is fixed, so the whole segment is
  scored in one batched call without seeing anything later;
* the likelihood walks the scores in arrival order; at a training point its history may be
  rebuilt (``reseed``) from the new model's scores of the entity's past windows.

Training points: the first at record ``first_fit`` (the end of the probationary period), then
each time the record count has grown by ``retrain_growth``× (at most ``retrain_max_gap``
records apart); retraining continues from the current weights unless ``warm_retrain=False``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaeguard.timeseries.detector import MIN_TRAIN_WINDOWS, WindowDetector
from vaeguard.timeseries.likelihood import AnomalyLikelihood

RESEED_MODES = ("none", "first", "always")


@dataclass
class ModelScores:
    """What the model phase produces: the raw score of every window and the history seeds."""

    n_records: int
    keep: np.ndarray  # record index of each window
    entities: np.ndarray  # entity of each window
    raw: np.ndarray  # raw score of each window (NaN before the first model)
    trained_at: list[int] = field(default_factory=list)
    #: per training point: {entity: the new model's scores of its last `history` past windows}
    seeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class StreamResult:
    """Per record: raw score (NaN when it had no window or no model yet) and [0, 1] output."""

    raw: np.ndarray
    output: np.ndarray
    trained_at: list[int] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    model_scores: ModelScores | None = None


def training_points(n: int, first_fit: int, growth: float | None, max_gap: int | None) -> list[int]:
    """Record indices where the model is (re)trained, in increasing order, all < n."""
    points = []
    t = max(int(first_fit), 1)
    while t < n:
        points.append(t)
        if not growth and not max_gap:
            break
        nxt = math.ceil(t * growth) if growth else n
        if max_gap:
            nxt = min(nxt, t + int(max_gap))
        t = max(nxt, t + 1)
    return points


def model_scores(
    detector: WindowDetector,
    records: Sequence[dict[str, Any]],
    *,
    first_fit: int,
    retrain_growth: float | None = 2.0,
    retrain_max_gap: int | None = None,
    max_train: int = 4000,
    warm_retrain: bool = True,
) -> ModelScores:
    """Featurize once, then train / score segment by segment (the expensive, causal part)."""
    n = len(records)
    featurizer = detector.featurizer()
    batch = featurizer.update_and_featurize(records)
    keep = batch.keep
    entities = np.asarray(batch.entities, dtype=object)
    out = ModelScores(n, keep, entities, np.full(len(keep), np.nan))
    history = detector.likelihood_spec.history
    points = training_points(n, first_fit, retrain_growth, retrain_max_gap)
    for k, start in enumerate(points):
        stop = points[k + 1] if k + 1 < len(points) else n
        past = np.flatnonzero(keep < start)
        if past.size < MIN_TRAIN_WINDOWS:
            continue
        train = past[-max_train:]
        detector.fit(*_inputs(batch, train), warm_start=warm_retrain and bool(out.trained_at))
        out.trained_at.append(int(start))
        rows = np.flatnonzero((keep >= start) & (keep < stop))
        seeds = {}
        for key in dict.fromkeys(entities[rows].tolist()):
            mine = past[entities[past] == key][-history:]
            seeds[key] = detector.raw_scores(*_inputs(batch, mine))
        out.seeds.append(seeds)
        if rows.size:
            out.raw[rows] = detector.raw_scores(*_inputs(batch, rows))
    out.stats = dict(featurizer.stats)
    return out


def apply_likelihood(
    scores: ModelScores, likelihood: AnomalyLikelihood, reseed: str = "first"
) -> np.ndarray:
    """Per-record [0, 1] outputs: the likelihood fed every scored window in arrival order.

    ``reseed``: "first" seeds each entity's history with the first model's scores of its past
    windows; "always" rebuilds it after every training; "none" builds it online only.
    """
    if reseed not in RESEED_MODES:
        raise ValueError(f"reseed must be one of {RESEED_MODES}")
    output = np.zeros(scores.n_records)
    bounds = [*scores.trained_at, scores.n_records]
    for k, start in enumerate(scores.trained_at):
        rows = np.flatnonzero((scores.keep >= start) & (scores.keep < bounds[k + 1]))
        if reseed == "always" or (reseed == "first" and k == 0):
            for key, past in scores.seeds[k].items():
                likelihood.reseed(key, past)
        if rows.size:
            output[scores.keep[rows]] = likelihood.update_many(
                scores.entities[rows].tolist(), scores.raw[rows]
            )
    return output


def apply_likelihood_views(
    views: Sequence[ModelScores], likelihood: AnomalyLikelihood, reseed: str = "first"
) -> np.ndarray:
    """Per-record [0, 1] outputs of several models of the same records: the most surprised wins.

    Each view's raw scores get their own tail probability (their scales differ); a record's
    output is that of the smallest one, then ``likelihood``'s saturation and suppression apply,
    so an incident seen by both views is still one alert.
    """
    if reseed not in RESEED_MODES:
        raise ValueError(f"reseed must be one of {RESEED_MODES}")
    n = views[0].n_records
    tails = np.zeros(n)
    entity = np.full(n, None, dtype=object)
    for scores in views:
        if scores.n_records != n:
            raise ValueError("every view must score the same records")
        state = AnomalyLikelihood(likelihood.spec)
        bounds = [*scores.trained_at, n]
        for k, start in enumerate(scores.trained_at):
            rows = np.flatnonzero((scores.keep >= start) & (scores.keep < bounds[k + 1]))
            if reseed == "always" or (reseed == "first" and k == 0):
                for key, past in scores.seeds[k].items():
                    state.reseed(key, past)
            for i, key, raw in zip(
                scores.keep[rows], scores.entities[rows], scores.raw[rows], strict=True
            ):
                tails[i] = min(tails[i], state.log10_tail(key, float(raw)))
                entity[i] = key
    output = np.zeros(n)
    for i in np.flatnonzero(entity != None):  # noqa: E711 (elementwise)
        output[i] = likelihood.emit(entity[i], tails[i])
    return output


def run_stream(
    detector: WindowDetector,
    records: Sequence[dict[str, Any]],
    *,
    first_fit: int,
    reseed: str = "first",
    **schedule: Any,
) -> StreamResult:
    """Score every record causally: `model_scores` then `apply_likelihood` (if configured)."""
    scores = model_scores(detector, records, first_fit=first_fit, **schedule)
    raw = np.full(scores.n_records, np.nan)
    raw[scores.keep] = scores.raw
    if detector.use_likelihood:
        output = apply_likelihood(scores, detector.likelihood(), reseed)
    else:
        output = np.nan_to_num(raw, nan=0.0)
    return StreamResult(raw, output, scores.trained_at, scores.stats, scores)


def _inputs(batch, rows: np.ndarray):
    return batch.x[rows], None if batch.c is None else batch.c[rows], batch.mask[rows]
