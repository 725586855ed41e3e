"""Retraining's bounds: the window kept in memory (records and bytes) and the categories of a
categorical condition (a cap, the rest in an "other" column that scoring uses too)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_normal_data
from tests.retrain.conftest import FEATURES, SMALL, topic_name
from vaeguard.ingest import decode
from vaeguard.preprocessing import ConditionColumn, ConditionEncoder
from vaeguard.registry import ModelRegistry
from vaeguard.retrain.job import RetrainJob
from vaeguard.retrain.recent import RecentRecords, read_recent
from vaeguard.retrain.settings import RetrainSettings

# -- the window: most recent records within max_records and max_bytes ---------------------------


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5000), max_size=60),
    max_records=st.integers(1, 40),
    max_bytes=st.one_of(st.none(), st.integers(0, 50_000)),
)
def test_recent_records_keep_the_newest_within_both_bounds(sizes, max_records, max_bytes):
    kept = RecentRecords(max_records, max_bytes)
    for i, size in enumerate(sizes):
        kept.add(1000 + i, size, {"i": i})
    records = kept.records()
    n = len(records)
    assert n <= max_records
    assert kept.bytes == sum(sizes[len(sizes) - n :])
    if max_bytes is not None:
        assert kept.bytes <= max_bytes
    assert [r["i"] for r in records] == list(range(len(sizes) - n, len(sizes)))  # the newest
    assert kept.truncated == (n < len(sizes))
    # the one just before the kept ones would have broken a bound
    if n < len(sizes):
        older = sizes[len(sizes) - n - 1]
        assert n + 1 > max_records or (max_bytes is not None and kept.bytes + older > max_bytes)


def test_recent_records_come_back_in_timestamp_order():
    kept = RecentRecords(10, 1000)
    for ts in (30, 10, 20):
        kept.add(ts, 1, {"ts": ts})
    assert [r["ts"] for r in kept.records()] == [10, 20, 30]


def produce_rows(broker, topic, rows: list[dict], ts_ms: int | None = None) -> None:
    """One partition, one timestamp: the order of production is the order of recency."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
    ts = ts_ms or int(time.time() * 1000)
    for row in rows:
        producer.send(topic, value=json.dumps(row).encode(), timestamp_ms=ts, partition=0)
    producer.flush()
    producer.close()


def test_the_reader_keeps_at_most_max_bytes_of_the_most_recent_records(broker):
    topic = topic_name("bounds")
    rows = [{"i": i, "pad": "x" * 1000} for i in range(300)]
    size = len(json.dumps(rows[0]).encode())  # every row is within a byte of this
    produce_rows(broker, topic, rows)
    window = read_recent(
        {"bootstrap_servers": broker.bootstrap_servers},
        [topic],
        window_s=3600,
        max_records=10_000,
        max_bytes=50 * size,
        decode=lambda v: decode(v, 1 << 20),
        idle_timeout_s=5,
    )
    assert window.read == 300 and window.truncated
    assert window.bytes <= 50 * size and 45 <= len(window.records) <= 50
    n = len(window.records)
    assert [r["i"] for r in window.records] == list(range(300 - n, 300))
    assert window.describe()["bytes"] == window.bytes


def test_settings_bound_bytes_and_categories():
    s = RetrainSettings()
    assert s.max_bytes == 256 * 1024 * 1024 and s.max_categories == 100
    with pytest.raises(ValueError, match="max_categories"):
        RetrainSettings(max_categories=1)
    with pytest.raises(ValueError, match="max_bytes"):
        RetrainSettings(max_bytes=1000)


# -- categories: a cap, the rest in "other" -----------------------------------------------------


def test_many_distinct_categories_yield_at_most_the_cap_columns():
    rng = np.random.default_rng(5)
    common = ["eu", "us", "ap"]
    values = [common[k] for k in rng.integers(0, 3, 5000)] + [f"host-{i}" for i in range(20_000)]
    enc = ConditionEncoder.fit({"region": values}, {"region"}, max_categories=100)
    (col,) = enc.columns
    assert enc.width == 100 and col.other and len(col.categories) == 99
    assert set(common) <= set(col.categories)
    c = enc.transform({"region": ["eu", "host-19999", "never-seen", "us"]})
    assert c.shape == (4, 100) and (c.sum(axis=1) == 1).all()
    other = np.zeros(100, dtype="float32")
    other[99] = 1.0
    rare = next(f"host-{i}" for i in range(20_000) if f"host-{i}" not in col.categories)
    np.testing.assert_array_equal(enc.transform({"region": [rare]})[0], other)
    np.testing.assert_array_equal(c[2], other)  # unseen at scoring time: the same "other"
    assert c[0, col.categories.index("eu")] == 1.0
    # saved and read back, it encodes alike
    again = ConditionEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    np.testing.assert_array_equal(again.transform({"region": ["never-seen", "eu"]}), c[[2, 0]])


