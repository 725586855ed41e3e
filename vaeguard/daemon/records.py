"""Kafka messages in, score records and dead letters out: the daemon's wire formats.

Input: a JSON object per message with the model's features, optional ``key`` (the entity; else
the message key), ``ts`` and condition fields. Anything that cannot be scored becomes a
`DeadLetter`, produced to the dead-letter topic with the original key and bytes and Kafka
Connect's DLQ headers (``__connect.errors.*``), so existing DLQ tooling can read it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaeguard.scored import ScoredRecord, Source
from vaeguard.severity import NORMAL


class Reason:
    """Dead-letter reason codes (the ``reason`` label of the metric, the ``vaeguard.errors.reason`` header)."""

    EMPTY = "empty_value"
    OVERSIZE = "oversize"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FEATURE = "missing_feature"
    NON_NUMERIC = "non_numeric_feature"
    NON_FINITE = "non_finite"
    INVALID_FIELD = "invalid_field"


#: Kafka Connect's "stage" of a failure: decoding the value, or the task rejecting its content.
STAGE_DECODE = "VALUE_CONVERTER"
STAGE_VALIDATE = "TASK_PUT"


@dataclass(slots=True)
class DeadLetter:
    message: Any  # kafka ConsumerRecord
    reason: str
    error_class: str
    detail: str
    stage: str = STAGE_VALIDATE
    stage_class: str = "vaeguard.daemon.featurize.TabularFeaturizer"


class _NonFiniteLiteral(ValueError):
    pass


def _reject_constant(name: str):
    raise _NonFiniteLiteral(name)


# Python's json accepts NaN / Infinity / -Infinity, which are not JSON: refuse them outright.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_messages(
    messages: Sequence[Any], max_bytes: int
) -> tuple[list[Any], list[dict[str, Any]], list[DeadLetter]]:
    """Split messages into (kept messages, their JSON objects, dead letters)."""
    kept: list[Any] = []
    objects: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    decode = _DECODER.decode
    for m in messages:
        value = m.value
        if value is None:
            dead.append(_decode_error(m, Reason.EMPTY, "ValueError", "the message has no value"))
            continue
        if len(value) > max_bytes:
            dead.append(
                _decode_error(
                    m,
                    Reason.OVERSIZE,
                    "ValueError",
                    f"the value is {len(value)} bytes, more than scoring.max_record_bytes={max_bytes}",
                )
            )
            continue
        try:
            obj = decode(value.decode("utf-8"))
        except UnicodeDecodeError as exc:
            dead.append(_decode_error(m, Reason.INVALID_UTF8, "UnicodeDecodeError", str(exc)))
            continue
        except _NonFiniteLiteral as exc:
            dead.append(
                _decode_error(
                    m,
                    Reason.NON_FINITE,
                    "ValueError",
                    f"{exc} is not a JSON number (NaN/±Infinity)",
                )
            )
            continue
        except (ValueError, RecursionError) as exc:
            dead.append(
                _decode_error(m, Reason.INVALID_JSON, f"json.{type(exc).__name__}", str(exc))
            )
            continue
        if type(obj) is not dict:
            dead.append(
                _decode_error(
                    m,
                    Reason.NOT_AN_OBJECT,
                    "TypeError",
                    f"expected a JSON object, got {_json_type(obj)}",
                )
            )
            continue
        kept.append(m)
        objects.append(obj)
    return kept, objects, dead


def _decode_error(m, reason: str, error_class: str, detail: str) -> DeadLetter:
    return DeadLetter(m, reason, error_class, detail, STAGE_DECODE, "vaeguard.daemon.records")


def _json_type(obj: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(obj), "a number"
    )


def dlq_headers(dead: DeadLetter, connector: str, task: str) -> list[tuple[str, bytes]]:
    """The original headers plus Kafka Connect's error-context headers and our reason code."""
    m = dead.message
    headers = list(m.headers or [])
    headers += [
        ("__connect.errors.topic", m.topic.encode()),
        ("__connect.errors.partition", str(m.partition).encode()),
        ("__connect.errors.offset", str(m.offset).encode()),
        ("__connect.errors.connector.name", connector.encode()),
        ("__connect.errors.task.id", task.encode()),
        ("__connect.errors.stage", dead.stage.encode()),
        ("__connect.errors.class.name", dead.stage_class.encode()),
        ("__connect.errors.exception.class.name", dead.error_class.encode()),
        ("__connect.errors.exception.message", dead.detail.encode("utf-8", "replace")),
        ("vaeguard.errors.reason", dead.reason.encode()),
    ]
    return headers


