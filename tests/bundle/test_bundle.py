"""A bundle is refused, with the reason, whenever it is corrupt, tampered with or incompatible."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeguard import BundleError, VAEDetector
from vaeguard.bundle import FORMAT_VERSION, read_manifest, required_fields


@pytest.fixture
def bundle(fitted, tmp_path):
    path = tmp_path / "bundle"
    fitted.save(path)
    return path


def _edit(path, **changes):
    manifest = json.loads((path / "bundle.json").read_text())
    manifest.update(changes)
    (path / "bundle.json").write_text(json.dumps(manifest))


def test_manifest_records_what_the_issue_asks_for(bundle):
    m = read_manifest(bundle)
    # format 2 only for a bundle whose score has a latent kNN term (format 1 readers would
    # silently leave it out); this one has none, so any format-1 reader still reads it
    assert m["format_version"] == (2 if "latent_knn" in m else 1) < FORMAT_VERSION
    assert m["features"] == [f"x{j}" for j in range(5)]
    for key in ("vaeguard", "keras", "tensorflow"):
        assert m["versions"][key]
    assert {"center", "scale"} <= set(m["scaler"])
    assert m["threshold"]["method"] == "budget"
    assert m["threshold"]["params"]["budget"] == 10.0 and m["params"]["budget"] == 10.0
    assert m["data_fingerprint"]["rows"] == 3000 and len(m["data_fingerprint"]["sha256"]) == 64
    assert m["created_at"] and m["training"]["history"]["loss"]


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        VAEDetector.load(tmp_path / "nope")


def test_truncated_model_file_is_refused(bundle):
    data = (bundle / "model.keras").read_bytes()
    (bundle / "model.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="SHA-256"):
        VAEDetector.load(bundle)


def test_model_file_that_is_not_a_keras_archive_is_refused_even_with_matching_hash(bundle):
    from vaeguard.bundle import sha256_file

    (bundle / "model.keras").write_bytes(b"not a zip file at all")
    _edit(bundle, model_sha256=sha256_file(bundle / "model.keras"))
    with pytest.raises(BundleError, match=r"cannot load model\.keras"):
        VAEDetector.load(bundle)


def test_invalid_manifest_json(bundle):
    (bundle / "bundle.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        VAEDetector.load(bundle)


def test_newer_format_version_is_refused(bundle):
    _edit(bundle, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match="newer than this vaeguard"):
        VAEDetector.load(bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": ["a", "b"]}, "scaler.center must hold 2"),
        (
            {
                "features": ["a", "b"],
                "scaler": {"center": [0, 0], "scale": [1, 1]},
                "baseline": [0, 0],
                "plausible_range": {"low": [0, 0], "high": [1, 1]},
            },
            "expects 5 features",
        ),
        ({"features": ["x0", "x0", "x1", "x2", "x3"]}, "unique"),
        ({"scaler": {"center": [0] * 5, "scale": [1, 1, 1, 0, 1]}}, "positive"),
        ({"threshold": {"value": None, "method": "quantile"}}, "finite value"),
        ({"baseline": [0.0]}, "baseline"),
        ({"versions": {"keras": "2.15.0"}}, "Keras 3"),
    ],
)
def test_inconsistent_manifest_is_refused(bundle, change, message):
    _edit(bundle, **change)
    with pytest.raises(BundleError, match=message):
        VAEDetector.load(bundle)


def test_refuses_to_write_into_a_foreign_folder(fitted, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not empty"):
        fitted.save(tmp_path / "other")


def test_overwriting_a_bundle_keeps_it_loadable(fitted, bundle):
    fitted.save(bundle)
    assert VAEDetector.load(bundle).threshold == fitted.threshold
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]


def test_copied_bundle_loads(bundle, tmp_path):
    shutil.copytree(bundle, tmp_path / "copy")
    assert VAEDetector.load(tmp_path / "copy").feature_names_


@given(
    st.lists(
        st.one_of(
            st.dictionaries(
                st.sampled_from(["name", "kind", "categories"]),
                st.one_of(st.text(max_size=4), st.integers(), st.none()),
            ),
            st.text(max_size=3),
            st.integers(),
        ),
        max_size=4,
    )
)
@settings(max_examples=200, deadline=None)
def test_required_fields_of_any_conditions_are_a_list_of_names_or_none(conditions):
    m = {"kind": "tabular", "format_version": 1, "features": ["a", "b"], "conditions": conditions}
    fields = required_fields(m)
    assert fields is None or (
        fields[:2] == ["a", "b"]
        and len(fields) == 2 + len(conditions)
        and all(isinstance(f, str) for f in fields)
    )
    assert required_fields({**m, "kind": "window"}) is None
