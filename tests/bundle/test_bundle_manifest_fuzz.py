"""``bundle.json`` is data read from disk (issue 26, "files are data").

Whatever a manifest holds, loading gives a valid model or the loader's one-line `BundleError`,
never another exception; and the files it names (``model_file``, the view parts) are plain
names inside the bundle directory: a manifest cannot make the loader read and hash a file
anywhere else, even one whose SHA-256 it records correctly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.json_fuzz import BASE_SCALARS, dump, json_values, paths, replace
from tests.serving.window_model import window_bundle
from vaeguard.errors import BundleError


@pytest.fixture(scope="module", autouse=True)
def keras_loads_once_per_file():
    """Every example loads the same few model files: each is read once (keyed by its bytes'
    SHA-256, so a changed file is still loaded, and refused, for real)."""
    from vaeguard._quiet import import_keras

    keras = import_keras()
    real = keras.saving.load_model
    cache: dict[str, object] = {}

    def load_model(path, *args, **kwargs):
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest not in cache:
            cache[digest] = real(path, *args, **kwargs)
        return cache[digest]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keras.saving, "load_model", load_model)
        yield


@pytest.fixture(scope="module")
def bundles(small_bundle):
    return {"tabular": Path(small_bundle), "window": window_bundle()}


def copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def edit(path: Path, **changes) -> None:
    manifest = json.loads((path / "bundle.json").read_text())
    manifest.update(changes)
    (path / "bundle.json").write_text(json.dumps(manifest))


def load(path: Path):
    from vaeguard.serving import load_serving

    return load_serving(path, "v1")


# -- the files a manifest names --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../elsewhere/model.keras", "sub/model.keras", "..", ".", "", "a\\b.keras", 5, None, ["x"]],
)
def test_model_file_must_be_a_plain_name_inside_the_bundle(bundles, tmp_path, name):
    bundle = copy(bundles["tabular"], tmp_path / "bundle")
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(bundle / "model.keras", tmp_path / "elsewhere" / "model.keras")
    (bundle / "sub").mkdir()
    shutil.copy(bundle / "model.keras", bundle / "sub" / "model.keras")
    edit(bundle, model_file=name)
    with pytest.raises(BundleError, match=r"field 'model_file' must be a plain file name") as exc:
        load(bundle)
    assert "\n" not in str(exc.value)


def test_an_absolute_model_file_is_refused_even_with_its_right_sha256(bundles, tmp_path):
    """The manifest records the hash of whatever it points at: the hash proves nothing about
    where the file is; the loader must never read outside the bundle."""
    bundle = copy(bundles["tabular"], tmp_path / "bundle")
    outside = tmp_path / "outside.keras"
    shutil.copy(bundle / "model.keras", outside)
    edit(bundle, model_file=str(outside))
    with pytest.raises(BundleError, match="model_file"):
        load(bundle)


def test_a_model_file_that_links_out_of_the_bundle_is_refused(bundles, tmp_path):
    bundle = copy(bundles["tabular"], tmp_path / "bundle")
    outside = tmp_path / "outside.keras"
    (bundle / "model.keras").rename(outside)
    (bundle / "model.keras").symlink_to(outside)
    with pytest.raises(BundleError, match="model_file"):
        load(bundle)


@pytest.mark.parametrize(
    "parts",
    [
        {"views/1\n": "0" * 64},
        {"../views/1": "0" * 64},
        {"views/1": 5},
        {"views/1": "not a sha"},
        ["views/1"],
    ],
)
def test_parts_are_named_folders_inside_the_bundle_pinned_by_a_sha256(bundles, tmp_path, parts):
    bundle = copy(bundles["window"], tmp_path / "bundle")
    edit(bundle, parts=parts)
    with pytest.raises(BundleError, match="field 'parts'"):
        load(bundle)


def test_a_part_folder_that_links_out_of_the_bundle_is_refused(bundles, tmp_path):
    bundle = copy(bundles["window"], tmp_path / "bundle")
    (bundle / "views").rename(tmp_path / "views")
    (bundle / "views").symlink_to(tmp_path / "views")
    with pytest.raises(BundleError, match="field 'parts'"):
        load(bundle)


def test_the_bundles_themselves_load(bundles):
    assert load(bundles["tabular"]).kind == "tabular"
    assert len(load(bundles["window"]).views.views) == 2


# -- sizes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "path", "value", "field"),
    [
        ("tabular", ("params", "mc_samples"), 10**8, "mc_samples"),
        ("window", ("window", "config", "views", 0, "mc_samples"), 10**8, "mc_samples"),
        ("window", ("window", "config", "window", "max_lateness"), 10**8, "max_lateness"),
        ("window", ("window", "config", "window", "window"), 10**8, "window"),
        ("window", ("window", "config", "window", "seasonal", "periods"), 10**8, "periods"),
        ("window", ("window", "config", "likelihood", "max_entities"), 0, "max_entities"),
        ("tabular", ("params", "seed"), -1, "seed"),
    ],
)
def test_a_number_serving_cannot_use_is_refused_at_load(
    bundles, tmp_path, kind, path, value, field
):
    """Counts that serving allocates or loops over (Monte-Carlo draws, an entity's slots, the
    periods a seasonal residual looks up per point) and numbers it cannot use at all: a corrupt
    one is refused at load, named, not met as a many-GiB allocation or as every record
    failing."""
    bundle = copy(bundles[kind], tmp_path / "bundle")
    manifest = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps(replace(manifest, path, value)))
    with pytest.raises(BundleError, match=field):
        load(bundle)


# -- arbitrary manifests ---------------------------------------------------------------------------


#: File names and pins a manifest may hold, right and wrong.
NAMES = ["model.keras", "../model.keras", "/etc/hostname", "views/1", "views/1/model.keras", "."]
SCALARS = BASE_SCALARS | st.sampled_from([*NAMES, "entity_state.json", "bundle.json", "0" * 64])
JSON = json_values(SCALARS)


def manifest_paths(root: Path) -> list[tuple]:
    """Every place in the manifest at ``root`` (long lists: first and last items), and the
    optional fields it may lack."""
    manifest = json.loads((root / "bundle.json").read_text())
    found = set(paths(manifest))
    found |= {("model_file",), ("parts",), ("parts", "views/1"), ("latent_knn",), ("files",)}
    found |= {("files", "entity_state.json")}
    return sorted(found, key=repr)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), kind=st.sampled_from(["tabular", "window", "window part"]))
def test_arbitrary_manifests_load_or_are_refused_with_a_bundle_error(
    bundles, tmp_path_factory, data, kind
):
    """Arbitrary JSON in any field of a valid manifest (a part's too, re-pinned so its own
    checks run): a loaded model, or `BundleError` with one line. Nothing else escapes."""
    part = kind == "window part"
    source = bundles["window" if part else kind]
    bundle = copy(source, tmp_path_factory.mktemp("m") / "b")
    target = bundle / "views" / "1" if part else bundle
    manifest = json.loads((target / "bundle.json").read_text())
    all_paths = manifest_paths(source / "views" / "1" if part else source)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        path = data.draw(st.sampled_from(all_paths), label="path")
        value = data.draw(JSON, label="value")
        with contextlib.suppress(KeyError, IndexError, TypeError):  # a place an edit removed
            manifest = replace(manifest, path, value)
    (target / "bundle.json").write_text(dump(manifest))
    if part:  # pinned again: the part's own checks must hold without the hash
        from vaeguard.bundle import sha256_file

        edit(bundle, parts={"views/1": sha256_file(target / "bundle.json")})
    try:
        serving = load(bundle)
    except BundleError as exc:
        event("refused")
        assert "\n" not in str(exc) and str(exc).startswith(
            ("corrupt bundle", "incompatible bundle", "no model bundle", "the bundle at")
        ), str(exc)
        return
    event("loaded")
    assert serving.kind in ("tabular", "window")
