"""Delivery against real servers on loopback: signatures, retries, the breaker, the spool,
restarts, slow sinks, and the built-in file and kafka sinks."""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest

from tests.conftest import wait_for
from vaeguard.alerts.layer import AlertDeliveryError
from vaeguard.alerts.sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from vaeguard.alerts.spool import Spool
from vaeguard.alerts.testing import HTTPCapture, free_port, make_record

from .conftest import read_jsonl


def webhook(url: str, name: str = "hook", **extra) -> dict:
    return {"name": name, "type": "webhook", "url": url + "/hook", "secret": "s3cr3t-key", **extra}


def ids(requests) -> list[tuple[str, str]]:
    return [(r.json()["id"], r.json()["status"]) for r in requests]


def test_webhook_posts_signed_alert_json_with_custom_headers(capture, make_layer, caplog):
    layer = make_layer(
        {
            "sinks": [
                webhook(
                    capture.url,
                    headers={"X-Team": "sre"},
                    secret_headers={"Authorization": "Bearer t0ken-xyz"},
                )
            ]
        }
    )
    with caplog.at_level(logging.DEBUG):
        layer.process([make_record("h1", True)])
    [request] = capture.received
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert (
        request.headers["x-team"] == "sre"
        and request.headers["authorization"] == "Bearer t0ken-xyz"
    )
    timestamp, signature = (
        request.headers[TIMESTAMP_HEADER.lower()],
        request.headers[SIGNATURE_HEADER.lower()],
    )
    assert abs(int(timestamp) - time.time()) < 60
    assert signature.startswith("sha256=")
    assert verify_signature("s3cr3t-key", timestamp, request.body, signature)
    assert not verify_signature("wrong-key", timestamp, request.body, signature)
    assert not verify_signature("s3cr3t-key", timestamp, request.body + b" ", signature)
    assert not verify_signature("s3cr3t-key", str(int(timestamp) - 3600), request.body, signature)
    alert = request.json()
    assert (
        alert["entity"] == "h1"
        and alert["status"] == "firing"
        and alert["top_features"][0]["feature"] == "cpu_user"
    )
    assert request.body == json.dumps(alert, sort_keys=True, separators=(",", ":")).encode()
    logs = caplog.text + repr(layer.health())
    assert "s3cr3t-key" not in logs and "t0ken-xyz" not in logs


def test_server_failing_n_times_then_recovering_gets_each_alert_once(capture, make_layer):
    capture.fail_next(3, status=503)
    layer = make_layer({"sinks": [webhook(capture.url)], "resolve_after_records": 1})
    layer.process([make_record("h1", True), make_record("h2", True)])
    capture.fail_next(2, status=429)
    layer.process([make_record("h1", False), make_record("h2", False)])
    assert len(capture.requests) == 4 + 3 + 2
    received = ids(capture.received)
    assert len(received) == 4 and len(set(received)) == 4  # each alert exactly once
    assert [s for _, s in received] == ["firing", "firing", "resolved", "resolved"]
    health = layer.health()["sinks"]["hook"]
    assert health["sent"] == 4 and health["spooled"] == 0


def test_server_down_for_good_spools_and_a_restart_delivers(tmp_path, make_layer):
    port = free_port()  # nothing listens here yet
    url = f"http://127.0.0.1:{port}"
    config = {"sinks": [webhook(url)], "resolve_after_records": 1}
    first = make_layer(config)
    first.process([make_record("h1", True), make_record("h2", True)])  # returns: spooled
    first.process([make_record("h1", False)])
    spool = Spool(tmp_path / "spool", "hook")
    pending = spool.pending()
    assert [(e.alert.entity, e.alert.status) for e in pending] == [
        ("h1", "firing"),
        ("h2", "firing"),
        ("h1", "resolved"),
    ]
    assert "attempts failed" in pending[0].reason or "behind" in pending[0].reason
    first.close()

    with HTTPCapture(port=port) as server:
        make_layer(config)  # a restarted daemon
        wait_for(lambda: len(server.received) == 3, timeout=20, message="the spooled alerts")
        assert [(r.json()["entity"], r.json()["status"]) for r in server.received] == [
            ("h1", "firing"), ("h2", "firing"), ("h1", "resolved"),
        ]  # fmt: skip
        # Acks land first, then the delivery loop compacts the file away.
        wait_for(
            lambda: not spool.pending() and spool.size() == 0,
            timeout=10,
            message="the spool to be acknowledged and compacted",
        )


