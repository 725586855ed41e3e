"""How a window model (a `ViewSet`) is written to and read from an ordinary vaeguard bundle.

This is the code of `vaeguard.timeseries.bundle`, below `vaeguard.timeseries.views`: it is
handed the views (to write) or the `ViewSet.from_params` factory (to read), so `ViewSet.save` /
`ViewSet.load` use it without an import running back up (`vaeguard.timeseries.bundle` binds the
public functions to `ViewSet`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaeguard.errors import BundleError, DataError, NotFittedError
from vaeguard.snapshot import is_count

#: The key of ``bundle.json``'s ``extra`` that marks (and describes) a window-mode model.
WINDOW_KEY = "window_mode"


@dataclass
class _BundleView:
    """The attributes `save_bundle` reads, for a window detector."""

    model_: Any
    feature_names_: list[str]
    conditions_: Any
    scaler_: Any
    threshold_: Any
    baseline_: np.ndarray
    score_reference_: np.ndarray
    training_info_: dict[str, Any]
    history_: dict[str, Any]
    params: dict[str, Any]
    bundle_extra_: dict[str, Any] = field(default_factory=dict)
    model_kind_: str = "window"
    bundle_parts_: dict[str, Any] = field(default_factory=dict)
    plausible_range_: Any = None

    def get_params(self) -> dict[str, Any]:
        return self.params


def _model_view(detector, extra: dict[str, Any]) -> _BundleView:
    """The bundle fields of one fitted and calibrated `WindowDetector` (one view)."""
    from vaeguard.preprocessing import ConditionColumn, ConditionEncoder, RobustScaler

    if detector.model_ is None:
        raise NotFittedError("this WindowDetector is not fitted yet: call fit()")
    if getattr(detector, "threshold_", None) is None:
        raise NotFittedError("calibrate the WindowDetector (calibrate()) before saving it")
    d = detector.n_inputs
    return _BundleView(
        model_=detector.model_,
        feature_names_=detector.feature_names,
        conditions_=ConditionEncoder(
            [ConditionColumn(name, "numeric") for name in detector.time_conditions.columns]
        ),
        scaler_=RobustScaler(np.zeros(d), np.ones(d)),
        threshold_=detector.threshold_,
        baseline_=detector.baseline_,
        score_reference_=detector.score_reference_,
        training_info_=dict(detector.training_info_),
        history_={},
        params={k: v for k, v in detector.resolved_params().items() if k != "likelihood"},
        bundle_extra_=extra,
        plausible_range_=getattr(detector, "plausible_range_", None),
    )


def views_bundle_view(views) -> _BundleView:
    """What `save_bundle` and `ModelRegistry.register` need, for a fitted, calibrated
    `ViewSet`.

    View 0 is the bundle's model; ``extra.window_mode`` holds the whole detector configuration
    (`ViewSet.get_params()`); views 1, 2 … are parts (``views/<k>/``), so a registry that saves
    the view with `save_bundle(view, path)` writes a complete window-mode bundle too.
    """
    view = _model_view(views.primary, {WINDOW_KEY: views.get_params()})
    view.bundle_parts_ = {
        f"views/{k}": _model_view(v, {WINDOW_KEY: {"view_of": "..", "view": k}})
        for k, v in enumerate(views.views)
        if k > 0
    }
    return view


def save_views(views, path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write a fitted and calibrated `ViewSet` as a bundle directory."""
    from vaeguard.bundle import save_bundle

    view = views_bundle_view(views)
    return save_bundle(view, path, extra={**(extra or {}), **view.bundle_extra_})


def is_window_model(vae_detector) -> bool:
    """Whether a loaded bundle (a `VAEDetector`) is a window-mode model (``kind`` says so)."""
    from vaeguard.bundle import model_kind

    manifest = getattr(vae_detector, "manifest_", None)
    if manifest is not None:
        return model_kind(manifest) == "window"
    extra = getattr(vae_detector, "bundle_extra_", None) or {}
    return isinstance(extra.get(WINDOW_KEY), dict)


