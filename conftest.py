"""Repository-wide fixtures: the sink plugins installed the way a third party's would be.

The README's test command installs only vaeguard itself, so the first-party plugins in
plugins/ and a test-only third-party sink are pip-installed (no deps, no build isolation, one
pip call) into a temporary directory that is put on sys.path: discovery then goes through
their entry points exactly as in production. A plugin already installed in the environment
(``pip install -e plugins/slack``) is used as it is.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
#: Source directory → (import name, entry-point name).
SINK_PACKAGES = {
    "plugins/slack": ("vaeguard_slack", "slack"),
    "plugins/pagerduty": ("vaeguard_pagerduty", "pagerduty"),
    "plugins/alertmanager": ("vaeguard_alertmanager", "alertmanager"),
    "plugins/email": ("vaeguard_email", "email"),
    "tests/alerts/thirdparty_sink": ("acme_vaeguard_sink", "acme-memo"),
}


@dataclass(frozen=True)
class InstalledPlugins:
    #: Where pip put the packages (None when every one was installed already).
    path: Path | None

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses that must see the same plugins."""
        env = dict(os.environ if base is None else base)
        if self.path is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.path), str(ROOT), env.get("PYTHONPATH", "")) if p
            )
        return env


def _installed(module: str, entry_point: str) -> bool:
    if importlib.util.find_spec(module) is None:
        return False
    return any(
        ep.name == entry_point for ep in importlib.metadata.entry_points(group="vaeguard.sinks")
    )


@pytest.fixture(scope="session")
def sink_plugins(tmp_path_factory) -> InstalledPlugins:
    missing = [d for d, (module, ep) in SINK_PACKAGES.items() if not _installed(module, ep)]
    if not missing:
        return InstalledPlugins(None)
    target = tmp_path_factory.mktemp("sink-plugins")
    # Build from copies: setuptools writes build/ and *.egg-info next to the sources.
    sources = tmp_path_factory.mktemp("sink-plugin-sources")
    copies = []
    for d in missing:
        copy = sources / d.replace("/", "-")
        shutil.copytree(
            ROOT / d,
            copy,
            ignore=shutil.ignore_patterns("build", "*.egg-info", "tests", "__pycache__"),
        )
        copies.append(str(copy))
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), *copies,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"installing the sink plugins failed:\n{result.stdout}\n{result.stderr}")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return InstalledPlugins(target)