def test_recovery_without_restart_redelivers_in_order(make_layer):
    port = free_port()
    layer = make_layer(
        {"sinks": [webhook(f"http://127.0.0.1:{port}")], "resolve_after_records": 1,
         "delivery": {"breaker_failures": 2, "breaker_cooldown_s": 0.2}}
    )  # fmt: skip
    layer.process([make_record("h1", True)])
    assert layer.health()["sinks"]["hook"]["breaker"] == "open"
    layer.process([make_record("h1", False)])  # breaker open: straight to the spool, in order
    assert layer.health()["sinks"]["hook"]["spool_backlog"] == 2
    with HTTPCapture(port=port) as server:
        wait_for(
            lambda: len(server.received) == 2, timeout=20, message="redelivery after the cool-down"
        )
        assert [r.json()["status"] for r in server.received] == ["firing", "resolved"]
        hook = lambda: layer.health()["sinks"]["hook"]  # noqa: E731
        wait_for(
            lambda: hook()["breaker"] == "closed" and hook()["spool_backlog"] == 0,
            message="drained",
        )
        layer.process([make_record("h3", True)])  # live again: delivered before process() returns
        assert len(server.received) == 3 and hook()["spooled"] == 2


def test_open_breaker_spools_without_calling_the_sink(capture, make_layer):
    capture.status = 500
    layer = make_layer(
        {
            "sinks": [webhook(capture.url)],
            "delivery": {"retries": 5, "breaker_failures": 3, "breaker_cooldown_s": 60},
        }
    )
    layer.process([make_record("h1", True)])
    assert len(capture.requests) == 3  # the breaker opened after 3 failures, before retries ran out
    layer.process([make_record(f"x{i}", True) for i in range(10)])
    assert len(capture.requests) == 3
    health = layer.health()["sinks"]["hook"]
    assert (
        health["breaker"] == "open"
        and health["spool_backlog"] == 11
        and "HTTP 500" in health["last_error"]
    )


def test_permanent_rejection_is_parked_not_retried_and_does_not_block(
    capture, make_layer, tmp_path
):
    capture.fail_next(1, status=403)  # the sink's credentials, not the alert: parked
    layer = make_layer({"sinks": [webhook(capture.url)]})
    layer.process([make_record("bad", True), make_record("good", True)])
    assert len(capture.requests) == 2  # 403 is not retried
    assert [r.json()["entity"] for r in capture.received] == ["good"]
    [parked] = Spool(tmp_path / "spool", "hook").pending()
    assert (
        parked.alert.entity == "bad"
        and parked.reason.startswith("rejected: ")
        and "HTTP 403" in parked.reason
    )
    layer.process([make_record("later", True)])  # parked entries do not hold the sink back
    assert [r.json()["entity"] for r in capture.received] == ["good", "later"]
    assert layer.health()["sinks"]["hook"]["spool_parked"] == 1


def test_slow_sink_cannot_stall_process_beyond_max_wait(capture, make_layer, tmp_path):
    capture.hold()  # the server accepts requests and does not answer until released
    layer = make_layer(
        {"sinks": [webhook(capture.url)], "delivery": {"max_wait_s": 0.3, "timeout_s": 30}}
    )
    layer.process([make_record("h1", True)])
    # process() returned while the server still holds the request: the alert is in the spool.
    assert capture.waiting == 1 and not capture.requests
    spool = Spool(tmp_path / "spool", "hook")
    assert [e.alert.entity for e in spool.pending()] == ["h1"]
    layer.process(
        [make_record(f"h{i}", True) for i in range(2, 6)]
    )  # behind the backlog: spooled at once
    assert len(spool.pending()) == 5 and capture.waiting == 1
    capture.release()
    wait_for(lambda: len(capture.received) == 5, message="the backlog to drain")
    wait_for(lambda: not spool.pending(), message="the spool to empty")
    assert sorted(r.json()["entity"] for r in capture.received) == [
        f"h{i}" for i in range(1, 6)
    ]  # once each


def test_full_spool_makes_process_raise_and_health_say_so(make_layer):
    port = free_port()
    layer = make_layer(
        {
            "sinks": [webhook(f"http://127.0.0.1:{port}")],
            "spool_max_mb": 0.001,
            "delivery": {"retries": 0},
        }
    )
    with pytest.raises(AlertDeliveryError, match="spool of sink 'hook' is full"):
        layer.process([make_record(f"h{i}", True) for i in range(20)])
    health = layer.health()
    assert health["ok"] is False and "full" in health["error"]
    with pytest.raises(AlertDeliveryError):  # the daemon's retry: still nowhere to put them
        layer.process([make_record("h99", True)])


