"""`vaeguard inspect` on a window-mode bundle: what serving will do, view by view.

One tiny window model (W = 8, two metrics, two hosts, five hours of one-minute points: less
than the daily seasonal channel's period) is trained once by `vaeguard train-window`; inspect
must show every view's channels (the seasonal one not learned), the likelihood's alert budget
as what decides alerts, the online-learning schedule, the training facts the bundle records
and each view's verified model file, as a table and as compact JSON. Tabular bundles print
their manifest as before.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vaeguard.cli.exit_codes import ExitCode
from vaeguard.cli.main import app

WINDOW = 8
T0 = 1_700_000_000
HOSTS = {"web-1": 0.0, "web-2": 20.0}
MAIN = "from vaeguard.cli.main import main; main()"
FAST = ("--steps", "20", "--hidden", "16", "--latent-dim", "2", "--mc-samples", "4")


def records() -> list[dict]:
    """300 one-minute points per host (cpu, lat), and one web-1 point far behind its time."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(300):
        for host, offset in HOSTS.items():
            cpu = offset + 10 + 3 * math.sin(2 * math.pi * i / 24) + 0.3 * rng.standard_normal()
            out.append({"host": host, "ts": T0 + 60 * i, "cpu": cpu, "lat": 5 + rng.random()})
        if i == 200:  # 150 slots late: skipped, and counted
            out.append({"host": "web-1", "ts": T0 + 60 * 50, "cpu": 10.0, "lat": 5.0})
    return out


