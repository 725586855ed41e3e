"""The compiled scorer's batching: bucket-sized calls that cover every row, little padding,
and scores that do not depend on the batch sizes an instance saw before."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import make_normal_data
from vaeguard.model.scoring import BUCKETS, Scorer, chunks


@given(st.integers(0, 20_000))
def test_chunks_cover_every_row_once_in_buckets_with_little_padding(n):
    parts = chunks(n)
    assert [start for start, _, _ in parts] == [0, *(stop for _, stop, _ in parts)][: len(parts)]
    assert (parts[-1][1] if parts else 0) == n
    for start, stop, padded in parts:
        assert padded in BUCKETS and stop - start <= padded
    assert sum(padded for *_, padded in parts) <= 1.25 * n + 63


def test_the_daemons_batch_is_not_padded_to_twice_its_size():
    assert chunks(2000) == [(0, 2000, 2048)]


def test_scores_do_not_depend_on_the_batch_sizes_seen_before(normal_data):
    """A restarted daemon (a fresh instance) must score a replayed batch as the first one did,
    whatever batches each instance scored before."""
    from vaeguard import VAEDetector

    det = VAEDetector(epochs=2, hidden=(16,), latent_dim=2, mc_samples=4, seed=0).fit(normal_data)
    x = det.scaler_.transform(make_normal_data(300, seed=5, n_features=5)).astype("float32")
    fresh = Scorer(det.model_, det.mc_samples, seed=1)(x).score
    busy = Scorer(det.model_, det.mc_samples, seed=1)
    for n in (1, 5, 70, 1000, 130):
        busy(np.repeat(x[:1], n, axis=0))
    np.testing.assert_array_equal(busy(x).score, fresh)
