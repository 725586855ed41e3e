"""The Slack sink against a real HTTP server standing in for Slack's incoming webhook."""

from __future__ import annotations

import logging

import pytest

from vaeguard.alerts.spool import Spool
from vaeguard.alerts.testing import HTTPCapture, layer_for, make_record
from vaeguard.errors import ConfigError

PATH = "/services/T000/B000/sEcReTtOkEn"


@pytest.fixture
def slack():
    with HTTPCapture(response_body=b"ok") as server:
        yield server


def sink(url: str, **extra) -> dict:
    return {
        "name": "team-slack",
        "type": "slack",
        "webhook_url": url + PATH,
        "mention": "<!here>",
        **extra,
    }


def test_firing_and_resolved_messages_in_block_kit(slack, tmp_path):
    with layer_for([sink(slack.url)], tmp_path / "spool", resolve_after_records=1) as layer:
        layer.process([make_record("db-1", True)])
        layer.process([make_record("db-1", False)])
    firing, resolved = (r.json() for r in slack.received)
    assert slack.received[0].path == PATH
    assert firing["text"].startswith(  # Slack shows &gt; as ">"
        "<!here> cpu_util anomalous on db-1: score 41.2 &gt; 12.0 (critical)"
    )
    kinds = [b["type"] for b in firing["blocks"]]
    assert kinds[0] == "header" and kinds[-1] == "context" and "section" in kinds
    assert "FIRING · critical · cpu_util · db-1" in firing["blocks"][0]["text"]["text"]
    top = [
        b
        for b in firing["blocks"]
        if b["type"] == "section" and "Top features" in b.get("text", {}).get("text", "")
    ]
    assert "`cpu_user` observed *97*, expected 41" in top[0]["text"]["text"]
    assert "RESOLVED" in resolved["blocks"][0]["text"]["text"] and not resolved["text"].startswith(
        "<!here>"
    )
    alert_ids = [r["blocks"][-1]["elements"][0]["text"] for r in (firing, resolved)]
    assert alert_ids[0] == alert_ids[1]  # one episode, one id


def test_rate_limited_is_retried_and_a_revoked_webhook_is_parked(slack, tmp_path, caplog):
    slack.fail_next(1, status=429)
    slack.response_headers["Retry-After"] = "0"
    with caplog.at_level(logging.DEBUG), layer_for([sink(slack.url)], tmp_path / "spool") as layer:
        layer.process([make_record("h1", True)])
        assert len(slack.requests) == 2 and len(slack.received) == 1
        slack.status = 404
        layer.process([make_record("h2", True)])
        assert len(slack.requests) == 3  # 404 is permanent: no retries
        health = layer.health()
    [parked] = Spool(tmp_path / "spool", "team-slack").pending()
    assert parked.alert.entity == "h2" and "HTTP 404" in parked.reason
    # The webhook URL is a credential: never in logs, health or the spool's reason.
    assert "sEcReTtOkEn" not in caplog.text + repr(health) + parked.reason


def test_bad_config_names_the_field():
    from vaeguard.alerts.settings import AlertsSettings

    with pytest.raises(
        ConfigError, match=r"alerts.sinks\[team-slack\].webhook_url: .*http\(s\) URL"
    ):
        AlertsSettings.from_mapping(
            {"sinks": [{"name": "team-slack", "type": "slack", "webhook_url": "hooks.slack.com"}]}
        )


def test_alert_text_cannot_ping_forge_links_or_break_limits(slack, tmp_path):
    entity = "<!channel> <https://evil.example|click> & more\n*bold*" + "x" * 4000
    with layer_for([sink(slack.url, mention=None)], tmp_path / "spool") as layer:
        layer.process([make_record(entity, True)])
    [message] = (r.json() for r in slack.received)
    parsed = [  # mrkdwn is parsed for mentions and links; the header's plain_text is not
        t["text"]
        for b in message["blocks"]
        for t in [b.get("text", {}), *b.get("fields", []), *b.get("elements", [])]
        if t.get("type") == "mrkdwn"
    ]
    for text in [message["text"], *parsed]:
        assert "<!channel>" not in text and "<https://" not in text
    section = message["blocks"][1]["text"]["text"]
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; more *bold*" in section
    assert len(section) <= 3000 and len(message["text"]) <= 3000
    header = message["blocks"][0]["text"]["text"]
    assert len(header) <= 150 and "\n" not in header
