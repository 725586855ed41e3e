"""Scripting with `vaeguard` (issue 28, items 2 and 3): `--json` on the commands that print a
result, ``-`` for stdout / stdin, the output format from the extension or `--format`, CSV as the
input rows with score columns appended, a registry wherever a model is taken, one exit-code
table, choices listed in --help, completion on, unknown environment sections refused.

One tiny tabular model (trained once per module) and a registry holding it serve every case.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import vaeguard.errors as errors
from vaeguard.cli.exit_codes import DESCRIPTIONS, ExitCode
from vaeguard.cli.main import app
from vaeguard.errors import ConfigError

TINY = ("--epochs", "2", "--hidden", "8", "--latent-dim", "2", "--mc-samples", "2", "--quiet")


def invoke(*args, input=None, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input, env=env)


def ok(*args, input=None):
    result = invoke(*args, input=input)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vaeguard import VAEDetector
    from vaeguard.registry import ModelRegistry

    root = tmp_path_factory.mktemp("scripting")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3))
    rows = ["host,a,b,c,label"]
    rows += [
        f"h{i % 3},{a:.4f},{b:.4f},{c:.4f},{int(i % 40 == 0)}" for i, (a, b, c) in enumerate(x)
    ]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    det = VAEDetector(epochs=2, hidden=(8,), latent_dim=2, mc_samples=2, seed=0)
    det.fit({k: x[:, j] for j, k in enumerate("abc")})
    det.save(root / "tab")
    ModelRegistry(root / "reg", create=True).register(det, {"source": "test"})
    return root


# -- exit codes ---------------------------------------------------------------------------------


def test_every_error_class_carries_a_documented_code():
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.VaeguardError)
    ]
    assert len(classes) > 10
    for cls in classes:
        assert cls.exit_code in set(ExitCode), cls
    assert errors.RetrainRefused.exit_code == ExitCode.REFUSED == 3
    assert errors.RetrainRejected.exit_code == ExitCode.REJECTED == 4
    assert errors.ConfigError.exit_code == ExitCode.USAGE == 2
    assert set(DESCRIPTIONS) == set(ExitCode)


def test_a_code_outside_the_table_is_a_failure_not_a_crash():
    from vaeguard.cli.exit_codes import exit_code_of

    class PluginError(errors.VaeguardError):
        exit_code = 42

    assert exit_code_of(PluginError("x")) == ExitCode.FAILURE
    assert exit_code_of(FileNotFoundError("x")) == ExitCode.FAILURE
    assert exit_code_of(KeyError("x")) == ExitCode.INTERNAL


def test_help_lists_the_exit_codes_the_choices_and_completion():
    root = ok("--help").output
    for code, text in DESCRIPTIONS.items():
        assert f"{int(code):>3}  {text}" in root
    assert "--install-completion" in root and "--show-completion" in root
    assert "<budget|quantile|spot>" in ok("train", "--help").output
    assert "<quantile|spot>" in ok("train-window", "--help").output
    for command in ("score", "generate", "interpolate"):
        assert "--format <jsonl|csv>" in ok(command, "--help").output


def test_an_unexpected_error_is_one_line_and_code_70(world, monkeypatch):
    import vaeguard.cli.model_cmds as model_cmds

    def broken(path):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(model_cmds, "_load_table", broken)
    result = invoke("train", "--data", world / "data.csv", "--out", world / "never", *TINY)
    assert result.exit_code == ExitCode.INTERNAL
    assert result.stderr.splitlines() == [
        "vaeguard: error: internal error, please report it: RuntimeError: boom second line "
        "(VAEGUARD_DEBUG=1 shows the traceback)"
    ]
    shown = invoke(
        "train", "--data", world / "data.csv", "--out", world / "never", env={"VAEGUARD_DEBUG": "1"}
    )
    assert isinstance(shown.exception, RuntimeError)  # the traceback, for a bug report


# -- output: stdout, formats, --json ---------------------------------------------------------


def test_score_writes_jsonl_to_stdout_and_reads_stdin(world):
    text = (world / "data.csv").read_text()
    result = ok("score", "--model", world / "tab", "--data", "-", "--out", "-", input=text)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["row"] for r in records] == list(range(1, 201))
    assert {"score", "threshold", "is_anomaly", "severity"} <= set(records[0])
    jsonl = "".join(json.dumps({"a": 1.0, "b": 2.0, "c": 3.0}) + "\n" for _ in range(3))
    result = ok("score", "--model", world / "tab", "--data", "-", "--out", "-", input=jsonl)
    assert len(result.stdout.splitlines()) == 3


def test_score_csv_is_the_input_rows_with_score_columns(world, tmp_path):
    out = tmp_path / "scores.csv"
    ok("score", "--model", world / "tab", "--data", world / "data.csv", "--out", out)
    with open(world / "data.csv", newline="") as f:
        given_rows = list(csv.DictReader(f))
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header[:5] == ["host", "a", "b", "c", "label"]
    assert header[5:8] == ["score", "threshold", "is_anomaly"]
    assert "top_features" in header and "rejected" in header
    assert len(rows) == len(given_rows)
    for source, row in zip(given_rows, rows, strict=True):
        assert {k: row[k] for k in source} == source
        assert np.isfinite(float(row["score"]))
        assert row["is_anomaly"] in ("true", "false")
    # the same to stdout with --format, and JSON Lines for a .jsonl name
    piped = ok(
        "score",
        "--model",
        world / "tab",
        "--data",
        world / "data.csv",
        "--out",
        "-",
        "--format",
        "csv",
    )
    assert next(csv.DictReader(io.StringIO(piped.stdout))).keys() == rows[0].keys()
    ok(
        "score",
        "--model",
        world / "tab",
        "--data",
        world / "data.csv",
        "--out",
        tmp_path / "s.jsonl",
    )
    assert json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])["row"] == 1


def test_score_csv_marks_refused_rows(world, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n1,n/a,3\n1,2\n")
    out = tmp_path / "s.csv"
    ok("score", "--model", world / "tab", "--data", bad, "--out", out)
    rows = list(csv.DictReader(out.open(newline="")))
    assert [bool(r["rejected"]) for r in rows] == [False, True, True]
    assert rows[1]["score"] == "" and rows[1]["b"] == "n/a"


def test_score_json_summary_and_a_clash_with_stdout(world, tmp_path):
    result = ok(
        "score",
        "--model",
        world / "tab",
        "--data",
        world / "data.csv",
        "--out",
        tmp_path / "s.jsonl",
        "--json",
    )
    summary = json.loads(result.stdout)
    assert summary["rows"] == summary["scored"] == 200 and summary["refused"] == 0
    clash = invoke(
        "score", "--model", world / "tab", "--data", world / "data.csv", "--out", "-", "--json"
    )
    assert clash.exit_code == ExitCode.USAGE and "--json" in clash.stderr


def test_train_json_summary_on_stdout_from_stdin(world, tmp_path):
    text = (world / "data.csv").read_text()
    result = ok(
        "train",
        "--data",
        "-",
        "--out",
        tmp_path / "m",
        "--label-column",
        "label",
        "--conditions",
        "host",
        "--json",
        *TINY,
        input=text,
    )
    summary = json.loads(result.stdout)
    assert summary["features"] == ["a", "b", "c"]
    assert summary["conditions"] == [{"name": "host", "kind": "categorical"}]
    assert summary["rows"] == 200 and summary["written_to"] == str(tmp_path / "m")
    assert summary["threshold"]["method"] == "budget"
    assert json.loads((tmp_path / "m" / "bundle.json").read_text())["features"] == ["a", "b", "c"]


def test_generate_and_interpolate_to_stdout_and_by_format(world, tmp_path):
    rows = ok("generate", "--model", world / "tab", "-n", "4", "--out", "-", "--seed", "1").stdout
    assert [sorted(json.loads(line)) for line in rows.splitlines()] == [["a", "b", "c"]] * 4
    as_csv = ok("generate", "--model", world / "tab", "-n", "4", "--out", "-", "--format", "csv")
    assert as_csv.stdout.splitlines()[0] == "a,b,c" and len(as_csv.stdout.splitlines()) == 5
    summary = ok(
        "generate", "--model", world / "tab", "-n", "4", "--out", tmp_path / "g.csv", "--json"
    )
    assert json.loads(summary.stdout) == {
        "rows": 4,
        "out": str(tmp_path / "g.csv"),
        "format": "csv",
    }
    text = (world / "data.csv").read_text()
    line = ok(
        "interpolate",
        "--model",
        world / "tab",
        "--data",
        "-",
        "--steps",
        "3",
        "--out",
        "-",
        input=text,
    )
    assert len(line.stdout.splitlines()) == 3


def test_evaluate_reads_stdin(world):
    text = (world / "data.csv").read_text()
    result = ok(
        "evaluate",
        "--model",
        world / "tab",
        "--data",
        "-",
        "--label-column",
        "label",
        "--json",
        input=text,
    )
    assert json.loads(result.stdout)["rows"] == 200


def test_registry_commands_json(world, tmp_path):
    import shutil

    reg = tmp_path / "reg"
    shutil.copytree(world / "reg", reg)
    ok("train", "--data", world / "data.csv", "--registry", reg, *TINY)
    assert json.loads(ok("models", "promote", "2", "--registry", reg, "--json").stdout) == {
        "current": "v0002"
    }
    assert json.loads(ok("models", "rollback", "--registry", reg, "--json").stdout) == {
        "current": "v0001"
    }
    pruned = json.loads(ok("models", "prune", "--keep", "1", "--registry", reg, "--json").stdout)
    assert pruned == {"removed": [], "kept": ["v0001", "v0002"], "protected": {"v0001": "current"}}
    said = ok("models", "prune", "--keep", "1", "--registry", reg).stdout
    assert said.strip() == "removed 0 version(s); kept 2: the newest 1 (v0002), v0001 (current)"


# -- models: a bundle or a registry -----------------------------------------------------------


@pytest.mark.parametrize("where", ["tab", "reg", "reg/v0001"])
def test_every_model_command_takes_a_bundle_or_a_registry(world, tmp_path, where):
    model = world / where
    scored = ok("score", "--model", model, "--data", world / "data.csv", "--out", "-").stdout
    reference = ok("score", "--model", world / "tab", "--data", world / "data.csv", "--out", "-")
    first, ref = json.loads(scored.splitlines()[0]), json.loads(reference.stdout.splitlines()[0])
    assert first["score"] == pytest.approx(ref["score"])
    evaluation = ok(
        "evaluate",
        "--model",
        model,
        "--data",
        world / "data.csv",
        "--label-column",
        "label",
        "--json",
    )
    assert json.loads(evaluation.stdout)["rows"] == 200
    ok("generate", "--model", model, "-n", "2", "--out", "-")
    ok("interpolate", "--model", model, "--data", world / "data.csv", "--out", "-")
    assert json.loads(ok("inspect", "--model", model, "--json").stdout)["features"] == list("abc")


def test_report_takes_a_registry_and_prints_json(world, tmp_path):
    written = json.loads(ok("report", "--model", world / "reg", "--out", tmp_path, "--json").stdout)
    assert written and all(p.endswith(".png") for p in written)


def test_an_empty_registry_says_so(tmp_path):
    from vaeguard.registry import ModelRegistry

    ModelRegistry(tmp_path / "reg", create=True)
    result = invoke("inspect", "--model", tmp_path / "reg")
    assert result.exit_code == ExitCode.FAILURE
    assert "has no current version" in result.stderr


# -- one meaning per option -------------------------------------------------------------------


def test_train_window_params_is_json_and_config_its_former_name(world, tmp_path):
    """`--config` is YAML daemon settings everywhere else; train-window's JSON is --params."""
    help_text = ok("train-window", "--help").output
    assert "--params" in help_text and "--config" not in help_text
    (tmp_path / "p.json").write_text("[1,")
    for option in ("--params", "--config"):
        result = invoke(
            "train-window",
            "--data",
            world / "data.csv",
            "--metrics",
            "a",
            option,
            tmp_path / "p.json",
            "--out",
            tmp_path / "w",
        )
        assert result.exit_code == ExitCode.USAGE and "--params: " in result.stderr


