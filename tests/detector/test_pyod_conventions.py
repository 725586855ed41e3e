"""VAEDetector under PyOD's and scikit-learn's conventions (issue 28, item 4): the attributes,
shapes and dtypes a PyOD evaluation loop reads, checked side by side with a PyOD detector;
pandas rows wherever a row is taken; the Python API block of the README run with NumPy arrays
and with DataFrames; scikit-learn's repr."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_normal_data

TINY = {"epochs": 8, "hidden": (16,), "latent_dim": 2, "mc_samples": 4, "patience": 5}
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def contaminated():
    """Normal rows with 5 % planted outliers (6 sd shifts), and their labels."""
    rng = np.random.default_rng(3)
    x = make_normal_data(400, seed=3, n_features=4)
    y = np.zeros(len(x), dtype=int)
    out = rng.choice(len(x), 20, replace=False)
    x[out, rng.integers(4, size=20)] += 6 * x.std(axis=0).max()
    y[out] = 1
    return x, y


@pytest.fixture(scope="module")
def pair(contaminated):
    """(vaeguard, PyOD KNN), both fitted with contamination 0.05 on the same rows."""
    from pyod.models.knn import KNN

    from vaeguard import VAEDetector

    x, _ = contaminated
    ours = VAEDetector(contamination=0.05, seed=0, **TINY).fit(x)
    theirs = KNN(contamination=0.05).fit(x)
    return ours, theirs


def test_pyod_evaluation_loop_side_by_side(contaminated, pair):
    """What a PyOD benchmark loop reads, on both detectors: same names, shapes and dtypes."""
    from sklearn.metrics import roc_auc_score

    x, y = contaminated
    x_test = x[::3]
    for clf in pair:
        n = len(x)
        assert isinstance(clf.threshold_, float) and math.isfinite(clf.threshold_)
        assert clf.decision_scores_.shape == (n,)
        assert np.issubdtype(clf.decision_scores_.dtype, np.floating)
        assert clf.labels_.shape == (n,) and set(np.unique(clf.labels_)) <= {0, 1}
        assert np.issubdtype(clf.labels_.dtype, np.integer)
        # labels_ are the training scores against threshold_, and respect contamination
        assert np.array_equal(clf.labels_, (clf.decision_scores_ > clf.threshold_).astype(int))
        assert abs(clf.labels_.mean() - 0.05) <= 1.0 / n + 1e-9
        scores = clf.decision_function(x_test)
        assert scores.shape == (len(x_test),) and np.isfinite(scores).all()
        pred = clf.predict(x_test)
        assert pred.shape == (len(x_test),) and set(np.unique(pred)) <= {0, 1}
        assert np.array_equal(pred, (scores > clf.threshold_).astype(int))
        for method in ("linear", "unify"):
            proba = clf.predict_proba(x_test, method=method)
            assert proba.shape == (len(x_test), 2)
            assert ((proba >= 0) & (proba <= 1)).all()
            assert np.allclose(proba.sum(axis=1), 1.0)
        conf = clf.predict_confidence(x_test)
        assert conf.shape == (len(x_test),) and ((conf >= 0) & (conf <= 1)).all()
        labels, conf2 = clf.predict(x_test, return_confidence=True)
        assert np.array_equal(labels, pred) and np.allclose(conf, conf2)
        assert roc_auc_score(y, clf.decision_scores_) > 0.8


def test_pyod_formulas_match_pyod(contaminated, pair):
    """predict_proba and predict_confidence compute what PyOD's BaseDetector computes from
    the same training and test scores (PyOD's own methods, run on our scores)."""
    from pyod.models.base import BaseDetector

    x, _ = contaminated
    ours, _ = pair
    x_test = x[::7]

    class Scores(BaseDetector):
        """PyOD's base class over our scores: its own predict_proba / predict_confidence."""

        def __init__(self, contamination):
            super().__init__(contamination=contamination)

        def fit(self, X, y=None):
            self._set_n_classes(y)
            self.decision_scores_ = ours.decision_scores_
            self._process_decision_scores()
            return self

        def decision_function(self, X):
            return ours.decision_function(X)

    ref = Scores(contamination=0.05).fit(x)
    assert ref.threshold_ == pytest.approx(ours.threshold_)
    assert np.array_equal(ref.labels_, ours.labels_)
    for method in ("linear", "unify"):
        assert np.allclose(
            ours.predict_proba(x_test, method=method),
            ref.predict_proba(x_test, method=method),
            atol=1e-9,
        )
    assert np.allclose(ours.predict_confidence(x_test), ref.predict_confidence(x_test), atol=1e-9)


def test_fit_predict_is_labels(contaminated):
    from vaeguard import VAEDetector

    x, _ = contaminated
    det = VAEDetector(contamination=0.1, seed=0, **TINY)
    labels = det.fit_predict(x)
    assert np.array_equal(labels, det.labels_)
    assert labels.mean() == pytest.approx(0.1, abs=1.0 / len(x))
    det.set_threshold(float(det.decision_scores_.max()))  # labels_ follow the threshold
    assert det.labels_.sum() == 0


def test_default_keeps_the_budget_threshold(fitted, normal_data):
    """Without contamination the threshold is the calibrated budget rule, as before; the
    PyOD attributes describe the training rows at it."""
    assert fitted.threshold_rule_.method == "budget"
    assert fitted.threshold_ == fitted.threshold_rule_.value == fitted.threshold
    assert fitted.decision_scores_.shape == (len(normal_data),)
    assert np.array_equal(fitted.labels_, (fitted.decision_scores_ > fitted.threshold_) * 1)


def test_threshold_is_a_number_and_the_rule_travels(tmp_path, pair, contaminated):
    from vaeguard import VAEDetector
    from vaeguard.thresholds import Threshold

    ours, _ = pair
    x, _ = contaminated
    assert ours.threshold_rule_.method == "contamination"
    ours.save(tmp_path / "m")
    back = VAEDetector.load(tmp_path / "m")
    assert back.contamination == 0.05
    assert not hasattr(back, "labels_")  # no training rows in a bundle
    assert back.threshold_ == ours.threshold_ and back.threshold_rule_ == ours.threshold_rule_
    assert np.array_equal(back.predict(x), ours.predict(x))
    # predict_proba needs only the summary of the training scores, which the bundle keeps
    assert np.allclose(back.predict_proba(x), ours.predict_proba(x))
    with pytest.raises(TypeError, match="threshold_rule_"):
        back.threshold_ = Threshold(1.0, "manual")
    back.threshold_ = 2.5  # a number sets a manual threshold, as set_threshold does
    assert back.threshold_ == 2.5 and back.threshold_rule_.method == "manual"


@pytest.mark.parametrize("bad", [0, 0.6, -0.1, "0.1", True, float("nan")])
def test_contamination_checked_before_training(bad):
    from vaeguard import VAEDetector

    with pytest.raises(ValueError, match="contamination"):
        VAEDetector(contamination=bad, **TINY).fit(make_normal_data(50, seed=0, n_features=3))


def test_predict_proba_method_checked(fitted, normal_data):
    with pytest.raises(ValueError, match="method"):
        fitted.predict_proba(normal_data[:3], method="softmax")


# -- pandas rows ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame_model():
    from vaeguard import VAEDetector

    x = make_normal_data(300, seed=5, n_features=4)
    df = pd.DataFrame(x, columns=["cpu", "mem", "latency_ms", "rps"])
    return VAEDetector(seed=0, **TINY).fit(df), df


def test_rows_of_a_dataframe_wherever_a_row_is_taken(frame_model):
    """A row of a DataFrame (X.iloc[0], a Series) is one named row: the same answers as the
    one-row frame, matched by name even with its labels in another order or extra labels."""
    from vaeguard.errors import DataError

    det, df = frame_model
    row = df.iloc[0]
    shuffled = pd.concat([row[::-1], pd.Series({"host": "web-1"})])
    one = df.iloc[:1]
    for r in (row, shuffled):
        assert np.allclose(det.decision_function(r), det.decision_function(one))
        assert np.array_equal(det.predict(r), det.predict(one))
        assert np.allclose(det.explain(r), det.explain(one))
        assert np.allclose(det.encode(r)[0], det.encode(one)[0])
        assert np.allclose(
            det.counterfactual(r, rows="all").expected, det.counterfactual(one, rows="all").expected
        )
        assert det.predict_proba(r).shape == (1, 2)
        assert np.allclose(
            det.interpolate(r, df.iloc[1], steps=3), det.interpolate(one, df.iloc[1:2], steps=3)
        )
    with pytest.raises(DataError, match="unique"):
        det.decision_function(pd.concat([row, row.iloc[:1]]))
    assert np.allclose(
        det.interpolate(df.iloc[0], df.iloc[1], steps=4),
        det.interpolate(df.to_numpy()[0], df.to_numpy()[1], steps=4),
    )


def _readme_python_api() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("kind", ["numpy", "pandas"])
def test_readme_python_api_runs_with_arrays_and_frames(kind, tmp_path, monkeypatch):
    """The README's Python API block, as written, with X a NumPy array and a DataFrame."""
    import vaeguard
    from vaeguard import VAEDetector

    class Quick(VAEDetector):
        """The README's detector, trained for a few epochs (the block is what is tested)."""

        def __init__(self, **params):
            super().__init__(**{**TINY, **params})

    names = ["cpu", "mem", "latency_ms", "rps"]
    data = [make_normal_data(n, seed=s, n_features=4) for n, s in ((300, 1), (40, 2), (200, 3))]
    if kind == "pandas":
        data = [pd.DataFrame(d, columns=names) for d in data]
    x_normal, x, x_holdout = data
    monkeypatch.setattr(vaeguard, "VAEDetector", Quick)
    monkeypatch.chdir(tmp_path)
    scope = {"X_normal": x_normal, "X": x, "X_holdout": x_holdout}
    exec(compile(_readme_python_api(), "README.md (Python API)", "exec"), scope)
    assert isinstance(scope["det"], VAEDetector)


# -- repr -------------------------------------------------------------------------------------


def test_repr_like_scikit_learn():
    """scikit-learn's BaseEstimator repr: only the parameters that differ from their
    defaults (compared with a BaseEstimator of the same constructor)."""
    from sklearn.base import BaseEstimator, clone

    from vaeguard import VAEDetector

    class Twin(BaseEstimator):
        __init__ = VAEDetector.__init__

    for params in ({}, {"latent_dim": 3}, {"hidden": (32,), "seed": 1, "contamination": 0.1}):
        ours = VAEDetector(**params)
        assert repr(ours) == repr(Twin(**params)).replace("Twin", "VAEDetector")
        assert repr(clone(ours)) == repr(ours)
    assert repr(VAEDetector()) == "VAEDetector()"


_cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.text(max_size=5),
    st.none(),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cells=st.dictionaries(
        st.sampled_from(["cpu", "mem", "latency_ms", "rps", "host", "0", "x"]), _cells, max_size=7
    )
)
def test_any_series_is_scored_or_refused_in_one_line(frame_model, cells):
    """A Series of arbitrary labels and values, wherever a row is taken: a finite score for
    one row, or a `VaeguardError`, never another exception."""
    from vaeguard.errors import VaeguardError

    det, _ = frame_model
    row = pd.Series(cells, dtype=object)
    try:
        s = det.decision_function(row)
    except VaeguardError as exc:
        assert "\n" not in str(exc)
        return
    assert s.shape == (1,) and np.isfinite(s).all()
