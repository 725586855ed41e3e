"""Reading the input topics' recent records (`retrain.window`) for training, without disturbing
the daemon.

The reader has no consumer group: it assigns partitions itself and never commits, so the
daemon's committed offsets are untouched. It seeks with offsets_for_times and also filters by
record timestamp, because some brokers (Tansu among them) answer offsets_for_times coarsely.
What it keeps is bounded by records and by the bytes of their raw values (`RecentRecords`): a
window of large records cannot take the job's memory with it.
"""

from __future__ import annotations

import collections
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecentData:
    """Decoded recent records, oldest first, and what happened while reading them."""

    records: list[dict[str, Any]] = field(default_factory=list)
    start_ms: int = 0
    end_ms: int = 0
    read: int = 0
    undecodable: int = 0
    #: Refused records by reason (the ingestion contract's `Reason` codes).
    rejected: Counter = field(default_factory=Counter)
    older: int = 0
    truncated: bool = False
    partitions: int = 0
    #: Bytes of the raw values of the records kept.
    bytes: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "records": len(self.records),
            "read": self.read,
            "undecodable": self.undecodable,
            "truncated_to_most_recent": self.truncated,
            "bytes": self.bytes,
            "partitions": self.partitions,
        }


class RecentRecords:
    """The most recent records offered, at most ``max_records`` of them and at most ``max_bytes``
    bytes of raw values (None: no byte bound); older ones are dropped as newer ones come."""

    def __init__(self, max_records: int, max_bytes: int | None = None):
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.items: collections.deque[tuple[int, int, dict[str, Any]]] = collections.deque()
        self.bytes = 0
        self.truncated = False

    def add(self, timestamp: int, size: int, record: dict[str, Any]) -> None:
        self.items.append((timestamp, size, record))
        self.bytes += size
        while len(self.items) > self.max_records or (
            self.max_bytes is not None and self.bytes > self.max_bytes
        ):
            _, dropped, _ = self.items.popleft()
            self.bytes -= dropped
            self.truncated = True

    def records(self) -> list[dict[str, Any]]:
        """Oldest first by record timestamp."""
        return [r for _, _, r in sorted(self.items, key=lambda item: item[0])]


def read_recent(
    kafka_config: dict[str, Any],
    topics: list[str],
    *,
    window_s: float,
    max_records: int,
    decode: Callable[[bytes | None], Any],
    idle_timeout_s: float = 10.0,
    now_ms: int | None = None,
    max_bytes: int | None = None,
) -> RecentData:
    """All decodable records with timestamps in [now − window, now], the most recent ones
    within max_records and max_bytes of raw values."""
    from kafka import KafkaConsumer, TopicPartition

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    start_ms = now_ms - int(window_s * 1000)
    data = RecentData(start_ms=start_ms, end_ms=now_ms)
    config = {
        k: v
        for k, v in kafka_config.items()
        if k not in ("group_id", "group_instance_id", "client_id")
    }
    consumer = KafkaConsumer(
        **{
            **config,  # the daemon's connection, kafka.client and kafka.consumer settings
            "group_id": None,
            "enable_auto_commit": False,
            "client_id": "vaeguard-retrain-reader",
            "auto_offset_reset": "earliest",
        }
    )
    try:
        partitions = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        data.partitions = len(partitions)
        if not partitions:
            return data
        consumer.assign(partitions)
        found = consumer.offsets_for_times({tp: start_ms for tp in partitions})
        for tp in partitions:
            hit = found.get(tp)
            if hit is None:
                consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, hit.offset)
        kept = RecentRecords(max_records, max_bytes)
        last_progress = time.monotonic()
        while True:
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            for messages in batch.values():
                for message in messages:
                    data.read += 1
                    if message.timestamp < start_ms or message.timestamp > now_ms:
                        data.older += message.timestamp < start_ms
                        continue
                    record = decode(message.value)
                    # An input format's message gives a list: its records and refusals.
                    for one in record if isinstance(record, list) else (record,):
                        if not isinstance(one, dict):  # a Rejection (or None)
                            data.undecodable += 1
                            data.rejected[str(getattr(one, "reason", "undecodable"))] += 1
                            continue
                        kept.add(message.timestamp, len(message.value or b""), one)
            if batch:
                last_progress = time.monotonic()
            if _caught_up(consumer, partitions):
                break
            if time.monotonic() - last_progress > idle_timeout_s:
                break
        data.records = kept.records()
        data.truncated, data.bytes = kept.truncated, kept.bytes
        return data
    finally:
        consumer.close()


def _caught_up(consumer, partitions) -> bool:
    """Every partition's position has reached the high watermark seen in fetch responses."""
    for tp in partitions:
        high = consumer.highwater(tp)
        if high is None or consumer.position(tp) < high:
            return False
    return True
