"""`VAEDetector`: the scikit-learn / PyOD-style front of the model.

fit on normal data → decision_function (higher = more anomalous) → predict at a calibrated
threshold → explain which features are responsible. Preprocessing, threshold and training
record travel with the model in a bundle (`save` / `load`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vaeguard.contributions import top_contributions
from vaeguard.data import feature_matrix
from vaeguard.errors import BundleError, DataError, NotFittedError, VaeguardError
from vaeguard.limits import check_mc_samples
from vaeguard.preprocessing import ConditionEncoder, RobustScaler
from vaeguard.thresholds import (
    FOLLOW_BATCH,
    REFERENCE_LEVELS,
    FollowingThreshold,
    Threshold,
    calibrate,
    check_probability,
    contamination_threshold,
    is_budget,
    is_finite_real,
)

#: Fewest rows `fit` accepts: below this neither training nor calibration means anything.
MIN_TRAIN_ROWS = 16
#: Bounds of the data-relative latent size (``latent_dim="auto"``).
AUTO_LATENT_MIN, AUTO_LATENT_MAX = 2, 16


def resolve_latent_dim(latent_dim: int | str, n_features: int) -> int:
    """The latent size a fit uses: ``"auto"`` is half the feature count, within
    [AUTO_LATENT_MIN, AUTO_LATENT_MAX]; a latent as wide as the data lets the decoder copy a
    row through and explain a single-column shift away."""
    if latent_dim == "auto":
        return int(min(AUTO_LATENT_MAX, max(AUTO_LATENT_MIN, n_features // 2)))
    return int(latent_dim)


#: Scaled inputs are clipped to ±this many robust σ before scoring (every path: the Python API,
#: `vaeguard score`, the daemon), so an absurd but finite value (1e300) scores as "extremely
#: anomalous" instead of overflowing float32 to inf / NaN.
CLIP_SIGMAS = 1e6


@dataclass(frozen=True)
class ScoreResult:
    """Everything scoring a batch produces, in the user's units.

    ``contributions`` are the per-feature terms of the negative log-likelihood minus each
    feature's median term on normal data: near zero for a typical value, large and positive for
    the feature that makes the row unlikely. ``nll`` holds the raw terms (nats, scaled space).
    ``expected`` is always inside the model's plausible range (`VAEDetector.plausible_range`):
    the decoder's mean, clipped, unless a counterfactual replaced it. Rows explained by
    counterfactuals (`VAEDetector.counterfactual`) have their blamed features in ``blame``
    (rows × rounds, most responsible first, −1 elsewhere) and, in ``score_drop``, how much the
    score falls when each is set to its expected value after those blamed before it (NaN for
    the other cells). Both are None when no row was explained.
    """

    scores: np.ndarray
    threshold: float
    contributions: np.ndarray
    nll: np.ndarray
    observed: np.ndarray
    expected: np.ndarray
    feature_names: list[str]
    score_drop: np.ndarray | None = None
    blame: np.ndarray | None = None

    @property
    def is_anomaly(self) -> np.ndarray:
        return self.scores > self.threshold

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def top_contributions(self, row: int, k: int = 3) -> list[dict[str, Any]]:
        """The k features most responsible for one row's score.

        A row explained by counterfactuals lists its blamed features in order, each with its
        ``score_drop`` and its ``share`` of the row's positive drops; any other row is ranked by
        excess nats, with its share of the positive excess.
        """
        one = slice(row, row + 1)
        return top_contributions(
            self.contributions[one],
            self.observed[one],
            self.expected[one],
            self.feature_names,
            k,
            score_drop=None if self.score_drop is None else self.score_drop[one],
            blame=None if self.blame is None else self.blame[one],
        )[0]


def symptom_mask(symptoms: Sequence[str], names: Sequence[str]) -> np.ndarray | None:
    """Which of ``names`` are declared symptoms (None when none are); a name that is not a
    feature, or every feature a symptom, is a `DataError`."""
    if not isinstance(symptoms, list | tuple) or not all(isinstance(s, str) for s in symptoms):
        raise DataError("symptoms must be a list of feature names")
    if not symptoms:
        return None
    unknown = sorted(set(symptoms) - set(names))
    if unknown:
        raise DataError(
            f"symptoms: {', '.join(map(repr, unknown))} not among the features ({', '.join(names)})"
        )
    mask = np.isin(np.asarray(list(names), dtype=object), list(symptoms))
    if mask.all():
        raise DataError("symptoms: at least one feature must not be a symptom")
    return mask


class VAEDetector:
    """Variational-autoencoder anomaly detector, scored by Monte-Carlo reconstruction probability.

    The defaults of β, the latent size, the variance floor and the latent kNN term were chosen
    leave-one-dataset-out on the eleven shared ODDS sets (``benchmarks/odds.py --cv``;
    ``benchmarks/RESULTS-odds.md``); the others were kept because no candidate beat them there.

    Parameters
    ----------
    latent_dim, hidden, activation, dropout
        Architecture: encoder widths ``hidden``, mirrored in the decoder. ``latent_dim="auto"``
        is half the feature count within [2, 16] (`resolve_latent_dim`): a latent as wide as a
        narrow table lets the decoder copy a row through. A candidate of the leave-one-set-out
        choice that no fold picked, so not the default; ``latent_dim_`` is the size fitted.
    beta, kl_warmup_epochs
        Weight of the KL term in the ELBO and the epochs over which it ramps up from ~0.
    epochs, batch_size, learning_rate, patience, validation_fraction
        Training; early stopping watches the ELBO on a held-out share of the normal data,
        which also calibrates the threshold.
    min_log_var, max_log_var
        Bounds of the decoder's per-feature log-variance (in robust-scaled units). The floor
        of −3 (σ ≥ 0.22 robust σ) keeps a nearly constant feature from turning the likelihood
        into a spike.
    mc_samples
        L, the number of latent draws in the reconstruction probability, chosen by
        benchmarks/mc_samples.py (ranking quality against score noise and throughput;
        benchmarks/RESULTS-mc-samples.md).
    knn_weight, knn_k
        The latent space's own density (`vaeguard.model.latent_knn`): the score adds
        ``knn_weight`` × (robust σ of the reconstruction score on normal rows) per robust σ of
        the mean distance from the row's posterior mean to its ``knn_k`` nearest training
        posterior means. 0 scores by the reconstruction probability alone (and is what a bundle
        saved before this term existed loads with). Needs ``validation_fraction`` > 0.
    symptoms
        Feature names that are effects of the others (latency, error rate, load): when a row's
        other features are anomalous by themselves, its explanation blames the cause first, the
        symptoms following it (`vaeguard.model.counterfactual.explain_rows`). Scores are the
        same with or without. Empty: every feature is explained alike.
    threshold_method, budget, target_fpr, risk
        "budget" (the default: at most ``budget`` false alerts per 1,000 normal rows, the alert
        budget shared with window mode: the rank among the calibration scores, a fitted Pareto
        tail beyond them), "quantile" (false-positive rate ``target_fpr``) or "spot" (EVT,
        ``risk``).
    contamination
        PyOD's convention, for data that holds anomalies: the threshold is the
        (1 − contamination) quantile of the training rows' scores (``decision_scores_``), in
        (0, 0.5]. None (the default) keeps the calibrated threshold above.
    seed
        Makes training, sampling and scoring repeatable.
    """

    def __init__(
        self,
        latent_dim: int = 16,
        hidden: Sequence[int] = (64, 32),
        beta: float = 0.1,
        epochs: int = 200,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        mc_samples: int = 16,
        patience: int = 20,
        validation_fraction: float = 0.2,
        kl_warmup_epochs: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        min_log_var: float = -3.0,
        max_log_var: float = 4.0,
        knn_weight: float = 0.5,
        knn_k: int = 1,
        symptoms: Sequence[str] = (),
        threshold_method: str = "budget",
        budget: float = 10.0,
        target_fpr: float = 0.01,
        risk: float = 1e-3,
        contamination: float | None = None,
        seed: int | None = 0,
        verbose: int = 0,
    ):
        self.latent_dim = latent_dim
        self.hidden = tuple(hidden)
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.mc_samples = mc_samples
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.kl_warmup_epochs = kl_warmup_epochs
        self.activation = activation
        self.dropout = dropout
        self.min_log_var = min_log_var
        self.max_log_var = max_log_var
        self.knn_weight = knn_weight
        self.knn_k = knn_k
        self.symptoms = (symptoms,) if isinstance(symptoms, str) else tuple(symptoms)
        self.threshold_method = threshold_method
        self.budget = budget
        self.target_fpr = target_fpr
        self.risk = risk
        self.contamination = contamination
        self.seed = seed
        self.verbose = verbose
        self.model_ = None

    # -- scikit-learn conventions -------------------------------------------------------------

    _PARAMS = (
        "latent_dim", "hidden", "beta", "epochs", "batch_size", "learning_rate", "mc_samples",
        "patience", "validation_fraction", "kl_warmup_epochs", "activation", "dropout",
        "min_log_var", "max_log_var", "knn_weight", "knn_k", "symptoms", "threshold_method",
        "budget", "target_fpr", "risk", "contamination", "seed", "verbose",
    )  # fmt: skip

    #: Parameters added after the first bundles were written, and the value that reproduces
    #: a bundle whose manifest does not record them (what it was trained and scored with).
    _UNRECORDED_PARAMS: ClassVar[dict[str, Any]] = {
        "knn_weight": 0.0,
        "knn_k": 1,
        "symptoms": (),
        "budget": 10.0,
        "contamination": None,
    }

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params) -> VAEDetector:
        for name, value in params.items():
            if name not in self._PARAMS:
                raise ValueError(f"unknown parameter {name!r}")
            if name == "symptoms" and isinstance(value, str):
                value = (value,)
            setattr(self, name, tuple(value) if name in ("hidden", "symptoms") else value)
        return self

    def __repr__(self) -> str:
        """scikit-learn's: the parameters that differ from their defaults, by name."""
        defaults = {
            name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = {
            name: value
            for name, value in sorted(self.get_params().items())
            if name not in defaults or repr(value) != repr(defaults[name])
        }
        args = ", ".join(f"{name}={value!r}" for name, value in changed.items())
        return f"{type(self).__name__}({args})"

    # -- fitting ------------------------------------------------------------------------------

    def _training_inputs(self, X, conditions, feature_names, categorical, max_categories):
        """The feature matrix, its names, the fitted condition encoder and the encoded
        conditions, or the DataError that `fit` raises for them. Needs no Keras: the command line
        calls it first, so bad data is refused before the framework loads."""
        x_raw, names = feature_matrix(X, feature_names)
        n = x_raw.shape[0]
        if n < MIN_TRAIN_ROWS:
            raise DataError(f"need at least {MIN_TRAIN_ROWS} rows of normal data to train, got {n}")
        if len(set(names)) != len(names):
            raise DataError("feature names must be unique")
        symptom_mask(self.symptoms, names)
        condition_encoder = ConditionEncoder()
        if conditions is not None:
            condition_encoder = ConditionEncoder.fit(
                conditions, set(categorical or ()), max_categories
            )
            overlap = set(condition_encoder.names) & set(names)
            if overlap:
                raise DataError(
                    f"column(s) used both as feature and condition: {', '.join(sorted(overlap))}"
                )
        c_all = condition_encoder.transform(conditions) if conditions is not None else None
        if c_all is not None and c_all.shape[0] != n:
            raise DataError(f"conditions have {c_all.shape[0]} rows but the features have {n}")
        return x_raw, names, condition_encoder, c_all

    def fit(
        self,
        X,
        conditions=None,
        *,
        feature_names: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        callbacks: Sequence[Any] = (),
        init_from: VAEDetector | None = None,
        max_categories: int | None = None,
    ) -> VAEDetector:
        """Train on normal data and calibrate the threshold on a held-out share of it.

        ``conditions`` (CVAE) are extra columns the model conditions on rather than scores:
        a DataFrame, a mapping of column → values, or a numeric array. ``init_from`` warm-starts
        from another fitted detector's weights when the architectures match.
        ``max_categories`` caps the one-hot columns of each categorical condition (see
        `ConditionEncoder.fit`).
        """
        self._validate_params()  # parameters and data are checked before Keras loads
        x_raw, names, condition_encoder, c_all = self._training_inputs(
            X, conditions, feature_names, categorical, max_categories
        )
        n = x_raw.shape[0]

        from vaeguard._quiet import import_keras
        from vaeguard.model.counterfactual import PlausibleRange
        from vaeguard.model.training import fingerprint, fit_inputs, same_shapes, validation_split
        from vaeguard.model.vae import VAE, KLWarmup

        keras = import_keras()
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        train_idx, val_idx = validation_split(n, self.validation_fraction, self.seed)
        n_val = len(val_idx)

        scaler = self._fit_scaler(x_raw)
        x = scaler.transform(x_raw).astype("float32")

        model = VAE(
            n_features=len(names),
            latent_dim=resolve_latent_dim(self.latent_dim, len(names)),
            hidden=self.hidden,
            n_conditions=condition_encoder.width,
            beta=self.beta,
            activation=self.activation,
            dropout=self.dropout,
            min_log_var=self.min_log_var,
            max_log_var=self.max_log_var,
            seed=self.seed,
        )
        warm = init_from is not None and init_from.model_ is not None
        if warm and (
            init_from.model_.get_config() == model.get_config()
            or same_shapes(init_from.model_, model)
        ):
            model.set_weights(init_from.model_.get_weights())
            model.kl_weight.assign(self.beta)
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate))

        def inputs(idx):
            d = {"x": x[idx]}
            if c_all is not None:
                d["c"] = c_all[idx]
            return d

        fit_callbacks = [KLWarmup(self.beta, self.kl_warmup_epochs if init_from is None else 0)]
        data = fit_inputs(
            inputs(train_idx),
            inputs(val_idx) if n_val else None,
            batch_size=min(self.batch_size, len(train_idx)),
            seed=self.seed,
        )
        if n_val:
            fit_callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=self.patience,
                    restore_best_weights=True,
                    start_from_epoch=self.kl_warmup_epochs if init_from is None else 0,
                )
            )
        fit_callbacks.extend(callbacks)
        history = model.fit(
            **data, epochs=self.epochs, verbose=self.verbose, callbacks=fit_callbacks
        )

        self.model_ = model
        self.latent_dim_ = model.latent_dim
        self.feature_names_ = names
        self.n_features_in_ = len(names)
        self.scaler_ = scaler
        self.plausible_range_ = PlausibleRange.fit(x_raw)  # where expected values may lie
        self.conditions_ = condition_encoder
        self.history_ = {k: [float(v) for v in vs] for k, vs in history.history.items()}
        self.latent_knn_ = None
        self._scorer = None

        calib_idx = val_idx if n_val else train_idx
        raw = self._raw_scores(x[calib_idx], None if c_all is None else c_all[calib_idx])
        self.baseline_ = np.median(raw.nll, axis=0)
        scores = raw.score
        if self.knn_weight and n_val:
            self.latent_knn_ = self._fit_latent_knn(x, c_all, train_idx, raw)
            self._scorer = None
            scores = scores + self.latent_knn_.term(raw.z_mean)
        self.threshold_rule_ = calibrate(
            scores,
            self.threshold_method,
            target_fpr=self.target_fpr,
            risk=self.risk,
            budget=self.budget,
        )
        self.score_reference_ = np.quantile(scores, REFERENCE_LEVELS)
        # PyOD's attributes: every training row's score, and its label at the threshold.
        self.decision_scores_ = self.score_matrix(x_raw, c_all).scores
        if self.contamination is not None:
            self.threshold_rule_ = contamination_threshold(
                self.decision_scores_, self.contamination
            )
        self.training_info_ = {
            "rows": int(n),
            "latent_dim": int(model.latent_dim),  # as resolved ("auto": from the feature count)
            "train_rows": len(train_idx),
            "validation_rows": int(n_val),
            "epochs_run": len(history.epoch),
            "final": {k: vs[-1] for k, vs in self.history_.items()},
            "best_val_loss": min(self.history_["val_loss"])
            if "val_loss" in self.history_
            else None,
            "data_fingerprint": fingerprint(x_raw, c_all),
            "scores": score_summary(self.decision_scores_),
        }
        return self

    def _fit_scaler(self, x_raw: np.ndarray) -> RobustScaler:
        """The feature scaling learned at fit (robust: median and IQR)."""
        return RobustScaler.fit(x_raw)

    def _fit_latent_knn(self, x, c_all, train_idx, calibration):
        """The latent kNN term: reference = posterior means of (a subsample of) the training
        part; normalized on the calibration rows (``calibration``: their raw scores)."""
        from vaeguard.model.latent_knn import LatentKNN, reference_sample

        ref_idx = train_idx[reference_sample(len(train_idx), self.seed)]
        ref = self._raw_scores(x[ref_idx], None if c_all is None else c_all[ref_idx])
        return LatentKNN.fit(
            ref.z_mean,
            calibration.z_mean,
            calibration.score,
            k=self.knn_k,
            knn_weight=self.knn_weight,
        )

    def _validate_params(self) -> None:
        if self.threshold_method not in ("budget", "quantile", "spot"):
            raise ValueError(
                "threshold_method must be 'budget', 'quantile' or 'spot', "
                f"got {self.threshold_method!r}"
            )
        if not is_budget(self.budget):
            raise ValueError("budget must be in (0, 1000) false alerts per 1,000 rows")
        # (checked before training, not when the threshold is fitted after it)
        check_probability("target_fpr", self.target_fpr)
        check_probability("risk", self.risk)
        c = self.contamination
        if c is not None and not (is_finite_real(c) and 0.0 < c <= 0.5):
            raise ValueError(f"contamination must be None or in (0, 0.5], got {c!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must be in [0, 1)")
        if not (is_finite_real(self.knn_weight) and self.knn_weight >= 0):
            raise ValueError("knn_weight must be a finite number ≥ 0")
        for name in ("beta", "min_log_var", "max_log_var", "learning_rate", "dropout"):
            if not is_finite_real(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.beta < 0 or self.learning_rate <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("beta must be ≥ 0, learning_rate > 0 and dropout in [0, 1)")
        if self.min_log_var >= self.max_log_var:
            raise ValueError("min_log_var must be below max_log_var")
        if self.latent_dim != "auto" and (
            isinstance(self.latent_dim, bool | str) or int(self.latent_dim) < 1
        ):
            raise ValueError(f"latent_dim must be 'auto' or at least 1, got {self.latent_dim!r}")
        for name in ("epochs", "batch_size", "knn_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        check_mc_samples(self.mc_samples)  # at least 1, and bounded
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {s!r}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError("hidden must be a non-empty sequence of positive layer widths")

    # -- scoring ------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self.model_ is None:
            raise NotFittedError(
                "this VAEDetector is not fitted yet: call fit() or VAEDetector.load()"
            )

    @property
    def scorer(self):
        """The compiled Monte-Carlo scorer, built on first use; its ``score`` is the detector's
        score (with the latent kNN term when the model has one)."""
        self._check_fitted()
        if getattr(self, "_scorer", None) is None:
            from vaeguard.model.latent_knn import ComposedScorer
            from vaeguard.model.scoring import Scorer

            scorer = Scorer(
                self.model_, self.mc_samples, seed=0 if self.seed is None else self.seed
            )
            knn = getattr(self, "latent_knn_", None)
            self._scorer = scorer if knn is None else ComposedScorer(scorer, knn)
        return self._scorer

    def _raw_scores(self, x_scaled: np.ndarray, c: np.ndarray | None):
        return self.scorer(x_scaled.astype("float32"), c)

    def prepare(self, X, conditions=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Validated feature matrix (user units) and encoded conditions for scoring.

        Conditions may be passed separately or, for named input, as extra columns of X.
        """
        self._check_fitted()
        X = named_row(X, self.feature_names_)
        x_raw, _ = feature_matrix(X, self.feature_names_)
        c = None
        if self.conditions_.columns:
            source = conditions if conditions is not None else X
            if conditions is None and not hasattr(X, "columns") and not isinstance(X, dict | list):
                raise DataError(
                    f"this model is conditional: pass conditions for {', '.join(self.conditions_.names)}"
                )
            c = self.conditions_.transform(source)
            if c.shape[0] != x_raw.shape[0]:
                raise DataError(
                    f"conditions have {c.shape[0]} rows but the features have {x_raw.shape[0]}"
                )
        return x_raw, c

    def score_matrix(self, x_raw: np.ndarray, c: np.ndarray | None = None) -> ScoreResult:
        """Score an already validated float matrix (the daemon's hot path)."""
        # an absurd but finite value scores as "extremely anomalous" instead of overflowing
        x_scaled = np.clip(self.scaler_.transform(x_raw), -CLIP_SIGMAS, CLIP_SIGMAS)
        raw = self._raw_scores(x_scaled, c)
        return ScoreResult(
            scores=raw.score,
            threshold=self.threshold_,
            contributions=raw.nll - self.baseline_,
            nll=raw.nll,
            observed=x_raw,
            expected=self._plausible(self.scaler_.inverse_transform(raw.expected)),
            feature_names=self.feature_names_,
        )

    def score(self, X, conditions=None) -> ScoreResult:
        """Scores, per-feature contributions and expected values for every row."""
        return self.score_matrix(*self.prepare(X, conditions))

    def decision_function(self, X, conditions=None) -> np.ndarray:
        """Anomaly score −log p̂(x) per row, in nats: higher = more anomalous."""
        return self.score(X, conditions).scores

    def predict(self, X, conditions=None, *, return_confidence: bool = False):
        """1 for rows scoring above the calibrated threshold, else 0 (with
        ``return_confidence``, also `predict_confidence`, as PyOD's ``predict``)."""
        labels = self.score(X, conditions).is_anomaly.astype("int64")
        if return_confidence:
            return labels, self.predict_confidence(X, conditions)
        return labels

    def predict_stream(self, X, conditions=None, *, batch: int = FOLLOW_BATCH) -> np.ndarray:
        """Labels of rows judged in order as the daemon judges a stream: the budget's threshold
        follows the recent normal rows (`vaeguard.thresholds.FollowingThreshold`), learned
        after every ``batch`` rows, so a slowly drifting process does not alarm on every row
        while an incident is not learned. `predict` judges every row by the threshold fixed at
        training. Needs ``threshold_method="budget"``."""
        self._check_fitted()
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError("batch must be a positive number of rows")
        following = FollowingThreshold(self.threshold_rule_)
        return following.replay(self.decision_function(X, conditions), batch).astype("int64")

    def fit_predict(self, X, y=None, **fit_params) -> np.ndarray:
        """`fit`, then the training rows' labels (``labels_``); ``y`` is ignored, as PyOD's."""
        return self.fit(X, **fit_params).labels_

    def predict_proba(
        self, X, conditions=None, *, method: str = "linear", return_confidence: bool = False
    ):
        """PyOD's outlier probability, shape (n, 2): [P(normal), P(outlier)] per row.

        "linear": the score min-max scaled over the training rows' scores, clipped to [0, 1];
        "unify": erf of the score standardized by their mean and standard deviation
        (Kriegel et al. 2011), clipped to [0, 1]. Either is a ranking made comparable, not a
        calibrated probability: the p-value of a budget threshold (`score`) is that.
        """
        if method not in ("linear", "unify"):
            raise ValueError(f"method must be 'linear' or 'unify', got {method!r}")
        scores = self.decision_function(X, conditions)
        summary = self._score_summary()
        if method == "linear":
            span = summary["max"] - summary["min"]
            p = (scores - summary["min"]) / span if span > 0 else (scores > summary["max"]) * 1.0
        else:
            sd = summary["std"]
            z = (scores - summary["mean"]) / (sd * math.sqrt(2.0)) if sd > 0 else scores * 0.0
            p = np.vectorize(math.erf, otypes=["float64"])(z) if z.size else z
        p = np.clip(np.asarray(p, dtype="float64"), 0.0, 1.0)
        proba = np.column_stack([1.0 - p, p])
        if return_confidence:
            return proba, self.predict_confidence(X, conditions)
        return proba

    def predict_confidence(self, X, conditions=None) -> np.ndarray:
        """PyOD's confidence in each row's label (ExCeed, Perini et al. 2020): how likely the
        same label is under a perturbed training set, from the row's rank among the training
        rows' scores. Needs ``decision_scores_`` (a fitted detector, not a loaded bundle)."""
        train = getattr(self, "decision_scores_", None)
        if train is None:
            raise NotFittedError(
                "predict_confidence needs the training rows' scores (decision_scores_): "
                "a loaded bundle does not keep them; fit the detector"
            )
        scores = self.decision_function(X, conditions)
        n = len(train)
        contamination = (
            self.contamination if self.contamination is not None else float(self.labels_.mean())
        )
        ranks = np.searchsorted(np.sort(train), scores, side="right")
        unique, inverse = np.unique(ranks, return_inverse=True)
        tail = binomial_tail(n - int(n * contamination), n, (1.0 + unique) / (2.0 + n))
        conf = tail[inverse.ravel()]
        labels = (scores > self.threshold_).astype("int64")
        return np.where(labels == 1, conf, 1.0 - conf).clip(0.0, 1.0)

    def _score_summary(self) -> dict[str, float]:
        """min, max, mean and standard deviation of the training rows' scores (kept in the
        bundle, so a loaded detector has `predict_proba` too)."""
        self._check_fitted()
        train = getattr(self, "decision_scores_", None)
        if train is not None:
            return score_summary(train)
        summary = (getattr(self, "training_info_", None) or {}).get("scores")
        if summary is None:
            raise NotFittedError(
                "predict_proba needs the training rows' scores, which this bundle (saved before "
                "they were kept) does not record: fit the detector again"
            )
        keys = ("min", "max", "mean", "std")
        if not isinstance(summary, dict) or not all(
            isinstance(summary.get(k), int | float) and math.isfinite(summary[k]) for k in keys
        ):
            raise BundleError(f"corrupt bundle: training.scores must hold finite {', '.join(keys)}")
        return {k: float(summary[k]) for k in keys}

    def explain(self, X, conditions=None, *, centered: bool = True) -> np.ndarray:
        """n_rows × n_features contributions: higher = more responsible for the row's score.

        ``centered=False`` gives the raw per-feature negative log-likelihood terms.
        """
        result = self.score(X, conditions)
        return result.contributions if centered else result.nll

    # -- counterfactual explanations ---------------------------------------------------------

    @property
    def plausible_range(self):
        """Where expected values may lie, per feature (`vaeguard.model.counterfactual`): the
        training range plus a margin, or median ± a few robust σ for bundles saved without it."""
        from vaeguard.model.counterfactual import PlausibleRange

        self._check_fitted()
        stored = getattr(self, "plausible_range_", None)
        if stored is not None:
            return stored
        fallback = getattr(self, "_fallback_range", None)
        if fallback is None or fallback[0] is not self.scaler_:
            fallback = (self.scaler_, PlausibleRange.from_scaler(self.scaler_))
            self._fallback_range = fallback
        return fallback[1]

    def _plausible(self, values: np.ndarray) -> np.ndarray:
        """Values (user units) forced into the plausible range; non-finite ones → the median."""
        r = self.plausible_range
        return r.clip(values, np.clip(self.scaler_.center, r.low, r.high))

    @property
    def imputer(self):
        """The compiled conditional imputation (built on first use, for the current model)."""
        from vaeguard.model.counterfactual import ITERATIONS, Imputer

        r = self.plausible_range
        cached = getattr(self, "_imputer", None)
        if cached is None or cached[0] is not self.model_ or cached[1] is not r:
            low = self.scaler_.transform(r.low)
            high = self.scaler_.transform(r.high)
            cached = (self.model_, r, Imputer(self.model_, low, high, ITERATIONS))
            self._imputer = cached
        return cached[2]

    def counterfactual_matrix(
        self,
        x_raw: np.ndarray,
        c: np.ndarray | None = None,
        *,
        base: ScoreResult | None = None,
        rows: str | np.ndarray = "anomalous",
        k: int = 3,
        candidates: int | None = None,
    ) -> ScoreResult:
        """`score_matrix` plus counterfactual explanations of the selected rows.

        ``rows``: "anomalous", "all", or row indices. Each of a row's top ``candidates``
        features by excess nats (None: `vaeguard.model.counterfactual.CANDIDATES`;
        ``n_features_in_`` for every feature) is imputed from the others (VAE conditional
        imputation, inside the plausible range) and the row rescored; the feature whose
        correction lowers the score most is blamed and corrected, and so on ``k`` times
        (`vaeguard.model.counterfactual.explain_rows`). ``base`` is this matrix's
        `score_matrix` result, if already computed.
        """
        from vaeguard.model.counterfactual import (
            CANDIDATES,
            INPUT_CLIP,
            candidate_features,
            explain_rows,
        )

        per_row = CANDIDATES if candidates is None else candidates

        if base is None:
            base = self.score_matrix(x_raw, c)
        n, d = base.contributions.shape
        if isinstance(rows, str):
            if rows not in ("anomalous", "all"):
                raise ValueError(f"rows must be 'anomalous', 'all' or indices, got {rows!r}")
            idx = np.flatnonzero(base.is_anomaly) if rows == "anomalous" else np.arange(n)
        else:
            idx = np.unique(np.asarray(rows, dtype="int64"))
        feats = candidate_features(base.contributions[idx], per_row)
        symptoms = symptom_mask(self.symptoms, self.feature_names_)
        causes = None
        if symptoms is not None:
            cause_cols = np.flatnonzero(~symptoms)
            causes = cause_cols[candidate_features(base.contributions[idx][:, cause_cols], per_row)]
        rounds = max(0, min(int(k), feats.shape[1]))
        drop = np.full((n, d), np.nan)
        blame = np.full((n, rounds), -1, dtype="int64")
        expected = np.array(base.expected, dtype="float64", copy=True)
        if idx.size and rounds:
            x = np.clip(self.scaler_.transform(np.asarray(x_raw)[idx]), -INPUT_CLIP, INPUT_CLIP)
            cf = explain_rows(
                self.scorer,
                self.imputer,
                x.astype("float32"),
                None if c is None else np.asarray(c)[idx],
                base.scores[idx],
                feats,
                rounds,
                symptoms=symptoms,
                causes=causes,
                threshold=base.threshold,
            )
            done = ~np.isnan(cf.expected)
            imputed = self._plausible(self.scaler_.inverse_transform(cf.expected))
            expected[idx] = np.where(done, imputed, expected[idx])
            drop[idx] = cf.score_drop
            blame[idx] = cf.order
        return replace(base, expected=expected, score_drop=drop, blame=blame)

    def counterfactual(
        self,
        X,
        conditions=None,
        *,
        rows: str | np.ndarray = "anomalous",
        k: int = 3,
        candidates: int | None = None,
    ) -> ScoreResult:
        """Scores with counterfactual explanations: for each selected row, the ``k`` features
        whose correction lowers the score most, what each should have been given the others,
        and by how much (see `counterfactual_matrix`); ``result.top_contributions(i)`` lists
        them in that order."""
        x_raw, c = self.prepare(X, conditions)
        return self.counterfactual_matrix(x_raw, c, rows=rows, k=k, candidates=candidates)

    # -- threshold ----------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        return self.threshold_

    @property
    def threshold_(self) -> float:
        """The decision threshold on the score, a number (PyOD's and scikit-learn's
        convention); how it was chosen is ``threshold_rule_``. Setting it is `set_threshold`."""
        self._check_fitted()
        return float(self.threshold_rule_.value)

    @threshold_.setter
    def threshold_(self, value: float) -> None:
        if isinstance(value, Threshold):
            raise TypeError("threshold_ is a number; set the calibrated rule as threshold_rule_")
        self.set_threshold(value)

    @property
    def labels_(self) -> np.ndarray:
        """PyOD's labels of the training rows: 1 where ``decision_scores_`` is above
        ``threshold_`` (the current threshold: a later `calibrate` or `set_threshold` moves
        them too). A loaded bundle keeps no training rows, so it has none."""
        scores = getattr(self, "decision_scores_", None)
        if scores is None:
            raise AttributeError(
                "labels_: the training rows' labels exist after fit (a loaded bundle keeps no "
                "training rows)"
            )
        return (scores > self.threshold_).astype("int64")

    def set_threshold(self, value: float) -> VAEDetector:
        """Override the calibrated threshold (recorded as method "manual")."""
        self._check_fitted()
        if not is_finite_real(value):
            raise ValueError("threshold must be a finite number")
        self.threshold_rule_ = Threshold(float(value), "manual", {}, 0)
        return self

    def calibrate(
        self,
        X,
        conditions=None,
        *,
        method: str | None = None,
        target_fpr: float | None = None,
        risk: float | None = None,
        budget: float | None = None,
    ) -> Threshold:
        """Re-calibrate the threshold on fresh normal data (e.g. a larger held-out set)."""
        scores = self.score(X, conditions).scores
        self.threshold_rule_ = calibrate(
            scores,
            method or self.threshold_method,
            target_fpr=target_fpr if target_fpr is not None else self.target_fpr,
            risk=risk if risk is not None else self.risk,
            budget=budget if budget is not None else self.budget,
        )
        self.score_reference_ = np.quantile(scores, REFERENCE_LEVELS)
        return self.threshold_rule_

    # -- latent space and generation ------------------------------------------------------------

    def encode(self, X, conditions=None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means μ and standard deviations σ of q(z | x) per row."""
        from keras import ops

        x_raw, c = self.prepare(X, conditions)
        x = self.scaler_.transform(x_raw).astype("float32")
        z_mean, z_log_var = self.model_.encode(x, c)
        return ops.convert_to_numpy(z_mean).astype("float64"), np.exp(
            0.5 * ops.convert_to_numpy(z_log_var)
        ).astype("float64")

    def decode(
        self, z, conditions=None, *, noise: bool = False, seed: int | None = None
    ) -> np.ndarray:
        """Map latent points through the decoder alone, back to the user's units.

        With ``noise`` the output is a draw from p(x | z) rather than its mean.
        """
        from keras import ops

        self._check_fitted()
        z = np.asarray(z, dtype="float32").reshape(-1, self.model_.latent_dim)
        c = self._conditions_for(z.shape[0], conditions)
        mean, log_var = self.model_.decode(z, c)
        mean = ops.convert_to_numpy(mean).astype("float64")
        if noise:
            rng = np.random.default_rng(seed)
            std = np.exp(0.5 * ops.convert_to_numpy(log_var).astype("float64"))
            mean = mean + std * rng.standard_normal(mean.shape)
        return self.scaler_.inverse_transform(mean)

    def sample(
        self, n: int, conditions=None, *, noise: bool = True, seed: int | None = None
    ) -> np.ndarray:
        """Generate n synthetic rows: z ~ N(0, I) through the decoder (and its noise)."""
        self._check_fitted()
        if n < 1:
            raise ValueError("n must be at least 1")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        z = rng.standard_normal((n, self.model_.latent_dim))
        return self.decode(z, conditions, noise=noise, seed=rng.integers(2**31))

    def interpolate(self, a, b, steps: int = 10, conditions=None) -> np.ndarray:
        """Decoded points on the straight line between the latent means of rows a and b."""
        if steps < 2:
            raise ValueError("steps must be at least 2")
        mu_a, _ = self.encode(_one_row(a, self), None if conditions is None else conditions)
        mu_b, _ = self.encode(_one_row(b, self), None if conditions is None else conditions)
        t = np.linspace(0.0, 1.0, steps)[:, None]
        return self.decode((1.0 - t) * mu_a + t * mu_b, conditions)

    def _conditions_for(self, n: int, conditions) -> np.ndarray | None:
        if not self.conditions_.columns:
            return None
        if conditions is None:
            raise DataError(
                f"this model is conditional: pass conditions for {', '.join(self.conditions_.names)}"
            )
        if isinstance(conditions, dict) and all(
            not isinstance(v, list | tuple | np.ndarray) for v in conditions.values()
        ):
            conditions = {k: [v] * n for k, v in conditions.items()}
        c = self.conditions_.transform(conditions)
        if c.shape[0] == 1 and n > 1:
            c = np.repeat(c, n, axis=0)
        if c.shape[0] != n:
            raise DataError(f"conditions have {c.shape[0]} rows, expected 1 or {n}")
        return c

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path) -> None:
        """Write a model bundle directory: model.keras + bundle.json."""
        from vaeguard.bundle import save_bundle

        self._check_fitted()
        save_bundle(self, path)

    @classmethod
    def load(cls, path) -> VAEDetector:
        """Load and validate a bundle; a corrupt or incompatible one raises BundleError."""
        return load_bundle(path)


def named_row(X, names: Sequence[str]):
    """A pandas Series whose labels hold every feature name (a row of a DataFrame:
    ``X.iloc[0]``, ``df.loc[key]``) as a one-row DataFrame, matched by name; anything else
    as it is."""
    if getattr(X, "ndim", None) != 1 or not hasattr(X, "to_frame") or not hasattr(X, "index"):
        return X
    labels = list(X.index)
    if not all(name in labels for name in names):
        return X
    if len(set(labels)) != len(labels):
        raise DataError("a row's labels must be unique (a Series with a repeated label)")
    return X.to_frame().T.infer_objects()


def binomial_tail(k: int, n: int, p: np.ndarray) -> np.ndarray:
    """P(Binomial(n, p) > k) for each p (SciPy's ``binom.sf``, summed in log space)."""
    j = np.arange(k + 1, n + 1, dtype="float64")
    if j.size == 0:
        return np.zeros(len(p))
    log_comb = math.lgamma(n + 1) - _lgamma(j + 1) - _lgamma(n - j + 1)
    p = np.clip(np.asarray(p, dtype="float64"), 1e-300, 1.0 - 1e-16)
    out = np.empty(len(p))
    step = max(1, 2**22 // j.size)  # rows per chunk: a few million terms at a time
    for lo in range(0, len(p), step):
        q = p[lo : lo + step, None]
        terms = log_comb + j * np.log(q) + (n - j) * np.log1p(-q)
        top = terms.max(axis=1, keepdims=True)
        out[lo : lo + step] = np.exp(top[:, 0]) * np.exp(terms - top).sum(axis=1)
    return np.clip(out, 0.0, 1.0)


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.array([math.lgamma(v) for v in x])


def score_summary(scores: np.ndarray) -> dict[str, float]:
    s = np.asarray(scores, dtype="float64")
    return {
        "min": float(s.min()),
        "max": float(s.max()),
        "mean": float(s.mean()),
        "std": float(s.std()),
    }


def _one_row(row, detector: VAEDetector):
    if isinstance(row, dict):
        return [row]
    row = named_row(row, detector.feature_names_)
    if hasattr(row, "iloc"):
        return row.iloc[:1]
    arr = np.asarray(row)
    if arr.ndim == 1:
        return arr.reshape(1, -1)
    if hasattr(row, "iloc"):
        return row.iloc[:1]
    return arr[:1]


def load_bundle(path) -> VAEDetector:
    """Load a bundle into a ready `VAEDetector`, verifying the model file against the manifest
    (the tabular model's reader of the format `vaeguard.bundle` writes and checks)."""
    from vaeguard.bundle import has_window_section, load_model_file, read_manifest
    from vaeguard.ingest import short_repr

    path = Path(path)
    m = read_manifest(path)
    if has_window_section(m):
        raise BundleError(
            f"the bundle at {path} holds a window model, not a VAEDetector: load it with "
            "vaeguard.load_any or ViewSet.load"
        )
    model = load_model_file(path, m)

    try:
        conditions = ConditionEncoder.from_dict(m["conditions"])
    except _MALFORMED as exc:
        raise BundleError(f"corrupt bundle at {path}: bad conditions ({exc})") from None
    if model.n_features != len(m["features"]) or model.n_conditions != conditions.width:
        raise BundleError(
            f"corrupt bundle at {path}: the model expects {model.n_features} features and {model.n_conditions} "
            f"condition inputs, the manifest describes {len(m['features'])} and {conditions.width}"
        )

    params = {
        **VAEDetector._UNRECORDED_PARAMS,
        **{k: v for k, v in m["params"].items() if k in VAEDetector._PARAMS},
    }
    try:
        symptom_mask(params["symptoms"], m["features"])
        detector = VAEDetector(**params)
        detector._validate_params()  # as a fit checks them: a bundle is data
    except (VaeguardError, *_MALFORMED) as exc:
        raise BundleError(f"corrupt bundle at {path}: bad params ({exc})") from None
    try:
        _fill(detector, model, m, conditions, path)
    except BundleError:
        raise
    except (VaeguardError, *_MALFORMED) as exc:  # a value the checks above let through
        raise BundleError(
            f"corrupt bundle at {path}: {type(exc).__name__}: {short_repr(str(exc), 80)}"
        ) from None
    return detector


#: What reading a malformed manifest value can raise (a wrong type, a huge or absurd number).
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError)


def _fill(detector, model, m: dict[str, Any], conditions, path: Path) -> None:
    """Give a fresh `VAEDetector` the model and everything the checked manifest records."""
    from vaeguard.bundle import pinned_part

    detector.model_ = model
    detector.latent_dim_ = model.latent_dim
    detector.feature_names_ = list(m["features"])
    detector.n_features_in_ = len(m["features"])
    detector.scaler_ = RobustScaler.from_dict(m["scaler"])
    detector.conditions_ = conditions
    detector.threshold_rule_ = Threshold.from_dict(m["threshold"])
    detector.baseline_ = np.asarray(m["baseline"], dtype="float64")
    detector.plausible_range_ = None
    if m.get("plausible_range") is not None:
        from vaeguard.model.counterfactual import PlausibleRange

        detector.plausible_range_ = PlausibleRange.from_dict(m["plausible_range"])
    detector.score_reference_ = np.asarray(
        m.get("score_reference") or [detector.threshold_rule_.value], dtype="float64"
    )
    training = dict(m.get("training") or {})
    detector.history_ = training.pop("history", {})
    detector.training_info_ = training
    detector.bundle_extra_ = m.get("extra") or {}
    detector.latent_knn_ = None
    if m.get("latent_knn") is not None:
        from vaeguard.model.latent_knn import LatentKNN

        try:
            detector.latent_knn_ = LatentKNN.from_dict(m["latent_knn"], model.latent_dim)
        except ValueError as exc:
            raise BundleError(f"corrupt bundle at {path}: {exc}") from None
    else:
        # Saved before the latent kNN term existed (or without it): the score is the
        # reconstruction probability alone, as it was when the bundle was written.
        detector.knn_weight = 0.0
    detector.parts_ = {}
    parts = m.get("parts") or {}
    for name, digest in parts.items():  # names and pins checked by read_manifest
        detector.parts_[name] = load_bundle(pinned_part(path, name, digest))
    detector.manifest_ = m
    detector._scorer = None
