"""`registry.load()` returns the model a version holds (issue 25): a window version's `ViewSet`,
a tabular version's `VAEDetector`, on both backends (a directory, an object store)."""

from __future__ import annotations

import contextlib

import pytest

from tests.bundle.test_bundle_kinds import assert_same_window_scores
from tests.serving.window_model import window_bundle
from vaeguard.registry import ModelRegistry

# The object-store backend's fixtures (moto's S3 server on loopback, a fresh bucket); without
# the s3 extra that module skips itself, and so does the one test here that needs them.
with contextlib.suppress(pytest.skip.Exception):
    from tests.registry.test_s3_registry import s3_endpoint, uri  # noqa: F401


def register_window(reg) -> str:
    from vaeguard.timeseries.bundle import bundle_view
    from vaeguard.timeseries.views import ViewSet

    return reg.register(bundle_view(ViewSet.load(window_bundle())), {"source": "test"})


def test_a_window_version_loads_as_a_view_set(tmp_path):
    from vaeguard.timeseries.views import ViewSet

    reg = ModelRegistry(tmp_path / "reg", create=True)
    version = register_window(reg)
    loaded, name = reg.load()
    assert name == version and isinstance(loaded, ViewSet)
    assert_same_window_scores(loaded, ViewSet.load(reg.path_of(version)))
    assert_same_window_scores(loaded, ViewSet.load(window_bundle()))


def test_a_tabular_version_still_loads_as_a_vae_detector(small_bundle, tmp_path):
    from vaeguard.detector import VAEDetector

    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.register(VAEDetector.load(small_bundle))
    loaded, _ = reg.load()
    assert type(loaded) is VAEDetector and loaded.feature_names_ == ["a", "b", "c", "d"]


def test_scheduled_retraining_refuses_a_window_version(tmp_path):
    """The job sees the model the registry holds, a `ViewSet`: refused up front."""
    from vaeguard.retrain.job import RetrainJob
    from vaeguard.retrain.settings import RetrainSettings

    reg = ModelRegistry(tmp_path / "reg", create=True)
    register_window(reg)
    outcome = RetrainJob(reg, RetrainSettings(), {"bootstrap_servers": "127.0.0.1:9"}, []).run()
    assert outcome.status == "refused" and "train-window" in outcome.reasons[0]


def test_an_object_store_window_version_loads_as_a_view_set(tmp_path, request):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from vaeguard.registry import ObjectStoreRegistry
    from vaeguard.timeseries.views import ViewSet

    uri = request.getfixturevalue("uri")
    reg = ModelRegistry(uri, cache_dir=tmp_path / "cache", create=True)
    assert isinstance(reg, ObjectStoreRegistry)
    version = register_window(reg)
    other = ModelRegistry(uri, cache_dir=tmp_path / "other")  # downloads the version
    loaded, name = other.load()
    assert name == version and isinstance(loaded, ViewSet)
    assert_same_window_scores(loaded, ViewSet.load(window_bundle()))
