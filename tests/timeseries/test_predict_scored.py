"""``predict_scored``: the encoder does not see the slots a window's score counts.

A VAE that sees an anomaly can pull its latent towards it and reconstruct part of it; with the
scored slots hidden from the encoder they are predicted from the older slots, so whatever
happens in them cannot explain itself away.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.timeseries.test_detector import series, small_detector
from vaeguard.timeseries.views import DEFAULT_CONFIG, ViewSet

SLOTS = 4


@pytest.fixture(scope="module")
def fitted():
    out = {}
    for predict in (True, False):
        detector = small_detector(score_slots=SLOTS, predict_scored=predict)
        batch = detector.featurizer().update_and_featurize(series())
        detector.fit(batch.x, batch.c, batch.mask)
        out[predict] = (detector, batch)
    return out


def test_the_encoder_sees_only_the_slots_before_the_scored_ones(fitted):
    detector, _ = fitted[True]
    visible = detector.encoder_visible().reshape(len(detector.input_channels), -1)
    assert (visible[:, :-SLOTS] == 1).all() and (visible[:, -SLOTS:] == 0).all()
    assert fitted[False][0].encoder_visible() is None


@pytest.mark.parametrize("predict", [True, False])
def test_changing_the_scored_slots_moves_the_latent_only_when_the_encoder_sees_them(
    fitted, predict
):
    detector, batch = fitted[predict]
    x, c, mask = detector.select(batch.x), batch.c, detector.select(batch.mask)
    shifted = x.copy()
    shifted[:, -SLOTS:] += 8.0  # (one channel: its block is the whole window)
    before = detector._scorer(x, c, mask)
    after = detector._scorer(shifted, c, mask)
    if predict:
        np.testing.assert_array_equal(before.z_mean, after.z_mean)
    else:
        assert not np.allclose(before.z_mean, after.z_mean)
    # either way the shift is in the score
    assert (after.score > before.score).mean() > 0.95


def test_predicting_needs_slots_to_see_and_a_boolean():
    from vaeguard.timeseries.detector import WindowDetector

    with pytest.raises(ValueError, match="predict_scored needs score_slots"):
        WindowDetector.from_config(window=12, predict_scored=True)
    with pytest.raises(ValueError, match="predict_scored needs score_slots"):
        WindowDetector.from_config(window=12, score_slots=12, predict_scored=True)
    with pytest.raises(ValueError, match="predict_scored must be true or false"):
        WindowDetector.from_config(window=12, score_slots=4, predict_scored="yes")


def test_a_bundle_keeps_it_and_scores_the_same(fitted, tmp_path):
    detector, batch = fitted[True]
    views = ViewSet([detector], detector.likelihood_spec, {"retrain_growth": None})
    views.calibrate(batch.x, batch.c, batch.mask)
    views.fit_plausible_range(_windows(batch))
    views.save(tmp_path / "bundle")
    loaded = ViewSet.load(tmp_path / "bundle")
    assert loaded.primary.predict_scored is True
    assert loaded.primary.resolved_params()["predict_scored"] is True
    np.testing.assert_allclose(
        loaded.primary.raw_scores(batch.x, batch.c, batch.mask),
        detector.raw_scores(batch.x, batch.c, batch.mask),
        rtol=1e-5,
    )
    # a detector that does not predict records nothing: its bundles read as before
    assert "predict_scored" not in fitted[False][0].resolved_params()


def test_the_default_configuration_predicts_the_scored_slots():
    assert all(v["predict_scored"] for v in DEFAULT_CONFIG["views"])
    views = ViewSet.from_params(DEFAULT_CONFIG)
    assert all(v.encoder_visible() is not None for v in views.views)


def _windows(batch):
    from vaeguard.timeseries.learning import Windows

    return Windows.of(batch)
