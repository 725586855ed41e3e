"""Models behind one interface: featurize decoded records, score rows, build score records.

`load_serving` reads a bundle and returns the `Serving` object of its kind: `TabularServing`
(one row per record) or `WindowServing` (per-entity windows, with state).
"""

from vaeguard.records.serving import Features, Inbound, Serving, Stateless
from vaeguard.serving.loader import load_serving
from vaeguard.serving.tabular import TabularServing
from vaeguard.serving.window import WindowServing

__all__ = [
    "Features",
    "Inbound",
    "Serving",
    "Stateless",
    "TabularServing",
    "WindowServing",
    "load_serving",
]
