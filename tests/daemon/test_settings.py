"""Settings: YAML + environment, precedence, unknown keys, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vaeguard.config import Settings, load_settings
from vaeguard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "vaeguard.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("VAEGUARD_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vaeguard.yaml"
    path.write_text(text)
    return path


def test_yaml_then_env_precedence(tmp_path, monkeypatch):
    cfg = write(
        tmp_path,
        "kafka:\n  group_id: from-yaml\n  input_topics: [a, b]\nscoring:\n  top_k: 5\n",
    )
    s = load_settings(cfg)
    assert s.kafka.group_id == "from-yaml" and s.kafka.input_topics == ["a", "b"]
    assert s.scoring.top_k == 5 and s.shutdown_grace_s == 30.0
    monkeypatch.setenv("VAEGUARD_KAFKA__GROUP_ID", "from-env")
    monkeypatch.setenv("VAEGUARD_KAFKA__INPUT_TOPICS", '["x", "y", "z"]')
    monkeypatch.setenv("VAEGUARD_HTTP__PORT", "0")
    s = load_settings(cfg)
    assert s.kafka.group_id == "from-env" and s.kafka.input_topics == ["x", "y", "z"]
    assert s.scoring.top_k == 5 and s.http.port == 0


def test_example_config_is_valid_and_complete():
    s = load_settings(EXAMPLE)
    documented = EXAMPLE.read_text()
    for section in ("kafka", "model", "scoring", "http", "logging"):
        for field in type(getattr(s, section)).model_fields:
            assert field in documented, f"{section}.{field} is not in config/vaeguard.yaml"
    assert "alerts:" in documented


def test_secrets_are_redacted_and_passed_through(monkeypatch):
    monkeypatch.setenv("VAEGUARD_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("VAEGUARD_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("VAEGUARD_KAFKA__SASL_PLAIN_USERNAME", "svc")
    monkeypatch.setenv("VAEGUARD_KAFKA__SASL_PLAIN_PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in str(s.redacted()) and "hunter2" not in repr(s)
    config = s.kafka.client_config()
    assert config["sasl_plain_password"] == "hunter2"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"


@pytest.mark.parametrize(
    ("yaml_text", "env", "expected"),
    [
        ("kafka:\n  group_idd: x\n", {}, "unknown setting kafka.group_idd"),
        ("kafak:\n  group_id: x\n", {}, "unknown setting kafak"),
        ("scoring:\n  batch_max_records: -1\n", {}, "invalid setting scoring.batch_max_records"),
        ("", {"VAEGUARD_KAFKA__SESSION_TIMEOUT_MS": "soon"}, "VAEGUARD_KAFKA__SESSION_TIMEOUT_MS"),
        ("", {"VAEGUARD_KAFKA__INPUT_TOPICS": '["a",'}, "invalid setting kafka.input_topics"),
        ("", {"VAEGUARD_KAFKA__INPUT_TOPICS": '["bad topic"]'}, "VAEGUARD_KAFKA__INPUT_TOPICS"),
        ("", {"VAEGUARD_MODEL__DEVICE": "tpu"}, "invalid setting model.device"),
        (
            "",
            {"VAEGUARD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"},
            "invalid setting kafka.sasl_mechanism",
        ),
        ("kafka:\n  ssl_cafile: /nonexistent/ca.pem\n", {}, "invalid setting kafka.ssl_cafile"),
        ("kafka: [1, 2\n", {}, "is not valid YAML at line"),
        ("- a\n- b\n", {}, "must hold a mapping"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, monkeypatch, yaml_text, env, expected):
    cfg = write(tmp_path, yaml_text)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_env_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("VAEGUARD_KAFKA__GROUP_ID", "  ")
    with pytest.raises(
        ConfigError, match=r"kafka\.group_id \(from environment variable VAEGUARD_KAFKA__GROUP_ID\)"
    ):
        load_settings()


def _run(args, env, tmp_path):
    import os

    return subprocess.run(
        [sys.executable, "-m", "vaeguard.cli.main", *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("VAEGUARD_")}, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_run_exits_2_with_one_line_for_bad_yaml_and_env(tmp_path):
    cfg = write(tmp_path, "kafka:\n  bootstrap_server: localhost:9092\n")
    r = _run(["run", "--config", str(cfg)], {}, tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(
        "vaeguard: error: unknown setting kafka.bootstrap_server"
    )
    assert "Traceback" not in r.stderr

    r = _run(["run"], {"VAEGUARD_HTTP__PORT": "99999"}, tmp_path)
    assert r.returncode == 2
    assert "invalid setting http.port (from environment variable VAEGUARD_HTTP__PORT)" in r.stderr
    assert r.stderr.count("\n") == 1

    r = _run(["run"], {}, tmp_path)
    assert r.returncode == 2 and "missing setting model.path" in r.stderr

    r = _run(["run"], {"VAEGUARD_MODEL__PATH": str(tmp_path / "nope")}, tmp_path)
    assert r.returncode == 2 and "invalid setting model.path" in r.stderr


def test_defaults_are_consistent():
    s = Settings()
    assert s.kafka.heartbeat_interval_ms * 3 <= s.kafka.session_timeout_ms
    assert s.http.host == "127.0.0.1"


def test_the_consumer_never_waits_longer_than_a_batch_does(monkeypatch):
    """A fetch may sit at the broker for fetch_max_wait_ms: with the 500 ms default every
    record would wait that long on a quiet topic, whatever batch_max_wait_ms says."""
    from vaeguard.daemon.pipeline import Pipeline, Shutdown

    monkeypatch.setenv("VAEGUARD_SCORING__BATCH_MAX_WAIT_MS", "35")
    pipeline = Pipeline(
        load_settings(None), provider=None, alert_layer=None, shutdown=Shutdown(grace_s=30)
    )
    options = pipeline.consumer_options()
    assert options["fetch_max_wait_ms"] == 35
    assert options["enable_auto_commit"] is False
