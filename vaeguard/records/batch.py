"""The pure batch step: consumed messages in → score records, dead letters and outputs out.

What comes in is consumed Kafka messages, or records of another source (`vaeguard.sources.Record`:
`vaeguard score` on a file, the NAB runner): a record that comes decoded is checked by the
decoder's rules (`check_record`), not written as JSON to be parsed back, and then goes the way
every decoded message goes.

No Kafka I/O happens here (the pipeline polls, produces and commits), which makes the step easy
to test and to fuzz. Its one promise: **no record can make it raise**. Decoding and
featurizing refuse bad records one by one; if scoring or encoding still raises, the batch is
bisected down to the rows that fail, and each of those becomes a dead letter with reason
``processing_error`` and the exception in its headers, while every other record is scored.

Sizes are bounded on the way in and on the way out, so no record can make its output larger
than the producer sends: the decode stage refuses a message key or entity over
``max_key_bytes`` (``oversize_key``) and headers over ``max_record_bytes``
(``oversize_headers``); the encode stage measures each score record as the producer will and
dead-letters one that does not fit (``oversize_output``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vaeguard.ingest import (
    STAGE_PRODUCE,
    Reason,
    Rejection,
    check_entity,
    check_envelope,
    check_record,
    check_size,
    decode,
    short_detail,
)
from vaeguard.records.inputs import InputStage
from vaeguard.records.serving import Features, Inbound, Serving
from vaeguard.records.wire import (
    DeadLetter,
    Output,
    dlq_output,
    encode_scored,
    fits,
    output_key,
    record_size,
)
from vaeguard.scored import ScoredRecord
from vaeguard.sources import Record, source_of

log = logging.getLogger("vaeguard.daemon")

#: A `Record` value of these types is JSON text (or none), decoded as a message value is.
_TEXT = bytes | bytearray | memoryview | None

__all__ = ["BatchResult", "Output", "StepSettings", "process", "source_of"]


@dataclass(frozen=True)
class StepSettings:
    """What the step needs to know of the daemon's settings."""

    output_topic: str
    dlq_topic: str
    max_record_bytes: int
    top_k: int
    bands: tuple[tuple[str, float], ...]
    connector: str
    task: str
    #: The producer's max_request_size: a score record larger than this cannot be produced.
    max_request_size: int = 1_048_576
    #: ``all`` (a score record per scored record) or ``anomalies`` (only the anomalous ones).
    output_mode: str = "all"
    #: The largest message key, and entity as text, accepted (scoring.max_key_bytes).
    max_key_bytes: int = 4096


@dataclass
class BatchResult:
    scored: list[ScoredRecord] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    #: Dead letters first, then score records: what must be acknowledged before the commit.
    outputs: list[Output] = field(default_factory=list)
    #: For each output, the consumed message it came from and, for a dead letter, its
    #: `DeadLetter` (None for a score record): what replaces an output the broker refuses.
    origins: list[tuple[Any, DeadLetter | None]] = field(default_factory=list)
    buffered: int = 0  # records that only updated a stateful model's state
    held: int = 0  # messages of an input format whose samples only went into a waiting row
    unmapped: int = 0  # messages of an input format that hold none of the model's features
    replayed: int = 0  # records a stateful model's restored state already holds
    isolated: int = 0  # times a failure inside the step was isolated to its records
    #: A window model's online refit after this batch (``ok``, ``result``, ``windows``,
    #: ``seconds``).
    refit: dict[str, Any] | None = None
    #: Seconds spent per stage: decode, featurize, score (with explanations), encode.
    timings: dict[str, float] = field(default_factory=dict)


