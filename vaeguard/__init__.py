"""vaeguard: streaming anomaly detection with a variational autoencoder.

The detector is importable without TensorFlow being loaded until it is fitted or loaded. The
other models, the bundle functions, the serving loader and the registry are imported on first
use (module ``__getattr__``), so ``import vaeguard`` stays as cheap as the CLI needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaeguard._lazy import lazy_exports
from vaeguard._version import __version__
from vaeguard.detector import ScoreResult, VAEDetector
from vaeguard.errors import (
    AlertDeliveryError,
    BundleError,
    ConfigError,
    CorruptVersion,
    DataError,
    LockHeld,
    NotFittedError,
    PermanentSinkError,
    RegistryConflict,
    RegistryError,
    RetrainRefused,
    RetrainRejected,
    RetryableSinkError,
    ShutdownExpired,
    SinkError,
    SpoolError,
    StateRefused,
    UndeliverableAlertError,
    VaeguardError,
    VersionNameError,
)

if TYPE_CHECKING:
    from vaeguard.bundle import load_any, save_bundle
    from vaeguard.detector import load_bundle
    from vaeguard.registry import ModelRegistry
    from vaeguard.serving.loader import load_serving
    from vaeguard.timeseries.bundle import load_window_bundle, save_window_bundle
    from vaeguard.timeseries.detector import WindowDetector
    from vaeguard.timeseries.views import ViewSet

#: Public names imported on first access: name → home module.
_LAZY = {
    "WindowDetector": "vaeguard.timeseries.detector",
    "ViewSet": "vaeguard.timeseries.views",
    "load_bundle": "vaeguard.detector",
    "save_bundle": "vaeguard.bundle",
    "load_any": "vaeguard.bundle",
    "load_window_bundle": "vaeguard.timeseries.bundle",
    "save_window_bundle": "vaeguard.timeseries.bundle",
    "load_serving": "vaeguard.serving.loader",
    "ModelRegistry": "vaeguard.registry",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "AlertDeliveryError",
    "BundleError",
    "ConfigError",
    "CorruptVersion",
    "DataError",
    "LockHeld",
    "ModelRegistry",
    "NotFittedError",
    "PermanentSinkError",
    "RegistryConflict",
    "RegistryError",
    "RetrainRefused",
    "RetrainRejected",
    "RetryableSinkError",
    "ScoreResult",
    "ShutdownExpired",
    "SinkError",
    "SpoolError",
    "StateRefused",
    "UndeliverableAlertError",
    "VAEDetector",
    "VaeguardError",
    "VersionNameError",
    "ViewSet",
    "WindowDetector",
    "__version__",
    "load_any",
    "load_bundle",
    "load_serving",
    "load_window_bundle",
    "save_bundle",
    "save_window_bundle",
]
