"""Learning a stream online from nothing, through the daemon's own record path.

This is how the NAB runner scores a series, and what a daemon started on a fresh stream would
do: nothing is known up front, so

1. at the end of the probationary period (row ``first_fit``) the detector (`ViewSet`) trains
   on the windows of the rows seen so far, as ``vaeguard train-window`` would;
2. every row, from the first, then goes through the daemon's batch step
   (`vaeguard.records.batch.process`) and its window-mode serving object
   (`vaeguard.serving.window.WindowServing`): the same decoding, featurizer, views, likelihood
   and suppression as ``vaeguard run``. Replaying the probationary rows builds the per-entity
   state (windows, scales, seasonal history); the likelihood histories then restart, so, as in
   a daemon started on a trained bundle, every score they hold is of a point the model had not
   trained on (a model scores its own training points lower than new ones, and a history of
   them would make every later point look rarer than it is). The runner has no opinion before
   the first fit (output 0, no raw score), nor until the histories hold ``min_history`` scores;
3. each time the stream has grown by ``retrain_growth``× (at most ``retrain_max_gap`` rows
   apart) the views retrain warm on the newest ``max_train`` windows of the rows seen so far,
   and serving continues with the same per-entity state. The serving object does this itself
   (`vaeguard.timeseries.learning`), as it does in ``vaeguard run``: the runner only ends its
   batches on the rows where a refit is due.

Causal by construction: a row is scored by a model trained on earlier rows only, its window
holds earlier rows only, and the likelihood walks the rows in arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaeguard.scored import Source
from vaeguard.sources import Record
from vaeguard.timeseries.detector import MIN_TRAIN_WINDOWS
from vaeguard.timeseries.learning import Windows, fit_views
from vaeguard.timeseries.views import ViewLikelihood, ViewSet

#: Records per batch step (the daemon's default ``batch_max_records``); the result does not
#: depend on it.
CHUNK = 2000
TOPIC = "stream"


@dataclass
class OnlineResult:
    """Per row: the [0, 1] output (0 without a score), each likelihood term's raw score (NaN
    without; `ViewSet.term_metrics` names their metrics) and the metric its score record names
    first (None without a score or a metric), so a benchmark can check that an alert names the
    metric that moved."""

    output: np.ndarray
    raw: np.ndarray  # terms × rows
    entities: list[str | None]
    trained_at: list[int] = field(default_factory=list)
    refused: int = 0
    top_metric: list[str | None] = field(default_factory=list)
    #: Where a refit restarted likelihood terms' histories: (row, terms), the row being the
    #: first judged after the restart (`replay_likelihood` takes them).
    restarts: list[tuple[int, list[int]]] = field(default_factory=list)
    #: Each term's metric (`ViewSet.term_metrics`) and the cross-section's terms, which
    #: `replay_likelihood` needs to replay the serving's arithmetic exactly.
    term_metrics: list[str] = field(default_factory=list)
    comparable: list[int] = field(default_factory=list)


def training_points(n: int, first_fit: int, growth: float | None, max_gap: int | None) -> list[int]:
    """Row indices where the views are (re)trained, in increasing order, all < n."""
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


def step_settings():
    from vaeguard.records.batch import StepSettings

    return StepSettings(
        output_topic=f"{TOPIC}.scores",
        dlq_topic=f"{TOPIC}.dlq",
        max_record_bytes=1 << 20,
        top_k=1,
        bands=(),
        connector="vaeguard-online",
        task="0",
    )


def as_records(records: Sequence[dict[str, Any]]) -> list[Record]:
    """The records as the batch step takes them (offsets = row numbers): as they are, checked
    by the rules of a decoded message value (`vaeguard.ingest.check_record`)."""
    return [Record(r, Source(TOPIC, 0, i), timestamp=0) for i, r in enumerate(records)]


def run_online(
    views: ViewSet | dict[str, Any],
    records: Sequence[dict[str, Any]],
    *,
    first_fit: int,
    chunk: int = CHUNK,
) -> OnlineResult:
    """Score every record causally, learning from nothing (see the module docstring)."""
    from vaeguard.records.batch import process
    from vaeguard.serving.window import WindowServing

    if isinstance(views, dict):
        views = ViewSet.from_params(views)
    n = len(records)
    messages = as_records(records)
    settings = step_settings()
    out = OnlineResult(
        output=np.zeros(n),
        raw=np.full((len(views.term_metrics), n), np.nan),
        entities=[None] * n,
        top_metric=[None] * n,
        term_metrics=list(views.term_metrics),
        comparable=list(views.cross_section_terms()),
    )
    schedule = views.schedule
    serving = None
    # The first fit: at the end of the probationary period, or at the next point of the
    # schedule if the stream has too few windows by then.
    for start in training_points(
        n, first_fit, schedule["retrain_growth"], schedule["retrain_max_gap"]
    ):
        batch = views.featurizer().update_and_featurize(records[:start])
        if len(batch) < MIN_TRAIN_WINDOWS:
            continue
        fit_views(views, Windows.of(batch).newest(int(schedule["max_train"])), warm_start=False)
        out.trained_at.append(int(start))
        serving = WindowServing(views, fitted_at=start)
        break
    if serving is None:
        return out
    # Then every row from the first through the daemon's batch step; the serving object refits
    # itself when its schedule says so (`vaeguard.timeseries.learning`), after the batch that
    # reaches the due row: batches end exactly there, so the refits fall on the schedule's rows.
    # The rows the first fit trained on only build the per-entity state: a batch ends at the
    # first fit's row, and the likelihood histories restart there (the module docstring).
    first = out.trained_at[0]
    fed = 0
    while fed < n:
        due = serving.learning.rows_until_due(serving.n_live)
        stop = min(n, fed + chunk, fed + max(1, due) if math.isfinite(due) else n)
        if fed < first:
            stop = min(stop, first)
        part = messages[fed:stop]
        result = process(serving, part, settings)
        if stop <= first:
            out.refused += len(result.dead)
            serving.last_raw = []
            serving.restarted_terms = []
            if stop == first:
                serving.likelihood = serving.views.likelihood()
            fed = stop
            continue
        out.refused += len(result.dead)
        raws = serving.last_raw
        if result.scored and (not raws or len(raws[0]) != len(result.scored)):
            raise RuntimeError("the batch step isolated a failure: raw scores are incomplete")
        for j, record in enumerate(result.scored):
            i = record.source.offset
            out.output[i] = record.anomaly_likelihood or 0.0
            out.entities[i] = record.key
            out.top_metric[i] = top_metric(record.contributions)
            for v, raw in enumerate(raws):
                out.raw[v, i] = raw[j]
        serving.last_raw = []
        if serving.restarted_terms:
            out.restarts.append((stop, list(serving.restarted_terms)))
            serving.restarted_terms = []
        fed = stop
    out.trained_at += [int(r) for r in serving.learning.refit_rows]
    return out


def top_metric(contributions: Sequence[dict[str, Any]] | None) -> str | None:
    """The ``metric`` of a score record's first contribution (None when it names none)."""
    if not contributions:
        return None
    metric = contributions[0].get("metric") if isinstance(contributions[0], dict) else None
    return metric if isinstance(metric, str) else None


