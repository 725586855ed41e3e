"""Window-mode models as ordinary vaeguard bundles.

A `WindowDetector` is saved with `vaeguard.bundle.save_bundle`, so the registry, the daemon's
model loader and `vaeguard check` handle it like any other bundle (same integrity checks, same
hot swap). What makes it a window model is ``extra.window_mode`` in ``bundle.json``: the
detector's parameters, window spec included. The tabular fields are filled so that the generic
loader can still warm the model up: the features are the window slots (``value[t-31]`` …
``value[t]``), the scaler is the identity (windows are already scale-free per entity) and the
time conditions appear as numeric condition columns of the right width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaeguard.errors import BundleError, NotFittedError

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

    def get_params(self) -> dict[str, Any]:
        return self.params


def bundle_view(detector) -> _BundleView:
    """What `save_bundle` and `ModelRegistry.register` need, for a fitted, calibrated detector.

    The view carries ``bundle_extra_`` (the window parameters), so a registry that saves it
    with `save_bundle(view, path)` writes a window-mode bundle too.
    """
    from vaeguard.preprocessing import ConditionColumn, ConditionEncoder, RobustScaler

    if detector.model_ is None:
        raise NotFittedError("this WindowDetector is not fitted yet: call fit()")
    if getattr(detector, "threshold_", None) is None:
        raise NotFittedError("calibrate the WindowDetector (calibrate()) before saving it")
    spec = detector.spec
    d = spec.n_features
    view = _BundleView(
        model_=detector.model_,
        feature_names_=spec.feature_names,
        conditions_=ConditionEncoder(
            [ConditionColumn(name, "numeric") for name in detector.time_conditions.columns]
        ),
        scaler_=RobustScaler(np.zeros(d), np.ones(d)),
        threshold_=detector.threshold_,
        baseline_=detector.baseline_,
        score_reference_=detector.score_reference_,
        training_info_=dict(detector.training_info_),
        history_={},
        params={k: v for k, v in detector.get_params().items() if k != "likelihood"},
        bundle_extra_={WINDOW_KEY: detector.get_params()},
    )
    return view


def save_window_bundle(detector, path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write a fitted and calibrated `WindowDetector` as a bundle directory."""
    from vaeguard.bundle import save_bundle

    view = bundle_view(detector)
    return save_bundle(view, path, extra={**(extra or {}), **view.bundle_extra_})


def is_window_model(vae_detector) -> bool:
    """Whether a loaded bundle (a `VAEDetector`) is a window-mode model (``kind`` says so)."""
    from vaeguard.bundle import model_kind

    manifest = getattr(vae_detector, "manifest_", None)
    if manifest is not None:
        return model_kind(manifest) == "window"
    extra = getattr(vae_detector, "bundle_extra_", None) or {}
    return isinstance(extra.get(WINDOW_KEY), dict)


def window_detector_from(vae_detector, where: str = "bundle"):
    """The `WindowDetector` a loaded window-mode bundle describes, sharing its Keras model."""
    from vaeguard.model.scoring import Scorer
    from vaeguard.thresholds import Threshold
    from vaeguard.timeseries.detector import WindowDetector

    params = dict(vae_detector.bundle_extra_[WINDOW_KEY])
    try:
        detector = WindowDetector(**params)
    except (TypeError, ValueError) as exc:
        raise BundleError(
            f"corrupt bundle at {where}: bad window_mode parameters ({exc})"
        ) from None
    model = vae_detector.model_
    if (
        model.n_features != detector.spec.n_features
        or model.n_conditions != detector.time_conditions.width
    ):
        raise BundleError(
            f"corrupt bundle at {where}: window_mode describes {detector.spec.n_features} window values "
            f"and {detector.time_conditions.width} condition inputs, the model expects "
            f"{model.n_features} and {model.n_conditions}"
        )
    detector.model_ = model
    detector._scorer = Scorer(model, detector.mc_samples, seed=detector.seed, masked=True)
    detector.threshold_ = Threshold.from_dict(vae_detector.threshold_.to_dict())
    detector.baseline_ = np.asarray(vae_detector.baseline_, dtype="float64")
    detector.score_reference_ = np.asarray(vae_detector.score_reference_, dtype="float64")
    detector.training_info_ = dict(vae_detector.training_info_)
    return detector


def load_window_bundle(path):
    """Load a window-mode bundle as a `WindowDetector` (BundleError if it is not one)."""
    from vaeguard.bundle import load_bundle

    vae_detector = load_bundle(path)
    if not is_window_model(vae_detector):
        raise BundleError(
            f"the bundle at {path} is not a window-mode model (no extra.{WINDOW_KEY})"
        )
    return window_detector_from(vae_detector, str(path))