def test_an_unknown_environment_section_is_an_error(monkeypatch):
    from vaeguard.config import load_settings

    monkeypatch.setenv("VAEGUARD_BOGUS__X", "1")
    with pytest.raises(ConfigError, match=r"unknown setting bogus \(from environment variable"):
        load_settings()
    monkeypatch.delenv("VAEGUARD_BOGUS__X")
    monkeypatch.setenv("VAEGUARD_MODLE__PATH", "x")
    with pytest.raises(ConfigError, match="did you mean model"):
        load_settings()
    monkeypatch.delenv("VAEGUARD_MODLE__PATH")
    monkeypatch.setenv("VAEGUARD_DATASETS", "/x")  # not a setting: no delimiter, left alone
    monkeypatch.setenv("VAEGUARD_LOGGING__LEVEL", "DEBUG")
    assert load_settings().logging.level == "DEBUG"


# -- arbitrary input on stdin: a result or one line -------------------------------------------


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        st.lists(
            st.lists(st.one_of(st.floats(), st.text(max_size=5)), min_size=0, max_size=4),
            max_size=5,
        ).map(lambda rows: "a,b,c\n" + "\n".join(",".join(map(str, r)) for r in rows)),
    )
)
def test_any_stdin_is_scored_or_refused_in_one_line(world, data):
    result = invoke("score", "--model", world / "tab", "--data", "-", "--out", "-", input=data)
    assert result.exit_code in (ExitCode.OK, ExitCode.FAILURE), result.output
    if result.exit_code:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vaeguard: error: "), lines
    else:
        for line in result.stdout.splitlines():
            assert "row" in json.loads(line)


