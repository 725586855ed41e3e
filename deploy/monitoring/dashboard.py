"""Generate the vaeguard Grafana dashboard (vaeguard-dashboard.json, next to this file).

Plain dicts → JSON, so the dashboard is reviewed as code and has no dependency beyond Python.
Run `python deploy/monitoring/dashboard.py` after editing; `--check` exits 1 when the committed
JSON differs from what this script generates (tests/deploy/test_monitoring.py runs the same
comparison, so nobody edits the JSON by hand). Most queries read the recording rules of
vaeguard-rules.yml: load those rules into the Prometheus the dashboard reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The shared command line of the generated files, next to this one.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _generated as generated

OUT = Path(__file__).with_name("vaeguard-dashboard.json")
UID = "vaeguard-overview"
DS = {"type": "prometheus", "uid": "${datasource}"}
#: Every query is restricted to the chosen job and instances.
F = 'job=~"$job", instance=~"$instance"'
WIDTH = 24


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


def targets(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(pairs)]


def timeseries(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    *,
    unit: str = "short",
    threshold: float | None = None,
    log_scale: bool = False,
    bars: bool = False,
    mappings: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 30 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
    }
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if threshold is not None:
        custom["thresholdsStyle"] = {"mode": "line"}
        steps.append({"color": "red", "value": threshold})
    if log_scale:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": custom,
        "thresholds": {"mode": "absolute", "steps": steps},
    }
    if mappings:
        defaults["mappings"] = mappings
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets(*queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    *,
    text_mode: str = "value_and_name",
    mappings: list[dict[str, Any]] | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets(*queries),
        "fieldConfig": {
            "defaults": {
                "mappings": mappings or [],
                "thresholds": {
                    "mode": "absolute",
                    "steps": steps or [{"color": "green", "value": None}],
                },
            },
            "overrides": [],
        },
        "options": {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
        },
    }


def state_timeline(
    title: str, description: str, queries: list[tuple[str, str]], *, mappings: list[dict[str, Any]]
) -> dict[str, Any]:
    panel = timeseries(title, description, queries, mappings=mappings)
    panel["type"] = "state-timeline"
    panel["fieldConfig"]["defaults"]["custom"] = {"fillOpacity": 70, "lineWidth": 0}
    panel["options"] = {
        "showValue": "auto",
        "mergeValues": True,
        "rowHeight": 0.9,
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return panel


def value_map(values: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                str(v): {"text": text, "color": color, "index": i}
                for i, (v, (text, color)) in enumerate(values.items())
            },
        }
    ]


BREAKER = value_map({0: ("closed", "green"), 1: ("half-open", "orange"), 2: ("open", "red")})
READY = value_map({0: ("not ready", "red"), 1: ("ready", "green")})


def rows() -> list[tuple[str, list[tuple[int, int, dict[str, Any]]]]]:
    """(row title, [(width, height, panel)]): panels fill each row left to right."""
    rate = "[$__rate_interval]"
    throughput = [
        (
            12,
            8,
            timeseries(
                "Records/s",
                "Records read per topic, scored, and sent to the dead-letter topic (5m rates).",
                [
                    (
                        f"sum by (topic) (instance_topic:vaeguard_records_consumed:rate5m{{{F}}})",
                        "consumed {{topic}}",
                    ),
                    (f"sum(instance:vaeguard_records_scored:rate5m{{{F}}})", "scored"),
                    (
                        f"sum(instance:vaeguard_records_dead_lettered:rate5m{{{F}}})",
                        "dead-lettered",
                    ),
                ],
                unit="ops",
            ),
        ),
        (
            12,
            8,
            timeseries(
                "Consumer lag",
                "Records not yet processed per partition (high watermark − next offset). "
                "Alert VaeguardConsumerLagGrowing: above 10000 and growing for 15m.",
                [
                    (
                        f"sum by (instance, topic, partition) (vaeguard_consumer_lag{{{F}}})",
                        "{{topic}}/{{partition}} {{instance}}",
                    ),
                    (
                        f"sum by (instance, topic, partition) (vaeguard_consumer_lag{{{F}}}) "
                        "and on (instance, topic, partition) max by (instance, topic, partition) "
                        f"(vaeguard_partition_stalled{{{F}}}) == 1",
                        "stalled {{topic}}/{{partition}} {{instance}}",
                    ),
                ],
            ),
        ),
        (
            12,
            8,
            timeseries(
                "Dead letters/s by reason",
                "Records refused (the reason label of vaeguard_records_dead_lettered_total; "
                "reasons at 0 are hidden), and dead letters dropped as too large even in "
                "minimal form.",
                [
                    (
                        "sum by (reason) "
                        f"(instance_reason:vaeguard_records_dead_lettered:rate5m{{{F}}}) > 0",
                        "{{reason}}",
                    ),
                    (
                        f"sum(rate(vaeguard_dead_letters_dropped_total{{{F}}}{rate})) > 0",
                        "dropped (too large)",
                    ),
                ],
                unit="ops",
            ),
        ),
        (
            12,
            8,
            timeseries(
                "Dead-letter share of input",
                "Dead letters / records read (5m rates). Alerts: above 5% (warning) and "
                "50% (critical) for 15m.",
                [
                    (
                        f"instance:vaeguard_records_dead_lettered:ratio_rate5m{{{F}}}",
                        "{{instance}}",
                    )
                ],
                unit="percentunit",
                threshold=0.05,
            ),
        ),
        (
            12,
            8,
            timeseries(
                "Batch duration p99",
                "Time from a batch's poll to its commit, 99th percentile over 5m.",
                [
                    (
                        f"instance:vaeguard_batch_duration_seconds:p99_rate5m{{{F}}}",
                        "{{instance}}",
                    )
                ],
                unit="s",
            ),
        ),
        (
            12,
            8,
            timeseries(
                "Time per record by stage",
                "vaeguard_stage_seconds_total / vaeguard_records_consumed_total: where a "
                "record's time goes (learn: window mode's online refits).",
                [
                    (
                        f"sum by (stage) (rate(vaeguard_stage_seconds_total{{{F}}}{rate})) "
                        "/ ignoring (stage) group_left "
                        f"sum(rate(vaeguard_records_consumed_total{{{F}}}{rate}))",
                        "{{stage}}",
                    )
                ],
                unit="s",
            ),
        ),
    ]
    anomalies = [
        (
            8,
            8,
            timeseries(
                "Anomalies/s",
                "Scored records above the model's threshold, per instance (the daemon's "
                "metrics carry no entity or severity label: the score records do).",
                [
                    (
                        f"sum by (instance) (instance:vaeguard_records_anomalous:rate5m{{{F}}})",
                        "{{instance}}",
                    )
                ],
                unit="ops",
            ),
        ),
        (
            8,
            8,
            timeseries(
                "Anomalous share and p-value levels",
                "Share of scored records that were anomalous, and that had a p-value at most "
                "each level: compare with the alert budget.",
                [
                    (
                        f"sum(instance:vaeguard_records_anomalous:rate5m{{{F}}}) "
                        f"/ sum(instance:vaeguard_records_scored:rate5m{{{F}}})",
                        "anomalous",
                    ),
                    (
                        "sum by (level) "
                        f"(rate(vaeguard_score_p_value_below_total{{{F}}}{rate})) "
                        "/ ignoring (level) group_left "
                        f"sum(rate(vaeguard_records_scored_total{{{F}}}{rate}))",
                        "p ≤ {{level}}",
                    ),
                ],
                unit="percentunit",
                log_scale=True,
            ),
        ),
        (
            8,
            8,
            timeseries(
                "Notifications and episodes",
                "Notifications routed to sinks by status, held back by a route's rate limit, "
                "matching no route; anomaly episodes open (right-hand legend).",
                [
                    (
                        "sum by (status) "
                        f"(instance_status:vaeguard_alerts_notifications:rate5m{{{F}}})",
                        "{{status}}/s",
                    ),
                    (
                        "sum by (route) "
                        f"(rate(vaeguard_alerts_rate_limited_total{{{F}}}{rate})) > 0",
                        "rate-limited {{route}}/s",
                    ),
                    (
                        f"sum(rate(vaeguard_alerts_unrouted_total{{{F}}}{rate})) > 0",
                        "unrouted/s",
                    ),
                    (f"sum(vaeguard_alerts_episodes_open{{{F}}})", "episodes open"),
                ],
            ),
        ),
    ]
    sinks = [
        (
            12,
            8,
            timeseries(
                "Sink deliveries/s",
                "Alerts each sink accepted, failed attempts by kind, spooled alerts "
                "redelivered, and alerts dead-lettered (never deliverable).",
                [
                    (
                        f"sum by (sink) (instance_sink:vaeguard_sink_alerts_sent:rate5m{{{F}}})",
                        "sent {{sink}}",
                    ),
                    (
                        "sum by (sink, kind) "
                        f"(instance_sink_kind:vaeguard_sink_send_failures:rate5m{{{F}}}) > 0",
                        "failed {{sink}} ({{kind}})",
                    ),
                    (
                        "sum by (sink) "
                        f"(instance_sink:vaeguard_sink_alerts_redelivered:rate5m{{{F}}}) > 0",
                        "redelivered {{sink}}",
                    ),
                    (
                        "sum by (sink, reason) "
                        f"(instance_sink_reason:vaeguard_sink_alerts_dead_lettered:rate5m{{{F}}})"
                        " > 0",
                        "dead-lettered {{sink}} ({{reason}})",
                    ),
                ],
                unit="ops",
            ),
        ),
        (
            12,
            8,
            timeseries(
                "Alert spool",
                "Alerts waiting in each sink's durable spool, and batches queued for its "
                "worker. Alerts: spool above 100 and growing for 30m; not draining for 30m.",
                [
                    (
                        "sum by (sink) "
                        f"(instance_sink:vaeguard_sink_spool_pending_alerts:sum{{{F}}})",
                        "pending {{sink}}",
                    ),
                    (
                        f"sum by (sink) (vaeguard_sink_queue_batches{{{F}}})",
                        "queued batches {{sink}}",
                    ),
                ],
            ),
        ),
        (
            8,
            8,
            timeseries(
                "Spooled/s by reason",
                "Alerts written to the spool instead of being delivered at once.",
                [
                    (
                        "sum by (sink, reason) "
                        f"(instance_sink_reason:vaeguard_sink_alerts_spooled:rate5m{{{F}}}) > 0",
                        "{{sink}}: {{reason}}",
                    )
                ],
                unit="ops",
            ),
        ),
        (
            8,
            8,
            state_timeline(
                "Circuit breakers",
                "State of each sink's breaker. Alert VaeguardSinkCircuitOpen: not closed for 5m.",
                [(f"max by (sink) (vaeguard_sink_circuit_breaker_state{{{F}}})", "{{sink}}")],
                mappings=BREAKER,
            ),
        ),
        (
            8,
            8,
            timeseries(
                "Delivery latency p99",
                "From hand-over to a sink's worker until the sink accepted the alert.",
                [
                    (
                        "max by (sink) "
                        f"(instance_sink:vaeguard_sink_delivery_latency_seconds:p99_rate5m{{{F}}})",
                        "{{sink}}",
                    )
                ],
                unit="s",
            ),
        ),
    ]
    model = [
        (
            6,
            6,
            stat(
                "Ready",
                "vaeguard_ready per instance (under --workers: the least ready worker; no "
                "data: the instance is not scraped, see alert VaeguardDown).",
                [(f"min by (instance) (vaeguard_ready{{{F}}})", "{{instance}}")],
                mappings=READY,
                steps=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
            ),
        ),
        (
            6,
            6,
            stat(
                "Model in service",
                "vaeguard_model_info: the model version each instance serves.",
                [
                    (
                        f"max by (instance, version) (vaeguard_model_info{{{F}}}) == 1",
                        "{{instance}}: {{version}}",
                    )
                ],
                text_mode="name",
            ),
        ),
        (
            6,
            6,
            stat(
                "Partitions assigned",
                "Input partitions each instance owns.",
                [
                    (
                        f"sum by (instance) (vaeguard_partitions_assigned{{{F}}})",
                        "{{instance}}",
                    )
                ],
            ),
        ),
        (
            6,
            6,
            stat(
                "Problems (1h)",
                "Model loads refused, worker restarts and batch-step retries in the last hour.",
                [
                    (
                        f"sum(increase(vaeguard_model_load_failures_total{{{F}}}[1h]))",
                        "model loads refused",
                    ),
                    (
                        f"sum(increase(vaeguard_worker_restarts_total{{{F}}}[1h]))",
                        "worker restarts",
                    ),
                    (f"sum(increase(vaeguard_retries_total{{{F}}}[1h]))", "retries"),
                ],
                steps=[{"color": "green", "value": None}, {"color": "orange", "value": 1}],
            ),
        ),
        (
            12,
            8,
            timeseries(
                "Score drift (PSI)",
                "PSI of recent live scores against the model's calibration scores (empty "
                "until judged). Alert VaeguardScoreDrift: above 0.25 for 1h.",
                [(f"max by (instance) (vaeguard_score_drift_psi{{{F}}})", "{{instance}}")],
                threshold=0.25,
            ),
        ),
        (
            12,
            8,
            timeseries(
                "Refits and retraining (per hour)",
                "Window mode's online refits by result, and retraining runs by outcome.",
                [
                    (
                        f"sum by (result) (increase(vaeguard_window_refits_total{{{F}}}[1h]))",
                        "refit {{result}}",
                    ),
                    (
                        f"sum by (outcome) (increase(vaeguard_retrain_runs_total{{{F}}}[1h]))",
                        "retrain {{outcome}}",
                    ),
                    (
                        f"sum(increase(vaeguard_score_drift_triggers_total{{{F}}}[1h]))",
                        "drift triggers",
                    ),
                ],
                bars=True,
            ),
        ),
    ]
    return [
        ("Throughput", throughput),
        ("Anomalies and notifications", anomalies),
        ("Sinks", sinks),
        ("Model and health", model),
    ]


def panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    y = 0
    for title, row in rows():
        out.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y},
            }
        )
        y += 1
        x, height = 0, 0
        for w, h, panel in row:
            if x + w > WIDTH:
                x, y = 0, y + height
                height = 0
            out.append({**panel, "gridPos": {"h": h, "w": w, "x": x, "y": y}})
            x, height = x + w, max(height, h)
        y += height
    for i, panel in enumerate(out, start=1):
        panel["id"] = i
    return out


def variable(name: str, label: str, query: str, *, multi: bool) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "hide": 0,
        "regex": "",
        "options": [],
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "vaeguard",
        "description": "The vaeguard daemon's own metrics (deploy/monitoring/dashboard.py).",
        "tags": ["vaeguard"],
        "timezone": "",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "regex": "",
                    "options": [],
                    "refresh": 1,
                },
                variable("job", "Job", "label_values(vaeguard_ready, job)", multi=False),
                variable(
                    "instance",
                    "Instance",
                    'label_values(vaeguard_ready{job=~"$job"}, instance)',
                    multi=True,
                ),
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    return generated.main(render, OUT, __file__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