def _attach(detector, loaded, where: str) -> None:
    """Give a `WindowDetector` the model and calibration of a loaded bundle (or part)."""
    from vaeguard.model.scoring import Scorer
    from vaeguard.thresholds import Threshold
    from vaeguard.timeseries.detector import channel_slots

    model = loaded.model_
    if (
        model.n_features != detector.n_inputs
        or model.n_conditions != detector.time_conditions.width
    ):
        raise BundleError(
            f"corrupt bundle at {where}: window_mode describes {detector.n_inputs} window values "
            f"and {detector.time_conditions.width} condition inputs, the model expects "
            f"{model.n_features} and {model.n_conditions}"
        )
    detector.model_ = model
    detector._scorer = Scorer(
        model,
        detector.mc_samples,
        seed=detector.seed,
        masked=True,
        visible=detector.encoder_visible(),
    )
    detector.threshold_ = Threshold.from_dict(loaded.threshold_rule_.to_dict())
    detector.baseline_ = np.asarray(loaded.baseline_, dtype="float64")
    detector.score_reference_ = np.asarray(loaded.score_reference_, dtype="float64")
    try:
        channel_slots(loaded.training_info_, len(detector.input_channels))
    except DataError as exc:
        raise BundleError(f"corrupt bundle at {where}: {exc}") from None
    detector.training_info_ = dict(loaded.training_info_)
    detector.plausible_range_ = getattr(loaded, "plausible_range_", None)
    # the checked manifest it was loaded from, as a loaded `VAEDetector` keeps it (the model
    # file's SHA-256 names the model in serving's state, inspect shows it)
    detector.manifest_ = getattr(loaded, "manifest_", None) or {}


def views_from(vae_detector, where: str, from_params: Callable[[dict[str, Any]], Any]):
    """The `ViewSet` a loaded window-mode bundle describes, sharing its Keras models;
    ``from_params`` is `ViewSet.from_params`."""
    from vaeguard.errors import ConfigError

    params = (getattr(vae_detector, "bundle_extra_", None) or {}).get(WINDOW_KEY)
    if not isinstance(params, dict):
        raise BundleError(f"corrupt bundle at {where}: extra.{WINDOW_KEY} must be an object")
    try:
        views = from_params(dict(params))
    except (
        ConfigError,
        TypeError,
        ValueError,
        ArithmeticError,
        LookupError,
        AttributeError,
    ) as exc:
        # whatever a hand-edited window_mode holds: one line naming the section, not a trace
        raise BundleError(
            f"corrupt bundle at {where}: bad window_mode parameters ({exc})"
        ) from None
    _check_schedule(views.schedule, where)
    parts = getattr(vae_detector, "parts_", {}) or {}
    if set(parts) != {f"views/{k}" for k in range(1, len(views.views))}:
        raise BundleError(
            f"corrupt bundle at {where}: window_mode describes {len(views.views)} views, "
            f"the bundle holds {1 + len(parts)} models"
        )
    try:
        _attach(views.primary, vae_detector, where)
        for k, view in enumerate(views.views[1:], start=1):
            _attach(view, parts[f"views/{k}"], f"{where}/views/{k}")
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        # a window_mode value only the scorer checks (mc_samples, seed …)
        raise BundleError(
            f"corrupt bundle at {where}: bad window_mode parameters ({type(exc).__name__}: {exc})"
        ) from None
    return views


def _check_schedule(schedule: dict[str, Any], where: str) -> None:
    """The online-learning schedule serving counts rows with: whole numbers of windows and
    rows, a finite growth factor (null or 0: off)."""
    growth = schedule.get("retrain_growth")
    ok = is_count(schedule.get("max_train"), 1)
    ok = ok and (
        schedule.get("retrain_max_gap") is None or is_count(schedule["retrain_max_gap"], 0)
    )
    ok = ok and (
        growth is None
        or (isinstance(growth, int | float) and not isinstance(growth, bool) and 0 <= growth <= 1e3)
    )
    if not ok:
        raise BundleError(
            f"corrupt bundle at {where}: window_mode.schedule needs max_train >= 1 windows, "
            "retrain_max_gap null or rows >= 0, retrain_growth null or a factor up to 1000"
        )


def load_views(path, from_params: Callable[[dict[str, Any]], Any]):
    """Load a window-mode bundle as a `ViewSet` (BundleError if it is not one);
    ``from_params`` is `ViewSet.from_params`."""
    from vaeguard.detector import load_bundle

    vae_detector = load_bundle(path)
    if not is_window_model(vae_detector):
        raise BundleError(
            f"the bundle at {path} is not a window-mode model (no extra.{WINDOW_KEY})"
        )
    return views_from(vae_detector, str(path), from_params)
