"""Custom Keras layers of the VAE, registered so `.keras` files load with `safe_mode=True`."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vaeguard")
class Sampling(keras.layers.Layer):
    """Reparameterization trick: z = μ + exp(½·log σ²)·ε with ε ~ N(0, I).

    Sampling through this layer keeps z differentiable in μ and log σ², which is what lets the
    encoder learn from the reconstruction term. The seed generator makes draws repeatable.
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(
            ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator
        )
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="vaeguard")
class BoundedLogVar(keras.layers.Layer):
    """Squashes a raw output into [min_log_var, max_log_var].

    An unbounded decoder variance can collapse towards zero on features that are nearly constant
    in training, which turns the likelihood into a spike and the anomaly score into noise.
    """

    def __init__(self, min_log_var: float = -6.0, max_log_var: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        if not min_log_var < max_log_var:
            raise ValueError("min_log_var must be smaller than max_log_var")
        self.min_log_var = float(min_log_var)
        self.max_log_var = float(max_log_var)

    def call(self, inputs):
        span = self.max_log_var - self.min_log_var
        return self.min_log_var + span * ops.sigmoid(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "min_log_var": self.min_log_var,
            "max_log_var": self.max_log_var,
        }
