"""Online learning in window mode (`vaeguard.timeseries.learning`): when a refit is due, which
windows it trains on, and that a failed refit leaves the previous model serving."""

from __future__ import annotations

import base64
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.timeseries.test_detector import series, small_detector
from vaeguard.apps.online import run_online
from vaeguard.errors import DataError
from vaeguard.timeseries.featurizer import WindowBatch
from vaeguard.timeseries.learning import (
    OnlineLearning,
    Windows,
    _decode,
    apply_refit_state,
    refit_state,
)
from vaeguard.timeseries.views import ViewSet


def schedule(**kw):
    return SimpleNamespace(
        schedule={"retrain_growth": None, "retrain_max_gap": None, "max_train": 10, **kw}
    )


def batch(first: int, n: int, d: int = 3) -> WindowBatch:
    """n windows whose every value is its global index (first, first + 1, …)."""
    x = np.repeat(np.arange(first, first + n, dtype="float32")[:, None], d, axis=1)
    return WindowBatch(
        x=x,
        mask=np.ones_like(x),
        c=None,
        keep=np.arange(n),
        entities=["e"] * n,
        ts=np.zeros(n),
        center=np.zeros((n, 1)),
        scale=np.ones((n, 1)),
    )


def feed(learning, rows: int, windows, n_entities: int = 1, keep=None) -> None:
    """What the serving object does: count a batch's rows, then keep its scored windows."""
    learning.count(rows)
    learning.observe(Windows.of(windows), n_entities, keep=keep)


def test_a_daemon_refits_every_gap_rows_per_entity():
    learning = OnlineLearning(schedule(retrain_growth=2.0, retrain_max_gap=100))
    assert learning.enabled
    assert learning.rows_until_due(0) == 100  # no entity yet counts as one
    assert learning.rows_until_due(3) == 300  # growth needs a known first fit: not at 0
    feed(learning, 250, batch(0, 5))
    assert learning.rows_until_due(3) == 50
    assert learning.rows_until_due(2) == 0


def test_the_runner_refits_at_the_doublings_and_at_most_gap_rows_apart():
    learning = OnlineLearning(schedule(retrain_growth=2.0, retrain_max_gap=1000), fitted_at=750)
    assert learning.rows_until_due(1) == 1500
    learning.fitted_at = 1500
    assert learning.rows_until_due(1) == 2500
    growth_only = OnlineLearning(schedule(retrain_growth=2.0), fitted_at=150)
    assert growth_only.enabled and growth_only.rows_until_due(1) == 300


def test_no_gap_in_a_daemon_means_no_online_learning():
    learning = OnlineLearning(schedule(retrain_growth=2.0))
    assert not learning.enabled
    feed(learning, 10_000, batch(0, 5))
    assert math.isinf(learning.rows_until_due(1)) and learning.windows() is None
    assert learning.refit_if_due(1) is None


def test_a_refit_due_with_too_few_windows_is_skipped_and_waits_a_whole_gap():
    learning = OnlineLearning(schedule(retrain_max_gap=20))
    feed(learning, 20, batch(0, 8))
    assert learning.refit_if_due(1) == {
        "ok": False,
        "result": "skipped",
        "windows": 8,
        "seconds": 0.0,
    }
    assert learning.rows_until_due(1) == 20 and learning.refits == 0


def test_the_newest_max_train_windows_are_kept_across_batches():
    learning = OnlineLearning(schedule(retrain_max_gap=5))
    for first in (0, 4, 7, 13):  # batches of 4, 3, 6 and 8 windows
        feed(learning, 8, batch(first, {0: 4, 4: 3, 7: 6, 13: 8}[first]))
    held = learning.windows()
    assert len(held) == 10
    np.testing.assert_array_equal(held.x[:, 0], np.arange(11, 21))
    assert held.center.shape == (10, 1) and held.mask.shape == held.x.shape
    # memory stays bounded: whole batches older than the newest max_train windows are dropped
    assert sum(len(p) for p in learning._parts) < 10 + 8


def test_a_refit_trains_warm_on_the_newest_windows():
    det = small_detector(retrain_steps=20)
    views = ViewSet([det], det.likelihood_spec, {"retrain_growth": None, "retrain_max_gap": 60})
    result = run_online(views, series(), first_fit=100)
    # fitted at 100, then every 60 rows (one entity) by the serving object itself
    assert result.trained_at == [100, 160, 220, 280, 340]
    assert det.training_info_["warm_start"] and det.training_info_["windows"] <= 4000
    assert np.isfinite(result.raw[0, 100:]).all()


