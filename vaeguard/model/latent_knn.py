"""The latent space's own density: a k-nearest-neighbour distance between posterior means.

The reconstruction probability asks whether the decoder can explain a row. A row the decoder
reconstructs well can still sit where no normal row does: its posterior mean μ(x) lands in an
empty part of the latent space (an unusual combination of otherwise ordinary values). A
k-nearest-neighbour distance sees exactly that; it is what makes PyOD's KNN strong on the
ODDS sets. This term gives the VAE's score the same sight, in the VAE's own latent space:

    d(x)     = mean Euclidean distance from μ(x) to its k nearest reference points
    score(x) = −log p̂(x) + weight · (d(x) − center) / scale

The reference points are the posterior means of (a subsample of at most `MAX_REFERENCE`) the
training rows; ``center`` and ``scale`` are the median and robust σ of d on the calibration
rows (held-out normal rows that are not in the reference); ``weight`` is the user's
``knn_weight`` times the robust σ of the reconstruction score on those rows, so the term is in
nats and a weight of 1 gives both parts the same spread on normal data. ``knn_weight = 0``
leaves the plain reconstruction probability.

Plain NumPy on a few thousand float64 numbers, batched: a row's distance does not depend on
the batch it comes in (up to float rounding of the matrix product), and the reference travels
in ``bundle.json`` as plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: Most reference points kept (and stored in the bundle): bounds the scoring cost per row.
MAX_REFERENCE = 2000
#: Rows per chunk of the distance matrix (chunk × MAX_REFERENCE float64: 16 MiB).
CHUNK_ROWS = 1024
#: IQR of a standard normal: IQR / this is a robust σ.
IQR_TO_SIGMA = 1.3489795


def robust_location_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and robust σ (IQR / 1.349; the standard deviation if the IQR is 0; else 1)."""
    v = np.asarray(values, dtype="float64").ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    q25, center, q75 = np.percentile(v, [25, 50, 75])
    scale = (q75 - q25) / IQR_TO_SIGMA
    if not scale > 1e-12:
        scale = float(v.std())
    if not scale > 1e-12:
        scale = 1.0
    return float(center), float(scale)


def reference_sample(n: int, seed: int | None, max_points: int = MAX_REFERENCE) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of n rows, drawn without replacement."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(None if seed is None else seed + 7919)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def knn_distance(z: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Mean Euclidean distance from each row of z to its k nearest rows of ``reference``."""
    z = np.asarray(z, dtype="float64")
    ref = np.asarray(reference, dtype="float64")
    n = z.shape[0]
    out = np.empty(n, dtype="float64")
    if n == 0:
        return out
    k = max(1, min(int(k), ref.shape[0]))
    # ‖q − r‖² = ‖q‖² + (‖r‖² − 2 q·r): the row's own ‖q‖² does not change which r are nearest,
    # so it is added after the selection, to k numbers per row, not to m. The bracket is one
    # matrix product of [q, 1] with [−2 r, ‖r‖²] (no passes over the m-wide matrix after it).
    aug_ref = np.concatenate([-2.0 * ref, np.einsum("ij,ij->i", ref, ref)[:, None]], axis=1).T
    for start in range(0, n, CHUNK_ROWS):
        q = z[start : start + CHUNK_ROWS]
        g = np.concatenate([q, np.ones((q.shape[0], 1))], axis=1) @ aug_ref
        nearest = g.min(axis=1, keepdims=True) if k == 1 else np.partition(g, k - 1, axis=1)[:, :k]
        nearest += np.einsum("ij,ij->i", q, q)[:, None]
        np.maximum(nearest, 0.0, out=nearest)
        out[start : start + q.shape[0]] = np.sqrt(nearest).mean(axis=1)
    return out


@dataclass(frozen=True)
class LatentKNN:
    """The fitted latent kNN term: reference points and its normalization (see module doc)."""

    reference: np.ndarray  # (m, latent_dim) posterior means of training rows
    k: int
    center: float  # median distance on the calibration rows
    scale: float  # robust σ of the distance on the calibration rows
    weight: float  # nats added per robust σ of distance

    @classmethod
    def fit(
        cls,
        reference: np.ndarray,
        calibration_z: np.ndarray,
        calibration_scores: np.ndarray,
        *,
        k: int,
        knn_weight: float,
    ) -> LatentKNN:
        """Normalize on held-out normal rows (``calibration_z`` must not be in the reference)."""
        reference = np.asarray(reference, dtype="float64")
        if reference.ndim != 2 or reference.shape[0] < 1:
            raise ValueError("the latent kNN needs at least one reference point")
        k = max(1, min(int(k), reference.shape[0]))
        center, scale = robust_location_scale(knn_distance(calibration_z, reference, k))
        _, score_scale = robust_location_scale(calibration_scores)
        return cls(reference, k, center, scale, float(knn_weight) * score_scale)

    def distance(self, z: np.ndarray) -> np.ndarray:
        return knn_distance(z, self.reference, self.k)

    def term(self, z: np.ndarray) -> np.ndarray:
        """What the latent density adds to each row's score, in nats (0 at the median)."""
        return self.weight * (self.distance(z) - self.center) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "center": self.center,
            "scale": self.scale,
            "weight": self.weight,
            "reference": self.reference.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Any, latent_dim: int) -> LatentKNN:
        """Rebuild from ``to_dict``'s output; ValueError names what is malformed."""
        if not isinstance(d, dict):
            raise ValueError("latent_knn must be an object")
        k = d.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError("latent_knn.k must be a positive integer")
        for key in ("center", "scale", "weight"):
            v = d.get(key)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"latent_knn.{key} must be a finite number")
        if not d["scale"] > 0:
            raise ValueError("latent_knn.scale must be positive")
        ref = d.get("reference")
        if (
            not isinstance(ref, list)
            or not 1 <= len(ref) <= MAX_REFERENCE
            or not all(isinstance(row, list) and len(row) == latent_dim for row in ref)
        ):
            raise ValueError(
                f"latent_knn.reference must hold 1 to {MAX_REFERENCE} points of {latent_dim} numbers"
            )
        try:
            reference = np.asarray(ref, dtype="float64")
        except (TypeError, ValueError):
            raise ValueError("latent_knn.reference must hold numbers") from None
        if not np.isfinite(reference).all():
            raise ValueError("latent_knn.reference must hold finite numbers")
        return cls(
            reference,
            min(k, reference.shape[0]),
            float(d["center"]),
            float(d["scale"]),
            float(d["weight"]),
        )


class ComposedScorer:
    """A `vaeguard.model.scoring.Scorer` whose ``score`` includes the latent kNN term.

    Same call and result as the plain scorer (per-feature terms and expected values are the
    reconstruction's), so everything that rescoring relies on sees the detector's own score.
    """

    def __init__(self, base, knn: LatentKNN):
        self.base = base
        self.knn = knn

    def __call__(self, x: np.ndarray, c: np.ndarray | None = None, mask: np.ndarray | None = None):
        raw = self.base(x, c, mask)
        return replace(raw, score=raw.score + self.knn.term(raw.z_mean))

    def __getattr__(self, name: str):
        return getattr(self.base, name)
