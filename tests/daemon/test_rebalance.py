"""The poll loop across a rebalance, in-process against the real broker.

A rebalance can revoke a partition while a batch is being assembled: its records are dropped
unprocessed. When the same rebalance hands the partition back, kafka-python keeps its fetch
position, which is past them; unless the loop rewinds it, the next commit covers records that
were never scored (found by the supervisor test, where a worker's SIGKILL makes the group
rebalance while the survivor keeps its partitions).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from kafka import KafkaConsumer, KafkaProducer

from tests.conftest import wait_for
from tests.daemon.conftest import create_topic, kafka_env, unique
from vaeguard.config import load_settings
from vaeguard.daemon.pipeline import Pipeline, Shutdown


class _Stream(threading.Thread):
    """Keeps records flowing into both partitions until stopped (offsets are what we check)."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
        self.topic = topic
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.wait(0.004):  # a steady trickle, ~250 records/s
            self.producer.send(self.topic, b'{"a": 1}', partition=i % 2)
            i += 1
        self.producer.flush(timeout=30)
        self.producer.close(timeout=10)


class _Member(threading.Thread):
    """A second member of the group: its arrival makes the group rebalance."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.stop = threading.Event()
        self.assignment: set = set()

    def run(self) -> None:
        consumer = KafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        try:
            while not self.stop.is_set():
                consumer.poll(timeout_ms=100)
                self.assignment = set(consumer.assignment())
        finally:
            consumer.close(autocommit=False)


def test_a_partition_handed_back_by_a_rebalance_resumes_at_its_dropped_records(
    broker, monkeypatch, caplog
):
    bs = broker.bootstrap_servers
    topic, group = unique("rebalance-in"), unique("rebalance")
    create_topic(bs, topic, 2)
    kafka_env(
        monkeypatch,
        bootstrap_servers=bs,
        input_topics=f'["{topic}"]',
        group_id=group,
        session_timeout_ms="6000",
        heartbeat_interval_ms="1000",
    )
    # long batches: the loop spends nearly all its time assembling one, records in hand
    monkeypatch.setenv("VAEGUARD_SCORING__BATCH_MAX_WAIT_MS", "1500")
    settings = load_settings(None)
    pipeline = Pipeline(settings, provider=None, alert_layer=None, shutdown=Shutdown(30))
    stream = _Stream(bs, topic)
    member = _Member(bs, topic, group)
    delivered: dict[int, list[int]] = defaultdict(list)  # what the loop hands to processing

    def poll() -> None:
        for tp, records in pipeline._poll().items():
            delivered[tp.partition].extend(r.offset for r in records)

    caplog.set_level(logging.INFO, logger="vaeguard.daemon")
    try:
        assert pipeline._connect()
        stream.start()
        wait_for(
            lambda: poll() or (len(pipeline.assignment) == 2 and len(delivered) == 2),
            timeout=60,
            interval=0,
            message="the loop owns both partitions and reads both",
        )
        member.start()  # the group rebalances; one of the two partitions stays with the loop
        wait_for(
            lambda: poll() or (member.assignment and len(pipeline.assignment) == 1),
            timeout=90,
            interval=0,
            message="the rebalance to finish",
        )
        (kept,) = pipeline.assignment
        read = len(delivered[kept.partition])
        wait_for(
            lambda: poll() or len(delivered[kept.partition]) >= read + 40,
            timeout=60,
            interval=0,
            message="the loop to read on after the rebalance",
        )
    finally:
        member.stop.set()
        stream.stop.set()
        pipeline.shutdown.request()
        pipeline._close()
        member.join(30)
        stream.join(30)

    offsets = delivered[kept.partition]
    gaps = sorted(set(range(max(offsets) + 1)) - set(offsets))
    assert not gaps, f"offsets of partition {kept.partition} never handed to processing: {gaps}"
    assert any("rewound to its dropped records" in r.getMessage() for r in caplog.records), (
        "the rebalance did not revoke a batch in the making: the scenario was not exercised"
    )
