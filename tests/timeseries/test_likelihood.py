"""The [0, 1] anomaly likelihood: bounded, reacts to a spike, per entity, survives a snapshot."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeguard.errors import ConfigError, DataError
from vaeguard.timeseries.likelihood import AnomalyLikelihood, LikelihoodSpec, log10_normal_tail


def noise(n: int, seed: int = 0) -> np.ndarray:
    return 50.0 + 5.0 * np.random.default_rng(seed).standard_normal(n)


@pytest.mark.parametrize("estimator", ["tail", "gaussian"])
def test_outputs_stay_in_0_1_and_a_spike_stands_out(estimator):
    lik = AnomalyLikelihood(estimator=estimator, short=3, history=500, min_history=50)
    normal = lik.update_many(["a"] * 400, noise(400))
    assert normal[:50].tolist() == [0.0] * 50  # no opinion before min_history scores
    spike = lik.update("a", 500.0)
    assert normal.min() >= 0.0 and normal.max() <= 1.0
    assert np.quantile(normal[50:], 0.99) < 0.4
    assert spike > 0.9 and spike > normal.max()
    extreme = [lik.update("a", s) for s in (1e300, math.inf, math.nan, -math.inf, -1e300)]
    assert all(0.0 <= v <= 1.0 for v in extreme)


def test_linear_output_is_one_minus_the_tail_probability():
    lik = AnomalyLikelihood(
        estimator="gaussian", short=1, history=200, min_history=100, output="linear"
    )
    lik.update_many(["a"] * 200, noise(200, seed=3))
    mid = lik.update("a", 50.0)
    assert 0.2 < mid < 0.8
    assert lik.update("a", 200.0) > 0.999


def test_entities_have_their_own_history():
    lik = AnomalyLikelihood(short=1, history=300, min_history=50)
    quiet, loud = noise(300, 1), 1000.0 + 200.0 * np.random.default_rng(2).standard_normal(300)
    keys = ["quiet", "loud"] * 300
    lik.update_many(keys, np.ravel(np.column_stack([quiet, loud])))
    # 500 is huge for "quiet" and tiny for "loud"
    assert lik.update("quiet", 500.0) > 0.5
    assert lik.update("loud", 500.0) < 0.1


def test_suppression_reports_an_incident_once():
    lik = AnomalyLikelihood(short=1, history=300, min_history=50, suppress=20)
    lik.update_many(["a"] * 300, noise(300))
    outs = lik.update_many(["a"] * 10, [400.0] * 10)
    assert outs[0] > 0.5 and outs[1:].tolist() == [0.0] * 9
    outs = lik.update_many(["a"] * 30, noise(30, seed=9))
    assert lik.update("a", 2000.0) > outs.max()  # a bigger one still gets through


@settings(max_examples=200, deadline=None)
@given(
    outputs=st.lists(st.sampled_from([0.0, 0.3, 0.99, 1.0]), max_size=80),
    suppress=st.integers(1, 12),
)
def test_suppression_keeps_saturated_alerts_apart_and_one_per_unbroken_incident(outputs, suppress):
    """Whatever the outputs: two alerts of one entity are more than `suppress` points apart,
    and an unbroken run of outputs at the alert level alerts at most once."""
    lik = AnomalyLikelihood(LikelihoodSpec(suppress=suppress, alert=1.0))
    history = lik._history("e")
    kept = [lik._suppress(history, out) for out in outputs]
    alerts = [i for i, out in enumerate(kept) if out >= 1.0]
    assert all(b - a > suppress for a, b in itertools.pairwise(alerts))
    run = 0
    for i, out in enumerate(outputs):
        run = run + 1 if out >= 1.0 else 0
        if i in alerts:
            assert not any(j in alerts for j in range(i - run + 1, i))
    assert all(k in (0.0, out) for k, out in zip(kept, outputs, strict=True))


def test_after_an_alert_only_a_new_incident_a_whole_level_deeper_alerts_again():
    """A brief false alert saturates at 1; a shift on the same metric 60 points later, whose
    tail probability is the level's times smaller still, must still alert (both at 1, the old
    rule silenced it); one less deep, or a deepening of the incident going on, does not."""
    spec = LikelihoodSpec(suppress=100, alert=1.0, budget=2.0)
    level = spec.level_decades

    def emitted(depths: list[float]) -> list[float]:
        lik = AnomalyLikelihood(spec)
        return [lik.emit("e", -d * level, "cpu") for d in depths]

    quiet = [0.1] * 59
    assert emitted([1.2, *quiet, 2.3])[-1] == 1.0  # 1.1 levels deeper than the alert
    assert emitted([1.2, *quiet, 2.1])[-1] == 0.0  # 0.9 levels deeper: the same incident's rank
    assert emitted([1.2, 1.6, 3.0]) == [1.0, 0.0, 0.0]  # going on, however deep: one alert
    assert emitted([1.2, 0.1, 3.0]) == [1.0, 0.0, 1.0]  # broken, then far deeper: a new one


@settings(max_examples=200, deadline=None)
@given(
    depths=st.lists(st.sampled_from([0.0, 0.3, 0.99, 1.0, 1.5, 2.2, 3.5]), max_size=80),
    suppress=st.integers(1, 12),
)
def test_alerts_within_the_suppression_window_are_each_a_level_deeper(depths, suppress):
    """Whatever the depths: an unbroken run at the level alerts at most once, and an alert
    within `suppress` points of an earlier one is at least a whole level deeper than it."""
    spec = LikelihoodSpec(suppress=suppress, alert=1.0, budget=2.0)
    lik = AnomalyLikelihood(spec)
    kept = [lik.emit("e", -d * spec.level_decades) for d in depths]
    alerts = [i for i, out in enumerate(kept) if out >= 1.0]
    for a, b in itertools.pairwise(alerts):
        assert b - a > suppress or depths[b] >= depths[a] + 1.0
    run = 0
    for i, d in enumerate(depths):
        run = run + 1 if d >= 1.0 else 0
        if i in alerts:
            assert not any(j in alerts for j in range(i - run + 1, i))
    assert all(k in (0.0, min(1.0, d)) for k, d in zip(kept, depths, strict=True))


def test_an_infinitely_deep_alert_suppresses_and_its_snapshot_restores():
    spec = LikelihoodSpec(suppress=10, alert=1.0, budget=2.0)
    lik = AnomalyLikelihood(spec)
    assert lik.emit("e", -math.inf, "cpu") == 1.0
    assert lik.emit("e", -1e300, "cpu") == 0.0  # not a level deeper than the cap
    again = AnomalyLikelihood.restore(json.loads(json.dumps(lik.snapshot(), allow_nan=False)))
    assert again.emit("e", -1e300, "cpu") == 0.0


def test_log10_normal_tail_is_accurate_far_out():
    assert log10_normal_tail(0.0) == pytest.approx(math.log10(0.5))
    assert log10_normal_tail(4.0) == pytest.approx(math.log10(3.167124e-05), rel=1e-4)
    assert log10_normal_tail(10.0) == pytest.approx(math.log10(7.619853e-24), rel=1e-3)
    assert math.isfinite(log10_normal_tail(1e6))


def test_snapshot_restore_gives_identical_outputs():
    spec = LikelihoodSpec(short=5, history=100, min_history=20, refresh=7, suppress=15)
    lik = AnomalyLikelihood(spec)
    scores = np.concatenate([noise(260), [300.0, 310.0], noise(40, seed=4)])
    keys = ["a", "b"] * (len(scores) // 2)
    lik.update_many(keys[:253], scores[:253])
    text = json.dumps(lik.snapshot(), allow_nan=False)
    restored = AnomalyLikelihood.restore(json.loads(text))
    a = lik.update_many(keys[253:], scores[253:])
    b = restored.update_many(keys[253:], scores[253:])
    np.testing.assert_array_equal(a, b)
    assert a.max() > 0.5  # the snapshot was taken mid-stream, with live statistics


def test_reseed_rebuilds_the_history_from_past_scores():
    lik = AnomalyLikelihood(short=1, history=200, min_history=50)
    lik.reseed("a", noise(200))
    assert lik.update("a", 400.0) > 0.5  # no warm-up after a reseed


def test_bad_spec_and_state_are_refused():
    with pytest.raises(ConfigError, match="estimator"):
        LikelihoodSpec(estimator="magic")
    with pytest.raises(ConfigError, match="min_history"):
        LikelihoodSpec(history=10, min_history=20)
    with pytest.raises(ConfigError, match="max_entities"):  # else every judgement fails
        LikelihoodSpec(max_entities=0)
    with pytest.raises(DataError, match="not a likelihood-state"):
        AnomalyLikelihood.restore({"format": "nope"})


def test_update_is_emit_of_the_log10_tail():
    spec = LikelihoodSpec(estimator="gaussian", short=1, history=200, min_history=50, suppress=10)
    one, two = AnomalyLikelihood(spec), AnomalyLikelihood(spec)
    scores = np.concatenate([noise(250), [400.0, 30.0, 500.0]])
    a = one.update_many(["a"] * scores.size, scores)
    b = [two.emit("a", two.log10_tail("a", float(s))) for s in scores]
    np.testing.assert_array_equal(a, b)
    assert two.log10_tail("a", 50.0) <= 0.0
