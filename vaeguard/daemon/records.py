"""The daemon's wire formats: score records and dead letters on their way to Kafka.

A refused record becomes a `DeadLetter`, produced to the dead-letter topic with the original
key and bytes and Kafka Connect's DLQ headers (``__connect.errors.*``) plus ``vaeguard.errors.
reason``, so existing DLQ tooling can read it. A dead letter too large for the producer's
``max_request_size`` is sent with its value cut to fit and a ``vaeguard.errors.truncated``
header holding the original size: the reason is never lost to a size limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

try:
    import orjson
except ImportError:
    orjson = None

from vaeguard.ingest import Reason, Rejection, entity_text, short_detail
from vaeguard.scored import ScoredRecord

__all__ = ["DeadLetter", "Reason", "dlq_headers", "dlq_output", "encode_scored", "output_key"]

#: Room kept for the record batch's own framing when fitting a dead letter under the limit.
_FRAMING_BYTES = 1024


@dataclass(slots=True)
class DeadLetter:
    message: Any  # kafka ConsumerRecord
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
    headers = list(m.headers or [])
    headers += [
        ("__connect.errors.topic", m.topic.encode()),
        ("__connect.errors.partition", str(m.partition).encode()),
        ("__connect.errors.offset", str(m.offset).encode()),
        ("__connect.errors.connector.name", connector.encode()),
        ("__connect.errors.task.id", task.encode()),
        ("__connect.errors.stage", r.stage.encode()),
        ("__connect.errors.class.name", dead.stage_class.encode()),
        ("__connect.errors.exception.class.name", r.error_class.encode("utf-8", "replace")),
        ("__connect.errors.exception.message", short_detail(r.detail).encode("utf-8", "replace")),
        ("vaeguard.errors.reason", str(r.reason).encode()),
    ]
    return headers


def dlq_output(
    dead: DeadLetter, topic: str, connector: str, task: str, max_request_size: int
) -> tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]:
    """(topic, key, value, headers) of a dead letter, cut to fit the producer's request limit.

    What gives way, in order: the value (cut, with ``vaeguard.errors.truncated`` = original
    size), then the input's own headers, then the key; the reason headers always stay.
    """
    m = dead.message
    value = bytes(m.value) if m.value is not None else b""
    key = m.key
    headers = dlq_headers(dead, connector, task)
    own = headers[len(m.headers or []) :]
    room = max_request_size - _FRAMING_BYTES - len(key or b"") - _size(headers)
    if room < 0:
        headers = [*own, ("vaeguard.errors.headers_dropped", str(len(m.headers or [])).encode())]
        room = max_request_size - _FRAMING_BYTES - len(key or b"") - _size(headers)
    if room < 0:
        key = None
        room = max_request_size - _FRAMING_BYTES - _size(headers)
    if len(value) > room:
        headers.append(("vaeguard.errors.truncated", str(len(value)).encode()))
        value = value[: max(0, room - 64)]
    return topic, key, value, headers


def _size(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(k.encode("utf-8", "replace")) + len(v or b"") + 16 for k, v in headers)


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
