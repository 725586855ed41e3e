"""Monte-Carlo reconstruction probability (An & Cho, 2015) with per-feature contributions.

score(x) = −log p̂(x),  p̂(x) = (1/L) Σ_l p(x | z_l),  z_l = μ(x) + σ(x)·ε_l.

The L standard-normal draws ε_l are fixed per model (common random numbers): a row's score is a
deterministic function of the row, the same in every instance loaded from one bundle, so a
replayed record scores as it did the first time; up to the last bit of float32, it is also the
same whatever batch the row arrives in (a row scored alone was seen one ulp away from the same
row scored within a batch: the matrix kernels round a one-row product differently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from vaeguard.limits import check_mc_samples
from vaeguard.model.losses import gaussian_nll, student_t_nll

#: Padded batch sizes: a compiled scorer sees only these shapes (JAX compiles one program per
#: shape). Doubling from 64 up: one call of about the batch's size is faster per row than the
#: same rows in 512-row calls (benchmarks/RESULTS-throughput.md), and a batch is never padded to
#: much more than its size (factor-8 steps would score a 2,000-row batch as 4,096 rows).
BUCKETS = (1, 8, 64, 128, 256, 512, 1024, 2048, 4096)
#: A remainder this small is padded up to its bucket rather than split further.
_SMALL = 64
#: A batch is padded up to the next bucket when that adds at most this fraction of its size;
#: otherwise the largest bucket that fits is cut off exactly and the rest chunked again.
_MAX_PADDING = 0.25


def chunks(n: int) -> list[tuple[int, int, int]]:
    """(start, stop, padded size) covering rows 0..n-1 with bucket-sized calls.

    Every padded size is in `BUCKETS`; the rows computed are at most 1.25 n + 63: a batch
    well above a bucket is cut into exact buckets and a padded rest, not padded up to the next
    bucket (the daemon's 2,000-row batch was scored as 4,096 rows, half the work wasted)."""
    out = []
    start = 0
    while start < n:
        left = n - start
        up = next((b for b in BUCKETS if b >= left), None)
        if up is not None and (left <= _SMALL or up <= (1 + _MAX_PADDING) * left):
            out.append((start, n, up))
            break
        take = max(b for b in BUCKETS if b <= left)
        out.append((start, start + take, take))
        start += take
    return out


def fixed_epsilon(mc_samples: int, latent_dim: int, seed: int) -> np.ndarray:
    """The L × latent_dim draws of ε, from NumPy so they are identical on every backend."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((mc_samples, latent_dim)).astype("float32")


@dataclass(frozen=True)
class RawScores:
    """Scores in the model's scaled feature space; see `VAEDetector.score` for the public view."""

    score: np.ndarray  # (n,) −log p̂(x), nats
    nll: np.ndarray  # (n, D) per-feature −log p(x_j | z), posterior-weighted over the L draws
    expected: np.ndarray  # (n, D) posterior-weighted decoder mean (scaled space)
    z_mean: np.ndarray | None = None  # (n, latent_dim) posterior mean μ(x), for latent terms
    #: With a scorer's ``dof``: the score and per-feature nll again, each value's density a
    #: Student-t around the same decoder outputs (`student_t_nll`).
    student_score: np.ndarray | None = None
    student_nll: np.ndarray | None = None


def reconstruction_terms(model, x, c, mask, epsilon, visible=None, dof=None):
    """The scoring graph in `keras.ops`: returns (score, per-feature nll, expected value, μ),
    and with ``dof`` also the score and per-feature nll of a Student-t of ``dof`` degrees of
    freedom around the same decoder outputs (`student_t_nll`).

    The L decoder passes are one batched call over L·n latent points. The per-feature terms are
    weighted by each draw's share w_l = softmax_l(log p(x|z_l)) of the mixture, so they sum to
    the score up to a feature-independent term in [0, log L].
    """
    n_draws = ops.shape(epsilon)[0]
    x_in = x * mask if mask is not None else x
    if visible is not None:  # the inputs the encoder sees (the others are predicted)
        x_in = x_in * visible
    z_mean, z_log_var = model.encode(x_in, c)
    sigma = ops.exp(0.5 * z_log_var)
    z = ops.expand_dims(z_mean, 0) + ops.expand_dims(sigma, 0) * ops.expand_dims(epsilon, 1)
    n = ops.shape(x)[0]
    z_flat = ops.reshape(z, (-1, model.latent_dim))
    c_flat = None
    if c is not None:
        c_flat = ops.reshape(
            ops.tile(ops.expand_dims(c, 0), (n_draws, 1, 1)), (-1, ops.shape(c)[-1])
        )
    mean, log_var = model.decode(z_flat, c_flat)
    mean = ops.reshape(mean, (n_draws, n, model.n_features))
    log_var = ops.reshape(log_var, (n_draws, n, model.n_features))
    x_l = ops.expand_dims(x, 0)
    score, nll, weights = _mixture(gaussian_nll(x_l, mean, log_var), mask, n_draws)
    out = (score, nll, ops.sum(weights * mean, axis=0), z_mean)
    if dof is None:
        return out
    student_score, student_nll, _ = _mixture(student_t_nll(x_l, mean, log_var, dof), mask, n_draws)
    return (*out, student_score, student_nll)


def _mixture(nll, mask, n_draws):
    """−log of the mean over the L draws of exp(−Σ nll) (the score), the per-feature nll
    weighted by each draw's share of it, and those shares (L, n, 1)."""
    if mask is not None:
        nll = nll * ops.expand_dims(mask, 0)
    log_p = -ops.sum(nll, axis=-1)  # (L, n)
    log_sum = ops.logsumexp(log_p, axis=0)
    log_p_hat = log_sum - ops.log(ops.cast(n_draws, log_p.dtype))
    # softmax over the draws, spelled out: keras.ops.softmax warns when L = 1.
    weights = ops.expand_dims(ops.exp(log_p - log_sum), -1)  # (L, n, 1)
    return -log_p_hat, ops.sum(weights * nll, axis=0), weights


def condition_width(model) -> int:
    """Columns of the condition batch a compiled graph takes (one column of zeros when the
    model has no conditions: the graph's signature is the same either way)."""
    return max(model.n_conditions, 1)


def compile_function(fn, model):
    """Compile ``fn(x, c, mask)`` over float32 batches of ``model``'s rows (``n_features``,
    `condition_width` and ``n_features`` columns) with the running backend's compiler.

    TensorFlow gets an input signature with a free batch dimension: one graph for every batch
    size, traced once. Left to reduce_retracing it traced static graphs for the first sizes it
    saw and a shape-relaxed one later, so which graph scored a batch depended on the sizes the
    instance happened to see before, and the two kinds round the last bit of float32
    differently (a reloaded model scored some rows one ulp apart from the model it was saved
    from)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        widths = (model.n_features, condition_width(model), model.n_features)
        signature = [tf.TensorSpec((None, w), tf.float32) for w in widths]
        return tf.function(fn, input_signature=signature)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


class Scorer:
    """Batched, compiled scoring of a `VAE` with fixed Monte-Carlo draws.

    Batches are cut and padded to a few bucket sizes (`chunks`): TensorFlow runs one graph for
    every size, JAX compiles one program per bucket, however the batch sizes vary.
    """

    def __init__(
        self,
        model,
        mc_samples: int,
        seed: int,
        *,
        masked: bool = False,
        visible: np.ndarray | None = None,
        dof: float | None = None,
    ):
        mc_samples = check_mc_samples(mc_samples)
        if dof is not None and not (math.isfinite(dof) and dof > 0):
            raise ValueError("dof must be a finite number above 0, or None")
        self.model = model
        self.mc_samples = mc_samples
        self.masked = masked
        self.dof = None if dof is None else float(dof)
        self.epsilon = fixed_epsilon(mc_samples, model.latent_dim, seed)
        self._log_l = math.log(mc_samples)
        conditional = model.n_conditions > 0
        seen = None if visible is None else np.asarray(visible, dtype="float32")

        def graph(x, c, mask):
            return reconstruction_terms(
                model,
                x,
                c if conditional else None,
                mask if masked else None,
                self.epsilon,
                seen,
                self.dof,
            )

        self._graph = compile_function(graph, model)

    def __call__(
        self, x: np.ndarray, c: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> RawScores:
        n = x.shape[0]
        if c is None:
            c = np.zeros((n, condition_width(self.model)), dtype="float32")
        if mask is None:
            mask = np.ones_like(x, dtype="float32")
        parts: list[list[np.ndarray]] = []  # per output of the graph, its chunks
        for start, stop, padded in chunks(n):
            size = stop - start
            outputs = self._graph(
                _pad(x[start:stop], padded),
                _pad(c[start:stop], padded),
                _pad(mask[start:stop], padded),
            )
            if not parts:
                parts = [[] for _ in outputs]
            for chunk, out in zip(parts, outputs, strict=True):
                chunk.append(ops.convert_to_numpy(out)[:size])
        if not parts:
            d = self.model.n_features
            empty = (np.zeros(0), np.zeros((0, d)))
            return RawScores(
                *empty,
                np.zeros((0, d)),
                np.zeros((0, self.model.latent_dim)),
                *(empty if self.dof is not None else (None, None)),
            )
        return RawScores(*(np.concatenate(chunk).astype("float64") for chunk in parts))


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype="float32")
    if a.shape[0] == size:
        return a
    out = np.zeros((size, *a.shape[1:]), dtype="float32")
    out[: a.shape[0]] = a
    return out
