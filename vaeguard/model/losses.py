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


def student_t_nll(x, mean, log_var, dof: float):
    """Per-feature negative log-density of x under a Student-t with ``dof`` degrees of freedom
    centred on mean, with scale exp(log_var / 2), in nats.

    Used to score, never to train: a decoder trained with the Gaussian term above gives the
    centre and scale, and the Student-t makes a value's term grow with the log of its squared
    residual rather than with the square. On noise with heavy tails one large value then no
    longer outweighs several moderate ones, so a window's score is not set by its single worst
    slot, and a sustained shift stands out from the stream's occasional outliers.
    """
    nu = float(dof)
    const = math.lgamma(nu / 2.0) - math.lgamma((nu + 1.0) / 2.0) + 0.5 * math.log(nu * math.pi)
    r2 = ops.square(x - mean) * ops.exp(-log_var)
    return const + 0.5 * log_var + 0.5 * (nu + 1.0) * ops.log1p(r2 / nu)


def kl_standard_normal(z_mean, z_log_var):
    """KL(N(μ, σ²) ‖ N(0, I)) per sample, summed over latent dimensions (closed form)."""
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
