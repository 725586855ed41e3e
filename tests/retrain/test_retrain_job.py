"""The retraining job against a real broker: promote, refuse, reject, never two at once."""

from __future__ import annotations

import time

import pytest

from tests.conftest import make_normal_data
from tests.retrain.conftest import FEATURES, SMALL, produce, quiet_then_busy, topic_name
from vaeguard.registry import ModelRegistry
from vaeguard.retrain.job import RetrainJob
from vaeguard.retrain.settings import RetrainSettings


@pytest.fixture(scope="module")
def v1_detector():
    from vaeguard import VAEDetector

    x = make_normal_data(1500, seed=40)
    return VAEDetector(**SMALL).fit({f: x[:, j] for j, f in enumerate(FEATURES)})


@pytest.fixture
def registry(v1_detector, tmp_path):
    reg = ModelRegistry(tmp_path / "registry", create=True)
    reg.register(v1_detector, {"source": "train"})
    return reg


def job(registry, broker, topic, **settings):
    s = RetrainSettings(
        **{"window": "1h", "min_records": 400, "poll_timeout_s": 5, "epochs": 15, **settings}
    )
    return RetrainJob(registry, s, {"bootstrap_servers": broker.bootstrap_servers}, [topic])


def test_normal_window_is_trained_gated_and_promoted(registry, broker):
    topic = topic_name()
    produce(broker, topic, make_normal_data(1200, seed=41))
    outcome = job(registry, broker, topic).run()
    assert outcome.status == "promoted", outcome.reasons
    assert (outcome.current, outcome.candidate, registry.current()) == ("v0001", "v0002", "v0002")
    lineage = registry.info("v0002").lineage
    assert lineage["parent"] == "v0001" and lineage["source"] == "retrain"
    assert lineage["training_window"]["records"] == 1200 and lineage["training_window"][
        "topics"
    ] == [topic]
    assert lineage["validation"]["holdout_rows"] > 0 and lineage["data_fingerprint"]["rows"] > 0
    assert outcome.window["undecodable"] == 1
    # and the operator can go back
    assert registry.rollback() == "v0001"


def test_an_incident_window_is_refused_and_current_stays(registry, broker):
    topic = topic_name()
    incident = make_normal_data(800, seed=42) + 8.0
    produce(broker, topic, incident)
    outcome = job(registry, broker, topic).run()
    assert outcome.status == "refused"
    assert "anomalous" in outcome.reasons[0] and "new normal" in outcome.reasons[0]
    assert registry.current() == "v0001" and registry.version_names() == ["v0001"]


def test_records_outside_the_window_do_not_count(registry, broker):
    topic = topic_name()
    two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
    produce(broker, topic, make_normal_data(1000, seed=43), ts_ms=two_hours_ago)
    produce(broker, topic, make_normal_data(100, seed=44))
    outcome = job(registry, broker, topic).run()
    assert outcome.status == "refused"
    assert "100 usable records" in outcome.reasons[0]


def test_a_candidate_failing_the_gate_is_not_promoted_and_raises_an_alert(registry, broker):
    topic = topic_name()
    quiet_then_busy(broker, topic)  # see its docstring: such a candidate can never pass
    alerts = []
    j = job(registry, broker, topic, epochs=3)
    j.on_failure = alerts.append
    outcome = j.run()
    assert outcome.status == "rejected", outcome.summary
    assert any("median holdout score" in r for r in outcome.reasons), outcome.reasons
    assert outcome.metrics["candidate_median_score"] > outcome.metrics["current_median_score"] + 10
    assert registry.current() == "v0001" and registry.version_names() == ["v0001"]
    assert alerts == [outcome]


def test_two_retrains_cannot_run_at_once(registry, broker):
    topic = topic_name()
    with registry.lock("retrain"):
        outcome = job(registry, broker, topic).run()
    assert outcome.status == "refused"
    assert outcome.reasons == ["another retraining job is running"]
