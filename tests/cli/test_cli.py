"""The model commands, end to end, and every bad-input path: one clear line, non-zero, no traceback."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import make_normal_data
from vaeguard.cli.main import app

FAST_ARGS = [
    "--epochs",
    "25",
    "--hidden",
    "32,16",
    "--latent-dim",
    "2",
    "--mc-samples",
    "8",
    "--quiet",
]


def write_csv(path, rows, header):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory):
    x = make_normal_data(1200, seed=0, n_features=3)
    labels = np.zeros(len(x), int)
    x[-40:, 0] += 8 * x[:, 0].std()
    labels[-40:] = 1
    hosts = np.where(np.arange(len(x)) % 2, "web", "db")
    rows = [
        [i, f"{a:.5f}", f"{b:.5f}", f"{c:.5f}", lab, h]
        for i, ((a, b, c), lab, h) in enumerate(zip(x, labels, hosts, strict=True))
    ]
    return write_csv(
        tmp_path_factory.mktemp("data") / "metrics.csv",
        rows,
        ["ts", "cpu", "mem", "io", "label", "host"],
    )


@pytest.fixture(scope="module")
def trained(labelled_csv, tmp_path_factory):
    # a path longer than the summary's column: shown whole, wrapped, never cut with "…"
    out = tmp_path_factory.mktemp("model") / ("a-folder-with-a-long-name-" * 3) / "bundle"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(labelled_csv),
            "--out",
            str(out),
            "--label-column",
            "label",
            "--symptoms",
            "io",
            "--budget",
            "5",
            *FAST_ARGS,
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"writtento{out}" in "".join(result.output.replace("│", " ").split())
    return out


#: The console entry point, as `python -c` runs it.
_ENTRY = "from vaeguard.cli.main import main; main()"
#: The same, saying at exit on stderr whether Keras was imported.
_REPORTS_KERAS = (
    "import atexit, sys; "
    "atexit.register(lambda: print('keras imported:', 'keras' in sys.modules, file=sys.stderr)); "
    + _ENTRY
)


def run_cli(*args, env=None, report_keras=False):
    """The real console entry point in a subprocess, as a user runs it (``report_keras``: with
    a last stderr line saying whether Keras was imported, which `_refused_before_keras` reads)."""
    code = _REPORTS_KERAS if report_keras else _ENTRY
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_train_uses_only_normal_rows_and_skips_text_columns(trained):
    m = json.loads((trained / "bundle.json").read_text())
    assert m["features"] == ["cpu", "mem", "io"]
    assert m["data_fingerprint"]["rows"] == 1160
    assert m["params"]["symptoms"] == ["io"]
    assert m["params"]["budget"] == 5.0
    assert m["threshold"]["method"] == "budget" and m["threshold"]["params"]["budget"] == 5.0


def test_score_writes_one_line_per_row_in_order(trained, labelled_csv, tmp_path):
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(
        app, ["score", "--model", str(trained), "--data", str(labelled_csv), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1200
    assert [r["row"] for r in lines] == list(range(1, 1201))
    assert {"score", "threshold", "is_anomaly", "severity", "contributions"} <= set(lines[0])
    assert all(0.0 <= r["p_value"] <= 1.0 for r in lines)
    assert all(r["p_value"] < 5 / 1000 for r in lines if r["is_anomaly"])
    flagged = [r for r in lines[-40:] if r["is_anomaly"]]
    assert len(flagged) > 35
    assert all(r["contributions"][0]["feature"] == "cpu" for r in flagged)


def test_score_judges_a_file_in_order_as_the_daemon_judges_a_stream(trained, tmp_path):
    """The budget threshold follows the normal rows before each batch of 100, as the daemon's
    does (`model.follow_normal`): a slow drift stops alarming; --fixed-threshold keeps the
    training threshold for every row."""
    n = 1500
    x = make_normal_data(n, seed=5, n_features=3)
    x[:, 0] += np.linspace(0.0, 8.0, n)  # a slow drift in cpu (its sd is about 1.7)
    data = write_csv(
        tmp_path / "drift.csv", [[f"{v:.5f}" for v in row] for row in x], ["cpu", "mem", "io"]
    )

    summaries = []

    def scored(*options) -> list[dict]:
        out = tmp_path / "s.jsonl"
        args = ["score", "--model", trained, "--data", data, "--out", out, "--json", *options]
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        summaries.append(json.loads(result.stdout))
        return [json.loads(line) for line in out.read_text().splitlines()]

    followed, fixed = scored(), scored("--fixed-threshold")
    # the summary says where the threshold started and where it ended
    assert summaries[0]["threshold"] == followed[0]["threshold"]
    assert summaries[0]["last_threshold"] == followed[-1]["threshold"] != followed[0]["threshold"]
    assert summaries[1]["threshold"] == summaries[1]["last_threshold"] == fixed[0]["threshold"]
    assert len({r["threshold"] for r in fixed}) == 1
    batches = [followed[i : i + 100] for i in range(0, n, 100)]
    assert all(len({r["threshold"] for r in batch}) == 1 for batch in batches)
    assert len({batch[0]["threshold"] for batch in batches}) > 5  # learned after each batch
    assert followed[0]["threshold"] == fixed[0]["threshold"]  # the first batch: as trained
    late_fixed = sum(r["is_anomaly"] for r in fixed[n // 2 :])
    late_followed = sum(r["is_anomaly"] for r in followed[n // 2 :])
    assert late_fixed > 200, late_fixed
    assert late_followed < late_fixed / 3, (late_followed, late_fixed)


def test_evaluate_json(trained, labelled_csv, tmp_path):
    result = run_cli(
        "evaluate", "--model", trained, "--data", labelled_csv, "--label-column", "label", "--json"
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert set(metrics) >= {"roc_auc", "average_precision", "precision", "recall", "f1", "best_f1"}
    assert metrics["roc_auc"] > 0.95
    # the rows judged as `vaeguard score` judges them (the budget threshold following): the
    # same flags, so the same precision, recall and false alarms
    out = tmp_path / "s.jsonl"
    args = ["score", "--model", trained, "--data", labelled_csv, "--out", out]
    assert CliRunner().invoke(app, [str(a) for a in args]).exit_code == 0  # (in this process)
    flags = np.array([json.loads(line)["is_anomaly"] for line in out.read_text().splitlines()])
    rows = csv.DictReader(labelled_csv.read_text().splitlines())
    labels = np.array([row["label"] == "1" for row in rows])
    stream = metrics["stream"]
    assert stream["precision"] == pytest.approx((flags & labels).sum() / flags.sum())
    assert stream["recall"] == pytest.approx((flags & labels).sum() / labels.sum())
    assert stream["false_alarm_rate"] == pytest.approx(flags[~labels].mean())
    assert metrics["false_alarm_rate"] >= 0.0
    assert "Traceback" not in result.stderr and "absl" not in result.stderr


def test_generate_interpolate_inspect_report(trained, labelled_csv, tmp_path):
    runner = CliRunner()
    gen = tmp_path / "gen.csv"
    assert (
        runner.invoke(
            app, ["generate", "--model", str(trained), "-n", "50", "--out", str(gen)]
        ).exit_code
        == 0
    )
    rows = list(csv.DictReader(gen.read_text().splitlines()))
    assert len(rows) == 50 and set(rows[0]) == {"cpu", "mem", "io"}
    path = tmp_path / "path.jsonl"
    result = runner.invoke(
        app,
        [
            "interpolate",
            "--model",
            str(trained),
            "--data",
            str(labelled_csv),
            "--from-row",
            "1",
            "--to-row",
            "5",
            "--steps",
            "4",
            "--out",
            str(path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(path.read_text().splitlines()) == 4
    result = runner.invoke(app, ["inspect", "--model", str(trained), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["features"] == ["cpu", "mem", "io"]
    result = runner.invoke(app, ["inspect", "--model", str(trained)])
    assert result.exit_code == 0 and "symptoms" in result.output, result.output
    assert "alert budget" in result.output and "5 false alerts per 1,000" in result.output
    assert "reference" not in result.output  # the calibration sample is not printed
    pictures = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "report",
            "--model",
            str(trained),
            "--data",
            str(labelled_csv),
            "--label-column",
            "label",
            "--out",
            str(pictures),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("training.png", "scores.png", "latent.png"):
        assert (pictures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_conditional_training_from_the_cli(labelled_csv, tmp_path):
    out = tmp_path / "cond"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(labelled_csv),
            "--out",
            str(out),
            "--label-column",
            "label",
            "--conditions",
            "host,ts",
            *FAST_ARGS,
        ],
    )
    assert result.exit_code == 0, result.output
    m = json.loads((out / "bundle.json").read_text())
    assert m["conditions"][0] == {
        "name": "host",
        "kind": "categorical",
        "categories": ["db", "web"],
    }
    assert m["conditions"][1]["kind"] == "numeric"
    # what `score` refuses a file for before loading the model is what the serving needs
    from vaeguard.bundle import read_manifest, required_fields
    from vaeguard.serving import load_serving

    fields = required_fields(read_manifest(out))
    assert fields == load_serving(out, "").required_fields
    assert set(fields) == {"cpu", "mem", "io", "ts", "host"}


def _refused_before_keras(*args, command="train"):
    """Run a command (`train` unless told) that must be refused, and check that Keras (and
    TensorFlow under it) was never imported: a bad option or a bad file is refused at once,
    before the framework's start-up, not seconds later."""
    result = run_cli(command, *args, report_keras=True)
    *lines, report = result.stderr.rstrip("\n").split("\n")
    assert report == "keras imported: False", result.stderr
    result.stderr = "\n".join(lines)
    return result


