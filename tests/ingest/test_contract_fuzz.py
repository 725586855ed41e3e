"""Property-based tests of every parser on the record's path: for all inputs, a valid result
or a documented rejection, never another exception."""

from __future__ import annotations

import json
import math
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vaeguard.ingest import (
    MAX_DEPTH,
    TIMESTAMP_RANGE,
    Reason,
    Rejection,
    decode,
    to_number,
    to_timestamp,
)
from vaeguard.preprocessing import ConditionColumn, ConditionEncoder
from vaeguard.scored import Source
from vaeguard.serving import Inbound, TabularServing
from vaeguard.timeseries.featurizer import WindowFeaturizer

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Numbers as producers really send them, wild ones included.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63, 2**64 + 1]),
)
number_texts = st.one_of(
    numbers.map(repr),
    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 5000, "1e-400"]),
    st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{0,10})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30), number_texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
timestamps = st.one_of(
    numbers,
    number_texts,
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(["nan", "inf", "-inf", "", " ", "2026-13-40T99:99:99", "9999-12-31T23:59:59"]),
    json_values,
)


def raw_json(draw_numbers: str) -> str:
    return draw_numbers


@st.composite
def json_texts(draw) -> bytes:
    """JSON-looking text with arbitrary number literals spliced in (json.dumps can't make
    1e400 or NaN, producers can)."""
    keys = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "key", "ts", "host"]), max_size=6))
    parts = []
    for k in keys:
        v = draw(st.one_of(number_texts, json_values.map(lambda v: json.dumps(v))))
        parts.append(f'"{k}": {v}')
    text = "{" + ", ".join(parts) + "}"
    if draw(st.booleans()):
        depth = draw(st.integers(min_value=0, max_value=3 * MAX_DEPTH))
        text = "[" * depth + text + "]" * depth
    return text.encode()


def _check_rejection(r: Rejection) -> None:
    assert isinstance(r.reason, Reason)
    assert r.detail and isinstance(r.detail, str) and len(r.detail) <= 600


@FUZZ
@given(st.one_of(st.binary(max_size=300), json_texts(), st.none()))
def test_decode_returns_an_object_or_a_rejection(value):
    out = decode(value, max_bytes=200)
    if isinstance(out, Rejection):
        _check_rejection(out)
        return
    assert type(out) is dict
    # everything that got through is finite and re-encodes as strict JSON
    json.dumps(out, allow_nan=False)


@FUZZ
@given(json_values)
def test_decode_of_json_values(value):
    text = json.dumps(value).encode()
    out = decode(text, max_bytes=10**6)
    if isinstance(value, dict) and not isinstance(out, Rejection):
        assert out.keys() == value.keys()
    elif not isinstance(value, dict):
        assert isinstance(out, Rejection)


@FUZZ
@given(st.one_of(json_values, numbers, number_texts))
def test_to_number_is_finite_missing_or_refused(value):
    out = to_number(value, "feature 'a'")
    if isinstance(out, Rejection):
        _check_rejection(out)
        assert out.reason in (Reason.NON_NUMERIC, Reason.NON_FINITE)
    elif out is not None:
        assert type(out) is float and math.isfinite(out)


@FUZZ
@given(timestamps)
def test_to_timestamp_is_in_range_or_refused(value):
    out = to_timestamp(value)
    if isinstance(out, Rejection):
        _check_rejection(out)
        assert out.reason == Reason.INVALID_TIMESTAMP
    else:
        assert TIMESTAMP_RANGE[0] <= out <= TIMESTAMP_RANGE[1]


def _tabular(conditions: bool) -> TabularServing:
    enc = ConditionEncoder(
        [
            ConditionColumn("host", "categorical", categories=["a", "b"]),
            ConditionColumn("hour", "numeric", center=12.0, scale=6.0),
        ]
        if conditions
        else []
    )
    return TabularServing(SimpleNamespace(feature_names_=["a", "b"], conditions_=enc))


records = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "a": st.one_of(scalars, json_values),
            "b": scalars,
            "host": json_values,
            "hour": scalars,
            "ts": timestamps,
            "key": json_values,
        },
    ),
    max_size=12,
)


@FUZZ
@given(records, st.booleans())
def test_tabular_featurize_partitions_the_batch(batch, conditions):
    serving = _tabular(conditions)
    items = [Inbound(r, Source("t", 0, i)) for i, r in enumerate(batch)]
    f = serving.featurize(items)
    rejected = [r.index for r in f.rejected]
    assert sorted(rejected + f.keep.tolist()) == list(range(len(batch)))
    assert f.x.shape == (len(f.keep), 2) and np.isfinite(f.x).all()
    if conditions:
        assert f.c.shape == (len(f.keep), 3) and np.isfinite(f.c).all()
    for r in f.rejected:
        _check_rejection(r)