# -- --json on the other commands that print a result -----------------------------------------


def test_train_window_json_summary(tmp_path):
    from tests.cli.test_exit_codes import WINDOW_FAST, window_records

    data = tmp_path / "w.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in window_records()))
    result = ok(
        "train-window",
        "--data",
        data,
        "--metrics",
        "cpu,lat",
        "--entity-column",
        "host",
        *WINDOW_FAST,
        "--out",
        tmp_path / "w",
        "--json",
    )
    summary = json.loads(result.stdout)
    assert summary["entities"] == 2 and summary["window"] == 8
    assert summary["channels"][:2] == ["cpu", "lat"] and summary["threshold"]["unit"] == "nats"


def test_nab_json_summary(tmp_path):
    from tests.timeseries.test_nab import FAST, stamp

    folder = tmp_path / "data" / "cat"
    folder.mkdir(parents=True)
    values = 50 + 10 * np.sin(np.arange(200) / 12)
    (folder / "s.csv").write_text(
        "timestamp,value\n" + "".join(f"{stamp(i)},{v:.3f}\n" for i, v in enumerate(values))
    )
    (tmp_path / "fast.json").write_text(json.dumps(FAST))
    result = ok(
        "nab",
        "--data-dir",
        tmp_path / "data",
        "--out",
        tmp_path / "out",
        "--jobs",
        "1",
        "--params",
        tmp_path / "fast.json",
        "--json",
    )
    summary = json.loads(result.stdout)
    assert summary["series"] == 1 and summary["rows"] == 200


