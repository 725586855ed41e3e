"""Serving a window-mode model: per-entity windows in, one score record per windowed point out.

`WindowServing` runs the same `WindowFeaturizer` and `AnomalyLikelihood` as the offline replay
(`vaeguard nab`), so a record gets the same raw score in both. Per record:

* the **entity** is the record's ``entity_field`` (default ``key``; else the message key) and
  the **time** its ``time_field`` (default ``ts``), which is required: the Kafka message time
  (when the record was produced) is not the time of the measurement;
* a point whose window is not scorable yet (the entity's first points, or too few observed
  slots) only updates the state: **no** score record, committed like any other, counted as
  buffered;
* a malformed record (no or invalid timestamp, non-numeric metric, a point later than the
  lateness bound) is refused with the reason;
* a scored point's record explains the score by window slot (``cpu[t-3]``: metric ``cpu``,
  slot ``-3``) in the metric's own units, with the [0, 1] ``anomaly_likelihood`` when the
  bundle configures one.

The state (windows, online scalers, likelihood histories) is plain data and records, per
partition, the next offset it already holds, so a replay after a crash is skipped (`covers`)
instead of fed twice: feeding a point twice would count it twice in the entity's scaler and
likelihood history. The pipeline's checkpoint policy saves it before committing offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vaeguard.errors import BundleError, DataError
from vaeguard.scored import ScoredRecord, Source
from vaeguard.serving.base import Features, Inbound
from vaeguard.serving.explain import score_records, top_contributions

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


def spec_compatible(old, new) -> bool:
    """Whether windows built under spec ``old`` are valid windows under spec ``new``."""
    a, b = old.to_dict(), new.to_dict()
    return all(a[k] == b[k] for k in STATE_FIELDS) and old.lateness == new.lateness


def _partition(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class WindowServing:
    """A `WindowDetector` behind the `Serving` interface; owns the per-entity state."""

    kind = "window"
    stateful = True

    def __init__(self, detector, version: str = "", model_id: str = ""):
        self.detector = detector  # a vaeguard.timeseries.detector.WindowDetector
        self.version = version
        self.spec = detector.spec
        #: Whose raw scores the likelihood histories hold (the model file's SHA-256).
        self.model_id = model_id
        self.state = detector.featurizer()
        self.likelihood = detector.likelihood() if detector.use_likelihood else None
        self.offsets: dict[str, int] = {}
        self.required_fields = [self.spec.time_field]
        self.score_reference = getattr(detector, "score_reference_", None)
        metrics = self.spec.metrics
        w = self.spec.window
        self._columns = [{"metric": m, "slot": s - (w - 1)} for m in metrics for s in range(w)]

    def warm_up(self) -> None:
        """Compile the masked scorer at every batch-size bucket; refuse a model scoring NaN."""
        from vaeguard.model.scoring import BUCKETS

        d, width = self.spec.n_features, self.detector.time_conditions.width
        for size in BUCKETS:
            x = np.zeros((size, d), dtype="float32")
            c = np.zeros((size, width), dtype="float32") if width else None
            score, _, _ = self.detector.score_windows(x, c, np.ones_like(x))
            if not np.isfinite(score).all():
                raise BundleError("the window model produces non-finite scores on a flat window")

    # -- featurize ---------------------------------------------------------------------------

    def featurize(self, items: Sequence[Inbound]) -> Features:
        """Feed the records to the per-entity state; one row per record whose window is ready."""
        spec = self.spec
        points = []
        for it in items:
            record = it.record
            entity = record.get(spec.entity_field)
            if entity is None and it.key is not None:
                entity = it.key.decode("utf-8", "replace")
            point = {name: record.get(name) for name in spec.metrics}
            point[spec.entity_field] = entity
            point[spec.time_field] = record.get(spec.time_field)
            points.append(point)
        batch = self.state.update_and_featurize(points)
        n_rejected = len(batch.rejected)
        return Features(
            x=batch.x,
            c=batch.c,
            mask=batch.mask,
            keep=batch.keep,
            entities=list(batch.entities),
            timestamps=[items[i].record.get(spec.time_field) for i in batch.keep.tolist()],
            rejected=list(batch.rejected),
            buffered=len(items) - n_rejected - len(batch.keep),
            extra={"center": batch.center, "scale": batch.scale},
        )

    # -- score --------------------------------------------------------------------------------

    def score(
        self,
        features: Features,
        items: Sequence[Inbound],
        *,
        top_k: int,
        bands: Sequence[tuple[str, float]],
        explain: str = "all",
    ) -> list[ScoredRecord]:
        """Score the windows in one batched call; the likelihood histories are updated last,
        after everything that can fail, so a retried batch is not counted twice."""
        det = self.detector
        score, nll, expected = det.score_windows(features.x, features.c, features.mask)
        w = self.spec.window
        scale = np.repeat(features.extra["scale"], w, axis=1)  # metric-major: j·W + s
        center = np.repeat(features.extra["center"], w, axis=1)
        contributions = top_contributions(
            nll - det.baseline_,
            features.x.astype("float64") * scale + center,
            expected * scale + center,
            self.spec.feature_names,
            top_k,
            valid=features.mask > 0,
            columns=self._columns,
            rows=None if explain == "all" else np.flatnonzero(score > float(det.threshold_.value)),
        )
        records = score_records(
            items,
            features.entities,
            features.timestamps,
            score,
            float(det.threshold_.value),
            contributions,
            bands=bands,
            model_version=self.version,
        )
        if self.likelihood is None:
            return records
        # (+ 0.0 turns the likelihood's -0.0 "no opinion yet" into a plain 0.0)
        raw = np.array([r.score for r in records], dtype="float64")
        likelihood = (self.likelihood.update_many(features.entities, raw) + 0.0).tolist()
        return [_with_likelihood(r, v) for r, v in zip(records, likelihood, strict=True)]

    # -- at-least-once bookkeeping --------------------------------------------------------------

    def covers(self, source: Source) -> bool:
        return source.offset < self.offsets.get(_partition(source.topic, source.partition), -1)

    def advance(self, next_offsets) -> None:
        for tp, offset in next_offsets.items():
            key = _partition(tp.topic, tp.partition)
            self.offsets[key] = max(int(offset), self.offsets.get(key, 0))

    # -- state --------------------------------------------------------------------------------

    @property
    def n_entities(self) -> int:
        return self.state.n_entities

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
        only when they hold this same model's raw scores with the same likelihood spec.
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
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"daemon window-state is corrupt: {exc}") from None
        self.state, self.likelihood, self.offsets = featurizer, likelihood, offsets
        kept.update(windows=True, entities=featurizer.n_entities)
        return kept

    def adopt(self, previous) -> dict[str, Any]:
        """Take over the state of the model this one replaces (a hot swap)."""
        state = previous.snapshot()
        if state is None:
            return {}
        return self.restore(state)


def _with_likelihood(record: ScoredRecord, value: float) -> ScoredRecord:
    from dataclasses import replace

    from vaeguard.serving.explain import _finite

    return replace(record, anomaly_likelihood=_finite(value))
