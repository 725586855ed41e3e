"""Discovery through entry points (a third party's package included) and the CLI commands,
run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from vaeguard.alerts import discovery
from vaeguard.alerts.settings import AlertsSettings
from vaeguard.alerts.spool import Spool
from vaeguard.alerts.testing import HTTPCapture, free_port, make_record
from vaeguard.errors import ConfigError

from .conftest import FAST

BUILTIN = {"log", "file", "kafka", "webhook"}
FIRST_PARTY = {"slack", "pagerduty", "alertmanager", "email"}


def vaeguard(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "vaeguard.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_third_party_sink_is_discovered_by_its_entry_point(sink_plugins, tmp_path, make_layer):
    plugin = discovery.find("acme-memo")
    assert (
        plugin.package == "acme-vaeguard-sink" and plugin.version == "2.3.4" and not plugin.builtin
    )
    memo = tmp_path / "memo.txt"
    layer = make_layer(
        {"sinks": [{"name": "acme", "type": "acme-memo", "path": str(memo), "prefix": "ACME"}]}
    )
    layer.process([make_record("h1", True)])
    [line] = memo.read_text().splitlines()
    assert line.startswith("ACME ") and line.endswith(" firing")
    with pytest.raises(
        ConfigError,
        match=r"alerts.sinks\[acme\].colour: unknown setting for a acme-memo sink; known settings: path, prefix",
    ):
        AlertsSettings.from_mapping(
            {"sinks": [{"name": "acme", "type": "acme-memo", "path": "x", "colour": "red"}]}
        )
    with pytest.raises(ConfigError) as err:
        AlertsSettings.from_mapping({"sinks": [{"name": "x", "type": "nope"}]})
    assert "acme-memo" in str(err.value) and "slack" in str(err.value)


def test_plugins_list_json_marks_builtins(sink_plugins, tmp_path):
    result = vaeguard(["plugins", "list", "--json"], sink_plugins.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert BUILTIN | FIRST_PARTY | {"acme-memo"} <= set(rows)
    for name in BUILTIN:
        assert rows[name]["builtin"] is True and rows[name]["package"] == "vaeguard"
    for name in FIRST_PARTY:
        row = rows[name]
        assert (
            row["builtin"] is False
            and row["package"] == f"vaeguard-{name}"
            and row["version"] == "0.1.0"
        )
        assert row["description"] and "error" not in row


def write_config(tmp_path, url: str, spool_dir) -> str:
    path = tmp_path / "vaeguard.yaml"
    delivery = json.dumps(FAST)
    path.write_text(
        textwrap.dedent(
            f"""
            alerts:
              spool_dir: {spool_dir}
              delivery: {delivery}
              sinks:
                - name: hook
                  type: webhook
                  url: {url}/hook
                  secret: cli-secret
            """
        )
    )
    return str(path)


def test_alert_test_sends_one_alert_or_fails_with_one_line(sink_plugins, tmp_path, capture):
    cfg = write_config(tmp_path, capture.url, tmp_path / "spool")
    capture.fail_next(1, status=502)
    ok = vaeguard(
        ["alert", "test", "--config", cfg, "--sink", "hook"], sink_plugins.env(), tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert "delivered test alert" in ok.stdout and "(2 attempts)" in ok.stdout
    [request] = capture.received
    assert request.json()["kind"] == "test"

    down = write_config(tmp_path, f"http://127.0.0.1:{free_port()}", tmp_path / "spool")
    bad = vaeguard(
        ["alert", "test", "--config", down, "--sink", "hook"], sink_plugins.env(), tmp_path
    )
    assert bad.returncode == 1
    [line] = bad.stderr.strip().splitlines()
    assert line.startswith("vaeguard: error: sink 'hook' (webhook) did not accept the test alert")
    assert "cli-secret" not in bad.stderr + bad.stdout
    assert not (tmp_path / "spool").exists()  # a test alert is never spooled

    unknown = vaeguard(
        ["alert", "test", "--config", cfg, "--sink", "nope"], sink_plugins.env(), tmp_path
    )
    assert unknown.returncode == 2 and "no sink named 'nope'" in unknown.stderr


def test_spool_list_and_flush(sink_plugins, tmp_path, make_layer):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spool_dir = tmp_path / "spool"
    layer = make_layer(
        {
            "sinks": [{"name": "hook", "type": "webhook", "url": url + "/hook"}],
            "spool_dir": str(spool_dir),
        }
    )
    layer.process([make_record("h1", True), make_record("h2", True)])
    layer.close()  # the daemon stopped with two alerts spooled
    cfg = write_config(tmp_path, url, spool_dir)

    listed = vaeguard(["spool", "list", "--config", cfg, "--json"], sink_plugins.env(), tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["sink"], r["entity"], r["status"]) for r in rows] == [
        ("hook", "h1", "firing"),
        ("hook", "h2", "firing"),
    ]

    failed = vaeguard(["spool", "flush", "--config", cfg], sink_plugins.env(), tmp_path)
    assert failed.returncode == 1 and "2 alert(s) are still in the spool" in failed.stderr
    assert len(Spool(spool_dir, "hook").pending()) == 2

    with HTTPCapture(port=port) as server:
        flushed = vaeguard(["spool", "flush", "--config", cfg], sink_plugins.env(), tmp_path)
        assert flushed.returncode == 0, flushed.stderr
        assert "hook: 2 delivered, 0 still pending" in flushed.stdout
        assert [r.json()["entity"] for r in server.received] == ["h1", "h2"]
    assert Spool(spool_dir, "hook").pending() == []
    empty = vaeguard(["spool", "list", "--spool-dir", str(spool_dir)], sink_plugins.env(), tmp_path)
    assert "is empty" in empty.stdout
