"""Every README command with bad options and bad inputs: one line on stderr, the documented
exit code (`vaeguard.cli.exit_codes.ExitCode`), never a traceback (issue 28, item 1).

The commands run in this process through the test runner, which goes through the same root
command as the console script; one tiny tabular bundle, a registry holding it and one tiny
window bundle serve every case that needs a model.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from vaeguard.cli.exit_codes import ExitCode
from vaeguard.cli.main import app

OK, FAIL, USAGE = ExitCode.OK, ExitCode.FAILURE, ExitCode.USAGE
WINDOW_FAST = (
    *("--window", "8", "--steps", "10", "--hidden", "8", "--latent-dim", "2"),
    *("--mc-samples", "2", "--likelihood-warmup", "20", "--interval", "60"),
)


def invoke(args, env=None, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env, input=input)


def window_records(n: int = 260) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        for host, offset in (("web-1", 0.0), ("web-2", 20.0)):
            cpu = offset + 10 + 3 * math.sin(2 * math.pi * i / 24) + 0.3 * rng.standard_normal()
            out.append({"host": host, "ts": 1_700_000_000 + 60 * i, "cpu": cpu, "lat": 5.0})
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files and models shared by every case (trained once: a few seconds)."""
    from vaeguard import VAEDetector
    from vaeguard.registry import ModelRegistry

    root = tmp_path_factory.mktemp("walk")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3))
    lines = ["a,b,c,label"] + [
        f"{a:.4f},{b:.4f},{c:.4f},{i % 50 == 0:d}" for i, (a, b, c) in enumerate(x)
    ]
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    (root / "empty.csv").write_text("")
    (root / "header.csv").write_text("a,b,c,label\n")
    (root / "garbage.csv").write_bytes(bytes(range(256)) * 4)
    (root / "garbage.jsonl").write_text("{not json\n")
    (root / "garbage.yaml").write_text("kafka: [unclosed\n")
    (root / "config.yaml").write_text("model:\n  path: nowhere\n")
    (root / "notjson.json").write_text("{nope")
    (root / "emptydir").mkdir()
    (root / "notabundle.txt").write_text("hello")
    det = VAEDetector(epochs=2, hidden=(8,), latent_dim=2, mc_samples=2, seed=0)
    det.fit({k: x[:, j] for j, k in enumerate("abc")})
    det.save(root / "tab")
    registry = ModelRegistry(root / "reg", create=True)
    registry.register(det, {"source": "test"})
    ModelRegistry(root / "emptyreg", create=True)
    (root / "win.jsonl").write_text("".join(json.dumps(r) + "\n" for r in window_records()))
    result = invoke(
        [
            *("train-window", "--data", root / "win.jsonl", "--metrics", "cpu,lat"),
            *("--entity-column", "host", *WINDOW_FAST, "--out", root / "win"),
        ]
    )
    assert result.exit_code == 0, result.output
    return root


def _case(code, fragment, *args, env=None):
    return pytest.param(list(args), code, fragment, env, id=" ".join(args)[:90])


