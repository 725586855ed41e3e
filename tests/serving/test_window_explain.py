"""Window explanations by metric and moment: slot terms rolled up to metrics (issue 27 item 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaeguard.errors import DataError
from vaeguard.serving.window_explain import metric_contributions

W = 8
CHANNELS = ("cpu", "mem", "lat", "cpu_seasonal")
METRIC_OF = {"cpu_seasonal": "cpu"}


def arrays(n: int = 1, seed: int = 0):
    """Small noise excess (some negative) and distinct observed / expected values per cell."""
    rng = np.random.default_rng(seed)
    excess = 0.05 * rng.standard_normal((n, len(CHANNELS) * W))
    observed = np.arange(n * len(CHANNELS) * W, dtype=float).reshape(n, -1) + 100.0
    return excess, observed, observed - 50.0


def col(channel: str, offset: int) -> int:
    """The column of ``channel`` at slot ``offset`` (0 = newest)."""
    return CHANNELS.index(channel) * W + (W - 1) + offset


def explain(excess, observed, expected, valid=None, top_k=3, **kwargs):
    return metric_contributions(
        excess, observed, expected, valid, CHANNELS, METRIC_OF, W, top_k, **kwargs
    )


def test_a_planted_excess_names_the_metric_its_slots_and_its_worst_slot():
    excess, observed, expected = arrays()
    for offset, nats in ((-4, 6.0), (-3, 9.0), (-2, 7.0)):
        excess[0, col("mem", offset)] = nats
    top = explain(excess, observed, expected)[0]
    first = top[0]
    assert first["feature"] == first["metric"] == "mem"
    assert first["slots"] == [-4, -2]
    assert first["slot"] == -3
    assert first["observed"] == observed[0, col("mem", -3)]
    assert first["expected"] == expected[0, col("mem", -3)]
    assert "channel" not in first
    positive = np.clip(excess[0], 0, None)
    mem = positive[CHANNELS.index("mem") * W : (CHANNELS.index("mem") + 1) * W].sum()
    assert first["contribution"] == pytest.approx(mem)
    assert first["share"] == pytest.approx(mem / positive.sum())
    assert len(top) == 3 and {c["metric"] for c in top} <= {"cpu", "mem", "lat"}
    assert all(c["contribution"] <= first["contribution"] for c in top[1:])


def test_only_the_scored_slots_count():
    excess, observed, expected = arrays()
    excess[0, col("lat", -6)] = 50.0  # before the scored slots
    excess[0, col("cpu", -1)] = 3.0
    top = explain(excess, observed, expected, score_slots=4)[0]
    assert top[0]["metric"] == "cpu" and top[0]["slot"] == -1
    lat = next(c for c in top if c["metric"] == "lat")
    assert lat["contribution"] < 1.0 and lat["slot"] >= -3
    assert explain(excess, observed, expected)[0][0]["metric"] == "lat"  # all slots count


def test_the_seasonal_channel_rolls_into_its_source_metric_and_says_so():
    excess, observed, expected = arrays()
    excess[0, col("cpu_seasonal", 0)] = 12.0
    excess[0, col("cpu", 0)] = 1.0
    excess[0, col("mem", -1)] = 8.0
    first = explain(excess, observed, expected)[0][0]
    assert first["metric"] == "cpu" and first["channel"] == "cpu_seasonal"
    assert first["contribution"] > 13.0 - 0.5  # both channels summed
    assert first["observed"] == observed[0, col("cpu_seasonal", 0)]
    assert first["expected"] == expected[0, col("cpu_seasonal", 0)]
    # where the value channel carries the excess, it speaks for the metric
    excess[0, col("cpu", 0)], excess[0, col("cpu_seasonal", 0)] = 12.0, 1.0
    first = explain(excess, observed, expected)[0][0]
    assert first["metric"] == "cpu" and "channel" not in first
    assert first["observed"] == observed[0, col("cpu", 0)]


def test_the_lead_is_listed_first_whatever_its_excess():
    excess, observed, expected = arrays(3)
    excess[:, col("mem", 0)] = 10.0
    out = explain(excess, observed, expected, lead=["lat", None, 0])
    assert [row[0]["metric"] for row in out] == ["lat", "mem", "cpu"]
    assert out[0][1]["metric"] == "mem"  # then by excess
    assert len({c["metric"] for c in out[0]}) == 3  # the lead is not listed twice
    # a channel's name leads with its metric; an unknown name or index leads nothing
    out = explain(excess[:2], observed[:2], expected[:2], lead=np.array(["cpu_seasonal", "x"]))
    assert [row[0]["metric"] for row in out] == ["cpu", "mem"]
    assert explain(excess[:1], observed[:1], expected[:1], lead=[7])[0][0]["metric"] == "mem"
    assert explain(excess[:1], observed[:1], expected[:1], lead=[-1])[0][0]["metric"] == "mem"


def test_masked_slots_carry_no_excess():
    excess, observed, expected = arrays()
    excess[0, col("lat", 0)] = 100.0  # not observed
    excess[0, col("mem", -5)] = 2.0
    valid = np.ones_like(excess, dtype=bool)
    valid[0, col("lat", 0)] = False
    top = explain(excess, observed, expected, valid)[0]
    assert top[0]["metric"] == "mem"
    lat = next(c for c in top if c["metric"] == "lat")
    assert lat["contribution"] < 1.0 and lat["slot"] != 0
    # a metric never observed in the window is not listed
    valid[0, CHANNELS.index("lat") * W : (CHANNELS.index("lat") + 1) * W] = False
    assert [c["metric"] for c in explain(excess, observed, expected, valid)[0]] == ["mem", "cpu"]


def test_a_row_without_positive_excess_is_finite_and_sensible():
    excess = -np.ones((1, len(CHANNELS) * W))
    excess[0, col("mem", -2)] = -0.1  # the least negative: the worst slot of mem
    observed = np.full_like(excess, np.nan)
    expected = np.full_like(excess, np.inf)
    top = explain(excess, observed, expected, top_k=5)[0]
    assert len(top) == 3  # three metrics
    json.dumps(top, allow_nan=False)
    for c in top:
        assert c["contribution"] == 0.0 and c["share"] == 0.0
        assert c["slots"] == [c["slot"], c["slot"]]
    mem = next(c for c in top if c["metric"] == "mem")
    assert mem["slot"] == -2 and mem["observed"] == 0.0 and mem["expected"] > 1e300


def test_rows_restricts_the_explained_rows():
    excess, observed, expected = arrays(4)
    out = explain(excess, observed, expected, rows=np.array([2, 0]), lead=["lat"] * 4)
    assert [bool(r) for r in out] == [True, False, True, False]
    assert out[0][0]["metric"] == out[2][0]["metric"] == "lat"
    assert explain(excess, observed, expected, rows=np.array([], dtype=int)) == [[]] * 4


def test_malformed_arguments_are_refused_with_the_field():
    excess, observed, expected = arrays(2)
    with pytest.raises(DataError, match="observed"):
        explain(excess, observed[:, :-1], expected)
    with pytest.raises(DataError, match="score_slots"):
        explain(excess, observed, expected, score_slots=W + 1)
    with pytest.raises(DataError, match="lead"):
        explain(excess, observed, expected, lead=[None])


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def batches(draw):
    n_metrics = draw(st.integers(1, 4))
    metrics = [f"m{i}" for i in range(n_metrics)]
    seasonal = draw(st.booleans())
    channels = metrics + (["m0_seasonal"] if seasonal else [])
    w = draw(st.integers(1, 12))
    n = draw(st.integers(0, 5))
    shape = (n, len(channels) * w)
    excess = draw(hnp.arrays("float64", shape, elements=floats))
    observed = draw(hnp.arrays("float64", shape, elements=floats))
    expected = draw(hnp.arrays("float64", shape, elements=floats))
    valid = draw(st.none() | hnp.arrays(bool, shape))
    lead = draw(
        st.none()
        | st.lists(
            st.none() | st.integers(-2, 5) | st.sampled_from(channels), min_size=n, max_size=n
        )
    )
    score_slots = draw(st.none() | st.integers(1, w))
    top_k = draw(st.integers(0, 6))
    rows = draw(st.none() | st.lists(st.integers(0, max(n - 1, 0)), unique=True, max_size=n))
    rows = None if rows is None or n == 0 else np.asarray(rows, dtype=int)
    return {
        "args": (excess, observed, expected, valid, channels, {"m0_seasonal": "m0"}, w, top_k),
        "kwargs": {"score_slots": score_slots, "lead": lead, "rows": rows},
        "n": n,
        "w": w,
        "metrics": metrics,
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_any_input_gives_finite_bounded_explanations(batch):
    out = metric_contributions(*batch["args"], **batch["kwargs"])
    top_k, w = batch["args"][-1], batch["w"]
    assert len(out) == batch["n"]
    json.dumps(out, allow_nan=False)  # finite JSON numbers only
    for row in out:
        assert len(row) <= max(top_k, 0)
        assert len({c["metric"] for c in row}) == len(row)
        assert sum(c["share"] for c in row) <= 1.0 + 1e-9
        for c in row:
            assert c["feature"] == c["metric"] and c["metric"] in batch["metrics"]
            assert 0.0 <= c["share"] <= 1.0 and c["contribution"] >= 0.0
            first, last = c["slots"]
            assert -(w - 1) <= first <= last <= 0 and -(w - 1) <= c["slot"] <= 0
            assert c.get("channel", "m0_seasonal") == "m0_seasonal"
