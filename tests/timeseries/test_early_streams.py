"""A young stream: a channel its model has not learned yet.

The seasonal residual of a stream younger than its period appears only after the first fit:
the model never saw it observed, so it is masked when scored (not read as an anomaly) until a
refit has seen it, and then that view's histories restart on the new scale.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.timeseries.test_detector import small_detector
from vaeguard.apps.online import replay_likelihood, restarts_array, run_online
from vaeguard.errors import BundleError, DataError
from vaeguard.timeseries.detector import CHANNEL_SLOTS, MIN_TRAIN_WINDOWS
from vaeguard.timeseries.learning import Windows, apply_refit_state, fit_views, refit_state
from vaeguard.timeseries.likelihood import LikelihoodSpec
from vaeguard.timeseries.views import ViewLikelihood, ViewSet

WINDOW = 12
PERIOD = 3600.0  # the seasonal residual needs a whole hour (60 one-minute points) of history


def stream(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = 10 + 3 * np.sin(2 * math.pi * t / 20) + 0.3 * rng.standard_normal(n)
    return [{"ts": 60.0 * i, "value": float(v)} for i, v in enumerate(values)]


def seasonal_detector(**kw):
    return small_detector(
        window=WINDOW,
        seasonal={"period": PERIOD, "periods": 1, "tolerance": 60.0},
        score_slots=4,
        **kw,
    )


@pytest.fixture(scope="module")
def young():
    """A detector fitted on the first 50 points: its seasonal channel was never observed."""
    detector = seasonal_detector()
    views = ViewSet([detector], detector.likelihood_spec, {"retrain_growth": None})
    fit_views(
        views, Windows.of(views.featurizer().update_and_featurize(stream(50))), warm_start=False
    )
    return detector


def test_a_channel_never_observed_in_training_is_masked_when_scored(young):
    assert young.input_channels == ("value", "value_seasonal")
    assert young.training_info_[CHANNEL_SLOTS][1] == 0
    assert young.unlearned_channels == ("value_seasonal",)
    later = young.featurizer().update_and_featurize(stream(200))
    seasonal = slice(WINDOW, 2 * WINDOW)
    assert later.mask[-50:, seasonal].all()  # observed now
    hidden = later.mask.copy()
    hidden[:, seasonal] = 0.0
    score, nll, _ = young.score_windows(later.x, later.c, later.mask)
    np.testing.assert_array_equal(score, young.score_windows(later.x, later.c, hidden)[0])
    assert (nll[:, seasonal] == 0).all()


def test_a_channel_seen_enough_is_judged():
    detector = seasonal_detector()
    batch = detector.featurizer().update_and_featurize(stream(400))
    detector.fit(batch.x, batch.c, batch.mask)
    assert detector.training_info_[CHANNEL_SLOTS][1] >= MIN_TRAIN_WINDOWS * WINDOW
    assert detector.unlearned_channels == ()
    hidden = batch.mask.copy()
    hidden[:, WINDOW:] = 0.0
    score = detector.score_windows(batch.x, batch.c, batch.mask)[0]
    assert not np.allclose(score[-100:], detector.score_windows(batch.x, batch.c, hidden)[0][-100:])


def test_a_model_fitted_before_the_counts_existed_judges_every_channel(young):
    info = dict(young.training_info_)
    try:
        young.training_info_.pop(CHANNEL_SLOTS)
        assert young.unlearned_channels == ()
    finally:
        young.training_info_ = info


@pytest.mark.parametrize("bad", [[1], [1, -1], [1, 2.5], "many", [True, 3], {"a": 1}])
def test_malformed_channel_counts_in_a_bundle_or_a_refit_state_are_refused(young, tmp_path, bad):
    views = ViewSet([young], young.likelihood_spec, {"retrain_growth": None})
    state = json.loads(json.dumps(refit_state(views)))
    state[0]["training_info"][CHANNEL_SLOTS] = bad
    with pytest.raises(DataError, match=CHANNEL_SLOTS):
        apply_refit_state(views, state)

    ViewSet.of(young).save(tmp_path / "bundle")
    manifest = tmp_path / "bundle" / "bundle.json"
    text = manifest.read_text()
    assert f'"{CHANNEL_SLOTS}"' in text
    data = json.loads(text)
    _replace_key(data, CHANNEL_SLOTS, bad)
    manifest.write_text(json.dumps(data))
    with pytest.raises(BundleError):
        ViewSet.load(tmp_path / "bundle")


def _replace_key(node, key, value) -> None:
    if isinstance(node, dict):
        for k in node:
            if k == key:
                node[k] = value
            else:
                _replace_key(node[k], key, value)
    elif isinstance(node, list):
        for item in node:
            _replace_key(item, key, value)


def test_forgotten_terms_restart_and_the_others_keep_their_histories():
    spec = LikelihoodSpec.from_dict({"short": 1, "history": 50, "min_history": 10, "budget": 2.0})
    state = ViewLikelihood(spec, 3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        state.update_many(["a"], [rng.normal(size=1) for _ in range(3)])
    assert not any(v.warming_up("a") for v in state.views)
    state.forget_terms([1])
    assert state.views[1].warming_up("a")
    assert not state.views[0].warming_up("a") and not state.views[2].warming_up("a")
    assert all(p[1] is None for p in state._held["a"].points)
    # it learns again from there, and is snapshot-able meanwhile
    state.update_many(["a"], [rng.normal(size=1) for _ in range(3)])
    ViewLikelihood.restore(json.loads(json.dumps(state.snapshot())))


def test_a_refit_that_learns_a_channel_restarts_that_views_histories(monkeypatch):
    """The first fit (60 points) precedes the seasonal channel (an hour); the refit at 200
    points has seen it: view 1 (every channel) scores on another scale from there, so its
    terms' histories restart, and view 0 (the metric alone) keeps its own."""
    forgotten = []
    monkeypatch.setattr(
        ViewLikelihood, "forget_terms", _spy(ViewLikelihood.forget_terms, forgotten)
    )
    views = ViewSet(
        [seasonal_detector(inputs="metrics"), seasonal_detector()],
        {"short": 1, "history": 200, "min_history": 40, "budget": 2.0},
        {"retrain_growth": None, "retrain_max_gap": 140},
    )
    result = run_online(views, stream(260), first_fit=60)
    assert result.trained_at == [60, 200]
    assert views.views[1].unlearned_channels == ()
    assert forgotten == [[1]]
    # a replay of the raw scores restarts them at the same row, and gives serving's outputs
    assert [terms for _, terms in result.restarts] == [[1]]
    spec = views.likelihood_spec
    replayed = replay_likelihood(result.raw, result.entities, spec, result.restarts)
    np.testing.assert_allclose(replayed, result.output)
    encoded = restarts_array(result.restarts, len(result.raw))
    np.testing.assert_allclose(
        replay_likelihood(result.raw, result.entities, spec, encoded), result.output
    )
    assert not np.allclose(replay_likelihood(result.raw, result.entities, spec), result.output)


def _spy(method, calls):
    def wrapped(self, terms):
        calls.append(list(terms))
        return method(self, terms)

    return wrapped
