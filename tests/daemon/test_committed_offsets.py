"""The pipeline learns the group's committed offsets after an assignment (real broker), so a
window state's offsets can be bounded by them (`vaeguard.daemon.checkpoint`): fetched from the
loop's thread, since the rebalance callback runs on kafka-python's IO thread, where a blocking
fetch is refused."""

from __future__ import annotations

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

from tests.conftest import wait_for
from tests.daemon.conftest import create_topic, kafka_env, unique
from vaeguard.config import load_settings
from vaeguard.daemon.pipeline import Pipeline, Shutdown


class _Held:
    """A stateful serving's offsets (what `Checkpoint` bounds), without a model."""

    stateful = True

    def __init__(self, offsets):
        self.offsets = dict(offsets)

    def bound_offset(self, partition, committed, *, trusted):
        from vaeguard.serving.window import WindowServing

        return WindowServing.bound_offset(self, partition, committed, trusted=trusted)


def test_committed_offsets_are_fetched_after_the_assignment_and_bound_the_state(
    broker, monkeypatch
):
    bs = broker.bootstrap_servers
    topic, group = unique("committed-in"), unique("committed")
    create_topic(bs, topic, 2)
    committer = KafkaConsumer(bootstrap_servers=bs, group_id=group, enable_auto_commit=False)
    committer.assign([TopicPartition(topic, 0)])
    committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(7, "", -1)})
    committer.close(autocommit=False)

    kafka_env(
        monkeypatch,
        bootstrap_servers=bs,
        input_topics=f'["{topic}"]',
        group_id=group,
        session_timeout_ms="6000",
        heartbeat_interval_ms="1000",
    )
    pipeline = Pipeline(load_settings(None), provider=None, alert_layer=None, shutdown=Shutdown(30))
    # a restored state claiming more than the group committed, for both partitions
    pipeline.checkpoint.serving = _Held({f"{topic}:0": 500, f"{topic}:1": 3})
    try:
        assert pipeline._connect()
        wait_for(
            lambda: pipeline._poll() is not None and len(pipeline.assignment) == 2,
            timeout=60,
            interval=0,
            message="the group to assign both partitions",
        )
        pipeline._learn_committed()
        assert pipeline.checkpoint.group == {f"{topic}:0": 7, f"{topic}:1": None}
        assert not pipeline._committed_unknown
    finally:
        pipeline.shutdown.request()
        pipeline._close()
    # partition 0 cut back to what the group committed; partition 1 has no commit: nothing held
    assert pipeline.checkpoint.serving.offsets == {f"{topic}:0": 7}
    assert pipeline.checkpoint.group == {}  # revoked at close: fetched again at the next one
