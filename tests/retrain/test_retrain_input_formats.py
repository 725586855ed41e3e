"""Retraining reads the input topics in the daemon's ``input.format``: a Prometheus adapter
topic gives the assembled rows the daemon would score, with the same refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.retrain.conftest import topic_name
from vaeguard.input_formats import InputSpec
from vaeguard.retrain.job import RetrainJob
from vaeguard.retrain.recent import read_recent
from vaeguard.retrain.settings import RetrainSettings


def test_the_retraining_window_is_read_in_the_input_format(broker):
    from kafka import KafkaProducer

    topic = topic_name("retrain-prom")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    for i in range(5):
        for f in "ab":
            sample = {"name": f, "labels": {"instance": f"h{i % 2}"}, "value": str(i + 0.5),
                      "timestamp": f"2025-12-06T00:0{i}:00Z"}  # fmt: skip
            producer.send(topic, json.dumps(sample).encode())
    producer.send(topic, json.dumps({"name": "a", "labels": {"instance": "h0"}, "value": "+Inf",
                                     "timestamp": "2025-12-06T00:09:00Z"}).encode())  # fmt: skip
    producer.flush()
    producer.close()

    job = RetrainJob(
        registry=None,
        settings=RetrainSettings(),
        kafka_config={"bootstrap_servers": broker.bootstrap_servers},
        topics=[topic],
        input_spec=InputSpec(format="prometheus", entity=("labels.instance",)),
    )
    current = SimpleNamespace(feature_names_=["a", "b"], conditions_=SimpleNamespace(names=[]))
    window = read_recent(
        {"bootstrap_servers": broker.bootstrap_servers},
        [topic],
        window_s=3600,
        max_records=100,
        decode=job._decoder(current),
        idle_timeout_s=5,
    )
    # samples were spread over the topic's partitions (no key): rows still meet
    assert sorted(window.records, key=lambda r: r["ts"]) == [
        {"a": i + 0.5, "b": i + 0.5, "key": f"h{i % 2}", "ts": 1764979200.0 + 60 * i}
        for i in range(5)
    ]
    assert dict(window.rejected) == {"non_finite": 1}
