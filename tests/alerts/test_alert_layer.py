"""Records → alerts: episodes, ids, dedup, repeat, escalation, resolve, routing, rate limits.

Sinks are real `file` sinks; each notification is one JSON line in the sink's file.
"""

from __future__ import annotations

import datetime as dt

from vaeguard.alerts.model import Alert, to_datetime
from vaeguard.alerts.testing import make_record

from .conftest import file_sink, read_jsonl


def notes(tmp_path, name):
    return [(a["entity"], a["status"]) for a in read_jsonl(tmp_path / f"{name}.jsonl")]


def test_alert_json_is_stable_and_id_survives_a_replay(tmp_path, make_layer, clock):
    batch = [
        make_record("host-7", False, offset=10, ts=1_767_268_800_000),
        make_record("host-7", True, offset=11, ts=1_767_268_801_000),
        make_record("host-7", True, offset=12, ts=1_767_268_802_000),
    ]
    outputs = []
    for run in ("first", "replay"):
        layer = make_layer({"sinks": [file_sink(tmp_path, run)]}, clock=clock)
        layer.process(batch)
        outputs.append(read_jsonl(tmp_path / f"{run}.jsonl"))
    first, replay = outputs
    assert len(first) == 1 and first == replay  # same id, same bytes
    alert = Alert.model_validate(first[0])
    assert alert.episode.offset == 11 and alert.source.offset == 12 and alert.anomalous_records == 2
    assert alert.last_seen == dt.datetime(2026, 1, 1, 12, 0, 2, tzinfo=dt.UTC)
    assert alert.first_seen == dt.datetime(2026, 1, 1, 12, 0, 1, tzinfo=dt.UTC)
    assert alert.json_bytes() == Alert.model_validate(first[0]).json_bytes()
    assert first[0]["first_seen"] == "2026-01-01T12:00:01Z"
    assert alert.summary == (
        "cpu_util anomalous on host-7: score 41.2 > 12.0 (critical); top: cpu_user 97 (expected 41)"
    )
    # A different episode start is a different alert.
    other = make_layer({"sinks": [file_sink(tmp_path, "other")]}, clock=clock)
    other.process(batch[2:])
    assert read_jsonl(tmp_path / "other.jsonl")[0]["id"] != alert.id


def test_timestamps_of_every_shape():
    fallback = 1_767_268_800.0
    expected = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    assert to_datetime(1_767_268_800, 0) == expected  # unix seconds
    assert to_datetime(1_767_268_800_000, 0) == expected  # Kafka milliseconds
    assert to_datetime("2026-01-01T12:00:00Z", 0) == expected
    assert to_datetime("2026-01-01T13:00:00+01:00", 0) == expected
    assert to_datetime("2026-01-01 12:00:00", 0) == expected  # naive = UTC
    for junk in (None, "yesterday", float("nan"), True, [1]):
        assert to_datetime(junk, fallback) == expected


