"""`ViewSet`: the streaming detector of window mode — one or more VAEs over one window.

A view is a `WindowDetector` that reads some channels of the shared window (`WindowSpec`): the
metrics, and the derived seasonal channel when the spec has one. Every view scores every window;
each view's raw scores get their own tail probability against the entity's own history (their
scales differ); the most surprised view wins; then one emission per entity (saturation and
suppression), so an incident seen by two views is one alert (`ViewLikelihood`).

The same object serves ``vaeguard run`` in window mode (`vaeguard.serving.window`) and the NAB
runner (`vaeguard.timeseries.nab`), configured from the bundle: ``extra.window_mode`` holds
`ViewSet.get_params()` (window spec, views, likelihood, online-learning schedule); view 0 is the
bundle's own model, the other views are parts of the bundle (``views/<k>/``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vaeguard.errors import ConfigError, DataError
from vaeguard.snapshot import check_header
from vaeguard.thresholds import UNLEARNED_DECADES
from vaeguard.timeseries.detector import WindowDetector
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
#: slots: the metrics alone (``inputs: "metrics"``), and every channel (``inputs: null``): the
#: metrics with the seasonal residual of the first one (value − median of the
#: same time on the previous 3 days), so a missing daily peak is visible. The mean of each view's
#: last 10 raw scores is judged by its tail probability against the entity's last 2000 such
#: means (rank, then a fitted Pareto tail whose scale is at least 1 nat: the ``evt``
#: estimator); the most surprised view, Bonferroni-corrected; the alert
#: budget of 2 false alerts per 1,000 points sets the level (a tail of 2e-3), and points far
#: beyond it do not join the histories; an alert is kept only when it beats every output of
#: the entity's previous 100 points. Time grid inferred per entity (gaps are missing slots);
#: every point scored, however sparse its window (``min_observed: 0``: an irregularly sampled
#: stream is never left unscored). The views retrain warm on the newest 4000 windows every
#: 1000 rows per entity (online learning).
_VIEW_MODEL: dict[str, Any] = {
    "latent_dim": 4,
    "hidden": [64, 32],
    "train_steps": 600,
    "retrain_steps": 300,
    "batch_size": 64,
    "mc_samples": 16,
    "score_slots": 16,
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
        "short": 10,
        "history": 2000,
        "min_history": 100,
        "min_std": 1.0,
        "suppress": 100,
        "alert": 1.0,
    },
    "schedule": {"retrain_growth": 2.0, "retrain_max_gap": 1000, "max_train": 4000},
}


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
    unknown = set(overrides) - {"window", "views", "likelihood", "schedule"}
    if unknown:
        raise ConfigError(
            f"detector configuration: unknown section(s) {', '.join(sorted(unknown))}; "
            "use window, views, likelihood, schedule"
        )
    for section, value in overrides.items():
        if section == "views":
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


#: Model fields of a view (the window spec is shared and given once).
VIEW_FIELDS = (
    "latent_dim",
    "hidden",
    "beta",
    "min_log_var",
    "max_log_var",
    "train_steps",
    "retrain_steps",
    "batch_size",
    "learning_rate",
    "mc_samples",
    "score_slots",
    "inputs",
    "seed",
)


class ViewLikelihood:
    """Per-entity [0, 1] output of several views' raw scores (bounded, snapshot-able state).

    With one view this is exactly `AnomalyLikelihood.update`.
    """

    def __init__(self, spec: LikelihoodSpec, n_views: int):
        self.spec = spec
        self.views = [AnomalyLikelihood(spec) for _ in range(n_views)]
        self.emitter = AnomalyLikelihood(spec)

    def update_many(self, keys: Sequence[str], raws: Sequence[np.ndarray]) -> np.ndarray:
        """Feed each view's raw score of each row (arrival order); returns the outputs."""
        if len(raws) != len(self.views):
            raise ValueError(f"expected {len(self.views)} views' scores, got {len(raws)}")
        columns = [np.asarray(r, dtype="float64").tolist() for r in raws]
        out = np.empty(len(keys), dtype="float64")
        tails = np.empty(len(keys), dtype="float64")
        # The budget holds for the most surprised of V views when each view's tail is
        # multiplied by V (Bonferroni); bundles without a budget keep the plain minimum.
        budget = self.spec.budget is not None
        penalty = math.log10(len(self.views)) if budget else 0.0
        # With a budget, a point far beyond the alert level does not join the histories: an
        # incident is not learned as normal (on a stationary stream that leaves out a tenth of
        # a budget's share of the points, too few to thin the tail the next points meet).
        level = -self.spec.level_decades - UNLEARNED_DECADES
        for i, key in enumerate(keys):
            tail = min(v.judge(key, c[i]) for v, c in zip(self.views, columns, strict=True))
            tail = min(tail + penalty, 0.0) if tail < 0.0 else tail
            if not (budget and tail <= level):
                for v in self.views:
                    v.learn(key)
            tails[i] = tail
            out[i] = self.emitter.emit(key, tail)
        #: log10 of each row's tail probability (0: no opinion yet), for the score records.
        self.last_log10_tail = tails + 0.0
        return out + 0.0  # (-0.0, "no opinion yet", becomes a plain 0.0)

    def save_entities(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """Copies of these entities' states, for `put_back` if the batch fails after an update."""
        unique = list(dict.fromkeys(keys))
        return [
            {k: copy.deepcopy(lk._state.get(k)) for k in unique}
            for lk in (*self.views, self.emitter)
        ]

    def put_back(self, saved: list[dict[str, Any]]) -> None:
        """Undo the updates since `save_entities` (entities evicted meanwhile stay evicted)."""
        for lk, states in zip((*self.views, self.emitter), saved, strict=True):
            for key, state in states.items():
                if state is None:
                    lk._state.pop(key, None)
                else:
                    lk._state[key] = state

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "views": [v.snapshot() for v in self.views],
            "emitter": self.emitter.snapshot(),
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> ViewLikelihood:
        check_header(state, STATE_FORMAT, STATE_VERSION, "view-likelihood snapshot")
        try:
            views = [AnomalyLikelihood.restore(v) for v in state["views"]]
            emitter = AnomalyLikelihood.restore(state["emitter"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"view-likelihood snapshot is corrupt: {exc}") from None
        out = cls(emitter.spec, len(views))
        out.views, out.emitter = views, emitter
        return out


class ViewSet:
    """Views over one window spec, their shared likelihood, and how they learn online."""

    def __init__(
        self,
        views: Sequence[WindowDetector],
        likelihood: LikelihoodSpec | dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
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
            return cls.of(WindowDetector(**params))
        unknown = set(params) - {"window", "views", "likelihood", "schedule"}
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
                detectors.append(WindowDetector(**window, **view))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"views[{k}]: {exc}") from None
        return cls(detectors, params.get("likelihood"), params.get("schedule"))

    def get_params(self) -> dict[str, Any]:
        return {
            "window": self.spec.to_dict(),
            "views": [
                {k: v for k, v in d.get_params().items() if k in VIEW_FIELDS} for d in self.views
            ],
            "likelihood": None if self.likelihood_spec is None else self.likelihood_spec.to_dict(),
            "schedule": copy.deepcopy(self.schedule),
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
        return self.primary.featurizer()

    def likelihood(self) -> ViewLikelihood | None:
        if self.likelihood_spec is None:
            return None
        return ViewLikelihood(self.likelihood_spec, len(self.views))

    # -- training and scoring ----------------------------------------------------------------------

    def fit(self, x, c=None, mask=None, *, warm_start: bool = False) -> ViewSet:
        for view in self.views:
            view.fit(x, c, mask, warm_start=warm_start)
        return self

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
            if all(name in ranges for name in view.inputs):
                parts = [ranges[name] for name in view.inputs]
                view.plausible_range_ = PlausibleRange(
                    np.repeat([r.low[0] for r in parts], w),
                    np.repeat([r.high[0] for r in parts], w),
                    parts[0].margin,
                    parts[0].basis,
                )
            else:
                view.plausible_range_ = None
        return self

    def raw_scores(self, x, c=None, mask=None) -> list[np.ndarray]:
        """Each view's raw score of each window."""
        return [v.raw_scores(x, c, mask) for v in self.views]

    def score_windows(self, x, c=None, mask=None):
        """(each view's raw scores, view 0's per-slot nll, view 0's expected values)."""
        score, nll, expected = self.primary.score_windows(x, c, mask)
        return [score, *(v.raw_scores(x, c, mask) for v in self.views[1:])], nll, expected

    # -- bundles ---------------------------------------------------------------------------------

    def save(self, path, *, extra: dict[str, Any] | None = None):
        from vaeguard.timeseries.bundle import save_window_bundle

        return save_window_bundle(self, path, extra=extra)

    @classmethod
    def load(cls, path) -> ViewSet:
        from vaeguard.timeseries.bundle import load_window_bundle

        return load_window_bundle(path)
