"""A window bundle carries each entity's window state at the end of its training data.

`vaeguard train-window` then `vaeguard score` on the data that follows scores its first point
(no window to fill again, no likelihood warm-up spent before it), as a daemon that had read the
training data would. The state is a data file pinned by its SHA-256 (``files`` in the
manifest): tampered, missing or malformed, the bundle is refused with one line; an entity whose
first scored point is not later than the state's starts afresh, so scoring the training file
itself gives what a bundle without the state gives.
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


@pytest.fixture(scope="module")
def carried(tmp_path_factory) -> Path:
    """The shared small window model, saved with the state at the end of `records()`."""
    from vaeguard.timeseries.views import ViewSet

    views = ViewSet.load(window_bundle())
    featurizer = views.featurizer()
    featurizer.update_and_featurize(records())
    views.entity_state_ = featurizer.carried_snapshot(1 << 20)
    return views.save(tmp_path_factory.mktemp("carried") / "bundle")


def serve(path: Path, rows: list[dict]) -> dict[int, float]:
    """Row → raw score of every scored row, through the daemon's batch step."""
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process
    from vaeguard.serving import load_serving

    result = process(load_serving(path, "v1"), as_records(rows), step_settings())
    assert not result.dead
    return {r.source.offset: r.score for r in result.scored}


def test_serving_continues_each_entity_from_the_end_of_the_training_data(carried):
    following = records(N + 20)[N:]
    assert serve(carried, following).keys() == set(range(20))  # the first point is scored
    afresh = serve(window_bundle(), following)
    assert len(afresh) < 20  # without the state: its window fills again first


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
    np.testing.assert_allclose([again[k] for k in sorted(again)], [afresh[k] for k in again])


def test_the_state_is_pinned_in_the_manifest_and_shown_by_inspect(carried):
    from vaeguard.bundle import load_any

    m = read_manifest(carried)
    assert m["files"] == {STATE: sha256_file(carried / STATE)}
    summary = load_any(carried).summary()["entity_state"]
    assert summary == {"entities": 1, "last_ts": records()[-1]["ts"]}
    assert load_any(window_bundle()).summary()["entity_state"] is None
    shown = CliRunner().invoke(app, ["inspect", "--model", str(carried)]).output
    assert "1 entities continue from the end of the training data" in " ".join(shown.split())


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


def test_a_tampered_or_missing_state_file_is_refused(carried, tmp_path):
    path = copy(carried, tmp_path / "tampered")
    state = json.loads((path / STATE).read_text())
    state["entities"][0]["scaler"]["mean"][0] += 1.0
    (path / STATE).write_text(json.dumps(state))
    assert "does not match its recorded SHA-256" in refused(path)
    (path / STATE).unlink()
    assert f"file {STATE!r} is missing" in refused(path)


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


def repin(path: Path, state) -> None:
    (path / STATE).write_text(state if isinstance(state, str) else json.dumps(state))
    m = json.loads((path / "bundle.json").read_text())
    m["files"][STATE] = sha256_file(path / STATE)
    (path / "bundle.json").write_text(json.dumps(m))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_arbitrary_json_in_the_state_loads_or_is_refused_in_one_line(
    carried, tmp_path_factory, data
):
    """Any value anywhere in the (re-pinned) state file: a serving that scores the following
    records, or `BundleError` with one line. Nothing else escapes."""
    from vaeguard.apps.online import as_records, step_settings
    from vaeguard.records.batch import process

    path = copy(carried, tmp_path_factory.mktemp("s") / "b")
    state = json.loads((path / STATE).read_text())
    places = sorted(set(paths(state)), key=repr)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        place = data.draw(st.sampled_from(places), label="path")
        value = data.draw(json_values(), label="value")
        with contextlib.suppress(KeyError, IndexError, TypeError):  # a place an edit removed
            state = replace(state, place, value)
    repin(path, dump(state))
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
    assert json.loads(trained.stdout)["entities_carried"] == 2
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
