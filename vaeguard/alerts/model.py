"""`Alert`: what a sink receives. A pydantic model with a stable JSON form.

An alert stands for one *episode*: an entity of a stream from its first anomalous record until
it has been normal for a while. Its id hashes the group (stream + entity by default) and the
source coordinates of the episode's first anomalous record, so replaying the same records
yields the same id and receivers can deduplicate. Every notification of an episode (firing,
repeat, escalation, resolved) carries that id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1


class AlertSource(BaseModel):
    """Kafka coordinates of a record."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int


class FeatureContribution(BaseModel):
    """One feature's share of the anomaly: observed vs what the model expected."""

    model_config = ConfigDict(frozen=True)

    feature: str
    observed: float | None = None
    expected: float | None = None
    #: Excess negative log-likelihood of this feature, in nats.
    contribution: float | None = None
    #: Fraction of the record's positive excess.
    share: float | None = None

    @field_validator("observed", "expected", "contribution", "share", mode="before")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        # NaN / inf are not JSON; a missing value is None.
        if isinstance(v, float | int) and not math.isfinite(float(v)):
            return None
        return v


class Alert(BaseModel):
    """One notification about an episode (or a system event, ``kind="system"``)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    id: str
    status: Literal["firing", "resolved"] = "firing"
    kind: Literal["anomaly", "system", "test"] = "anomaly"
    #: The input topic (for system alerts: the emitting component, e.g. ``vaeguard.retrain``).
    stream: str
    entity: str | None = None
    #: The values that group records into this alert (``alerts.group_by``).
    group: dict[str, str | None] = Field(default_factory=dict)
    #: Severity of the latest anomalous record, and the worst one of the episode so far.
    severity: str
    peak_severity: str | None = None
    score: float | None = None
    peak_score: float | None = None
    threshold: float | None = None
    first_seen: dt.datetime
    last_seen: dt.datetime
    resolved_at: dt.datetime | None = None
    #: Anomalous records seen in the episode.
    anomalous_records: int = 1
    top_features: list[FeatureContribution] = Field(default_factory=list)
    model_version: str | None = None
    #: The episode's first anomalous record (part of the id) and its latest one.
    episode: AlertSource | None = None
    source: AlertSource | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    #: Free-form facts of system alerts (e.g. the failed validation gate's numbers).
    details: dict[str, Any] = Field(default_factory=dict)
    summary: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as ISO 8601 UTC, ``Z`` suffix)."""
        return self.model_dump(mode="json")

    def json_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no spaces. Same alert, same bytes."""
        return canonical_json(self.to_json())

    @property
    def title(self) -> str:
        """Short text for subjects and headers: ``[FIRING critical] cpu_util on host-7``."""
        where = f" on {self.entity}" if self.entity else ""
        return f"[{self.status.upper()} {self.severity}] {self.stream}{where}"

    @classmethod
    def system(
        cls,
        component: str,
        summary: str,
        *,
        severity: str = "major",
        entity: str | None = None,
        labels: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
        at: dt.datetime | None = None,
        key: str | None = None,
    ) -> Alert:
        """An alert not tied to a record, e.g. a retraining run that failed its validation gate.

        ``key`` makes the id deterministic (same key, same id); by default it is the summary and
        the time, so every call is a distinct alert.
        """
        at = at or dt.datetime.now(dt.UTC)
        ident = key if key is not None else f"{summary}@{at.isoformat()}"
        return cls(
            id=_digest({"component": component, "entity": entity, "key": ident}),
            kind="system",
            stream=component,
            entity=entity,
            group={"component": component, "entity": entity},
            severity=severity,
            peak_severity=severity,
            first_seen=at,
            last_seen=at,
            labels=dict(labels or {}),
            details=dict(details or {}),
            summary=summary,
        )


def canonical_json(data: Any) -> bytes:
    # A lone surrogate (a record's JSON may carry "\ud800") has no UTF-8 form; it can only sit
    # inside a JSON string, where backslashreplace writes exactly its JSON escape.
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace")


def _digest(data: Any) -> str:
    return hashlib.sha256(canonical_json(data)).hexdigest()[:32]


def alert_id(group: Mapping[str, str | None], episode: AlertSource) -> str:
    """Deterministic id of an episode: the group's values and its first record's coordinates."""
    return _digest({"group": dict(group), "episode": episode.model_dump()})


def to_datetime(ts: Any, fallback: float) -> dt.datetime:
    """A record's ``ts`` as an aware UTC datetime; ``fallback`` (unix seconds) if unusable.

    Numbers are unix seconds, or milliseconds when larger than 1e11 (Kafka timestamps); strings
    are ISO 8601 (naive means UTC).
    """
    try:
        if isinstance(ts, bool):
            raise TypeError
        if isinstance(ts, int | float):
            value = float(ts)
            if not math.isfinite(value):
                raise ValueError
            if abs(value) > 1e11:
                value /= 1000.0
            return dt.datetime.fromtimestamp(value, dt.UTC)
        if isinstance(ts, str):
            parsed = dt.datetime.fromisoformat(ts.strip())
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return parsed.astimezone(dt.UTC)
        if isinstance(ts, dt.datetime):
            return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        pass
    return dt.datetime.fromtimestamp(fallback, dt.UTC)


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.4g}"


def firing_summary(
    stream: str,
    entity: str | None,
    score: float,
    threshold: float,
    severity: str,
    top: list[FeatureContribution],
) -> str:
    """``cpu_util anomalous on host-7: score 41.2 > 12.0 (critical); top: cpu_user 97 (expected 41)``"""
    where = f" on {entity}" if entity else ""
    text = f"{stream} anomalous{where}: score {score:.1f} > {threshold:.1f} ({severity})"
    if top:
        parts = [f"{c.feature} {_num(c.observed)} (expected {_num(c.expected)})" for c in top]
        text += "; top: " + ", ".join(parts)
    return text


def resolved_summary(
    stream: str,
    entity: str | None,
    normal_records: int,
    anomalous_records: int,
    peak_score: float | None,
    peak_severity: str | None,
) -> str:
    """``cpu_util back to normal on host-7 after 5 normal records (12 anomalous, peak 41.2 critical)``"""
    where = f" on {entity}" if entity else ""
    peak = f", peak {peak_score:.1f} {peak_severity}" if peak_score is not None else ""
    plural = "s" if anomalous_records != 1 else ""
    return (
        f"{stream} back to normal{where} after {normal_records} normal records "
        f"({anomalous_records} anomalous record{plural}{peak})"
    )
