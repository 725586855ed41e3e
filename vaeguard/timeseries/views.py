"""`ViewSet`: the streaming detector of window mode — one or more VAEs over one window.

A view is a `WindowDetector` that reads some channels of the shared window (`WindowSpec`): the
metrics, and the derived seasonal channel when the spec has one. Every view scores every window,
metric by metric: a view's likelihood terms are the parts of its score from each metric's slots
(the seasonal residual counts for its source metric), so a shift in one of many metrics is not
averaged away, and with ``student_t_dof`` the same slots again under a Student-t, so a shift
in heavy-tailed noise is not outscored by the noise's own outliers. Each term's raw scores get
their own tail probability against the entity's own history (their scales differ); the most
surprised term wins and names the metric; then one emission per entity (saturation, and
suppression per leading metric), so an incident seen by two views is one alert, and an alert
on one metric does not silence another metric's shortly after (`ViewLikelihood`).

The same object serves ``vaeguard run`` in window mode (`vaeguard.serving.window`) and the NAB
runner (`vaeguard.apps.nab`), configured from the bundle: its ``window.config`` holds
`ViewSet.get_params()` (window spec, views, likelihood, online-learning schedule); view 0 is the
bundle's own model, the other views are parts of the bundle (``views/<k>/``).
"""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from vaeguard.bundle import is_scalar
from vaeguard.errors import ConfigError, DataError
from vaeguard.snapshot import check_header, is_count, is_finite_number
from vaeguard.thresholds import UNLEARNED_DECADES
from vaeguard.timeseries.cross_section import CrossSection
from vaeguard.timeseries.detector import (
    CHANNEL_SLOTS,
    MIN_TRAIN_WINDOWS,
    MODEL_FIELDS,
    WindowDetector,
    channel_slots,
)
from vaeguard.timeseries.likelihood import AnomalyLikelihood, LikelihoodSpec

STATE_FORMAT = "vaeguard-view-likelihood-state"
STATE_VERSION = 1

#: How a detector learns online (`vaeguard.timeseries.learning`): warm retraining on the newest
#: ``max_train`` windows every ``retrain_max_gap`` rows per entity (None: never, in the
#: daemon) and, from a known first fit (the NAB runner's, at the end of the probationary
#: period), each time the stream has grown by ``retrain_growth``×. These are the defaults of a
#: configuration that names no schedule (bundles written before online learning existed).
DEFAULT_SCHEDULE: dict[str, Any] = {
    "retrain_growth": 2.0,
    "retrain_max_gap": None,
    "max_train": 4000,
}

#: The one configuration of the streaming detector: what ``vaeguard train-window`` trains by
#: default and the NAB runner learns online (chosen out-of-fold, benchmarks/RESULTS-nab.md).
#: Two views of the last 32 rows, conditioned on the hour of day and scored on the newest 16
#: slots, which each view predicts from the older 16 (``predict_scored``: the encoder does not
#: see them, so an anomaly cannot explain itself away): the metrics alone
#: (``inputs: "metrics"``), and every channel (``inputs: null``): the metrics with the
#: seasonal residual of the first one (value − median of the same time on the previous 3
#: days), so a missing daily peak is visible. Each view judges each metric twice: its slots' nll
#: under the decoder's Gaussian, which a lone spike moves most, and under a Student-t of 4
#: degrees of freedom around the same mean and scale (``student_t_dof``), which counts how
#: many slots are off, so heavy-tailed noise does not hide a sustained shift. Each term's (view
#: × metric × density) raw score is judged by its tail probability against the entity's last
#: 1000 such scores (rank, then a fitted Pareto tail whose scale is at least 1 nat: the ``evt``
#: estimator); the most surprised term, Bonferroni-corrected; the alert budget of 2 false
#: alerts per 1,000 points sets the level (a tail of 2e-3); an incident (with its ramp and
#: tail) does not join the histories unless such incidents, led by the same metric, recur more
#: often than the budget allows; an alert is kept only when it beats every output the same
#: metric led and kept in the entity's previous 100 points (counted from the last point of an
#: alert's incident while it goes on). Time grid inferred per
#: entity (gaps are missing slots); every point scored, however sparse its window
#: (``min_observed: 0``: an irregularly sampled stream is never left unscored). The views
#: retrain warm on the newest 4000 windows every 1000 rows per entity (online learning). An
#: entity of several metrics also gets one cross-section term per metric
#: (`vaeguard.timeseries.cross_section`), refitted with the views.
_VIEW_MODEL: dict[str, Any] = {
    "latent_dim": 4,
    "hidden": [64, 32],
    "train_steps": 600,
    "retrain_steps": 300,
    "batch_size": 64,
    "mc_samples": 16,
    "score_slots": 16,
    "predict_scored": True,
    "student_t_dof": 4.0,
}
DEFAULT_CONFIG: dict[str, Any] = {
    "window": {
        "window": 32,
        "interval": "auto",
        "min_observed": 0.0,
        "conditions": ["hour_of_day"],
        "seasonal": {"period": 86_400.0, "periods": 3, "tolerance": 3_600.0},
    },
    "views": [{"inputs": "metrics", **_VIEW_MODEL}, {"inputs": None, **_VIEW_MODEL}],
    "likelihood": {
        "estimator": "evt",
        "budget": 2.0,
        "short": 1,
        "history": 1000,
        "min_history": 100,
        "min_std": 1.0,
        "suppress": 100,
        "alert": 1.0,
    },
    "schedule": {"retrain_growth": 2.0, "retrain_max_gap": 1000, "max_train": 4000},
    "cross_section": True,
}
#: The configuration's sections (``cross_section``: whether an entity of several metrics also
#: judges each against the others at the same moment, `vaeguard.timeseries.cross_section`).
SECTIONS = ("window", "views", "likelihood", "schedule", "cross_section")