def _assert_one_clear_line(result, *fragments):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vaeguard: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_file(tmp_path):
    _assert_one_clear_line(
        _refused_before_keras("--data", tmp_path / "nope.csv", "--out", tmp_path / "m"),
        "nope.csv",
        "no such file",
    )


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    _assert_one_clear_line(
        _refused_before_keras("--data", tmp_path / "empty.csv", "--out", tmp_path / "m"),
        "no data rows",
    )
    (tmp_path / "header.csv").write_text("a,b\n")
    _assert_one_clear_line(
        _refused_before_keras("--data", tmp_path / "header.csv", "--out", tmp_path / "m"),
        "no data rows",
    )


def test_wrong_column_name(labelled_csv, tmp_path):
    _assert_one_clear_line(
        _refused_before_keras(
            "--data", labelled_csv, "--out", tmp_path / "m", "--features", "cpu,nosuch"
        ),
        "'nosuch' not found",
    )
    _assert_one_clear_line(
        _refused_before_keras(
            "--data", labelled_csv, "--out", tmp_path / "m", "--label-column", "lbl"
        ),
        "'lbl' not found",
    )
    _assert_one_clear_line(
        _refused_before_keras(
            "--data",
            labelled_csv,
            "--out",
            tmp_path / "m",
            "--features",
            "cpu,mem",
            "--symptoms",
            "nosuch",
        ),
        "'nosuch' not among the features",
    )


