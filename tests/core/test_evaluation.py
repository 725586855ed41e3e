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


# -- labelled incidents in a stream ----------------------------------------------------------


def test_an_incident_is_detected_up_to_lag_points_after_its_last():
    from vaeguard.evaluation import judge_incidents

    labels = [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    base = dict(scored=[1] * 12, entities=["a"] * 12, lag=2, aftermath=3)
    late = judge_incidents(labels, alerts=[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], **base)
    assert (late.detected, late.each[0].delay, late.each[0].alert_row) == (1, 3, 6)
    too_late = judge_incidents(labels, alerts=[0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0], **base)
    # past the span [2, 6): missed, but within the aftermath: neither detection nor false alert
    assert (too_late.detected, too_late.false_alerts, too_late.true_alerts) == (0, 0, 0)
    # past the aftermath [6, 9): a false alert among the quiet points 0, 1, 9, 10, 11
    false = judge_incidents(labels, alerts=[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0], **base)
    assert (false.false_alerts, false.quiet_points, false.alert_precision) == (2, 5, 0.0)
    assert false.false_alerts_per_1000 == pytest.approx(400.0)


def test_each_entity_is_its_own_stream():
    """Interleaved rows: an incident's span counts its entity's points, not the file's rows."""
    from vaeguard.evaluation import judge_incidents

    entities = ["a", "b"] * 6
    labels = [1, 0] + [0, 0] * 5  # a's first point
    alerts = [0] * 12
    alerts[5] = 1  # b's third point: a false alert of b's, not a's detection
    r = judge_incidents(labels, alerts, [1] * 12, entities, lag=2, aftermath=0, named=["x"] * 12)
    assert (r.incidents, r.detected, r.false_alerts, r.quiet_points) == (1, 0, 1, 9)
    alerts[5], alerts[6] = 0, 1  # a's fourth point, 3 after its last: past the span
    assert judge_incidents(labels, alerts, [1] * 12, entities, lag=2, aftermath=0).detected == 0
    alerts[6], alerts[2] = 0, 1  # a's second point
    r = judge_incidents(labels, alerts, [1] * 12, entities, lag=2, aftermath=0, named=["x"] * 12)
    assert (r.detected, r.each[0].delay, r.each[0].named) == (1, 1, "x")


def _reference(labels, alerts, scored, entities, lag, aftermath):
    """The counting rule written point by point, as its docstring says it."""
    incidents, spans, near = [], set(), set()
    for e in dict.fromkeys(entities):
        rows = [i for i, x in enumerate(entities) if x == e]
        k = 0
        while k < len(rows):
            if not labels[rows[k]]:
                k += 1
                continue
            end = k
            while end + 1 < len(rows) and labels[rows[end + 1]]:
                end += 1
            span = rows[k : end + 1 + lag]
            spans.update(span)
            near.update(rows[k : end + 1 + lag + aftermath])
            hit = next((j for j, r in enumerate(span) if alerts[r]), None)
            incidents.append((rows[k], hit))
            k = end + 1
    quiet = [i for i in range(len(labels)) if scored[i] and i not in near]
    return (
        len(incidents),
        sum(h is not None for _, h in incidents),
        sorted((first + 1, h) for first, h in incidents),
        sum(alerts[i] for i in spans),
        sum(alerts[i] for i in quiet),
        len(quiet),
    )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.booleans(), st.booleans(), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 5),
    st.integers(0, 6),
)
def test_incidents_agree_with_the_rule_point_by_point(rows, lag, aftermath):
    from vaeguard.evaluation import judge_incidents

    entities = [r[0] for r in rows]
    labels = [r[1] for r in rows]
    scored = [r[3] for r in rows]
    alerts = [r[2] and r[3] for r in rows]  # only a scored point can alert
    r = judge_incidents(labels, alerts, scored, entities, lag=lag, aftermath=aftermath)
    n, detected, each, true_alerts, false_alerts, quiet = _reference(
        labels, alerts, scored, entities, lag, aftermath
    )
    assert (r.incidents, r.detected, r.true_alerts, r.false_alerts) == (
        n,
        detected,
        true_alerts,
        false_alerts,
    )
    assert r.quiet_points == quiet
    assert [(i.first_row, i.delay) for i in r.each] == each
    assert r.true_alerts + r.false_alerts <= r.alerts == sum(alerts)
    assert sum(f for _, f, _ in r.noisiest) == r.false_alerts
    for entity, n_false, n_quiet in r.noisiest:
        rows_of = [i for i, e in enumerate(entities) if e == entity]
        assert 0 < n_false <= n_quiet <= sum(scored[i] for i in rows_of)


def test_incident_inputs_of_different_lengths_are_refused():
    from vaeguard.evaluation import judge_incidents

    with pytest.raises(DataError, match="3 labels"):
        judge_incidents([0, 1, 0], [0, 1], [1, 1], ["a", "a"], lag=1, aftermath=0)
