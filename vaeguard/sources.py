"""What the daemon's batch step takes in: consumed Kafka messages, or a `Record` from any other
source (a file row, a Python dict), and `source_of`, the one rule for where a record came from.

A source that already holds the record decoded hands it over as it is: the batch step checks it
with the same rules the decoder applies to JSON text (`vaeguard.ingest.check_record`) instead
of writing it as JSON only to parse it back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from vaeguard.scored import Source

__all__ = ["Record", "source_of"]


class Record(NamedTuple):
    """A record that did not come as a Kafka message, and where it came from.

    ``value``: JSON text (bytes, judged as a message value is: `vaeguard.ingest.decode`) or the
    record already decoded (a dict, judged by `vaeguard.ingest.check_record`). ``size``: the
    size of a decoded value as its source measures it (a CSV row: as JSON text), held to
    ``scoring.max_record_bytes``; None where the source has no size (a dict in memory). ``key``
    and ``timestamp`` stand where a message's key and timestamp (ms) would.
    """

    value: Any
    source: Source
    key: bytes | None = None
    timestamp: int | None = None
    size: int | None = None


def source_of(item: Any) -> Source:
    """Where a consumed message or a `Record` came from: the ``source`` of its score record."""
    if type(item) is Record:
        return item.source
    return Source(item.topic, item.partition, item.offset)