def replay_likelihood(
    raw: np.ndarray,
    entities: Sequence[str | None],
    likelihood: Any,
    restarts: Any = (),
    term_metrics: Sequence[str] | None = None,
    comparable: Sequence[int] = (),
) -> np.ndarray:
    """The outputs another likelihood spec would have given the same raw scores.

    Exactly the serving's arithmetic (`ViewLikelihood`), so post-processing can be tuned
    without rerunning the models; ``raw`` is terms × rows as in `OnlineResult`, ``restarts``
    its (row, terms) pairs or `restarts_array`'s encoding of them; ``term_metrics`` and
    ``comparable`` as in `OnlineResult` (incidents are counted per metric: without the names,
    as if every term were one metric's, which is exact for a single metric).
    """
    from vaeguard.timeseries.likelihood import LikelihoodSpec

    spec = likelihood if isinstance(likelihood, LikelihoodSpec) else LikelihoodSpec(**likelihood)
    state = ViewLikelihood(spec, raw.shape[0], term_metrics or None, comparable)
    output = np.zeros(raw.shape[1])
    scored = np.isfinite(raw[0])
    start = 0
    for row, terms in [*restart_pairs(restarts), (raw.shape[1], [])]:
        rows = start + np.flatnonzero(scored[start:row])
        if len(rows):
            output[rows] = state.update_many([entities[i] for i in rows], [r[rows] for r in raw])
        if terms:
            state.forget_terms(terms)
        start = row
    return output


def restarts_array(restarts: Sequence[tuple[int, Sequence[int]]], n_terms: int) -> np.ndarray:
    """(row, terms) pairs as an integer array for a cache file: a row, then a 0/1 per term."""
    out = np.zeros((len(restarts), 1 + n_terms), dtype="int64")
    for k, (row, terms) in enumerate(restarts):
        out[k, 0] = row
        out[k, 1 + np.asarray(terms, dtype="int64")] = 1
    return out


def restart_pairs(restarts: Any) -> list[tuple[int, list[int]]]:
    """`restarts_array`'s encoding (or the pairs themselves) as (row, terms) pairs."""
    if isinstance(restarts, np.ndarray):
        if restarts.size == 0:
            return []
        return [(int(r[0]), np.flatnonzero(r[1:]).tolist()) for r in np.atleast_2d(restarts)]
    return [(int(row), list(terms)) for row, terms in restarts]