def entity_of(message, obj: dict[str, Any]) -> str | None:
    """The entity a record is about: its ``key`` field, else the message key."""
    key = obj.get("key")
    if key is not None:
        return key if isinstance(key, str) else json.dumps(key)
    if message.key is not None:
        return message.key.decode("utf-8", "replace")
    return None


def output_key(message, obj: dict[str, Any]) -> bytes | None:
    """Score records are keyed like their input: the message key, else the record's ``key``."""
    if message.key is not None:
        return message.key
    key = obj.get("key")
    if key is None:
        return None
    return (key if isinstance(key, str) else json.dumps(key)).encode()


def timestamp_of(message, obj: dict[str, Any]) -> Any:
    """The record's ``ts`` field, else the message timestamp (ms since the epoch)."""
    ts = obj.get("ts")
    if ts is None:
        return message.timestamp
    if isinstance(ts, float) and not math.isfinite(ts):
        return None
    return ts


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in obj.items() if type(v) is str and k != "key" and k != "ts"}


def build_scored(
    messages: Sequence[Any],
    objects: Sequence[dict[str, Any]],
    entities: Sequence[str | None],
    timestamps: Sequence[Any],
    scores: np.ndarray,
    threshold: float,
    contributions: np.ndarray,
    observed: np.ndarray,
    expected: np.ndarray,
    feature_names: Sequence[str],
    *,
    top_k: int,
    bands: Sequence[tuple[str, float]],
    model_version: str,
) -> list[ScoredRecord]:
    """One `ScoredRecord` per scored row; explanations and severities computed for the whole batch.

    Equivalent to `ScoreResult.top_contributions` and `severity.severity` row by row, but
    vectorized: per-row Python work is only building the output objects.
    """
    n, d = contributions.shape
    k = min(top_k, d)
    if k:
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
        positive = np.clip(contributions, 0.0, None)
        total = positive.sum(axis=1, keepdims=True)
        share = np.divide(positive, total, out=np.zeros_like(positive), where=total > 0)
        top_c = np.take_along_axis(contributions, order, 1).tolist()
        top_s = np.take_along_axis(share, order, 1).tolist()
        top_o = np.take_along_axis(observed, order, 1).tolist()
        top_e = np.take_along_axis(expected, order, 1).tolist()
        order_l = order.tolist()
    anomalous = scores > threshold
    names = [NORMAL, *(b for b, _ in bands)]
    minimums = np.asarray([m for _, m in bands], dtype="float64")
    band = np.where(anomalous, np.searchsorted(minimums, scores - threshold, side="right"), 0)
    score_l = scores.tolist()
    anomalous_l = anomalous.tolist()
    band_l = band.tolist()
    threshold = float(threshold)
    out = []
    for i in range(n):
        m = messages[i]
        obj = objects[i]
        contribs = (
            [
                {
                    "feature": feature_names[j],
                    "observed": o,
                    "expected": e,
                    "contribution": c,
                    "share": s,
                }
                for j, o, e, c, s in zip(
                    order_l[i], top_o[i], top_e[i], top_c[i], top_s[i], strict=True
                )
            ]
            if k
            else []
        )
        out.append(
            ScoredRecord(
                key=entities[i],
                ts=timestamps[i],
                score=score_l[i],
                threshold=threshold,
                is_anomaly=anomalous_l[i],
                severity=names[band_l[i]],
                contributions=contribs,
                model_version=model_version,
                source=Source(m.topic, m.partition, m.offset),
                labels=_labels(obj),
            )
        )
    return out


def encode_scored(record: ScoredRecord) -> bytes:
    return json.dumps(record.to_json(), separators=(",", ":"), allow_nan=False).encode()
