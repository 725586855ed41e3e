"""Window-mode models as ordinary vaeguard bundles.

A `ViewSet` (one `WindowDetector` per view) is saved with `vaeguard.bundle.save_bundle`, so the
registry, the daemon's model loader and `vaeguard check` handle it like any other bundle (same
integrity checks, same hot swap). Its manifest says what a window model is, in its ``window``
section: view 0 (the bundle's own model) holds the whole detector configuration (window spec,
views, likelihood, schedule) and, like every view, the channels and time conditions its model
reads, the slots it scores and its calibration; the other views are parts in ``views/<k>/``,
each pinned by hash. Bundles of the older layout (stand-in tabular fields and
``extra.window_mode``) still load.

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
