"""Alerting: the alert model, sink plugins (entry-point group `vaeguard.sinks`), routing, dedup
and delivery that never silently drops an alert.

What a sink plugin needs is importable from here: `Sink`, `SinkSettings`, `SinkContext`, the
`Alert` model, the sink errors, `HttpPoster` and the text helpers. Names other than the errors
are imported on first use, so importing one alerting module does not load pydantic or httpx.
Test helpers stay in `vaeguard.alerts.testing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaeguard._lazy import lazy_exports
from vaeguard.errors import (
    PermanentSinkError,
    RetryableSinkError,
    SinkError,
    UndeliverableAlertError,
)

if TYPE_CHECKING:
    from vaeguard.alerts.http import HttpPoster
    from vaeguard.alerts.model import Alert, AlertSource, FeatureContribution
    from vaeguard.alerts.sink import Sink, SinkContext, SinkSettings
    from vaeguard.alerts.text import has_unsafe, header_value, one_line, truncate

#: Public names imported on first access: name → home module.
_LAZY = {
    "Alert": "vaeguard.alerts.model",
    "AlertSource": "vaeguard.alerts.model",
    "FeatureContribution": "vaeguard.alerts.model",
    "Sink": "vaeguard.alerts.sink",
    "SinkContext": "vaeguard.alerts.sink",
    "SinkSettings": "vaeguard.alerts.sink",
    "HttpPoster": "vaeguard.alerts.http",
    "has_unsafe": "vaeguard.alerts.text",
    "header_value": "vaeguard.alerts.text",
    "one_line": "vaeguard.alerts.text",
    "truncate": "vaeguard.alerts.text",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "Alert",
    "AlertSource",
    "FeatureContribution",
    "HttpPoster",
    "PermanentSinkError",
    "RetryableSinkError",
    "Sink",
    "SinkContext",
    "SinkError",
    "SinkSettings",
    "UndeliverableAlertError",
    "has_unsafe",
    "header_value",
    "one_line",
    "truncate",
]
