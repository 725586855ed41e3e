"""A bundle loads as the model it holds (issue 25, "honest models and bundles").

`vaeguard.bundle.load_any` reads ``bundle.json``'s ``kind`` and hands the bundle to that kind's
reader: a `VAEDetector` for ``tabular``, a `ViewSet` for ``window``, each checked exactly as its
own reader checks it; a kind without a reader is refused with a `BundleError` naming it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.window_model import window_bundle
from vaeguard import bundle as bundle_format
from vaeguard.bundle import load_any, register_kind
from vaeguard.errors import BundleError
from vaeguard.ingest import short_repr


def window_inputs(views, n: int = 12, seed: int = 0):
    """Full windows (every channel) and their time conditions, as the daemon scores them."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, views.spec.window * len(views.spec.channels)))
    c = rng.uniform(-1, 1, (n, views.primary.time_conditions.width))
    return x.astype("float32"), c.astype("float32")


def assert_same_window_scores(a, b) -> None:
    x, c = window_inputs(a)
    sa, sb = a.score_windows(x, c), b.score_windows(x, c)
    np.testing.assert_array_equal(sa.score, sb.score)
    assert len(sa.terms) == len(sb.terms) == len(a.term_metrics)
    for ta, tb in zip(sa.terms, sb.terms, strict=True):
        np.testing.assert_array_equal(ta, tb)


def test_a_window_bundle_loads_as_the_view_set_it_holds():
    from vaeguard.timeseries.views import ViewSet

    path = window_bundle()
    loaded = load_any(path)
    assert isinstance(loaded, ViewSet) and len(loaded.views) == 2
    assert_same_window_scores(loaded, ViewSet.load(path))
    # each view keeps the checked manifest it came from (its own part's for views/1)
    top = json.loads((path / "bundle.json").read_text())
    assert loaded.primary.manifest_["model_sha256"] == top["model_sha256"]
    part = json.loads((path / "views" / "1" / "bundle.json").read_text())
    assert loaded.views[1].manifest_["model_sha256"] == part["model_sha256"]


def test_a_tabular_bundle_still_loads_as_a_vae_detector(small_bundle):
    from tests.conftest import make_normal_data
    from vaeguard.detector import VAEDetector

    loaded = load_any(small_bundle)
    assert type(loaded) is VAEDetector and loaded.feature_names_ == ["a", "b", "c", "d"]
    x = make_normal_data(50, seed=9)
    np.testing.assert_array_equal(
        loaded.score_matrix(x).scores, VAEDetector.load(small_bundle).score_matrix(x).scores
    )


def with_kind(source: Path, dest: Path, kind) -> Path:
    shutil.copytree(source, dest)
    manifest = json.loads((dest / "bundle.json").read_text())
    manifest["kind"] = kind
    (dest / "bundle.json").write_text(json.dumps(manifest))
    return dest


@pytest.mark.parametrize("kind", ["tabular2", "Window", "", "views/1", 7, ["window"]])
def test_an_unknown_kind_is_refused_naming_it(small_bundle, tmp_path, kind):
    path = with_kind(small_bundle, tmp_path / "b", kind)
    shown = kind if isinstance(kind, str) else repr(kind)
    with pytest.raises(BundleError, match="kind") as info:
        load_any(path)
    message = str(info.value)
    assert message.startswith(f"corrupt bundle at {path}: kind ") and "\n" not in message
    assert short_repr(shown, 80) in message and "tabular, window" in message


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    source=st.sampled_from(["tabular", "window"]),
    kind=st.sampled_from(["tabular", "window"]) | st.text(max_size=120),
)
def test_arbitrary_kinds_load_or_are_refused_with_a_bundle_error(
    small_bundle, tmp_path_factory, source, kind
):
    """Any string as ``kind``: the model of that kind, or one `BundleError` line naming it."""
    from vaeguard.detector import VAEDetector
    from vaeguard.timeseries.views import ViewSet

    base = Path(small_bundle) if source == "tabular" else window_bundle()
    path = with_kind(base, tmp_path_factory.mktemp("k") / "b", kind)
    try:
        loaded = load_any(path)
    except BundleError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"corrupt bundle at {path}")
        if kind not in ("tabular", "window"):
            assert short_repr(kind, 80) in message
        return
    assert kind in ("tabular", "window")
    assert isinstance(loaded, ViewSet if kind == "window" else VAEDetector)


def test_a_registered_kind_loads_with_its_reader(small_bundle, tmp_path, monkeypatch):
    """Keras-style registration: a model package names its kind's reader (a function or its
    module:function); a reader that is not installed is a `BundleError`, not an ImportError."""
    monkeypatch.setattr(bundle_format, "_READERS", dict(bundle_format._READERS))
    path = with_kind(small_bundle, tmp_path / "b", "toy")
    with pytest.raises(BundleError, match="kind 'toy' is not one of tabular, window"):
        load_any(path)
    register_kind("toy", lambda p: ("toy model", p))
    assert load_any(path) == ("toy model", path)
    assert bundle_format.kinds() == ("tabular", "window", "toy")
    register_kind("toy", "vaeguard.detector:load_bundle")
    assert load_any(path).feature_names_ == ["a", "b", "c", "d"]
    register_kind("toy", "vaeguard_not_installed.toy:load")
    with pytest.raises(BundleError, match=r"toy bundle .* reader vaeguard_not_installed\.toy:load"):
        load_any(path)
    for kind, reader in (("", "m:f"), (None, "m:f"), ("x", "no colon"), ("x", 3)):
        with pytest.raises(BundleError):
            register_kind(kind, reader)


def test_a_window_bundle_loads_before_its_package_is_imported():
    """The reader of a known kind is found by name: loading needs no import of it first."""
    code = (
        "import sys\n"
        "from vaeguard.bundle import load_any\n"
        "assert not any(m.startswith('vaeguard.timeseries') for m in sys.modules)\n"
        "print(type(load_any(sys.argv[1])).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(window_bundle())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "ViewSet"
