"""Window mode in the daemon: per-entity windows in, one score record per windowed point out.

A bundle saved by `WindowDetector` (``extra.window_mode``) is served through
`WindowStreamFeaturizer`, which implements the `Featurizer` protocol over the same
`WindowFeaturizer` and `AnomalyLikelihood` the offline replay (`vaeguard nab`) uses, so a record
gets the same raw score in both. Per record:

* the **entity** is the record's ``entity_field`` (default ``key``; else the message key, as in
  tabular mode) and the **time** its ``time_field`` (default ``ts``), which is required: the
  Kafka message timestamp (when the record was produced) is not the time of the measurement,
  and mixing the two would put an entity's points on two different clocks;
* a point whose window is not scorable yet (the entity's first points, or a window with too
  few observed slots) only updates the state: it produces **no** score record, is committed
  like any other, and is counted (``vaeguard_window_buffered_records``, `Stats.buffered`);
* a malformed record (no timestamp, non-numeric metric, a point later than the lateness bound)
  goes to the dead-letter topic with the reason;
* a scored point's `ScoredRecord` explains the score by window slot (``cpu[t-3]``: metric
  ``cpu``, slot ``-3``) with observed and expected values in the metric's own units, and carries
  the [0, 1] ``anomaly_likelihood`` when the bundle configures one.

The state (windows, online scalers, likelihood histories) is plain data. It also records, per
partition, the next offset it already holds. The pipeline saves it atomically and only then
commits the offsets it covers (`Pipeline._save_window_state`, at most every
``scoring.state_interval_s``). A crash before a save replays the records since the last save
from the saved state: identical scores (duplicates on the output topic). A crash between a save
and its commit replays records the state already holds: those are skipped (`covers`), not fed
twice. Feeding a point twice is *not* harmless: its slot would be rewritten with the same
value, but the entity's online scaler and likelihood history would count it twice (and a
replay longer than the lateness bound would dead-letter records as late).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaeguard.daemon.featurize import FeatureBatch, Rejection
from vaeguard.daemon.records import _labels
from vaeguard.errors import DataError
from vaeguard.scored import ScoredRecord, Source
from vaeguard.severity import NORMAL

log = logging.getLogger("vaeguard.daemon.window")

STATE_FORMAT = "vaeguard-daemon-window-state"
STATE_VERSION = 1
#: Spec fields that must match for the per-entity windows to carry over to another model.
STATE_FIELDS = (
    "window",
    "metrics",
    "interval",
    "max_lateness",
    "entity_field",
    "time_field",
    "infer_points",
    "normalize",
)
_FLOAT_MAX = float(np.finfo("float64").max)


@dataclass
class WindowFeatureBatch(FeatureBatch):
    """A `FeatureBatch` of windows: ``x`` scale-free, ``mask`` 1 = observed slot.

    ``entities`` of each row; ``center`` / ``scale`` (rows × metrics) map ``x`` back to user
    units; ``buffered`` counts the records that only updated the state.
    """

    entities: list[str] = field(default_factory=list)
    center: np.ndarray | None = None
    scale: np.ndarray | None = None
    buffered: int = 0


def _partition(message) -> str:
    return f"{message.topic}:{message.partition}"


def spec_compatible(old, new) -> bool:
    """Whether windows built under spec ``old`` are valid windows under spec ``new``."""
    a, b = old.to_dict(), new.to_dict()
    return all(a[k] == b[k] for k in STATE_FIELDS) and old.lateness == new.lateness


class WindowStreamFeaturizer:
    """The daemon's window featurizer and scorer for one window-mode model; owns the state.

    A new model takes the state over with `adopt` (the pipeline calls it at a hot swap).
    """

    def __init__(self, detector, model_id: str = ""):
        self.detector = detector  # a vaeguard.timeseries.detector.WindowDetector
        self.spec = detector.spec
        #: Whose raw scores the likelihood histories hold (the model file's SHA-256).
        self.model_id = model_id
        self.state = detector.featurizer()
        self.likelihood = detector.likelihood() if detector.use_likelihood else None
        self.offsets: dict[str, int] = {}

    @classmethod
    def for_bundle(cls, vae_detector, where: str = "bundle") -> WindowStreamFeaturizer:
        from vaeguard.timeseries.bundle import window_detector_from

        manifest = getattr(vae_detector, "manifest_", None) or {}
        return cls(window_detector_from(vae_detector, where), manifest.get("model_sha256", ""))

    def warm_up(self) -> None:
        """Compile the masked scorer at every batch-size bucket; refuse a model scoring NaN."""
        from vaeguard.errors import BundleError
        from vaeguard.model.scoring import BUCKETS

        d, width = self.spec.n_features, self.detector.time_conditions.width
        for size in BUCKETS:
            x = np.zeros((size, d), dtype="float32")
            c = np.zeros((size, width), dtype="float32") if width else None
            score, _, _ = self.detector.score_windows(x, c, np.ones_like(x))
            if not np.isfinite(score).all():
                raise BundleError("the window model produces non-finite scores on a flat window")

    # -- the Featurizer protocol ----------------------------------------------------------------

    def transform(
        self,
        records: Sequence[dict[str, Any]],
        entities: Sequence[str | None],
        timestamps: Sequence[Any],
    ) -> WindowFeatureBatch:
        """Feed the records to the per-entity state; one row per record whose window is ready.

        ``timestamps`` (the daemon's view: ``ts`` else the message time) is not used: the
        window's time is the record's own ``time_field``.
        """
        spec = self.spec
        points = []
        for i, record in enumerate(records):
            entity = record.get(spec.entity_field)
            if entity is None:
                entity = entities[i] if i < len(entities) else None
            point = {name: record.get(name) for name in spec.metrics}
            point[spec.entity_field] = entity
            point[spec.time_field] = record.get(spec.time_field)
            points.append(point)
        batch = self.state.update_and_featurize(points)
        rejected = [Rejection(r.index, r.reason, r.error_class, r.detail) for r in batch.rejected]
        return WindowFeatureBatch(
            x=batch.x,
            c=batch.c,
            mask=batch.mask,
            keep=batch.keep,
            rejected=rejected,
            entities=list(batch.entities),
            center=batch.center,
            scale=batch.scale,
            buffered=len(records) - len(rejected) - len(batch.keep),
        )

    # -- scoring --------------------------------------------------------------------------------

    def score(
        self,
        features: WindowFeatureBatch,
        messages: Sequence[Any],
        objects: Sequence[dict[str, Any]],
        timestamps: Sequence[Any],
        *,
        top_k: int,
        bands: Sequence[tuple[str, float]],
        model_version: str,
    ) -> list[ScoredRecord]:
        """Score the windows in one batched call and build their score records."""
        det = self.detector
        score, nll, expected = det.score_windows(features.x, features.c, features.mask)
        score = np.nan_to_num(score, nan=_FLOAT_MAX, posinf=_FLOAT_MAX, neginf=-_FLOAT_MAX)
        likelihood = None
        if self.likelihood is not None:
            # (+ 0.0 turns the likelihood's -0.0 "no opinion yet" into a plain 0.0)
            likelihood = (self.likelihood.update_many(features.entities, score) + 0.0).tolist()
        contributions = explain(
            nll - det.baseline_,
            features.mask > 0,
            features.x,
            expected,
            features.center,
            features.scale,
            self.spec,
            top_k,
        )
        threshold = float(det.threshold_.value)
        anomalous = score > threshold
        names = [NORMAL, *(b for b, _ in bands)]
        minimums = np.asarray([m for _, m in bands], dtype="float64")
        band = np.where(anomalous, np.searchsorted(minimums, score - threshold, side="right"), 0)
        out = []
        for i, (m, obj) in enumerate(zip(messages, objects, strict=True)):
            out.append(
                ScoredRecord(
                    key=features.entities[i],
                    ts=timestamps[i],
                    score=float(score[i]),
                    threshold=threshold,
                    is_anomaly=bool(anomalous[i]),
                    severity=names[int(band[i])],
                    contributions=contributions[i],
                    model_version=model_version,
                    source=Source(m.topic, m.partition, m.offset),
                    labels=_labels(obj),
                    anomaly_likelihood=None if likelihood is None else likelihood[i],
                )
            )
        return out

    # -- at-least-once bookkeeping ----------------------------------------------------------------

    def covers(self, message) -> bool:
        """Whether the state already holds this record (it is being replayed after a crash)."""
        return message.offset < self.offsets.get(_partition(message), -1)

    def advance(self, next_offsets: dict[Any, int]) -> None:
        """Record that the state now holds every record before these offsets."""
        for tp, offset in next_offsets.items():
            key = f"{tp.topic}:{tp.partition}"
            self.offsets[key] = max(int(offset), self.offsets.get(key, 0))

    # -- state ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "model_id": self.model_id,
            "offsets": dict(self.offsets),
            "featurizer": self.state.snapshot(),
            "likelihood": self.likelihood.snapshot() if self.likelihood is not None else None,
        }

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        """Continue from a snapshot; returns what was kept (for the log).

        Windows and scalers carry over when the window spec is compatible; likelihood histories
        only when they hold this same model's raw scores with the same likelihood spec (another
        model's raw scores are not comparable: each entity's history is rebuilt as it scores).
        """
        from vaeguard.timeseries.featurizer import WindowFeaturizer, WindowSpec
        from vaeguard.timeseries.likelihood import AnomalyLikelihood

        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise DataError("not a daemon window-state file (format field missing or wrong)")
        if state.get("version") != STATE_VERSION:
            raise DataError(
                f"daemon window-state version {state.get('version')!r} is not supported"
            )
        try:
            snap = dict(state["featurizer"])
            old_spec = WindowSpec.from_dict(snap["spec"])
            offsets = {str(k): int(v) for k, v in dict(state["offsets"]).items()}
            kept = {"windows": False, "likelihood": False, "entities": 0}
            if not spec_compatible(old_spec, self.spec):
                # Fresh windows, but what was already produced stays produced (see `covers`).
                self.offsets = offsets
                return kept
            snap["spec"] = self.spec.to_dict()
            snap["entities"] = list(snap["entities"])[-self.spec.max_entities :]
            featurizer = WindowFeaturizer.restore(snap)
            likelihood = self.likelihood
            lk_state = state.get("likelihood")
            if (
                self.likelihood is not None
                and lk_state is not None
                and state.get("model_id") == self.model_id
                and lk_state.get("spec") == self.likelihood.spec.to_dict()
            ):
                likelihood = AnomalyLikelihood.restore(lk_state)
                kept["likelihood"] = True
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"daemon window-state is corrupt: {exc}") from None
        self.state, self.likelihood, self.offsets = featurizer, likelihood, offsets
        kept.update(windows=True, entities=featurizer.n_entities)
        return kept

    def adopt(self, previous: WindowStreamFeaturizer) -> dict[str, Any]:
        """Take over the state of the model this one replaces (a hot swap)."""
        return self.restore(previous.snapshot())


class WindowStateStore:
    """The state file of one daemon: ``<state_dir>/<group>.<instance>.window-state.json``.

    Written with `write_atomic` (a crash leaves the old file or the new one, never half).
    Daemons must not share a file: the name includes the consumer group and the daemon's
    ``group_instance_id`` (else its ``client_id``).
    """

    def __init__(self, state_dir: Path, group_id: str, task_id: str):
        safe = lambda s: re.sub(r"[^A-Za-z0-9._-]", "_", s)  # noqa: E731
        self.path = Path(state_dir) / f"{safe(group_id)}.{safe(task_id)}.window-state.json"

    def save(self, featurizer: WindowStreamFeaturizer) -> None:
        from vaeguard.bundle import write_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(featurizer.snapshot(), separators=(",", ":"), allow_nan=False)
        write_atomic(self.path, data.encode())

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None if there is none; a corrupt file is moved aside."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            state = json.loads(text)
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            return state
        except ValueError as exc:
            self.quarantine(f"not JSON ({exc})")
            return None

    def quarantine(self, reason: str) -> None:
        aside = self.path.with_name(self.path.name + ".corrupt")
        self.path.replace(aside)
        log.error(
            "window state is corrupt; moved aside, every entity starts a fresh window",
            extra={"path": str(self.path), "moved_to": str(aside), "reason": reason},
        )


def explain(
    contributions: np.ndarray,
    observed_mask: np.ndarray,
    x: np.ndarray,
    expected: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    spec,
    top_k: int,
) -> list[list[dict[str, Any]]]:
    """Per row, the top_k observed window slots by excess nats, in the metric's own units."""
    n, d = contributions.shape
    k = min(top_k, d)
    if n == 0 or k == 0:
        return [[] for _ in range(n)]
    w = spec.window
    scale_d = np.repeat(scale, w, axis=1)  # metric-major columns: j·W + s is metric j
    center_d = np.repeat(center, w, axis=1)
    observed = x.astype("float64") * scale_d + center_d
    expected = expected * scale_d + center_d
    ranked = np.where(observed_mask, contributions, -np.inf)
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    positive = np.where(observed_mask, np.clip(contributions, 0.0, None), 0.0)
    total = positive.sum(axis=1, keepdims=True)
    share = np.divide(positive, total, out=np.zeros_like(positive), where=total > 0)
    names = spec.feature_names
    metrics = [m for m in spec.metrics for _ in range(w)]
    slots = [s - (w - 1) for _ in spec.metrics for s in range(w)]
    out = []
    for i in range(n):
        row = []
        for j in order[i].tolist():
            if not observed_mask[i, j]:
                break
            row.append(
                {
                    "feature": names[j],
                    "metric": metrics[j],
                    "slot": slots[j],
                    "observed": _finite(observed[i, j]),
                    "expected": _finite(expected[i, j]),
                    "contribution": _finite(contributions[i, j]),
                    "share": float(share[i, j]),
                }
            )
        out.append(row)
    return out


def _finite(v: float) -> float:
    v = float(v)
    return v if math.isfinite(v) else math.copysign(_FLOAT_MAX, v) if not math.isnan(v) else 0.0
