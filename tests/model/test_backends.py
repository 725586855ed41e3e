"""The model code is keras.ops / keras.random only: it must also run on JAX and PyTorch.

Each backend runs in a subprocess (Keras fixes its backend at import). Skipped where that
backend is not installed; `KERAS_ALT_PYTHON` may name an interpreter that has it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import numpy as np, tempfile
from vaeguard import VAEDetector
rng = np.random.default_rng(0)
x = rng.standard_normal((600, 2)) @ rng.standard_normal((2, 4)) + 0.1 * rng.standard_normal((600, 4))
det = VAEDetector(epochs=8, hidden=(16,), latent_dim=2, mc_samples=8).fit(x, {"k": np.where(np.arange(600) % 2, "a", "b")})
c = {"k": ["a"] * 100}
shifted = x[:100].copy(); shifted[:, 2] += 6 * x[:, 2].std()
normal, odd = det.decision_function(x[:100], c), det.decision_function(shifted, c)
assert (odd > np.quantile(normal, 0.9)).mean() > 0.9, "outliers not ranked"
d = tempfile.mkdtemp() + "/b"; det.save(d)
assert np.allclose(VAEDetector.load(d).decision_function(x[:100], c), normal, atol=1e-5)
assert det.sample(5, {"k": "a"}).shape == (5, 4)
cf = det.counterfactual(shifted, c, rows="all", k=2)
assert (cf.blame[:, 0] == 2).mean() > 0.8, "the shifted feature is not blamed"
r = det.plausible_range
assert ((cf.expected >= r.low) & (cf.expected <= r.high)).all(), "expected value out of range"
print("ok")
"""


def _python_with(module: str) -> str | None:
    alt = os.environ.get("KERAS_ALT_PYTHON")
    if importlib.util.find_spec(module) is not None:
        return sys.executable
    if alt:
        probe = subprocess.run([alt, "-c", f"import {module}"], capture_output=True)
        if probe.returncode == 0:
            return alt
    return None


@pytest.mark.parametrize(("backend", "module"), [("jax", "jax"), ("torch", "torch")])
def test_detector_runs_on_other_backends(backend, module):
    python = _python_with(module)
    if python is None:
        pytest.skip(f"{module} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [python, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
