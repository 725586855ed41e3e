"""Drift of the live score distribution from the one recorded at training time, as PSI.

The reference is the detector's ``score_reference_``: 101 quantiles of its calibration scores.
Its deciles cut the score axis into (up to) ten fixed bins that each held a tenth of the
calibration scores. The population stability index compares each bin's share of the most
recent live scores with its reference share:

    PSI = Σ (live − ref) · ln(live / ref)

(by the usual reading: < 0.1 stable, 0.1 – 0.25 moving, > 0.25 a different population).
Scores rather than features are compared: one number per record whatever the model, and it
moves exactly when what the model sees stops looking like what it learned.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from vaeguard.daemon import metrics

log = logging.getLogger("vaeguard.daemon.drift")

#: Floor of a bin's share, so an empty bin adds a large but finite term.
EPSILON = 1e-4
DECILES = np.linspace(0.1, 0.9, 9)


class ScoreDrift:
    """PSI of a rolling window of live scores against a reference quantile function."""

    def __init__(
        self, reference: Sequence[float], *, window: int = 10_000, min_records: int = 2000
    ):
        ref = np.asarray(reference, dtype="float64")
        if ref.ndim != 1 or ref.size < 2 or not np.isfinite(ref).all():
            raise ValueError("the score reference must be finite quantiles")
        ref = np.sort(ref)
        levels = np.linspace(0.0, 1.0, ref.size)
        self.edges = np.unique(np.interp(DECILES, levels, ref))
        # Reference CDF at each edge: the highest level whose quantile is at or below it, so
        # tied quantiles (a model whose scores pile up) merge into one wider bin.
        cdf = levels[np.searchsorted(ref, self.edges, side="right") - 1]
        self.expected = np.maximum(np.diff(np.concatenate([[0.0], cdf, [1.0]])), EPSILON)
        self.window = int(window)
        self.min_records = int(min_records)
        self._bins = np.zeros(self.window, dtype="int8")
        self._pos = 0
        self.count = 0

    def update(self, scores) -> None:
        """Add live scores (NaN ignored) to the window, dropping the oldest beyond its size."""
        s = np.asarray(scores, dtype="float64").ravel()
        s = s[~np.isnan(s)]
        if not s.size:
            return
        bins = np.searchsorted(self.edges, s, side="left").astype("int8")
        if bins.size >= self.window:
            self._bins[:] = bins[-self.window :]
            self._pos, self.count = 0, self.window
            return
        end = self._pos + bins.size
        if end <= self.window:
            self._bins[self._pos : end] = bins
        else:
            split = self.window - self._pos
            self._bins[self._pos :] = bins[:split]
            self._bins[: end - self.window] = bins[split:]
        self._pos = end % self.window
        self.count = min(self.window, self.count + bins.size)

    def psi(self) -> float | None:
        """The PSI of the window, or None while it holds fewer than ``min_records`` scores."""
        if self.count < self.min_records:
            return None
        counts = np.bincount(self._bins[: self.count], minlength=self.expected.size)
        live = np.maximum(counts / self.count, EPSILON)
        return float(np.sum((live - self.expected) * np.log(live / self.expected)))


class DriftMonitor:
    """Tracks drift for the model in service; calls ``on_drift(psi)`` above ``threshold``.

    A new model version starts a new window (its scores live on its own scale). ``on_drift``
    (an early retrain) is called at most once per ``cooldown_s``; ``threshold`` None only
    measures.
    """

    def __init__(
        self,
        *,
        window: int = 10_000,
        min_records: int = 2000,
        threshold: float | None = None,
        cooldown_s: float = 3600.0,
        on_drift: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.window = window
        self.min_records = min_records
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.on_drift = on_drift
        self.clock = clock
        self.version: str | None = None
        self.drift: ScoreDrift | None = None
        self.last_psi: float | None = None
        self._last_trigger: float | None = None
        metrics.SCORE_DRIFT_PSI.set(math.nan)

    @classmethod
    def from_settings(cls, retrain, on_drift=None) -> DriftMonitor:
        return cls(
            window=retrain.drift_window_records,
            min_records=retrain.drift_min_records,
            threshold=retrain.drift_psi_threshold,
            cooldown_s=retrain.drift_cooldown_s,
            on_drift=on_drift,
        )

    def observe(self, version: str, reference, scores) -> float | None:
        """Add one batch's scores from model ``version``; returns the PSI once judged."""
        if version != self.version:
            self._reset(version, reference)
        if self.drift is None:
            return None
        self.drift.update(scores)
        metrics.SCORE_DRIFT_RECORDS.set(self.drift.count)
        psi = self.drift.psi()
        if psi is None:
            return None
        self.last_psi = psi
        metrics.SCORE_DRIFT_PSI.set(psi)
        if self.threshold is not None and psi > self.threshold:
            self._crossed(psi)
        return psi

    def _reset(self, version: str, reference) -> None:
        self.version, self.last_psi = version, None
        metrics.SCORE_DRIFT_PSI.set(math.nan)
        metrics.SCORE_DRIFT_RECORDS.set(0)
        try:
            self.drift = ScoreDrift(reference, window=self.window, min_records=self.min_records)
        except (TypeError, ValueError) as exc:
            self.drift = None
            log.warning(
                "score drift not tracked: the model has no usable score reference",
                extra={"version": version, "error": str(exc)},
            )

    def _crossed(self, psi: float) -> None:
        now = self.clock()
        if self._last_trigger is not None and now - self._last_trigger < self.cooldown_s:
            return
        self._last_trigger = now
        metrics.DRIFT_TRIGGERS.inc()
        log.warning(
            "live scores drifted from the training distribution",
            extra={
                "psi": round(psi, 4),
                "threshold": self.threshold,
                "version": self.version,
                "retrain": self.on_drift is not None,
            },
        )
        if self.on_drift is not None:
            try:
                self.on_drift(psi)
            except Exception:
                log.exception("could not start the drift-triggered retraining")
