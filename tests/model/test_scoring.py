"""The compiled scorer's batching: bucket-sized calls that cover every row, little padding,
and scores that do not depend on the batch sizes an instance saw before."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from tests.conftest import make_normal_data
from vaeguard.model.losses import gaussian_nll, student_t_nll
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


# -- Student-t scores ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    x=st.floats(-1e3, 1e3),
    mean=st.floats(-1e3, 1e3),
    log_var=st.floats(-6.0, 4.0),
    dof=st.floats(0.5, 200.0),
)
def test_student_t_nll_is_the_t_density_around_the_mean_with_the_decoders_scale(
    x, mean, log_var, dof
):
    from scipy import stats

    args = (np.array([v], dtype="float64") for v in (x, mean, log_var))
    got = float(ops.convert_to_numpy(student_t_nll(*args, dof))[0])
    want = -stats.t.logpdf(x, df=dof, loc=mean, scale=math.exp(log_var / 2))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_a_sustained_shift_outscores_one_outlier_only_under_the_student_t():
    """Why the window views score by a Student-t: summed over a window's slots, the Gaussian
    term is set by the single worst slot (it grows with the square), the Student-t's by how
    many slots are off (it grows with the log)."""
    shift = np.array([3.5, 3.5, 3.5, 3.5, 0.0])
    outlier = np.array([15.0, 0.0, 0.0, 0.0, 0.0])

    def total(nll, r):
        return float(ops.convert_to_numpy(ops.sum(nll(r))))

    zero = np.zeros(5)

    def gauss(r):
        return gaussian_nll(r, zero, zero)

    def student(r):
        return student_t_nll(r, zero, zero, 4.0)

    assert total(gauss, outlier) > total(gauss, shift)
    assert total(student, shift) > total(student, outlier)


def test_a_scorer_with_dof_adds_the_mc_reconstruction_probability_under_the_student_t(
    normal_data,
):
    from vaeguard import VAEDetector
    from vaeguard.model.scoring import fixed_epsilon

    det = VAEDetector(epochs=2, hidden=(16,), latent_dim=2, mc_samples=3, seed=0).fit(normal_data)
    x = det.scaler_.transform(make_normal_data(50, seed=5, n_features=5)).astype("float32")
    x[:5, 0] += 12.0
    got = Scorer(det.model_, 3, seed=1, dof=3.0)(x)
    z_mean, z_log_var = (ops.convert_to_numpy(a) for a in det.model_.encode(x))
    log_p = []
    for e in fixed_epsilon(3, 2, 1):
        mean, log_var = det.model_.decode(z_mean + np.exp(0.5 * z_log_var) * e)
        nll = ops.convert_to_numpy(student_t_nll(x, mean, log_var, 3.0))
        log_p.append(-nll.sum(axis=1))
    log_p = np.array(log_p, dtype="float64")
    want = -(np.logaddexp.reduce(log_p, axis=0) - math.log(3))
    np.testing.assert_allclose(got.student_score, want, rtol=1e-4, atol=1e-3)
    assert got.student_nll.shape == got.nll.shape
    # the Gaussian outputs are exactly a plain scorer's
    plain = Scorer(det.model_, 3, seed=1)(x)
    assert plain.student_score is None and plain.student_nll is None
    for field in ("score", "nll", "expected", "z_mean"):
        np.testing.assert_array_equal(getattr(got, field), getattr(plain, field))
    # one far value adds the log of its square, not the square
    lift = got.student_score - np.median(got.student_score)
    assert lift[:5].max() < (plain.score[:5] - np.median(plain.score)).min()
    empty = Scorer(det.model_, 3, seed=1, dof=3.0)(x[:0])
    assert empty.student_score.shape == (0,) and empty.student_nll.shape == (0, 5)


@pytest.mark.parametrize("dof", [0.0, -1.0, float("nan"), float("inf")])
def test_the_scorer_refuses_a_dof_that_is_not_a_positive_number(normal_data, dof):
    from vaeguard import VAEDetector

    det = VAEDetector(epochs=1, hidden=(8,), latent_dim=2, mc_samples=2, seed=0).fit(normal_data)
    with pytest.raises(ValueError, match="dof must be a finite number above 0, or None"):
        Scorer(det.model_, 2, seed=1, dof=dof)
