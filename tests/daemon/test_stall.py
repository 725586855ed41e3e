"""The stall detector (issue 26): records waiting on a partition whose committed offset does not
move turn /readyz not ready, show in /metrics and are logged with the offset."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import yaml
from kafka import TopicPartition
from prometheus_client import REGISTRY

from tests.conftest import wait_for
from tests.daemon.conftest import Producer, create_topic, daemon_env, unique
from vaeguard.alerts.testing import FAST_DELIVERY, HTTPCapture
from vaeguard.daemon.stall import StallDetector

TP = TopicPartition("in", 3)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stalled_gauge(tp: TopicPartition) -> float | None:
    return REGISTRY.get_sample_value(
        "vaeguard_partition_stalled", {"topic": tp.topic, "partition": str(tp.partition)}
    )


def _stalls_total() -> float:
    return REGISTRY.get_sample_value("vaeguard_partition_stalls_total") or 0.0


def test_waiting_records_and_no_commit_for_too_long_is_a_stall(caplog):
    clock = Clock()
    d = StallDetector(after_s=60, clock=clock)
    d.assigned([TP])
    clock.now += 500
    assert d.check() == [], "nothing waits: an idle partition is not stalled"

    d.polled(TP, 42)  # a batch in hand from offset 42 ...
    clock.now += 59
    assert d.check() == []
    before = _stalls_total()
    caplog.set_level(logging.INFO, logger="vaeguard.daemon")
    clock.now += 2  # ... and 61 s without a commit since the assignment's clock started
    (stall,) = d.check()
    assert (stall.topic, stall.partition, stall.offset) == ("in", 3, 42)
    assert stall.to_json()["partition"] == "in[3]"
    assert _stalled_gauge(TP) == 1 and _stalls_total() == before + 1
    d.check()
    assert _stalls_total() == before + 1, "one stall counts once, however often it is checked"
    (logged,) = [r for r in caplog.records if "partition stalled" in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.partition == "in[3]" and logged.offset == 42

    d.committed(TP, 43)  # it moves again
    assert d.check() == [] and _stalled_gauge(TP) == 0
    assert any("moves again" in r.getMessage() for r in caplog.records)


def test_lag_counts_as_waiting_and_the_offset_is_the_committed_one():
    clock = Clock()
    d = StallDetector(after_s=10, clock=clock)
    d.assigned([TP])
    d.polled(TP, 0)
    d.committed(TP, 100)
    clock.now += 30
    assert d.check() == [], "everything polled was committed: nothing waits"
    d.lag(TP, 5)  # the high watermark moved past the committed offset: records wait ...
    assert d.check() == [], "... from now on, not since the last commit"
    clock.now += 11
    (stall,) = d.check()
    assert stall.offset == 100 and stall.lag == 5
    d.committed(TP, 100)  # the same offset again is no progress
    assert d.check() != []
    d.committed(TP, 105)
    d.lag(TP, 0)
    assert d.check() == []


def test_a_revoked_partition_is_forgotten_and_a_new_assignment_starts_its_clock():
    clock = Clock()
    d = StallDetector(after_s=10, clock=clock)
    d.assigned([TP])
    d.polled(TP, 7)
    clock.now += 11
    assert d.check() and _stalled_gauge(TP) == 1
    d.revoked([TP])
    assert d.check() == [] and _stalled_gauge(TP) is None
    d.assigned([TP])  # handed back: its clock starts again
    d.polled(TP, 7)
    clock.now += 5
    assert d.check() == []
    d.assigned([TP])  # an assignment of a partition still owned keeps its clock
    clock.now += 6
    assert d.check()
    d.clear()
    assert d.check() == []


def test_readiness_reports_the_stalled_partitions(monkeypatch):
    from vaeguard.config import load_settings
    from vaeguard.daemon.pipeline import Pipeline, Shutdown

    monkeypatch.setenv("VAEGUARD_SCORING__STALL_AFTER_S", "30")
    model = SimpleNamespace(version="v1")
    pipeline = Pipeline(
        load_settings(None),
        provider=SimpleNamespace(current=lambda: model),
        alert_layer=None,
        shutdown=Shutdown(grace_s=30),
    )
    clock = Clock()
    pipeline.stalls.clock = clock
    pipeline.assignment = {TP}
    pipeline._broker_up()
    pipeline.stalls.assigned([TP])
    assert pipeline.readiness()[0] is True
    pipeline.stalls.polled(TP, 9)
    clock.now += 31
    ready, details = pipeline.readiness()
    assert ready is False
    assert details["stalled_partitions"] == [
        {"partition": "in[3]", "offset": 9, "seconds": 31.0, "lag": 0}
    ]
    assert REGISTRY.get_sample_value("vaeguard_ready") == 0


def test_stall_after_s_must_exceed_the_state_save_interval(monkeypatch):
    from vaeguard.config import load_settings
    from vaeguard.errors import ConfigError

    monkeypatch.setenv("VAEGUARD_SCORING__STALL_AFTER_S", "5")
    with pytest.raises(ConfigError, match=r"stall_after_s .* must exceed state_interval_s"):
        load_settings(None)
    monkeypatch.setenv("VAEGUARD_SCORING__STALL_AFTER_S", "0.5")
    with pytest.raises(ConfigError, match=r"scoring\.stall_after_s"):
        load_settings(None)


def test_a_daemon_stuck_on_its_alerts_reports_the_stall_and_recovers(
    broker, small_bundle, daemons, tmp_path
):
    """An alert no sink and no spool takes blocks the commit (by design); after
    stall_after_s the daemon says so on /readyz and /metrics, and not after it recovers."""
    bs = broker.bootstrap_servers
    topic, group = unique("stall-in"), unique("stall")
    create_topic(bs, topic, 1)
    with HTTPCapture(status=503) as hook:
        config = tmp_path / "vaeguard.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "alerts": {
                        "sinks": [{"name": "hook", "type": "webhook", "url": hook.url + "/h"}],
                        "spool_dir": str(tmp_path / "spool"),
                        "spool_max_mb": 0.0001,
                        "delivery": {**FAST_DELIVERY, "max_wait_s": 1.0},
                    },
                    "scoring": {"stall_after_s": 2, "state_interval_s": 0},
                }
            )
        )
        daemon = daemons("stall", daemon_env(bs, small_bundle, [topic], group), config=config)
        daemon.start().wait_ready()
        producer = Producer(bs)
        producer.send(topic, {"a": 1e4, "b": -1e4, "c": 0.0, "d": 0.0, "key": "db-9"})
        producer.flush()

        wait_for(
            lambda: daemon.readyz()[0] == 503 and daemon.readyz()[1]["stalled_partitions"],
            timeout=60,
            interval=0.2,
            message="/readyz to report the stalled partition",
        )
        (stall,) = daemon.readyz()[1]["stalled_partitions"]
        assert stall["partition"] == f"{topic}[0]" and stall["offset"] == 0
        assert daemon.metric("vaeguard_partition_stalled", f'topic="{topic}"') == 1
        assert daemon.metric("vaeguard_partition_stalls_total") == 1
        assert any(
            line.get("msg", "").startswith("partition stalled")
            and line.get("partition") == f"{topic}[0]"
            for line in daemon.log_lines()
        ), daemon.log()[-3000:]

        hook.status = 200  # the sink recovers: the batch commits, the partition moves again
        wait_for(
            lambda: daemon.readyz()[0] == 200,
            timeout=60,
            interval=0.2,
            message="/readyz ready again once the partition moves",
        )
        assert daemon.metric("vaeguard_partition_stalled", f'topic="{topic}"') == 0
    assert daemon.terminate() == 0, daemon.log()[-3000:]
