"""The batch step without a broker: decoding, featurizing, score records, dead letters."""

from __future__ import annotations

import json
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest

from vaeguard.ingest import Reason, Rejection
from vaeguard.preprocessing import ConditionColumn, ConditionEncoder
from vaeguard.records.batch import StepSettings, process
from vaeguard.records.serving import entity_of
from vaeguard.records.wire import (
    DeadLetter,
    dlq_headers,
    dlq_minimal,
    dlq_output,
    encode_scored,
    record_size,
)
from vaeguard.scored import Source
from vaeguard.serving import Inbound, TabularServing
from vaeguard.severity import DEFAULT_BANDS, severity

Message = namedtuple("Message", "topic partition offset key value headers timestamp")
STEP = StepSettings("out", "dlq", 1024, 3, DEFAULT_BANDS, "grp", "inst")


def msg(value: bytes | None, key: bytes | None = None, offset: int = 0) -> Message:
    return Message("t", 0, offset, key, value, [], 1700000000000)


def stub(features, conditions=None) -> TabularServing:
    """A tabular serving without a model: enough to featurize."""
    det = SimpleNamespace(
        feature_names_=list(features), conditions_=conditions or ConditionEncoder([])
    )
    return TabularServing(det)


def items(records) -> list[Inbound]:
    return [Inbound(r, Source("t", 0, i)) for i, r in enumerate(records)]


def test_featurize_fast_and_checked_paths_agree():
    f = stub(["a", "b"])
    good = [{"a": 1, "b": 2.5}, {"a": True, "b": "3"}, {"a": -1e3, "b": 0}]
    batch = f.featurize(items(good))
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
        {"a": "", "b": 2},
        {"a": 1, "b": 2, "ts": "nan"},
        {"a": 3, "b": 4, "ts": "2026-12-01T10:00:00Z"},
    ]
    batch = f.featurize(items(records))
    assert batch.keep.tolist() == [0, 10]
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
        8: Reason.MISSING_FEATURE,
        9: Reason.INVALID_TIMESTAMP,
    }
    assert "'b'" in next(r.detail for r in batch.rejected if r.index == 1)
    assert batch.timestamps == [None, "2026-12-01T10:00:00Z"]


def test_featurize_conditions_and_an_all_rejected_batch():
    enc = ConditionEncoder(
        [
            ConditionColumn("region", "categorical", categories=["eu", "us"]),
            ConditionColumn("hour", "numeric", center=12.0, scale=6.0),
        ]
    )
    f = stub(["a"], enc)
    batch = f.featurize(
        items([{"a": 1, "region": "us", "hour": 18}, {"a": 2, "hour": 3}, {"a": 3, "region": "eu"}])
    )
    assert batch.keep.tolist() == [0]
    np.testing.assert_allclose(batch.c, [[0, 1, 1.0]])
    assert sorted(r.index for r in batch.rejected) == [1, 2]
    # every record refused: an empty condition matrix, not an exception
    none = f.featurize(items([{"a": "x", "region": "eu", "hour": 1}]))
    assert len(none) == 0 and none.c.shape == (0, enc.width)


def test_score_records_match_score_result_and_severity(small_bundle):
    from tests.conftest import make_normal_data
    from vaeguard import VAEDetector

    det = VAEDetector.load(small_bundle)
    x = make_normal_data(n=64, seed=3)
    x[:5] += 8.0  # some clear anomalies
    result = det.counterfactual_matrix(x, k=3)  # anomalous rows: counterfactual explanations
    serving = TabularServing(det, "v1")
    names = det.feature_names_
    messages = [
        msg(json.dumps({**dict(zip(names, row.tolist(), strict=True)), "host": "web"}).encode(),
            key=b"k%d" % i, offset=i)
        for i, row in enumerate(x)
    ]  # fmt: skip
    out = process(serving, messages, StepSettings("out", "dlq", 4096, 3, DEFAULT_BANDS, "g", "i"))
    scored = out.scored
    assert len(scored) == 64 and not out.dead
    assert sum(r.is_anomaly for r in scored) >= 5
    for i, r in enumerate(scored):
        expected = result.top_contributions(i, 3)
        assert [c["feature"] for c in r.contributions] == [c["feature"] for c in expected]
        assert r.score == pytest.approx(result.scores[i], rel=1e-5)
        # relative to the calibration: decades of tail probability beyond the alert budget
        budget = det.threshold_rule_.params["budget"]
        assert r.severity == severity(
            result.scores[i], result.threshold, p_value=r.p_value, alert_p=budget / 1000
        )
        assert r.key == f"k{i}" and r.ts == 1700000000000 and r.labels == {"host": "web"}
        record = json.loads(encode_scored(r))
        assert record["source"] == {"topic": "t", "partition": 0, "offset": i}
        assert "threshold_of" not in record  # the threshold is the score's (nats)
    assert [o[0] for o in out.outputs] == ["out"] * 64


