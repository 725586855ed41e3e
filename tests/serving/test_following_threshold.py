"""Tabular mode's alert budget: a threshold from the budget that follows the recent normal rows
(a slowly drifting process stops alarming on every row; an incident is not learned)."""

from __future__ import annotations

import numpy as np
import pytest

from vaeguard.thresholds import FollowingThreshold, Threshold, budget_threshold, p_values, rebudget

BATCH = 100


def _run(threshold: Threshold, scores: np.ndarray) -> np.ndarray:
    return FollowingThreshold(threshold).replay(scores, BATCH)


def test_on_a_stationary_stream_the_rate_holds_the_budget():
    rng = np.random.default_rng(0)
    threshold = budget_threshold(rng.gamma(3.0, 2.0, 600), budget=10.0)
    flags = _run(threshold, rng.gamma(3.0, 2.0, 20_000))
    assert flags.mean() < 10.0 / 1000 * 1.5


def test_a_slow_drift_is_followed_and_a_fixed_threshold_is_not():
    rng = np.random.default_rng(1)
    threshold = budget_threshold(rng.normal(10.0, 1.0, 600), budget=5.0)
    n = 20_000
    drifting = rng.normal(10.0, 1.0, n) + np.linspace(0.0, 8.0, n)  # 8 σ over the stream
    fixed = (drifting > threshold.value).mean()
    followed = _run(threshold, drifting).mean()
    assert fixed > 0.5
    assert followed < 0.02


def test_an_incident_is_not_learned_as_normal():
    rng = np.random.default_rng(2)
    threshold = budget_threshold(rng.normal(10.0, 1.0, 600), budget=5.0)
    stream = rng.normal(10.0, 1.0, 6000)
    stream[3000:4500] += 12.0  # a long incident, far beyond the threshold
    flags = _run(threshold, stream)
    assert flags[3000:4500].mean() > 0.99
    assert flags[4500:].mean() < 0.02


def test_a_threshold_without_a_budget_cannot_follow():
    with pytest.raises(ValueError, match="budget"):
        FollowingThreshold(Threshold(1.0, "quantile", {"target_fpr": 0.01}, 100))


def test_rebudget_and_p_values():
    rng = np.random.default_rng(3)
    calib = rng.normal(0.0, 1.0, 2000)
    t10 = budget_threshold(calib, budget=10.0)
    t1 = rebudget(t10, 1.0)
    assert t1.value > t10.value and t1.params["budget"] == 1.0
    with pytest.raises(ValueError, match="retrain"):
        rebudget(Threshold(1.0, "quantile", {}, 10), 1.0)
    p = p_values(t10, np.array([-5.0, 0.0, 10.0]))
    assert p[0] == pytest.approx(1.0, abs=1e-3)
    assert 0.3 < p[1] < 0.7
    assert p[2] < 1e-4
    assert p_values(Threshold(1.0, "quantile", {}, 10), np.zeros(3)) is None


def test_a_daemon_budget_replaces_the_bundle_budget(tmp_path):
    """`model.alert_budget`: a tabular threshold re-derived from the bundle's calibration tail,
    a window model's likelihood budget; a bundle that cannot take one is refused clearly."""
    from tests.conftest import FAST, make_normal_data
    from vaeguard import VAEDetector
    from vaeguard.errors import ConfigError
    from vaeguard.serving import load_serving
    from vaeguard.serving.loader import with_budget
    from vaeguard.timeseries.views import DEFAULT_CONFIG, ViewSet, merge_config

    data = make_normal_data(1500, seed=0, n_features=4)
    fast = {**FAST, "epochs": 20}
    VAEDetector(**fast).fit(data).save(tmp_path / "budget")
    VAEDetector(**fast, threshold_method="quantile").fit(data).save(tmp_path / "quantile")

    own = load_serving(tmp_path / "budget")
    strict = load_serving(tmp_path / "budget", budget=0.5)
    assert own.detector.threshold_rule_.params["budget"] == 10.0
    assert strict.detector.threshold_rule_.params["budget"] == 0.5
    assert strict.detector.threshold_rule_.value > own.detector.threshold_rule_.value
    assert strict.following.value > own.following.value
    fixed = load_serving(tmp_path / "budget", follow=False)
    assert fixed.following is None
    with pytest.raises(ConfigError, match=r"alert_budget.*quantile.*retrain"):
        load_serving(tmp_path / "quantile", budget=0.5)

    views = ViewSet.from_params(merge_config(DEFAULT_CONFIG, {"window": {"metrics": ["cpu"]}}))
    with_budget(views, 0.5, "here")
    assert views.likelihood_spec.budget == 0.5
    silent = ViewSet.from_params(
        merge_config(DEFAULT_CONFIG, {"window": {"metrics": ["cpu"]}, "likelihood": None})
    )
    with pytest.raises(ConfigError, match="without the likelihood"):
        with_budget(silent, 0.5, "here")