# {r} is the shared folder; {out} a fresh folder of the case's own.
CASES = [
    # -- the root
    _case(USAGE, "No such command 'nosuch'", "nosuch"),
    _case(USAGE, "No such option: --bogus", "train", "--bogus"),
    # -- train
    _case(USAGE, "Missing option '--data'", "train"),
    _case(FAIL, "no such file", "train", "--data", "{r}/missing.csv", "--out", "{out}/m"),
    _case(FAIL, "no data rows", "train", "--data", "{r}/empty.csv", "--out", "{out}/m"),
    _case(FAIL, "no data rows", "train", "--data", "{r}/header.csv", "--out", "{out}/m"),
    _case(FAIL, "garbage.csv", "train", "--data", "{r}/garbage.csv", "--out", "{out}/m"),
    _case(FAIL, "invalid JSON", "train", "--data", "{r}/garbage.jsonl", "--out", "{out}/m"),
    _case(FAIL, "is a directory", "train", "--data", "{r}/emptydir", "--out", "{out}/m"),
    _case(USAGE, "--out DIR and/or --registry DIR", "train", "--data", "{r}/data.csv"),
    _case(
        USAGE, "--epochs:", "train", "--data", "{r}/data.csv", "--out", "{out}/m", "--epochs", "0"
    ),
    _case(
        USAGE, "--epochs:", "train", "--data", "{r}/data.csv", "--out", "{out}/m", "--epochs", "x"
    ),
    _case(
        USAGE,
        "target_fpr",
        "train",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/m",
        "--target-fpr",
        "2",
    ),
    _case(USAGE, "risk", "train", "--data", "{r}/data.csv", "--out", "{out}/m", "--risk", "5"),
    _case(USAGE, "budget", "train", "--data", "{r}/data.csv", "--out", "{out}/m", "--budget", "-1"),
    _case(
        USAGE, "budget", "train", "--data", "{r}/data.csv", "--out", "{out}/m", "--budget", "nan"
    ),
    _case(
        USAGE, "--hidden", "train", "--data", "{r}/data.csv", "--out", "{out}/m", "--hidden", "a,b"
    ),
    _case(
        USAGE, "--hidden", "train", "--data", "{r}/data.csv", "--out", "{out}/m", "--hidden", "0"
    ),
    _case(
        USAGE,
        "bogus",
        "train",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/m",
        "--threshold-method",
        "bogus",
    ),
    _case(
        USAGE,
        "'nosuch'",
        "train",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/m",
        "--features",
        "a,nosuch",
    ),
    _case(
        USAGE,
        "'nosuch'",
        "train",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/m",
        "--label-column",
        "nosuch",
    ),
    _case(
        USAGE,
        "'nosuch'",
        "train",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/m",
        "--conditions",
        "nosuch",
    ),
    _case(
        USAGE,
        "nosuch",
        "train",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/m",
        "--symptoms",
        "nosuch",
    ),
    _case(USAGE, "empty", "train", "--data", "{r}/data.csv", "--out", "{out}/m", "--features", ","),
    _case(USAGE, "single model bundle", "train", "--data", "{r}/data.csv", "--registry", "{r}/tab"),
    # -- score
    _case(USAGE, "Missing option", "score", "--model", "{r}/tab", "--data", "{r}/data.csv"),
    _case(
        FAIL,
        "missing",
        "score",
        "--model",
        "{r}/missing",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/s.jsonl",
    ),
    _case(
        FAIL,
        "emptydir",
        "score",
        "--model",
        "{r}/emptydir",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/s.jsonl",
    ),
    _case(
        FAIL,
        "notabundle.txt",
        "score",
        "--model",
        "{r}/notabundle.txt",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/s.jsonl",
    ),
    _case(
        FAIL,
        "no current version",
        "score",
        "--model",
        "{r}/emptyreg",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/s.jsonl",
    ),
    _case(
        FAIL,
        "no such file",
        "score",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/missing.csv",
        "--out",
        "{out}/s.jsonl",
    ),
    _case(
        FAIL,
        "no data rows",
        "score",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/empty.csv",
        "--out",
        "{out}/s.jsonl",
    ),
    _case(
        FAIL,
        "garbage.csv",
        "score",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/garbage.csv",
        "--out",
        "{out}/s.jsonl",
    ),
    _case(
        USAGE,
        "--top-k:",
        "score",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/s.jsonl",
        "--top-k",
        "0",
    ),
    _case(
        USAGE,
        "--format",
        "score",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/s.jsonl",
        "--format",
        "xml",
    ),
    _case(
        USAGE,
        "unknown file type",
        "score",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/s.xml",
    ),
    # -- evaluate
    _case(
        USAGE,
        "Missing option '--label-column'",
        "evaluate",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/data.csv",
    ),
    _case(
        USAGE,
        "'nosuch' not found",
        "evaluate",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/data.csv",
        "--label-column",
        "nosuch",
    ),
    _case(
        FAIL,
        "no data rows",
        "evaluate",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/empty.csv",
        "--label-column",
        "label",
    ),
    _case(
        FAIL,
        "no such file",
        "evaluate",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/missing.csv",
        "--label-column",
        "label",
    ),
    _case(
        FAIL,
        "missing feature column(s) 'ts'",
        "evaluate",
        "--model",
        "{r}/win",
        "--data",
        "{r}/data.csv",
        "--label-column",
        "label",
    ),
    _case(
        USAGE,
        "'label' not found",
        "evaluate",
        "--model",
        "{r}/win",
        "--data",
        "{r}/win.jsonl",
        "--label-column",
        "label",
    ),
    # -- generate
    _case(USAGE, "--n:", "generate", "--model", "{r}/tab", "-n", "0", "--out", "{out}/g.csv"),
    _case(USAGE, "--n:", "generate", "--model", "{r}/tab", "-n", "many", "--out", "{out}/g.csv"),
    _case(
        USAGE,
        "NAME=VALUE",
        "generate",
        "--model",
        "{r}/tab",
        "-n",
        "3",
        "--out",
        "{out}/g.csv",
        "--condition",
        "x",
    ),
    _case(
        USAGE,
        "generate cannot serve a window",
        "generate",
        "--model",
        "{r}/win",
        "-n",
        "3",
        "--out",
        "{out}/g.csv",
    ),
    _case(FAIL, "missing", "generate", "--model", "{r}/missing", "-n", "3", "--out", "{out}/g.csv"),
    _case(
        USAGE,
        "unknown file type",
        "generate",
        "--model",
        "{r}/tab",
        "-n",
        "3",
        "--out",
        "{out}/g.xml",
    ),
    # -- interpolate
    _case(
        FAIL,
        "row 99999 does not exist",
        "interpolate",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/data.csv",
        "--to-row",
        "99999",
        "--out",
        "{out}/i.csv",
    ),
    _case(
        USAGE,
        "--steps:",
        "interpolate",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/data.csv",
        "--steps",
        "1",
        "--out",
        "{out}/i.csv",
    ),
    _case(
        FAIL,
        "no data rows",
        "interpolate",
        "--model",
        "{r}/tab",
        "--data",
        "{r}/empty.csv",
        "--out",
        "{out}/i.csv",
    ),
    _case(
        USAGE,
        "interpolate cannot serve a window",
        "interpolate",
        "--model",
        "{r}/win",
        "--data",
        "{r}/data.csv",
        "--out",
        "{out}/i.csv",
    ),
    _case(
        USAGE,
        "a window model has no threshold to fix",
        "score",
        "--model",
        "{r}/win",
        "--data",
        "{r}/win.jsonl",
        "--out",
        "{out}/s.jsonl",
        "--fixed-threshold",
    ),
    # -- inspect
    _case(FAIL, "missing", "inspect", "--model", "{r}/missing"),
    _case(FAIL, "notabundle.txt", "inspect", "--model", "{r}/notabundle.txt"),
    # -- report
    _case(
        USAGE,
        "--label-column needs --data",
        "report",
        "--model",
        "{r}/tab",
        "--out",
        "{out}/rep",
        "--label-column",
        "label",
    ),
    _case(
        USAGE, "report cannot serve a window", "report", "--model", "{r}/win", "--out", "{out}/rep"
    ),
    _case(
        FAIL,
        "no data rows",
        "report",
        "--model",
        "{r}/tab",
        "--out",
        "{out}/rep",
        "--data",
        "{r}/empty.csv",
    ),
    # -- train-window
    _case(
        USAGE,
        "Missing option '--metrics'",
        "train-window",
        "--data",
        "{r}/win.jsonl",
        "--out",
        "{out}/w",
    ),
    _case(
        USAGE,
        "'nosuch' not found",
        "train-window",
        "--data",
        "{r}/win.jsonl",
        "--metrics",
        "nosuch",
        "--out",
        "{out}/w",
    ),
    _case(
        USAGE,
        "entity column 'nosuch' not found",
        "train-window",
        "--data",
        "{r}/win.jsonl",
        "--metrics",
        "cpu",
        "--entity-column",
        "nosuch",
        "--out",
        "{out}/w",
    ),
    _case(
        USAGE,
        "--interval",
        "train-window",
        "--data",
        "{r}/win.jsonl",
        "--metrics",
        "cpu",
        "--interval",
        "soon",
        "--out",
        "{out}/w",
    ),
    _case(
        USAGE,
        "--calibration-fraction",
        "train-window",
        "--data",
        "{r}/win.jsonl",
        "--metrics",
        "cpu",
        "--calibration-fraction",
        "2",
        "--out",
        "{out}/w",
    ),
    _case(
        USAGE,
        "--params",
        "train-window",
        "--data",
        "{r}/win.jsonl",
        "--metrics",
        "cpu",
        "--params",
        "{r}/notjson.json",
        "--out",
        "{out}/w",
    ),
    _case(
        USAGE,
        "--params",
        "train-window",
        "--data",
        "{r}/win.jsonl",
        "--metrics",
        "cpu",
        "--params",
        "{r}/missing.json",
        "--out",
        "{out}/w",
    ),
    _case(
        USAGE,
        "--threshold-method",
        "train-window",
        "--data",
        "{r}/win.jsonl",
        "--metrics",
        "cpu",
        "--threshold-method",
        "budget",
        "--out",
        "{out}/w",
    ),
    _case(
        USAGE,
        "target_fpr",
        "train-window",
        "--data",
        "{r}/win.jsonl",
        "--metrics",
        "cpu",
        "--target-fpr",
        "2",
        "--out",
        "{out}/w",
    ),
    _case(
        FAIL,
        "no data rows",
        "train-window",
        "--data",
        "{r}/empty.csv",
        "--metrics",
        "cpu",
        "--out",
        "{out}/w",
    ),
    # -- run / retrain / alert / spool (settings)
    _case(USAGE, "config file", "run", "--config", "{r}/missing.yaml"),
    _case(USAGE, "not valid YAML", "run", "--config", "{r}/garbage.yaml"),
    _case(USAGE, "--workers", "run", "--config", "{r}/config.yaml", "--workers", "lots"),
    _case(USAGE, "bogus", "run", "--config", "{r}/config.yaml", env={"VAEGUARD_BOGUS__X": "1"}),
    _case(USAGE, "model.path", "retrain", "--config", "{r}/config.yaml"),
    _case(USAGE, "config file", "retrain", "--config", "{r}/missing.yaml"),
    _case(USAGE, "Missing option '--sink'", "alert", "test", "--config", "{r}/config.yaml"),
    _case(USAGE, "nosuch", "alert", "test", "--config", "{r}/config.yaml", "--sink", "nosuch"),
    _case(USAGE, "config file", "spool", "flush", "--config", "{r}/missing.yaml"),
    _case(USAGE, "config file", "spool", "list", "--config", "{r}/missing.yaml"),
    # -- broker / replay / demo / nab
    _case(USAGE, "--port:", "broker", "--port", "99999"),
    _case(FAIL, "no such file", "replay", "--data", "{r}/missing.csv", "--topic", "t"),
    _case(USAGE, "--rate:", "replay", "--data", "{r}/data.csv", "--topic", "t", "--rate", "0"),
    _case(USAGE, "--seconds:", "demo", "--seconds", "-1"),
    _case(USAGE, "--entities:", "demo", "--entities", "0"),
    _case(FAIL, "no such folder", "nab", "--data-dir", "{r}/missing", "--out", "{out}/nab"),
    _case(
        USAGE,
        "--params",
        "nab",
        "--data-dir",
        "{r}",
        "--out",
        "{out}/nab",
        "--params",
        "{r}/notjson.json",
    ),
    _case(USAGE, "--jobs:", "nab", "--data-dir", "{r}", "--out", "{out}/nab", "--jobs", "0"),
    # -- models
    _case(FAIL, "no model registry", "models", "list", "--registry", "{r}/missing"),
    _case(FAIL, "single model bundle", "models", "list", "--registry", "{r}/tab"),
    _case(USAGE, "not a version name", "models", "show", "v1x", "--registry", "{r}/reg"),
    _case(FAIL, "no version v0009", "models", "show", "9", "--registry", "{r}/reg"),
    _case(FAIL, "no version v0009", "models", "promote", "9", "--registry", "{r}/reg"),
    _case(FAIL, "nothing to roll back", "models", "rollback", "--registry", "{r}/reg"),
    _case(USAGE, "--keep:", "models", "prune", "--keep", "0", "--registry", "{r}/reg"),
    _case(USAGE, "Missing option '--registry'", "models", "list"),
    # -- plugins
    _case(USAGE, "No such option", "plugins", "list", "--bogus"),
]


@pytest.mark.parametrize("args, code, fragment, env", CASES)
def test_bad_options_and_inputs_are_one_line_and_a_documented_code(
    world, tmp_path, args, code, fragment, env
):
    args = [a.format(r=world, out=tmp_path) for a in args]
    result = invoke(args, env={"VAEGUARD_DEBUG": None, **(env or {})})
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors_ = [line for line in lines if line.startswith("vaeguard: error: ")]
    assert len(errors_) == 1, result.output
    assert fragment in errors_[0], errors_[0]
    assert result.exit_code == code, result.output


def test_a_window_bundle_is_scored_and_inspected(world, tmp_path):
    """The commands that serve window bundles still do: score (CSV: every input row, empty
    score cells while a window fills) and inspect."""
    import csv

    out = tmp_path / "scores.csv"
    result = invoke(
        ["score", "--model", world / "win", "--data", world / "win.jsonl", "--out", out]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == len(window_records())
    assert rows[0]["score"] == "" and rows[-1]["score"] != ""
    assert {"host", "ts", "cpu", "lat", "anomaly_likelihood"} <= set(rows[0])
    assert invoke(["inspect", "--model", world / "win", "--json"]).exit_code == 0
