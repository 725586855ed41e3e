"""The daemon on a model registry: hot swap at batch boundaries, refusal of a corrupt version,
the drift gauge, and the retraining schedule running inside it (real broker, real process)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.conftest import wait_for
from tests.daemon.conftest import (
    Collector,
    Producer,
    create_topic,
    daemon_env,
    good_record,
    unique,
)
from tests.retrain.conftest import quiet_then_busy
from vaeguard.files import write_atomic
from vaeguard.registry import CURRENT, ModelRegistry


@pytest.fixture
def registry(small_bundle, tmp_path) -> ModelRegistry:
    """v0001 current; v0002 registered, not current (the same weights: only the name differs)."""
    from vaeguard import VAEDetector

    detector = VAEDetector.load(small_bundle)
    reg = ModelRegistry(tmp_path / "registry", create=True)
    reg.register(detector, {"source": "train"})
    reg.register(detector, {"source": "retrain"}, make_current=False)
    return reg


def send(producer: Producer, topic: str, ids: range) -> None:
    for i in ids:
        producer.send(topic, good_record(i))
    producer.flush()


def test_a_promotion_is_picked_up_without_a_gap_and_a_corrupt_version_is_refused(
    broker, daemons, registry
):
    topic, group = unique("swap"), unique("swap")
    create_topic(broker.bootstrap_servers, topic, 1)  # offsets = record ids, in order
    d = daemons(
        "swap",
        daemon_env(
            broker.bootstrap_servers,
            registry.root,
            [topic],
            group,
            VAEGUARD_MODEL__RELOAD_INTERVAL_S="0.2",
            VAEGUARD_SCORING__BATCH_MAX_RECORDS="40",
            VAEGUARD_RETRAIN__DRIFT_MIN_RECORDS="100",
            VAEGUARD_RETRAIN__DRIFT_WINDOW_RECORDS="200",
        ),
    ).start()
    d.wait_ready()
    assert d.readyz()[1]["model_version"] == "v0001"
    out = Collector(broker.bootstrap_servers, f"{group}.scores")
    producer = Producer(broker.bootstrap_servers)

    # Promote while records stream in: the swap lands between two batches.
    send(producer, topic, range(0, 100))
    out.wait_count(1, timeout=30, message="the first score record")
    registry.promote("v0002")
    send(producer, topic, range(100, 200))
    wait_for(lambda: d.readyz()[1].get("model_version") == "v0002", 30, message="the swap to v0002")
    send(producer, topic, range(200, 250))
    out.wait_count(250, timeout=30, message="250 score records")

    # A corrupt version made current behind the registry's back (a disk fault, an intruder):
    # refused, counted, logged; v0002 keeps serving.
    corrupt = registry.root / "v0003"
    shutil.copytree(registry.root / "v0002", corrupt)
    (corrupt / "model.keras").chmod(0o600)
    (corrupt / "model.keras").write_bytes(b"this is not a keras archive")
    write_atomic(registry.root / CURRENT, b"v0003\n")
    wait_for(
        lambda: d.metric("vaeguard_model_load_failures_total") >= 1,
        30,
        message="the refusal of v0003",
    )
    send(producer, topic, range(250, 350))
    out.wait_count(350, timeout=30, message="350 score records")
    assert d.readyz()[1]["model_version"] == "v0002"
    assert d.metric("vaeguard_model_info", 'version="v0002"') == 1
    psi = d.metric("vaeguard_score_drift_psi")
    assert math.isfinite(psi) and psi >= 0
    assert 100 <= d.metric("vaeguard_score_drift_window_records") <= 200  # v0002's scores only
    assert d.terminate() == 0

    records = sorted(out.json(), key=lambda r: r["source"]["offset"])
    assert [r["source"]["offset"] for r in records] == list(range(350))  # each exactly once
    versions = [r["model_version"] for r in records]
    assert versions == sorted(versions) and versions[0] == "v0001"  # monotone: v0001 … v0002
    assert set(versions[200:]) == {"v0002"}
    refusals = [line for line in d.log_lines() if line.get("refused_version") == "v0003"]
    assert len(refusals) == 1 and "model.keras" in refusals[0]["error"]


def test_the_retraining_schedule_runs_inside_the_daemon_and_a_failed_gate_alerts(
    broker, daemons, registry, tmp_path
):
    topic, group = unique("sched"), unique("sched")
    quiet_then_busy(broker, topic)  # a window whose candidate the gate must reject
    alerts = tmp_path / "alerts.jsonl"
    config = tmp_path / "vaeguard.yaml"
    config.write_text(
        json.dumps({"alerts": {"sinks": [{"name": "f", "type": "file", "path": str(alerts)}]}})
    )
    state = tmp_path / "state"
    d = daemons(
        "sched",
        daemon_env(
            broker.bootstrap_servers,
            registry.root,
            [topic],
            group,
            VAEGUARD_RETRAIN__ENABLED="true",
            VAEGUARD_RETRAIN__SCHEDULE="2s",
            VAEGUARD_RETRAIN__WINDOW="1h",
            VAEGUARD_RETRAIN__MIN_RECORDS="400",
            VAEGUARD_RETRAIN__EPOCHS="2",
            VAEGUARD_RETRAIN__POLL_TIMEOUT_S="5",
            VAEGUARD_RETRAIN__STATE_DIR=str(state),
        ),
        config=config,
    ).start()
    d.wait_ready()

    def system_alerts() -> list[dict]:
        if not alerts.exists():
            return []
        lines = [json.loads(line) for line in alerts.read_text().splitlines()]
        return [a for a in lines if a["kind"] == "system"]

    (alert, *_) = wait_for(system_alerts, 90, interval=0.2, message="the rejected run's alert")
    assert alert["stream"] == "vaeguard.retrain" and alert["details"]["status"] == "rejected"
    assert "median holdout score" in alert["summary"]
    assert d.metric("vaeguard_retrain_runs_total", 'outcome="rejected"') >= 1
    assert (state / "scheduler.sqlite").is_file()
    assert registry.version_names() == ["v0001", "v0002"] and registry.current() == "v0001"
    assert d.terminate() == 0  # even with a run in progress
