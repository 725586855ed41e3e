"""`ScoredRecord`: one scored input record, the unit the daemon hands to the output topic and
to the alert layer. Its `to_json()` is the score-record wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Source(NamedTuple):
    """Where a record came from: the coordinates that make replays and dedup possible.

    A named tuple, not a frozen dataclass: the daemon makes one per record, and a frozen
    dataclass costs several times more to build (its ``__init__`` goes through
    ``object.__setattr__``)."""

    topic: str
    partition: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(slots=True)
class ScoredRecord:
    """A record's verdict (read-only by convention: not frozen, because the daemon builds one
    per record and a frozen dataclass's ``__init__`` costs four times a plain one's).

    ``contributions`` lists the top features as dicts with ``feature``, ``observed``,
    ``expected``, ``contribution`` (excess nats) and ``share`` (of the positive excess).
    ``labels`` carries string fields of the input (conditions, tags) for alert routing.
    ``anomaly_likelihood`` (window-mode models that configure one): how unusual the entity's
    recent scores are against its own history, in [0, 1]; absent from the JSON when None.
    ``p_value``: the probability of a score at least this high on normal data, as the alert
    budget judges it (the tail probability against the entity's own recent scores in window
    mode, against the calibration scores in tabular mode); absent when the model has none.
    """

    key: str | None
    ts: Any
    score: float
    threshold: float
    is_anomaly: bool
    severity: str
    contributions: list[dict[str, Any]]
    model_version: str
    source: Source
    labels: dict[str, str] = field(default_factory=dict)
    anomaly_likelihood: float | None = None
    p_value: float | None = None
    #: What ``threshold`` is compared with: the ``score`` (nats), or a window model's
    #: ``anomaly_likelihood`` (a level in [0, 1]); in the JSON only when it is not the score.
    threshold_of: str = "score"

    def to_json(self) -> dict[str, Any]:
        out = {
            "key": self.key,
            "ts": self.ts,
            "score": self.score,
            "threshold": self.threshold,
            "is_anomaly": self.is_anomaly,
            "severity": self.severity,
            "contributions": self.contributions,
            "model_version": self.model_version,
            "source": self.source.to_json(),
        }
        if self.anomaly_likelihood is not None:
            out["anomaly_likelihood"] = self.anomaly_likelihood
        if self.p_value is not None:
            out["p_value"] = self.p_value
        if self.threshold_of != "score":
            out["threshold_of"] = self.threshold_of
        return out
