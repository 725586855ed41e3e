"""The PagerDuty sink against a real HTTP server standing in for the Events API v2."""

from __future__ import annotations

import pytest

from vaeguard.alerts.spool import Spool
from vaeguard.alerts.testing import HTTPCapture, layer_for, make_record
from vaeguard.errors import ConfigError


@pytest.fixture
def events():
    body = b'{"status":"success","message":"Event processed","dedup_key":"x"}'
    with HTTPCapture(status=202, response_body=body) as server:
        yield server


def sink(url: str, **extra) -> dict:
    return {
        "name": "oncall",
        "type": "pagerduty",
        "routing_key": "R0UTINGKEY0123",
        "events_url": url + "/v2/enqueue",
        **extra,
    }


def test_trigger_then_resolve_share_a_stable_dedup_key(events, tmp_path):
    with layer_for([sink(events.url)], tmp_path / "spool", resolve_after_records=1) as layer:
        layer.process([make_record("db-1", True, severity="major", labels={"region": "eu"})])
        layer.process([make_record("db-1", True, severity="critical")])  # escalation: trigger again
        layer.process([make_record("db-1", False)])
    bodies = [r.json() for r in events.received]
    assert [b["event_action"] for b in bodies] == ["trigger", "trigger", "resolve"]
    assert len({b["dedup_key"] for b in bodies}) == 1
    assert all(b["routing_key"] == "R0UTINGKEY0123" for b in bodies)
    first = bodies[0]["payload"]
    assert first["severity"] == "error" and bodies[1]["payload"]["severity"] == "critical"
    assert first["source"] == "db-1" and first["component"] == "cpu_util"
    assert first["summary"].startswith("cpu_util anomalous on db-1")
    assert first["custom_details"]["top_features"][0]["feature"] == "cpu_user"
    assert first["group"] == "region=eu"
    assert bodies[2] == {
        "routing_key": "R0UTINGKEY0123",
        "event_action": "resolve",
        "dedup_key": bodies[0]["dedup_key"],
    }


def test_server_errors_retry_and_an_invalid_event_is_dead_lettered(events, tmp_path):
    events.fail_next(2, status=500)
    with layer_for([sink(events.url)], tmp_path / "spool") as layer:
        layer.process([make_record("h1", True)])
        assert len(events.requests) == 3 and len(events.received) == 1
        events.fail_next(1, status=400)
        layer.process([make_record("h2", True), make_record("h3", True)])
        assert len(events.requests) == 5  # no retry of the rejected event; h3 still delivered
    spool = Spool(tmp_path / "spool", "oncall")
    assert not spool.pending()
    [dead] = spool.dead()
    assert dead.alert.entity == "h2" and "HTTP 400" in dead.reason
    assert [r.json()["payload"]["source"] for r in events.received] == ["h1", "h3"]


def test_a_rejected_routing_key_parks_instead(tmp_path):
    """PagerDuty answers a wrong routing key with 400 too: the sink's setting, not the alert."""
    body = b'{"status":"invalid event","message":"Event object is invalid","errors":["Invalid routing key"]}'
    with (
        HTTPCapture(status=400, error_body=body) as server,
        layer_for([sink(server.url)], tmp_path / "spool") as layer,
    ):
        layer.process([make_record("h1", True)])
    spool = Spool(tmp_path / "spool", "oncall")
    [parked] = spool.pending()
    assert not spool.dead() and "routing key" in parked.reason


def test_long_and_multi_line_fields_fit_the_events_api(events, tmp_path):
    entity = "db-1\nX-Injected: yes\r\n" + "e" * 2000
    with layer_for([sink(events.url)], tmp_path / "spool") as layer:
        layer.process([make_record(entity, True, labels={"k": "v" * 500})])
    [request] = events.received
    body = request.json()
    payload = body["payload"]
    assert len(payload["summary"]) <= 1024 and "\n" not in payload["summary"]
    assert 0 < len(payload["source"]) <= 255 and "\n" not in payload["source"]
    assert len(payload["group"]) <= 255 and len(body["dedup_key"]) <= 255


def test_bad_severity_map_names_the_field():
    from vaeguard.alerts.settings import AlertsSettings

    with pytest.raises(
        ConfigError, match=r"alerts.sinks\[oncall\].severity_map: values must be one of"
    ):
        AlertsSettings.from_mapping(
            {"sinks": [sink("http://127.0.0.1:1", severity_map={"major": "sev1"})]}
        )
    with pytest.raises(ConfigError, match=r"missing setting alerts.sinks\[oncall\].routing_key"):
        AlertsSettings.from_mapping({"sinks": [{"name": "oncall", "type": "pagerduty"}]})