def test_dedup_repeat_escalation_and_resolve(tmp_path, make_layer, clock):
    layer = make_layer(
        {
            "sinks": [file_sink(tmp_path, "f")],
            "repeat_interval_s": 600,
            "resolve_after_records": 3,
        },
        clock=clock,
    )
    layer.process([make_record("h1", True, severity="warning", score=13.0)] * 1)
    layer.process([make_record("h1", True, severity="warning", score=14.0) for _ in range(3)])
    assert notes(tmp_path, "f") == [("h1", "firing")]  # one alert per episode

    clock.advance(599)
    layer.process([make_record("h1", True, severity="warning")])
    assert len(notes(tmp_path, "f")) == 1
    clock.advance(1)
    layer.process([make_record("h1", True, severity="warning")])
    assert len(notes(tmp_path, "f")) == 2  # repeat interval elapsed

    layer.process([make_record("h1", True, severity="critical", score=40.0)])
    lines = read_jsonl(tmp_path / "f.jsonl")
    assert (
        len(lines) == 3 and lines[2]["peak_severity"] == "critical"
    )  # escalation notifies at once

    # Two normal records are not enough; an anomaly resets the count.
    layer.process([make_record("h1", False), make_record("h1", False)])
    layer.process([make_record("h1", True, severity="warning")])
    layer.process([make_record("h1", False), make_record("h1", False)])
    assert [s for _, s in notes(tmp_path, "f")] == ["firing"] * 3
    layer.process([make_record("h1", False)])
    lines = read_jsonl(tmp_path / "f.jsonl")
    assert [line["status"] for line in lines] == ["firing"] * 3 + ["resolved"]
    assert len({line["id"] for line in lines}) == 1
    resolved = lines[-1]
    assert resolved["anomalous_records"] == 8 and resolved["peak_severity"] == "critical"
    assert resolved["resolved_at"] is not None and "back to normal on h1" in resolved["summary"]
    assert layer.health()["episodes_open"] == 0

    # The next anomaly is a new episode with a new id.
    layer.process([make_record("h1", True)])
    lines = read_jsonl(tmp_path / "f.jsonl")
    assert lines[-1]["status"] == "firing" and lines[-1]["id"] != resolved["id"]


def test_an_episode_inside_one_batch_still_fires_then_resolves(tmp_path, make_layer, clock):
    layer = make_layer(
        {"sinks": [file_sink(tmp_path, "f")], "resolve_after_records": 2}, clock=clock
    )
    layer.process([make_record("h1", True), make_record("h1", False), make_record("h1", False)])
    assert notes(tmp_path, "f") == [("h1", "firing"), ("h1", "resolved")]


def test_episodes_are_per_group_and_group_by_is_configurable(tmp_path, make_layer, clock):
    layer = make_layer({"sinks": [file_sink(tmp_path, "f")]}, clock=clock)
    layer.process(
        [make_record("h1", True), make_record("h2", True), make_record("h1", True, topic="mem")]
    )
    assert len(read_jsonl(tmp_path / "f.jsonl")) == 3

    by_region = make_layer(
        {"sinks": [file_sink(tmp_path, "g")], "group_by": ["topic", "labels.region"]}, clock=clock
    )
    by_region.process(
        [
            make_record("h1", True, labels={"region": "eu"}),
            make_record("h2", True, labels={"region": "eu"}),
            make_record("h3", True, labels={"region": "us"}),
        ]
    )
    lines = read_jsonl(tmp_path / "g.jsonl")
    assert sorted(line["group"]["labels.region"] for line in lines) == ["eu", "us"]


def test_resolve_timeout_closes_silent_episodes(tmp_path, make_layer, clock):
    layer = make_layer({"sinks": [file_sink(tmp_path, "f")], "resolve_timeout_s": 300}, clock=clock)
    layer.process([make_record("h1", True)])
    clock.advance(301)
    layer.process([make_record("h2", False)])
    assert notes(tmp_path, "f") == [("h1", "firing"), ("h1", "resolved")]


def test_routes_first_match_stops_unless_continue(tmp_path, make_layer, clock):
    config = {
        "sinks": [file_sink(tmp_path, n) for n in ("pager", "db-team", "everything", "fallback")],
        "routes": [
            {
                "name": "page",
                "match": {"min_severity": "critical"},
                "sinks": ["pager"],
                "continue": True,
            },
            {"match": {"entity": "db-*"}, "sinks": ["db-team"]},
            {"match": {"labels": {"region": "eu-*"}}, "sinks": ["everything"]},
            {"match": {"topic": ["mem", "disk"], "severity": "warning"}, "sinks": ["everything"]},
        ],
        "default_sinks": ["fallback"],
    }
    layer = make_layer(config, clock=clock)
    layer.process(
        [
            make_record("db-1", True, severity="critical"),  # page, continue → db-team, stop
            make_record(
                "db-2", True, severity="major", labels={"region": "eu-west"}
            ),  # db-team only
            make_record(
                "web-1", True, severity="major", labels={"region": "eu-west"}
            ),  # everything
            make_record("web-2", True, severity="warning", topic="mem"),  # everything
            make_record("web-3", True, severity="major", topic="mem"),  # no match → fallback
            make_record(
                "web-4", True, severity="critical", labels={"region": "us"}
            ),  # page, then fallback? no: matched
        ]
    )
    assert sorted(e for e, _ in notes(tmp_path, "pager")) == ["db-1", "web-4"]
    assert sorted(e for e, _ in notes(tmp_path, "db-team")) == ["db-1", "db-2"]
    assert sorted(e for e, _ in notes(tmp_path, "everything")) == ["web-1", "web-2"]
    assert sorted(e for e, _ in notes(tmp_path, "fallback")) == ["web-3"]


