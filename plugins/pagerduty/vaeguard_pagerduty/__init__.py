"""vaeguard-pagerduty: open and resolve PagerDuty incidents with the Events API v2.

Install ``pip install vaeguard-pagerduty`` (or ``pip install -e plugins/pagerduty``) and
configure::

    alerts:
      sinks:
        - name: oncall
          type: pagerduty
          routing_key: R0UT1NGKEY...            # the service integration key (a secret)
      routes:
        - match: {min_severity: major}
          sinks: [oncall]

A firing alert sends ``event_action: trigger``, a resolved one ``resolve``, both with
``dedup_key`` = the alert id, which is stable for an episode (and across replays), so repeats
update the same incident and the resolve closes it. vaeguard severities map to PagerDuty's
(critical / error / warning / info) through ``severity_map``. 429 and 5xx are retried; 400
(an invalid event) dead-letters that alert, unless it names the routing key (the sink's
setting: parked until fixed). Text fields are single lines within the API's limits (summary
1024 characters, source and the others 255). ``events_url`` points elsewhere for tests or a
proxy.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, HttpUrl, SecretStr, field_validator

from vaeguard.alerts.http import HttpPoster
from vaeguard.alerts.model import Alert
from vaeguard.alerts.sink import PermanentSinkError, Sink, SinkSettings, UndeliverableAlertError
from vaeguard.alerts.text import one_line

__version__ = "0.1.0"

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
PD_SEVERITIES = ("critical", "error", "warning", "info")
#: Events API v2 limits: summary 1024 characters, dedup_key 255; the other short fields are
#: kept to 255 too (PagerDuty shows them as one-line titles).
SUMMARY_MAX = 1024
FIELD_MAX = 255


class PagerDutySettings(SinkSettings):
    routing_key: SecretStr
    events_url: HttpUrl = HttpUrl(EVENTS_URL)
    #: vaeguard severity → PagerDuty severity; unmapped ones become ``error``.
    severity_map: dict[str, str] = Field(
        default_factory=lambda: {"warning": "warning", "major": "error", "critical": "critical"}
    )
    #: Shown as the event's ``client`` / ``client_url`` (e.g. a dashboard link).
    client: str = "vaeguard"
    client_url: HttpUrl | None = None
    #: Event ``source`` when an alert has no entity; by default the entity, else the stream.
    source: str | None = None

    @field_validator("severity_map")
    @classmethod
    def _severities(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k, s in v.items() if s not in PD_SEVERITIES)
        if bad:
            raise ValueError(
                f"values must be one of {', '.join(PD_SEVERITIES)} (not for {', '.join(bad)})"
            )
        return v


def dedup_key(alert: Alert) -> str:
    """The alert id; an over-long one (only a hand-made alert has that) is hashed to fit."""
    if 0 < len(alert.id) <= FIELD_MAX:
        return alert.id
    return hashlib.sha256(alert.id.encode("utf-8", "backslashreplace")).hexdigest()


def event(alert: Alert, settings: PagerDutySettings) -> dict[str, Any]:
    """The Events API v2 body for one alert."""
    key = settings.routing_key.get_secret_value()
    if alert.status == "resolved":
        return {"routing_key": key, "event_action": "resolve", "dedup_key": dedup_key(alert)}
    details: dict[str, Any] = {
        "score": alert.score,
        "threshold": alert.threshold,
        "peak_score": alert.peak_score,
        "anomalous_records": alert.anomalous_records,
        "model_version": alert.model_version,
        "top_features": [c.model_dump() for c in alert.top_features],
        "labels": alert.labels,
    }
    if alert.episode is not None:
        details["episode_start"] = alert.episode.model_dump()
    if alert.details:
        details["details"] = alert.details
    source = one_line(alert.entity or settings.source or alert.stream, FIELD_MAX)
    body: dict[str, Any] = {
        "routing_key": key,
        "event_action": "trigger",
        "dedup_key": dedup_key(alert),
        "payload": {
            "summary": one_line(alert.summary, SUMMARY_MAX) or alert.title,
            "source": source or "vaeguard",  # required, non-empty
            "severity": settings.severity_map.get(alert.severity, "error"),
            "timestamp": alert.first_seen.isoformat(),
            "component": one_line(alert.stream, FIELD_MAX),
            "class": alert.kind,
            "custom_details": details,
        },
        "client": settings.client,
    }
    if alert.labels:
        group = ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
        body["payload"]["group"] = one_line(group, FIELD_MAX)
    if settings.client_url is not None:
        body["client_url"] = str(settings.client_url)
    return body


class PagerDutySink(Sink):
    """PagerDuty Events API v2: trigger on firing, resolve on resolved, dedup_key = alert id."""

    Settings = PagerDutySettings
    max_batch = 1

    def __init__(self, settings: PagerDutySettings, context):
        super().__init__(settings, context)
        self.url = str(settings.events_url)
        self.http = HttpPoster(context.timeout_s, headers={"Content-Type": "application/json"})

    def send(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            try:
                self.http.post(self.url, content=json.dumps(event(alert, self.settings)).encode())
            except UndeliverableAlertError as exc:
                # PagerDuty rejects a wrong routing key with 400 as well: that is the sink's
                # setting, so every alert would fail alike; park it until the key is fixed.
                if "routing key" in str(exc).lower() or "routing_key" in str(exc).lower():
                    raise PermanentSinkError(str(exc)) from None
                raise

    def close(self) -> None:
        self.http.close()
