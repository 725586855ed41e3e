"""vaeguard-alertmanager: push vaeguard alerts into Prometheus Alertmanager.

Install ``pip install vaeguard-alertmanager`` (or ``pip install -e plugins/alertmanager``)
and configure::

    alerts:
      sinks:
        - name: am
          type: alertmanager
          url: http://alertmanager:9093
          labels: {team: sre}                 # added to every alert
          repeat_interval_s: 120              # re-send firing alerts well within AM's resolve_timeout

Alerts are POSTed in batches to ``/api/v2/alerts`` with labels (``alertname``, ``stream``,
``entity``, ``severity``, ``vaeguard_id`` and the record's string labels), annotations
(``summary``, ``description``, score, threshold, top features), ``startsAt`` and, for
resolved alerts, ``endsAt``. Alertmanager itself dedups by label set, groups, silences and
routes them from there. A firing alert without ``endsAt`` stays active for Alertmanager's
``resolve_timeout`` (5 m by default), so give this sink a ``repeat_interval_s`` below it, or
set ``firing_ttl_s`` to send an explicit ``endsAt`` of now + ttl.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from pydantic import Field, HttpUrl, SecretStr, field_validator

from vaeguard.alerts.http import HttpPoster
from vaeguard.alerts.model import Alert
from vaeguard.alerts.sink import Sink, SinkSettings

__version__ = "0.1.0"

_LABEL_RE = re.compile(r"[^a-zA-Z0-9_]")
_VALID_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class AlertmanagerSettings(SinkSettings):
    #: Base URL of Alertmanager (the API path is appended).
    url: HttpUrl
    api_path: str = "/api/v2/alerts"
    alertname: str = "VaeguardAnomaly"
    #: Static labels added to every alert.
    labels: dict[str, str] = Field(default_factory=dict)
    #: Link back to where the alert came from (Alertmanager's generatorURL).
    generator_url: HttpUrl | None = None
    #: If set, firing alerts carry endsAt = now + this many seconds.
    firing_ttl_s: float | None = None
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    verify_tls: bool = True

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in v if not _VALID_LABEL.match(k) or k.startswith("__"))
        if bad:
            raise ValueError(
                f"label names must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __ "
                f"(not {', '.join(map(repr, bad))})"
            )
        return v

    @field_validator("alertname")
    @classmethod
    def _alertname(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


def label_name(name: str) -> str:
    """A Prometheus-valid label name (``[a-zA-Z_][a-zA-Z0-9_]*``), never one of the names
    starting with ``__`` that Prometheus reserves (Alertmanager may drop or refuse those)."""
    clean = _LABEL_RE.sub("_", name)
    if not clean or clean[0].isdigit():
        clean = f"_{clean}"
    if clean.startswith("__"):
        clean = "_" + clean.lstrip("_")
    return clean


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def am_alert(
    alert: Alert, settings: AlertmanagerSettings, now: dt.datetime | None = None
) -> dict[str, Any]:
    """One entry of the POST /api/v2/alerts array."""
    labels = {label_name(k): v for k, v in alert.labels.items()}
    labels.update(
        {
            "alertname": settings.alertname
            if alert.kind == "anomaly"
            else f"Vaeguard{alert.kind.title()}",
            "stream": alert.stream,
            "severity": alert.severity,
            "vaeguard_id": alert.id,
        }
    )
    if alert.entity:
        labels["entity"] = alert.entity
    labels.update(settings.labels)
    annotations = {"summary": alert.summary, "description": alert.summary}
    if alert.score is not None:
        annotations["score"] = f"{alert.score:.4g}"
    if alert.threshold is not None:
        annotations["threshold"] = f"{alert.threshold:.4g}"
    if alert.top_features:
        annotations["top_features"] = ", ".join(
            f"{c.feature}={c.observed:.4g} (expected {c.expected:.4g})"
            if c.observed is not None and c.expected is not None
            else c.feature
            for c in alert.top_features
        )
    if alert.model_version:
        annotations["model_version"] = alert.model_version
    out: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": _iso(alert.first_seen),
    }
    if alert.status == "resolved":
        out["endsAt"] = _iso(alert.resolved_at or now or dt.datetime.now(dt.UTC))
    elif settings.firing_ttl_s:
        out["endsAt"] = _iso(
            (now or dt.datetime.now(dt.UTC)) + dt.timedelta(seconds=settings.firing_ttl_s)
        )
    if settings.generator_url is not None:
        out["generatorURL"] = str(settings.generator_url)
    return out


class AlertmanagerSink(Sink):
    """Prometheus Alertmanager API v2: batches of alerts with labels, annotations, startsAt/endsAt."""

    Settings = AlertmanagerSettings
    max_batch = 100

    def __init__(self, settings: AlertmanagerSettings, context):
        super().__init__(settings, context)
        self.url = str(settings.url).rstrip("/") + "/" + settings.api_path.lstrip("/")
        headers = {"Content-Type": "application/json"}
        if settings.bearer_token is not None:
            headers["Authorization"] = f"Bearer {settings.bearer_token.get_secret_value()}"
        elif settings.username is not None and settings.password is not None:
            import base64

            token = base64.b64encode(
                f"{settings.username}:{settings.password.get_secret_value()}".encode()
            ).decode()
            headers["Authorization"] = f"Basic {token}"
        self.http = HttpPoster(context.timeout_s, verify_tls=settings.verify_tls, headers=headers)

    def send(self, alerts: list[Alert]) -> None:
        now = dt.datetime.now(dt.UTC)
        body = json.dumps([am_alert(a, self.settings, now) for a in alerts]).encode()
        self.http.post(self.url, content=body)

    def close(self) -> None:
        self.http.close()
