"""`WindowDetector`: a (conditional) VAE over per-entity windows, Donut-style.

The model sees the W most recent grid slots of an entity's metrics, scale-free, with missing
slots masked out of the likelihood (M-ELBO); the score of a point is the Monte-Carlo
reconstruction negative log-likelihood of the window ending at it. The hyperparameters are
plain constructor arguments (scikit-learn style) so one configuration serves every entity.

The detector holds only the model; the per-entity state lives in a `WindowFeaturizer` and an
`AnomalyLikelihood`, which `featurizer()` / `likelihood()` create, so the same trained model
scores many independent streams (or one stream after a restart from a snapshot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vaeguard.errors import DataError, NotFittedError
from vaeguard.timeseries.conditions import TimeConditions
from vaeguard.timeseries.featurizer import WindowFeaturizer, WindowSpec
from vaeguard.timeseries.likelihood import AnomalyLikelihood, LikelihoodSpec

#: Fewest windows `fit` accepts.
MIN_TRAIN_WINDOWS = 16


class WindowDetector:
    """Windowed (C)VAE with scale-free per-entity inputs.

    Parameters
    ----------
    window, metrics, conditions, interval, ...
        The `WindowSpec` (any of its fields is accepted as a keyword).
    latent_dim, hidden, beta, min_log_var, max_log_var
        The VAE (see `vaeguard.model.VAE`); the conditional part is used when ``conditions``
        names time conditions.
    train_steps, retrain_steps, batch_size, learning_rate
        Training budget in gradient steps (not epochs), so the cost of a fit does not grow
        with the data; ``retrain_steps`` is used when continuing from the current weights.
    mc_samples
        Latent draws of the Monte-Carlo reconstruction probability.
    score_slots
        Score the last ``score_slots`` slots of the window (1 = the newest point only, as in
        Donut) or, when None, the whole window (rescaled to a full window when slots are missing).
    inputs
        The window channels this model sees (default: all of them, see `WindowSpec.channels`;
        ``"metrics"``: the metrics without derived channels); several detectors over different
        channels of one window are the views of a `ViewSet`.
    likelihood
        `LikelihoodSpec` (or dict) of the [0, 1] post-processing; None disables it.
    seed
        Makes initialization, training and scoring repeatable.
    """

    def __init__(
        self,
        *,
        latent_dim: int = 4,
        hidden: Sequence[int] = (64, 32),
        beta: float = 1.0,
        min_log_var: float = -6.0,
        max_log_var: float = 4.0,
        train_steps: int = 600,
        retrain_steps: int = 300,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        mc_samples: int = 16,
        score_slots: int | None = None,
        likelihood: LikelihoodSpec | dict[str, Any] | None = None,
        inputs: Sequence[str] | str | None = None,
        seed: int = 0,
        **window: Any,
    ):
        self.spec = WindowSpec(**window)
        channels = self.spec.channels
        if inputs == "metrics":
            inputs = self.spec.metrics
        self.inputs = tuple(channels if inputs is None else inputs)
        if not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise ValueError("inputs: name distinct window channels")
        missing = [c for c in self.inputs if c not in channels]
        if missing:
            raise ValueError(
                f"inputs: {', '.join(missing)} not among the window's channels {', '.join(channels)}"
            )
        w = self.spec.window
        #: Columns of the full window this model reads (metric-major blocks of W slots).
        self.columns_ = np.concatenate(
            [np.arange(channels.index(c) * w, (channels.index(c) + 1) * w) for c in self.inputs]
        )
        self._all_inputs = self.inputs == channels
        self.latent_dim = int(latent_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.beta = float(beta)
        self.min_log_var = float(min_log_var)
        self.max_log_var = float(max_log_var)
        self.train_steps = int(train_steps)
        self.retrain_steps = int(retrain_steps)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.mc_samples = int(mc_samples)
        self.score_slots = None if score_slots is None else int(score_slots)
        if isinstance(likelihood, dict):
            likelihood = LikelihoodSpec.from_dict(likelihood)
        self.likelihood_spec = likelihood if likelihood is not None else LikelihoodSpec()
        self.use_likelihood = likelihood is not None
        self.seed = int(seed)
        if self.score_slots is not None and not 1 <= self.score_slots <= self.spec.window:
            raise ValueError("score_slots must be between 1 and window")
        self.model_ = None
        self._scorer = None
        self._initial_weights = None
        self.fits_ = 0  # fits since the last fresh start (seeds each fit's shuffling)
        self.threshold_ = None  # set by calibrate(): what the daemon compares scores with
        #: Where expected values may lie, per model input, in the metrics' units (or None).
        self.plausible_range_ = None
        self.baseline_ = None
        self.score_reference_ = None
        self.training_info_: dict[str, Any] = {}

    @property
    def n_inputs(self) -> int:
        """Values per window the model reads: W · len(inputs)."""
        return self.spec.window * len(self.inputs)

    @property
    def feature_names(self) -> list[str]:
        from vaeguard.timeseries.featurizer import slot_names

        return slot_names(self.inputs, self.spec.window)

    def select(self, x: np.ndarray | None) -> np.ndarray | None:
        """The model's columns of full windows (a no-op when it reads every channel)."""
        if x is None or self._all_inputs:
            return x
        return np.asarray(x)[:, self.columns_]

    @property
    def time_conditions(self) -> TimeConditions:
        return TimeConditions(self.spec.conditions)

    # -- state objects -------------------------------------------------------------------------

    def featurizer(self) -> WindowFeaturizer:
        """A fresh per-entity window state for this detector's spec."""
        return WindowFeaturizer(self.spec)

    def likelihood(self) -> AnomalyLikelihood:
        """A fresh per-entity likelihood state."""
        return AnomalyLikelihood(self.likelihood_spec)

    # -- training ------------------------------------------------------------------------------

    def _build(self):
        from vaeguard._quiet import import_keras
        from vaeguard.model.scoring import Scorer
        from vaeguard.model.vae import VAE

        keras = import_keras()
        keras.utils.set_random_seed(self.seed)
        model = VAE(
            n_features=self.n_inputs,
            latent_dim=self.latent_dim,
            hidden=self.hidden,
            n_conditions=2 * len(self.spec.conditions),
            beta=self.beta,
            min_log_var=self.min_log_var,
            max_log_var=self.max_log_var,
            seed=self.seed,
        )
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate))
        self.model_ = model
        # every variable, including the sampling layer's seed-generator state (not a "weight")
        self._initial_weights = [v.numpy() for v in model.variables]
        self._scorer = Scorer(model, self.mc_samples, seed=self.seed, masked=True)

    def _reinitialize(self) -> None:
        """Back to the initial weights and a fresh optimizer, without rebuilding the graphs."""
        for variable, value in zip(self.model_.variables, self._initial_weights, strict=True):
            variable.assign(value)
        optimizer = self.model_.optimizer
        for variable in optimizer.variables:
            # the step counter and the moment estimates restart; the learning rate is a
            # variable too and must keep its value
            if not variable.path.endswith("learning_rate"):
                variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
        optimizer.learning_rate = self.learning_rate

    def fit(
        self,
        x: np.ndarray,
        c: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        *,
        warm_start: bool = False,
    ) -> WindowDetector:
        """Train on windows (from `WindowFeaturizer`); ``warm_start`` continues from the current model."""
        from vaeguard.detector import fit_inputs
        from vaeguard.model.vae import KLWarmup

        x = np.asarray(x, dtype="float32")
        n = x.shape[0]
        if n < MIN_TRAIN_WINDOWS:
            raise DataError(f"need at least {MIN_TRAIN_WINDOWS} windows to train, got {n}")
        if x.shape[1] != self.spec.n_features:
            raise DataError(
                f"windows have {x.shape[1]} values, the spec needs {self.spec.n_features}"
            )
        if mask is None:
            mask = np.ones_like(x)
        x, mask = self.select(x), self.select(mask)
        fresh = not (warm_start and self.model_ is not None)
        if self.model_ is None or (fresh and self._initial_weights is None):
            self._build()  # (a model loaded from a bundle has no initial weights to go back to)
        elif fresh:
            self._reinitialize()
        elif not getattr(self.model_, "compiled", False) or self.model_.optimizer is None:
            # A model loaded from a bundle (the daemon's online refits) has no optimizer yet:
            # its warm fit starts with a fresh one.
            from vaeguard._quiet import import_keras

            self.model_.compile(optimizer=import_keras().optimizers.Adam(self.learning_rate))
        if fresh:
            # Same seed state for every fresh start: a model's training does not depend on
            # what this detector trained before (e.g. other series in the same worker).
            from vaeguard._quiet import import_keras

            import_keras().utils.set_random_seed(self.seed)
            self.fits_ = 0
        inputs = {"x": x * mask, "mask": np.asarray(mask, dtype="float32")}
        if self.spec.conditions:
            if c is None:
                raise DataError("this detector uses time conditions: pass c")
            inputs["c"] = np.asarray(c, dtype="float32")
        batch = min(self.batch_size, n)
        steps = self.train_steps if fresh else self.retrain_steps
        epochs = max(1, math.ceil(steps / math.ceil(n / batch)))
        callbacks = [KLWarmup(self.beta, max(1, epochs // 5) if fresh else 0)]
        data = fit_inputs(inputs, None, batch_size=batch, seed=self.seed + self.fits_)
        self.model_.fit(**data, epochs=epochs, verbose=0, callbacks=callbacks)
        self.fits_ += 1
        self.training_info_ = {
            "windows": int(n),
            "epochs_run": int(epochs),
            "warm_start": not fresh,
        }
        return self

    # -- scoring -------------------------------------------------------------------------------

    def raw_scores(
        self, x: np.ndarray, c: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Anomaly score (nats) of each window: higher = less likely under the model."""
        return self.score_windows(x, c, mask)[0]

    def score_windows(
        self, x: np.ndarray, c: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(score, per-slot nll, expected value) of each window; the daemon's scoring call too.

        ``x`` holds full windows (every channel); nll and expected cover the model's ``inputs``.
        The score counts the slots ``score_slots`` names (all of them, rescaled to a full window
        when some are missing, when it is None); masked slots add nothing to the likelihood.
        """
        if self.model_ is None:
            raise NotFittedError("this WindowDetector is not fitted yet: call fit()")
        x = np.asarray(x, dtype="float32")
        d = self.n_inputs
        if x.shape[0] == 0:
            return np.zeros(0), np.zeros((0, d)), np.zeros((0, d))
        if mask is None:
            mask = np.ones_like(x)
        x, mask = self.select(x), self.select(np.asarray(mask, dtype="float32"))
        raw = self._scorer(x * mask, c if self.spec.conditions else None, mask)
        w, m = self.spec.window, len(self.inputs)
        if self.score_slots is None:
            observed = np.maximum(mask.sum(axis=1), 1.0)
            score = raw.score * (w * m) / observed
        else:
            cols = [j * w + s for j in range(m) for s in range(w - self.score_slots, w)]
            score = raw.nll[:, cols].sum(axis=1)
        return score, raw.nll, raw.expected

    @property
    def term_metrics(self) -> tuple[str, ...]:
        """The metric of each likelihood term (`metric_terms`): every metric among the inputs,
        in input order; a derived channel (the seasonal residual) belongs to its source."""
        return tuple(dict.fromkeys(self._channel_metric(c) for c in self.inputs))

    def _channel_metric(self, channel: str) -> str:
        seasonal = self.spec.seasonal
        return seasonal["source"] if seasonal and channel == seasonal["name"] else channel

    def metric_terms(self, nll: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Each metric's part of the score (rows × `term_metrics`), from `score_windows`' nll.

        A shift in one of M metrics moves its own term as much as it moves the total, against
        a spread of one metric's noise rather than all M's: judged per metric, it is not
        averaged away. With one metric the term is the score. ``mask`` (full windows) is needed
        only when ``score_slots`` is None (terms rescaled to full slots, like the score)."""
        nll = np.asarray(nll, dtype="float64")
        w = self.spec.window
        first = 0 if self.score_slots is None else w - self.score_slots
        blocks = nll.reshape(nll.shape[0], len(self.inputs), w)[:, :, first:]
        if self.score_slots is None and mask is not None:
            seen = self.select(np.asarray(mask, dtype="float64")).reshape(blocks.shape)
            blocks = blocks * (w / np.maximum(seen.sum(axis=2, keepdims=True), 1.0))
        sums = blocks.sum(axis=2)  # rows × inputs
        metrics = self.term_metrics
        owner = np.array([metrics.index(self._channel_metric(c)) for c in self.inputs])
        terms = np.zeros((nll.shape[0], len(metrics)))
        for k in range(len(metrics)):
            terms[:, k] = sums[:, owner == k].sum(axis=1)
        return terms

    def calibrate(
        self,
        x: np.ndarray,
        c: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        *,
        method: str = "quantile",
        target_fpr: float = 0.01,
        risk: float = 1e-3,
    ) -> WindowDetector:
        """Threshold (and per-slot baselines) from the scores of normal windows, for alerting."""
        from vaeguard.detector import REFERENCE_LEVELS
        from vaeguard.thresholds import calibrate

        score, nll, _ = self.score_windows(x, c, mask)
        if score.shape[0] < MIN_TRAIN_WINDOWS:
            raise DataError(
                f"need at least {MIN_TRAIN_WINDOWS} windows to calibrate, got {score.shape[0]}"
            )
        self.threshold_ = calibrate(score, method, target_fpr=target_fpr, risk=risk)
        self.baseline_ = np.median(nll, axis=0)
        self.score_reference_ = np.quantile(score, REFERENCE_LEVELS)
        self.training_info_ = {**self.training_info_, "calibration_windows": int(score.shape[0])}
        return self

    def save(self, path, *, extra: dict[str, Any] | None = None):
        """Write a bundle (see `vaeguard.timeseries.bundle`); the daemon serves it in window mode."""
        from vaeguard.timeseries.bundle import save_window_bundle

        return save_window_bundle(self, path, extra=extra)

    @classmethod
    def load(cls, path) -> WindowDetector:
        from vaeguard.timeseries.bundle import load_window_bundle

        return load_window_bundle(path)

    def score_batch(
        self, batch, likelihood: AnomalyLikelihood | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores of a `WindowBatch` and, with a likelihood state, their [0, 1] outputs."""
        raw = self.raw_scores(batch.x, batch.c, batch.mask)
        if likelihood is None:
            return raw, raw
        return raw, likelihood.update_many(batch.entities, raw)

    def get_params(self) -> dict[str, Any]:
        return {
            **self.spec.to_dict(),
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "beta": self.beta,
            "min_log_var": self.min_log_var,
            "max_log_var": self.max_log_var,
            "train_steps": self.train_steps,
            "retrain_steps": self.retrain_steps,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "mc_samples": self.mc_samples,
            "score_slots": self.score_slots,
            "likelihood": self.likelihood_spec.to_dict() if self.use_likelihood else None,
            "inputs": list(self.inputs),
            "seed": self.seed,
        }