def process(
    serving: Serving, messages: Sequence[Any], s: StepSettings, inputs: InputStage | None = None
) -> BatchResult:
    """Run one batch of consumed messages and `Record` items through a model (see the module
    docstring).

    ``inputs``: the configured input format (`input.format` other than flat), whose records,
    and rows closed since the last batch, are what the model sees."""
    result = BatchResult()
    t0 = time.perf_counter()
    fresh = messages
    if serving.stateful:
        fresh = [m for m in messages if not serving.covers(source_of(m))]
        result.replayed = len(messages) - len(fresh)

    items: list[Inbound] = []
    origin: list[Any] = []  # the message (or Record) of each item
    max_bytes, max_key = s.max_record_bytes, s.max_key_bytes
    short_text = max_key // 4  # a string this short is within max_key_bytes in any UTF-8
    # The entity, and the ``key`` field that keys a score record (`output_key`).
    fields = tuple(dict.fromkeys(("key", getattr(serving, "entity_field", None) or "key")))
    reader, leftover = inputs.bind(serving) if inputs is not None else (None, None)
    for m in fresh:
        key, headers = m.key, getattr(m, "headers", None)
        if headers or (key is not None and len(key) > max_key):
            refused = check_envelope(key, headers, max_key, max_bytes)
            if refused is not None:
                result.dead.append(DeadLetter(m, refused))
                continue
        if type(m) is Record and not isinstance(m.value, _TEXT):
            obj = check_size(m.size, max_bytes) if m.size is not None else None
            if obj is None:
                obj = check_record(m.value)
        else:
            obj = decode(m.value, max_bytes)
        if type(obj) is not dict:
            result.dead.append(DeadLetter(m, obj))
            continue
        if reader is not None:
            where = source_of(m)
            read = reader.read(obj, m, (where.topic, where.partition, where.offset))
            result.held += read.held
            result.unmapped += read.unmapped
            for rejection, o in read.refused:
                result.dead.append(DeadLetter(o, rejection))
            for record, o in read.records:
                _take(record, o, fields, max_key, short_text, items, origin, result)
            continue
        _take(obj, m, fields, max_key, short_text, items, origin, result)
    if reader is not None:  # rows that waited long enough, and a swapped model's leftovers
        for read in (leftover, reader.due()):
            for rejection, o in read.refused:
                result.dead.append(DeadLetter(o, rejection))
            for record, o in read.records:
                _take(record, o, fields, max_key, short_text, items, origin, result)

    stage = _stage(serving)
    scored: list[tuple[int, ScoredRecord]] = []  # (item index, record)
    t1 = t2 = time.perf_counter()
    if items:
        try:
            features = serving.featurize(items)
            t2 = time.perf_counter()
        except Exception as exc:
            features = None
            _log_isolated("featurize", exc, len(items))
            result.isolated += 1
            if serving.stateful:  # its state may hold part of the batch: not safe to retry
                for m in origin:
                    result.dead.append(DeadLetter(m, _processing_error(exc), stage))
            else:
                for i, item in enumerate(items):
                    scored += _featurize_and_score_one(serving, item, i, origin, s, result)
        if features is not None:
            for r in features.rejected:
                result.dead.append(DeadLetter(origin[r.index], r, stage))
            result.buffered += features.buffered
            scored += _score_rows(
                serving, features, items, list(range(len(features))), s, result, origin
            )

    t3 = time.perf_counter()
    if items:
        try:
            result.refit = serving.learn()
        except Exception as exc:  # learning is an extra: it never costs a record
            _log_isolated("learn", exc, 0)
    t4 = time.perf_counter()
    dead_outputs = [
        dlq_output(d, s.dlq_topic, s.connector, s.task, s.max_request_size) for d in result.dead
    ]
    dead_origins: list[tuple[Any, DeadLetter | None]] = [(d.message, d) for d in result.dead]
    score_outputs: list[Output] = []
    score_origins: list[tuple[Any, DeadLetter | None]] = []
    only_anomalies = s.output_mode == "anomalies"
    limit = s.max_request_size
    near_limit = limit - 1024  # below it a score record fits whatever the framing (`fits`)
    for i, record in sorted(scored, key=lambda p: p[0]):
        if only_anomalies and not record.is_anomaly:
            result.scored.append(record)
            continue
        m = origin[i]
        try:
            value = encode_scored(record)
            key = output_key(m, items[i].record)
            refused = None
            if len(value) + len(key or b"") > near_limit and not fits(key, value, limit):
                refused = Rejection(
                    Reason.OVERSIZE_OUTPUT,
                    "MessageSizeTooLargeError",
                    f"the score record is {record_size(key, value)} bytes as the producer "
                    f"measures it, more than its max_request_size={s.max_request_size}",
                    STAGE_PRODUCE,
                )
        except Exception as exc:
            result.isolated += 1
            refused = _processing_error(exc)
        if refused is not None:
            dead = DeadLetter(m, refused, "vaeguard.records.wire")
            result.dead.append(dead)
            dead_outputs.append(
                dlq_output(dead, s.dlq_topic, s.connector, s.task, s.max_request_size)
            )
            dead_origins.append((m, dead))
            continue
        score_outputs.append((s.output_topic, key, value, None))
        score_origins.append((m, None))
        result.scored.append(record)
    result.outputs = dead_outputs + score_outputs
    result.origins = dead_origins + score_origins
    result.timings = {
        "decode": t1 - t0,
        "featurize": max(0.0, t2 - t1),
        "score": t3 - max(t1, t2),
        "encode": time.perf_counter() - t4,
    }
    if result.refit is not None:
        result.timings["learn"] = t4 - t3
    return result


