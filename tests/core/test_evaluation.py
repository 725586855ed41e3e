"""Our NumPy metrics agree with scikit-learn's, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeguard.errors import DataError
from vaeguard.evaluation import average_precision, best_f1, evaluate, roc_auc

metrics = pytest.importorskip("sklearn.metrics")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=80))
def test_against_scikit_learn(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], dtype=float)
    if y.all() or not y.any():
        return
    assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))
    assert average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s))
    p, r, _ = metrics.precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.nan_to_num(2 * p * r / (p + r))
    assert best_f1(y, s)[0] == pytest.approx(f.max())


def test_threshold_metrics():
    y = [0, 0, 1, 1]
    s = [0.1, 0.6, 0.7, 0.2]
    e = evaluate(y, s, threshold=0.5)
    assert e.precision == pytest.approx(0.5) and e.recall == pytest.approx(0.5)
    assert e.false_alarm_rate == pytest.approx(0.5)  # 0.6 of the normal 0.1 and 0.6
    assert e.roc_auc == pytest.approx(0.75)  # 3 of the 4 (anomaly, normal) pairs ordered right
    assert e.stream is None
    e = evaluate(y, s, threshold=0.5, stream_flags=[0, 0, 1, 1])
    assert (e.stream.precision, e.stream.recall, e.stream.f1) == (1.0, 1.0, 1.0)
    assert e.stream.false_alarm_rate == 0.0 and e.precision == pytest.approx(0.5)
    assert e.to_dict()["stream"]["recall"] == 1.0
    with pytest.raises(DataError, match="stream flags"):
        evaluate(y, s, threshold=0.5, stream_flags=[0, 1])


def test_single_class_labels_are_refused():
    with pytest.raises(DataError, match="both normal and anomalous"):
        roc_auc([0, 0], [1.0, 2.0])
