"""Prometheus metrics of the daemon (default registry, served at /metrics).

Defined once at import: a process runs one daemon, and re-registering a name would fail.
"""

from __future__ import annotations

import contextlib
import os

from prometheus_client import Counter, Gauge, Histogram

from vaeguard.ingest import Reason

RECORDS_CONSUMED = Counter(
    "vaeguard_records_consumed", "Records read from the input topics.", ["topic"]
)
RECORDS_SCORED = Counter("vaeguard_records_scored", "Records scored (one score record each).")
RECORDS_ANOMALOUS = Counter(
    "vaeguard_records_anomalous", "Scored records above the model's threshold."
)
RECORDS_DEAD_LETTERED = Counter(
    "vaeguard_records_dead_lettered",
    "Records sent to the dead-letter topic, by reason.",
    ["reason"],
)
for _reason in Reason:  # every reason shows in /metrics from the start, at 0
    RECORDS_DEAD_LETTERED.labels(reason=str(_reason))
DEAD_LETTERS_DROPPED = Counter(
    "vaeguard_dead_letters_dropped",
    "Dead letters the producer or broker refused as too large even in their minimal form (no "
    "key, no value, only the error headers): logged with the input's topic, partition and "
    "offset, then skipped so the partition moves on.",
)
PARTITION_STALLED = Gauge(
    "vaeguard_partition_stalled",
    "1 while an assigned partition has records waiting and no committed progress for "
    "scoring.stall_after_s seconds.",
    ["topic", "partition"],
    multiprocess_mode="livemax",
)
PARTITION_STALLS = Counter(
    "vaeguard_partition_stalls",
    "Times an assigned partition became stalled (see vaeguard_partition_stalled).",
)
ALERT_RECORD_ERRORS = Counter(
    "vaeguard_alert_record_errors",
    "Scored records the alert layer failed on with an error (logged; no alert was raised).",
)
BATCH_DURATION = Histogram(
    "vaeguard_batch_duration_seconds",
    "Time from a batch's poll to its commit.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH_RECORDS = Histogram(
    "vaeguard_batch_records",
    "Records per batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
CONSUMER_LAG = Gauge(
    "vaeguard_consumer_lag",
    "Records in the partition not yet processed (high watermark − next offset).",
    ["topic", "partition"],
    multiprocess_mode="livesum",
)
MODEL_INFO = Gauge(
    "vaeguard_model_info",
    "The model version in service (value 1).",
    ["version"],
    multiprocess_mode="liveall",
)
MODEL_LOAD_FAILURES = Counter(
    "vaeguard_model_load_failures", "Model (re)loads refused; the previous model kept serving."
)
RETRIES = Counter(
    "vaeguard_retries",
    "Retries of a batch step after a failure (produce, alert, commit, connect; producer_reset: a wedged producer replaced).",
    ["stage"],
)
PARTITIONS_ASSIGNED = Gauge(
    "vaeguard_partitions_assigned",
    "Input partitions this daemon owns.",
    multiprocess_mode="liveall",
)
READY = Gauge("vaeguard_ready", "1 when /readyz reports ready.", multiprocess_mode="liveall")
LAST_COMMIT = Gauge(
    "vaeguard_last_commit_timestamp_seconds",
    "Unix time of the last successful offset commit.",
    multiprocess_mode="livemax",
)
STAGE_SECONDS = Counter(
    "vaeguard_stage_seconds",
    "Time spent per stage of the record path (decode, featurize, score, encode, produce, "
    "alert, commit; learn: window mode's online refits): divided by "
    "vaeguard_records_consumed_total, a record's microseconds.",
    ["stage"],
)
STAGES = ("decode", "featurize", "score", "encode", "produce", "alert", "commit")
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)


#: Under `vaeguard run --workers`, prometheus_client's multiprocess mode cannot remove labels.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_version: list[str] = []


def set_model_version(version: str) -> None:
    if MULTIPROCESS:
        for old in _version:
            MODEL_INFO.labels(version=old).set(0)
    else:
        MODEL_INFO.clear()
    MODEL_INFO.labels(version=version).set(1)
    _version[:] = [version]


