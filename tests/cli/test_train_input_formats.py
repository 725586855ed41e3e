"""`vaeguard train` / `train-window --input-settings`: a file of Prometheus adapter / Telegraf
messages is read as the daemon reads its topics (one mapping for training and serving)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.conftest import make_normal_data
from vaeguard.cli.main import app

T0 = 1_764_979_200


def test_train_reads_prometheus_adapter_messages(tmp_path):
    x = make_normal_data(400, seed=3, n_features=3)
    lines = []
    for i, row in enumerate(x):
        stamp = T0 + 15 * i
        for name, value in zip(("cpu", "mem", "io"), row, strict=True):
            lines.append({"name": f"node_{name}", "value": f"{value:.6f}", "timestamp": stamp,
                          "labels": {"instance": f"web-{i % 3}", "job": "node"}})  # fmt: skip
        lines.append({"name": "up", "value": "1", "timestamp": stamp, "labels": {"instance": "x"}})
    lines.append(
        {"name": "node_cpu", "value": "+Inf", "timestamp": T0, "labels": {"instance": "y"}}
    )
    data = tmp_path / "samples.jsonl"
    data.write_text("".join(json.dumps(m) + "\n" for m in lines))
    settings = tmp_path / "vaeguard.yaml"
    settings.write_text(
        "input:\n  format: prometheus\n  entity: labels.instance\n  interval_s: 15\n"
        "  fields:\n    cpu: node_cpu\n    mem: node_mem\n    io: node_io\n"
    )
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--input-settings", str(settings),
         "--out", str(tmp_path / "model"), "--json", "--epochs", "5", "--hidden", "8",
         "--latent-dim", "2", "--mc-samples", "2", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["features"] == ["cpu", "mem", "io"] and summary["rows"] == 400, summary
    assert "1 message(s) refused" in result.stderr and "non_finite: 1" in result.stderr


def test_train_window_reads_telegraf_messages_one_metric_at_a_time(tmp_path):
    x = make_normal_data(120, seed=4, n_features=2)
    lines = []
    for i, (cpu, lat) in enumerate(x):
        for measurement, field, value in (("cpu", "usage_user", cpu), ("http", "latency", lat)):
            lines.append({"name": measurement, "tags": {"host": "web-1"}, "timestamp": T0 + 60 * i,
                          "fields": {field: float(value)}})  # fmt: skip
    data = tmp_path / "telegraf.jsonl"
    data.write_text("".join(json.dumps(m) + "\n" for m in lines))
    settings = tmp_path / "vaeguard.yaml"
    settings.write_text(
        "input:\n  format: telegraf\n"
        "  fields:\n    cpu: fields.usage_user\n    lat: fields.latency\n"
    )
    result = CliRunner().invoke(
        app,
        ["train-window", "--data", str(data), "--input-settings", str(settings),
         "--metrics", "cpu,lat", "--window", "8", "--interval", "60", "--steps", "5",
         "--hidden", "8", "--latent-dim", "2", "--mc-samples", "2",
         "--out", str(tmp_path / "window"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # one record per metric and point: the window takes them one metric at a time
    assert (summary["records"], summary["entities"]) == (240, 1), summary