def test_a_failed_refit_puts_the_previous_model_back(monkeypatch):
    det = small_detector(retrain_steps=20)
    views = ViewSet([det], det.likelihood_spec, {"retrain_growth": None, "retrain_max_gap": 1000})
    run_online(views, series()[:150], first_fit=100)
    learning = OnlineLearning(views, fitted_at=100)
    feat = views.featurizer().update_and_featurize(series()[:150])
    feed(learning, 1100, feat)
    before = [w.copy() for w in det.model_.get_weights()]
    threshold = det.threshold_
    calibration = (det.baseline_.copy(), det.score_reference_.copy(), det.plausible_range_)

    def broken_fit(*args, **kwargs):
        for v in det.model_.weights:  # half-trained garbage, then a failure
            v.assign(np.full(v.shape, np.nan, dtype="float32"))
        raise RuntimeError("out of memory")

    monkeypatch.setattr(det.model_, "fit", broken_fit)
    info = learning.refit_if_due(1)
    assert info is not None and not info["ok"] and info["result"] == "failed"
    assert learning.refits == 0 and learning.failures == 1
    for a, b in zip(before, det.model_.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert det.threshold_ == threshold
    # the calibration is float64 and comes back bit for bit (not rounded through float32)
    assert det.baseline_.dtype == det.score_reference_.dtype == np.float64
    np.testing.assert_array_equal(det.baseline_, calibration[0])
    np.testing.assert_array_equal(det.score_reference_, calibration[1])
    assert det.plausible_range_.to_dict() == calibration[2].to_dict()
    assert np.isfinite(views.raw_scores(feat.x, feat.c, feat.mask)[0]).all()
    assert learning.rows_until_due(1) == 1000  # the next attempt waits for a whole gap


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_refit_scoring_non_finite_values_is_refused(monkeypatch, value):
    det = small_detector(retrain_steps=20)
    views = ViewSet([det], det.likelihood_spec, {"retrain_growth": None, "retrain_max_gap": 50})
    run_online(views, series()[:150], first_fit=100)
    learning = OnlineLearning(views, fitted_at=100)
    feed(learning, 150, views.featurizer().update_and_featurize(series()[:150]))
    real = views.raw_scores
    monkeypatch.setattr(views, "raw_scores", lambda *a: [np.full_like(s, value) for s in real(*a)])
    info = learning.refit_if_due(1)
    assert info is not None and not info["ok"] and learning.failures == 1


def test_windows_the_likelihood_did_not_learn_are_not_trained_on():
    """An incident judged beyond the alert level is not learned as normal by the model either."""
    learning = OnlineLearning(schedule(retrain_max_gap=5, max_train=100))
    keep = np.ones(20, dtype=bool)
    keep[[3, 4, 5, 17]] = False
    feed(learning, 20, batch(0, 20), keep=keep)
    held = learning.windows()
    np.testing.assert_array_equal(held.x[:, 0], np.flatnonzero(keep))


def test_with_many_entities_the_windows_kept_span_the_same_time():
    """One window in every E (E entities): 4 entities interleaved, 40 windows each, max_train
    10 keeps the newest 10 of every 4th window, reaching 40 windows back, not 10."""
    learning = OnlineLearning(schedule(retrain_max_gap=5))
    for first in range(0, 160, 16):
        feed(learning, 16, batch(first, 16), n_entities=4)
    held = learning.windows()
    np.testing.assert_array_equal(held.x[:, 0], np.arange(120, 160, 4))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def refitted():
    det = small_detector(retrain_steps=10)
    views = ViewSet([det], det.likelihood_spec, {"retrain_growth": None, "retrain_max_gap": 60})
    run_online(views, series()[:200], first_fit=100)
    return views, refit_state(views)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(
        [
            "weights",
            "threshold",
            "baseline",
            "score_reference",
            "plausible_range",
            "training_info",
            "fits",
        ]
    ),
    value=json_values,
    where=st.sampled_from(["field", "array data", "array shape", "array dtype", "whole"]),
    data=st.data(),
)
def test_a_damaged_refit_state_is_refused_with_a_clear_error(refitted, key, value, where, data):
    """The refit section of a window-state file is read from disk: whatever it holds, it is
    applied whole or refused with DataError, never another exception and never half-applied."""
    views, good = refitted
    state = json.loads(json.dumps(good))
    item = state[0]
    if where == "whole":
        state = value
    elif where == "field":
        item[key] = value
    else:
        arrays = item["weights"] if key == "weights" else [item["baseline"]]
        target = arrays[data.draw(st.integers(0, len(arrays) - 1))]
        if where == "array data":
            target["data"] = data.draw(st.text(max_size=40) | st.just("AAAA") | st.just("////"))
        elif where == "array dtype":
            target["dtype"] = data.draw(json_values | st.sampled_from(["<f4", "<f8", ">f8", "|O"]))
        else:
            target["shape"] = data.draw(st.lists(st.integers(-2, 70), max_size=3))
    before = [w.copy() for w in views.views[0].model_.get_weights()]
    try:
        apply_refit_state(views, state)
    except DataError:
        for a, b in zip(before, views.views[0].model_.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)  # refused whole
    apply_refit_state(views, good)  # the good state always applies


def test_a_refit_state_written_before_dtypes_were_kept_still_applies(refitted):
    """State files of the previous release hold every array as float32, with no dtype."""
    views, good = refitted
    state = json.loads(json.dumps(good))
    for item in state:
        for array in [*item["weights"], item["baseline"], item["score_reference"]]:
            values = np.frombuffer(base64.b64decode(array["data"]), dtype=array.pop("dtype"))
            array["data"] = base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")
    apply_refit_state(views, state)
    view = views.views[0]
    assert view.baseline_.dtype == np.float64
    good_baseline = _decode(good[0]["baseline"])
    assert good_baseline.dtype == np.float64  # what this release writes
    np.testing.assert_allclose(view.baseline_, good_baseline, rtol=1e-6)
    apply_refit_state(views, good)
