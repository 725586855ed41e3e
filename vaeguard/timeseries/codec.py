"""How a window model (a `ViewSet`) is written to and read from a vaeguard bundle.

Each view is a model file with a manifest (view 0 the bundle's own, views 1, 2 … parts in
``views/<k>/`` pinned by hash) whose ``window`` section says what the view really is: the
channels and time conditions its model reads, the slots it scores, its calibration; view 0's
also holds the whole detector's ``config`` (window spec, views, likelihood, schedule). Bundles
written before that section (format 1) describe each view with stand-in tabular fields (window
slots as features, an identity scaler, the time conditions as numeric condition columns) and
the config in ``extra.window_mode``: they still load (`_load_legacy`), scoring the same.

This is the code of `vaeguard.timeseries.bundle`, below `vaeguard.timeseries.views`: it is
handed the views (to write) or the `ViewSet.from_params` factory (to read), so `ViewSet.save` /
`ViewSet.load` use it without an import running back up (`vaeguard.timeseries.bundle` binds the
public functions to `ViewSet`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaeguard.alerts.text import one_line
from vaeguard.errors import BundleError, DataError, NotFittedError
from vaeguard.snapshot import is_count

#: The key of ``bundle.json``'s ``extra`` that described a window-mode model before the
#: manifest had a ``window`` section (older bundles, still read).
WINDOW_KEY = "window_mode"
#: The manifest section of a window model's view (`vaeguard.bundle.has_window_section`).
SECTION = "window"
#: The data file holding the per-entity window state at the end of the training data.
ENTITY_STATE_FILE = "entity_state.json"
#: The data file holding those entities' likelihood histories after the calibration tail.
LIKELIHOOD_STATE_FILE = "likelihood_state.json"
#: What reading a malformed config or section value can raise (a wrong type, an odd number).
_MALFORMED = (TypeError, ValueError, ArithmeticError, LookupError, AttributeError)


@dataclass
class _ViewBundle:
    """One view of a window model as `save_bundle` writes it: its Keras model, the header
    fields every bundle has (threshold, training record) and its ``window`` section."""

    model_: Any
    threshold_: Any
    training_info_: dict[str, Any]
    section: dict[str, Any]
    bundle_extra_: dict[str, Any] = field(default_factory=dict)
    bundle_parts_: dict[str, Any] = field(default_factory=dict)
    bundle_files_: dict[str, bytes] = field(default_factory=dict)
    model_kind_: str = "window"

    def bundle_fields(self) -> dict[str, Any]:
        """The manifest fields of this kind (`vaeguard.bundle.save_bundle`)."""
        return {
            "threshold": self.threshold_.to_dict(),
            "training": dict(self.training_info_),
            SECTION: self.section,
        }


def _described(detector, k: int) -> dict[str, Any]:
    """What a view's section says of view ``k``'s inputs: written as is, checked on load
    against the view the config builds."""
    return {
        "view": k,
        "inputs": list(detector.input_channels),
        "n_inputs": detector.n_inputs,
        "conditions": list(detector.spec.conditions),
        "n_conditions": detector.time_conditions.width,
        "score_slots": detector.resolved_params()["score_slots"],
    }


def _view_bundle(detector, k: int, config: dict[str, Any] | None = None) -> _ViewBundle:
    """View ``k`` of a fitted and calibrated `ViewSet` (view 0 carries the whole ``config``)."""
    _check_saveable(detector)
    section: dict[str, Any] = {
        **_described(detector, k),
        "calibration": {
            "baseline": [float(v) for v in detector.baseline_],
            "score_reference": [float(v) for v in detector.score_reference_],
        },
    }
    plausible = getattr(detector, "plausible_range_", None)
    if plausible is not None:
        section["plausible_range"] = plausible.to_dict()
    if config is not None:
        section["config"] = config
    return _ViewBundle(
        model_=detector.model_,
        threshold_=detector.threshold_,
        training_info_=dict(detector.training_info_),
        section=section,
    )


def _check_saveable(detector) -> None:
    if detector.model_ is None:
        raise NotFittedError("this WindowDetector is not fitted yet: call fit()")
    if getattr(detector, "threshold_", None) is None:
        raise NotFittedError("calibrate the WindowDetector (calibrate()) before saving it")


def views_bundle_view(views) -> _ViewBundle:
    """What `save_bundle` and `ModelRegistry.register` need, for a fitted, calibrated
    `ViewSet`: view 0 is the bundle's model and carries ``window.config``
    (`ViewSet.get_params()`); views 1, 2 … are parts (``views/<k>/``), so a registry that saves
    it with `save_bundle(view, path)` writes a complete window-mode bundle too."""
    view = _view_bundle(views.primary, 0, views.get_params())
    if views.judges_cross_section:
        fitted = views.cross_section_
        view.section["cross_section"] = None if fitted is None else fitted.to_dict()
    view.bundle_parts_ = {
        f"views/{k}": _view_bundle(v, k) for k, v in enumerate(views.views) if k > 0
    }
    for name, state in (
        (ENTITY_STATE_FILE, views.entity_state_),
        (LIKELIHOOD_STATE_FILE, views.likelihood_state_),
    ):
        if state is not None:
            text = json.dumps(state, allow_nan=False, separators=(",", ":"))
            view.bundle_files_[name] = text.encode()
    return view


def save_views(views, path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write a fitted and calibrated `ViewSet` as a bundle directory."""
    from vaeguard.bundle import save_bundle

    return save_bundle(views_bundle_view(views), path, extra=dict(extra or {}))


