"""Registry hardening: one lock from check to switch, a crash-consistent CURRENT and log, version
names checked whole (one line, never another exception), owner-only files."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaeguard.registry as registry_module
from tests.conftest import make_normal_data
from vaeguard.registry import (
    CURRENT,
    PROMOTIONS,
    ModelRegistry,
    RegistryError,
    VersionNameError,
)


@pytest.fixture(scope="module")
def detector():
    from vaeguard import VAEDetector

    x = make_normal_data(400, seed=3, n_features=3)
    return VAEDetector(epochs=3, hidden=(8,), latent_dim=2, mc_samples=4).fit(
        {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}
    )


def registry_with(root: Path, detector, n: int) -> ModelRegistry:
    reg = ModelRegistry(root, create=True)
    for _ in range(n):
        reg.register(detector)
    return reg


def assert_consistent(reg: ModelRegistry) -> None:
    """CURRENT names a version that exists, and the log of changes ends there."""
    current = reg.current()  # raises when CURRENT names a missing version
    assert current is not None and (reg.root / current).is_dir()
    assert reg.promotions()[-1]["to"] == current


# -- one lock from check to switch --------------------------------------------------------------


def test_a_prune_during_promote_cannot_leave_current_dangling(detector, tmp_path, monkeypatch):
    """The worst interleaving, forced: a prune starts while promote is checking its version."""
    import vaeguard.detector

    reg = registry_with(tmp_path / "reg", detector, 4)  # v0001 current
    real_load = vaeguard.detector.load_bundle
    pruned: list[list[str]] = []
    threads: list[threading.Thread] = []

    def load_while_a_prune_starts(path):
        loaded = real_load(path)
        other = ModelRegistry(reg.root)
        t = threading.Thread(target=lambda: pruned.append(other.prune(keep=1)))
        t.start()
        threads.append(t)
        try:
            with reg.lock(blocking=False):
                pass
        except RegistryError:
            return loaded  # promote holds the lock: the prune waits for the switch
        t.join()  # nothing holds the prune back: let it run to the end first
        return loaded

    monkeypatch.setattr(vaeguard.detector, "load_bundle", load_while_a_prune_starts)
    try:
        reg.promote("v0003")
    finally:
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert reg.current() == "v0003"
    assert_consistent(reg)
    assert "v0003" not in pruned[0] and (reg.root / "v0003").is_dir()


def test_threads_promoting_and_pruning_never_leave_current_dangling(detector, tmp_path):
    reg = registry_with(tmp_path / "reg", detector, 5)
    done = threading.Event()
    errors: list[BaseException] = []

    def promoter():
        try:
            for v in ("v0005", "v0004", "v0003", "v0002"):
                try:
                    ModelRegistry(reg.root).promote(v)
                except RegistryError as exc:  # pruned before this promote started: fine
                    assert f"no version {v}" in str(exc)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def pruner():
        other = ModelRegistry(reg.root)
        try:
            while not done.is_set():
                other.prune(keep=2)
                other.current()  # never a dangling CURRENT
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=promoter), threading.Thread(target=pruner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert_consistent(reg)


# -- CURRENT and the log stay consistent whatever write fails -----------------------------------


@pytest.fixture
def fail_writes_to(monkeypatch):
    """fail_writes_to(name): every later write to the registry file `name` raises (a crash)."""

    def arm(name: str) -> None:
        real_write_atomic = registry_module.write_atomic
        real_os_open = os.open

        def write_atomic(path, data):
            if Path(path).name == name:
                raise OSError(f"injected crash writing {name}")
            return real_write_atomic(path, data)

        def os_open(path, flags, *args, **kwargs):
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND)
            if writing and Path(os.fsdecode(path)).name == name:
                raise OSError(f"injected crash writing {name}")
            return real_os_open(path, flags, *args, **kwargs)

        def builtin_open(path, mode="r", *args, **kwargs):
            if any(m in mode for m in "wax+") and Path(path).name == name:
                raise OSError(f"injected crash writing {name}")
            return open(path, mode, *args, **kwargs)

        monkeypatch.setattr(registry_module, "write_atomic", write_atomic)
        monkeypatch.setattr(registry_module.os, "open", os_open)
        monkeypatch.setattr(registry_module, "open", builtin_open, raising=False)

    return arm


@pytest.mark.parametrize("crashing", [CURRENT, PROMOTIONS])
@pytest.mark.parametrize("operation", ["promote", "rollback", "register"])
def test_a_crash_at_either_write_leaves_current_and_log_consistent(
    detector, tmp_path, monkeypatch, fail_writes_to, crashing, operation
):
    reg = registry_with(tmp_path / "reg", detector, 3)
    reg.promote("v0002")
    before = reg.current()
    fail_writes_to(crashing)
    with pytest.raises(OSError, match="injected crash"):
        if operation == "promote":
            reg.promote("v0003")
        elif operation == "rollback":
            reg.rollback()
        else:
            reg.register(detector, make_current=True)
    monkeypatch.undo()
    assert reg.current() == before  # neither write finished: the switch did not happen
    assert_consistent(reg)
    # and the registry carries on: the next change is logged once, rollback finds its way back
    reg.promote("v0003")
    assert_consistent(reg)
    assert reg.rollback() == before
    lines = (reg.root / PROMOTIONS).read_text().splitlines()
    assert [json.loads(line)["to"] for line in lines] == ["v0001", "v0002", "v0003", before]


def test_a_torn_last_line_is_ignored_and_cut_off(detector, tmp_path):
    reg = registry_with(tmp_path / "reg", detector, 2)
    with open(reg.root / PROMOTIONS, "a") as f:
        f.write('{"at": "2024-01-01T00:00:00+00:00", "from": "v0001", "to": "v00')  # a crash
    assert [p["to"] for p in reg.promotions()] == ["v0001"]
    assert_consistent(reg)
    reg.promote("v0002")
    assert_consistent(reg)
    lines = (reg.root / PROMOTIONS).read_text().splitlines()
    assert [json.loads(line)["to"] for line in lines] == ["v0001", "v0002"]


def test_a_current_moved_outside_the_registry_is_logged_by_the_next_change(detector, tmp_path):
    from vaeguard.files import write_atomic

    reg = registry_with(tmp_path / "reg", detector, 3)
    write_atomic(reg.root / CURRENT, b"v0003\n")  # by hand, or an older vaeguard's crash
    assert reg.current() == "v0003"
    reg.promote("v0002")
    assert_consistent(reg)
    assert [(p["from"], p["to"], p["reason"]) for p in reg.promotions()] == [
        (None, "v0001", "register"),
        ("v0001", "v0003", "outside change"),
        ("v0003", "v0002", "promote"),
    ]
    assert reg.rollback() == "v0003"


def test_log_lines_naming_no_version_are_not_followed(detector, tmp_path):
    reg = registry_with(tmp_path / "reg", detector, 2)
    (tmp_path / "elsewhere").mkdir()
    with open(reg.root / PROMOTIONS, "a") as f:
        f.write(json.dumps({"from": "../elsewhere", "to": "v0001", "reason": "tampered"}) + "\n")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()
    assert reg.current() == "v0001"


# -- version names: the pattern or one line -----------------------------------------------------

ODD_NAMES = [
    "²",
    "v²²²²",
    "v٠٠٠١",  # Arabic-Indic digits: \d and int() accept them
    "١",
    "v0001\n",
    "v0001\x00",
    "\x00",
    "v00000000001",
    "9" * 5000,
    "v" + "1" * 300,
    "-1",
    "+1",
    "1_000",
    " 1 ",
    "v0001/../v0002",
    "../v0001",
    "V0001",
    "",
]


def is_valid(name: object) -> bool:
    text = str(name).strip()
    return bool(
        re.fullmatch(r"v[0-9]{4,9}", text, re.ASCII) or re.fullmatch(r"[0-9]{1,9}", text, re.ASCII)
    )


@pytest.fixture(scope="module")
def one_version_registry(detector, tmp_path_factory):
    return registry_with(tmp_path_factory.mktemp("names") / "reg", detector, 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(),
        st.sampled_from(ODD_NAMES),
        st.from_regex(r"\Av[0-9]{1,11}\Z"),
        st.from_regex(r"\A\s*[0-9]{1,11}\s*\Z"),
        st.integers(),
    )
)
def test_any_version_name_is_accepted_or_refused_in_one_line(one_version_registry, name):
    reg = one_version_registry
    valid = is_valid(name)
    try:
        path = reg.path_of(name)
    except VersionNameError as exc:
        assert not valid, f"{name!r} is a version name"
        assert "\n" not in str(exc) and "not a version name" in str(exc)
        assert exc.exit_code == 2
        with pytest.raises(VersionNameError):
            reg.promote(name)
    except RegistryError as exc:
        assert valid and "no version v" in str(exc) and "\n" not in str(exc)
    else:
        assert valid and path.name == "v0001"


def test_folders_with_other_names_are_not_versions(detector, tmp_path):
    reg = registry_with(tmp_path / "reg", detector, 2)
    for odd in ("²", "v²²²²", "v٠٠٠٣", "v0001\n", "v00000000004", "v0005.bak", "latest"):
        (reg.root / odd).mkdir()
    (reg.root / "v0006").write_text("a file, not a version folder")
    assert reg.version_names() == ["v0001", "v0002"]
    assert [v.version for v in reg.versions()] == ["v0001", "v0002"]
    assert reg.prune(keep=1) == []  # v0001 is current: nothing else to remove
    assert reg.register(detector) == "v0003"


def test_cli_refuses_a_bad_version_name_with_exit_code_2(one_version_registry, monkeypatch, capsys):
    from vaeguard.cli.main import main

    for name in ("²", "v٠٠٠١", "latest"):
        argv = ["vaeguard", "models", "promote", name, "--registry", str(one_version_registry.root)]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as info:
            main()
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vaeguard: error: ") and "not a version name" in err
        assert "\n" not in err


# -- owner-only files -----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_registry_files_are_owner_only(detector, tmp_path):
    old = os.umask(0o022)  # the usual umask, which leaves files world-readable
    try:
        reg = registry_with(tmp_path / "reg", detector, 2)
        reg.promote("v0002")
        with reg.lock("retrain"):
            pass
    finally:
        os.umask(old)
    assert mode(reg.root) == 0o700
    for path in reg.root.rglob("*"):
        if path.is_dir():
            assert mode(path) == 0o700, path
        elif path.parent.name.startswith("v"):
            assert mode(path) == 0o400, path  # a version's files: read-only too
        else:
            assert mode(path) == 0o600, path
    names = {p.name for p in reg.root.iterdir()}
    assert {CURRENT, PROMOTIONS, ".registry.lock", ".retrain.lock", "registry.json"} <= names


def test_a_saved_bundle_is_owner_only(detector, tmp_path):
    old = os.umask(0o022)
    try:
        detector.save(tmp_path / "bundle")
    finally:
        os.umask(old)
    assert mode(tmp_path / "bundle") == 0o700
    assert all(mode(p) == 0o600 for p in (tmp_path / "bundle").iterdir())


def test_pruning_removes_owner_only_versions(detector, tmp_path):
    reg = registry_with(tmp_path / "reg", detector, 3)
    assert reg.prune(keep=1) == ["v0002"]
    assert reg.version_names() == ["v0001", "v0003"]
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".deleting")]
