"""Prometheus metrics of alerting, defined once in the default registry (served by the
daemon's ``/metrics``). Per-sink series are labelled by the configured sink name."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SENT = Counter("vaeguard_sink_alerts_sent_total", "Alerts a sink accepted.", ["sink"])
FAILED = Counter(
    "vaeguard_sink_send_failures_total",
    "Failed delivery attempts (each alert of a failed send counts once).",
    ["sink", "kind"],
)
RETRIED = Counter(
    "vaeguard_sink_alerts_retried_total", "Alerts sent again after a failed attempt.", ["sink"]
)
SPOOLED = Counter(
    "vaeguard_sink_alerts_spooled_total",
    "Alerts written to the durable spool instead of being delivered at once.",
    ["sink", "reason"],
)
DEAD_LETTERED = Counter(
    "vaeguard_sink_alerts_dead_lettered_total",
    "Alerts a sink can never deliver, moved out of its way to the dead letters, by reason "
    "(rejected: the target refused the payload; malformed: it could not be built).",
    ["sink", "reason"],
)
REDELIVERED = Counter(
    "vaeguard_sink_alerts_redelivered_total", "Spooled alerts delivered later.", ["sink"]
)
SPOOL_PENDING = Gauge(
    "vaeguard_sink_spool_pending_alerts", "Alerts in the spool not delivered yet.", ["sink"]
)
LATENCY = Histogram(
    "vaeguard_sink_delivery_latency_seconds",
    "From hand-over to the sink's worker until the sink accepted the alert (live deliveries).",
    ["sink"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
#: 0 closed, 1 half-open (probing), 2 open.
BREAKER_STATE = Gauge(
    "vaeguard_sink_circuit_breaker_state",
    "Circuit breaker state of a sink: 0 closed, 1 half-open, 2 open.",
    ["sink"],
)
BREAKER_OPENED = Counter(
    "vaeguard_sink_circuit_breaker_opened_total", "Times a sink's breaker opened.", ["sink"]
)
QUEUE_DEPTH = Gauge("vaeguard_sink_queue_batches", "Batches waiting for a sink's worker.", ["sink"])

NOTIFICATIONS = Counter(
    "vaeguard_alerts_notifications_total",
    "Notifications routed to sinks, by status (firing or resolved).",
    ["status"],
)
RATE_LIMITED = Counter(
    "vaeguard_alerts_rate_limited_total",
    "Notifications held back by a route's rate limit (retried on the episode's next anomaly).",
    ["route"],
)
UNROUTED = Counter(
    "vaeguard_alerts_unrouted_total", "Alerts that matched no route and have no default sinks."
)
EPISODES_OPEN = Gauge("vaeguard_alerts_episodes_open", "Anomaly episodes currently open.")
EPISODES_EVICTED = Counter(
    "vaeguard_alerts_episodes_evicted_total",
    "Open episodes closed early (least recently active first) to stay within "
    "alerts.max_open_episodes.",
)
PROCESS_SECONDS = Histogram(
    "vaeguard_alerts_process_seconds",
    "Time `process()` took for one batch (including waiting for sinks).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


#: The bounded values of the ``kind`` / ``reason`` labels (see delivery._reason_label).
FAILURE_KINDS = ("retryable", "permanent")
DEAD_LETTER_REASONS = ("rejected", "malformed")
SPOOL_REASONS = (
    "retries_exhausted", "max_wait", "circuit_open", "queue_full", "backlog", "rejected",
    "shutdown", "other",
)  # fmt: skip


def init_sink(name: str) -> None:
    """Create a sink's series at zero, so dashboards and alert rules see them before the
    first failure (Prometheus' advice for labelled counters)."""
    for counter in (SENT, RETRIED, REDELIVERED, BREAKER_OPENED):
        counter.labels(name)
    for gauge in (SPOOL_PENDING, QUEUE_DEPTH):
        gauge.labels(name)
    LATENCY.labels(name)
    for kind in FAILURE_KINDS:
        FAILED.labels(name, kind)
    for reason in SPOOL_REASONS:
        SPOOLED.labels(name, reason)
    for reason in DEAD_LETTER_REASONS:
        DEAD_LETTERED.labels(name, reason)
