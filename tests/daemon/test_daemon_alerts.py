"""The daemon and its alert layer together: offsets wait for the alerts, sink metrics are served."""

from __future__ import annotations

import hashlib
import hmac
import json

import yaml

from tests.conftest import wait_for
from tests.daemon.conftest import (
    Collector,
    Producer,
    committed,
    create_topic,
    daemon_env,
    good_record,
    unique,
)
from vaeguard.alerts.testing import FAST_DELIVERY, HTTPCapture


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    """Partition 0's committed offset."""
    return committed(bootstrap, group, topic, [0])[0]


def test_offsets_are_committed_only_once_the_alert_is_delivered(
    broker, small_bundle, daemons, tmp_path
):
    bs = broker.bootstrap_servers
    topic, group = unique("alert-in"), unique("alerting")
    secret = "s3cret-hook"
    create_topic(bs, topic, 1)
    with HTTPCapture(status=503) as hook:  # the sink is down ...
        config = tmp_path / "vaeguard.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "alerts": {
                        "sinks": [
                            {
                                "name": "hook",
                                "type": "webhook",
                                "url": hook.url + "/hook",
                                "secret": secret,
                            }
                        ],
                        # ... and its spool cannot take the alert either (full at once): the
                        # batch's alert step fails, so its offsets must not be committed.
                        "spool_dir": str(tmp_path / "spool"),
                        "spool_max_mb": 0.0001,
                        "delivery": {**FAST_DELIVERY, "max_wait_s": 1.0},
                    }
                }
            )
        )
        daemon = daemons(
            "alerts", daemon_env(bs, small_bundle, [topic], group), config=config
        ).start()
        daemon.wait_ready()

        producer = Producer(bs)
        for i in range(20):
            producer.send(topic, good_record(i), key=f"h{i % 5}".encode())
        producer.send(topic, {"a": 1e4, "b": -1e4, "c": 0.0, "d": 0.0, "key": "db-9"}, key=b"db-9")
        end = producer.flush()

        # The score records are produced, yet nothing is committed while the alert is stuck.
        scores = Collector(bs, f"{group}.scores")
        scores.wait_count(21, timeout=60, message="the score records")
        assert [r["key"] for r in scores.json() if r["is_anomaly"]] == ["db-9"]
        wait_for(
            lambda: daemon.metric("vaeguard_retries_total", 'stage="alert"') >= 2,
            timeout=30,
            interval=0.2,
            message="the daemon to retry the alert step",
        )
        assert daemon.metric("vaeguard_sink_send_failures_total", 'sink="hook"') >= 1
        assert _committed(bs, group, topic) is None, "committed before the alert was delivered"
        assert not hook.received

        hook.status = 200  # the sink recovers: the retried batch delivers, then commits
        wait_for(lambda: hook.received, timeout=30, message="the alert at the webhook")
        wait_for(
            lambda: _committed(bs, group, topic) == end[0],
            timeout=30,
            interval=0.2,
            message="the offsets to be committed after delivery",
        )

    request = hook.received[0]
    alert = request.json()
    assert alert["entity"] == "db-9" and alert["status"] == "firing"
    signed = f"{request.headers['x-vaeguard-timestamp']}.".encode() + request.body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert request.headers["x-vaeguard-signature"] == f"sha256={expected}"
    assert daemon.metric("vaeguard_sink_alerts_sent_total", 'sink="hook"') >= 1
    assert daemon.metric("vaeguard_sink_delivery_latency_seconds_count", 'sink="hook"') >= 1
    assert daemon.metric("vaeguard_sink_alerts_retried_total", 'sink="hook"') >= 1
    assert (
        'vaeguard_sink_alerts_spooled_total{reason="retries_exhausted",sink="hook"}'
        in daemon.get("/metrics")[1]
    )
    assert daemon.terminate() == 0, daemon.log()[-3000:]
    assert secret not in daemon.log(), "the webhook secret must never be logged"
    assert json.loads(scores.messages[-1].value)["source"]["topic"] == topic
