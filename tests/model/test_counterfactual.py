"""Counterfactual explanations: plausible expected values, the planted feature blamed, old
bundles still loading."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.conftest import make_normal_data
from vaeguard import BundleError, DataError, VAEDetector
from vaeguard.model.counterfactual import PlausibleRange

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)


def within(result, r) -> bool:
    return bool(((result.expected >= r.low) & (result.expected <= r.high)).all())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=arrays("float64", st.tuples(st.integers(1, 9), st.just(5)), elements=FINITE),
    symptoms=st.sampled_from([(), ("x1",), ("x0", "x2", "x4")]),
)
def test_expected_values_stay_in_the_plausible_range_for_any_finite_input(fitted, x, symptoms):
    fitted = with_symptoms(fitted, *symptoms)
    r = fitted.plausible_range
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 overflows float32: that's the point
        cheap = fitted.score_matrix(x)
        explained = fitted.counterfactual_matrix(x, base=cheap, rows="all", k=3)
    assert within(cheap, r)
    assert within(explained, r)
    assert explained.blame.shape == (len(x), 3)
    assert ((explained.blame >= 0) & (explained.blame < 5)).all()
    for i in range(len(x)):
        top = explained.top_contributions(i, 3)
        assert [c["feature"] for c in top] == [f"x{j}" for j in explained.blame[i]]
        for c in top:
            j = int(c["feature"][1:])
            assert r.low[j] <= c["expected"] <= r.high[j]
            assert np.isfinite([c["share"], c["observed"], c["expected"]]).all()


def test_plausible_range_is_the_training_range_with_a_margin(fitted, normal_data):
    r = fitted.plausible_range
    lo, hi = normal_data.min(axis=0), normal_data.max(axis=0)
    assert (lo < 0).all() and (hi > 0).all()
    np.testing.assert_allclose(r.low, lo - r.margin * (hi - lo))
    np.testing.assert_allclose(r.high, hi + r.margin * (hi - lo))
    assert r.basis == "training range" and r.margin > 0


def test_a_feature_of_one_sign_keeps_its_sign():
    x = np.array([[1.0, -5.0, 2.0], [50.0, -1.0, 3.0], [99.0, -3.0, -1.0]])
    r = PlausibleRange.fit(x, margin=0.5)
    np.testing.assert_allclose(r.low, [0.0, -7.0, -3.0])
    np.testing.assert_allclose(r.high, [148.0, 0.0, 5.0])


def test_clip_maps_non_finite_values_to_the_fallback():
    r = PlausibleRange.fit(np.array([[-1.0, 5.0], [9.0, 5.0]]), margin=0.1)
    out = r.clip(np.array([[np.nan, np.inf], [-1e300, 7.0]]), fallback=np.array([3.0, 5.0]))
    np.testing.assert_allclose(out, [[3.0, 5.0], [-2.0, 5.0]])  # constant feature: a point


@pytest.mark.parametrize("feature", range(5))
def test_the_planted_feature_is_blamed_and_corrected(fitted, normal_data, feature):
    rows = make_normal_data(40, seed=11 + feature, n_features=5)
    planted = rows.copy()
    planted[:, feature] += 6 * normal_data[:, feature].std()
    result = fitted.counterfactual_matrix(planted, rows="all", k=2)
    hits = result.blame[:, 0] == feature
    assert hits.mean() >= 0.9, result.blame[:, 0]
    # The correction is towards the truth, and it explains the anomaly: most of the score goes.
    j = feature
    moved = np.abs(result.expected[hits, j] - rows[hits, j]) < np.abs(
        planted[hits, j] - rows[hits, j]
    )
    assert moved.mean() >= 0.9
    drop = result.score_drop[hits, j]
    assert (drop > 0).all()
    assert np.median(drop / (result.scores[hits] - fitted.score_matrix(rows[hits]).scores)) > 0.5


def test_score_drops_add_up_to_the_corrected_rows_score(fitted):
    x = make_normal_data(6, seed=21, n_features=5)
    x[:, 2] += 9.0
    x[:3, 4] -= 7.0
    result = fitted.counterfactual_matrix(x, rows="all", k=2)
    corrected = x.copy()
    for i in range(len(x)):
        for j in result.blame[i]:
            corrected[i, j] = result.expected[i, j]
        total = np.nansum(result.score_drop[i])
        assert total == pytest.approx(
            result.scores[i] - fitted.score_matrix(corrected[i : i + 1]).scores[0],
            rel=1e-3,
            abs=1e-2,
        )


def test_only_anomalous_rows_are_explained_by_default(fitted):
    x = make_normal_data(20, seed=5, n_features=5)
    x[:2, 0] += 10.0
    result = fitted.counterfactual(x)
    flagged = result.is_anomaly
    assert flagged[:2].all()
    assert (result.blame[flagged, 0] >= 0).all() and (result.blame[~flagged] == -1).all()
    assert np.isnan(result.score_drop[~flagged]).all()
    assert result.top_contributions(0)[0]["feature"] == "x0"
    assert "score_drop" in result.top_contributions(0)[0]
    normal = int(np.flatnonzero(~flagged)[0])
    assert "score_drop" not in result.top_contributions(normal)[0]


# -- declared symptoms --------------------------------------------------------------------------


def with_symptoms(fitted, *names):
    det = copy.copy(fitted)
    return det.set_params(symptoms=names)


def cause_and_symptom(normal_data, n=30, cause=3.0, symptom=30.0):
    """Rows where x0 left its relation to the others by ``cause`` σ and x1 by ``symptom`` σ
    (x1 as a latency that explodes once x0, its CPU, saturates)."""
    x = make_normal_data(n, seed=31, n_features=5)
    sd = normal_data.std(axis=0)
    x[:, 0] += cause * sd[0]
    x[:, 1] += symptom * sd[1]
    return x


def test_an_anomalous_cause_is_blamed_before_its_declared_symptom(fitted, normal_data):
    x = cause_and_symptom(normal_data)
    plain = fitted.counterfactual_matrix(x, rows="all", k=2)
    assert (plain.blame[:, 0] == 1).mean() >= 0.9  # the data alone blames the larger shift
    declared = with_symptoms(fitted, "x1").counterfactual_matrix(x, rows="all", k=2)
    assert (declared.blame[:, 0] == 0).mean() >= 0.9, declared.blame
    # The cause's correction (the symptom following it) explains the row: most of its score.
    hits = declared.blame[:, 0] == 0
    share = declared.score_drop[hits, 0] / (declared.scores[hits] - fitted.threshold)
    assert np.median(share) > 0.9
    assert np.array_equal(plain.scores, declared.scores)  # scores do not change


def test_a_symptom_alone_is_still_blamed(fitted, normal_data):
    x = cause_and_symptom(normal_data, cause=0.0)
    declared = with_symptoms(fitted, "x1").counterfactual_matrix(x, rows="all", k=2)
    assert (declared.blame[:, 0] == 1).mean() >= 0.9, declared.blame


@pytest.mark.parametrize(
    ("symptoms", "message"),
    [(["x9"], "'x9' not among the features"), (["x0", "x1", "x2", "x3", "x4"], "at least one")],
)
def test_symptoms_that_are_not_features_are_refused_by_name(normal_data, symptoms, message):
    with pytest.raises(DataError, match=message):
        VAEDetector(epochs=1, symptoms=symptoms).fit(normal_data)


def test_symptoms_travel_in_the_bundle(fitted, tmp_path):
    with_symptoms(fitted, "x1", "x3").save(tmp_path / "b")
    assert VAEDetector.load(tmp_path / "b").symptoms == ("x1", "x3")
    fitted.save(tmp_path / "old")  # none declared: an old bundle reads the same
    assert VAEDetector.load(tmp_path / "old").symptoms == ()


@pytest.mark.parametrize("bad", [["nope"], "x1x", 5, [1, 2], {"x1": 1}])
def test_a_bundle_with_malformed_symptoms_is_refused(fitted, tmp_path, bad):
    fitted.save(tmp_path / "b")
    path = tmp_path / "b" / "bundle.json"
    manifest = json.loads(path.read_text())
    manifest["params"]["symptoms"] = bad
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="symptoms"):
        VAEDetector.load(tmp_path / "b")


# -- the bundle ---------------------------------------------------------------------------------


def test_the_range_travels_in_the_bundle(fitted, tmp_path):
    fitted.save(tmp_path / "b")
    m = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert len(m["plausible_range"]["low"]) == 5
    loaded = VAEDetector.load(tmp_path / "b")
    np.testing.assert_allclose(loaded.plausible_range.low, fitted.plausible_range.low)
    np.testing.assert_allclose(loaded.plausible_range.high, fitted.plausible_range.high)


def test_a_bundle_without_the_range_loads_with_the_scaler_fallback(fitted, tmp_path):
    fitted.save(tmp_path / "old")
    path = tmp_path / "old" / "bundle.json"
    manifest = json.loads(path.read_text())
    del manifest["plausible_range"]
    path.write_text(json.dumps(manifest))
    old = VAEDetector.load(tmp_path / "old")
    r = old.plausible_range
    assert r.basis == "scaler fallback"
    np.testing.assert_allclose(r.low, old.scaler_.center - r.margin * old.scaler_.scale)
    x = make_normal_data(8, seed=2, n_features=5)
    x[0, 1] = 1e9
    assert within(old.counterfactual_matrix(x, rows="all"), r)
    # Saving it again keeps it an old-style bundle: no range is invented from the fallback.
    old.save(tmp_path / "again")
    assert "plausible_range" not in json.loads((tmp_path / "again" / "bundle.json").read_text())


@pytest.mark.parametrize(
    "bad",
    [
        {"low": [0.0] * 4, "high": [1.0] * 4},
        {"low": [2.0] * 5, "high": [1.0] * 5},
        {"low": [0.0] * 5},
        "everything",
    ],
)
def test_a_malformed_range_is_refused(fitted, tmp_path, bad):
    fitted.save(tmp_path / "b")
    path = tmp_path / "b" / "bundle.json"
    manifest = json.loads(path.read_text())
    manifest["plausible_range"] = bad
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plausible_range"):
        VAEDetector.load(tmp_path / "b")