def load_views(path, from_params: Callable[[dict[str, Any]], Any]):
    """Load a window-mode bundle as a `ViewSet` (BundleError if it is not one);
    ``from_params`` is `ViewSet.from_params`."""
    from vaeguard.bundle import has_window_section, model_kind, read_manifest

    path = Path(path)
    m = read_manifest(path)
    if model_kind(m) != "window":
        raise BundleError(
            f"the bundle at {path} is not a window-mode model (its kind is {model_kind(m)})"
        )
    if not has_window_section(m):
        return _load_legacy(path, from_params)
    views = _configured(m[SECTION].get("config"), str(path), f"{SECTION}.config", from_params)
    parts = m.get("parts") or {}
    _check_part_names(views, parts, str(path))
    try:
        _attach_view(views.primary, path, m, 0)
        for k, view in enumerate(views.views[1:], start=1):
            name = f"views/{k}"
            _attach_view(view, path / name, _part_manifest(path, name, parts[name]), k)
        views.cross_section_ = _cross_section(views, m[SECTION], str(path))
        views.entity_state_ = _entity_state(views, path, m)
        views.likelihood_state_ = _likelihood_state(views, path, m)
    except _MALFORMED as exc:  # a config value only the scorer checks (mc_samples, seed …)
        raise BundleError(
            f"corrupt bundle at {path}: bad {SECTION} section ({type(exc).__name__}: {exc})"
        ) from None
    return views


def _cross_section(views, section: dict[str, Any], where: str):
    """The bundle's cross-section fit, checked against its metrics; a model that judges a
    cross-section must record one (null: too few full rows when it was fitted)."""
    if not views.judges_cross_section:
        return None
    if "cross_section" not in section:
        raise BundleError(f"corrupt bundle at {where}: {SECTION}.cross_section is missing")
    try:
        return views.cross_section_from(section["cross_section"])
    except DataError as exc:
        raise BundleError(f"corrupt bundle at {where}: {SECTION}.{exc}") from None


def _entity_state(views, path: Path, m: dict[str, Any]) -> dict[str, Any] | None:
    """The per-entity window state the bundle carries (None: none), checked as a snapshot of
    this model's window spec."""
    from vaeguard.bundle import pinned_file
    from vaeguard.timeseries.featurizer import WindowFeaturizer

    data = pinned_file(path, m, ENTITY_STATE_FILE)
    if data is None:
        return None
    try:
        state = json.loads(data)
        if WindowFeaturizer.restore(state).spec != views.spec:
            raise DataError("its window spec is not the model's")
    except (ValueError, DataError, RecursionError) as exc:
        raise BundleError(
            f"corrupt bundle at {path}: {ENTITY_STATE_FILE}: {one_line(str(exc), 300)}"
        ) from None
    return state


