"""The false-alarm corpus (benchmarks/false_alarms.py): its streams are what they claim to be.

Every generator is deterministic, finite, of the promised length and anomaly-free by
construction (values within bounds generous for the kind), and the alert count reads only the
scored points after the probationary period.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.false_alarms import (
    KINDS,
    SHORT_POINTS,
    Count,
    count_alerts,
    poisson_sf,
    stream_length,
    tabular_rows,
)

N = 4000


#: kind → check of a stream's values that no anomaly (by the kind's own construction) fails.
BOUNDS = {
    "counts-bursty": lambda v: v.min() >= 0 and v.max() < 400 and np.all(v == np.round(v)),
    "counts-zero-inflated": lambda v: (
        v.min() >= 0 and v.max() < 30 and np.all(v == np.round(v)) and np.mean(v == 0) > 0.5
    ),
    "pct-daily": lambda v: v.min() >= 0 and v.max() <= 100,
    "business-hourly-weekly": lambda v: v.min() >= 0 and v.max() < 60 and np.all(v == np.round(v)),
    "quantized": lambda v: np.all(v == np.round(v)) and np.all(np.abs(v - 50) <= 20),
    "flatline-blips": lambda v: set(np.unique(v)) <= {0.0, 1.0} and v.mean() < 0.01,
    "irregular": lambda v: np.all(np.abs(v - 20) < 15),
    "trend": lambda v: np.all(np.abs(v - 100 - 0.002 * np.arange(len(v))) < 20),
    "heavy-tailed": lambda v: np.all(np.abs(v - 50) < 1000),
    "gaussian-daily": lambda v: np.all(np.abs(v - 50) < 10 + 20),
    "short": lambda v: np.all(np.abs(v - 50) < 10 + 20),
    "short-minutely": lambda v: np.all(np.abs(v - 50) < 10 + 20),
}


def test_every_kind_has_bounds():
    assert set(BOUNDS) == set(KINDS)
    assert len(KINDS) >= 11


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_generator_is_deterministic_finite_and_bounded(kind):
    t, v = KINDS[kind](N, 0)
    t2, v2 = KINDS[kind](N, 0)
    _, v_other = KINDS[kind](N, 1)
    assert np.array_equal(t, t2) and np.array_equal(v, v2)
    assert not np.array_equal(v, v_other)
    assert len(t) == len(v) == stream_length(kind, N)
    assert np.all(np.isfinite(t)) and np.all(np.isfinite(v))
    assert np.all(np.diff(t) > 0)
    assert BOUNDS[kind](v)


def test_short_is_short():
    assert stream_length("short", N) == SHORT_POINTS
    assert len(KINDS["short"](N, 0)[1]) == SHORT_POINTS
    assert len(KINDS["short"](500, 0)[1]) == 500
    assert stream_length("short-minutely", N) == SHORT_POINTS


def test_kinds_are_distinct_streams():
    # Each kind draws from its own seed stream: two kinds built alike do not share noise.
    _, a = KINDS["gaussian-daily"](SHORT_POINTS, 0)
    _, b = KINDS["short"](SHORT_POINTS, 0)
    assert not np.array_equal(a, b)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    n=st.integers(min_value=1, max_value=600),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_any_length_and_seed_gives_a_valid_stream(kind, n, seed):
    t, v = KINDS[kind](n, seed)
    assert len(t) == len(v) == stream_length(kind, n)
    assert np.all(np.isfinite(t)) and np.all(np.isfinite(v))
    assert np.all(np.diff(t) > 0)


@pytest.mark.parametrize("n, seed", [(0, 0), (-3, 0), (10, -1)])
def test_bad_length_or_seed_is_refused(n, seed):
    with pytest.raises(ValueError, match="must be"):
        KINDS["quantized"](n, seed)


def test_tabular_rows_are_independent_draws_of_the_kind():
    rows = tabular_rows("quantized", 0, 500)
    assert rows.shape == (500, 4)
    assert BOUNDS["quantized"](rows.ravel())
    assert len({tuple(rows[:, c]) for c in range(4)}) == 4
    assert np.array_equal(rows, tabular_rows("quantized", 0, 500))


def test_alerts_are_counted_on_scored_points_after_probation():
    raw = np.array([[np.nan, 1.0, 1.0, 1.0, np.nan, 1.0]])
    output = np.array([0.0, 1.0, 0.5, 1.0, 1.0, 1.0])
    # Rows 0-1 are probationary; row 4 has no score (its output does not count).
    assert count_alerts(output, raw, 2, 1.0) == Count(points=3, alerts=2)
    assert count_alerts(output, raw, 0, 1.0) == Count(points=4, alerts=3)
    assert Count(3, 2) + Count(1, 0) == Count(4, 2)
    assert Count(4000, 2).per_1000 == 0.5


def test_poisson_tail():
    assert poisson_sf(0, 2.0) == 1.0
    assert poisson_sf(1, 2.0) == pytest.approx(1 - np.exp(-2.0))
    assert poisson_sf(3, 2.0) == pytest.approx(1 - np.exp(-2.0) * (1 + 2 + 2))


def test_tabular_channels_of_irregular_sampling_share_the_times():
    # Drawn at their own random times, the channels' cycles would drift apart row by row.
    rows = tabular_rows("irregular", 0, 4000)
    late = np.corrcoef(rows[-1000:].T)
    assert late[np.triu_indices(4, 1)].min() > 0.8