def test_alert_test_and_spool_json(tmp_path):
    config = tmp_path / "vaeguard.yaml"
    config.write_text(
        "alerts:\n"
        f"  spool_dir: {tmp_path / 'spool'}\n"
        "  sinks:\n"
        "    - name: audit\n"
        "      type: file\n"
        f"      path: {tmp_path / 'alerts.jsonl'}\n"
    )
    sent = json.loads(ok("alert", "test", "--config", config, "--sink", "audit", "--json").stdout)
    assert sent["sink"] == "audit" and sent["type"] == "file" and sent["attempts"] == 1
    assert (tmp_path / "alerts.jsonl").read_text().count(sent["delivered"]) == 1
    assert json.loads(ok("spool", "flush", "--config", config, "--json").stdout) == {}
    assert json.loads(ok("spool", "list", "--config", config, "--json").stdout) == []


def test_replay_json(broker, world):
    result = ok(
        "replay",
        "--data",
        world / "data.csv",
        "--topic",
        "scripting-replay",
        "--bootstrap",
        broker.bootstrap_servers,
        "--json",
    )
    assert json.loads(result.stdout)["records"] == 200


def test_inspect_json_is_a_summary_and_full_the_manifest(world):
    """A tabular bundle's --json once printed its whole manifest (calibration samples and
    reference sets: hundreds of KB); --full still does."""
    summary = json.loads(ok("inspect", "--model", world / "tab", "--json").stdout)
    assert summary["kind"] == "tabular" and summary["features"] == ["a", "b", "c"]
    assert summary["threshold"]["unit"] == "nats" and summary["verified"] is True
    assert not {"score_reference", "latent_knn", "scaler"} & set(summary)
    assert all(not isinstance(v, list | dict) for v in summary["threshold"]["params"].values())
    full = json.loads(ok("inspect", "--model", world / "tab", "--full").stdout)
    assert "score_reference" in full and full["features"] == ["a", "b", "c"]
    table = ok("inspect", "--model", world / "tab").stdout
    assert "{" not in table  # no dict reprs


def test_models_show_is_a_summary_and_full_the_manifest(world):
    shown = json.loads(ok("models", "show", "1", "--registry", world / "reg").stdout)
    assert shown["version"] == "v0001" and shown["bundle"]["features"] == ["a", "b", "c"]
    assert "manifest" not in shown and "score_reference" not in shown["bundle"]
    full = json.loads(ok("models", "show", "1", "--registry", world / "reg", "--full").stdout)
    assert "score_reference" in full["manifest"]


def test_models_show_trims_a_window_manifest():
    from vaeguard.cli.registry_cmds import _trimmed

    assert _trimmed({"a": list(range(40)), "b": [1, [2] * 3]}) == {
        "a": "<40 values: --full shows them>",
        "b": [1, [2, 2, 2]],
    }
