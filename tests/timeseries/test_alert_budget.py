"""The false-alarm contract of window mode: on a stationary stream, whatever its distribution,
a point alerts with at most the budget's probability (budget / 1000)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaeguard.errors import ConfigError
from vaeguard.timeseries.likelihood import AnomalyLikelihood, LikelihoodSpec, fit_tail
from vaeguard.timeseries.views import ViewLikelihood

POINTS = 12_000


def _stream(family: str, param: float, seed: int, n: int = POINTS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if family == "normal":
        return rng.normal(50.0, param, n)
    if family == "student_t":
        return rng.standard_t(param, n)
    if family == "lognormal":
        return rng.lognormal(0.0, param, n)
    if family == "pareto":
        return rng.pareto(param, n)
    if family == "poisson":
        return rng.poisson(param, n).astype("float64")
    if family == "moving_sum":  # overlapping windows: strongly autocorrelated scores
        x = rng.standard_t(3.0, n + 16)
        c = np.cumsum(np.r_[0.0, x])
        return c[16:] - c[:-16]
    raise AssertionError(family)


FAMILIES = st.sampled_from(
    [
        ("normal", 1.0),
        ("student_t", 2.5),
        ("student_t", 5.0),
        ("lognormal", 1.0),
        ("lognormal", 2.0),
        ("pareto", 1.2),
        ("pareto", 3.0),
        ("poisson", 2.0),
        ("poisson", 30.0),
    ]
)


def _upper_bound(n: int, rate: float) -> float:
    """A binomial count's mean plus 4.5 standard deviations (a one-sided bound that a
    correct detector exceeds about once in 300,000 runs)."""
    mean = n * rate
    return mean + 4.5 * math.sqrt(mean * (1 - rate)) + 1


@settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(family=FAMILIES, seed=st.integers(0, 2**31 - 1), budget=st.sampled_from([5.0, 20.0]))
def test_the_budget_holds_on_stationary_streams_of_any_distribution(family, seed, budget):
    spec = LikelihoodSpec(estimator="evt", budget=budget, short=1, history=1000, alert=1.0)
    lk = AnomalyLikelihood(spec)
    outputs = np.array([lk.update("e", float(v)) for v in _stream(*family, seed)])
    judged = POINTS - spec.min_history
    alerts = int((outputs >= 1.0).sum())
    assert alerts <= _upper_bound(judged, budget / 1000), (family, alerts, judged)


@settings(
    max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(family=FAMILIES, seed=st.integers(0, 2**31 - 1))
def test_the_budget_holds_for_the_most_surprised_of_several_views(family, seed):
    budget = 20.0
    spec = LikelihoodSpec(estimator="evt", budget=budget, short=1, history=1000, alert=1.0)
    views = ViewLikelihood(spec, 3)
    raws = [_stream(*family, seed + k) for k in range(3)]
    outputs = views.update_many(["e"] * POINTS, raws)
    alerts = int((outputs >= 1.0).sum())
    assert alerts <= _upper_bound(POINTS - spec.min_history, budget / 1000), (family, alerts)


def test_on_autocorrelated_scores_alerts_stay_within_the_budget():
    """Overlapping windows make scores autocorrelated: points at the level come in runs, so
    their count is not binomial, but alerts (one per run, suppression) stay within budget."""
    budget = 5.0
    spec = LikelihoodSpec(
        estimator="evt", budget=budget, short=1, history=1000, alert=1.0, suppress=16
    )
    alerts = judged = 0
    for seed in range(4):
        lk = AnomalyLikelihood(spec)
        outputs = np.array([lk.update("e", float(v)) for v in _stream("moving_sum", 0.0, seed)])
        alerts += int((outputs >= 1.0).sum())
        judged += POINTS - spec.min_history
    assert alerts <= budget / 1000 * judged


def test_a_gaussian_tail_breaks_the_budget_on_heavy_tails():
    """Why the contract needs the fitted tail: the Gaussian estimator alerts on Student-t
    noise far more often than the same nominal level (the test above can fail)."""
    spec = LikelihoodSpec(estimator="gaussian", budget=5.0, short=1, history=1000, alert=1.0)
    lk = AnomalyLikelihood(spec)
    outputs = np.array([lk.update("e", float(v)) for v in _stream("student_t", 2.5, 1)])
    assert (outputs >= 1.0).sum() > _upper_bound(POINTS - spec.min_history, 5.0 / 1000)


def test_an_outlier_far_beyond_the_history_still_alerts():
    rng = np.random.default_rng(0)
    spec = LikelihoodSpec(estimator="evt", budget=0.5, short=1, history=1000, alert=1.0)
    lk = AnomalyLikelihood(spec)
    for v in rng.normal(10.0, 1.0, 400):
        lk.update("e", float(v))
    assert lk.update("e", 40.0) == 1.0
    assert lk.update("e", 10.0) < 0.5


def test_the_tail_probability_is_the_rank_inside_the_history():
    values = np.sort(np.arange(1000, dtype="float64"))
    u, log10_share, shape, scale = fit_tail(values, 0.1)
    assert u == values[1000 - 50 - 1]
    assert 10**log10_share == pytest.approx(50 / 1001)
    assert shape >= 0.0 and scale > 0.0


def test_the_budget_sets_the_alert_level_and_is_validated():
    assert LikelihoodSpec(budget=1.0).level_decades == pytest.approx(3.0)
    assert LikelihoodSpec(decades=5.0).level_decades == 5.0
    for bad in (0.0, -1.0, 1000.0, math.nan, "1"):
        with pytest.raises(ConfigError, match="budget"):
            LikelihoodSpec(budget=bad)
    # a spec without a budget reads back as written before the budget existed
    assert "budget" not in LikelihoodSpec().to_dict()
    assert LikelihoodSpec.from_dict(LikelihoodSpec(budget=2.0).to_dict()).budget == 2.0
