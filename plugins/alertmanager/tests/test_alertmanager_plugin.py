"""The Alertmanager sink against a real HTTP server standing in for Alertmanager's API v2."""

from __future__ import annotations

import base64
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeguard.alerts.spool import Spool
from vaeguard.alerts.testing import HTTPCapture, layer_for, make_record


@pytest.fixture
def am():
    with HTTPCapture(response_body=b"") as server:
        yield server


def sink(url: str, **extra) -> dict:
    return {
        "name": "am",
        "type": "alertmanager",
        "url": url,
        "labels": {"team": "sre"},
        "username": "vaeguard",
        "password": "am-pass",
        "generator_url": "http://127.0.0.1:8080/",
        **extra,
    }


def test_batches_with_labels_annotations_and_times(am, tmp_path):
    with layer_for([sink(am.url)], tmp_path / "spool", resolve_after_records=1) as layer:
        layer.process(
            [
                make_record(
                    "web-1",
                    True,
                    labels={"region": "eu-west", "rack.id": "r7"},
                    ts="2026-01-01T12:00:00Z",
                ),
                make_record("web-2", True, severity="warning"),
            ]
        )
        layer.process([make_record("web-1", False, ts="2026-01-01T12:05:00Z")])
    first, second = am.received
    assert first.path == "/api/v2/alerts"
    assert (
        first.headers["authorization"] == "Basic " + base64.b64encode(b"vaeguard:am-pass").decode()
    )
    batch = first.json()
    assert len(batch) == 2  # one request for the batch
    web1 = batch[0]
    assert web1["labels"] == {
        "alertname": "VaeguardAnomaly",
        "stream": "cpu_util",
        "entity": "web-1",
        "severity": "critical",
        "vaeguard_id": web1["labels"]["vaeguard_id"],
        "region": "eu-west",
        "rack_id": "r7",
        "team": "sre",
    }
    assert web1["annotations"]["summary"].startswith("cpu_util anomalous on web-1")
    assert web1["annotations"]["top_features"] == "cpu_user=97 (expected 41)"
    assert web1["startsAt"] == "2026-01-01T12:00:00Z" and "endsAt" not in web1
    assert web1["generatorURL"] == "http://127.0.0.1:8080/"
    assert batch[1]["labels"]["severity"] == "warning"
    [resolved] = second.json()
    assert resolved["labels"] == web1["labels"]  # same label set: Alertmanager resolves that alert
    assert (
        resolved["startsAt"] == "2026-01-01T12:00:00Z"
        and resolved["endsAt"] == "2026-01-01T12:05:00Z"
    )


def test_firing_ttl_sets_ends_at(am, tmp_path):
    with layer_for([sink(am.url, firing_ttl_s=600)], tmp_path / "spool") as layer:
        layer.process([make_record("web-1", True)])
    [alert] = am.received[0].json()
    assert alert["endsAt"] > alert["startsAt"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=8))
def test_any_record_label_becomes_a_valid_label_name(labels):
    from vaeguard_alertmanager import AlertmanagerSettings, am_alert

    from vaeguard.alerts.testing import sample_alert

    out = am_alert(sample_alert(labels=labels), AlertmanagerSettings(url="http://127.0.0.1:9093"))
    for name in out["labels"]:
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) and not name.startswith("__")
    json.dumps(out)  # what is POSTed


def test_invalid_static_label_names_are_config_errors(am):
    from vaeguard.alerts.settings import AlertsSettings
    from vaeguard.errors import ConfigError

    for bad in ("rack.id", "1st", "__name__", ""):
        with pytest.raises(ConfigError, match=r"sinks\[am\]\.labels: label names must match"):
            AlertsSettings.from_mapping({"sinks": [sink(am.url, labels={bad: "x"})]})


def test_a_rejected_batch_is_retried_alert_by_alert_and_only_the_bad_one_dead_lettered(
    am, tmp_path
):
    """Alertmanager refuses a whole batch (400) for one bad alert: the others still arrive."""
    am.fail_next(2, status=400)  # the batch of three, then the bad alert on its own
    with layer_for([sink(am.url)], tmp_path / "spool") as layer:
        layer.process([make_record(f"web-{i}", True) for i in range(3)])
        health = layer.health()["sinks"]["am"]
    assert [len(r.json()) for r in am.requests] == [3, 1, 1, 1]
    assert [r.json()[0]["labels"]["entity"] for r in am.received] == ["web-1", "web-2"]
    spool = Spool(tmp_path / "spool", "am")
    [dead] = spool.dead()
    assert dead.alert.entity == "web-0" and "HTTP 400" in dead.reason and not spool.pending()
    assert health["dead_lettered"] == 1 and health["breaker"] == "closed"