def _likelihood_state(views, path: Path, m: dict[str, Any]) -> dict[str, Any] | None:
    """The likelihood histories the bundle carries, checked as a snapshot of this model's
    terms; None when it carries none, or nothing would judge with them (a model without a
    likelihood or window state). Histories built under another likelihood spec are kept, and
    serving starts empty ones instead (`ViewSet.serving_likelihood`)."""
    from vaeguard.bundle import pinned_file

    data = pinned_file(path, m, LIKELIHOOD_STATE_FILE)
    fresh = views.likelihood()  # (its class restores: this module is below the views)
    if data is None or fresh is None or views.entity_state_ is None:
        return None
    try:
        state = json.loads(data)
        type(fresh).restore(state, fresh.metrics)
    except (ValueError, DataError, RecursionError) as exc:
        raise BundleError(
            f"corrupt bundle at {path}: {LIKELIHOOD_STATE_FILE}: {one_line(str(exc), 300)}"
        ) from None
    return state


def _part_manifest(path: Path, name: str, digest: str) -> dict[str, Any]:
    """The checked manifest of part ``name`` (pinned by ``digest``), a window view's."""
    from vaeguard.bundle import has_window_section, pinned_part, read_manifest

    part = pinned_part(path, name, digest)
    m = read_manifest(part)
    if not has_window_section(m):
        raise BundleError(f"corrupt bundle at {part}: not a window view (no {SECTION} section)")
    return m


def _attach_view(detector, path: Path, m: dict[str, Any], k: int) -> None:
    """Give view ``k`` (configured by view 0's ``config``) the model and calibration its
    checked manifest at ``path`` records, once they agree with the config."""
    from vaeguard.bundle import load_model_file
    from vaeguard.model.counterfactual import PlausibleRange
    from vaeguard.thresholds import Threshold

    w = m[SECTION]
    for key, value in _described(detector, k).items():
        if w.get(key) != value:
            raise BundleError(
                f"corrupt bundle at {path}: {SECTION}.{key} is {_short(w.get(key))}, "
                f"the config describes {_short(value)}"
            )
    model = load_model_file(path, m)
    _check_shape(detector, model, str(path), f"{SECTION}.config")
    training = dict(m.get("training") or {})
    training.pop("history", None)
    plausible = w.get("plausible_range")
    _fill(
        detector,
        str(path),
        model=model,
        threshold=Threshold.from_dict(m["threshold"]),
        baseline=w["calibration"]["baseline"],
        score_reference=w["calibration"]["score_reference"],
        training=training,
        plausible=None if plausible is None else PlausibleRange.from_dict(plausible),
        manifest=m,
    )


def _fill(
    detector,
    where: str,
    *,
    model,
    threshold,
    baseline,
    score_reference,
    training: dict[str, Any],
    plausible,
    manifest: dict[str, Any],
) -> None:
    """Give a view what a bundle of either layout records, once its training facts check."""
    from vaeguard.timeseries.detector import channel_slots

    try:
        channel_slots(training, len(detector.input_channels))
    except DataError as exc:
        raise BundleError(f"corrupt bundle at {where}: {exc}") from None
    detector.use_model(model)
    detector.threshold_ = threshold
    detector.baseline_ = np.asarray(baseline, dtype="float64")
    detector.score_reference_ = np.asarray(score_reference, dtype="float64")
    detector.training_info_ = training
    detector.plausible_range_ = plausible
    # the checked manifest it was loaded from (the model file's SHA-256 names the model in
    # serving's state, inspect shows it)
    detector.manifest_ = manifest


def _check_shape(detector, model, where: str, described_by: str) -> None:
    """The model file's input sizes are the ones the detector's config describes."""
    if (
        model.n_features != detector.n_inputs
        or model.n_conditions != detector.time_conditions.width
    ):
        raise BundleError(
            f"corrupt bundle at {where}: {described_by} describes {detector.n_inputs} window "
            f"values and {detector.time_conditions.width} condition inputs, the model expects "
            f"{model.n_features} and {model.n_conditions}"
        )


def _short(value: Any) -> str:
    from vaeguard.ingest import short_repr

    return short_repr(value, 80)


def _configured(params: Any, where: str, name: str, from_params: Callable[[dict[str, Any]], Any]):
    """The `ViewSet` a bundle's config (``name``: where it sits in the manifest) describes."""
    from vaeguard.errors import ConfigError

    if not isinstance(params, dict):
        raise BundleError(f"corrupt bundle at {where}: {name} must be an object")
    try:
        views = from_params(dict(params))
    except (ConfigError, *_MALFORMED) as exc:
        # whatever a hand-edited config holds: one line naming the section, not a trace (a
        # field name quoted in the message may hold a line break)
        raise BundleError(
            f"corrupt bundle at {where}: bad {name} parameters ({one_line(exc)})"
        ) from None
    _check_schedule(views.schedule, where, name)
    return views


