"""Helpers of the retraining tests: records into a topic with chosen timestamps."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np

FEATURES = ("a", "b", "c", "d")
SMALL = {"epochs": 25, "hidden": (16, 8), "latent_dim": 2, "mc_samples": 8, "patience": 10}


def produce(
    broker, topic: str, rows: np.ndarray, ts_ms: int | None = None, junk: bool = True
) -> None:
    """One JSON record per row (features a..d), all stamped ts_ms (default now)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
    ts = ts_ms or int(time.time() * 1000)
    for i, row in enumerate(rows):
        record = {**dict(zip(FEATURES, map(float, row), strict=True)), "key": f"host-{i % 5}"}
        producer.send(topic, value=json.dumps(record).encode(), timestamp_ms=ts)
    if junk:
        producer.send(topic, value=b"not json", timestamp_ms=ts)  # skipped, not fatal
    producer.flush()
    producer.close()


def quiet_then_busy(broker, topic: str, seed: int = 46) -> None:
    """A quiet period (every metric flat) ten minutes ago, then a minute of ordinary traffic.

    A candidate trained on it learns only the quiet period (its scaler shrinks to the quiet
    spread) and is then held out on the ordinary, most recent rows, which the current model
    explains well: the gate must reject it, whatever the seed or the epochs.
    """
    from tests.conftest import make_normal_data

    now = int(time.time() * 1000)
    quiet = 0.01 * np.random.default_rng(seed).standard_normal((800, len(FEATURES)))
    produce(broker, topic, quiet, ts_ms=now - 10 * 60 * 1000, junk=False)
    produce(broker, topic, make_normal_data(250, seed=seed + 1), ts_ms=now - 60 * 1000, junk=False)


def topic_name(prefix: str = "retrain") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
