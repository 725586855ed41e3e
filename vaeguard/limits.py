"""Bounds on sizes a caller or a bundle asks for, checked where they are given.

Kept apart from the model code (which imports Keras) so that a bad option is refused before
TensorFlow loads: a mistyped flag fails in a moment, not after the framework's start-up.
"""

from __future__ import annotations

#: The most Monte-Carlo draws a scorer takes: it holds L × latent draws and runs L decoder passes
#: per row, so a bound keeps a mistyped or corrupt value from exhausting memory.
MAX_MC_SAMPLES = 4096


def check_mc_samples(mc_samples) -> int:
    """``mc_samples`` as an int in 1 … `MAX_MC_SAMPLES`, or ValueError naming it."""
    if isinstance(mc_samples, bool) or not 1 <= int(mc_samples) <= MAX_MC_SAMPLES:
        raise ValueError(f"mc_samples must be between 1 and {MAX_MC_SAMPLES}, got {mc_samples!r}")
    return int(mc_samples)
