"""vaeguard: streaming anomaly detection with a variational autoencoder.

The detector is importable without TensorFlow being loaded until it is fitted or loaded.
"""

from vaeguard._version import __version__
from vaeguard.detector import ScoreResult, VAEDetector
from vaeguard.errors import BundleError, ConfigError, DataError, NotFittedError, VaeguardError

__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "NotFittedError",
    "ScoreResult",
    "VAEDetector",
    "VaeguardError",
    "__version__",
]