def _forget(gauge: Gauge, topic: str, partition: int) -> None:
    """A revoked partition's series is no longer ours to report (set to 0 in multiprocess
    mode, where a series cannot be removed)."""
    if MULTIPROCESS:
        gauge.labels(topic, str(partition)).set(0)
        return
    with contextlib.suppress(KeyError):
        gauge.remove(topic, str(partition))


def forget_partition(topic: str, partition: int) -> None:
    """A revoked partition's lag is no longer ours to report."""
    _forget(CONSUMER_LAG, topic, partition)


def forget_stall(topic: str, partition: int) -> None:
    """A revoked partition's stall is no longer ours to report."""
    _forget(PARTITION_STALLED, topic, partition)


SCORE_DRIFT_PSI = Gauge(
    "vaeguard_score_drift_psi",
    "PSI of recent live scores against the model's calibration scores (NaN until judged).",
    multiprocess_mode="liveall",
)
SCORE_DRIFT_RECORDS = Gauge(
    "vaeguard_score_drift_window_records",
    "Live scores in the drift window of the model in service.",
    multiprocess_mode="liveall",
)
DRIFT_TRIGGERS = Counter(
    "vaeguard_score_drift_triggers", "Times the drift PSI crossed retrain.drift_psi_threshold."
)

WINDOW_BUFFERED = Counter(
    "vaeguard_window_buffered_records",
    "Window mode: records that only filled their entity's window (no score record yet).",
)
WINDOW_REFITS = Counter(
    "vaeguard_window_refits",
    "Window mode: online warm refits of the views on the newest windows (result: ok, failed, "
    "skipped: too few windows held).",
    ["result"],
)
for _result in ("ok", "failed", "skipped"):
    WINDOW_REFITS.labels(_result)
INPUT_MESSAGES = Counter(
    "vaeguard_input_messages",
    "Input formats other than flat: messages that gave no record of their own, by outcome "
    "(held: their samples wait in a row still being assembled; unmapped: nothing the model "
    "uses, or a Prometheus staleness marker).",
    ["outcome"],
)
WINDOW_REPLAYED = Counter(
    "vaeguard_window_replayed_records",
    "Window mode: replayed records skipped because the restored state already held them.",
)
WINDOW_STATE_REFUSED = Counter(
    "vaeguard_window_state_refused",
    "Window mode: state files refused at start (unreadable, not JSON, corrupt, or failing "
    "their HMAC): moved aside, every entity started a fresh window.",
    ["reason"],
)
for _reason in ("unreadable", "corrupt", "unauthenticated"):
    WINDOW_STATE_REFUSED.labels(_reason)
WINDOW_ENTITIES = Gauge(
    "vaeguard_window_entities",
    "Window mode: entities with state in memory.",
    multiprocess_mode="livesum",
)
HTTP_CONNECTIONS_DROPPED = Counter(
    "vaeguard_http_connections_dropped",
    "Ops listener connections dropped: busy (over http.max_connections, answered 503) or "
    "timeout (no complete request within http.request_timeout_s).",
    ["reason"],
)
for _reason in ("busy", "timeout"):
    HTTP_CONNECTIONS_DROPPED.labels(_reason)

#: Levels of `SCORE_P_VALUE` (tail probabilities on normal data).
P_VALUE_LEVELS = (1e-5, 1e-4, 1e-3, 1e-2, 0.1)
SCORE_P_VALUE = Counter(
    "vaeguard_score_p_value_below",
    "Scored records whose p-value (the probability of a score at least this high on normal "
    "data, the alert budget's measure) is at most `level`; divided by "
    "vaeguard_records_scored_total, the share at each level to compare with the alert budget.",
    ["level"],
)
for _level in P_VALUE_LEVELS:
    SCORE_P_VALUE.labels(f"{_level:g}")


def observe_p_values(p_values) -> None:
    """Count a batch's p-values at each level (one increment per level, not per record)."""
    import numpy as np

    values = np.asarray(p_values, dtype="float64")
    for level in P_VALUE_LEVELS:
        count = int((values <= level).sum())
        if count:
            SCORE_P_VALUE.labels(f"{level:g}").inc(count)