def inspect(*args) -> str:
    result = CliRunner().invoke(app, ["inspect", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def flat(text: str) -> str:
    """A rich table's text with the wrapping undone (cells read as one line each)."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("window")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records()))
    config = {"schedule": {"retrain_max_gap": 500, "max_train": 1500}}
    (root / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(
        app,
        [
            "train-window",
            *("--data", str(data), "--metrics", "cpu,lat", "--window", str(WINDOW)),
            *("--entity-column", "host", "--time-column", "ts", "--interval", "60"),
            *("--config", str(root / "config.json"), "--budget", "3"),
            *("--likelihood-warmup", "20", "--out", str(root / "bundle"), *FAST),
        ],
    )
    assert result.exit_code == 0, result.output
    return {"bundle": root / "bundle", "data": data}


def test_the_table_shows_each_view_the_likelihood_and_the_schedule(bundle):
    shown = flat(inspect("--model", bundle["bundle"]))
    assert "window mode 8 points of cpu, lat per host (time ts, interval 60 s)" in shown
    assert "conditions hour_of_day" in shown
    assert "seasonal cpu_seasonal = cpu minus its median" in shown
    assert "previous 3 periods of 86400 s" in shown
    # the likelihood decides, under the budget given; no view threshold is "the threshold"
    assert "the anomaly likelihood decides: a point alerts at 1 or more" in shown
    assert "alert budget 3 false alerts per 1,000 points per entity" in shown
    assert "evt: each term's score vs the entity's last 1000" in shown
    assert "from 20 scores on; suppress 100 points per metric" in shown
    assert "threshold " not in shown.replace("thresholds do not", "")
    view1 = shown[shown.index("view 1 ") : shown.index("view 2 ")]
    view2 = shown[shown.index("view 2 ") : shown.index("cross-section ")]
    # two metrics: each is also judged against the other at the same moment
    assert "cross-section each of cpu, lat against the others at the same moment; fitted on" in (
        shown
    )
    assert view1.startswith("view 1 cpu, lat (16 inputs: cpu[t-7] … lat[t])")
    assert view2.startswith("view 2 cpu, lat, cpu_seasonal (24 inputs")
    assert (
        "hidden [16], latent 2, L = 4 MC draws, newest 4 slots scored, predicted from the "
        "older 4 (the encoder does not see them); each metric judged under a Student-t of 4 "
        "degrees of freedom too"
    ) in view1
    assert "calibrated at " in view1 and " nats (quantile, target_fpr=0.01;" in view1
    # five hours of data hold no daily seasonal residual: view 2 says it cannot judge it
    assert "every channel learned" in view1
    assert "not learned: cpu_seasonal (0 of 128 slots seen), masked when scored" in view2
    assert "model.keras sha256 " in view1 and "(verified)" in view1
    assert "views/1/model.keras sha256 " in view2 and "(verified)" in view2
    assert "warm refits every 500 rows per entity on the newest 1500 windows" in shown
    assert "training 601 records of 2 entities (1 late points skipped)" in shown
    # shown whole, however long (a long path wraps inside the word: compared without the wrapping)
    assert f"trainingdata{bundle['data']}" in shown.replace(" ", "")
    # nothing of the tabular view of the same bundle
    for tabular in ("features", "best val loss", "None rows", "architecture"):
        assert tabular not in shown


def test_json_is_a_compact_summary_matching_the_bundle(bundle):
    from vaeguard.timeseries.views import ViewSet

    text = inspect("--model", bundle["bundle"], "--json")
    s = json.loads(text)
    views = ViewSet.load(bundle["bundle"])
    manifest = json.loads((bundle["bundle"] / "bundle.json").read_text())
    part = json.loads((bundle["bundle"] / "views" / "1" / "bundle.json").read_text())
    assert s["kind"] == "window" and s["bundle"] == str(bundle["bundle"])
    assert s["window"] == views.spec.to_dict()
    assert s["window"]["seasonal"]["name"] == "cpu_seasonal"
    assert s["alerts"] == {"decided_by": "likelihood", "level": 1.0}
    assert s["likelihood"] == views.likelihood_spec.to_dict()
    assert s["likelihood"]["budget"] == 3.0 and s["likelihood"]["min_history"] == 20
    assert s["schedule"] == {"retrain_growth": 2.0, "retrain_max_gap": 500, "max_train": 1500}
    assert [v["inputs"] for v in s["views"]] == [["cpu", "lat"], ["cpu", "lat", "cpu_seasonal"]]
    assert [v["unlearned_channels"] for v in s["views"]] == [[], ["cpu_seasonal"]]
    assert [v["part"] for v in s["views"]] == [None, "views/1"]
    assert s["views"][1]["channel_slots"][2] == 0 and s["views"][1]["slots_needed"] == 16 * WINDOW
    for v, m, det in zip(s["views"], (manifest, part), views.views, strict=True):
        assert (v["hidden"], v["latent_dim"], v["mc_samples"]) == ([16], 2, 4)
        # (the default predicts the scored slots: a shorter window scores its newer half)
        assert v["score_slots"] == WINDOW // 2 and v["predict_scored"] is True
        assert v["student_t_dof"] == 4.0
        assert v["threshold"]["value"] == det.threshold_.value
        assert v["threshold"]["unit"] == "nats" and v["threshold"]["method"] == "quantile"
        assert v["model_sha256"] == m["model_sha256"] and v["verified"] is True
        assert v["training"]["windows"] == m["training"]["windows"]
    assert [v["model_file"] for v in s["views"]] == ["model.keras", "views/1/model.keras"]
    t = s["training"]
    assert (t["train_rows"], t["entities"], t["late_points_skipped"]) == (601, 2, 1)
    assert t["training_data"] == str(bundle["data"])
    assert (
        t["windows"] + t["calibration_windows"]
        == manifest["training"]["windows"] + (manifest["training"]["calibration_windows"])
    )
    # compact: the calibration sample and baselines stay in the manifest
    assert "score_reference" not in text and "baseline" not in text
    # the whole validated manifest is one flag away
    assert json.loads(inspect("--model", bundle["bundle"], "--json", "--full")) == manifest


def test_a_bundle_recording_less_shows_unknown(bundle, tmp_path):
    """A window bundle written before these facts were recorded: "unknown", never a crash."""
    older = tmp_path / "older"
    shutil.copytree(bundle["bundle"], older)
    m = json.loads((older / "bundle.json").read_text())
    m["training"] = {"windows": m["training"]["windows"], "history": {}}
    del m["window"]["config"]["schedule"]
    (older / "bundle.json").write_text(json.dumps(m))
    shown = flat(inspect("--model", older))
    assert "training unknown records of unknown entities (unknown late points skipped)" in shown
    assert "training data unknown" in shown
    assert "unlearned channels: unknown (not recorded in this bundle)" in shown
    # no schedule: the daemon's default, which learns nothing online
    assert "online learning off (retrain_max_gap null)" in shown
    s = json.loads(inspect("--model", older, "--json"))
    assert s["views"][0]["unlearned_channels"] is None and s["training"]["train_rows"] is None


def test_without_an_alert_level_the_view_threshold_decides(bundle, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(bundle["bundle"], plain)
    m = json.loads((plain / "bundle.json").read_text())
    m["window"]["config"]["likelihood"] = None
    (plain / "bundle.json").write_text(json.dumps(m))
    shown = flat(inspect("--model", plain))
    value = m["threshold"]["value"]
    assert f"alerts decided by view 1's raw score above its threshold {value:.4f} nats" in shown
    assert "alert budget" not in shown and "likelihood off" in shown
    s = json.loads(inspect("--model", plain, "--json"))
    assert s["alerts"] == {"decided_by": "view threshold", "view": 0, "level": value}


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        (
            {"budget": None},
            "alert budget none (the likelihood reaches 1 at a tail probability of 1e-10)",
        ),
        ({"output": "linear"}, "alert budget none (linear output: 1 − the tail probability)"),
    ],
)
def test_a_likelihood_without_a_budget_says_what_sets_its_level(bundle, tmp_path, change, shown):
    other = tmp_path / "other"
    shutil.copytree(bundle["bundle"], other)
    m = json.loads((other / "bundle.json").read_text())
    m["window"]["config"]["likelihood"].update(change)
    (other / "bundle.json").write_text(json.dumps(m))
    text = flat(inspect("--model", other))
    assert shown in text and "false alerts per 1,000" not in text


def test_a_corrupt_view_part_is_refused_in_one_line(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle["bundle"], broken)
    (broken / "views" / "1" / "model.keras").write_bytes(b"garbage")
    result = subprocess.run(
        [sys.executable, "-c", MAIN, "inspect", "--model", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vaeguard: error: corrupt bundle"), lines


def test_a_tabular_bundle_prints_a_summary_and_its_manifest_with_full(small_bundle):
    """--json is a summary for every kind (a tabular manifest's calibration samples and
    reference sets made it hundreds of KB, issue 28); --full is the manifest."""
    manifest = json.loads((small_bundle / "bundle.json").read_text())
    summary = json.loads(inspect("--model", small_bundle, "--json"))
    assert summary["kind"] == "tabular" and summary["features"] == manifest["features"]
    assert summary["threshold"]["value"] == manifest["threshold"]["value"]
    assert summary["model_sha256"] == manifest["model_sha256"]
    assert json.loads(inspect("--model", small_bundle, "--full")) == manifest
    text = inspect("--model", small_bundle)
    labels = [line.split("│")[1].strip() for line in text.splitlines() if line.count("│") == 3]
    assert [label for label in labels if label] == [
        "created",
        "versions",
        "alert budget",
        "features",
        "threshold",
        "architecture",
        "training",
        "data",
        "model file",
    ]
    shown = flat(text)
    th = manifest["threshold"]
    assert f"threshold {th['value']:.4f} nats ({th['method']}; budget=" in shown
    assert "{" not in shown  # key=value, not a dict repr
    assert f"alert budget {th['params']['budget']:g} false alerts per 1,000 normal rows" in shown
    assert f"training {manifest['training']['train_rows']} rows" in shown
    assert f"data {manifest['data_fingerprint']['rows']} rows, sha256" in shown


#: Sections of ``bundle.json`` a hand edit or an older writer may leave out or fill oddly.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
_EDITS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                ("training", "train_rows"),
                ("training", "entities"),
                ("training", "late_points_skipped"),
                ("training", "training_data"),
                ("training", "calibration_windows"),
                ("training", "channel_slots"),
                ("created_at",),
                ("window", "config", "schedule"),
                ("window", "config", "schedule", "retrain_max_gap"),
                ("window", "config", "likelihood"),
                ("window", "config", "likelihood", "budget"),
                ("window", "config", "likelihood", "alert"),
                ("window", "config", "window", "seasonal"),
                ("window", "config", "window", "interval"),
                ("window", "config", "views"),
            ]
        ),
        st.none() | st.just("delete") | _JSON,
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_EDITS)
def test_any_edit_of_the_manifest_shows_or_is_refused_in_one_line(bundle, tmp_path_factory, edits):
    """Whatever a bundle.json holds in these sections: a summary, or a clear BundleError."""
    where = tmp_path_factory.mktemp("edited") / "bundle"
    shutil.copytree(bundle["bundle"], where)
    m = json.loads((where / "bundle.json").read_text())
    for path, value in edits:
        node = m
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if value == "delete":
            node.pop(path[-1], None)
        else:
            node[path[-1]] = copy.deepcopy(value)
    (where / "bundle.json").write_text(json.dumps(m))
    for args in ([], ["--json"]):
        result = CliRunner().invoke(app, ["inspect", "--model", str(where), *args])
        if result.exit_code == 0:
            if args:
                assert json.loads(result.output)["kind"] == "window"
            else:
                assert "window mode" in result.output
        else:  # a BundleError, as the one line the user sees (exit code 1, not a crash's 70)
            assert result.exit_code == ExitCode.FAILURE, result.output
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("vaeguard: error: "), lines
            assert "bundle" in lines[0], lines


@pytest.mark.parametrize("likelihood", [[], "evt", 5])
def test_a_likelihood_that_is_not_an_object_is_refused(bundle, tmp_path, likelihood):
    """Refused by the window loader itself, as serving would refuse it."""
    odd = tmp_path / "odd"
    shutil.copytree(bundle["bundle"], odd)
    m = json.loads((odd / "bundle.json").read_text())
    m["window"]["config"]["likelihood"] = likelihood
    (odd / "bundle.json").write_text(json.dumps(m))
    result = CliRunner().invoke(app, ["inspect", "--model", str(odd)])
    assert result.exit_code == ExitCode.FAILURE
    assert result.stderr == (
        f"vaeguard: error: corrupt bundle at {odd}: bad window.config parameters "
        "(likelihood: expected an object or null)\n"
    )
