"""Window-mode models as ordinary vaeguard bundles.

A `ViewSet` (one `WindowDetector` per view) is saved with `vaeguard.bundle.save_bundle`, so the
registry, the daemon's model loader and `vaeguard check` handle it like any other bundle (same
integrity checks, same hot swap). What makes it a window model is ``extra.window_mode`` in
``bundle.json``: the whole detector configuration (window spec, views, likelihood, schedule).
View 0 is the bundle's own model; the others are parts in ``views/<k>/``, each pinned by hash. The tabular fields are filled so that the generic
loader can still warm the model up: the features are the window slots (``value[t-31]`` …
``value[t]``), the scaler is the identity (windows are already scale-free per entity) and the
time conditions appear as numeric condition columns of the right width.

The code is in `vaeguard.timeseries.codec` (below the views, which save and load through it);
this module binds it to `ViewSet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaeguard.timeseries.codec import WINDOW_KEY, load_views, save_views, views_bundle_view
from vaeguard.timeseries.views import ViewSet

__all__ = [
    "WINDOW_KEY",
    "bundle_view",
    "load_window_bundle",
    "save_window_bundle",
]


def bundle_view(detector):
    """What `save_bundle` and `ModelRegistry.register` need, for a fitted, calibrated
    `ViewSet` (or a single `WindowDetector`): see `vaeguard.timeseries.codec.views_bundle_view`.
    """
    return views_bundle_view(ViewSet.of(detector))


def save_window_bundle(detector, path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write a fitted and calibrated `ViewSet` (or `WindowDetector`) as a bundle directory."""
    return save_views(ViewSet.of(detector), path, extra=extra)


def load_window_bundle(path) -> ViewSet:
    """Load a window-mode bundle as a `ViewSet` (BundleError if it is not one): the reader of
    the ``window`` kind (`vaeguard.bundle.load_any`)."""
    return load_views(path, ViewSet.from_params)