def test_file_sink_rotates_by_size_and_keeps_backups(tmp_path, make_layer):
    path = tmp_path / "alerts.jsonl"
    layer = make_layer(
        {
            "sinks": [
                {"name": "f", "type": "file", "path": str(path), "max_bytes": 2048, "backups": 2}
            ]
        }
    )
    for i in range(12):
        layer.process([make_record(f"host-{i}", True)])
    files = sorted(p.name for p in tmp_path.glob("alerts.jsonl*"))
    assert files == ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2"]
    for p in tmp_path.glob("alerts.jsonl*"):
        assert p.stat().st_size <= 2048
        assert all(json.loads(line)["status"] == "firing" for line in p.read_text().splitlines())
    newest = read_jsonl(path)[-1]
    assert newest["entity"] == "host-11"


def test_kafka_sink_produces_keyed_alerts(broker, make_layer):
    from kafka import KafkaConsumer

    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    layer = make_layer(
        {"sinks": [{"name": "k", "type": "kafka", "topic": topic}], "resolve_after_records": 1},
        kafka_config={"bootstrap_servers": [broker.bootstrap_servers]},
    )
    layer.process([make_record("h1", True), make_record("h2", True)])
    layer.process([make_record("h1", False)])
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=500,
    )
    try:
        got = []
        wait_for(
            lambda: got.extend(consumer) or len(got) >= 3,
            timeout=30,
            message="three alerts on the topic",
        )
    finally:
        consumer.close()
    values = [json.loads(m.value) for m in got]
    # Keyed by alert id: an episode's notifications stay in one partition, in order.
    assert sorted((v["entity"], v["status"]) for v in values) == [
        ("h1", "firing"),
        ("h1", "resolved"),
        ("h2", "firing"),
    ]
    assert [v["status"] for v in values if v["entity"] == "h1"] == ["firing", "resolved"]
    assert all(m.key.decode() == v["id"] for m, v in zip(got, values, strict=True))


def test_kafka_sink_without_any_cluster_is_a_config_error(make_layer):
    from vaeguard.errors import ConfigError

    with pytest.raises(ConfigError, match=r"alerts.sinks\[k\].*bootstrap_servers"):
        make_layer({"sinks": [{"name": "k", "type": "kafka"}]})


def test_webhook_headers_from_alert_data_cannot_inject_or_block(capture, make_layer):
    from vaeguard.alerts.testing import sample_alert

    layer = make_layer({"sinks": [webhook(capture.url)]})
    layer.notify(sample_alert(id="abc\r\nX-Evil: 1 é"))
    layer.notify(sample_alert("next"))
    first, second = capture.received
    assert first.headers["x-vaeguard-alert-id"] == "abc X-Evil: 1 \\xe9"
    assert "x-evil" not in first.headers and second.json()["entity"] == "next"


def test_webhook_header_settings_with_line_breaks_are_config_errors(capture):
    from vaeguard.alerts.settings import AlertsSettings
    from vaeguard.errors import ConfigError

    for extra, problem in (
        ({"headers": {"X-Team": "sre\r\nX-Evil: 1"}}, "X-Team must be ASCII without line breaks"),
        ({"secret_headers": {"Authorization": "Bearer x\n"}}, "Authorization must be ASCII"),
        ({"headers": {"Bad Name": "x"}}, "'Bad Name' is not a valid header name"),
    ):
        with pytest.raises(ConfigError, match=problem):
            AlertsSettings.from_mapping({"sinks": [webhook(capture.url, **extra)]})


def test_a_metric_judged_against_the_others_is_shown_with_what_they_predict(capture, make_layer):
    """A window record whose metric the cross-section named carries ``given_others``: the alert
    shows that value and prediction, not the view's expected value at its worst slot."""
    import dataclasses

    layer = make_layer({"sinks": [webhook(capture.url)]})
    record = make_record("h1", True)
    lead = {
        "feature": "mem",
        "metric": "mem",
        "observed": 33.0,
        "expected": 31.5,
        "contribution": 4.0,
        "share": 0.6,
        "given_others": {"observed": 40.4, "expected": 32.1},
    }
    layer.process([dataclasses.replace(record, contributions=[lead, *record.contributions])])
    [request] = capture.received
    top = request.json()["top_features"]
    assert (top[0]["feature"], top[0]["observed"], top[0]["expected"]) == ("mem", 40.4, 32.1)
    assert (top[1]["observed"], top[1]["expected"]) == (97.0, 41.0)  # the others as they were
