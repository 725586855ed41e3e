"""The VAE itself: layers, losses, the Keras model and its Monte-Carlo scoring graph.

Everything here is written with `keras.ops` / `keras.random` so it runs on the TensorFlow, JAX
and PyTorch backends alike.
"""

from vaeguard._quiet import import_keras

import_keras()

from vaeguard.model.layers import BoundedLogVar, Sampling  # noqa: E402
from vaeguard.model.losses import gaussian_nll, kl_standard_normal  # noqa: E402
from vaeguard.model.vae import VAE  # noqa: E402

__all__ = ["VAE", "BoundedLogVar", "Sampling", "gaussian_nll", "kl_standard_normal"]
