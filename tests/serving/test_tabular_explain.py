"""Score records explain anomalous rows by counterfactuals; every expected value is plausible."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_normal_data
from vaeguard.records.serving import Inbound
from vaeguard.scored import Source
from vaeguard.serving.explain import top_contributions
from vaeguard.serving.tabular import TabularServing

BANDS = (("warning", 0.0), ("major", 5.0), ("critical", 15.0))


@pytest.fixture(scope="module")
def serving(small_bundle):
    from vaeguard import VAEDetector

    s = TabularServing(VAEDetector.load(small_bundle), "v1")
    s.warm_up()
    return s


def score(serving, rows, top_k=3):
    items = [
        Inbound(dict(zip("abcd", map(float, row), strict=True)), Source("t", 0, i))
        for i, row in enumerate(rows)
    ]
    features = serving.featurize(items)
    assert not features.rejected
    return serving.score(features, items, top_k=top_k, bands=BANDS)


def test_anomalous_records_blame_the_shifted_feature_with_plausible_values(serving):
    det = serving.detector
    rows = make_normal_data(30, seed=7)
    rows[:10, 2] += 8.0  # planted: c
    out = score(serving, rows)
    r = det.plausible_range
    assert all(o.is_anomaly for o in out[:10])
    for o in out[:10]:
        top = o.contributions
        assert top[0]["feature"] == "c"
        assert [set(c) for c in top] == [
            {"feature", "observed", "expected", "contribution", "share", "score_drop"}
        ] * 3
        assert top[0]["score_drop"] > 0 and top[0]["share"] > 0.5
        assert sum(c["share"] for c in top) == pytest.approx(1.0)
        assert r.low[2] <= top[0]["expected"] <= r.high[2]
        assert abs(top[0]["expected"] - top[0]["observed"]) > 4.0
    for o in out[10:]:
        if not o.is_anomaly:
            assert all("score_drop" not in c for c in o.contributions)


def test_without_counterfactuals_every_row_takes_the_cheap_path(serving):
    rows = make_normal_data(8, seed=9)
    rows[:4, 0] -= 9.0
    serving.counterfactuals = False
    try:
        out = score(serving, rows)
    finally:
        serving.counterfactuals = True
    result = serving.detector.score_matrix(rows)
    for i, o in enumerate(out):
        assert o.contributions == result.top_contributions(i, 3)
        assert all("score_drop" not in c for c in o.contributions)


NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-(10**18), 10**18),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(NUMBER, min_size=4, max_size=4), min_size=1, max_size=12))
def test_every_expected_value_in_a_score_record_is_plausible(serving, rows):
    r = serving.detector.plausible_range
    out = score(serving, rows, top_k=4)
    assert len(out) == len(rows)
    for o in out:
        for c in o.contributions:
            j = "abcd".index(c["feature"])
            assert r.low[j] <= c["expected"] <= r.high[j]
            assert np.isfinite(c["expected"]) and np.isfinite(c["share"])


def test_blame_order_wins_over_the_size_of_later_drops():
    """The greedy order is the blame order, even when a later correction drops more."""
    contributions = np.array([[5.0, 1.0, 0.5]])
    drop = np.array([[2.0, np.nan, 3.0]])
    blame = np.array([[0, 2]])
    [row] = top_contributions(
        contributions,
        np.zeros((1, 3)),
        np.ones((1, 3)),
        ["p", "q", "r"],
        3,
        score_drop=drop,
        blame=blame,
    )
    assert [c["feature"] for c in row] == ["p", "r"]
    assert [c["score_drop"] for c in row] == [2.0, 3.0]
    assert [c["share"] for c in row] == pytest.approx([0.4, 0.6])
    assert [c["contribution"] for c in row] == [5.0, 0.5]


def test_rows_without_blame_keep_the_excess_ranking():
    contributions = np.array([[0.1, 4.0, 1.0], [3.0, 0.0, 1.0]])
    drop = np.array([[np.nan] * 3, [1.0, np.nan, np.nan]])
    blame = np.array([[-1], [0]])
    rows = top_contributions(
        contributions, np.zeros((2, 3)), np.zeros((2, 3)), ["p", "q", "r"], 2,
        score_drop=drop, blame=blame,
    )  # fmt: skip
    assert [c["feature"] for c in rows[0]] == ["q", "r"]
    assert "score_drop" not in rows[0][0]
    assert [c["feature"] for c in rows[1]] == ["p"] and rows[1][0]["share"] == 1.0


_cells = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def _explained(draw):
    n = draw(st.integers(0, 5))
    d = draw(st.integers(1, 5))
    matrix = lambda: np.array(  # noqa: E731
        draw(st.lists(st.lists(_cells, min_size=d, max_size=d), min_size=n, max_size=n)),
        dtype="float64",
    ).reshape(n, d)
    kwargs = {}
    if draw(st.booleans()):
        kwargs["valid"] = np.array(
            draw(st.lists(st.lists(st.booleans(), min_size=d, max_size=d), min_size=n, max_size=n)),
            dtype=bool,
        ).reshape(n, d)
    if draw(st.booleans()):
        rounds = draw(st.integers(0, d))
        blame = np.full((n, rounds), -1, dtype="int64")
        for i in range(n):
            picked = draw(st.permutations(range(d)))[: draw(st.integers(0, rounds))]
            blame[i, : len(picked)] = picked
        kwargs.update(blame=blame, score_drop=matrix())
    return (
        matrix(),
        matrix(),
        matrix(),
        [f"f{j}" for j in range(d)],
        draw(st.integers(0, 6)),
        kwargs,
    )


@settings(max_examples=150, deadline=None)
@given(_explained())
def test_the_fast_path_of_top_contributions_builds_what_the_general_one_does(case):
    """Without per-feature columns, rows are built in comprehensions and the unusual ones
    (masked cells, counterfactual rows) redone; empty columns force the general loop."""
    contributions, observed, expected, names, k, kwargs = case
    fast = top_contributions(contributions, observed, expected, names, k, **kwargs)
    general = top_contributions(
        contributions, observed, expected, names, k, columns=[{}] * len(names), **kwargs
    )
    assert fast == general
    assert [[list(item) for item in row] for row in fast] == [
        [list(item) for item in row] for row in general
    ]
