"""`WindowDetector`: a (conditional) VAE over per-entity windows, Donut-style.

The model sees the W most recent grid slots of an entity's metrics, scale-free, with missing
slots masked out of the likelihood (M-ELBO); the score of a point is the Monte-Carlo
reconstruction negative log-likelihood of the window ending at it. The hyperparameters are
plain constructor arguments (scikit-learn style) so one configuration serves every entity.

The detector holds only the model; the per-entity state lives in a `WindowFeaturizer` and an
`AnomalyLikelihood`, which `featurizer()` / `likelihood_state()` create, so the same trained model
scores many independent streams (or one stream after a restart from a snapshot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from vaeguard.errors import DataError, NotFittedError
from vaeguard.snapshot import is_count
from vaeguard.timeseries.conditions import TimeConditions
from vaeguard.timeseries.featurizer import WindowFeaturizer, WindowSpec
from vaeguard.timeseries.likelihood import AnomalyLikelihood, LikelihoodSpec

#: Fewest windows `fit` accepts.
MIN_TRAIN_WINDOWS = 16

#: ``training_info_`` key: observed slots of each input channel in the last fit's windows. A
#: model judges an input channel only when its last fit saw at least as many observed slots of
#: it as ``MIN_TRAIN_WINDOWS`` full windows hold (`WindowDetector.unlearned_channels`): a
#: channel that appears only after the fit (the seasonal residual of a stream younger than its
#: period, a metric added later) is masked when scored, not read as an anomaly, until a refit
#: has seen it.
CHANNEL_SLOTS = "channel_slots"

#: The `WindowSpec` fields, which are constructor parameters too.
SPEC_FIELDS = tuple(WindowSpec.__dataclass_fields__)

#: The model's constructor parameters (after the spec's), in the order bundles record them.
MODEL_FIELDS = (
    "latent_dim",
    "hidden",
    "beta",
    "min_log_var",
    "max_log_var",
    "train_steps",
    "retrain_steps",
    "batch_size",
    "learning_rate",
    "mc_samples",
    "score_slots",
    "likelihood",
    "inputs",
    "seed",
    "predict_scored",
    "student_t_dof",
)


class _Checked(NamedTuple):
    """The parameters checked, converted and resolved: what the detector computes with."""

    spec: WindowSpec
    inputs: tuple[str, ...]
    all_inputs: bool
    latent_dim: int
    hidden: tuple[int, ...]
    beta: float
    min_log_var: float
    max_log_var: float
    train_steps: int
    retrain_steps: int
    batch_size: int
    learning_rate: float
    mc_samples: int
    score_slots: int | None
    likelihood_spec: LikelihoodSpec
    use_likelihood: bool
    seed: int
    predict_scored: bool
    student_t_dof: float | None


def _check(p: dict[str, Any]) -> _Checked:
    """Check and resolve `get_params()` output; the errors (and their order) are those the
    constructor raised when it validated."""
    spec = WindowSpec(**{name: p[name] for name in SPEC_FIELDS})
    channels = spec.channels
    inputs = p["inputs"]
    if inputs == "metrics":
        inputs = spec.metrics
    inputs = tuple(channels if inputs is None else inputs)
    if not inputs or len(set(inputs)) != len(inputs):
        raise ValueError("inputs: name distinct window channels")
    missing = [c for c in inputs if c not in channels]
    if missing:
        raise ValueError(
            f"inputs: {', '.join(missing)} not among the window's channels {', '.join(channels)}"
        )
    numbers = {
        "latent_dim": int(p["latent_dim"]),
        "hidden": tuple(int(h) for h in p["hidden"]),
        "beta": float(p["beta"]),
        "min_log_var": float(p["min_log_var"]),
        "max_log_var": float(p["max_log_var"]),
        "train_steps": int(p["train_steps"]),
        "retrain_steps": int(p["retrain_steps"]),
        "batch_size": int(p["batch_size"]),
        "learning_rate": float(p["learning_rate"]),
        "mc_samples": int(p["mc_samples"]),
        "score_slots": None if p["score_slots"] is None else int(p["score_slots"]),
    }
    for name in ("beta", "min_log_var", "max_log_var", "learning_rate"):
        if not math.isfinite(numbers[name]):
            raise ValueError(f"{name} must be a finite number, got {p[name]!r}")
    likelihood = p["likelihood"]
    if isinstance(likelihood, dict):
        likelihood = LikelihoodSpec.from_dict(likelihood)
    seed = int(p["seed"])
    slots = numbers["score_slots"]
    if slots is not None and not 1 <= slots <= spec.window:
        raise ValueError("score_slots must be between 1 and window")
    predict = p["predict_scored"]
    if not isinstance(predict, (bool, np.bool_)):
        raise ValueError("predict_scored must be true or false")
    if predict and (slots is None or slots >= spec.window):
        raise ValueError("predict_scored needs score_slots below window (slots left to see)")
    dof = p["student_t_dof"]
    if dof is not None:
        if isinstance(dof, (bool, np.bool_)) or not isinstance(dof, (int, float, np.number)):
            raise ValueError(f"student_t_dof must be a number above 0 or null, got {dof!r}")
        dof = float(dof)
        if not (math.isfinite(dof) and dof > 0):
            raise ValueError(f"student_t_dof must be a finite number above 0 or null, got {dof!r}")
    return _Checked(
        spec=spec,
        inputs=inputs,
        all_inputs=inputs == channels,
        **numbers,
        likelihood_spec=likelihood if likelihood is not None else LikelihoodSpec(),
        use_likelihood=likelihood is not None,
        seed=seed,
        predict_scored=bool(predict),
        student_t_dof=dof,
    )


class WindowDetector:
    """Windowed (C)VAE with scale-free per-entity inputs.

    scikit-learn's estimator contract: the constructor stores its arguments as given and
    checks nothing; `fit` (and the first use that needs them: `featurizer`, `spec`, scoring …)
    checks them, with the errors construction raised before. `from_config` checks at once, so
    a bad configuration or bundle is refused when it is read.

    Parameters
    ----------
    window, metrics, conditions, interval, max_lateness, min_observed, max_entities,
    entity_field, time_field, infer_points, normalize, norm_memory, norm_clip, seasonal
        The `WindowSpec` (the same defaults).
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
        channels of one window are the views of a `ViewSet`. Resolved: `input_channels`.
    likelihood
        `LikelihoodSpec` (or dict) of the [0, 1] post-processing; None disables it.
    seed
        Makes initialization, training and scoring repeatable.
    predict_scored
        The encoder does not see the scored slots: the model predicts them from the older
        slots of the window (and the conditions), in training and in scoring, so an anomaly in
        them cannot pull the latent towards itself and be explained away. Needs
        ``score_slots`` below ``window``.
    student_t_dof
        Each metric gets a second likelihood term (`term_metrics`): the same slots scored by a
        Student-t of this many degrees of freedom around the decoder's mean and scale
        (`vaeguard.model.losses.student_t_nll`; the model is trained as before). None: the
        Gaussian terms only. A Gaussian term grows with the square of a slot's residual, so on
        heavy-tailed noise it is set by the window's single worst slot and the stream's normal
        outliers outscore a sustained shift of a few noise sd; the Student-t's grows with the
        log, so it counts how many slots are off. The Gaussian term still sees a lone spike.
    """

    # Fitted state, unset until `fit` (or a bundle) sets it: class-level, so that __init__
    # sets nothing but the parameters and an unfitted detector still has ``model_ is None``.
    model_: Any = None
    threshold_: Any = None  # set by calibrate(): what the daemon compares scores with
    #: Where expected values may lie, per model input, in the metrics' units (or None).
    plausible_range_: Any = None
    baseline_: np.ndarray | None = None
    score_reference_: np.ndarray | None = None
    training_info_: Mapping[str, Any] = MappingProxyType({})
    fits_: int = 0  # fits since the last fresh start (seeds each fit's shuffling)
    _scorer: Any = None
    _initial_weights: list[Any] | None = None

    def __init__(
        self,
        *,
        window: int = WindowSpec.window,
        metrics: Sequence[str] = WindowSpec.metrics,
        conditions: Sequence[str] = WindowSpec.conditions,
        interval: float | str = WindowSpec.interval,
        max_lateness: int | None = WindowSpec.max_lateness,
        min_observed: float = WindowSpec.min_observed,
        max_entities: int = WindowSpec.max_entities,
        entity_field: str = WindowSpec.entity_field,
        time_field: str = WindowSpec.time_field,
        infer_points: int = WindowSpec.infer_points,
        normalize: bool = WindowSpec.normalize,
        norm_memory: int = WindowSpec.norm_memory,
        norm_clip: float = WindowSpec.norm_clip,
        seasonal: dict[str, Any] | None = WindowSpec.seasonal,
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
        predict_scored: bool = False,
        student_t_dof: float | None = None,
    ):
        self.window = window
        self.metrics = metrics
        self.conditions = conditions
        self.interval = interval
        self.max_lateness = max_lateness
        self.min_observed = min_observed
        self.max_entities = max_entities
        self.entity_field = entity_field
        self.time_field = time_field
        self.infer_points = infer_points
        self.normalize = normalize
        self.norm_memory = norm_memory
        self.norm_clip = norm_clip
        self.seasonal = seasonal
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.beta = beta
        self.min_log_var = min_log_var
        self.max_log_var = max_log_var
        self.train_steps = train_steps
        self.retrain_steps = retrain_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.mc_samples = mc_samples
        self.score_slots = score_slots
        self.likelihood = likelihood
        self.inputs = inputs
        self.seed = seed
        self.predict_scored = predict_scored
        self.student_t_dof = student_t_dof

    # -- scikit-learn conventions ----------------------------------------------------------------

    _PARAMS = SPEC_FIELDS + MODEL_FIELDS

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every constructor parameter, as given (``deep``: no nested estimators)."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params) -> WindowDetector:
        """Set parameters (checked at the next `fit` or use, as construction does not)."""
        for name in params:
            if name not in self._PARAMS:
                raise ValueError(
                    f"unknown parameter {name!r} for WindowDetector; "
                    f"valid parameters: {', '.join(sorted(self._PARAMS))}"
                )
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def _checked(self) -> _Checked:
        """The parameters checked and resolved, computed again when one has been set anew."""
        params = self.get_params()
        cached = self.__dict__.get("_checked_cache")
        if cached is None or any(cached[0][k] is not v for k, v in params.items()):
            cached = (params, _check(params))
            self._checked_cache = cached
        return cached[1]

    def resolved_params(self) -> dict[str, Any]:
        """The parameters checked and normalized, as a bundle records them: the spec's fields
        completed, ``inputs`` the channel names, ``likelihood`` a dict (or None)."""
        r = self._checked()
        # (predict_scored only when set: a bundle without it reads as before, by any version)
        predict = {"predict_scored": True} if r.predict_scored else {}
        dof = {} if r.student_t_dof is None else {"student_t_dof": r.student_t_dof}
        return {
            **r.spec.to_dict(),
            "latent_dim": r.latent_dim,
            "hidden": list(r.hidden),
            "beta": r.beta,
            "min_log_var": r.min_log_var,
            "max_log_var": r.max_log_var,
            "train_steps": r.train_steps,
            "retrain_steps": r.retrain_steps,
            "batch_size": r.batch_size,
            "learning_rate": r.learning_rate,
            "mc_samples": r.mc_samples,
            "score_slots": r.score_slots,
            "likelihood": r.likelihood_spec.to_dict() if r.use_likelihood else None,
            "inputs": list(r.inputs),
            "seed": r.seed,
            **predict,
            **dof,
        }

    @classmethod
    def from_config(cls, **params) -> WindowDetector:
        """A detector from configuration values (a bundle's, a config file's), checked now so a
        bad one is refused when it is read; its parameters are the normalized ones."""
        return cls(**cls(**params).resolved_params())

    # -- derived from the parameters ---------------------------------------------------------------

    @property
    def spec(self) -> WindowSpec:
        return self._checked().spec

    @property
    def input_channels(self) -> tuple[str, ...]:
        """The window channels this model reads (``inputs`` resolved)."""
        return self._checked().inputs

    @property
    def columns_(self) -> np.ndarray:
        """Columns of the full window this model reads (metric-major blocks of W slots)."""
        r = self._checked()
        w, channels = r.spec.window, r.spec.channels
        return np.concatenate(
            [np.arange(channels.index(c) * w, (channels.index(c) + 1) * w) for c in r.inputs]
        )

    @property
    def likelihood_spec(self) -> LikelihoodSpec:
        return self._checked().likelihood_spec

    @likelihood_spec.setter
    def likelihood_spec(self, spec: LikelihoodSpec) -> None:
        self.likelihood = spec

    @property
    def use_likelihood(self) -> bool:
        return self._checked().use_likelihood

    @property
    def n_inputs(self) -> int:
        """Values per window the model reads: W · len(inputs)."""
        r = self._checked()
        return r.spec.window * len(r.inputs)

    @property
    def feature_names(self) -> list[str]:
        from vaeguard.timeseries.featurizer import slot_names

        r = self._checked()
        return slot_names(r.inputs, r.spec.window)

    def select(self, x: np.ndarray | None) -> np.ndarray | None:
        """The model's columns of full windows (a no-op when it reads every channel)."""
        if x is None or self._checked().all_inputs:
            return x
        return np.asarray(x)[:, self.columns_]

    @property
    def time_conditions(self) -> TimeConditions:
        return TimeConditions(self.spec.conditions)

    # -- state objects -------------------------------------------------------------------------

    def featurizer(self) -> WindowFeaturizer:
        """A fresh per-entity window state for this detector's spec."""
        return WindowFeaturizer(self.spec)

    def likelihood_state(self) -> AnomalyLikelihood:
        """A fresh per-entity likelihood state (``likelihood`` is the parameter)."""
        return AnomalyLikelihood(self.likelihood_spec)

    # -- training ------------------------------------------------------------------------------

    def _build(self):
        from vaeguard._quiet import import_keras
        from vaeguard.model.vae import VAE

        r = self._checked()
        keras = import_keras()
        keras.utils.set_random_seed(r.seed)
        model = VAE(
            n_features=self.n_inputs,
            latent_dim=r.latent_dim,
            hidden=r.hidden,
            n_conditions=2 * len(r.spec.conditions),
            beta=r.beta,
            min_log_var=r.min_log_var,
            max_log_var=r.max_log_var,
            seed=r.seed,
        )
        model.compile(optimizer=keras.optimizers.Adam(r.learning_rate))
        # every variable, including the sampling layer's seed-generator state (not a "weight")
        self._initial_weights = [v.numpy() for v in model.variables]
        self.use_model(model)

    def use_model(self, model) -> None:
        """Score with ``model`` (built by `fit`, or read from a bundle by
        `vaeguard.timeseries.codec`): the one place its scorer is made from the parameters."""
        from vaeguard.model.scoring import Scorer

        r = self._checked()
        self.model_ = model
        self._scorer = Scorer(
            model,
            r.mc_samples,
            seed=r.seed,
            masked=True,
            visible=self.encoder_visible(),
            dof=r.student_t_dof,
        )

    def encoder_visible(self) -> np.ndarray | None:
        """Which of the model's inputs its encoder sees (1) — None: all of them; with
        ``predict_scored`` every input channel's scored slots are hidden (0)."""
        r = self._checked()
        if not r.predict_scored:
            return None
        w = r.spec.window
        visible = np.ones((len(r.inputs), w), dtype="float32")
        visible[:, w - r.score_slots :] = 0.0
        return visible.reshape(-1)

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
        optimizer.learning_rate = self._checked().learning_rate

    def fit(
        self,
        x: np.ndarray,
        c: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        *,
        warm_start: bool = False,
    ) -> WindowDetector:
        """Train on windows (from `WindowFeaturizer`); ``warm_start`` continues from the current model."""
        from vaeguard.model.training import fit_inputs
        from vaeguard.model.vae import KLWarmup

        r = self._checked()  # the parameters' errors first, as when construction checked them
        x = np.asarray(x, dtype="float32")
        n = x.shape[0]
        if n < MIN_TRAIN_WINDOWS:
            raise DataError(f"need at least {MIN_TRAIN_WINDOWS} windows to train, got {n}")
        if x.shape[1] != r.spec.n_features:
            raise DataError(f"windows have {x.shape[1]} values, the spec needs {r.spec.n_features}")
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

            self.model_.compile(optimizer=import_keras().optimizers.Adam(r.learning_rate))
        if fresh:
            # Same seed state for every fresh start: a model's training does not depend on
            # what this detector trained before (e.g. other series in the same worker).
            from vaeguard._quiet import import_keras

            import_keras().utils.set_random_seed(r.seed)
            self.fits_ = 0
        inputs = {"x": x * mask, "mask": np.asarray(mask, dtype="float32")}
        visible = self.encoder_visible()
        if visible is not None:
            inputs["visible"] = np.broadcast_to(visible, x.shape).copy()
        if r.spec.conditions:
            if c is None:
                raise DataError("this detector uses time conditions: pass c")
            inputs["c"] = np.asarray(c, dtype="float32")
        batch = min(r.batch_size, n)
        steps = r.train_steps if fresh else r.retrain_steps
        epochs = max(1, math.ceil(steps / math.ceil(n / batch)))
        callbacks = [KLWarmup(r.beta, max(1, epochs // 5) if fresh else 0)]
        data = fit_inputs(inputs, None, batch_size=batch, seed=r.seed + self.fits_)
        self.model_.fit(**data, epochs=epochs, verbose=0, callbacks=callbacks)
        self.fits_ += 1
        seen = np.asarray(mask).reshape(n, len(r.inputs), r.spec.window).sum(axis=(0, 2))
        self.training_info_ = {
            "windows": int(n),
            "epochs_run": int(epochs),
            "warm_start": not fresh,
            CHANNEL_SLOTS: [int(v) for v in seen],
        }
        return self

    @property
    def unlearned_channels(self) -> tuple[str, ...]:
        """Input channels the last fit saw too few observed slots of to judge (fewer than
        ``MIN_TRAIN_WINDOWS`` full windows hold): they are masked when scored. Empty for models
        fitted before this was recorded."""
        r = self._checked()
        seen = channel_slots(getattr(self, "training_info_", None), len(r.inputs))
        if seen is None:
            return ()
        least = MIN_TRAIN_WINDOWS * r.spec.window
        return tuple(c for c, k in zip(r.inputs, seen, strict=True) if k < least)

    def _judged_mask(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` (the model's columns) with the unlearned channels' slots masked."""
        unlearned = self.unlearned_channels
        if not unlearned:
            return mask
        r = self._checked()
        mask = np.array(mask, dtype="float32", copy=True)
        w = r.spec.window
        for j, c in enumerate(r.inputs):
            if c in unlearned:
                mask[:, j * w : (j + 1) * w] = 0.0
        return mask

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
        raw, score, _ = self._raw_scores(x, c, mask)
        return score, raw.nll, raw.expected

    def _raw_scores(self, x, c, mask):
        """The scorer's `RawScores` of these windows, their score (`score_windows`), and the
        mask of the model's columns it judged."""
        if self.model_ is None:
            raise NotFittedError("this WindowDetector is not fitted yet: call fit()")
        x = np.asarray(x, dtype="float32")
        if x.shape[0] == 0:
            empty = np.zeros((0, self.n_inputs), dtype="float32")
            return self._scorer(empty, None, empty), np.zeros(0), empty
        if mask is None:
            mask = np.ones_like(x)
        x, mask = self.select(x), self._judged_mask(self.select(np.asarray(mask, dtype="float32")))
        r = self._checked()
        raw = self._scorer(x * mask, c if r.spec.conditions else None, mask)
        return raw, self._scored(raw.score, raw.nll, mask), mask

    def _scored(self, score: np.ndarray, nll: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A window's score from the scorer's: the ``score_slots`` named (or the whole window,
        rescaled to a full one when slots are missing); ``mask`` the model's judged columns."""
        r = self._checked()
        w, m = r.spec.window, len(r.inputs)
        if r.score_slots is None:
            observed = np.maximum(mask.sum(axis=1), 1.0)
            return score * (w * m) / observed
        cols = [j * w + s for j in range(m) for s in range(w - r.score_slots, w)]
        return nll[:, cols].sum(axis=1)

    @property
    def term_metrics(self) -> tuple[str, ...]:
        """The metric of each likelihood term (`term_scores`): every metric among the inputs,
        in input order (a derived channel, the seasonal residual, belongs to its source); with
        ``student_t_dof`` the same again, for the Student-t terms."""
        r = self._checked()
        return self._metrics * (1 if r.student_t_dof is None else 2)

    @property
    def _metrics(self) -> tuple[str, ...]:
        r = self._checked()
        return tuple(dict.fromkeys(r.spec.metric_of(c) for c in r.inputs))

    def term_scores(
        self, x: np.ndarray, c: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        """`score_windows`' (score, per-slot nll, expected value), and the raw score of each
        likelihood term (rows × `term_metrics`): each metric's part of the score (the score
        itself with one metric), then, with ``student_t_dof``, the same under the Student-t."""
        raw, score, judged = self._raw_scores(x, c, mask)
        one = len(self._metrics) == 1
        terms = [score[:, None] if one else self.metric_terms(raw.nll, mask)]
        if raw.student_nll is not None:
            student = self._scored(raw.student_score, raw.student_nll, judged)
            terms.append(student[:, None] if one else self.metric_terms(raw.student_nll, mask))
        return (score, raw.nll, raw.expected), np.concatenate(terms, axis=1)

    def metric_terms(self, nll: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Each metric's part of the score (rows × metrics), from `score_windows`' nll.

        A shift in one of M metrics moves its own term as much as it moves the total, against
        a spread of one metric's noise rather than all M's: judged per metric, it is not
        averaged away. With one metric the term is the score. ``mask`` (full windows) is needed
        only when ``score_slots`` is None (terms rescaled to full slots, like the score)."""
        nll = np.asarray(nll, dtype="float64")
        r = self._checked()
        w = r.spec.window
        first = 0 if r.score_slots is None else w - r.score_slots
        blocks = nll.reshape(nll.shape[0], len(r.inputs), w)[:, :, first:]
        if r.score_slots is None and mask is not None:
            seen = self._judged_mask(self.select(np.asarray(mask, dtype="float64")))
            seen = seen.reshape(blocks.shape)
            blocks = blocks * (w / np.maximum(seen.sum(axis=2, keepdims=True), 1.0))
        sums = blocks.sum(axis=2)  # rows × inputs
        names = [r.spec.metric_of(c) for c in r.inputs]
        metrics = tuple(dict.fromkeys(names))
        owner = np.array([metrics.index(name) for name in names])
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
        from vaeguard.thresholds import REFERENCE_LEVELS, calibrate

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

    def score_batch(
        self, batch, likelihood: AnomalyLikelihood | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores of a `WindowBatch` and, with a likelihood state, their [0, 1] outputs."""
        raw = self.raw_scores(batch.x, batch.c, batch.mask)
        if likelihood is None:
            return raw, raw
        return raw, likelihood.update_many(batch.entities, raw)


def channel_slots(info: Any, n_inputs: int) -> list[int] | None:
    """The observed-slot counts a ``training_info_`` records for ``n_inputs`` channels; None
    when it records none; `DataError` when they are not that many counts (a corrupt file)."""
    if not isinstance(info, dict) or info.get(CHANNEL_SLOTS) is None:
        return None
    seen = info[CHANNEL_SLOTS]
    if not isinstance(seen, list) or len(seen) != n_inputs or not all(map(is_count, seen)):
        raise DataError(f"training_info.{CHANNEL_SLOTS}: expected {n_inputs} slot counts")
    return [int(v) for v in seen]
