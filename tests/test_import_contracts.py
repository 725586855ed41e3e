"""The import graph keeps the contracts of pyproject.toml (`[tool.importlinter]`): every import
points down the layers, no two modules import each other round a circle, and the alert layer
never reaches a model.

`lint-imports` runs on the package itself, and on a scratch copy of it with one import added
that breaks a contract, to show the check fails when it should.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``project``, with that folder's pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(project / "pyproject.toml")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_import_contracts():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml, to break."""
    shutil.copytree(
        ROOT / "vaeguard", tmp_path / "vaeguard", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_scratch_copy_keeps_the_contracts(scratch):
    """The control for the cases below: copying alone breaks nothing."""
    run = lint_imports(scratch)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        # The tabular model importing serving (the import `vaeguard.contributions` replaced).
        (
            "detector.py",
            "from vaeguard.serving.explain import score_records\n",
            "Every import points down the layers",
        ),
        # The bundle format importing the model it holds: a circle.
        (
            "bundle.py",
            "def later():\n    from vaeguard.detector import VAEDetector\n",
            "No import circle",
        ),
        # A record-layer module importing the daemon, inside a function: it counts.
        (
            "ingest.py",
            "def later():\n    from vaeguard.daemon import app\n",
            "Every import points down the layers",
        ),
        # The configuration importing the daemon it configures.
        ("config.py", "import vaeguard.daemon.app\n", "Every import points down the layers"),
        # The window codec importing the views above it.
        (
            "timeseries/codec.py",
            "from vaeguard.timeseries.views import ViewSet\n",
            "The window models",
        ),
        # An alert sink loading Keras.
        ("alerts/text.py", "import keras\n", "The alert layer knows score records"),
        # A new module that no layer names.
        ("unplaced.py", "", "Every import points down the layers"),
    ],
)
def test_an_import_against_the_contracts_fails_the_check(scratch, module, source, broken):
    path = scratch / "vaeguard" / module
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(before + "\n" + source, encoding="utf-8")
    run = lint_imports(scratch)
    assert run.returncode != 0, run.stdout
    assert broken in run.stdout.split("Broken contracts")[-1], run.stdout
