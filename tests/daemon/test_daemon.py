"""`vaeguard run` against the real embedded broker: delivery, dead letters, readiness, shutdown."""

from __future__ import annotations

import json
from collections import Counter

from kafka import KafkaConsumer, TopicPartition

from tests.conftest import wait_for
from tests.daemon.conftest import (
    Collector,
    Producer,
    create_topic,
    daemon_env,
    good_record,
    unique,
)

#: Every kind of poison record, with the reason the DLQ must give.
POISON = [
    (b"\xff\xfe{}", "invalid_utf8"),
    (b'{"a": 1, "b":', "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b'{"a": 1.0, "b": 2.0, "c": 3.0}', "missing_feature"),
    (b'{"a": "high", "b": 2.0, "c": 3.0, "d": 4.0}', "non_numeric_feature"),
    (b'{"a": [1], "b": 2.0, "c": 3.0, "d": 4.0}', "non_numeric_feature"),
    (b'{"a": null, "b": 2.0, "c": 3.0, "d": 4.0}', "missing_feature"),
    (b'{"a": NaN, "b": 2.0, "c": 3.0, "d": 4.0}', "non_finite"),
    (b'{"a": -Infinity, "b": 2.0, "c": 3.0, "d": 4.0}', "non_finite"),
    (b'{"a": 1e999, "b": 2.0, "c": 3.0, "d": 4.0}', "non_finite"),
    (b'{"a": "NaN", "b": 2.0, "c": 3.0, "d": 4.0}', "non_finite"),
    (b'{"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "pad": "' + b"x" * 3000 + b'"}', "oversize"),
]


def test_clean_run_dead_letters_readiness_and_sigterm(broker, small_bundle, daemons):
    bs = broker.bootstrap_servers
    topic = unique("in")
    group = unique("clean")
    create_topic(bs, topic, 3)
    daemon = daemons(
        "clean",
        daemon_env(bs, small_bundle, [topic], group, VAEGUARD_SCORING__MAX_RECORD_BYTES=2048),
    ).start()

    # /readyz: not ready until the model is loaded and partitions are assigned, then ready.
    seen = []

    def probe():
        code, body = daemon.readyz()
        if code:
            seen.append((code, body))
        assert daemon.proc.poll() is None, daemon.log()[-3000:]
        return code == 200

    wait_for(probe, timeout=60, interval=0.05, message="/readyz to turn ready")
    assert seen[0][0] == 503 and seen[0][1]["partitions_assigned"] == 0
    for code, body in seen:
        assert (code == 200) == (
            body["model_loaded"] and body["partitions_assigned"] > 0 and body["broker_reachable"]
        )
    assert daemon.get("/healthz")[0] == 200

    n_good = 600
    producer = Producer(bs)
    poison_at = {}
    for i in range(n_good):
        producer.send(topic, good_record(i), key=f"h{i % 5}".encode())
        if i % 40 == 25 and len(poison_at) < len(POISON):
            value, reason = POISON[len(poison_at)]
            producer.send(topic, value, key=b"poison", headers=[("trace", b"t-%d" % i)])
            poison_at[value] = reason
    end = producer.flush()
    producer.close()

    scores = Collector(bs, f"{group}.scores")
    dlq = Collector(bs, f"{group}.dlq")
    scores.wait_count(n_good, timeout=60, message=f"{n_good} score records")
    dlq.wait_count(len(POISON), timeout=30, message="every poison record in the DLQ")

    # Exactly one score record per good record, keyed like the input, with the full shape.
    out = scores.json()
    sources = Counter(
        (r["source"]["topic"], r["source"]["partition"], r["source"]["offset"]) for r in out
    )
    assert len(sources) == n_good and set(sources.values()) == {1}
    record = out[0]
    assert set(record) == {
        "key", "ts", "score", "threshold", "is_anomaly", "severity", "contributions",
        "model_version", "source", "p_value",
    }  # fmt: skip
    assert all(0.0 <= r["p_value"] <= 1.0 for r in out)
    assert len(record["contributions"]) == 3
    # (an anomalous record's contributions also carry their counterfactual "score_drop")
    assert set(record["contributions"][0]) - {"score_drop"} == {
        "feature",
        "observed",
        "expected",
        "contribution",
        "share",
    }
    assert (
        record["model_version"]
        == json.loads((small_bundle / "bundle.json").read_text())["model_sha256"][:12]
    )
    for m, r in zip(scores.messages, out, strict=True):
        assert m.key == r["key"].encode() and r["key"].startswith("h")

    # Every poison record is in the DLQ once: original bytes and key, reason, Connect headers.
    by_value = {m.value: m for m in dlq.messages}
    assert len(dlq.messages) == len(POISON)
    for value, reason in poison_at.items():
        m = by_value[value]
        headers = dict(m.headers)
        assert m.key == b"poison"
        assert headers["vaeguard.errors.reason"].decode() == reason, value
        assert headers["__connect.errors.topic"].decode() == topic
        assert int(headers["__connect.errors.offset"]) >= 0
        assert headers["__connect.errors.partition"].decode().isdigit()
        assert headers["__connect.errors.exception.message"]
        assert headers["__connect.errors.exception.class.name"]
        assert headers["trace"].startswith(b"t-")

    # Metrics count what happened.
    assert daemon.metric("vaeguard_records_scored_total") == n_good
    assert daemon.metric("vaeguard_records_dead_lettered_total") == len(POISON)
    assert daemon.metric("vaeguard_records_dead_lettered_total", 'reason="oversize"') == 1
    assert daemon.metric("vaeguard_records_consumed_total") == n_good + len(POISON)
    assert daemon.metric("vaeguard_batch_duration_seconds_count") >= 1
    assert daemon.metric("vaeguard_model_info") == 1
    # the p-values, counted at each level: as many at 0.1 or below as records said so
    expected = sum(1 for r in out if r["p_value"] <= 0.1)
    assert daemon.metric("vaeguard_score_p_value_below_total", 'level="0.1"') == expected
    body = daemon.get("/metrics")[1]
    assert f'vaeguard_consumer_lag{{partition="0",topic="{topic}"}}' in body
    assert 'vaeguard_sink_alerts_sent_total{sink="log"}' in body, "the default log sink's metrics"

    # SIGTERM: exit 0, offsets committed up to the end of every partition.
    assert daemon.terminate() == 0, daemon.log()[-3000:]
    check = KafkaConsumer(bootstrap_servers=bs, group_id=group, enable_auto_commit=False)
    try:
        committed = {p: check.committed(TopicPartition(topic, p)) for p in end}
    finally:
        check.close()
    assert committed == end
    logs = daemon.log_lines()
    assert all("ts" in line and "level" in line for line in logs), "every log line is JSON"
    assert any(line.get("msg") == "vaeguard daemon stopped" for line in logs)
