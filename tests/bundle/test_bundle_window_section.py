"""A window bundle's manifest says what the model is (issue 25, "honest models and bundles").

From format 3 a window model's ``bundle.json`` has a ``window`` section (the config, and for each
view the channels and time conditions its model reads, the slots it scores, its calibration)
instead of stand-in tabular fields (window slots as features, an identity scaler, the time
conditions as numeric condition columns, the config in ``extra.window_mode``). Bundles of that
older layout, written here by the old writer kept for the purpose, still load and score
exactly as the new layout of the same fitted model; whatever JSON the new section holds, a
bundle loads or is refused with one `BundleError` line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.bundle.test_bundle_kinds import assert_same_window_scores
from tests.bundle.test_bundle_manifest_fuzz import keras_loads_once_per_file  # noqa: F401
from tests.json_fuzz import BASE_SCALARS, dump, json_values, paths, replace
from tests.serving.window_model import window_bundle
from vaeguard.bundle import FORMAT_VERSION, load_any, read_manifest, sha256_file
from vaeguard.errors import BundleError

#: The stand-in tabular fields an older window manifest carries and a new one must not.
TABULAR = ("features", "conditions", "scaler", "baseline", "score_reference", "params")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """One fitted `ViewSet` (two views, a seasonal channel) saved in both layouts."""
    from vaeguard.timeseries.codec import _save_legacy
    from vaeguard.timeseries.views import ViewSet

    views = ViewSet.load(window_bundle())
    root = tmp_path_factory.mktemp("layouts")
    return {
        "views": views,
        "new": views.save(root / "new"),
        "old": _save_legacy(views, root / "old"),
    }


def manifest(path: Path) -> dict:
    return json.loads((path / "bundle.json").read_text())


def write(path: Path, m: dict) -> None:
    (path / "bundle.json").write_text(json.dumps(m))


def test_the_manifest_describes_the_window_model_without_stand_in_fields(layouts):
    views = layouts["views"]
    m, part = manifest(layouts["new"]), manifest(layouts["new"] / "views" / "1")
    for doc in (m, part):
        assert doc["kind"] == "window" and doc["format_version"] == FORMAT_VERSION == 3
        assert not set(TABULAR) & set(doc) and "plausible_range" not in doc
        assert "window_mode" not in doc["extra"]
    assert m["parts"] == {"views/1": sha256_file(layouts["new"] / "views" / "1" / "bundle.json")}
    assert m["window"]["config"] == json.loads(json.dumps(views.get_params()))
    assert "config" not in part["window"]
    for doc, view, k in ((m, views.primary, 0), (part, views.views[1], 1)):
        w = doc["window"]
        assert w["view"] == k and w["inputs"] == list(view.input_channels)
        assert w["n_inputs"] == view.n_inputs == views.spec.window * len(view.input_channels)
        assert w["conditions"] == ["hour_of_day"] and w["n_conditions"] == 2
        assert w["score_slots"] == 4
        assert w["calibration"]["baseline"] == view.baseline_.tolist()
        assert w["calibration"]["score_reference"] == view.score_reference_.tolist()
        assert doc["threshold"] == view.threshold_.to_dict()
        assert doc["training"] == json.loads(json.dumps(dict(view.training_info_)))
    # the older layout, as the code before the section wrote it
    old = manifest(layouts["old"])
    assert old["format_version"] == 1 and set(TABULAR) <= set(old)
    assert old["extra"]["window_mode"] == m["window"]["config"]
    assert read_manifest(layouts["old"])["features"][0] == "value[t-7]"


def test_both_layouts_of_one_model_load_and_score_identically(layouts):
    from vaeguard.serving import load_serving
    from vaeguard.timeseries.views import ViewSet

    old, new = load_any(layouts["old"]), load_any(layouts["new"])
    assert isinstance(old, ViewSet) and isinstance(new, ViewSet)
    assert_same_window_scores(old, new)
    assert_same_window_scores(new, layouts["views"])
    assert old.get_params() == new.get_params()
    for a, b in zip(old.views, new.views, strict=True):
        assert a.threshold_.to_dict() == b.threshold_.to_dict()
        np.testing.assert_array_equal(a.baseline_, b.baseline_)
        np.testing.assert_array_equal(a.score_reference_, b.score_reference_)
        assert dict(a.training_info_) == dict(b.training_info_)
        assert a.plausible_range_.to_dict() == b.plausible_range_.to_dict()
        assert a.unlearned_channels == b.unlearned_channels
    for path in (layouts["old"], layouts["new"]):
        assert load_serving(path, "v1").kind == "window"


def test_inspect_shows_the_same_model_for_both_layouts(layouts):
    from vaeguard.cli.main import app

    def summary(path):
        result = CliRunner().invoke(app, ["inspect", "--model", str(path), "--json"])
        assert result.exit_code == 0, result.output
        s = json.loads(result.output)
        del s["bundle"], s["created_at"]
        for v in s["views"]:
            del v["model_sha256"]  # (the same weights, saved again)
        return s

    assert summary(layouts["old"]) == summary(layouts["new"])


def test_a_registered_window_version_has_the_section_and_lists_its_threshold(layouts, tmp_path):
    from vaeguard.registry import ModelRegistry
    from vaeguard.timeseries.bundle import bundle_view

    reg = ModelRegistry(tmp_path / "reg", create=True)
    version = reg.register(bundle_view(layouts["views"]))
    m = manifest(reg.path_of(version))
    assert m["window"]["config"] and not set(TABULAR) & set(m)
    assert reg.info(version).threshold == layouts["views"].primary.threshold_.value
    assert_same_window_scores(reg.load()[0], layouts["views"])
    # promoting checks that the version loads: a window version still does
    other = reg.register(bundle_view(layouts["views"]), make_current=False)
    assert reg.promote(other) == other and reg.current() == other


def test_an_old_layout_without_window_mode_is_still_refused(layouts, tmp_path):
    path = tmp_path / "old"
    shutil.copytree(layouts["old"], path)
    m = manifest(path)
    del m["extra"]["window_mode"]
    write(path, m)
    with pytest.raises(BundleError, match=r"a window model without extra\.window_mode"):
        load_any(path)


@pytest.mark.parametrize(
    ("part", "key", "value", "message"),
    [
        (False, "inputs", ["other"], r"window\.inputs is \['other'\], the config describes"),
        (False, "n_inputs", 16, "window.calibration must hold a baseline of 16"),
        (False, "conditions", [], "window.conditions is"),
        (False, "n_conditions", 4, "window.n_conditions is 4"),
        (False, "score_slots", 2, "window.score_slots is 2"),
        (False, "score_slots", 9, "window.score_slots must be null or"),
        (False, "view", 1, "window.config must be an object in view 0's"),
        (False, "config", None, "window.config must be an object in view 0's"),
        (True, "view", 2, "window.view is 2"),
        (True, "inputs", ["value"], r"window\.inputs is \['value'\]"),
        (True, "config", {}, "window.config must be an object in view 0's"),
        (True, "calibration", {"baseline": []}, "window.calibration must hold a baseline of 16"),
        (True, "window", None, "field 'window' is missing or malformed"),
    ],
)
def test_a_section_that_does_not_describe_its_model_is_refused(
    layouts, tmp_path, part, key, value, message
):
    path = tmp_path / "b"
    shutil.copytree(layouts["new"], path)
    target = path / "views" / "1" if part else path
    m = manifest(target)
    if key == "window":
        m["window"] = value
    else:
        m["window"][key] = value
    write(target, m)
    if part:
        top = manifest(path)
        top["parts"]["views/1"] = sha256_file(target / "bundle.json")
        write(path, top)
    with pytest.raises(BundleError, match=message) as info:
        load_any(path)
    assert "\n" not in str(info.value) and str(info.value).startswith("corrupt bundle at ")


def test_a_part_in_the_older_layout_is_refused_under_a_new_manifest(layouts, tmp_path):
    path = tmp_path / "mixed"
    shutil.copytree(layouts["new"], path)
    shutil.rmtree(path / "views")
    shutil.copytree(layouts["old"] / "views", path / "views")
    top = manifest(path)
    top["parts"]["views/1"] = sha256_file(path / "views" / "1" / "bundle.json")
    write(path, top)
    with pytest.raises(BundleError, match="not a window view"):
        load_any(path)


# -- arbitrary JSON in the section -----------------------------------------------------------------

JSON = json_values(BASE_SCALARS | st.sampled_from(["value", "value_seasonal", "hour_of_day"]))


def section_paths(m: dict) -> list[tuple]:
    """Every place in the ``window`` section (long lists: first and last items), the optional
    fields it may lack, the shared fields it relies on."""
    found = {p for p in paths(m) if p[:1] == ("window",)}
    found |= {("window", "plausible_range"), ("window", "config"), ("threshold",), ("training",)}
    return sorted(found, key=repr)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), part=st.booleans())
def test_arbitrary_json_in_the_section_loads_or_is_refused_in_one_line(
    layouts, tmp_path_factory, data, part
):
    """Any value in any field of the section (the top manifest's, or the part's, re-pinned so
    its own checks run): a `ViewSet`, or `BundleError` with one line. Nothing else escapes."""

    path = tmp_path_factory.mktemp("s") / "b"
    shutil.copytree(layouts["new"], path)
    target = path / "views" / "1" if part else path
    m = manifest(target)
    places = section_paths(m)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        place = data.draw(st.sampled_from(places), label="path")
        value = data.draw(JSON, label="value")
        with contextlib.suppress(KeyError, IndexError, TypeError):  # a place an edit removed
            m = replace(m, place, value)
    (target / "bundle.json").write_text(dump(m))
    if part:
        top = manifest(path)
        top["parts"]["views/1"] = sha256_file(target / "bundle.json")
        write(path, top)
    serving = loaded_or_refused(path)
    assert serving is None or serving.kind == "window"


def loaded_or_refused(path: Path):
    """The bundle's serving, or None when it is refused with one `BundleError` line."""
    from vaeguard.serving import load_serving

    try:
        serving = load_serving(path, "v1")
    except BundleError as exc:
        event("refused")
        assert "\n" not in str(exc) and str(exc).startswith("corrupt bundle at "), str(exc)
        return None
    event("loaded")
    return serving


def test_a_tabular_bundle_is_not_read_as_a_window_model(small_bundle):
    from vaeguard.timeseries.views import ViewSet

    with pytest.raises(BundleError, match=r"not a window-mode model \(its kind is tabular\)"):
        ViewSet.load(small_bundle)
