"""`vaeguard evaluate` on a window bundle: labelled incidents counted against the alerts that
`vaeguard score` raises on the same file.

One tiny window model (W = 8, two metrics, two hosts) is trained once; a labelled file that
continues the training data plants large cpu shifts on one host. Evaluate must count exactly
what `score`'s records say (incidents detected, how late, false alerts away from incidents),
from CSV and JSONL alike, and show the model's alert budget beside the false alerts.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vaeguard.cli.exit_codes import ExitCode
from vaeguard.cli.main import app

WINDOW = 8
T0 = 1_700_000_000
HOSTS = {"web-1": 0.0, "web-2": 20.0}
FAST = ("--steps", "20", "--hidden", "16", "--latent-dim", "2", "--mc-samples", "4")
#: Points of web-1, counted from the start of the labelled file, shifted by +40 sd.
SHIFTED = (range(120, 125), range(260, 266))


def points(start: int, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        for host, offset in HOSTS.items():
            cpu = offset + 10 + 3 * math.sin(2 * math.pi * i / 24) + 0.3 * rng.standard_normal()
            out.append({"host": host, "ts": T0 + 60 * i, "cpu": cpu, "lat": 5 + rng.random()})
    return out


def labelled() -> list[dict]:
    rows = points(300, 360, seed=1)
    for r in rows:
        k = (r["ts"] - T0) // 60 - 300
        hit = r["host"] == "web-1" and any(k in s for s in SHIFTED)
        r["cpu"] += 12.0 if hit else 0.0
        r["label"] = int(hit)
    return rows


def run(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-window")
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in points(0, 300, seed=0)))
    run(
        *("train-window", "--data", train, "--metrics", "cpu,lat", "--window", WINDOW),
        *("--entity-column", "host", "--time-column", "ts", "--interval", "60"),
        *("--budget", "3", "--likelihood-warmup", "20", "--out", root / "bundle", *FAST),
    )
    rows = labelled()
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(root / "test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def counted_from_scores(root) -> dict:
    """The counting rule applied to `vaeguard score`'s own records of the file."""
    run(
        "score",
        "--model",
        root / "bundle",
        "--data",
        root / "test.jsonl",
        "--out",
        root / "s.jsonl",
    )
    by_row = {r["row"]: r for r in map(json.loads, (root / "s.jsonl").read_text().splitlines())}
    rows = labelled()
    facts = json.loads(run("inspect", "--model", root / "bundle", "--json"))
    # the slots view 0's score counts, and the likelihood's suppression
    lag, aftermath = facts["views"][0]["score_slots"] or WINDOW, facts["likelihood"]["suppress"]
    seq = {h: [i for i, r in enumerate(rows) if r["host"] == h] for h in HOSTS}
    detected, delays, near = 0, [], set()
    for span in SHIFTED:
        web1 = seq["web-1"]
        judged = web1[span.start : span.stop + lag]
        near.update(web1[span.start : span.stop + lag + aftermath])
        hits = [k for k, i in enumerate(judged) if by_row.get(i + 1, {}).get("is_anomaly")]
        if hits:
            detected += 1
            delays.append(hits[0])
    quiet = [i for i in range(len(rows)) if i not in near and "score" in by_row.get(i + 1, {})]
    false = sum(bool(by_row[i + 1].get("is_anomaly")) for i in quiet)
    return {
        "detected": detected,
        "delays": delays,
        "false": false,
        "quiet": len(quiet),
        "counted": (lag, aftermath),
    }


def test_evaluate_counts_what_score_raises(world):
    expected = counted_from_scores(world)
    for name in ("test.jsonl", "test.csv"):
        out = run(
            *("evaluate", "--model", world / "bundle", "--data", world / name),
            *("--label-column", "label", "--json"),
        )
        got = json.loads(out)
        assert got["kind"] == "window" and got["incidents"] == len(SHIFTED)
        assert got["detected"] == expected["detected"]
        assert [i["delay"] for i in got["each"] if i["delay"] is not None] == expected["delays"]
        assert (got["false_alerts"], got["quiet_points"]) == (expected["false"], expected["quiet"])
        assert got["alert_budget"] == 3 and (got["lag"], got["aftermath"]) == expected["counted"]
        assert got["rows"] == len(labelled()) and got["entities"] == len(HOSTS)
    # shifts of 40 sd on a quiet host: the model must see them, and name the metric
    assert expected["detected"] >= 1
    assert all(i["named"] == "cpu" for i in got["each"] if i["delay"] is not None)


def test_the_table_shows_incidents_and_false_alerts_beside_the_budget(world):
    out = run(
        *("evaluate", "--model", world / "bundle", "--data", world / "test.csv"),
        *("--label-column", "label"),
    )
    text = " ".join(out.replace("│", " ").split())
    assert f"{len(SHIFTED)} labelled incidents" in text
    assert "incidents detected" in text and "alert budget 3" in text
    assert "false alerts per 1,000 points" in text
    assert "web-1" in text  # the incidents table, one row each


