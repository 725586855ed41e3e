"""The Docker image installs only what requirements.lock pins, checked against its hashes.

Docker cannot build here: these checks keep the lock and the Dockerfile honest instead (every
runtime dependency of pyproject.toml pinned with ``==`` at a version its specifier allows, and
with hashes; the Dockerfile installing with ``--require-hashes --no-deps``).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
DOCKERFILE = ROOT / "Dockerfile"


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """name → (pinned version, hashes) of a pip requirements file with hashes."""
    entries: dict[str, tuple[str, list[str]]] = {}
    logical = re.sub(r"\\\n", " ", text)  # join the backslash-continued lines
    for line in logical.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = re.split(r"\s+--", line)
        req = Requirement(spec.strip())
        pins = [s for s in req.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(req.specifier) == 1, f"not pinned with ==: {line[:80]}"
        hashes = [o.split("=", 1)[1] for o in options if o.startswith("hash=")]
        entries[canonicalize_name(req.name)] = (pins[0].version, hashes)
    return entries


def test_the_lock_pins_every_runtime_dependency_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = parse_lock(LOCK.read_text())
    assert lock, "requirements.lock is empty"
    for name, (_version, hashes) in lock.items():
        assert hashes and all(h.startswith("sha256:") for h in hashes), f"{name}: no sha256 hash"
    for dependency in project["dependencies"]:
        req = Requirement(dependency)
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} (pyproject.toml) is not in requirements.lock"
        version = lock[name][0]
        assert req.specifier.contains(Version(version), prereleases=True), (
            f"{req.name}=={version} in requirements.lock does not satisfy {dependency!r}"
        )
    # the build backend: the project is installed without build isolation, so from the lock
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for dependency in build:
        req = Requirement(dependency)
        assert canonicalize_name(req.name) in lock, f"build requirement {req.name} not locked"
        assert req.specifier.contains(Version(lock[canonicalize_name(req.name)][0]))


def test_the_lock_says_how_to_regenerate_it():
    header = LOCK.read_text().split("\n", 3)[:3]
    assert any("uv pip compile pyproject.toml" in line for line in header), header
    assert any("--generate-hashes" in line for line in header), header


def test_the_dockerfile_installs_from_the_lock_with_hashes_only():
    text = DOCKERFILE.read_text()
    runs = [
        " ".join(block.split())
        for block in re.findall(r"^RUN (.*?)(?<!\\)$", text, flags=re.M | re.S)
    ]
    installs = [r for r in runs if "pip install" in r]
    assert installs, "no pip install in the Dockerfile"
    # every install is either the lock (hash-checked) or the project itself, never a resolver run
    for run in installs:
        for command in re.split(r"&&", run):
            if "pip install" not in command:
                continue
            assert "--no-deps" in command, command
            if "-r requirements.lock" in command:
                assert "--require-hashes" in command, command
            else:
                assert command.rstrip(" \\").endswith(" ."), command
                assert "--no-build-isolation" in command, command
    assert any("-r requirements.lock" in r and "--require-hashes" in r for r in installs)
    assert re.search(r"^COPY requirements\.lock ", text, flags=re.M)
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text().split()
    # the GPU variant's base ships TensorFlow: the lock pins the same version, which pip keeps
    gpu = re.search(r"tensorflow/tensorflow:([0-9.]+)-gpu", text)
    assert gpu is not None
    assert parse_lock(LOCK.read_text())["tensorflow"][0] == gpu.group(1)


def test_parse_lock_rejects_an_unpinned_line():
    with pytest.raises(AssertionError, match="not pinned"):
        parse_lock("numpy>=1.26 \\\n    --hash=sha256:00\n")
    assert parse_lock("numpy==2.0 \\\n    --hash=sha256:ab \\\n    --hash=sha256:cd\n") == {
        "numpy": ("2.0", ["sha256:ab", "sha256:cd"])
    }