def merge_config(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, section by section.

    ``window``, ``likelihood`` and ``schedule`` merge key by key (``window.seasonal`` and
    ``likelihood`` may be set to null); ``views`` as a list replaces the views, as an object
    is merged into every view.
    """
    out = copy.deepcopy(base)
    if not overrides:
        return out
    if not isinstance(overrides, dict):
        raise ConfigError("detector configuration: expected a JSON object")
    unknown = set(overrides) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"detector configuration: unknown section(s) {', '.join(sorted(unknown))}; "
            f"use {', '.join(SECTIONS)}"
        )
    for section, value in overrides.items():
        if section == "cross_section":
            out[section] = _cross_section_flag(value)
        elif section == "views":
            if isinstance(value, list):
                out["views"] = copy.deepcopy(value)
            elif isinstance(value, dict):
                out["views"] = [{**v, **value} for v in out["views"]]
            else:
                raise ConfigError("views: a list of views or an object merged into each")
        elif value is None or out.get(section) is None:
            if section in ("window", "schedule") and value is None:
                raise ConfigError(f"{section}: cannot be null")
            out[section] = copy.deepcopy(value)
        elif not isinstance(value, dict):
            raise ConfigError(f"{section}: must be an object")
        else:
            for key, v in value.items():
                if isinstance(v, dict) and isinstance(out[section].get(key), dict):
                    out[section][key] = {**out[section][key], **v}
                else:
                    out[section][key] = copy.deepcopy(v)
    return out


def _cross_section_flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"cross_section: true or false, got {value!r}")
    return value


#: Model fields of a view (the window spec is shared and given once; the likelihood is the
#: set's).
VIEW_FIELDS = tuple(f for f in MODEL_FIELDS if f != "likelihood")


#: Points on either side of one left out of the histories (a tenth of the alert level's
#: p-value or less) that are not learned as normal either (`ViewLikelihood`): an incident's
#: ramp and tail.
INCIDENT_MARGIN = 5
#: What a hold is counted as, against the allowance of recurring incidents, when a view's term
#: leads it in an entity that also has cross-section terms (`ViewLikelihood.update_many`):
#: every metric's view terms rise together when the load surges (the cross-section, where the
#: load cancels, stays calm) and the most surprised of them names a metric at random; counted
#: as that metric's incidents, such surges made its own rare shifts look recurring.
SURGE = "(the entity's views)"


class _Held:
    """An entity's points judged but not learned yet, how many more to leave out, and where
    its recent incidents began, per metric that led them or `SURGE` (to tell an incident from
    something the metric often does)."""

    __slots__ = ("counted", "episodes", "points", "quiet", "recurring", "seen")

    def __init__(self):
        self.points: deque[list[float | None]] = deque(maxlen=INCIDENT_MARGIN + 1)
        self.quiet = 0
        self.seen = 0  # points judged
        #: Per leading metric, `seen` at the start of each recent incident (None: a term with
        #: no metric name, or a snapshot written before incidents were counted per metric).
        self.episodes: dict[str | None, deque[int]] = {}
        self.recurring = False  # the current incident recurs too often to be one: learned
        self.counted = True  # the current incident has been counted (`ViewLikelihood._hold`)


class WindowScores(NamedTuple):
    """What `ViewSet.score_windows` gives: view 0's ``score``, ``nll`` and ``expected``, and
    the raw score of every likelihood term."""

    score: np.ndarray
    terms: list[np.ndarray]
    nll: np.ndarray
    expected: np.ndarray


class ViewLikelihood:
    """Per-entity [0, 1] output of several terms' raw scores (bounded, snapshot-able state).

    A term is one view's score, or one view's part of it about one metric (`ViewSet`); each
    has its own history per entity. With one term this is exactly `AnomalyLikelihood.update`.
    ``metrics`` names each term's metric: after `update_many`, ``last_metric`` holds per row
    the metric of the most surprised term (None while no term has an opinion). ``comparable``
    are terms on one scale (the cross-section's standardized residuals): when one of them is
    the most surprised, the largest of them names the metric, since for a shift in one metric
    its own standardized residual is the largest one expected (their p-values, each against
    its own history, do not rank them as well).
    """

    def __init__(
        self,
        spec: LikelihoodSpec,
        n_terms: int,
        metrics: Sequence[str] | None = None,
        comparable: Sequence[int] = (),
    ):
        self.spec = spec
        self.comparable = list(comparable)
        self.views = [AnomalyLikelihood(spec) for _ in range(n_terms)]
        self.emitter = AnomalyLikelihood(spec)
        if metrics is not None and len(metrics) != n_terms:
            raise ValueError(f"expected {n_terms} term metrics, got {len(metrics)}")
        self.metrics = None if metrics is None else list(metrics)
        self.last_metric: list[str | None] = []
        self._held: OrderedDict[str, _Held] = OrderedDict()

    def update_many(self, keys: Sequence[str], raws: Sequence[np.ndarray]) -> np.ndarray:
        """Feed each view's raw score of each row (arrival order); returns the outputs."""
        if len(raws) != len(self.views):
            raise ValueError(f"expected {len(self.views)} views' scores, got {len(raws)}")
        columns = [np.asarray(r, dtype="float64").tolist() for r in raws]
        out = np.empty(len(keys), dtype="float64")
        tails = np.empty(len(keys), dtype="float64")
        # The budget holds for the most surprised of T terms when each term's tail is
        # multiplied by T (Bonferroni); bundles without a budget keep the plain minimum.
        budget = self.spec.budget is not None
        penalty = math.log10(len(self.views)) if budget else 0.0
        # With a budget, an incident is not learned as normal: a point whose p-value is a tenth
        # of the alert level's or less does not join the histories, nor do the `INCIDENT_MARGIN`
        # points on either side of it (an incident's ramp and tail, still high but not that
        # far). Points join the histories that many points late, once it is known they were not
        # an incident's ramp. That p-value is the most surprised term's own, before the
        # Bonferroni factor: the factor bounds how often some term alerts, but whether a value
        # is too rare to join a term's history is a question about that term alone. Judged with
        # the factor, an incident far beyond what its term's history holds but short of the
        # factor (likelier the more terms an entity has) was learned, the next like it looked
        # less rare, and so on until every such incident was learned. Incidents are counted
        # against the allowance of recurring ones with the factor (`_hold`), per leading metric,
        # or as the entity's (`SURGE`) when a view's term leads an entity of several metrics.
        level = -self.spec.level_decades - UNLEARNED_DECADES
        lead: list[str | None] = [None] * len(keys)
        lead_term = [-1] * len(keys)
        learned = np.ones(len(keys), dtype=bool)
        for i, key in enumerate(keys):
            judged = [v.judge(key, c[i]) for v, c in zip(self.views, columns, strict=True)]
            tail = min(judged)
            if tail < 0.0 and self.metrics is not None:
                k = judged.index(tail)
                if k in self.comparable:
                    k = max(self.comparable, key=lambda t, i=i: columns[t][i])
                lead[i], lead_term[i] = self.metrics[k], k
            if budget:
                surprised, counted_as = [], lead[i]
                if tail <= level:  # (most rows: nothing to hold, nothing to count)
                    surprised = [t for t, judged_t in enumerate(judged) if judged_t <= level]
                    if (
                        lead[i] is not None
                        and self.comparable
                        and lead_term[i] not in self.comparable
                    ):
                        counted_as = SURGE
                learned[i] = self._hold(key, surprised, counted_as, tail + penalty <= level)
            else:
                for v in self.views:
                    v.learn(key)
            tail = min(tail + penalty, 0.0) if tail < 0.0 else tail
            tails[i] = tail
            out[i] = self.emitter.emit(key, tail, lead[i])
        #: log10 of each row's tail probability (0: no opinion yet), for the score records.
        self.last_log10_tail = tails + 0.0
        self.last_metric = lead
        #: Per row, the index of the term that names the metric (−1: no opinion yet).
        self.last_lead_term = lead_term
        #: Whether each row may join the histories, i.e. is not part of an incident (online
        #: learning trains on those rows only).
        self.last_learned = learned
        return out + 0.0  # (-0.0, "no opinion yet", becomes a plain 0.0)

    def _hold(self, key: str, surprised: Sequence[int], metric: str | None, incident: bool) -> bool:
        """Hold the point just judged back for `INCIDENT_MARGIN` points; learn the one that
        leaves the hold. Returns whether the point may still be learned.

        ``surprised``: the terms whose own tail is far beyond the level, so the point is left
        out (a hold begins or goes on); ``incident``: so is the Bonferroni-corrected tail, so
        an incident is counted (once per hold) against the allowance of recurring incidents. A
        term's own tail is that far out for T times as many points of a stationary stream as
        the corrected one: counted, those would make an entity of many terms look as if its
        incidents recurred.

        The first point of a hold still counts in the surprised terms' histories, at no more
        than the largest value each holds: on a stationary stream such points are single and
        belong to the tail, and left out the histories would lose their largest values and
        judge later ones rarer than they are (more alerts than the budget); counted at their
        own size, the incident would be learned. So a history keeps how often its rare values
        come, and an incident adds one point to it however long it lasts, and no new height."""
        held = self._held.get(key)
        if held is None:
            if len(self._held) >= self.spec.max_entities:
                self._held.popitem(last=False)
            held = self._held[key] = _Held()
        else:
            self._held.move_to_end(key)
        values = [v.take_judged(key) for v in self.views]
        held.seen += 1
        if self.views[0].warming_up(key):  # no opinion yet, so no incident: nothing to hold
            held.points.append(values)
            while held.points:
                self._learn(key, held.points.popleft())
            return True
        if surprised:
            first = not held.quiet
            if first:
                held.counted = False
            if not held.counted and (incident or first):
                self._new_episode(held, metric, count=incident)
                held.counted = incident
            if held.recurring:  # learned after all, with its ramp
                while held.points:
                    self._learn(key, held.points.popleft())
                self._learn(key, values)
            elif first:  # one point of the history, no larger than any it holds
                self._learn(key, self._bounded(key, values, surprised))
            held.points.clear()  # the ramp of this incident
            held.quiet = INCIDENT_MARGIN
            return False
        if held.quiet:
            held.quiet -= 1  # its tail
            if held.recurring:
                self._learn(key, values)
            return False
        held.points.append(values)
        if len(held.points) > INCIDENT_MARGIN:
            self._learn(key, held.points.popleft())
        return True

    def _bounded(
        self, key: str, values: Sequence[float | None], terms: Sequence[int]
    ) -> list[float | None]:
        """``values`` of these terms, each at most its history's largest (None for the rest)."""
        out: list[float | None] = [None] * len(values)
        for t in terms:
            value, largest = values[t], self.views[t].largest(key)
            if value is not None and largest is not None:
                out[t] = min(value, largest)
        return out

    def _learn(self, key: str, values: Sequence[float | None]) -> None:
        for v, value in zip(self.views, values, strict=True):
            if value is not None:
                v.learn(key, value)

    def _new_episode(self, held: _Held, metric: str | None, count: bool = True) -> None:
        """Count an incident's start for the metric that leads it (unless not ``count``); it
        is learned after all when more incidents led by that metric began within the last
        ``history`` points than the budget allows there (``budget`` × ``history`` / 1000).

        Points far beyond the alert level are kept out of the histories so that an incident is
        not learned as normal. Something the stream does more often than the budget permits is,
        by the operator's own measure, not an incident to be paged for each time: left out of
        the histories it would stay beyond anything learned and alert every time it recurs, and
        the stated rate would not hold. So such episodes join the histories, and the next like
        them is judged against them (the online refits train on it once it is no longer beyond
        the level). They are counted per metric: one metric's frequent bursts are what that
        metric does, and do not make a rare shift in another metric of the entity normal.
        """
        allowance = _allowance(self.spec)
        for episodes in held.episodes.values():
            while episodes and episodes[0] <= held.seen - self.spec.history:
                episodes.popleft()
        for gone in [m for m, episodes in held.episodes.items() if not episodes]:
            del held.episodes[gone]
        episodes = held.episodes.get(metric, deque())
        if count:
            episodes.append(held.seen)
            while len(episodes) > math.floor(allowance) + 1:  # enough to tell
                episodes.popleft()
            held.episodes[metric] = episodes
        # (episodes of an older snapshot, not attributed to a metric, count for every metric)
        unattributed = len(held.episodes.get(None, ())) if metric is not None else 0
        held.recurring = len(episodes) + unattributed > allowance

    def entities(self) -> list[str]:
        """The entities with any state, least recently seen first."""
        keys = dict.fromkeys(self.emitter._state)
        for lk in self.views:
            keys.update(dict.fromkeys(lk._state))
        keys.update(dict.fromkeys(self._held))
        return list(keys)

    def forget_entities(self, keys: Sequence[str]) -> None:
        """Drop these entities' histories and held points: they start afresh."""
        for key in keys:
            for lk in (*self.views, self.emitter):
                lk._state.pop(key, None)
            self._held.pop(key, None)

    def carried_snapshot(self, keys: Sequence[str], max_bytes: int) -> dict[str, Any] | None:
        """A snapshot of these entities only (least recently seen first; the others are
        forgotten), as many of the most recent as fit in ``max_bytes`` of JSON, for a bundle to
        carry beside `WindowFeaturizer.carried_snapshot`. None when none fits."""
        judged = set(self.entities())
        self.forget_entities(sorted(judged - set(keys)))
        keys = [k for k in keys if k in judged]
        while keys:
            state = self.snapshot()
            size = len(json.dumps(state, allow_nan=False, separators=(",", ":")))
            if size <= max_bytes:
                return state
            drop = max(1, math.ceil(len(keys) * (1.0 - max_bytes / size)))
            self.forget_entities(keys[:drop])
            keys = keys[drop:]
        return None

    def forget_terms(self, terms: Sequence[int]) -> None:
        """Restart these terms' histories for every entity: their raw scores now measure
        something else (a refit began judging a channel its model had not learned)."""
        for t in terms:
            self.views[t] = AnomalyLikelihood(self.spec)
        for held in self._held.values():
            for point in held.points:
                for t in terms:
                    point[t] = None

    def save_entities(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """Copies of these entities' states, for `put_back` if the batch fails after an update."""
        unique = list(dict.fromkeys(keys))
        return [
            *(
                {k: copy.deepcopy(lk._state.get(k)) for k in unique}
                for lk in (*self.views, self.emitter)
            ),
            {k: copy.deepcopy(self._held.get(k)) for k in unique},
        ]

    def put_back(self, saved: list[dict[str, Any]]) -> None:
        """Undo the updates since `save_entities` (entities evicted meanwhile stay evicted)."""
        stores = [lk._state for lk in (*self.views, self.emitter)] + [self._held]
        for store, states in zip(stores, saved, strict=True):
            for key, state in states.items():
                if state is None:
                    store.pop(key, None)
                else:
                    store[key] = state

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "views": [v.snapshot() for v in self.views],
            "emitter": self.emitter.snapshot(),
            "held": [
                {
                    "key": key,
                    "points": [list(p) for p in h.points],
                    "quiet": h.quiet,
                    "seen": h.seen,
                    "episodes": [[m, e] for m, es in h.episodes.items() for e in es],
                    "recurring": h.recurring,
                    "counted": h.counted,
                }
                for key, h in self._held.items()
            ],
        }

    @classmethod
    def restore(cls, state: dict[str, Any], metrics: Sequence[str] | None = None) -> ViewLikelihood:
        check_header(state, STATE_FORMAT, STATE_VERSION, "view-likelihood snapshot")
        try:
            views = [AnomalyLikelihood.restore(v) for v in state["views"]]
            emitter = AnomalyLikelihood.restore(state["emitter"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"view-likelihood snapshot is corrupt: {exc}") from None
        if metrics is not None and len(metrics) != len(views):
            raise DataError(f"view-likelihood snapshot has {len(views)} terms, not {len(metrics)}")
        out = cls(emitter.spec, len(views), metrics)
        out.views, out.emitter = views, emitter
        held = state.get("held", [])  # (absent from snapshots written before it existed)
        if not isinstance(held, list):
            raise DataError("view-likelihood snapshot is corrupt: held must be a list")
        for item in held[-emitter.spec.max_entities :]:
            key, entity = _restore_held(item, len(views), emitter.spec)
            out._held[key] = entity
        return out


def _allowance(spec: LikelihoodSpec) -> float:
    """Incidents an entity may start within ``history`` points before they count as what the
    stream does (`ViewLikelihood._new_episode`)."""
    return (spec.budget or 0.0) * spec.history / 1000.0


def _restore_held(item: Any, n_terms: int, spec: LikelihoodSpec) -> tuple[str, _Held]:
    """One entity's held points from a snapshot, checked (finite numbers, or null for a term
    with no opinion yet; at most `INCIDENT_MARGIN` + 1 points; a count of points to leave out)."""
    bad = DataError("view-likelihood snapshot is corrupt: a malformed held entity")
    if not isinstance(item, dict) or not isinstance(item.get("key"), str):
        raise bad
    points, quiet = item.get("points"), item.get("quiet")
    if not isinstance(points, list) or len(points) > INCIDENT_MARGIN + 1:
        raise bad
    if not is_count(quiet) or quiet > INCIDENT_MARGIN:
        raise bad
    held = _Held()
    for point in points:
        if not isinstance(point, list) or len(point) != n_terms:
            raise bad
        if not all(v is None or is_finite_number(v) for v in point):
            raise bad
        held.points.append([None if v is None else float(v) for v in point])
    held.quiet = quiet
    # (absent from snapshots written before recurring incidents were counted)
    seen, episodes = item.get("seen", 0), item.get("episodes", [])
    recurring, counted = item.get("recurring", False), item.get("counted", True)
    if not is_count(seen) or not isinstance(recurring, bool) or not isinstance(episodes, list):
        raise bad
    if not isinstance(counted, bool):
        raise bad
    by_metric: dict[str | None, deque[int]] = {}
    for entry in episodes:  # [metric, seen], or a plain `seen` (before they were per metric)
        metric, start = (None, entry) if is_count(entry) else _episode(entry, bad)
        if not is_count(start) or start > seen:
            raise bad
        by_metric.setdefault(metric, deque()).append(start)
    if len(by_metric) > n_terms + 1 or any(
        len(starts) > math.floor(_allowance(spec)) + 1 for starts in by_metric.values()
    ):
        raise bad
    held.seen, held.episodes, held.recurring, held.counted = seen, by_metric, recurring, counted
    return item["key"], held


def _episode(entry: Any, bad: DataError) -> tuple[str | None, Any]:
    if not isinstance(entry, list) or len(entry) != 2:
        raise bad
    if entry[0] is not None and not isinstance(entry[0], str):
        raise bad
    return entry[0], entry[1]


#: What `train-window` records about the data, the same in every view's ``training`` section.
_DATA_FACTS = ("train_rows", "entities", "late_points_skipped", "training_data")
#: What each view's last fit and calibration record.
_FIT_FACTS = ("windows", "epochs_run", "warm_start", "calibration_windows")


class ViewSet:
    """Views over one window spec, their shared likelihood, and how they learn online."""

    def __init__(
        self,
        views: Sequence[WindowDetector],
        likelihood: LikelihoodSpec | dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
        cross_section: bool = False,
    ):
        if not views:
            raise ConfigError("views: at least one view")
        spec = views[0].spec
        if any(v.spec != spec for v in views[1:]):
            raise ConfigError("views: every view must share the window spec")
        self.views = list(views)
        self.spec = spec
        if isinstance(likelihood, dict):
            likelihood = LikelihoodSpec.from_dict(likelihood)
        self.likelihood_spec = likelihood
        self.schedule = {**DEFAULT_SCHEDULE, **(schedule or {})}
        unknown = set(self.schedule) - set(DEFAULT_SCHEDULE)
        if unknown:
            raise ConfigError(f"schedule: unknown field(s) {', '.join(sorted(unknown))}")
        #: Whether an entity of several metrics is also judged metric by metric against the
        #: others at the same moment (False in bundles written before it existed).
        self.cross_section = _cross_section_flag(cross_section)
        #: The fitted `CrossSection`, or None (one metric, disabled, or too few full rows).
        self.cross_section_: CrossSection | None = None
        #: The per-entity window state at the end of the training data (a
        #: `WindowFeaturizer.carried_snapshot`), which serving continues from; None: it starts
        #: every entity afresh.
        self.entity_state_: dict[str, Any] | None = None
        #: The likelihood histories of those entities after judging the calibration tail (a
        #: `ViewLikelihood` snapshot), which serving's judgement continues from; None: they
        #: start empty.
        self.likelihood_state_: dict[str, Any] | None = None

    # -- construction from plain parameters ------------------------------------------------------

    @classmethod
    def of(cls, detector: ViewSet | WindowDetector) -> ViewSet:
        """``detector`` itself, or a single `WindowDetector` as a set of one view."""
        if isinstance(detector, ViewSet):
            return detector
        return cls([detector], detector.likelihood_spec if detector.use_likelihood else None)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ViewSet:
        """From `get_params()` output (``window``, ``views``, ``likelihood``, ``schedule``), or
        from one flat `WindowDetector.get_params()` (a bundle written before views existed)."""
        if not isinstance(params, dict):
            raise ConfigError("detector configuration: expected an object")
        if "views" not in params:  # one flat WindowDetector
            return cls.of(WindowDetector.from_config(**params))
        unknown = set(params) - set(SECTIONS)
        if unknown:
            raise ConfigError(
                f"detector configuration: unknown section(s) {', '.join(sorted(unknown))}"
            )
        window = params.get("window") or {}
        views = params["views"]
        if not isinstance(window, dict) or not isinstance(views, list) or not views:
            raise ConfigError(
                "detector configuration: window must be an object, views a non-empty list"
            )
        detectors = []
        for k, view in enumerate(views):
            if not isinstance(view, dict):
                raise ConfigError(f"views[{k}]: expected an object")
            bad = set(view) - set(VIEW_FIELDS)
            if bad:
                raise ConfigError(f"views[{k}]: unknown field(s) {', '.join(sorted(bad))}")
            try:
                detectors.append(WindowDetector.from_config(**window, **view))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"views[{k}]: {exc}") from None
        likelihood = params.get("likelihood")
        if likelihood is not None and not isinstance(likelihood, dict):
            raise ConfigError("likelihood: expected an object or null")
        flag = params.get("cross_section", False)
        return cls(detectors, likelihood, params.get("schedule"), _cross_section_flag(flag))

    def get_params(self) -> dict[str, Any]:
        return {
            "window": self.spec.to_dict(),
            "views": [
                {k: v for k, v in d.resolved_params().items() if k in VIEW_FIELDS}
                for d in self.views
            ],
            "likelihood": None if self.likelihood_spec is None else self.likelihood_spec.to_dict(),
            "schedule": copy.deepcopy(self.schedule),
            "cross_section": self.cross_section,
        }

    # -- state objects --------------------------------------------------------------------------

    @property
    def primary(self) -> WindowDetector:
        """View 0: its threshold, baselines and expected values explain the score records."""
        return self.views[0]

    @property
    def use_likelihood(self) -> bool:
        return self.likelihood_spec is not None

    def featurizer(self):
        """A fresh per-entity window state."""
        return self.primary.featurizer()

    def serving_featurizer(self):
        """The window state serving starts from: the training data's end (`entity_state_`),
        each entity continuing there if its first point comes later, else fresh."""
        from vaeguard.timeseries.featurizer import WindowFeaturizer

        if self.entity_state_ is None:
            return self.featurizer()
        return WindowFeaturizer.restore(self.entity_state_)

    def serving_likelihood(self) -> ViewLikelihood | None:
        """The likelihood serving starts from: the carried histories (`likelihood_state_`) when
        they fit this model (`likelihood_from`; an alert budget set at load changes its spec),
        else empty ones."""
        carried = None
        if self.likelihood_state_ is not None:
            carried = self.likelihood_from(self.likelihood_state_)
        return self.likelihood() if carried is None else carried

    def likelihood_from(self, state: dict[str, Any]) -> ViewLikelihood | None:
        """A `ViewLikelihood` snapshot as this model's likelihood (its terms' metrics and
        comparable terms), or None when it does not fit: no likelihood here, or histories
        built under another spec or for another number of terms. `DataError` when malformed."""
        fresh = self.likelihood()
        if fresh is None:
            return None
        restored = ViewLikelihood.restore(state)
        if restored.spec != fresh.spec or len(restored.views) != len(fresh.views):
            return None
        restored.metrics, restored.comparable = fresh.metrics, fresh.comparable
        return restored

    def likelihood(self) -> ViewLikelihood | None:
        if self.likelihood_spec is None:
            return None
        metrics = self.term_metrics
        return ViewLikelihood(
            self.likelihood_spec, len(metrics), metrics, self.cross_section_terms()
        )

    # -- training and scoring ----------------------------------------------------------------------

    def fit(self, x, c=None, mask=None, *, warm_start: bool = False) -> ViewSet:
        for view in self.views:
            view.fit(x, c, mask, warm_start=warm_start)
        if self.judges_cross_section:
            if mask is None:
                mask = np.ones_like(np.asarray(x))
            self.cross_section_ = CrossSection.fit(
                np.asarray(x), c, np.asarray(mask), **self._cross_section_layout()
            )
        return self

    @property
    def judges_cross_section(self) -> bool:
        """Whether this model has cross-section terms: enabled, and several metrics."""
        return self.cross_section and len(self.spec.metrics) >= 2

    def _cross_section_layout(self) -> dict[str, Any]:
        channels = self.spec.channels
        return {
            "names": list(self.spec.metrics),
            "metrics": [channels.index(name) for name in self.spec.metrics],
            "channels": len(channels),
            "window": self.spec.window,
        }

    def cross_section_from(self, d: Any) -> CrossSection | None:
        """A saved `CrossSection.to_dict` (or None) read back for this model (`DataError`
        unless it fits its metrics and conditions)."""
        if d is None:
            return None
        layout = self._cross_section_layout()
        return CrossSection.from_dict(
            d,
            names=layout["names"],
            metrics=layout["metrics"],
            n_conditions=self.primary.time_conditions.width,
        )

    def calibrate(self, x, c=None, mask=None, **kwargs) -> ViewSet:
        for view in self.views:
            view.calibrate(x, c, mask, **kwargs)
        return self

    def fit_plausible_range(self, batch) -> ViewSet:
        """Where each view's expected values may lie, in the metrics' units: per channel, the
        range of the training windows' observed values widened like the tabular model's
        (`vaeguard.model.counterfactual.PlausibleRange`); a channel never observed gets none."""
        from vaeguard.model.counterfactual import PlausibleRange

        w = self.spec.window
        channels = self.spec.channels
        m = len(channels)
        if len(batch) == 0:
            return self
        x = batch.x.reshape(len(batch), m, w)
        observed = batch.mask.reshape(len(batch), m, w) > 0
        units = x * batch.scale[:, :, None] + batch.center[:, :, None]
        ranges = {}
        for j, name in enumerate(channels):
            values = units[:, j, :][observed[:, j, :]]
            values = values[np.isfinite(values)]
            if values.size:
                ranges[name] = PlausibleRange.fit(values[:, None])
        for view in self.views:
            if all(name in ranges for name in view.input_channels):
                parts = [ranges[name] for name in view.input_channels]
                view.plausible_range_ = PlausibleRange(
                    np.repeat([r.low[0] for r in parts], w),
                    np.repeat([r.high[0] for r in parts], w),
                    parts[0].margin,
                    parts[0].basis,
                )
            else:
                view.plausible_range_ = None
        return self

    @property
    def term_metrics(self) -> list[str]:
        """The metric of each likelihood term: view by view, each view's `term_metrics`, then
        each metric's cross-section term when the model has them."""
        cross = list(self.spec.metrics) if self.judges_cross_section else []
        return [m for v in self.views for m in v.term_metrics] + cross

    def cross_section_terms(self) -> range:
        """The likelihood terms (indices into `term_metrics`) of the cross-section, if any."""
        n = len(self.term_metrics)
        return range(n - len(self.spec.metrics), n) if self.judges_cross_section else range(n, n)

    def terms_of(self, view: int) -> range:
        """The likelihood terms (indices into `term_metrics`) of view number ``view``."""
        start = sum(len(v.term_metrics) for v in self.views[:view])
        return range(start, start + len(self.views[view].term_metrics))

    def unlearned_channels(self) -> list[tuple[str, ...]]:
        """Each view's `WindowDetector.unlearned_channels`."""
        return [v.unlearned_channels for v in self.views]

    def raw_scores(self, x, c=None, mask=None) -> list[np.ndarray]:
        """Each likelihood term's raw score of each window (what `ViewLikelihood` judges)."""
        return self.score_windows(x, c, mask).terms

    def score_windows(self, x, c=None, mask=None) -> WindowScores:
        """View 0's score, per-slot nll and expected values (they explain the record), and the
        raw score of every likelihood term: each view's `WindowDetector.term_scores`, then the
        cross-section's."""
        terms: list[np.ndarray] = []
        first = None
        for view in self.views:
            scored, view_terms = view.term_scores(x, c, mask)
            if first is None:
                first = scored
            terms.extend(view_terms.T)
        if self.judges_cross_section:
            terms.extend(self._cross_section_terms(x, c, mask).T)
        return WindowScores(first[0], terms, first[1], first[2])

    def cross_section_expected(self, x, c=None, mask=None) -> np.ndarray | None:
        """Each window's newest value of each metric as the other metrics at that moment
        predict it (rows × metrics, the windows' scaled units); None without a fit."""
        if not self.judges_cross_section or self.cross_section_ is None:
            return None
        x = np.asarray(x)
        layout = self._cross_section_layout()
        if mask is None:
            mask = np.ones_like(x)
        return self.cross_section_.expected(
            x, c, np.asarray(mask), channels=layout["channels"], window=layout["window"]
        )

    def _cross_section_terms(self, x, c, mask) -> np.ndarray:
        """Each window's cross-section term per metric; 0 (no evidence) while there is no fit."""
        x = np.asarray(x)
        layout = self._cross_section_layout()
        if self.cross_section_ is None:
            return np.zeros((x.shape[0], len(layout["names"])))
        if mask is None:
            mask = np.ones_like(x)
        return self.cross_section_.terms(
            x, c, np.asarray(mask), channels=layout["channels"], window=layout["window"]
        )

    def summary(self) -> dict[str, Any]:
        """What this window model does, as plain JSON data (`vaeguard inspect`): the shared
        window, each view (its channels, model, unlearned channels, calibration, verified model
        file), what decides an alert, the likelihood, the online-learning schedule and the
        training facts it records.

        For a loaded bundle (`load_any`: model files and parts verified, each view keeping its
        manifest); a fact the bundle does not record is None (older bundles).
        """
        m = self.primary.manifest_
        info = dict(self.primary.training_info_)
        out_views = []
        for k, view in enumerate(self.views):
            pm = view.manifest_
            prefix = "" if k == 0 else f"views/{k}/"
            slots = channel_slots(dict(view.training_info_), len(view.input_channels))
            th = view.threshold_
            out_views.append(
                {
                    "part": None if k == 0 else f"views/{k}",
                    **{f: v for f, v in view.resolved_params().items() if f in VIEW_FIELDS},
                    "unlearned_channels": None if slots is None else list(view.unlearned_channels),
                    CHANNEL_SLOTS: slots,
                    "slots_needed": MIN_TRAIN_WINDOWS * self.spec.window,
                    "threshold": {
                        "value": float(th.value),
                        "unit": "nats",
                        "method": th.method,
                        "params": {k_: v for k_, v in th.params.items() if is_scalar(v)},
                    },
                    "training": {f: view.training_info_.get(f) for f in _FIT_FACTS},
                    "model_file": prefix + str(pm["model_file"]),
                    "model_sha256": pm["model_sha256"],
                    "verified": True,
                }
            )
        lk = self.likelihood_spec
        if lk is not None and lk.alert is not None:
            alerts = {"decided_by": "likelihood", "level": lk.alert}
        else:
            alerts = {
                "decided_by": "view threshold",
                "view": 0,
                "level": float(self.primary.threshold_.value),
            }
        return {
            "kind": "window",
            "created_at": m.get("created_at"),
            "versions": m.get("versions"),
            "window": self.spec.to_dict(),
            "alerts": alerts,
            "likelihood": None if lk is None else lk.to_dict(),
            "schedule": dict(self.schedule),
            "cross_section": None
            if not self.judges_cross_section
            else {
                "metrics": list(self.spec.metrics),
                "fitted_rows": None if self.cross_section_ is None else self.cross_section_.rows,
            },
            "views": out_views,
            "training": {f: info.get(f) for f in (*_DATA_FACTS, "windows", "calibration_windows")},
            "entity_state": self.carried_summary(),
        }

    def carried_summary(self) -> dict[str, Any] | None:
        """How many entities serving continues from the end of the training data, the latest
        point it holds, and how many of them continue with likelihood histories that serving
        will use (None: every entity starts afresh)."""
        if self.entity_state_ is None:
            return None
        entities = self.entity_state_["entities"]
        stamps = [e["last_ts"] for e in entities if e["last_ts"] is not None]
        judged = None
        if self.likelihood_state_ is not None:
            judged = self.likelihood_from(self.likelihood_state_)
        return {
            "entities": len(entities),
            "last_ts": max(stamps, default=None),
            "with_histories": 0 if judged is None else len(judged.entities()),
        }

    # -- bundles ---------------------------------------------------------------------------------

    def save(self, path, *, extra: dict[str, Any] | None = None):
        from vaeguard.timeseries.codec import save_views

        return save_views(self, path, extra=extra)

    @classmethod
    def load(cls, path) -> ViewSet:
        from vaeguard.timeseries.codec import load_views

        return load_views(path, ViewSet.from_params)
