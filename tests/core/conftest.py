"""Fixtures for the core detector tests: small, quickly trained models shared per session."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_normal_data

FAST = {
    "epochs": 60,
    "hidden": (32, 16),
    "latent_dim": 2,
    "mc_samples": 16,
    "patience": 15,
    "seed": 0,
}


@pytest.fixture(scope="session")
def normal_data() -> np.ndarray:
    return make_normal_data(3000, seed=0, n_features=5)


@pytest.fixture(scope="session")
def fitted(normal_data):
    """A detector on 5 correlated features (2-D latent structure + noise)."""
    from vaeguard import VAEDetector

    return VAEDetector(**FAST).fit(normal_data)
