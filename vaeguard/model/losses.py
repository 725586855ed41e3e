"""Closed-form terms of the ELBO, per feature and per sample, in `keras.ops`."""

from __future__ import annotations

import math

from keras import ops

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_nll(x, mean, log_var):
    """Per-feature negative log-density of x under N(mean, exp(log_var)), in nats.

    Kept per feature (no reduction) because the per-feature terms are the explanation that
    alerts carry.
    """
    return 0.5 * (LOG_2PI + log_var + ops.square(x - mean) * ops.exp(-log_var))


def kl_standard_normal(z_mean, z_log_var):
    """KL(N(μ, σ²) ‖ N(0, I)) per sample, summed over latent dimensions (closed form)."""
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
