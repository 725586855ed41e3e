"""What training a VAE needs besides the model: the held-out split, Keras' data arguments, the
warm-start shape check and the training data's fingerprint. Both detectors (tabular and window)
train through these, so they split, batch and record their data the same way."""

from __future__ import annotations

import hashlib
from typing import Any

import keras
import numpy as np


def validation_split(n: int, fraction: float, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): a seeded random ``fraction`` is held out for early
    stopping and calibration (at least one row when ``fraction`` > 0)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fraction)) if fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fit_inputs(train: dict, val: dict | None, *, batch_size: int, seed: int | None) -> dict:
    """Data arguments for `keras.Model.fit`: training batches reshuffled every epoch.

    On the TensorFlow backend they are `tf.data` pipelines: Keras' NumPy adapter rebuilds its
    pipeline every epoch, which costs more than the epoch itself on small tables. Other
    backends get the arrays and Keras' own batching.
    """
    if keras.backend.backend() != "tensorflow":
        validation = None if val is None else (val,)
        return {
            "x": train,
            "validation_data": validation,
            "batch_size": batch_size,
            "shuffle": True,
        }
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(train)
    data = data.shuffle(len(train["x"]), seed=seed, reshuffle_each_iteration=True)
    validation = None
    if val is not None:
        validation = tf.data.Dataset.from_tensor_slices(val).batch(4096)
    # shuffle=False only tells Keras not to expect to shuffle: the pipeline reshuffles itself.
    return {
        "x": data.batch(batch_size).prefetch(2),
        "validation_data": validation,
        "shuffle": False,
    }


def same_shapes(a: keras.Model, b: keras.Model) -> bool:
    """Whether ``b`` can take ``a``'s weights (a warm start between equal architectures)."""
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(x.shape == y.shape for x, y in zip(wa, wb, strict=True))


def fingerprint(x: np.ndarray, c: np.ndarray | None = None) -> dict[str, Any]:
    """Row count and SHA-256 of the training data, to tell which data a model learned from."""
    h = hashlib.sha256(np.ascontiguousarray(x, dtype="float64").tobytes())
    if c is not None:
        h.update(np.ascontiguousarray(c, dtype="float32").tobytes())
    return {"rows": int(x.shape[0]), "sha256": h.hexdigest()}