def test_without_routes_every_alert_goes_to_every_sink(tmp_path, make_layer, clock):
    layer = make_layer({"sinks": [file_sink(tmp_path, "a"), file_sink(tmp_path, "b")]}, clock=clock)
    layer.process([make_record("h1", True)])
    assert notes(tmp_path, "a") == notes(tmp_path, "b") == [("h1", "firing")]


def test_resolve_goes_where_the_firing_went(tmp_path, make_layer, clock):
    layer = make_layer(
        {
            "sinks": [file_sink(tmp_path, "pager"), file_sink(tmp_path, "chat")],
            "routes": [
                {"match": {"min_severity": "critical"}, "sinks": ["pager"]},
                {"sinks": ["chat"]},
            ],
            "resolve_after_records": 1,
        },
        clock=clock,
    )
    layer.process([make_record("h1", True, severity="warning")])
    layer.process([make_record("h1", True, severity="critical")])  # escalates: now routed to pager
    layer.process([make_record("h1", False)])
    assert notes(tmp_path, "chat") == [("h1", "firing"), ("h1", "resolved")]
    assert notes(tmp_path, "pager") == [("h1", "firing"), ("h1", "resolved")]


def test_rate_limit_per_route_holds_back_without_losing(tmp_path, make_layer, clock):
    layer = make_layer(
        {
            "sinks": [file_sink(tmp_path, "limited"), file_sink(tmp_path, "free")],
            "routes": [
                {
                    "match": {"topic": "cpu_util"},
                    "sinks": ["limited"],
                    "rate_limit": {"max_alerts": 2, "per_s": 0.5},
                    "continue": True,
                },
                {"sinks": ["free"]},
            ],
        },
        clock=clock,
    )
    layer.process([make_record(f"h{i}", True) for i in range(5)])
    assert len(notes(tmp_path, "limited")) == 2
    assert len(notes(tmp_path, "free")) == 5  # other routes are not limited
    held_back = {f"h{i}" for i in range(5)} - {e for e, _ in notes(tmp_path, "limited")}

    # Once the bucket refills, the held-back episodes notify with their next anomaly.
    from tests.conftest import wait_for

    def refilled():
        layer.process([make_record(e, True) for e in sorted(held_back)])
        return len(notes(tmp_path, "limited")) == 5

    wait_for(refilled, timeout=10, message="the rate limit to let the held-back alerts through")
    assert {e for e, _ in notes(tmp_path, "limited")} == {f"h{i}" for i in range(5)}


def test_a_retried_batch_is_not_counted_twice(tmp_path, make_layer, clock):
    layer = make_layer(
        {"sinks": [file_sink(tmp_path, "f")], "resolve_after_records": 2}, clock=clock
    )
    layer.process([make_record("h1", True)])
    batch = [make_record("h1", False)]
    layer.process(batch)
    layer.process(batch)  # the daemon retrying the same batch: still one normal record
    assert notes(tmp_path, "f") == [("h1", "firing")]
    layer.process([make_record("h1", False)])
    assert notes(tmp_path, "f") == [("h1", "firing"), ("h1", "resolved")]


