"""Telling people when retraining fails: one system alert through the configured sinks."""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger("vaeguard.retrain")


def json_safe(value: Any) -> Any:
    """Non-finite floats become None, so summaries and alert details are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def outcome_alert(summary: str, registry: str, details: dict[str, Any], *, severity: str = "major"):
    """A system alert about a retraining run (rejected candidate, failed run)."""
    from vaeguard.alerts.model import Alert

    return Alert.system(
        "vaeguard.retrain",
        summary,
        severity=severity,
        entity=registry,
        labels={"registry": registry},
        details=json_safe(details),
    )


def send_alert(alert_layer, alert) -> bool:
    """Deliver through the alert layer; a failure is logged, never raised (the run is over)."""
    try:
        alert_layer.notify(alert)
    except Exception as exc:
        log.error(
            "could not deliver the retraining alert",
            extra={"error": f"{type(exc).__name__}: {exc}", "alert": alert.summary},
        )
        return False
    return True