def _check_part_names(views, parts: dict[str, Any], where: str) -> None:
    if set(parts) != {f"views/{k}" for k in range(1, len(views.views))}:
        raise BundleError(
            f"corrupt bundle at {where}: the config describes {len(views.views)} views, "
            f"the bundle holds {1 + len(parts)} models"
        )


# -- bundles written before the ``window`` section (format 1) --------------------------------------


@dataclass
class _BundleView:
    """The attributes `save_bundle` reads, for a window detector (the stand-in tabular fields
    of the older layout: written only by `_save_legacy`, to test that such bundles load)."""

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
    bundle_files_: dict[str, bytes] = field(default_factory=dict)
    plausible_range_: Any = None

    def get_params(self) -> dict[str, Any]:
        return self.params


def _model_view(detector, extra: dict[str, Any]) -> _BundleView:
    """The bundle fields of one fitted and calibrated `WindowDetector` (one view)."""
    from vaeguard.preprocessing import ConditionColumn, ConditionEncoder, RobustScaler

    _check_saveable(detector)
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


def _legacy_bundle_view(views) -> _BundleView:
    """The older layout of a `ViewSet`: view 0 is the bundle's model and ``extra.window_mode``
    holds the config; views 1, 2 … are parts (``views/<k>/``)."""
    view = _model_view(views.primary, {WINDOW_KEY: views.get_params()})
    view.bundle_parts_ = {
        f"views/{k}": _model_view(v, {WINDOW_KEY: {"view_of": "..", "view": k}})
        for k, v in enumerate(views.views)
        if k > 0
    }
    return view


def _save_legacy(views, path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write a `ViewSet` in the older layout (format 1, stand-in tabular fields), as vaeguard
    did before the ``window`` section: kept so the tests hold a bundle of that layout."""
    from vaeguard.bundle import save_bundle

    view = _legacy_bundle_view(views)
    return save_bundle(view, path, extra={**(extra or {}), **view.bundle_extra_})


def _load_legacy(path: Path, from_params: Callable[[dict[str, Any]], Any]):
    """A window bundle of the older layout: loaded by the tabular reader (its stand-in fields
    are a valid tabular manifest), then configured by ``extra.window_mode``."""
    from vaeguard.detector import load_bundle

    return _views_from_legacy(load_bundle(path), str(path), from_params)


def _attach(detector, loaded, where: str) -> None:
    """Give a `WindowDetector` the model and calibration of a loaded bundle (or part)."""
    from vaeguard.thresholds import Threshold

    _check_shape(detector, loaded.model_, where, "window_mode")
    _fill(
        detector,
        where,
        model=loaded.model_,
        threshold=Threshold.from_dict(loaded.threshold_rule_.to_dict()),
        baseline=loaded.baseline_,
        score_reference=loaded.score_reference_,
        training=dict(loaded.training_info_),
        plausible=getattr(loaded, "plausible_range_", None),
        manifest=getattr(loaded, "manifest_", None) or {},
    )


def _views_from_legacy(vae_detector, where: str, from_params: Callable[[dict[str, Any]], Any]):
    """The `ViewSet` a loaded bundle of the older layout describes, sharing its Keras models."""
    params = (getattr(vae_detector, "bundle_extra_", None) or {}).get(WINDOW_KEY)
    views = _configured(params, where, f"extra.{WINDOW_KEY}", from_params)
    parts = getattr(vae_detector, "parts_", {}) or {}
    _check_part_names(views, parts, where)
    try:
        _attach(views.primary, vae_detector, where)
        for k, view in enumerate(views.views[1:], start=1):
            _attach(view, parts[f"views/{k}"], f"{where}/views/{k}")
    except _MALFORMED as exc:
        # a window_mode value only the scorer checks (mc_samples, seed …)
        raise BundleError(
            f"corrupt bundle at {where}: bad {WINDOW_KEY} parameters ({type(exc).__name__}: {exc})"
        ) from None
    return views


def _check_schedule(schedule: dict[str, Any], where: str, name: str) -> None:
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
            f"corrupt bundle at {where}: {name}.schedule needs max_train >= 1 windows, "
            "retrain_max_gap null or rows >= 0, retrain_growth null or a factor up to 1000"
        )