def test_system_alerts_through_notify(tmp_path, make_layer, clock):
    layer = make_layer(
        {
            "sinks": [file_sink(tmp_path, "ops"), file_sink(tmp_path, "data")],
            "routes": [{"match": {"kind": "system"}, "sinks": ["ops"]}, {"sinks": ["data"]}],
        },
        clock=clock,
    )
    alert = Alert.system(
        "vaeguard.retrain",
        "retraining refused: the candidate's false-positive rate 4.1% exceeds 1.0%",
        details={"fpr": 0.041},
        key="run-42",
    )
    layer.notify(alert)
    lines = read_jsonl(tmp_path / "ops.jsonl")
    assert (
        len(lines) == 1 and lines[0]["kind"] == "system" and lines[0]["details"] == {"fpr": 0.041}
    )
    assert not read_jsonl(tmp_path / "data.jsonl")
    assert Alert.system("vaeguard.retrain", "x", key="run-42").id == alert.id


def test_log_sink_writes_structured_lines(make_layer, caplog, clock):
    layer = make_layer({}, clock=clock)  # the default: one log sink
    with caplog.at_level("INFO", logger="vaeguard.alerts.log"):
        layer.process([make_record("h1", True)])
    records = [r for r in caplog.records if r.name == "vaeguard.alerts.log"]
    assert len(records) == 1
    assert records[0].getMessage().startswith("cpu_util anomalous on h1")
    assert records[0].alert["entity"] == "h1" and records[0].alert["status"] == "firing"


def test_open_episodes_are_capped_least_recently_active_first(tmp_path, make_layer, clock):
    from prometheus_client import REGISTRY

    def evicted() -> float:
        return REGISTRY.get_sample_value("vaeguard_alerts_episodes_evicted_total") or 0.0

    before = evicted()
    layer = make_layer(
        {"sinks": [file_sink(tmp_path, "f")], "max_open_episodes": 3, "repeat_interval_s": 0},
        clock=clock,
    )
    layer.process([make_record(h, True) for h in ("h1", "h2", "h3")])
    layer.process([make_record("h1", True)])  # h1 active again: h2 is now the least recent
    layer.process([make_record("h4", True)])
    assert layer.health()["episodes_open"] == 3 and evicted() == before + 1
    lines = read_jsonl(tmp_path / "f.jsonl")
    closed = lines[-2]  # h2's resolve, then h4's firing
    assert (closed["entity"], closed["status"], lines[-1]["entity"]) == ("h2", "resolved", "h4")
    assert "closed: more than 3 episodes open (alerts.max_open_episodes)" in closed["summary"]
    first_h2 = next(line for line in lines if line["entity"] == "h2")
    assert closed["id"] == first_h2["id"]  # the receiver closes the episode it knows

    # A flood of new keys in one batch stays within the cap; each evicted episode is closed.
    layer.process([make_record(f"new-{i}", True) for i in range(50)])
    assert layer.health()["episodes_open"] == 3 and evicted() == before + 1 + 50
    statuses = [(line["entity"], line["status"]) for line in read_jsonl(tmp_path / "f.jsonl")]
    for entity in ("h1", "h3", "h4", *(f"new-{i}" for i in range(47))):
        assert (entity, "resolved") in statuses
    layer.process([make_record("h2", True)])  # back after eviction: a new episode, new id
    assert read_jsonl(tmp_path / "f.jsonl")[-1]["id"] != first_h2["id"]


def test_max_open_episodes_defaults_and_validates():
    import pytest

    from vaeguard.alerts.settings import AlertsSettings
    from vaeguard.errors import ConfigError

    assert AlertsSettings().max_open_episodes == 10_000
    with pytest.raises(ConfigError, match=r"alerts\.max_open_episodes"):
        AlertsSettings.from_mapping({"max_open_episodes": 0})