def test_non_numeric_cell(tmp_path):
    rows = [[i, i * 0.5] for i in range(40)]
    rows[17][1] = "n/a"
    path = write_csv(tmp_path / "bad.csv", rows, ["a", "b"])
    _assert_one_clear_line(
        _refused_before_keras("--data", path, "--out", tmp_path / "m"),
        "row 18",
        "'b'",
        "'n/a' is not a number",
    )


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n')
    _assert_one_clear_line(
        _refused_before_keras("--data", path, "--out", tmp_path / "m"), "line 2", "invalid JSON"
    )


def test_scoring_data_without_the_model_features(trained, tmp_path):
    path = write_csv(tmp_path / "other.csv", [[1, 2]], ["x", "y"])
    _assert_one_clear_line(
        _refused_before_keras(
            "--model", trained, "--data", path, "--out", tmp_path / "s.jsonl", command="score"
        ),
        "missing feature column",
        "'cpu'",
    )
    labelled = write_csv(tmp_path / "labelled.csv", [[1, 2, 0]], ["x", "y", "label"])
    _assert_one_clear_line(
        _refused_before_keras(
            *("--model", trained, "--data", labelled, "--label-column", "label"),
            command="evaluate",
        ),
        "missing feature column",
        "'cpu'",
    )


def test_corrupt_bundle_from_the_cli(trained, tmp_path, labelled_csv):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "model.keras").write_bytes(b"garbage")
    _assert_one_clear_line(
        run_cli("score", "--model", broken, "--data", labelled_csv, "--out", tmp_path / "s.jsonl"),
        "corrupt bundle",
    )


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--threshold-method", "quantile", "--target-fpr", "2"), "target_fpr must be in (0, 1)"),
        (("--threshold-method", "spot", "--risk", "5"), "risk must be in (0, 1)"),
        (("--risk", "0"), "risk must be in (0, 1)"),
    ],
)
def test_threshold_options_are_checked_before_training(labelled_csv, tmp_path, flags, fragment):
    """Once found only after training, as a traceback (issue 28): now refused before any work,
    in one line, and no bundle is written."""
    out = tmp_path / "m"
    result = _refused_before_keras(
        "--data", labelled_csv, "--out", out, "--label-column", "label", *flags
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vaeguard: error: ")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr  # (a warning may precede)
    assert "epoch" not in result.stderr.lower() and not out.exists()


def test_the_python_api_refuses_them_before_fitting():
    from vaeguard import VAEDetector

    with pytest.raises(ValueError, match="target_fpr must be in"):
        VAEDetector(target_fpr=float("nan")).fit(np.zeros((10, 2)))


def test_the_files_record_size_is_the_daemons_default():
    from vaeguard.cli.model_cmds import MAX_RECORD_BYTES
    from vaeguard.config import ScoringSettings

    assert ScoringSettings.model_fields["max_record_bytes"].default == MAX_RECORD_BYTES
