"""A window bundle carries each entity's window state at the end of its training data, and
its likelihood histories after judging the calibration tail.

`vaeguard train-window` then `vaeguard score` on the data that follows scores and judges its
first point (no window to fill again, no likelihood warm-up spent before it), as a daemon that
had read the training data would. Each state is a data file pinned by its SHA-256 (``files`` in
the manifest): tampered, missing or malformed, the bundle is refused with one line; an entity
whose first scored point is not later than the state's starts afresh, histories too, so scoring
the training file itself gives what a bundle without the state gives.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.bundle.test_bundle_manifest_fuzz import keras_loads_once_per_file  # noqa: F401
from tests.bundle.test_bundle_window_section import loaded_or_refused
from tests.cli.test_exit_codes import WINDOW_FAST, window_records
from tests.json_fuzz import dump, json_values, paths, replace
from tests.serving.window_model import N, records, window_bundle
from vaeguard.bundle import read_manifest, sha256_file
from vaeguard.cli.main import app
from vaeguard.errors import BundleError

STATE = "entity_state.json"
HISTORIES = "likelihood_state.json"
#: The windows of `records()` the fixture's histories judged (its "calibration tail").
TAIL = 40


@pytest.fixture(scope="module")
def carried(tmp_path_factory) -> Path:
    """The shared small window model, saved with the state at the end of `records()` and the
    histories after judging its last `TAIL` windows, as `train-window` keeps them."""
    from vaeguard.cli.window_cmds import _judged_tail
    from vaeguard.timeseries.views import ViewSet

    views = ViewSet.load(window_bundle())
    featurizer = views.featurizer()
    batch = featurizer.update_and_featurize(records())
    views.entity_state_ = featurizer.carried_snapshot(1 << 20)
    tail = slice(len(batch) - TAIL, None)
    windows = (batch.x[tail], batch.c[tail], batch.mask[tail])
    views.likelihood_state_ = _judged_tail(views, windows, batch.entities[tail])
    assert views.likelihood_state_ is not None
    return views.save(tmp_path_factory.mktemp("carried") / "bundle")


def serve(path: Path, rows: list[dict], **kwargs) -> dict[int, tuple[float, float, float]]:
    """Row → (raw score, anomaly likelihood, p-value) of every scored row, through the
    daemon's batch step."""
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    result = process(load_serving(path, "v1", **kwargs), as_records(rows), step_settings())
    assert not result.dead
    return {r.source.offset: (r.score, r.anomaly_likelihood, r.p_value) for r in result.scored}


def test_serving_continues_each_entity_from_the_end_of_the_training_data(carried):
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    following = records(N + 20)[N:]
    scored = serve(carried, following)
    assert scored.keys() == set(range(20))  # the first point is scored
    # and judged: the histories of the calibration tail give an opinion at once
    serving = load_serving(carried, "v1")
    process(serving, as_records(following[:1]), step_settings())
    assert not serving.likelihood.views[0].warming_up("web-1")
    assert min(p for _, _, p in scored.values()) < 1.0
    afresh = serve(window_bundle(), following)
    assert len(afresh) < 20  # without the state: its window fills again first
    assert afresh[min(afresh)][2] == 1.0  # and its first opinion waits for a history


def test_an_alert_budget_set_at_load_starts_the_histories_empty(carried):
    """The carried histories were judged under the bundle's spec: under another budget the
    held points and recurring incidents would not be what that budget holds out."""
    from vaeguard.serving import load_serving

    assert load_serving(carried, "v1").likelihood.entities() == ["web-1"]
    assert load_serving(carried, "v1", budget=5.0).likelihood.entities() == []
    scored = serve(carried, records(N + 20)[N:], budget=5.0)
    assert scored.keys() == set(range(20)) and scored[0][2] == 1.0


def test_the_learning_schedule_counts_an_entity_once_the_stream_continues_it(carried):
    """Refits are due every ``retrain_max_gap`` rows per entity the stream feeds: entities the
    bundle carries but the stream never reaches must not put them off."""
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    serving = load_serving(carried, "v1")
    assert (serving.n_entities, serving.n_live) == (1, 0)
    process(serving, as_records(records(N + 3)[N:]), step_settings())
    assert (serving.n_entities, serving.n_live) == (1, 1)


def test_scoring_the_training_data_again_is_scoring_it_afresh(carried):
    """Not a continuation: every entity starts afresh rather than refuse its points as late."""
    again, afresh = serve(carried, records()), serve(window_bundle(), records())
    assert again.keys() == afresh.keys() and len(again) > N / 2
    rows = sorted(again)
    np.testing.assert_allclose([again[k] for k in rows], [afresh[k] for k in rows])


def test_the_state_is_pinned_in_the_manifest_and_shown_by_inspect(carried):
    from vaeguard.bundle import load_any

    m = read_manifest(carried)
    assert m["files"] == {
        STATE: sha256_file(carried / STATE),
        HISTORIES: sha256_file(carried / HISTORIES),
    }
    summary = load_any(carried).summary()["entity_state"]
    assert summary == {"entities": 1, "last_ts": records()[-1]["ts"], "with_histories": 1}
    assert load_any(window_bundle()).summary()["entity_state"] is None
    inspect = ["inspect", "--model", str(carried)]
    shown = CliRunner().invoke(app, inspect, env={"COLUMNS": "400"}).output
    shown = " ".join(shown.split())
    assert "1 entities continue from the end of the training data" in shown
    assert "1 of them with likelihood histories from the calibration tail" in shown