@FUZZ
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "key": st.one_of(st.sampled_from(["h1", "h2"]), json_values),
                "ts": st.one_of(timestamps, st.integers(1_700_000_000, 1_700_100_000)),
                "cpu": st.one_of(scalars, st.floats(-1e6, 1e6)),
                "lat": scalars,
            },
        ),
        max_size=30,
    ),
    st.sampled_from(["auto", 60, "rows"]),
    st.booleans(),
    st.sampled_from([0.0, 0.5]),
)
# found by this test: a grid inferred from a 1e-71 s gap puts the next point at slot ~5e70,
# beyond int64, and the snapshot's ring-buffer indices stopped being integers
@example(
    [{"key": "h2", "ts": 0, "lat": False}, {"key": "h2", "ts": 1.9e-71}, {"key": "h2", "ts": 1}],
    "auto",
    False,
    0.5,
)
def test_window_featurize_never_raises(batch, interval, seasonal, min_observed):
    period = {"period": 300.0, "periods": 2, "tolerance": 60.0} if seasonal else None
    f = WindowFeaturizer(
        window=4,
        metrics=("cpu", "lat"),
        interval=interval,
        infer_points=2,
        seasonal=period,
        min_observed=min_observed,  # 0: every point after the warm-up, however sparse
    )
    out = f.update_and_featurize(batch)
    assert len(out.keep) + len(out.rejected) <= len(batch)
    assert np.isfinite(out.x).all() and out.x.shape[1] == (12 if seasonal else 8)
    for r in out.rejected:
        _check_rejection(r)
    # and the state it built is still a valid snapshot, which restores to the same state
    snap = f.snapshot()
    text = json.dumps(snap, allow_nan=False)
    assert WindowFeaturizer.restore(json.loads(text)).snapshot() == json.loads(text)


Message = namedtuple("Message", "topic partition offset key value headers timestamp")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.binary(max_size=80), json_texts(), records.map(lambda r: json.dumps(r[0] if r else {}).encode())), min_size=1, max_size=10))  # fmt: skip
def test_the_batch_step_never_raises(small_bundle, values):
    """Arbitrary message values through a real model: every offset is scored or dead-lettered."""
    from vaeguard.records.batch import StepSettings, process
    from vaeguard.serving import load_serving
    from vaeguard.severity import DEFAULT_BANDS

    serving = _SERVINGS.get(small_bundle) or _SERVINGS.setdefault(
        small_bundle, load_serving(small_bundle, "v1")
    )
    messages = [Message("t", 0, i, None, v, [], 0) for i, v in enumerate(values)]
    out = process(serving, messages, StepSettings("o", "d", 200, 3, DEFAULT_BANDS, "g", "i"))
    accounted = sorted([r.source.offset for r in out.scored] + [d.message.offset for d in out.dead])
    assert accounted == list(range(len(values)))
    for _, _, value, _ in out.outputs:
        assert isinstance(value, bytes)


_SERVINGS: dict = {}


def test_timestamp_units_and_formats():
    assert to_timestamp(1_790_000_000) == 1_790_000_000.0
    assert to_timestamp(1_790_000_000_250) == 1_790_000_000.25
    assert to_timestamp(1_790_000_000_000_000) == 1_790_000_000.0
    assert to_timestamp(1_790_000_000_000_000_000) == 1_790_000_000.0
    assert to_timestamp("1790000000.5") == 1_790_000_000.5
    assert to_timestamp("2026-12-01T00:00:00Z") == to_timestamp("2026-12-01 01:00:00+01:00")
    for bad in ("nan", "inf", 1e300, "9999-12-31T00:00:00", "0001-01-01", True, [1], "", "soon"):
        assert isinstance(to_timestamp(bad), Rejection), bad


@FUZZ
@given(
    st.one_of(
        json_texts(), json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=60)
    )
)
def test_the_orjson_fast_path_agrees_with_the_reference_decoder(value):
    """decode() parses with orjson first; the standard library's parser is the reference."""
    import vaeguard.ingest as ingest

    fast = decode(value, max_bytes=10**6)
    saved, ingest.orjson = ingest.orjson, None
    try:
        reference = decode(value, max_bytes=10**6)
    finally:
        ingest.orjson = saved
    if isinstance(reference, Rejection):
        assert isinstance(fast, Rejection) and fast.reason == reference.reason
    else:
        assert fast == reference