def _take(obj: dict, m: Any, fields, max_key: int, short_text: int, items, origin, result) -> None:
    """A decoded record into the batch, unless its entity is too large to key a score."""
    for name in fields:
        entity = obj.get(name)
        if entity is not None and (type(entity) is not str or len(entity) > short_text):
            refused = check_entity(obj, name, max_key)
            if refused is not None:
                result.dead.append(DeadLetter(m, refused))
                return
    items.append(Inbound(obj, source_of(m), m.key, m.timestamp))
    origin.append(m)


def _score_rows(serving, features: Features, items, rows: list[int], s, result, origin):
    """Score ``rows`` of ``features`` in one call; on failure, bisect to the failing rows."""
    if not rows:
        return []
    part = features if len(rows) == len(features) else features.take(rows)
    kept = [items[i] for i in part.keep.tolist()]
    try:
        explain = "anomalies" if s.output_mode == "anomalies" else "all"
        records = serving.score(part, kept, top_k=s.top_k, bands=s.bands, explain=explain)
        if len(records) != len(kept):
            raise RuntimeError(
                f"the model returned {len(records)} score records for {len(kept)} rows"
            )
        return list(zip(part.keep.tolist(), records, strict=True))
    except Exception as exc:
        if len(rows) == 1:
            result.isolated += 1
            _log_isolated("score", exc, 1)
            i = int(part.keep[0])
            result.dead.append(DeadLetter(origin[i], _processing_error(exc), _stage(serving)))
            return []
        mid = len(rows) // 2
        return _score_rows(serving, features, items, rows[:mid], s, result, origin) + _score_rows(
            serving, features, items, rows[mid:], s, result, origin
        )


def _featurize_and_score_one(serving, item: Inbound, i: int, origin, s, result):
    """The fallback of a stateless model whose batch featurize raised: one record alone."""
    stage = _stage(serving)
    try:
        features = serving.featurize([item])
    except Exception as exc:
        result.dead.append(DeadLetter(origin[i], _processing_error(exc), stage))
        return []
    for r in features.rejected:
        result.dead.append(DeadLetter(origin[i], r, stage))
    out = _score_rows(serving, features, [item], list(range(len(features))), s, result, [origin[i]])
    return [(i, record) for _, record in out]


def _stage(serving) -> str:
    """Kafka Connect's ``class.name`` header: the class that refused the record."""
    return f"{type(serving).__module__}.{type(serving).__name__}"


def _processing_error(exc: BaseException) -> Rejection:
    return Rejection(
        Reason.PROCESSING_ERROR,
        type(exc).__qualname__,
        short_detail(f"{exc}") or type(exc).__name__,
    )


_last_logged = 0.0


def _log_isolated(stage: str, exc: BaseException, n: int) -> None:
    """Log the traceback of an isolated failure, at most once a minute (it is a bug of ours
    or of the model, and a poison stream must not flood the log)."""
    global _last_logged
    now = time.monotonic()
    if now - _last_logged < 60:
        return
    _last_logged = now
    log.error(
        "a failure inside the batch step was isolated to its records",
        exc_info=exc,
        extra={"stage": stage, "records": n},
    )