def copy(carried: Path, dest: Path) -> Path:
    shutil.copytree(carried, dest)
    return dest


def refused(path: Path) -> str:
    from vaeguard.serving import load_serving

    with pytest.raises(BundleError) as caught:
        load_serving(path, "v1")
    text = str(caught.value)
    assert "\n" not in text and text.startswith("corrupt bundle at ")
    return text


@pytest.mark.parametrize("name", [STATE, HISTORIES])
def test_a_tampered_or_missing_state_file_is_refused(carried, tmp_path, name):
    path = copy(carried, tmp_path / "tampered")
    state = json.loads((path / name).read_text())
    state["version"] = state["version"]  # the same content, written another way
    (path / name).write_text(json.dumps(state, indent=1))
    assert "does not match its recorded SHA-256" in refused(path)
    (path / name).unlink()
    assert f"file {name!r} is missing" in refused(path)


@pytest.mark.parametrize(
    "files, fragment",
    [
        ({"../entity_state.json": "0" * 64}, "not a plain JSON file name"),
        ({"sub/x.json": "0" * 64}, "not a plain JSON file name"),
        ({STATE: "abc"}, "not a SHA-256"),
        ([STATE], "field 'files' must be an object"),
    ],
)
def test_a_files_field_that_names_no_plain_file_is_refused(carried, tmp_path, files, fragment):
    path = copy(carried, tmp_path / "b")
    m = json.loads((path / "bundle.json").read_text())
    m["files"] = files
    (path / "bundle.json").write_text(json.dumps(m))
    assert fragment in refused(path)


def test_a_state_of_another_window_spec_is_refused(carried, tmp_path):
    path = copy(carried, tmp_path / "b")
    state = json.loads((path / STATE).read_text())
    state["spec"]["norm_clip"] += 1.0
    repin(path, state)
    assert "its window spec is not the model's" in refused(path)


def test_histories_that_nothing_judges_with_are_left_unused(carried, tmp_path):
    """Histories of another likelihood spec (or of a model edited to have none), or without
    the windows they continue: serving starts empty histories, as a budget set at load does."""
    from vaeguard.bundle import load_any
    from vaeguard.serving import load_serving

    path = copy(carried, tmp_path / "spec")
    state = json.loads((path / HISTORIES).read_text())
    state["emitter"]["spec"]["budget"] = 7.0
    repin(path, state, HISTORIES)
    assert load_serving(path, "v1").likelihood.entities() == []
    assert load_any(path).summary()["entity_state"]["with_histories"] == 0
    path = copy(carried, tmp_path / "alone")
    (path / STATE).unlink()
    m = json.loads((path / "bundle.json").read_text())
    del m["files"][STATE]
    (path / "bundle.json").write_text(json.dumps(m))
    assert load_any(path).likelihood_state_ is None
    assert load_serving(path, "v1").likelihood.entities() == []


def repin(path: Path, state, name: str = STATE) -> None:
    (path / name).write_text(state if isinstance(state, str) else json.dumps(state))
    m = json.loads((path / "bundle.json").read_text())
    m["files"][name] = sha256_file(path / name)
    (path / "bundle.json").write_text(json.dumps(m))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), name=st.sampled_from([STATE, HISTORIES]))
def test_arbitrary_json_in_the_state_loads_or_is_refused_in_one_line(
    carried, tmp_path_factory, data, name
):
    """Any value anywhere in a (re-pinned) state file: a serving that scores the following
    records, or `BundleError` with one line. Nothing else escapes."""
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process

    path = copy(carried, tmp_path_factory.mktemp("s") / "b")
    state = json.loads((path / name).read_text())
    places = sorted(set(paths(state)), key=repr)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        place = data.draw(st.sampled_from(places), label="path")
        # (plain numbers too, which keep many places valid: the loaded path is fuzzed as well)
        value = data.draw(json_values() | st.floats(-1e6, 1e6), label="value")
        with contextlib.suppress(KeyError, IndexError, TypeError):  # a place an edit removed
            state = replace(state, place, value)
    repin(path, dump(state), name)
    serving = loaded_or_refused(path)
    if serving is not None:
        result = process(serving, as_records(records(N + 5)[N:]), step_settings())
        assert len(result.scored) + len(result.dead) <= 5


def test_train_window_then_score_the_following_rows_scores_the_first_row(tmp_path):
    """The commands a user runs, through a registry: the version keeps the state."""
    rows = window_records(300)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:400]))
    (tmp_path / "next.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[400:]))
    runner = CliRunner()
    trained = runner.invoke(
        app,
        [
            *("train-window", "--data", str(tmp_path / "train.jsonl"), "--metrics", "cpu,lat"),
            *("--entity-column", "host", *WINDOW_FAST, "--registry", str(tmp_path / "reg")),
            "--json",
        ],
    )
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["entities_carried"] == summary["entities_with_histories"] == 2
    scored = runner.invoke(
        app,
        [
            *("score", "--model", str(tmp_path / "reg"), "--data", str(tmp_path / "next.jsonl")),
            *("--out", str(tmp_path / "s.jsonl"), "--json"),
        ],
    )
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["filling_windows"] == 0
    out = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(out) == 200 and all("score" in r for r in out)
