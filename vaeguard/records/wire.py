"""The daemon's wire formats: score records and dead letters on their way to Kafka.

A refused record becomes a `DeadLetter`, produced to the dead-letter topic with the original
key and bytes and Kafka Connect's DLQ headers (``__connect.errors.*``) plus ``vaeguard.errors.
reason``, so existing DLQ tooling can read it. A dead letter too large for the producer's
``max_request_size`` is sent with its value cut to fit and a ``vaeguard.errors.truncated``
header holding the original size: the reason is never lost to a size limit. Sizes are measured
as kafka-python's producer measures a record before it refuses it (`record_size`), so what fits
here is never refused by the client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

try:
    import orjson
except ImportError:
    orjson = None

from kafka.record.default_records import DefaultRecordBatchBuilder

from vaeguard.ingest import Reason, Rejection, entity_text, short_detail
from vaeguard.scored import ScoredRecord
from vaeguard.sources import source_of

__all__ = [
    "DeadLetter",
    "Reason",
    "dlq_headers",
    "dlq_minimal",
    "dlq_output",
    "encode_scored",
    "fits",
    "output_key",
    "record_size",
]

Output = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]

#: What `record_size` adds at most to a record without headers beyond its key and value bytes
#: (the batch header, the record's own overhead and the two length varints).
_NO_HEADER_SLACK = (
    DefaultRecordBatchBuilder.HEADER_STRUCT.size
    + DefaultRecordBatchBuilder.MAX_RECORD_OVERHEAD
    + 11
)


@dataclass(slots=True)
class DeadLetter:
    message: Any  # kafka ConsumerRecord, or a `vaeguard.sources.Record`
    rejection: Rejection
    #: The class that refused the record (Kafka Connect's ``class.name`` header).
    stage_class: str = "vaeguard.ingest"

    @property
    def reason(self) -> str:
        return str(self.rejection.reason)

    @property
    def detail(self) -> str:
        return self.rejection.detail


def dlq_headers(dead: DeadLetter, connector: str, task: str) -> list[tuple[str, bytes]]:
    """The original headers plus Kafka Connect's error-context headers and our reason code."""
    m = dead.message
    r = dead.rejection
    source = source_of(m)
    headers = _own_headers(m)
    headers += [
        ("__connect.errors.topic", source.topic.encode("utf-8", "replace")),
        ("__connect.errors.partition", str(source.partition).encode()),
        ("__connect.errors.offset", str(source.offset).encode()),
        ("__connect.errors.connector.name", connector.encode()),
        ("__connect.errors.task.id", task.encode()),
        ("__connect.errors.stage", r.stage.encode()),
        ("__connect.errors.class.name", dead.stage_class.encode()),
        ("__connect.errors.exception.class.name", r.error_class.encode("utf-8", "replace")),
        ("__connect.errors.exception.message", short_detail(r.detail).encode("utf-8", "replace")),
        ("vaeguard.errors.reason", str(r.reason).encode()),
    ]
    return headers


def _own_headers(message: Any) -> list[tuple[str, bytes | None]]:
    """The input's headers that can be sent on as they are ((name, bytes) pairs)."""
    headers = getattr(message, "headers", None) or []
    try:
        return [
            (k, v)
            for k, v in headers
            if isinstance(k, str) and (v is None or isinstance(v, bytes | bytearray))
        ]
    except (TypeError, ValueError):
        return []


def record_size(key: bytes | None, value: bytes | None, headers: list | None = None) -> int:
    """A record's size as kafka-python's producer estimates it before sending (and refuses it
    above ``max_request_size``): the v2 record batch holding it alone, an upper bound."""
    headers = headers or []
    try:
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    except (UnicodeEncodeError, TypeError):  # a header name the client could not send anyway
        safe = [(k.encode("utf-8", "replace").decode("utf-8"), v) for k, v in headers]
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, safe)


def fits(key: bytes | None, value: bytes, limit: int) -> bool:
    """Whether a record without headers (a score record) fits the producer's request limit;
    the exact estimate only near the limit."""
    if len(value) + (len(key) if key is not None else 0) + _NO_HEADER_SLACK <= limit:
        return True
    return record_size(key, value) <= limit


def dlq_output(
    dead: DeadLetter, topic: str, connector: str, task: str, max_request_size: int
) -> Output:
    """(topic, key, value, headers) of a dead letter, cut to fit the producer's request limit.

    What gives way, in order: the value (cut, with ``vaeguard.errors.truncated`` = original
    size), then the input's own headers, then the key; the reason headers always stay.
    """
    m = dead.message
    value = _value_bytes(m)
    key = m.key
    headers = dlq_headers(dead, connector, task)
    if record_size(key, value, headers) <= max_request_size:
        return topic, key, value, headers
    n_own = len(_own_headers(m))
    truncated = ("vaeguard.errors.truncated", str(len(value)).encode())
    if record_size(key, b"", [*headers, truncated]) > max_request_size:
        headers = [*headers[n_own:], ("vaeguard.errors.headers_dropped", str(n_own).encode())]
        if key is not None and record_size(key, b"", [*headers, truncated]) > max_request_size:
            headers.append(("vaeguard.errors.key_dropped", str(len(key)).encode()))
            key = None
    if record_size(key, value, headers) > max_request_size:
        headers = [*headers, truncated]
        # the value's length varint grows from 1 byte (empty) to at most 5
        room = max_request_size - record_size(key, b"", headers) - 4
        value = value[: max(0, room)]
    return topic, key, value, headers


def dlq_minimal(dead: DeadLetter, topic: str, connector: str, task: str) -> Output:
    """The smallest form of a dead letter: no key, no value, only the error headers (and what
    was dropped), for when the broker refused the full one as too large."""
    m = dead.message
    n_own = len(_own_headers(m))
    headers = dlq_headers(dead, connector, task)[n_own:]
    headers.append(("vaeguard.errors.truncated", str(len(_value_bytes(m))).encode()))
    if n_own:
        headers.append(("vaeguard.errors.headers_dropped", str(n_own).encode()))
    if m.key is not None:
        headers.append(("vaeguard.errors.key_dropped", str(len(m.key)).encode()))
    return topic, None, b"", headers


def _value_bytes(message: Any) -> bytes:
    """The bytes a dead letter carries: the message value (none for a `Record` that came
    decoded, which has no bytes to carry)."""
    value = message.value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return b""


def output_key(message: Any, record: dict[str, Any]) -> bytes | None:
    """Score records are keyed like their input: the message key, else the record's ``key``."""
    if message.key is not None:
        return message.key
    key = record.get("key")
    return None if key is None else entity_text(key).encode("utf-8", "replace")


def encode_scored(record: ScoredRecord) -> bytes:
    """The score record's JSON (orjson; the standard library for what orjson refuses, such as
    a label holding a lone surrogate escape)."""
    data = record.to_json()
    if orjson is not None:
        try:
            return orjson.dumps(data)
        except (TypeError, orjson.JSONEncodeError):
            pass
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
