"""`vaeguard replay`: produce a CSV / JSONL file's rows to a topic as JSON (backfills, load tests)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vaeguard.errors import DataError, VaeguardError
from vaeguard.ingest import to_number

#: Text that is an integer as written (kept exact, not rounded to a float).
_INTEGER = re.compile(r"[+-]?[0-9]+")


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """CSV cells arrive as text: numbers become JSON numbers, empty cells are left out.

    A cell becomes a number when the daemon would read it as one (`ingest.to_number`); any
    other text is kept as text, so "nan" or "1_000" reaches the daemon as the poison it is
    (and is dead-lettered with its reason) instead of breaking the JSON encoder or turning
    into a number the daemon would have refused.
    """
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, str):
            text = value.strip()
            if text == "":
                continue
            number = to_number(text, f"column {name!r}")
            if isinstance(number, float):
                value = int(text) if _INTEGER.fullmatch(text) else number
        out[name] = value
    return out


def replay(
    rows: Iterable[dict[str, Any]],
    topic: str,
    bootstrap: str,
    *,
    rate: float | None = None,
    key_field: str | None = None,
    producer_config: dict[str, Any] | None = None,
    progress=None,
) -> tuple[int, float]:
    """Produce every row (paced at ``rate`` rows/s if given); returns (count, seconds).

    ``producer_config``: kafka-python options over the defaults; None takes the daemon's Kafka
    client settings from the environment (``VAEGUARD_KAFKA__…``: security, ``kafka.client``,
    ``kafka.producer``), so a replay reaches a cluster the daemon reaches."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    if rate is not None and rate <= 0:
        raise DataError("--rate must be a positive number of records per second")
    defaults = {"acks": "all", "linger_ms": 5, "batch_size": 256 * 1024}
    if producer_config is None:
        from vaeguard.config import load_settings

        kafka = load_settings().kafka
        config = kafka.producer_config(**defaults, bootstrap_timeout_ms=10_000)
    else:
        config = {**defaults, "bootstrap_timeout_ms": 10_000, **producer_config}
    config["bootstrap_servers"] = bootstrap.split(",")
    try:
        producer = KafkaProducer(**config)
    except KafkaError as exc:
        raise VaeguardError(f"cannot reach Kafka at {bootstrap}: {type(exc).__name__}") from None
    count = 0
    started = time.perf_counter()
    try:
        for count, row in enumerate(_rows(rows), start=1):
            key = None
            if key_field is not None:
                if row.get(key_field) is None:
                    raise DataError(f"row {count}: key field {key_field!r} is missing")
                key = str(row[key_field]).encode()
            if rate is not None:
                delay = started + (count - 1) / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.send(topic, json.dumps(row, separators=(",", ":")).encode(), key=key)
            if progress is not None and count % 10_000 == 0:
                progress(count)
        producer.flush(timeout=60)
    except KafkaError as exc:
        raise VaeguardError(f"producing to {topic} failed: {type(exc).__name__}: {exc}") from None
    finally:
        producer.close(timeout=10)
    return count, time.perf_counter() - started


def _rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield json_row(row)


def file_rows(path: Path) -> Iterator[dict[str, Any]]:
    from vaeguard.tabular_files import iter_records

    return iter_records(path)
