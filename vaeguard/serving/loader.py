"""One loader for every model kind: ``bundle.json`` says what the bundle holds."""

from __future__ import annotations

from pathlib import Path

from vaeguard.records.serving import Serving


def load_serving(
    path, version: str = "", *, budget: float | None = None, follow: bool = True
) -> Serving:
    """Load, validate and wrap the bundle at ``path`` in the `Serving` class of its kind.

    ``budget`` (false alerts per 1,000 points per entity, or per 1,000 rows in tabular mode)
    replaces the alert budget the bundle was trained with; ``follow`` keeps a tabular model's
    budget threshold on the recent normal rows (`vaeguard.thresholds.FollowingThreshold`). Raises
    `vaeguard.errors.BundleError` for a missing, corrupt or incompatible bundle, and
    `vaeguard.errors.ConfigError` for a budget the bundle cannot take.
    """
    from vaeguard.bundle import load_any
    from vaeguard.detector import VAEDetector
    from vaeguard.errors import BundleError
    from vaeguard.timeseries.views import ViewSet

    model = load_any(Path(path))
    if isinstance(model, ViewSet):
        from vaeguard.serving.window import WindowServing

        if budget is not None:
            with_budget(model, budget, path)
        return WindowServing(model, version, model.primary.manifest_.get("model_sha256", ""))
    if not isinstance(model, VAEDetector):
        raise BundleError(f"the bundle at {path} holds a {type(model).__name__}: nothing serves it")
    from vaeguard.serving.tabular import TabularServing

    if budget is not None:
        with_budget(model, budget, path)
    return TabularServing(model, version, follow=follow)


def with_budget(model, budget: float, path) -> None:
    """Set the alert budget of a loaded model: a window model's likelihood, or a tabular
    threshold re-derived from the calibration tail the bundle keeps."""
    import dataclasses

    from vaeguard.errors import ConfigError
    from vaeguard.thresholds import is_budget
    from vaeguard.timeseries.views import ViewSet

    if not is_budget(budget):
        raise ConfigError(f"model.alert_budget: must be in (0, 1000), got {budget!r}")
    if isinstance(model, ViewSet) or hasattr(model, "likelihood_spec"):
        if not ViewSet.of(model).use_likelihood:
            raise ConfigError(
                f"model.alert_budget: the window model at {path} was trained without the "
                "likelihood (--no-likelihood); it has no alert budget"
            )
        model.likelihood_spec = dataclasses.replace(model.likelihood_spec, budget=float(budget))
        return
    from vaeguard.thresholds import rebudget

    try:
        model.threshold_rule_ = rebudget(model.threshold_rule_, float(budget))
    except ValueError as exc:
        raise ConfigError(f"model.alert_budget: the model at {path}: {exc}") from None
    model.budget = float(budget)
