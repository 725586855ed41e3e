"""The VAE itself: layers, losses, the Keras model and its Monte-Carlo scoring graph.

Everything here is written with `keras.ops` / `keras.random` so it runs on the TensorFlow, JAX
and PyTorch backends alike.
"""

from vaeguard.model.layers import BoundedLogVar, Sampling
from vaeguard.model.losses import gaussian_nll, kl_standard_normal
from vaeguard.model.vae import VAE

__all__ = ["VAE", "BoundedLogVar", "Sampling", "gaussian_nll", "kl_standard_normal"]
