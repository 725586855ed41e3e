"""The VAE's building blocks: reparameterization, closed-form KL, the ELBO, serialization."""

from __future__ import annotations

import numpy as np
import pytest

from vaeguard.model import VAE, Sampling, gaussian_nll, kl_standard_normal
from vaeguard.model.layers import BoundedLogVar


def test_sampling_matches_mean_and_sigma():
    layer = Sampling(seed=7)
    n = 20000
    mu = np.tile(np.array([[1.5, -2.0, 0.0]], dtype="float32"), (n, 1))
    log_var = np.tile(np.log(np.array([[0.25, 4.0, 1.0]], dtype="float32")), (n, 1))
    z = np.asarray(layer([mu, log_var]))
    np.testing.assert_allclose(z.mean(axis=0), [1.5, -2.0, 0.0], atol=0.05)
    np.testing.assert_allclose(z.std(axis=0), [0.5, 2.0, 1.0], rtol=0.03)


def test_sampling_is_deterministic_under_a_seed_and_differs_between_calls():
    mu = np.zeros((4, 2), "float32")
    lv = np.zeros((4, 2), "float32")
    a, b = Sampling(seed=3), Sampling(seed=3)
    first_a, first_b = np.asarray(a([mu, lv])), np.asarray(b([mu, lv]))
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.array_equal(first_a, np.asarray(a([mu, lv])))


def test_gradients_reach_mean_and_log_variance():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient check written with tf.GradientTape")
    import tensorflow as tf

    mu = tf.Variable(np.full((64, 2), 0.3, "float32"))
    lv = tf.Variable(np.full((64, 2), -0.5, "float32"))
    layer = Sampling(seed=1)
    with tf.GradientTape() as tape:
        z = layer([mu, lv])
        loss = tf.reduce_sum(tf.square(z - 2.0))
    g_mu, g_lv = tape.gradient(loss, [mu, lv])
    assert g_mu is not None and g_lv is not None
    assert float(tf.reduce_sum(tf.abs(g_mu))) > 0 and float(tf.reduce_sum(tf.abs(g_lv))) > 0


def test_closed_form_kl_equals_monte_carlo_estimate():
    rng = np.random.default_rng(0)
    mu = np.array([[0.7, -1.2, 0.1]], "float32")
    log_var = np.array([[-0.4, 0.8, -2.0]], "float32")
    closed = float(np.asarray(kl_standard_normal(mu, log_var))[0])
    sigma = np.exp(0.5 * log_var)
    z = mu + sigma * rng.standard_normal((200000, 3))
    log_q = -0.5 * (np.log(2 * np.pi) + log_var + ((z - mu) / sigma) ** 2)
    log_p = -0.5 * (np.log(2 * np.pi) + z**2)
    mc = float((log_q - log_p).sum(axis=1).mean())
    assert closed == pytest.approx(mc, rel=0.01)


def test_gaussian_nll_matches_the_density():
    x, mean, log_var = np.float32(1.3), np.float32(0.2), np.float32(np.log(0.5))
    expected = -np.log(np.exp(-((x - mean) ** 2) / (2 * 0.5)) / np.sqrt(2 * np.pi * 0.5))
    assert float(np.asarray(gaussian_nll(x, mean, log_var))) == pytest.approx(expected, rel=1e-5)


def test_bounded_log_variance_stays_in_bounds():
    layer = BoundedLogVar(-3.0, 2.0)
    out = np.asarray(layer(np.array([[-1e6, 0.0, 1e6]], "float32")))
    assert out.min() >= -3.0 and out.max() <= 2.0


def test_loss_falls_on_a_toy_set(normal_data):
    import keras

    x = ((normal_data - normal_data.mean(0)) / normal_data.std(0)).astype("float32")
    model = VAE(n_features=5, latent_dim=2, hidden=(16,), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit({"x": x}, epochs=8, batch_size=128, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 1.0
    assert {"reconstruction", "kl"} <= set(history.history)


def test_missing_points_are_left_out_of_the_likelihood():
    """Same seed, same draws: a masked point's value, however absurd, changes nothing."""

    def loss(x, mask):
        model = VAE(n_features=3, latent_dim=2, hidden=(8,), seed=0)
        inputs = {"x": x, "mask": mask}
        return float(model.compute_loss(inputs, None, model(inputs)))

    x = np.zeros((4, 3), "float32")
    mask = np.ones_like(x)
    mask[:, 1] = 0
    absurd = x.copy()
    absurd[:, 1] = 1e4
    assert loss(absurd, mask) == pytest.approx(loss(x, mask), rel=1e-6)
    assert loss(absurd, np.ones_like(x)) > loss(x, mask) + 1e3


def test_model_config_round_trip():
    model = VAE(n_features=4, latent_dim=3, hidden=(8, 4), n_conditions=2, beta=0.5, seed=5)
    clone = VAE.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert [w.shape for w in clone.get_weights()] == [w.shape for w in model.get_weights()]
