"""One loader for every model kind: ``bundle.json`` says what the bundle holds."""

from __future__ import annotations

from pathlib import Path

from vaeguard.serving.base import Serving


def load_serving(path, version: str = "") -> Serving:
    """Load, validate and wrap the bundle at ``path`` in the `Serving` class of its kind.

    Raises `vaeguard.errors.BundleError` for a missing, corrupt or incompatible bundle.
    """
    from vaeguard.bundle import load_bundle, model_kind

    detector = load_bundle(Path(path))
    kind = model_kind(detector.manifest_)
    model_id = detector.manifest_.get("model_sha256", "")
    if kind == "window":
        from vaeguard.serving.window import WindowServing
        from vaeguard.timeseries.bundle import window_detector_from

        return WindowServing(window_detector_from(detector, str(path)), version, model_id)
    from vaeguard.serving.tabular import TabularServing

    return TabularServing(detector, version)
