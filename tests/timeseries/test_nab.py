"""`vaeguard nab` on a two-series mini corpus in NAB's layout, and its error paths."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vaeguard.apps.nab import merged_params, probation_rows
from vaeguard.cli.main import app

FAST = {
    "window": {"window": 8},
    "views": {
        "hidden": [16],
        "latent_dim": 2,
        "train_steps": 40,
        "retrain_steps": 20,
        "mc_samples": 4,
        "score_slots": 4,
    },
    "likelihood": {"history": 100, "min_history": 20},
    "schedule": {"retrain_growth": 2.0},
}
ROWS = {"catA/s1": 300, "catB/s2": 240}
LABELLED = "catA/s1.csv"
LABEL_ROW = 250


def stamp(i: int) -> str:
    return (datetime(2015, 9, 1) + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("nab")
    rng = np.random.default_rng(0)
    for name, n in ROWS.items():
        path = root / "data" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        values = 50 + 10 * np.sin(np.arange(n) / 12) + rng.standard_normal(n)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", "value"])
            w.writerows([stamp(i), f"{v:.3f}"] for i, v in enumerate(values))
    # beside the data folder, as in NAB's repository
    (root / "combined_labels.json").write_text(
        json.dumps({LABELLED: [stamp(LABEL_ROW) + ".000000"], "catB/s2.csv": []})
    )
    (root / "fast.json").write_text(json.dumps(FAST))
    return root


@pytest.fixture(scope="module")
def results(corpus):
    out = corpus / "results"
    result = CliRunner().invoke(
        app,
        [
            "nab",
            "--data-dir",
            str(corpus / "data"),
            "--out",
            str(out),
            "--detector-name",
            "vg",
            "--jobs",
            "1",
            "--params",
            str(corpus / "fast.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 series, 540 rows" in result.output
    return out


def test_result_files_follow_nab_layout_and_columns(results):
    for name, n in ROWS.items():
        category, series = name.split("/")
        path = results / "vg" / category / f"vg_{series}.csv"
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["timestamp", "value", "anomaly_score", "label"]
        body = rows[1:]
        assert len(body) == n
        assert [r[0] for r in body] == [stamp(i) for i in range(n)]
        scores = np.array([float(r[2]) for r in body])
        assert ((scores >= 0) & (scores <= 1)).all()
        # no model before the end of the probationary period; its rows are replayed then
        assert (scores[: min(20, probation_rows(n))] == 0).all()
        assert scores[probation_rows(n) :].max() > 0
        labels = [int(r[3]) for r in body]
        expected = [1 if name + ".csv" == LABELLED and i == LABEL_ROW else 0 for i in range(n)]
        assert labels == expected
        assert not list(path.parent.glob("*.tmp"))


def test_default_params_are_valid_and_overrides_are_checked():
    from vaeguard.errors import ConfigError

    params = merged_params({"likelihood": {"short": 3}})
    assert params["likelihood"]["short"] == 3
    assert params["window"] == merged_params()["window"]
    assert math.isfinite(params["schedule"]["retrain_growth"])
    with pytest.raises(ConfigError, match="unknown section"):
        merged_params({"detector": {}})
    with pytest.raises(ConfigError, match="no_such_knob"):
        merged_params({"views": {"no_such_knob": 1}})
    from vaeguard.timeseries.views import ViewSet

    for bad in ([], "evt", 5):  # (as a bundle's window_mode may hold it)
        with pytest.raises(ConfigError, match="likelihood: expected an object or null"):
            ViewSet.from_params({**merged_params(), "likelihood": bad})


def test_the_seasonal_view_can_be_switched_off_and_is_checked():
    from vaeguard.errors import ConfigError

    assert merged_params()["window"]["seasonal"]["periods"] >= 1
    one = merged_params({"window": {"seasonal": None}, "views": merged_params()["views"][:1]})
    assert one["window"]["seasonal"] is None and len(one["views"]) == 1
    with pytest.raises(ConfigError, match="value_seasonal"):
        merged_params({"window": {"seasonal": None}, "views": {"inputs": ["value_seasonal"]}})
    assert (
        merged_params({"window": {"seasonal": {"periods": 2}}})["window"]["seasonal"]["period"]
        == 86_400.0
    )
    with pytest.raises(ConfigError, match="seasonal"):
        merged_params({"window": {"seasonal": {"no_such_knob": 1}}})
    with pytest.raises(ConfigError, match="periods"):
        merged_params({"window": {"seasonal": {"periods": 0}}})


def test_a_window_shorter_than_the_scored_slots_is_refused_by_name():
    from vaeguard.errors import ConfigError

    slots = merged_params()["views"][0]["score_slots"]
    assert slots is not None
    with pytest.raises(ConfigError, match="score_slots"):
        merged_params({"window": {"window": slots - 1}})
    shorter = merged_params({"window": {"window": slots - 1}, "views": {"score_slots": 1}})
    assert all(v["score_slots"] == 1 for v in shorter["views"])


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-c", "from vaeguard.cli.main import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )


@pytest.mark.parametrize(
    ("setup", "fragment", "code"),
    [
        ("empty", "no <category>/<series>.csv files", 1),
        ("bad_csv", "expected the header 'timestamp,value'", 1),
        ("bad_params", "views[0]: unknown field(s) no_such_knob", 2),
        ("bad_field", "window: must be at least 2", 2),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, setup, fragment, code):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    args = [
        "nab",
        "--data-dir",
        data,
        "--out",
        tmp_path / "out",
        "--detector-name",
        "vg",
        "--jobs",
        "1",
    ]
    if setup != "empty":
        (data / "cat" / "s.csv").write_text(
            "time,val\n1,2\n" if setup == "bad_csv" else "timestamp,value\n2015-01-01 00:00:00,1\n"
        )
    if setup == "bad_params":
        (tmp_path / "p.json").write_text(json.dumps({"views": {"no_such_knob": 1}}))
        args += ["--params", tmp_path / "p.json"]
    if setup == "bad_field":
        (tmp_path / "p.json").write_text(json.dumps({"window": {"window": 1}}))
        args += ["--params", tmp_path / "p.json"]
    result = run_cli(*args)
    assert result.returncode == code
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vaeguard: error: ") and fragment in lines[0]


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ("nan", "value is 'nan' (NaN and ±inf are not allowed)"),
        ("1e999", "overflows a 64-bit float"),
        ("1_000", "value is not a number: '1_000'"),
        ("", "value is missing"),
    ],
)
def test_a_series_value_is_read_by_the_record_rule(tmp_path, cell, fragment):
    """A NAB file's values follow the rule every record path follows (`ingest.to_number`):
    what the daemon would refuse stops the run at its line, with the reason."""
    from vaeguard.apps.nab import read_series
    from vaeguard.errors import DataError

    path = tmp_path / "s.csv"
    path.write_text(f"timestamp,value\n2015-01-01 00:00:00,1\n2015-01-01 00:05:00,{cell}\n")
    with pytest.raises(DataError, match="line 3: ") as caught:
        read_series(path)
    assert fragment in str(caught.value)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.lists(
        st.tuples(
            st.one_of(st.text(max_size=25), st.sampled_from(["2015-01-01 00:00:00", "1420070400"])),
            st.one_of(st.text(max_size=12), st.floats().map(repr), st.integers().map(str)),
        ),
        max_size=5,
    ),
    header=st.sampled_from(["timestamp,value", "timestamp, value", "ts,value", ""]),
    junk=st.sampled_from([b"", b"\xff\xfe", b"2015-01-01 00:00:00,1\x00\n", b'"unclosed,1\n']),
)
def test_any_series_file_reads_or_is_refused_in_one_line(tmp_path, body, header, junk):
    """Whatever a NAB-style CSV holds: its rows, or one DataError line naming the file."""
    import csv
    import io

    from vaeguard.apps.nab import read_series
    from vaeguard.errors import DataError

    text = io.StringIO()
    writer = csv.writer(text)
    if header:
        text.write(header + "\n")
    writer.writerows(body)
    path = tmp_path / "s.csv"
    path.write_bytes(text.getvalue().encode("utf-8") + junk)
    try:
        stamps, values = read_series(path)
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert len(stamps) == len(values) > 0