def test_keys_and_dead_letter_headers():
    m = Inbound({"key": "db-1"}, Source("t", 0, 0))
    assert entity_of(m) == "db-1"
    assert entity_of(Inbound({}, Source("t", 0, 0), key=b"k")) == "k"
    assert entity_of(Inbound({"key": {"b": 1, "a": [2]}}, Source("t", 0, 0))) == '{"a":[2],"b":1}'
    dead = DeadLetter(
        Message("in", 3, 17, b"k", b"nope", [("h", b"v")], 0),
        Rejection(Reason.INVALID_JSON, "json.JSONDecodeError", "Expecting value"),
    )
    headers = dict(dlq_headers(dead, connector="grp", task="inst"))
    assert headers["h"] == b"v"
    assert headers["__connect.errors.topic"] == b"in"
    assert headers["__connect.errors.partition"] == b"3"
    assert headers["__connect.errors.offset"] == b"17"
    assert headers["__connect.errors.connector.name"] == b"grp"
    assert headers["vaeguard.errors.reason"] == Reason.INVALID_JSON.encode()


@pytest.mark.parametrize("limit", [2_000, 10_000, 1_048_576])
def test_a_dead_letter_too_large_for_the_producer_is_cut_to_fit(limit):
    big = b"x" * 3_000_000
    dead = DeadLetter(
        Message("in", 0, 5, b"k" * 100, big, [("trace", b"t" * 5000)], 0),
        Rejection(Reason.OVERSIZE, "ValueError", "the value is too large"),
    )
    _, key, value, headers = dlq_output(dead, "dlq", "grp", "inst", limit)
    assert record_size(key, value, headers) <= limit  # as kafka-python's producer measures it
    assert record_size(key, value, headers) >= limit - 8  # and no more cut than needed
    names = dict(headers)
    assert names["vaeguard.errors.truncated"] == b"3000000"
    assert names["vaeguard.errors.reason"] == b"oversize"
    assert big.startswith(value)


def test_a_failure_inside_scoring_costs_only_its_record(small_bundle):
    """Bisection: the rows that make the model raise become processing_error dead letters."""
    from vaeguard import VAEDetector

    serving = TabularServing(VAEDetector.load(small_bundle), "v1")
    real_score = serving.score

    def flaky(features, kept, **kw):
        if any(it.record.get("poison") for it in kept):
            raise RuntimeError("boom: a bug of ours")
        return real_score(features, kept, **kw)

    serving.score = flaky
    names = serving.feature_names
    records = [{**dict.fromkeys(names, 0.5), "n": i} for i in range(20)]
    records[3]["poison"] = records[17]["poison"] = True
    messages = [msg(json.dumps(r).encode(), offset=i) for i, r in enumerate(records)]
    out = process(serving, messages, STEP)
    assert [r.source.offset for r in out.scored] == [i for i in range(20) if i not in (3, 17)]
    assert [(d.message.offset, d.reason) for d in out.dead] == [
        (3, "processing_error"),
        (17, "processing_error"),
    ]
    headers = dict(dlq_headers(out.dead[0], "grp", "inst"))
    assert headers["__connect.errors.exception.class.name"] == b"RuntimeError"
    assert b"boom" in headers["__connect.errors.exception.message"]
    assert out.isolated >= 2


