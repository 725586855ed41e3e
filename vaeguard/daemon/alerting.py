"""Where the daemon gets its alert layer (the one place that knows how alerting is built)."""

from __future__ import annotations

from typing import Any

from vaeguard.alerts import layer as alert_layer_module


def make_alert_layer(alerts_settings: Any, kafka_config: dict[str, Any]):
    """The configured alert layer, or the placeholder that logs anomalies."""
    build = getattr(alert_layer_module, "build_alert_layer", None)
    if build is None:
        return alert_layer_module.AlertLayer()
    return build(alerts_settings, kafka_config=kafka_config)
