"""The Alertmanager sink against a real HTTP server standing in for Alertmanager's API v2."""

from __future__ import annotations

import base64

import pytest

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
