"""Threshold calibration: empirical quantile and SPOT (generalized Pareto over peaks)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeguard.errors import DataError
from vaeguard.thresholds import calibrate, fit_gpd, quantile_threshold, spot_threshold


@pytest.mark.parametrize("shape", [0.3, 0.0, -0.2])
def test_gpd_fit_matches_scipy_maximum_likelihood(shape):
    stats = pytest.importorskip("scipy.stats")
    y = stats.genpareto.rvs(shape, scale=2.0, size=3000, random_state=np.random.default_rng(1))
    gamma, sigma = fit_gpd(y)
    ref_gamma, _, ref_sigma = stats.genpareto.fit(y, floc=0)
    assert gamma == pytest.approx(ref_gamma, abs=0.01)
    assert sigma == pytest.approx(ref_sigma, rel=0.01)


def test_spot_extrapolates_beyond_the_sample():
    rng = np.random.default_rng(0)
    scores = rng.exponential(1.0, 5000)
    t = spot_threshold(scores, risk=1e-5)
    # exact quantile of Exp(1) at 1 - 1e-5 is ln(1e5) = 11.5; the sample max is about 8.5
    assert t.method == "spot"
    assert t.value > scores.max()
    assert t.value == pytest.approx(np.log(1e5), rel=0.15)


def test_spot_falls_back_to_a_quantile_with_too_few_peaks():
    t = spot_threshold(np.arange(15.0), risk=1e-2)  # even at init level 0.5: 7 peaks
    assert t.method == "quantile" and t.params["fallback_from"] == "spot"


def test_quantile_threshold_hits_its_rate():
    scores = np.random.default_rng(2).normal(size=100000)
    t = quantile_threshold(scores, 0.01)
    assert (scores > t.value).mean() == pytest.approx(0.01, abs=0.001)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.floats(0.001, 0.5))
def test_quantile_never_flags_more_than_the_target(scores, fpr):
    t = quantile_threshold(scores, fpr)
    assert (np.asarray(scores) > t.value).mean() <= fpr + 1e-12


def test_bad_calibration_input():
    with pytest.raises(DataError):
        calibrate([], "quantile")
    with pytest.raises(DataError):
        calibrate([1.0, np.nan], "quantile")
    with pytest.raises(ValueError, match="unknown threshold method"):
        calibrate([1.0], "magic")
    with pytest.raises(ValueError):
        quantile_threshold([1.0], 1.5)
