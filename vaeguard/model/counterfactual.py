"""Counterfactual explanations: what a feature *should* have been, and how much that explains.

For a feature j of a row x, the *expected* value is the model's belief about x_j given the
other features, found by VAE conditional imputation (Rezende et al. 2014; Mattei & Frellsen
2018): x_j is masked out (set to the training median, 0 in robust-scaled units, as the
model's missing-data mask does), the row is encoded and decoded, and the decoder's x_j is put
back in while every other feature stays as observed; the step can be repeated (``ITERATIONS``,
a pseudo-Gibbs fixed point). Each step's value is clipped to the feature's *plausible range*:
the training range widened by a margin, kept in the bundle, so an expected value is never
physically impossible.

The feature's *score drop* is how much the row's score falls when x_j is replaced by that
expected value, with the same fixed Monte-Carlo draws as the score itself. The feature whose
correction explains most of the anomaly is the one to blame; the per-feature likelihood terms
of an anomalous row cannot say that, because the decoder of an off-manifold row is pulled off
the manifold too. `explain_rows` blames greedily: the best correction is applied and the
search repeats on the corrected row, so later expected values are not pulled off the manifold
by the feature already blamed.

Some features are effects of others (p99 latency follows a saturated CPU). When both leave the
training range, the effect usually leaves it much further, and the data alone then blames it.
Features declared as *symptoms* change that for the rows whose other features are anomalous by
themselves: the cause is blamed first, the symptoms imputed again after its correction.

The graph is `keras.ops` only, compiled and padded to the scorer's batch buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from keras import ops

from vaeguard.model.scoring import _pad, chunks, compile_function, condition_width

#: The plausible range is [min − MARGIN·span, max + MARGIN·span] of the training rows
#: (span = max − min), per feature, not crossing zero for a feature whose training values all
#: have one sign. Chosen by benchmarks/attribution.py on the ODDS sets: the smallest margin
#: whose range holds nearly every held-out normal value, leave one set out
#: (benchmarks/RESULTS-attribution.md).
MARGIN = 0.25
#: Encode → decode steps of the conditional imputation. benchmarks/attribution.py chose it on
#: planted shifts (ODDS sets and the demo model's normal data): the fewest steps that impute the
#: planted feature within 1 σ of its true value about as often as the best count: 1 with the
#: earlier defaults, 2 in every leave-one-set-out fold since the latent-kNN defaults (2026-12-02).
ITERATIONS = 2
#: Features per anomalous row that get a counterfactual: the top ones by excess likelihood
#: term (all of them when the model has fewer). Bounds the cost of a row at CANDIDATES ×
#: (ITERATIONS + 1) model passes.
CANDIDATES = 8
#: A correction that lowers a row's score by less than this many nats explains nothing: when
#: no candidate's does better, the round blames the candidate with the largest excess.
MIN_GAIN = 0.01
#: Models saved before the plausible range existed fall back to median ± this many robust σ.
FALLBACK_SIGMAS = 6.0
#: Scaled inputs are clipped to ±this before imputation (as `TabularServing` does before
#: scoring), so an absurd but finite value cannot overflow float32.
INPUT_CLIP = 1e6


@dataclass(frozen=True)
class PlausibleRange:
    """Per feature, the interval an expected value may take, in the user's units."""

    low: np.ndarray
    high: np.ndarray
    margin: float
    basis: str  # "training range" or "scaler fallback"

    @classmethod
    def fit(cls, x: np.ndarray, margin: float = MARGIN) -> PlausibleRange:
        """The training rows' range widened by ``margin`` × its span on each side; a feature
        never negative in training is never expected negative (and likewise for positive)."""
        x = np.asarray(x, dtype="float64")
        lo, hi = x.min(axis=0), x.max(axis=0)
        span = hi - lo
        low, high = lo - margin * span, hi + margin * span
        low = np.where(lo >= 0, np.maximum(low, 0.0), low)
        high = np.where(hi <= 0, np.minimum(high, 0.0), high)
        return cls(low, high, float(margin), "training range")

    @classmethod
    def from_scaler(cls, scaler, sigmas: float = FALLBACK_SIGMAS) -> PlausibleRange:
        """For bundles saved before the range was kept: median ± ``sigmas`` robust σ."""
        center = np.asarray(scaler.center, dtype="float64")
        scale = np.asarray(scaler.scale, dtype="float64")
        return cls(
            center - sigmas * scale, center + sigmas * scale, float(sigmas), "scaler fallback"
        )

    def clip(self, values: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
        """Values forced into the range; a non-finite value becomes ``fallback`` (default: the
        middle of the range) before clipping."""
        values = np.asarray(values, dtype="float64")
        if fallback is None:
            fallback = 0.5 * (self.low + self.high)
        fallback = np.broadcast_to(np.asarray(fallback, dtype="float64"), values.shape)
        out = np.where(np.isfinite(values), values, fallback)
        return np.clip(out, self.low, self.high)

    def contains(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype="float64")
        return (values >= self.low) & (values <= self.high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "margin": self.margin,
            "basis": self.basis,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlausibleRange:
        return cls(
            np.asarray(d["low"], dtype="float64"),
            np.asarray(d["high"], dtype="float64"),
            float(d.get("margin", MARGIN)),
            str(d.get("basis", "training range")),
        )


def conditional_imputation(model, x, c, keep, low, high, steps: int):
    """x with the cells where ``keep`` is 0 imputed from the rest, in `keras.ops`.

    Scaled space throughout; ``low`` / ``high`` (1 × D) bound every imputed value. The imputed
    cells start at 0 (the training median) and each step re-encodes the row with the current
    fill and takes the decoder's mean at the posterior mean.
    """
    x, keep = ops.convert_to_tensor(x), ops.convert_to_tensor(keep)
    low, high = ops.convert_to_tensor(low), ops.convert_to_tensor(high)
    fill = x * keep
    missing = 1.0 - keep
    for _ in range(steps):
        z_mean, _ = model.encode(fill, c)
        mean, _ = model.decode(z_mean, c)
        mean = ops.minimum(ops.maximum(mean, low), high)
        fill = x * keep + mean * missing
    return fill


class Imputer:
    """Batched, compiled conditional imputation of a `VAE` (see `conditional_imputation`).

    Batches are cut and padded as the scorer's (`vaeguard.model.scoring.chunks`).
    """

    def __init__(self, model, low_scaled: np.ndarray, high_scaled: np.ndarray, steps: int):
        if steps < 1:
            raise ValueError("steps must be at least 1")
        self.model = model
        self.steps = int(steps)
        self.low = np.asarray(low_scaled, dtype="float32").reshape(1, -1)
        self.high = np.asarray(high_scaled, dtype="float32").reshape(1, -1)
        conditional = model.n_conditions > 0

        def graph(x, c, keep):
            return conditional_imputation(
                model, x, c if conditional else None, keep, self.low, self.high, self.steps
            )

        self._graph = compile_function(graph, model)

    def __call__(self, x: np.ndarray, c: np.ndarray | None, keep: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if c is None:
            c = np.zeros((n, condition_width(self.model)), dtype="float32")
        out = []
        for start, stop, padded in chunks(n):
            size = stop - start
            filled = self._graph(
                _pad(x[start:stop], padded),
                _pad(c[start:stop], padded),
                _pad(keep[start:stop], padded),
            )
            out.append(ops.convert_to_numpy(filled)[:size])
        if not out:
            return np.zeros((0, self.model.n_features), dtype="float32")
        return np.concatenate(out)


@dataclass(frozen=True)
class Counterfactuals:
    """The explanation of each row, found greedily (see `explain_rows`)."""

    #: (n, R) the features blamed, most responsible first (−1 where a row has fewer).
    order: np.ndarray
    #: (n, D) scaled space: the value each blamed feature is corrected to (NaN elsewhere).
    expected: np.ndarray
    #: (n, D) nats: how much that correction lowers the score, on top of the corrections
    #: ranked before it (NaN elsewhere). They add up: the first k drops are the score of the row
    #: minus the score of the row with its first k blamed features corrected.
    score_drop: np.ndarray


def candidate_features(contributions: np.ndarray, candidates: int | None) -> np.ndarray:
    """(n, C) indices of each row's top features by excess likelihood term."""
    d = contributions.shape[1]
    c = d if candidates is None else max(1, min(int(candidates), d))
    ranked = np.nan_to_num(contributions, nan=-np.inf)
    if c == d:
        return np.argsort(-ranked, axis=1, kind="stable")
    part = np.argpartition(-ranked, c - 1, axis=1)[:, :c]
    order = np.argsort(-np.take_along_axis(ranked, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def single_feature_counterfactuals(
    scorer,
    imputer: Imputer,
    x: np.ndarray,
    c: np.ndarray | None,
    features: np.ndarray,
    follow: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Impute each (row, feature) pair of ``features`` (n × C indices) on its own and rescore.

    ``follow`` (bool, D): features imputed again along with every correction (a cause's
    symptoms). Returns (imputed value, rescored score), both n × C, and the corrected rows
    (n × C × D); ``x`` is scaled.
    """
    n, n_c = features.shape
    d = x.shape[1]
    if n == 0 or n_c == 0:
        return np.zeros((n, n_c)), np.zeros((n, n_c)), np.zeros((n, n_c, d), dtype="float32")
    rows = np.repeat(np.arange(n), n_c)
    cols = features.reshape(-1)
    x_rep = np.asarray(x, dtype="float32")[rows]
    keep = np.ones_like(x_rep)
    if follow is not None:
        keep[:, np.asarray(follow, dtype=bool)] = 0.0
    keep[np.arange(rows.size), cols] = 0.0
    c_rep = None if c is None else np.asarray(c)[rows]
    filled = imputer(x_rep, c_rep, keep)
    rescored = scorer(filled, c_rep).score
    values = filled[np.arange(rows.size), cols].astype("float64")
    return values.reshape(n, n_c), rescored.reshape(n, n_c), filled.reshape(n, n_c, d)


def symptom_free_scores(scorer, imputer, x, c, symptoms: np.ndarray) -> np.ndarray:
    """Each row's score once its ``symptoms`` (bool, D) are imputed from its other features:
    above the threshold, those other features are anomalous by themselves."""
    keep = np.broadcast_to(~np.asarray(symptoms, dtype=bool), x.shape).astype("float32")
    return np.asarray(scorer(imputer(x, c, keep), c).score, dtype="float64")


def _pick(gain: np.ndarray) -> np.ndarray:
    """Per row, the candidate whose correction lowers the score most; where none lowers it by
    `MIN_GAIN`, the first one (candidates come in order of excess)."""
    g = np.nan_to_num(gain, nan=-np.inf, posinf=np.inf)
    best = np.argmax(g, axis=1)
    return np.where(g[np.arange(len(g)), best] >= MIN_GAIN, best, 0)


def _without(remaining: np.ndarray, blamed: np.ndarray) -> np.ndarray:
    """Each row's candidates less its blamed feature (less its last one if it had none)."""
    hit = remaining == blamed[:, None]
    last = ~hit.any(axis=1)
    hit[last, -1] = True
    return remaining[~hit].reshape(len(remaining), -1)


def explain_rows(
    scorer,
    imputer: Imputer,
    x: np.ndarray,
    c: np.ndarray | None,
    scores: np.ndarray,
    features: np.ndarray,
    rounds: int,
    *,
    symptoms: np.ndarray | None = None,
    causes: np.ndarray | None = None,
    threshold: float | None = None,
) -> Counterfactuals:
    """Greedy counterfactual explanation of each row (``x`` scaled, ``scores`` its scores).

    Round 1 imputes each candidate feature (``features``, n × C) from the others and blames
    the one whose correction lowers the score most; the row is corrected, and each following
    round does the same for the remaining candidates on the corrected row, ``rounds`` times.
    So a later feature's expected value is conditioned on the earlier corrections (an
    anomalous feature left in place pulls every other imputation off the data manifold), and
    the drops add up.

    ``symptoms`` (bool, D) are features declared to follow the others (latency, error rate:
    effects, not causes). A row still above ``threshold`` with its symptoms imputed from its
    other features has an anomalous cause, which the data alone cannot tell from its symptoms
    when both left the training range: its first round blames the cause (among ``causes``,
    n × C') whose correction, with the symptoms imputed again after it, lowers the score most,
    and that drop includes what the symptoms then lose.
    """
    n, d = x.shape
    rounds = max(0, min(int(rounds), features.shape[1] if features.ndim == 2 else 0))
    order = np.full((n, rounds), -1, dtype="int64")
    expected = np.full((n, d), np.nan)
    drop = np.full((n, d), np.nan)
    if n == 0 or rounds == 0:
        return Counterfactuals(order, expected, drop)
    current = np.array(x, dtype="float32", copy=True)
    score = np.asarray(scores, dtype="float64").copy()
    remaining = np.asarray(features, dtype="int64")
    caused = np.zeros(n, dtype=bool)
    if symptoms is not None and causes is not None and threshold is not None:
        symptoms = np.asarray(symptoms, dtype=bool)
        if symptoms.any() and not symptoms.all() and np.asarray(causes).shape[1]:
            caused = symptom_free_scores(scorer, imputer, current, c, symptoms) > threshold
    for r in range(rounds):
        groups = [(np.arange(n), remaining, None)]
        if r == 0 and caused.any():
            groups = [
                (np.flatnonzero(caused), np.asarray(causes, dtype="int64")[caused], symptoms),
                (np.flatnonzero(~caused), remaining[~caused], None),
            ]
        blamed = np.full(n, -1, dtype="int64")
        for idx, candidates, follow in groups:
            if not idx.size:
                continue
            sub_c = None if c is None else np.asarray(c)[idx]
            values, rescored, filled = single_feature_counterfactuals(
                scorer, imputer, current[idx], sub_c, candidates, follow
            )
            best = _pick(score[idx, None] - rescored)
            at = np.arange(idx.size)
            j = candidates[at, best]
            blamed[idx] = j
            order[idx, r] = j
            expected[idx, j] = values[at, best]
            drop[idx, j] = score[idx] - rescored[at, best]
            current[idx] = filled[at, best]
            score[idx] = rescored[at, best]
        remaining = _without(remaining, blamed)
    return Counterfactuals(order, expected, drop)
