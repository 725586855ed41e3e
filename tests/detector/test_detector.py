"""VAEDetector behaviour: ranking, calibration, explanation, conditions, generation, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import FAST, make_normal_data
from vaeguard import DataError, NotFittedError, VAEDetector
from vaeguard.thresholds import p_values as tail_probabilities


def test_injected_outliers_outrank_normals(fitted):
    fresh = make_normal_data(500, seed=11, n_features=5)
    outliers = fresh[:50].copy()
    outliers[:, 2] += 6 * fresh[:, 2].std()
    s_normal = fitted.decision_function(fresh[50:])
    s_outlier = fitted.decision_function(outliers)
    # every outlier above the 95th percentile of normal scores
    assert (s_outlier > np.quantile(s_normal, 0.95)).mean() > 0.95
    assert fitted.predict(outliers).mean() > 0.9


def test_calibrated_false_positive_rate_holds_on_fresh_normal_data(fitted):
    fresh = make_normal_data(20000, seed=99, n_features=5)
    fpr = fitted.predict(fresh).mean()
    assert fitted.threshold_rule_.method == "budget" and fitted.budget == 10.0
    # the budget: 10 per 1,000 rows; the threshold comes from 600 held-out rows, so allow
    # sampling error (the tail's upper confidence bound errs towards fewer alerts)
    assert 0.001 < fpr < 0.015


def test_the_quantile_threshold_targets_its_rate(normal_data):
    det = VAEDetector(**FAST, threshold_method="quantile", target_fpr=0.01).fit(normal_data)
    fpr = det.predict(make_normal_data(20000, seed=99, n_features=5)).mean()
    assert det.threshold_rule_.method == "quantile"
    assert 0.002 < fpr < 0.03


def test_a_small_budget_reaches_beyond_the_calibration_rows(fitted, tmp_path):
    """A budget of 1 in 10,000 rows from 600 calibration rows: the fitted tail extrapolates."""
    fitted = VAEDetector.load(_saved(fitted, tmp_path))  # the session's detector stays as it is
    threshold = fitted.calibrate(make_normal_data(600, seed=31, n_features=5), budget=0.1)
    assert threshold.method == "budget"
    fpr = fitted.predict(make_normal_data(50000, seed=32, n_features=5)).mean()
    assert fpr < 0.0004
    p = tail_probabilities(
        threshold, fitted.decision_function(make_normal_data(4000, seed=33, n_features=5))
    )
    # p-values of normal rows are (close to) uniform in the body: about 10 % below 0.1
    assert 0.05 < (p < 0.1).mean() < 0.15


def test_spot_threshold_targets_its_risk(normal_data):
    det = VAEDetector(**FAST, threshold_method="spot", risk=1e-2).fit(normal_data)
    assert det.threshold_rule_.method == "spot"
    fresh = make_normal_data(20000, seed=5, n_features=5)
    assert det.predict(fresh).mean() < 0.03


def test_recalibrating_on_more_normal_data_reaches_small_risks(fitted, tmp_path):
    det = VAEDetector.load(_saved(fitted, tmp_path))
    threshold = det.calibrate(
        make_normal_data(20000, seed=21, n_features=5), method="spot", risk=1e-3
    )
    assert threshold.method == "spot" and "note" not in threshold.params
    fpr = det.predict(make_normal_data(50000, seed=22, n_features=5)).mean()
    assert 2e-4 < fpr < 3e-3


def test_explain_points_at_the_shifted_feature(fitted, normal_data):
    fresh = make_normal_data(300, seed=3, n_features=5)
    rng = np.random.default_rng(0)
    shifted = rng.integers(5, size=len(fresh))
    rows = fresh.copy()
    rows[np.arange(len(fresh)), shifted] += 6 * normal_data.std(axis=0)[shifted]
    # What alerts carry for anomalous rows: the counterfactual blame.
    blame = fitted.counterfactual(rows, rows="all", k=1).blame[:, 0]
    assert (blame == shifted).mean() > 0.95
    # The cheap per-feature ranking (normal rows' explanation) is weaker with the defaults
    # chosen by benchmarks/odds.py --cv (β 0.1, variance floor −3: 78 % here, 98 % with
    # β 1 / floor −6); RESULTS-odds.md reports the ODDS planted-shift rate.
    assert (fitted.explain(rows).argmax(axis=1) == shifted).mean() > 0.7


def test_score_result_carries_expected_values_and_shares(fitted):
    row = make_normal_data(1, seed=4, n_features=5)
    row[0, 1] += 8.0
    result = fitted.score(row)
    top = result.top_contributions(0, k=2)
    assert top[0]["feature"] == "x1"
    assert top[0]["observed"] == pytest.approx(row[0, 1])
    assert abs(top[0]["expected"] - row[0, 1]) > 3.0
    assert 0.5 < top[0]["share"] <= 1.0
    assert result.nll.shape == result.contributions.shape == (1, 5)


def test_scores_are_deterministic(fitted):
    x = make_normal_data(100, seed=8, n_features=5)
    np.testing.assert_array_equal(fitted.decision_function(x), fitted.decision_function(x))
    # batch composition changes float summation order only
    np.testing.assert_allclose(
        fitted.decision_function(x[:7]), fitted.decision_function(x)[:7], rtol=1e-4
    )


def test_save_load_gives_identical_scores(fitted, tmp_path):
    x = make_normal_data(200, seed=9, n_features=5)
    fitted.save(tmp_path / "bundle")
    loaded = VAEDetector.load(tmp_path / "bundle")
    np.testing.assert_allclose(
        loaded.decision_function(x), fitted.decision_function(x), rtol=1e-6, atol=1e-6
    )
    assert loaded.threshold == fitted.threshold
    assert loaded.feature_names_ == fitted.feature_names_
    np.testing.assert_allclose(loaded.explain(x), fitted.explain(x), rtol=1e-5, atol=1e-5)


def test_generated_samples_follow_the_training_moments(fitted, normal_data):
    samples = fitted.sample(5000, seed=1)
    assert samples.shape == (5000, 5)
    np.testing.assert_allclose(
        samples.mean(axis=0), normal_data.mean(axis=0), atol=0.25 * normal_data.std(axis=0).max()
    )
    np.testing.assert_allclose(samples.std(axis=0), normal_data.std(axis=0), rtol=0.3)
    corr_true = np.corrcoef(normal_data.T)
    corr_gen = np.corrcoef(samples.T)
    assert np.abs(corr_true - corr_gen).max() < 0.3


def test_encode_and_interpolate(fitted):
    x = make_normal_data(10, seed=2, n_features=5)
    mu, sigma = fitted.encode(x)
    assert mu.shape == sigma.shape == (10, fitted.latent_dim)
    assert (sigma > 0).all()
    path = fitted.interpolate(x[0], x[1], steps=5)
    assert path.shape == (5, 5)
    ends = fitted.decode(np.vstack([mu[0], mu[1]]))
    np.testing.assert_allclose(path[[0, -1]], ends, rtol=1e-4, atol=1e-4)


def test_dataframes_are_matched_by_column_name(fitted):
    pd = pytest.importorskip("pandas")
    x = make_normal_data(20, seed=6, n_features=5)
    frame = pd.DataFrame(x, columns=[f"x{j}" for j in range(5)])
    shuffled = frame[["x3", "x0", "x4", "x1", "x2"]]
    np.testing.assert_allclose(
        fitted.decision_function(shuffled), fitted.decision_function(x), rtol=1e-6
    )


def test_conditional_model_separates_its_conditions():
    rng = np.random.default_rng(0)
    n = 3000
    kind = np.where(rng.random(n) < 0.5, "web", "db")
    base = np.where(kind == "web", 0.0, 6.0)[:, None]
    x = base + rng.standard_normal((n, 3)) * 0.5
    det = VAEDetector(**{**FAST, "epochs": 80}).fit(x, {"kind": kind})
    assert det.conditions_.columns[0].kind == "categorical"
    web_row = np.zeros((1, 3))
    db_row = np.full((1, 3), 6.0)
    s = {
        (r, k): float(det.decision_function(row, {"kind": [k]})[0])
        for r, row in (("web", web_row), ("db", db_row))
        for k in ("web", "db")
    }
    assert s[("web", "web")] < det.threshold < s[("web", "db")]
    assert s[("db", "db")] < det.threshold < s[("db", "web")]
    gen_db = det.sample(500, {"kind": "db"}, seed=0)
    gen_web = det.sample(500, {"kind": "web"}, seed=0)
    assert gen_db.mean() == pytest.approx(6.0, abs=0.5)
    assert gen_web.mean() == pytest.approx(0.0, abs=0.5)


def test_conditions_can_come_as_columns_of_named_input():
    rng = np.random.default_rng(1)
    n = 600
    hour = rng.integers(0, 24, n).astype(float)
    value = np.sin(hour / 24 * 2 * np.pi) * 3 + 0.3 * rng.standard_normal(n)
    det = VAEDetector(**{**FAST, "epochs": 20}).fit({"v": value, "w": value * 2}, {"hour": hour})
    records = [{"v": 0.0, "w": 0.0, "hour": 6.0}]
    assert np.isfinite(det.decision_function(records)).all()
    with pytest.raises(DataError, match="hour"):
        det.decision_function([{"v": 0.0, "w": 0.0}])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"x0": [1.0, float("nan")]}, r"row 2, column 'x0': NaN"),
        ({"x0": [1.0, float("inf")]}, r"row 2, column 'x0'"),
        ({"x0": ["1.0", "oops"]}, r"row 2, column 'x0': 'oops' is not a number"),
        ({"x0": [1.0, None]}, r"row 2, column 'x0': value is missing"),
    ],
)
def test_bad_cells_are_named_by_row_and_column(fitted, bad, message):
    data = {f"x{j}": [0.0, 0.0] for j in range(5)}
    data.update(bad)
    with pytest.raises(DataError, match=message):
        fitted.decision_function(data)


def test_bad_arrays_and_missing_columns(fitted):
    with pytest.raises(DataError, match="missing feature column"):
        fitted.decision_function({"x0": [1.0]})
    with pytest.raises(DataError, match="expected 5 feature"):
        fitted.decision_function(np.zeros((2, 4)))
    arr = np.zeros((3, 5))
    arr[2, 4] = np.nan
    with pytest.raises(DataError, match=r"row 3, column 'x4'"):
        fitted.decision_function(arr)
    with pytest.raises(DataError, match="no rows"):
        fitted.decision_function(np.zeros((0, 5)))


def test_fit_rejects_too_little_or_bad_data():
    with pytest.raises(DataError, match="at least"):
        VAEDetector(**FAST).fit(np.zeros((5, 3)))
    bad = np.zeros((100, 2))
    bad[40, 1] = np.inf
    with pytest.raises(DataError, match=r"row 41, column 'x1'"):
        VAEDetector(**FAST).fit(bad)
    with pytest.raises(ValueError, match="threshold_method"):
        VAEDetector(threshold_method="magic").fit(np.zeros((100, 2)))


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("beta", float("nan"), "beta must be a finite number"),
        ("learning_rate", float("inf"), "learning_rate must be a finite number"),
        ("min_log_var", float("-inf"), "min_log_var must be a finite number"),
        ("dropout", "0.1", "dropout must be a finite number"),
        ("beta", -1.0, "beta must be ≥ 0"),
        ("learning_rate", 0.0, "learning_rate > 0"),
        ("max_log_var", -4.0, "min_log_var must be below max_log_var"),
    ],
)
def test_fit_refuses_a_parameter_that_would_train_on_nonsense(param, value, message):
    """Checked before any training: a NaN beta or learning rate would train to NaN weights."""
    with pytest.raises(ValueError, match=message):
        VAEDetector(**{**FAST, param: value}).fit(np.zeros((100, 2)))


def test_unfitted_detector_says_so():
    with pytest.raises(NotFittedError):
        VAEDetector().decision_function(np.zeros((1, 2)))


def test_get_and_set_params_follow_scikit_learn():
    det = VAEDetector(latent_dim=3)
    assert det.get_params()["latent_dim"] == 3
    det.set_params(latent_dim=5, hidden=[16])
    assert det.latent_dim == 5 and det.hidden == (16,)
    with pytest.raises(ValueError):
        det.set_params(bogus=1)


def test_threshold_override(fitted, tmp_path):
    from vaeguard import VAEDetector as D

    det = D.load(_saved(fitted, tmp_path))
    det.set_threshold(123.0)
    assert det.threshold_rule_.method == "manual"
    det.save(tmp_path / "b2")
    assert D.load(tmp_path / "b2").threshold == 123.0


def _saved(det, tmp_path):
    det.save(tmp_path / "b1")
    return tmp_path / "b1"
