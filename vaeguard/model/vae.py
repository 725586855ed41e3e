"""The variational autoencoder: Gaussian encoder q(z|x, c), Gaussian decoder p(x|z, c), ELBO loss.

A `keras.Model` subclass whose whole architecture is a function of its `get_config()`, so a
`.keras` file restores it exactly, with no custom code to trust beyond this registered class.
The loss lives in `compute_loss`, which every Keras backend's trainer calls, instead of a
backend-specific `train_step`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from vaeguard.model.layers import BoundedLogVar, Sampling
from vaeguard.model.losses import gaussian_nll, kl_standard_normal

#: Bounds on the encoder's log-variance, to keep exp() finite early in training.
Z_LOG_VAR_BOUNDS = (-12.0, 6.0)


@keras.saving.register_keras_serializable(package="vaeguard")
class VAE(keras.Model):
    """Conditional Gaussian VAE over a fixed-width feature vector.

    Inputs are a dict ``{"x": (n, n_features), "c": (n, n_conditions), "mask": (n, n_features)}``
    where ``c`` is present only when ``n_conditions > 0`` and ``mask`` (1 = observed, 0 = missing)
    is optional: missing points are zeroed on the way in and left out of the likelihood
    (Donut's M-ELBO), so gaps in a window do not teach the model that zero is normal.
    """

    def __init__(
        self,
        n_features: int,
        latent_dim: int = 8,
        hidden: Sequence[int] = (64, 32),
        n_conditions: int = 0,
        beta: float = 1.0,
        activation: str = "relu",
        dropout: float = 0.0,
        min_log_var: float = -6.0,
        max_log_var: float = 4.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if n_features < 1:
            raise ValueError("n_features must be at least 1")
        if latent_dim < 1:
            raise ValueError("latent_dim must be at least 1")
        self.n_features = int(n_features)
        self.latent_dim = int(latent_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.n_conditions = int(n_conditions)
        self.beta = float(beta)
        self.activation = activation
        self.dropout = float(dropout)
        self.min_log_var = float(min_log_var)
        self.max_log_var = float(max_log_var)
        self.seed = seed

        init = keras.initializers.GlorotUniform(seed=seed)
        self.encoder_layers = [
            keras.layers.Dense(
                units, activation=activation, kernel_initializer=init, name=f"enc_{i}"
            )
            for i, units in enumerate(self.hidden)
        ]
        self.z_mean_layer = keras.layers.Dense(latent_dim, kernel_initializer=init, name="z_mean")
        self.z_log_var_layer = keras.layers.Dense(
            latent_dim, kernel_initializer="zeros", bias_initializer="zeros", name="z_log_var"
        )
        self.sampling = Sampling(seed=seed, name="sampling")
        self.decoder_layers = [
            keras.layers.Dense(
                units, activation=activation, kernel_initializer=init, name=f"dec_{i}"
            )
            for i, units in enumerate(reversed(self.hidden))
        ]
        self.dropout_layer = keras.layers.Dropout(self.dropout, seed=seed) if self.dropout else None
        self.mean_layer = keras.layers.Dense(n_features, kernel_initializer=init, name="x_mean")
        self.log_var_raw = keras.layers.Dense(
            n_features, kernel_initializer=init, name="x_log_var_raw"
        )
        self.log_var_bound = BoundedLogVar(min_log_var, max_log_var, name="x_log_var")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.build()

    # -- building and (de)serialization -------------------------------------------------------

    def build(self, input_shape=None):
        """Create all weights from the config alone: the config fully determines the shapes."""
        if self.built:
            return
        self.kl_weight = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.beta),
            trainable=False,
            name="kl_weight",
        )
        width = self.n_features + self.n_conditions
        for layer in self.encoder_layers:
            layer.build((None, width))
            width = layer.units
        self.z_mean_layer.build((None, width))
        self.z_log_var_layer.build((None, width))
        width = self.latent_dim + self.n_conditions
        for layer in self.decoder_layers:
            layer.build((None, width))
            width = layer.units
        self.mean_layer.build((None, width))
        self.log_var_raw.build((None, width))
        self.built = True

    def build_from_config(self, config):
        self.build()

    def get_build_config(self):
        return {"built": True}

    def get_config(self):
        return {
            **super().get_config(),
            "n_features": self.n_features,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "n_conditions": self.n_conditions,
            "beta": self.beta,
            "activation": self.activation,
            "dropout": self.dropout,
            "min_log_var": self.min_log_var,
            "max_log_var": self.max_log_var,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- the two halves -----------------------------------------------------------------------

    def encode(self, x, c=None, training=False):
        """q(z | x, c): the mean and log-variance of the approximate posterior."""
        h = self._with_conditions(x, c)
        for layer in self.encoder_layers:
            h = layer(h)
            if self.dropout_layer is not None:
                h = self.dropout_layer(h, training=training)
        z_log_var = ops.clip(self.z_log_var_layer(h), *Z_LOG_VAR_BOUNDS)
        return self.z_mean_layer(h), z_log_var

    def decode(self, z, c=None, training=False):
        """p(x | z, c): a Gaussian per feature, as (mean, bounded log-variance)."""
        h = self._with_conditions(z, c)
        for layer in self.decoder_layers:
            h = layer(h)
            if self.dropout_layer is not None:
                h = self.dropout_layer(h, training=training)
        return self.mean_layer(h), self.log_var_bound(self.log_var_raw(h))

    def _with_conditions(self, t, c):
        if self.n_conditions:
            if c is None:
                raise ValueError(
                    f"this model is conditional: it needs {self.n_conditions} condition values"
                )
            return ops.concatenate([t, ops.cast(c, t.dtype)], axis=-1)
        return t

    @staticmethod
    def unpack(inputs):
        """Split the input dict (or a bare feature tensor) into (x, c, mask)."""
        if isinstance(inputs, dict):
            return inputs["x"], inputs.get("c"), inputs.get("mask")
        return inputs, None, None

    # -- training -----------------------------------------------------------------------------

    def call(self, inputs, training=False):
        x, c, mask = self.unpack(inputs)
        if mask is not None:
            x = x * mask
        visible = inputs.get("visible") if isinstance(inputs, dict) else None
        if visible is not None:  # inputs the encoder must not see (predicted, not reconstructed)
            x = x * visible
        z_mean, z_log_var = self.encode(x, c, training=training)
        z = self.sampling([z_mean, z_log_var])
        mean, log_var = self.decode(z, c, training=training)
        return {"mean": mean, "log_var": log_var, "z_mean": z_mean, "z_log_var": z_log_var}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Negative ELBO: Gaussian NLL (observed points only) + β·KL(q(z|x) ‖ N(0, I))."""
        features, _, mask = self.unpack(x)
        nll = gaussian_nll(features, y_pred["mean"], y_pred["log_var"])
        if mask is not None:
            nll = nll * mask
        reconstruction = ops.sum(nll, axis=-1)
        kl = kl_standard_normal(y_pred["z_mean"], y_pred["z_log_var"])
        per_sample = reconstruction + self.kl_weight * kl
        if sample_weight is not None:
            per_sample = per_sample * sample_weight
        loss = ops.mean(per_sample)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        return loss


class KLWarmup(keras.callbacks.Callback):
    """Ramps β linearly from ~0 to its target over the first epochs (avoids posterior collapse).

    It assigns the weight between epochs, which every backend's trainer picks up.
    """

    def __init__(self, beta: float, epochs: int):
        super().__init__()
        self.beta = float(beta)
        self.epochs = max(int(epochs), 0)

    def on_epoch_begin(self, epoch, logs=None):
        factor = 1.0 if self.epochs == 0 else min(1.0, (epoch + 1) / self.epochs)
        self.model.kl_weight.assign(self.beta * factor)

    def on_train_end(self, logs=None):
        self.model.kl_weight.assign(self.beta)
