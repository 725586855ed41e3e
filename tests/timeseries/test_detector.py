"""WindowDetector and learning online through the daemon's path: a small model, a short series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vaeguard.apps.online import run_online, training_points
from vaeguard.errors import DataError, NotFittedError
from vaeguard.timeseries.detector import WindowDetector
from vaeguard.timeseries.views import ViewSet

N = 360
SPIKE = 300


def small_detector(**kw) -> WindowDetector:
    params = dict(
        window=12,
        interval=60,
        conditions=("hour_of_day",),
        latent_dim=2,
        hidden=(16,),
        train_steps=80,
        retrain_steps=40,
        batch_size=32,
        mc_samples=4,
        likelihood={"short": 1, "history": 200, "min_history": 40},
    )
    params.update(kw)
    return WindowDetector(**params)


def series(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    t = np.arange(N)
    values = 10 + 3 * np.sin(2 * math.pi * t / 30) + 0.3 * rng.standard_normal(N)
    values[SPIKE] += 8
    stamps = 60.0 * t
    stamps[200:205] += 60 * 3  # a few slots pushed ahead: gaps, then late points
    return [{"ts": float(s), "value": float(v)} for s, v in zip(stamps, values, strict=True)]


@pytest.fixture(scope="module")
def detector():
    # one detector for the module: every fresh fit restarts from the same weights and seed
    return small_detector()


def run_stream(detector, records, *, first_fit, retrain_growth):
    lk = detector.likelihood_spec
    views = ViewSet([detector], lk, {"retrain_growth": retrain_growth})
    return run_online(views, records, first_fit=first_fit)


def test_training_points_grow_geometrically_within_the_series():
    assert training_points(1000, 150, 2.0, None) == [150, 300, 600]
    assert training_points(1000, 150, 2.0, 200) == [150, 300, 500, 700, 900]
    assert training_points(1000, 150, None, None) == [150]


def test_future_rows_do_not_change_past_scores(detector):
    cut = 250
    original = series()
    perturbed = [dict(r) for r in original]
    rng = np.random.default_rng(42)
    for r in perturbed[cut:]:
        r["value"] = float(r["value"] * 5 + 100 * rng.standard_normal())
    a = run_stream(detector, original, first_fit=100, retrain_growth=2.0)
    b = run_stream(detector, perturbed, first_fit=100, retrain_growth=2.0)
    assert a.trained_at == b.trained_at == [100, 200]
    scored = np.isfinite(a.raw[0, :cut])
    assert scored.sum() > 100
    np.testing.assert_array_equal(a.raw[:, :cut], b.raw[:, :cut])
    np.testing.assert_array_equal(a.output[:cut], b.output[:cut])
    # ... and the perturbation is visible afterwards, so the comparison could fail
    assert not np.allclose(np.nan_to_num(a.raw[:, cut:]), np.nan_to_num(b.raw[:, cut:]))


def test_the_probationary_rows_build_the_state_then_the_spike_stands_out(detector):
    result = run_stream(detector, series(), first_fit=100, retrain_growth=2.0)
    # the rows the first model trained on build the windows only: no raw score, no opinion, and
    # the likelihood history starts at the first fit, with scores of unseen rows only
    first = int(np.flatnonzero(np.isfinite(result.raw[0]))[0])
    assert first == 100 and np.isfinite(result.raw[0, 100:]).all()
    assert (result.output[: first + 40] == 0).all()  # no opinion before min_history scores
    assert result.output[first + 40 :].max() > 0
    assert ((result.output >= 0) & (result.output <= 1)).all()
    typical = np.nanmedian(result.raw[0, 100:])
    assert result.raw[0, SPIKE] > typical + 5
    assert result.output[SPIKE] > np.quantile(result.output[100:SPIKE], 0.95)
    assert result.refused == 0


def test_same_input_same_scores_whatever_ran_before(detector):
    a = run_stream(detector, series(), first_fit=100, retrain_growth=None)
    run_stream(detector, series(seed=5), first_fit=120, retrain_growth=None)
    b = run_stream(detector, series(), first_fit=100, retrain_growth=None)
    np.testing.assert_array_equal(a.raw, b.raw)


def test_unfitted_and_too_small_training_sets_are_refused():
    det = small_detector()
    with pytest.raises(NotFittedError):
        det.raw_scores(np.zeros((3, 12)))
    with pytest.raises(DataError, match="at least"):
        det.fit(np.zeros((5, 12)), np.zeros((5, 2)))


def test_views_take_the_most_surprised_model_and_one_view_is_the_plain_likelihood():
    from vaeguard.timeseries.likelihood import AnomalyLikelihood, LikelihoodSpec
    from vaeguard.timeseries.views import ViewLikelihood

    rng = np.random.default_rng(0)
    n = 400

    def view(spike_at):
        raw = rng.normal(10, 1, n)
        raw[spike_at] = 40.0
        return raw

    spec = LikelihoodSpec(estimator="gaussian", short=1, history=100, min_history=50, decades=6)
    keys = [""] * n
    a, b = view(200), view(300)
    plain = AnomalyLikelihood(spec).update_many(keys, a)
    alone = ViewLikelihood(spec, 1).update_many(keys, [a])
    np.testing.assert_array_equal(alone, plain + 0.0)
    both = ViewLikelihood(spec, 2).update_many(keys, [a, b])
    assert both[200] == 1.0 and both[300] == 1.0  # each view's spike gets through
    assert (both[:50] == 0).all() and alone[300] < 1.0


def test_a_failed_batch_puts_the_likelihood_histories_back():
    from vaeguard.timeseries.likelihood import LikelihoodSpec
    from vaeguard.timeseries.views import ViewLikelihood

    spec = LikelihoodSpec(estimator="gaussian", short=1, history=50, min_history=5, suppress=10)
    lk = ViewLikelihood(spec, 2)
    rng = np.random.default_rng(1)
    first = [rng.normal(size=30), rng.normal(size=30)]
    lk.update_many(["a"] * 30, first)
    before = lk.snapshot()
    saved = lk.save_entities(["a", "b"])
    lk.update_many(["a", "b"] * 5, [rng.normal(size=10), rng.normal(size=10)])
    assert lk.snapshot() != before
    lk.put_back(saved)
    assert lk.snapshot() == before
