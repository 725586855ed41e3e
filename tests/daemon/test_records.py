"""Decoding, featurizing and score-record building, without a broker."""

from __future__ import annotations

import json
from collections import namedtuple

import numpy as np
import pytest

from vaeguard.daemon.featurize import TabularFeaturizer
from vaeguard.daemon.records import (
    Reason,
    build_scored,
    decode_messages,
    dlq_headers,
    encode_scored,
    entity_of,
    output_key,
    timestamp_of,
)
from vaeguard.preprocessing import ConditionColumn, ConditionEncoder
from vaeguard.severity import DEFAULT_BANDS, severity

Message = namedtuple("Message", "topic partition offset key value headers timestamp")


def msg(value: bytes | None, key: bytes | None = None, offset: int = 0) -> Message:
    return Message("t", 0, offset, key, value, [], 1700000000000)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.EMPTY),
        (b"\xc3\x28", Reason.INVALID_UTF8),
        (b'{"a":', Reason.INVALID_JSON),
        (b"[" * 100_000, Reason.INVALID_JSON),
        (b"42", Reason.NOT_AN_OBJECT),
        (b"null", Reason.NOT_AN_OBJECT),
        (b'{"a": NaN}', Reason.NON_FINITE),
        (b'{"x": {"y": Infinity}}', Reason.NON_FINITE),
        (b'{"a": 1}' + b" " * 300, Reason.OVERSIZE),
    ],
)
def test_decode_rejects_with_reason(value, reason):
    kept, objects, dead = decode_messages(
        [msg(value)], max_bytes=256 if reason == Reason.OVERSIZE else 10**6
    )
    assert not kept and not objects
    assert [d.reason for d in dead] == [reason]
    assert dead[0].detail


def test_decode_keeps_objects_in_order():
    messages = [msg(json.dumps({"a": i}).encode(), offset=i) for i in range(5)]
    messages.insert(2, msg(b"oops", offset=99))
    kept, objects, dead = decode_messages(messages, max_bytes=1024)
    assert [m.offset for m in kept] == [0, 1, 2, 3, 4]
    assert [o["a"] for o in objects] == [0, 1, 2, 3, 4]
    assert [d.message.offset for d in dead] == [99]


def test_featurizer_fast_and_checked_paths_agree():
    f = TabularFeaturizer(["a", "b"])
    good = [{"a": 1, "b": 2.5}, {"a": True, "b": "3"}, {"a": -1e3, "b": 0}]
    batch = f.transform(good)
    assert batch.rejected == [] and batch.keep.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(batch.x, [[1, 2.5], [1, 3], [-1e3, 0]])

    records = [
        {"a": 1, "b": 2},
        {"a": 1},
        {"a": "x", "b": 2},
        {"a": [1], "b": 2},
        {"a": None, "b": 2},
        {"a": float("nan"), "b": 2},
        {"a": "inf", "b": 2},
        {"a": 10**400, "b": 2},
        {"a": 3, "b": 4},
    ]
    batch = f.transform(records)
    assert batch.keep.tolist() == [0, 8]
    np.testing.assert_array_equal(batch.x, [[1, 2], [3, 4]])
    reasons = {r.index: r.reason for r in batch.rejected}
    assert reasons == {
        1: Reason.MISSING_FEATURE,
        2: Reason.NON_NUMERIC,
        3: Reason.NON_NUMERIC,
        4: Reason.MISSING_FEATURE,
        5: Reason.NON_FINITE,
        6: Reason.NON_FINITE,
        7: Reason.NON_FINITE,
    }
    assert "'b'" in next(r.detail for r in batch.rejected if r.index == 1)


def test_featurizer_conditions():
    enc = ConditionEncoder(
        [
            ConditionColumn("region", "categorical", categories=["eu", "us"]),
            ConditionColumn("hour", "numeric", center=12.0, scale=6.0),
        ]
    )
    f = TabularFeaturizer(["a"], enc)
    batch = f.transform(
        [{"a": 1, "region": "us", "hour": 18}, {"a": 2, "hour": 3}, {"a": 3, "region": "eu"}]
    )
    assert batch.keep.tolist() == [0]
    np.testing.assert_allclose(batch.c, [[0, 1, 1.0]])
    assert sorted(r.index for r in batch.rejected) == [1, 2]


def test_build_scored_matches_score_result_and_severity(small_bundle):
    from tests.conftest import make_normal_data
    from vaeguard import VAEDetector

    det = VAEDetector.load(small_bundle)
    x = make_normal_data(n=64, seed=3)
    x[:5] += 8.0  # some clear anomalies
    result = det.score_matrix(x)
    messages = [msg(b"{}", key=b"k%d" % i, offset=i) for i in range(64)]
    objects = [{"host": "web", "n": 1} for _ in range(64)]
    entities = [entity_of(m, o) for m, o in zip(messages, objects, strict=True)]
    scored = build_scored(
        messages, objects, entities, [timestamp_of(m, o) for m, o in zip(messages, objects, strict=True)],
        result.scores, result.threshold, result.contributions, result.observed, result.expected,
        det.feature_names_, top_k=3, bands=DEFAULT_BANDS, model_version="v1",
    )  # fmt: skip
    assert sum(r.is_anomaly for r in scored) >= 5
    for i, r in enumerate(scored):
        assert r.contributions == result.top_contributions(i, 3)
        assert r.severity == severity(result.scores[i], result.threshold)
        assert r.key == f"k{i}" and r.ts == 1700000000000 and r.labels == {"host": "web"}
        assert r.source.offset == i
        assert json.loads(encode_scored(r))["source"] == {"topic": "t", "partition": 0, "offset": i}


def test_keys_and_headers():
    m = msg(b"{}", key=None)
    assert output_key(m, {"key": "db-1"}) == b"db-1" and entity_of(m, {"key": "db-1"}) == "db-1"
    assert output_key(msg(b"{}", key=b"k"), {"key": "other"}) == b"k"
    assert entity_of(msg(b"{}", key=b"k"), {}) == "k" and output_key(m, {}) is None
    _, _, dead = decode_messages([Message("in", 3, 17, b"k", b"nope", [("h", b"v")], 0)], 1024)
    headers = dict(dlq_headers(dead[0], connector="grp", task="inst"))
    assert headers["h"] == b"v"
    assert headers["__connect.errors.topic"] == b"in"
    assert headers["__connect.errors.partition"] == b"3"
    assert headers["__connect.errors.offset"] == b"17"
    assert headers["__connect.errors.connector.name"] == b"grp"
    assert headers["vaeguard.errors.reason"] == Reason.INVALID_JSON.encode()