def test_anomalies_mode_outputs_and_explains_only_anomalies(small_bundle):
    from tests.conftest import make_normal_data
    from vaeguard import VAEDetector

    det = VAEDetector.load(small_bundle)
    serving = TabularServing(det, "v1")
    x = make_normal_data(n=40, seed=9)
    x[[3, 30]] += 9.0
    names = det.feature_names_
    messages = [
        msg(json.dumps(dict(zip(names, row.tolist(), strict=True))).encode(), offset=i)
        for i, row in enumerate(x)
    ]
    step = StepSettings("out", "dlq", 4096, 3, DEFAULT_BANDS, "g", "i", output_mode="anomalies")
    out = process(serving, messages, step)
    assert len(out.scored) == 40  # every record is scored (and counted, and alerted on)
    flagged = [r for r in out.scored if r.is_anomaly]
    assert {3, 30} <= {r.source.offset for r in flagged}
    assert len(out.outputs) == len(flagged)  # only the anomalies go to the output topic
    assert all(r.contributions for r in flagged)
    assert all(not r.contributions for r in out.scored if not r.is_anomaly)


def test_record_size_is_what_the_producer_refuses_above_max_request_size():
    """The producer's own check (kafka-python measures each record before `send`)."""
    from kafka import KafkaProducer

    headers = [("trace", b"t" * 300), ("h", None)]
    for key, value in [(None, b""), (b"k" * 1000, b"v" * 5000), (b"", b"x" * 200_000)]:
        measured = KafkaProducer.__new__(KafkaProducer)
        measured.config = {"api_version": (2, 8), "compression_type": None}
        assert record_size(key, value, headers) == measured._estimate_size_in_bytes(
            key, value, headers
        )


def test_a_dead_letter_drops_headers_then_key_only_when_they_alone_are_too_large():
    headers = [("trace", b"t" * 5000)]
    dead = DeadLetter(
        Message("in", 0, 5, b"k" * 20_000, b"v" * 100, headers, 0),
        Rejection(Reason.OVERSIZE_KEY, "ValueError", "the key is too large"),
    )
    _, key, value, out = dlq_output(dead, "dlq", "grp", "inst", 30_000)  # everything fits
    assert key == b"k" * 20_000 and value == b"v" * 100 and ("trace", b"t" * 5000) in out
    _, key, value, out = dlq_output(dead, "dlq", "grp", "inst", 22_000)  # the headers go
    names = dict(out)
    assert key == b"k" * 20_000 and "trace" not in names
    assert names["vaeguard.errors.headers_dropped"] == b"1"
    _, key, value, out = dlq_output(dead, "dlq", "grp", "inst", 10_000)  # then the key
    names = dict(out)
    assert key is None and names["vaeguard.errors.key_dropped"] == b"20000"
    assert value == b"v" * 100 and record_size(key, value, out) <= 10_000
    assert names["vaeguard.errors.reason"] == b"oversize_key"


def test_the_minimal_dead_letter_keeps_only_the_error_headers():
    dead = DeadLetter(
        Message("in", 2, 9, b"k" * 700_000, b"v" * 300, [("trace", b"t" * 9000)], 0),
        Rejection(Reason.OVERSIZE_OUTPUT, "MessageSizeTooLargeError", "refused"),
    )
    topic, key, value, headers = dlq_minimal(dead, "dlq", "grp", "inst")
    names = dict(headers)
    assert (topic, key, value) == ("dlq", None, b"")
    assert "trace" not in names and names["vaeguard.errors.reason"] == b"oversize_output"
    assert names["__connect.errors.offset"] == b"9"
    assert names["vaeguard.errors.truncated"] == b"300"
    assert names["vaeguard.errors.headers_dropped"] == b"1"
    assert names["vaeguard.errors.key_dropped"] == b"700000"
    assert record_size(key, value, headers) < 2048


def _outcomes(out) -> dict[int, str]:
    got = {r.source.offset: "scored" for r in out.scored}
    got.update({d.message.offset: d.reason for d in out.dead})
    return got


