"""The ``alerts:`` section: defaults, the minimal config, and errors that name sink and field."""

from __future__ import annotations

import textwrap

import pytest

from vaeguard.alerts.layer import build_alert_layer
from vaeguard.alerts.settings import AlertsSettings
from vaeguard.alerts.sinks.webhook import WebhookSettings
from vaeguard.errors import ConfigError


def test_absent_section_means_one_log_sink():
    for settings in (
        AlertsSettings(),
        AlertsSettings.from_mapping(None),
        AlertsSettings.from_mapping({"sinks": []}),
    ):
        assert [(s.name, s.type) for s in settings.sinks] == [("log", "log")]
        assert settings.routes == []


def test_issue_minimal_config_is_valid_and_its_secret_is_masked():
    settings = AlertsSettings.from_mapping(
        {
            "sinks": [
                {
                    "name": "ops-webhook",
                    "type": "webhook",
                    "url": "http://127.0.0.1:8080/hook",
                    "secret": "change-me",
                }
            ]
        }
    )
    sink = settings.sinks[0]
    assert isinstance(sink.settings, WebhookSettings)
    assert sink.settings.secret.get_secret_value() == "change-me"
    dumped = settings.model_dump(mode="json")
    assert dumped["sinks"][0]["url"] == "http://127.0.0.1:8080/hook"
    assert "change-me" not in str(dumped) and "change-me" not in repr(settings)


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        ({"url": "not a url"}, "alerts.sinks[ops-webhook].url"),
        (
            {"url": "http://127.0.0.1/x", "sekret": "x"},
            "alerts.sinks[ops-webhook].sekret: unknown setting for a webhook sink; known settings: ca_file, headers",
        ),
        (
            {"url": "http://127.0.0.1/x", "delivery": {"retries": -1}},
            "alerts.sinks[ops-webhook].delivery.retries",
        ),
        (
            {"url": "http://127.0.0.1/x", "repeat_interval_s": "soon"},
            "alerts.sinks[ops-webhook].repeat_interval_s",
        ),
        ({}, "missing setting alerts.sinks[ops-webhook].url"),
    ],
)
def test_bad_sink_config_names_the_sink_and_the_field(sink, expected):
    with pytest.raises(ConfigError) as err:
        AlertsSettings.from_mapping({"sinks": [{"name": "ops-webhook", "type": "webhook", **sink}]})
    assert expected in str(err.value)


def test_unknown_sink_type_lists_the_installed_types():
    with pytest.raises(ConfigError) as err:
        AlertsSettings.from_mapping({"sinks": [{"name": "x", "type": "carrier-pigeon"}]})
    message = str(err.value)
    assert "alerts.sinks[x].type: unknown sink type 'carrier-pigeon'" in message
    assert "installed sink types: " in message and "webhook" in message and "file" in message


def test_structural_mistakes_are_named():
    cases = {
        "alerts.sinks[1].name": {"sinks": [{"name": "a", "type": "log"}, {"type": "log"}]},
        "alerts.sinks[a].name: duplicate sink name 'a'": {
            "sinks": [{"name": "a", "type": "log"}, {"name": "a", "type": "log"}]
        },
        "alerts.routes.0.sinks: unknown sink 'nope' (configured: a)": {
            "sinks": [{"name": "a", "type": "log"}],
            "routes": [{"match": {"topic": "x"}, "sinks": ["nope"]}],
        },
        "alerts.default_sinks: unknown sink 'b'": {
            "sinks": [{"name": "a", "type": "log"}],
            "default_sinks": ["b"],
        },
        "alerts.group_by": {"group_by": ["host"]},
        "unknown setting alerts.sinkz": {"sinkz": []},
    }
    for expected, config in cases.items():
        with pytest.raises(ConfigError) as err:
            AlertsSettings.from_mapping(config)
        assert expected in str(err.value), (expected, str(err.value))


def test_route_with_unknown_severity_fails_at_build(tmp_path):
    settings = AlertsSettings.from_mapping(
        {
            "spool_dir": str(tmp_path),
            "routes": [{"match": {"min_severity": "catastrophic"}, "sinks": ["log"]}],
        }
    )
    with pytest.raises(
        ConfigError, match=r"alerts.routes.0.match.min_severity: unknown severity 'catastrophic'"
    ):
        build_alert_layer(settings)


def test_daemon_settings_load_the_section_from_yaml_and_environment(tmp_path, monkeypatch):
    from vaeguard.config import load_settings

    cfg = tmp_path / "vaeguard.yaml"
    cfg.write_text(
        textwrap.dedent(
            """
            alerts:
              sinks:
                - name: ops-webhook
                  type: webhook
                  url: http://127.0.0.1:8080/hook
                  secret: change-me
              routes:
                - match: {min_severity: major}
                  sinks: [ops-webhook]
                  continue: true
            """
        )
    )
    monkeypatch.setenv("VAEGUARD_ALERTS__SPOOL_DIR", str(tmp_path / "spool"))
    settings = load_settings(cfg)
    assert settings.alerts.sinks[0].name == "ops-webhook"
    assert settings.alerts.routes[0].continue_ is True
    assert str(settings.alerts.spool_dir) == str(tmp_path / "spool")
    assert "change-me" not in str(settings.redacted())

    cfg.write_text("alerts:\n  sinks:\n    - {name: ops-webhook, type: webhook, url: 'ftp:/x'}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "alerts.sinks[ops-webhook].url" in str(err.value)


def test_the_example_alerts_config_is_valid(sink_plugins):
    """config/alerts.example.yaml documents every sink type and setting, and it validates."""
    from pathlib import Path

    import yaml

    example = Path(__file__).resolve().parents[2] / "config" / "alerts.example.yaml"
    settings = AlertsSettings.from_mapping(yaml.safe_load(example.read_text())["alerts"])
    types = {s.type for s in settings.sinks}
    assert types == {"webhook", "file", "kafka", "slack", "pagerduty", "alertmanager", "email"}
    text = example.read_text()
    for field in AlertsSettings.model_fields:
        assert f"{field}:" in text, f"alerts.{field} is not in the example"
    for field in type(settings.delivery).model_fields:
        assert f"{field}:" in text, f"alerts.delivery.{field} is not in the example"
    assert "change-me" not in str(settings.model_dump(mode="json"))


def test_the_default_spool_is_absolute_and_follows_the_state_home(tmp_path, monkeypatch):
    """A daemon restarted from another working directory finds the alerts it spooled."""
    from vaeguard.alerts.settings import AlertsSettings

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    spool = AlertsSettings().spool_dir
    assert spool.is_absolute()
    assert spool == tmp_path / "state" / "vaeguard" / "spool"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert (
        AlertsSettings().spool_dir == tmp_path / "home" / ".local" / "state" / "vaeguard" / "spool"
    )
