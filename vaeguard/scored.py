"""`ScoredRecord`: one scored input record, the unit the daemon hands to the output topic and
to the alert layer. Its `to_json()` is the score-record wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Source:
    """Where a record came from: the coordinates that make replays and dedup possible."""

    topic: str
    partition: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True)
class ScoredRecord:
    """A record's verdict.

    ``contributions`` lists the top features as dicts with ``feature``, ``observed``,
    ``expected``, ``contribution`` (excess nats) and ``share`` (of the positive excess).
    ``labels`` carries string fields of the input (conditions, tags) for alert routing.
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

    def to_json(self) -> dict[str, Any]:
        return {
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