def test_a_label_missing_on_a_later_row_names_the_row(world, tmp_path):
    rows = labelled()
    rows[7]["label"] = ""
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(
        app,
        [
            *("evaluate", "--model", str(world / "bundle"), "--data", str(tmp_path / "t.jsonl")),
            *("--label-column", "label"),
        ],
    )
    assert result.exit_code == ExitCode.FAILURE
    assert "row 8, column 'label': label is missing" in result.output


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
rows_as_read = st.one_of(
    st.dictionaries(st.sampled_from(["label", "host", "x"]), st.text(max_size=5), max_size=3),
    st.dictionaries(st.sampled_from(["label", "host", "x"]), json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),
    st.binary(max_size=40),
    st.just(b"[" * 5000 + b"]" * 5000),
    st.text(max_size=20),  # a line the reader could not split into cells
)


@settings(max_examples=200, deadline=None)
@given(st.lists(rows_as_read, min_size=1, max_size=12))
def test_any_rows_give_labels_or_a_clear_refusal(inputs):
    """Whatever the file holds: a label and entity per row, or one line naming the row or
    the column, never an exception that escapes."""
    import typer

    from vaeguard.cli.model_cmds import _row_labels
    from vaeguard.errors import DataError

    try:
        labels, entities = _row_labels(inputs, "label", "0", "host")
    except typer.BadParameter as exc:
        assert "label column 'label' not found" in str(exc)
        return
    except DataError as exc:
        assert "column 'label': label is missing" in str(exc)
        return
    assert len(labels) == len(entities) == len(inputs)
    assert all(v in (0, 1, None) for v in labels)
    assert all(e is None or isinstance(e, str) for e in entities)


def test_an_unreadable_line_is_refused_and_the_rest_evaluated(world, tmp_path):
    lines = [json.dumps(r) for r in labelled()]
    clean = json.loads(
        run(
            *("evaluate", "--model", world / "bundle", "--data", world / "test.jsonl"),
            *("--label-column", "label", "--json"),
        )
    )
    (tmp_path / "t.jsonl").write_text("\n".join([*lines[:10], "{not json", *lines[10:]]) + "\n")
    got = json.loads(
        run(
            *("evaluate", "--model", world / "bundle", "--data", tmp_path / "t.jsonl"),
            *("--label-column", "label", "--json"),
        )
    )
    assert (got["refused"], got["rows"]) == (1, clean["rows"] + 1)
    # the same stream of points: the same verdicts, one row further down the file
    shifted = [
        {**i, "first_row": i["first_row"] + 1, "last_row": i["last_row"] + 1} for i in clean["each"]
    ]
    for i in shifted:
        i["alert_row"] = None if i["alert_row"] is None else i["alert_row"] + 1
    assert got["each"] == shifted
    assert (got["false_alerts"], got["quiet_points"]) == (
        clean["false_alerts"],
        clean["quiet_points"],
    )


def test_alerts_on_rows_labelled_normal_are_false_and_the_entity_is_named(world, tmp_path):
    """The planted shifts labelled normal: every alert on them is a false alert of web-1."""
    rows = [{**r, "label": 0} for r in labelled()]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("evaluate", "--model", world / "bundle", "--data", tmp_path / "t.jsonl")
    got = json.loads(run(*args, "--label-column", "label", "--json"))
    assert got["incidents"] == 0 and got["false_alerts"] == got["alerts"] >= 1
    assert got["quiet_points"] == got["scored"]
    assert [e["entity"] for e in got["noisiest"]] == ["web-1"]
    text = " ".join(run(*args, "--label-column", "label").replace("│", " ").split())
    assert "entities with false alerts" in text and "web-1" in text
    assert "0 of 0" in text  # incidents detected


def test_a_file_without_the_time_field_is_refused_before_the_model_loads(world, tmp_path):
    from tests.cli.test_cli import _assert_one_clear_line, _refused_before_keras
    from vaeguard.bundle import read_manifest, required_fields
    from vaeguard.serving import load_serving

    bundle = world / "bundle"
    assert required_fields(read_manifest(bundle)) == load_serving(bundle).required_fields
    path = tmp_path / "no-time.csv"
    path.write_text("host,cpu,lat\nweb-1,10.0,5.0\n")
    _assert_one_clear_line(
        _refused_before_keras(
            *("--model", bundle, "--data", path, "--out", tmp_path / "s.jsonl"), command="score"
        ),
        "missing feature column",
        "'ts'",
    )
    _assert_one_clear_line(
        _refused_before_keras(
            *("--model", bundle, "--data", path, "--label-column", "label"), command="evaluate"
        ),
        "missing feature column",
        "'ts'",
    )