def test_without_a_cap_or_under_it_encoding_is_as_before():
    values = ["b", "a", "c", "a"]
    for cap in (None, 3, 100):
        enc = ConditionEncoder.fit({"k": values}, {"k"}, max_categories=cap)
        assert enc.to_dict() == [
            {"name": "k", "kind": "categorical", "categories": ["a", "b", "c"]}
        ]
        np.testing.assert_array_equal(enc.transform({"k": ["zzz"]}), np.zeros((1, 3)))


def test_an_existing_bundle_encoding_is_unchanged():
    """A manifest written before the cap has no "other": unseen values stay all zeros."""
    saved = [{"name": "region", "kind": "categorical", "categories": ["eu", "us"]}]
    enc = ConditionEncoder.from_dict(saved)
    assert enc.to_dict() == saved and enc.width == 2
    np.testing.assert_array_equal(
        enc.transform({"region": ["us", "mars"]}), np.array([[0, 1], [0, 0]], dtype="float32")
    )
    with pytest.raises(ValueError, match="'other'"):
        ConditionEncoder.from_dict([{**saved[0], "other": "yes"}])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    train=st.lists(st.one_of(st.text(max_size=3), st.integers(-3, 3), st.none()), min_size=1),
    score=st.lists(st.one_of(st.text(max_size=3), st.integers(-5, 5), st.none()), max_size=20),
    cap=st.integers(2, 12),
)
def test_any_categories_encode_within_the_cap(train, score, cap):
    enc = ConditionEncoder.fit({"k": train}, {"k"}, max_categories=cap)
    (col,) = enc.columns
    assert enc.width <= cap
    assert col.other == (len({str(v) for v in train}) > cap)
    c = enc.transform({"k": score})
    assert c.shape == (len(score), enc.width)
    if col.other:
        assert (c.sum(axis=1) == 1).all()  # every value has a column: its own or "other"
    else:
        assert (c.sum(axis=1) <= 1).all()
    assert ConditionColumn.from_dict(col.to_dict()) == col


def test_a_capped_detector_saves_loads_and_scores_alike(tmp_path):
    from vaeguard import VAEDetector
    from vaeguard.detector import load_bundle

    x = make_normal_data(300, seed=7, n_features=2)
    region = [f"r{i % 40}" for i in range(300)]
    det = VAEDetector(epochs=2, hidden=(8,), latent_dim=2, mc_samples=4).fit(
        {"a": x[:, 0], "b": x[:, 1]}, {"region": region}, categorical=["region"], max_categories=5
    )
    assert det.conditions_.width == 5 and det.conditions_.columns[0].other
    det.save(tmp_path / "bundle")
    loaded = load_bundle(tmp_path / "bundle")
    assert loaded.conditions_.to_dict() == det.conditions_.to_dict()
    cond = {"region": ["r0", "r39", "unseen"]}
    feats = {"a": x[:3, 0], "b": x[:3, 1]}
    np.testing.assert_allclose(
        loaded.decision_function(feats, cond), det.decision_function(feats, cond)
    )


# -- the job: both bounds applied to a topic's window ----------------------------------------------


def test_retraining_caps_the_window_bytes_and_the_categories(broker, tmp_path, monkeypatch):
    from vaeguard import VAEDetector

    x = make_normal_data(1500, seed=40)
    common = ["eu", "us", "ap"]
    v1 = VAEDetector(**SMALL).fit(
        {f: x[:, j] for j, f in enumerate(FEATURES)},
        {"region": [common[i % 3] for i in range(1500)]},
        categorical=["region"],
    )
    reg = ModelRegistry(tmp_path / "registry", create=True)
    reg.register(v1, {"source": "train"})

    topic = topic_name("bounds")
    rows = make_normal_data(1600, seed=41)
    records = []
    for i, row in enumerate(rows):
        region = common[i % 3] if i % 4 else f"site-{i}"  # 400 values seen once each
        records.append(
            {
                **dict(zip(FEATURES, map(float, row), strict=True)),
                "region": region,
                "pad": "x" * 600,
            }
        )
    produce_rows(broker, topic, records)
    size = max(len(json.dumps(r).encode()) for r in records)

    candidates = []
    real_fit = VAEDetector.fit

    def fit(self, *args, **kwargs):
        candidates.append(self)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(VAEDetector, "fit", fit)
    settings_ = RetrainSettings(
        window="1h",
        min_records=400,
        poll_timeout_s=5,
        epochs=2,
        max_anomalous_share=1.0,
        max_bytes=1024 * 1024,
        max_categories=8,
    )
    job = RetrainJob(reg, settings_, {"bootstrap_servers": broker.bootstrap_servers}, [topic])
    outcome = job.run()
    assert outcome.status in ("promoted", "rejected"), outcome.summary
    window = outcome.window
    assert window["truncated_to_most_recent"] and window["bytes"] <= 1024 * 1024
    assert (1024 * 1024) // size - 1 <= window["records"] < 1600
    (candidate,) = candidates
    (col,) = candidate.conditions_.columns
    assert col.other and candidate.conditions_.width == 8
    assert set(common) <= set(col.categories)
