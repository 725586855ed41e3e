"""vaeguard.files: a file is replaced whole or left as it was, with the mode asked for."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaeguard import files
from vaeguard.files import replacing, write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(folder, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_replaces_the_content_whole(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old content, longer than the new one\n")
    write_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    write_atomic(target, "caf\u00e9\n")  # a string is written as UTF-8
    assert target.read_bytes() == "caf\u00e9\n".encode()
    assert _leftovers(tmp_path, keep="state.json") == []


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(target, {"not": "bytes"})  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, keep="state.json") == []


def test_a_failing_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, keep="state.json") == []


def test_an_error_inside_replacing_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target, suffix=".keras") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".keras")
        tmp.write_bytes(b"half of a model")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, keep="model.keras") == []


def test_a_file_without_a_previous_version_is_created(tmp_path):
    target = tmp_path / "new.jsonl"
    with replacing(target) as tmp, open(tmp, "wb") as f:
        f.write(b"a\n")
        f.write(b"b\n")
    assert target.read_bytes() == b"a\nb\n"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_mode_is_the_one_asked_for_whatever_the_umask(tmp_path, mode, umask):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    target.chmod(0o666)
    old = os.umask(umask)
    try:
        write_atomic(target, b"new", mode=mode)
    finally:
        os.umask(old)
    assert _mode(target) == mode


def test_owner_only_by_default(tmp_path):
    write_atomic(tmp_path / "f", b"x")
    assert _mode(tmp_path / "f") == 0o600


def test_the_file_and_its_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    write_atomic(tmp_path / "f", b"x")
    assert events == ["fsync file", "replace", "fsync dir"]


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(st.binary(max_size=4096), st.text(max_size=1024)))
def test_any_content_reads_back_as_written(tmp_path, data):
    target = tmp_path / "f"
    write_atomic(target, data)
    expected = data.encode() if isinstance(data, str) else data
    assert target.read_bytes() == expected
    assert _leftovers(tmp_path, keep="f") == []


@pytest.mark.parametrize(
    ("function", "variable", "default"),
    [
        ("user_state_dir", "XDG_STATE_HOME", (".local", "state")),
        ("user_cache_dir", "XDG_CACHE_HOME", (".cache",)),
    ],
)
def test_per_user_folders_follow_xdg_and_ignore_a_relative_value(
    function, variable, default, tmp_path, monkeypatch
):
    import vaeguard.files as files

    folder = getattr(files, function)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(variable, str(tmp_path / "xdg"))
    assert folder() == tmp_path / "xdg" / "vaeguard"
    monkeypatch.setenv(variable, "relative/ignored")
    assert folder() == (tmp_path / "home").joinpath(*default) / "vaeguard"
    monkeypatch.delenv(variable)
    assert folder() == (tmp_path / "home").joinpath(*default) / "vaeguard"
