"""`VAEDetector.predict_stream`: the Python API judges a stream as the daemon does, with the
budget's threshold following the recent normal rows."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import FAST, make_normal_data
from vaeguard import VAEDetector


@pytest.fixture(scope="module")
def fitted(normal_data):
    """This module's own detector (the session's `fitted` is recalibrated by other tests)."""
    return VAEDetector(**FAST).fit(normal_data)


def test_a_slowly_drifting_stream_stops_alarming_and_a_jump_still_alarms(fitted):
    n = 3000
    stream = make_normal_data(n, seed=7, n_features=5)
    stream[:, 0] += np.linspace(0.0, 1.5, n)  # a slow drift of 15 noise sd over the stream
    jumps = np.arange(2000, n, 50)
    stream[jumps, 1] += 3.0
    later = np.setdiff1d(np.arange(2000, n), jumps)

    fixed = fitted.predict(stream)
    followed = fitted.predict_stream(stream)
    assert followed.dtype == np.int64 and followed.shape == (n,)
    assert fixed[later].mean() > 0.3  # the threshold fixed at training alarms on the drift
    assert followed[later].mean() < fixed[later].mean() / 3
    assert followed[jumps].mean() == 1.0


def test_on_training_like_rows_it_agrees_with_the_budget(fitted):
    stream = make_normal_data(4000, seed=11, n_features=5)
    assert fitted.predict_stream(stream).mean() < 3 * fitted.budget / 1000


@pytest.mark.parametrize("batch", [0, -1, 1.5, True, "10"])
def test_a_wrong_batch_is_refused(fitted, batch):
    with pytest.raises(ValueError, match="batch"):
        fitted.predict_stream(np.zeros((3, 5)), batch=batch)


def test_a_threshold_not_chosen_by_a_budget_cannot_follow(normal_data):
    det = VAEDetector(epochs=2, hidden=(8,), latent_dim=2, threshold_method="quantile")
    det.fit(normal_data[:300])
    with pytest.raises(ValueError, match="budget"):
        det.predict_stream(normal_data[:10])