def test_oversize_keys_entities_and_headers_are_dead_letters_at_decode():
    f = stub(["a"])
    step = StepSettings("out", "dlq", 4096, 3, DEFAULT_BANDS, "grp", "inst", max_key_bytes=64)
    ok = {"a": 1.0}
    cases = [
        (msg(json.dumps(ok).encode(), key=b"k" * 64), "scored"),  # at the limit
        (msg(json.dumps(ok).encode(), key=b"k" * 65), "oversize_key"),
        (msg(json.dumps({**ok, "key": "e" * 64}).encode()), "scored"),
        (msg(json.dumps({**ok, "key": "e" * 65}).encode()), "oversize_key"),
        (msg(json.dumps({**ok, "key": "é" * 33}).encode()), "oversize_key"),  # 66 UTF-8 bytes
        (msg(json.dumps({**ok, "key": {"host": "x" * 60}}).encode()), "oversize_key"),
        (msg(json.dumps({**ok, "key": 12345}).encode()), "scored"),
        (msg(json.dumps({**ok, "key": None}).encode(), key=b"k"), "scored"),
        (Message("t", 0, 0, None, json.dumps(ok).encode(), [("h", b"x" * 4000)], 0), "scored"),
        (Message("t", 0, 0, None, json.dumps(ok).encode(), [("h", b"x" * 4096)], 0),
         "oversize_headers"),
        (Message("t", 0, 0, None, json.dumps(ok).encode(), [("h", None)] * 3, 0), "scored"),
    ]  # fmt: skip
    messages = [m._replace(offset=i) for i, (m, _) in enumerate(cases)]
    f.score = lambda features, kept, **kw: [_record(it) for it in kept]
    out = process(f, messages, step)
    assert _outcomes(out) == {i: outcome for i, (_, outcome) in enumerate(cases)}
    stages = {d.message.offset: d.rejection.stage for d in out.dead}
    assert stages[1] == "KEY_CONVERTER" and stages[9] == "HEADER_CONVERTER"
    assert "scoring.max_key_bytes=64" in next(d.detail for d in out.dead if d.message.offset == 1)
    assert len(out.origins) == len(out.outputs)
    for (topic, _, _, _), (m, dead) in zip(out.outputs, out.origins, strict=True):
        assert (topic == "dlq") == (dead is not None) and m in messages


def test_a_window_models_entity_field_is_capped_too():
    """The batch step asks the model which field names the entity (not only ``key``)."""
    f = stub(["a"])
    f.entity_field = "host"
    step = StepSettings("out", "dlq", 4096, 3, DEFAULT_BANDS, "grp", "inst", max_key_bytes=64)
    f.score = lambda features, kept, **kw: [_record(it) for it in kept]
    records = [{"a": 1, "host": "h" * 65}, {"a": 1, "key": "k" * 65}, {"a": 1, "host": "h"}]
    out = process(f, [msg(json.dumps(r).encode(), offset=i) for i, r in enumerate(records)], step)
    assert _outcomes(out) == {0: "oversize_key", 1: "oversize_key", 2: "scored"}


def test_a_score_record_the_producer_would_refuse_is_a_dead_letter():
    """Measured as the producer measures it, key included: never sent to be refused."""
    f = stub(["a"])
    f.score = lambda features, kept, **kw: [_record(it, pad=3000) for it in kept]
    step = StepSettings("out", "dlq", 4096, 3, DEFAULT_BANDS, "grp", "inst", max_request_size=3300)
    messages = [
        msg(json.dumps({"a": 1}).encode(), offset=0),
        msg(json.dumps({"a": 1}).encode(), key=b"k" * 150, offset=1),  # the key tips it over
    ]
    out = process(f, messages, step)
    assert _outcomes(out) == {0: "scored", 1: "oversize_output"}
    (dead,) = out.dead
    assert dead.rejection.stage == "KAFKA_PRODUCE" and "max_request_size=3300" in dead.detail
    for _, key, value, headers in out.outputs:
        assert record_size(key, value, headers) <= 3300


def _record(item, pad: int = 0):
    from vaeguard.scored import ScoredRecord

    return ScoredRecord(
        key="x" * pad, ts=None, score=1.0, threshold=2.0, is_anomaly=False, severity="normal",
        contributions=[], model_version="v", source=item.source,
    )  # fmt: skip
