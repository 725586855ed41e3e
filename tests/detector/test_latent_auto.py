"""latent_dim="auto": the latent size relative to the feature count (issue 28, item 5)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_normal_data

TINY = {"epochs": 5, "hidden": (16,), "mc_samples": 4, "patience": 3}


@pytest.mark.parametrize(("d", "latent"), [(1, 2), (3, 2), (6, 3), (9, 4), (32, 16), (274, 16)])
def test_auto_is_half_the_features_within_bounds(d, latent):
    from vaeguard.detector import resolve_latent_dim

    assert resolve_latent_dim("auto", d) == latent
    assert resolve_latent_dim(7, d) == 7


def test_auto_fits_saves_and_loads(tmp_path):
    from vaeguard import VAEDetector

    x = make_normal_data(200, seed=1, n_features=6)
    det = VAEDetector(latent_dim="auto", seed=0, **TINY).fit(x)
    assert det.latent_dim == "auto" and det.latent_dim_ == 3 == det.model_.latent_dim
    assert det.training_info_["latent_dim"] == 3
    assert det.sample(4).shape == (4, 6) and det.decode(np.zeros((2, 3))).shape == (2, 6)
    assert "latent_dim='auto'" in repr(det)
    det.save(tmp_path / "m")
    back = VAEDetector.load(tmp_path / "m")
    assert back.latent_dim == "auto" and back.latent_dim_ == 3
    assert np.allclose(back.decision_function(x[:10]), det.decision_function(x[:10]))


@pytest.mark.parametrize("bad", ["3", "wide", 0, True])
def test_bad_latent_dim_refused_before_training(bad):
    from vaeguard import VAEDetector

    with pytest.raises(ValueError, match="latent_dim"):
        VAEDetector(latent_dim=bad, **TINY).fit(make_normal_data(50, seed=0, n_features=3))
