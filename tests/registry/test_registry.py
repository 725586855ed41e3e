"""The model registry: immutable versions, atomic CURRENT, promote / rollback / prune, locking."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest
from typer.testing import CliRunner

from tests.conftest import make_normal_data
from vaeguard.cli.main import app
from vaeguard.registry import CURRENT, ModelRegistry, RegistryError


@pytest.fixture(scope="module")
def detector():
    from vaeguard import VAEDetector

    x = make_normal_data(400, seed=3, n_features=3)
    return VAEDetector(epochs=5, hidden=(8,), latent_dim=2, mc_samples=4).fit(
        {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}
    )


def test_register_promote_rollback(detector, tmp_path):
    reg = ModelRegistry(tmp_path / "reg", create=True)
    assert reg.current() is None
    v1 = reg.register(detector, {"source": "train"})
    assert (v1, reg.current()) == ("v0001", "v0001")
    v2 = reg.register(detector, {"source": "retrain", "validation": {"fpr": 0.01}})
    # registering into a registry that has a current version does not change it
    assert v2 == "v0002" and reg.current() == "v0001"
    reg.promote("2")
    assert reg.current() == "v0002"
    assert reg.info("v0002").lineage["parent"] == "v0001"
    assert reg.rollback() == "v0001"
    assert reg.rollback() == "v0002"  # like `rollout undo`: undoing the undo
    loaded, version = reg.load()
    assert version == "v0002" and loaded.feature_names_ == ["a", "b", "c"]
    assert [p["reason"] for p in reg.promotions()] == [
        "register",
        "promote",
        "rollback",
        "rollback",
    ]


def test_versions_are_immutable_and_complete(detector, tmp_path):
    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.register(detector)
    files = sorted(p.name for p in (tmp_path / "reg" / "v0001").iterdir())
    assert files == ["bundle.json", "lineage.json", "model.keras"]
    assert not os.stat(tmp_path / "reg" / "v0001" / "model.keras").st_mode & 0o222
    assert not [p for p in (tmp_path / "reg").iterdir() if p.name.startswith(".incoming")]


def test_current_pointer_is_replaced_atomically(detector, tmp_path):
    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.register(detector)
    reg.register(detector, make_current=True)
    assert (tmp_path / "reg" / CURRENT).read_text() == "v0002\n"
    assert not [p for p in (tmp_path / "reg").iterdir() if p.name.endswith(".tmp")]


def test_a_corrupt_version_cannot_be_promoted(detector, tmp_path):
    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.register(detector)
    reg.register(detector)
    broken = tmp_path / "reg" / "v0002" / "model.keras"
    broken.chmod(0o644)
    broken.write_bytes(b"garbage")
    with pytest.raises(RegistryError, match="refusing to promote v0002"):
        reg.promote("v0002")
    assert reg.current() == "v0001"


def test_prune_keeps_current_and_its_rollback_target(detector, tmp_path):
    reg = ModelRegistry(tmp_path / "reg", create=True)
    for _ in range(5):
        reg.register(detector)
    reg.promote("v0002")
    removed = reg.prune(keep=1)
    assert removed == ["v0003", "v0004"]
    assert reg.version_names() == ["v0001", "v0002", "v0005"]
    with pytest.raises(RegistryError):
        reg.prune(keep=0)


def test_unknown_versions_and_non_registries(detector, tmp_path):
    with pytest.raises(RegistryError, match="no model registry"):
        ModelRegistry(tmp_path / "none")
    detector.save(tmp_path / "bundle")
    with pytest.raises(RegistryError, match="single model bundle"):
        ModelRegistry(tmp_path / "bundle")
    reg = ModelRegistry(tmp_path / "reg", create=True)
    with pytest.raises(RegistryError, match="no version v0007"):
        reg.promote("7")
    with pytest.raises(RegistryError, match="not a version name"):
        reg.path_of("latest")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()


def _hold_lock(root, ready, release):
    reg = ModelRegistry(root)
    with reg.lock():
        ready.set()
        release.wait(30)


def test_lock_excludes_other_processes(tmp_path):
    reg = ModelRegistry(tmp_path / "reg", create=True)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / "reg"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with (
            pytest.raises(RegistryError, match="lock is held by another process"),
            reg.lock(blocking=False),
        ):
            pass
    finally:
        release.set()
        holder.join(30)
    with reg.lock(blocking=False):
        pass


def test_cli_train_into_a_registry_and_manage_it(tmp_path):
    import csv

    x = make_normal_data(300, seed=1, n_features=2)
    data = tmp_path / "d.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["u", "v"])
        w.writerows(x.round(5).tolist())
    runner = CliRunner()
    args = [
        "train",
        "--data",
        str(data),
        "--registry",
        str(tmp_path / "reg"),
        "--epochs",
        "3",
        "--hidden",
        "8",
        "--latent-dim",
        "2",
        "--quiet",
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0
    listed = json.loads(
        runner.invoke(app, ["models", "list", "--registry", str(tmp_path / "reg"), "--json"]).output
    )
    assert [(v["version"], v["current"]) for v in listed] == [("v0001", True), ("v0002", False)]
    assert {"version", "created_at", "current", "metrics"} <= set(listed[0])
    assert (
        runner.invoke(
            app, ["models", "promote", "v0002", "--registry", str(tmp_path / "reg")]
        ).exit_code
        == 0
    )
    shown = json.loads(
        runner.invoke(app, ["models", "show", "2", "--registry", str(tmp_path / "reg")]).output
    )
    assert shown["current"] and shown["lineage"]["parent"] == "v0001"
    assert (
        runner.invoke(app, ["models", "rollback", "--registry", str(tmp_path / "reg")]).exit_code
        == 0
    )
    assert ModelRegistry(tmp_path / "reg").current() == "v0001"
    result = runner.invoke(
        app, ["models", "prune", "--keep", "1", "--registry", str(tmp_path / "reg")]
    )
    assert result.exit_code == 0 and "removed 0" in result.output
