"""`vaeguard train --registry` and `vaeguard retrain` against a real broker, end to end.

The success path runs the real entry point in-process (fast); the refusals run it as a
subprocess, so the exit code and the single stderr line are exactly what cron would see.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_normal_data
from tests.retrain.conftest import FEATURES, produce, quiet_then_busy, topic_name
from vaeguard.cli.main import main
from vaeguard.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]


def run_main(*args) -> int:
    """The `vaeguard` entry point in this process; returns its exit code."""
    argv = sys.argv
    sys.argv = ["vaeguard", *map(str, args)]
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


def run_process(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAEGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "vaeguard.cli.main", *map(str, args)],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch):
    """The CLI configures the root logger; give the rest of the session its own back."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for name in list(os.environ):
        if name.startswith("VAEGUARD_"):
            monkeypatch.delenv(name)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def trained_registry(tmp_path_factory):
    """`vaeguard train --registry` on normal data: a registry whose v0001 is current."""
    tmp = tmp_path_factory.mktemp("trained")
    x = make_normal_data(1500, seed=40)
    csv = tmp / "normal.csv"
    csv.write_text(
        ",".join(FEATURES) + "\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in x)
    )
    registry = tmp / "registry"
    code = run_main(
        "train", "--data", csv, "--registry", registry, "--epochs", "25", "--hidden", "16,8",
        "--latent-dim", "2", "--mc-samples", "8", "--quiet",
    )  # fmt: skip
    assert code == 0
    return registry


@pytest.fixture
def registry(trained_registry, tmp_path) -> Path:
    path = tmp_path / "registry"
    shutil.copytree(trained_registry, path)
    return path


def config(tmp_path: Path, broker, registry: Path, topic: str, **retrain) -> Path:
    settings = {
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "input_topics": [topic]},
        "model": {"path": str(registry)},
        "retrain": {
            "window": "1h",
            "min_records": 400,
            "poll_timeout_s": 5,
            "epochs": 10,
            **retrain,
        },
    }
    path = tmp_path / f"vaeguard-{topic}.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


def own_lines(err: str) -> str:
    """Standard error without the lines of kafka-python clients that earlier tests of this
    process left behind: they log their own reconnects (to a broker already stopped) into
    whatever an in-process command captures."""
    return "".join(line for line in err.splitlines(True) if '"logger":"kafka.' not in line)


def test_train_then_retrain_promotes_refuses_an_incident_and_rolls_back(
    registry, broker, tmp_path, capfd
):
    reg = ModelRegistry(registry)
    assert reg.version_names() == ["v0001"] and reg.current() == "v0001"
    assert reg.info("v0001").lineage["source"] == "train"

    normal = topic_name()
    produce(broker, normal, make_normal_data(1000, seed=41))
    capfd.readouterr()
    assert run_main("retrain", "--config", config(tmp_path, broker, registry, normal)) == 0
    out, err = capfd.readouterr()
    summary = json.loads(out)
    assert summary["status"] == "promoted", summary
    assert (summary["current"], summary["candidate"]) == ("v0001", "v0002")
    assert own_lines(err) == ""  # what the command itself writes must be nothing
    assert reg.current() == "v0002" and reg.info("v0002").lineage["parent"] == "v0001"

    # An all-anomalous window (an incident) is refused: exit 3, one line, v0002 stays.
    incident = topic_name()
    produce(broker, incident, make_normal_data(600, seed=42) + 8.0)
    result = run_process("retrain", "--config", config(tmp_path, broker, registry, incident))
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "vaeguard: error: retraining refused: "
    )
    assert "new normal" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["status"] == "refused"
    assert reg.current() == "v0002" and reg.version_names() == ["v0001", "v0002"]

    assert run_main("models", "rollback", "--registry", registry) == 0
    assert reg.current() == "v0001"


def test_a_rejected_candidate_exits_4_and_alerts_through_the_sinks(
    registry, broker, tmp_path, capfd
):
    topic = topic_name()
    quiet_then_busy(broker, topic)
    alerts_file = tmp_path / "alerts.jsonl"
    cfg = config(tmp_path, broker, registry, topic, epochs=2)
    data = json.loads(cfg.read_text())
    data["alerts"] = {"sinks": [{"name": "f", "type": "file", "path": str(alerts_file)}]}
    cfg.write_text(json.dumps(data))
    capfd.readouterr()
    assert run_main("retrain", "--config", cfg) == 4
    out, err = capfd.readouterr()
    assert json.loads(out)["status"] == "rejected"
    err = own_lines(err)
    assert err.startswith("vaeguard: error: retraining candidate rejected, v0001 stays current: ")
    assert "median holdout score" in err
    (alert,) = [json.loads(line) for line in alerts_file.read_text().splitlines()]
    assert alert["kind"] == "system" and alert["stream"] == "vaeguard.retrain"
    assert alert["details"]["status"] == "rejected" and "median holdout score" in alert["summary"]
    assert ModelRegistry(registry).version_names() == ["v0001"]


def test_two_retrains_cannot_both_run(registry, broker, tmp_path):
    """A second process is refused while the first holds the registry's retrain lock."""
    topic = topic_name()
    produce(broker, topic, make_normal_data(500, seed=43))
    reg = ModelRegistry(registry)
    with reg.lock("retrain", blocking=False):
        result = run_process("retrain", "--config", config(tmp_path, broker, registry, topic))
    assert result.returncode == 3, result.stderr
    assert (
        result.stderr == "vaeguard: error: retraining refused: another retraining job is running\n"
    )
    assert reg.version_names() == ["v0001"]


def test_retrain_needs_a_registry(small_bundle, broker, tmp_path):
    result = run_process("retrain", "--config", config(tmp_path, broker, small_bundle, "t"))
    assert result.returncode == 2
    assert result.stderr.startswith("vaeguard: error: invalid setting model.path: ")
    assert "is not a model registry" in result.stderr
