"""Alerting: the alert model, sink plugins (entry-point group `vaeguard.sinks`), routing, dedup
and delivery that never silently drops an alert."""
