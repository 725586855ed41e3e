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
* a scored point's record explains the score by metric and moment (the metrics with the most
  excess over the scored slots, each with the run of slots carrying it and the observed vs
  expected value at its worst slot, in the metric's own units; `window_explain`), with the
  [0, 1] ``anomaly_likelihood`` when the
  bundle configures one: every view's per-metric terms judged against the entity's history,
  the most surprised term (whose metric an alert lists first), saturation and suppression
  (`vaeguard.timeseries.views.ViewLikelihood`). With a
  likelihood whose ``alert`` level is set, that output decides ``is_anomaly``; otherwise view
  0's raw score against its threshold does.

The state (windows, online scalers, likelihood histories) is plain data and records, per
partition, the next offset it already holds, so a replay after a crash is skipped (`covers`)
instead of fed twice: feeding a point twice would count it twice in the entity's scaler and
likelihood history. The pipeline's checkpoint policy saves it before committing offsets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vaeguard.errors import BundleError, DataError
from vaeguard.records.serving import Features, Inbound, entity_of
from vaeguard.scored import ScoredRecord, Source
from vaeguard.serving.explain import p_values_of, score_records
from vaeguard.serving.window_explain import metric_contributions
from vaeguard.snapshot import check_header, is_count
from vaeguard.timeseries.learning import OnlineLearning, Windows

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
    "seasonal",
)


def _affine(features: Features) -> tuple[np.ndarray, np.ndarray]:
    """The entity statistics each row was scaled with (center, scale)."""
    return np.asarray(features.extra["center"]), np.asarray(features.extra["scale"])


def spec_compatible(old, new) -> bool:
    """Whether windows built under spec ``old`` are valid windows under spec ``new``."""
    a, b = old.to_dict(), new.to_dict()
    return all(a[k] == b[k] for k in STATE_FIELDS) and old.lateness == new.lateness


def _partition(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


#: Kafka offsets are signed 64-bit.
_MAX_OFFSET = 2**63 - 1


def _offsets(value: Any) -> dict[str, int]:
    """A snapshot's ``offsets``: "topic:partition" → the next offset its state holds."""
    if not isinstance(value, dict):
        raise DataError("offsets must be an object")
    for key, offset in value.items():
        topic, _, partition = key.rpartition(":")
        if not topic or not (partition.isascii() and partition.isdigit()):
            raise DataError(f"offsets: {key[:80]!r} is not topic:partition")
        if (
            not isinstance(offset, int)
            or isinstance(offset, bool)
            or not 0 <= offset <= _MAX_OFFSET
        ):
            raise DataError(f"offsets[{key[:80]!r}] must be a Kafka offset (0 to 2^63 - 1)")
    return dict(value)


def _reason(exc: BaseException) -> str:
    """One line: a DataError's own message, else the exception's type and message (cut)."""
    text = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


class WindowServing:
    """A `ViewSet` (or one `WindowDetector`) behind the `Serving` interface; owns the
    per-entity state."""

    kind = "window"
    stateful = True

    @property
    def entity_field(self) -> str:
        """The record field naming the entity (else the message key): capped by the batch step."""
        return self.spec.entity_field

    def __init__(self, detector, version: str = "", model_id: str = "", *, fitted_at: int = 0):
        """``fitted_at``: the stream position (rows) the model was trained at, when known (the
        NAB runner's first fit, from which the schedule's growth rule counts); a daemon starts
        at 0 and refits every ``retrain_max_gap`` rows per entity."""
        from vaeguard.timeseries.views import ViewSet

        self.views = ViewSet.of(detector)
        self.detector = self.views.primary  # explains the score records
        self.version = version
        self.spec = self.views.spec
        #: Whose raw scores the likelihood histories hold (the model file's SHA-256).
        self.model_id = model_id
        #: Per-entity windows, continuing from the end of the training data where the bundle
        #: carries it (`ViewSet.serving_featurizer`).
        self.state = self.views.serving_featurizer()
        #: Likelihood histories, continuing from the calibration tail's where the bundle
        #: carries them (`ViewSet.serving_likelihood`).
        self.likelihood = self.views.serving_likelihood()
        self.offsets: dict[str, int] = {}
        self.required_fields = [self.spec.time_field]
        self.score_reference = getattr(self.detector, "score_reference_", None)
        channels = self.spec.channels
        #: Each channel's metric, for the roll-up (``cpu_seasonal`` → ``cpu``).
        self._metric_of = {c: self.spec.metric_of(c) for c in channels}
        #: Each view's raw scores of the last scored batch (the NAB runner keeps them).
        self.last_raw: list[np.ndarray] = []
        #: The likelihood terms whose histories the last refit restarted (the runner keeps
        #: them, so a replay of the raw scores restarts them where serving did).
        self.restarted_terms: list[int] = []
        #: Warm refits on the newest windows, as the bundle's schedule says (`learning`).
        self.learning = OnlineLearning(self.views, fitted_at=fitted_at)
        self._model_id = model_id  # the bundle's; `model_id` moves on with each refit
        self._refit_state: dict[str, Any] | None = None
        self._channel_index = [channels.index(m) for m in self.detector.input_channels]

    def warm_up(self) -> None:
        """Compile the masked scorer at every batch-size bucket; refuse a model scoring NaN."""
        from vaeguard.model.scoring import BUCKETS

        d, width = self.spec.n_features, self.detector.time_conditions.width
        for size in BUCKETS:
            x = np.zeros((size, d), dtype="float32")
            c = np.zeros((size, width), dtype="float32") if width else None
            scores = self.views.score_windows(x, c, np.ones_like(x)).terms
            if not all(np.isfinite(s).all() for s in scores):
                raise BundleError("the window model produces non-finite scores on a flat window")

    # -- featurize ---------------------------------------------------------------------------

    def featurize(self, items: Sequence[Inbound]) -> Features:
        """Feed the records to the per-entity state; one row per record whose window is ready."""
        spec = self.spec
        points = []
        for it in items:
            record = it.record
            point = {name: record.get(name) for name in spec.metrics}
            point[spec.entity_field] = entity_of(it, spec.entity_field)
            point[spec.time_field] = record.get(spec.time_field)
            points.append(point)
        batch = self.state.update_and_featurize(points)
        if self.state.restarted:  # not continued: their carried histories go too
            if self.likelihood is not None:
                self.likelihood.forget_entities(self.state.restarted)
            self.state.restarted = []
        self.learning.count(len(items))
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
        """Score the windows in one batched call; if building the records fails after the
        likelihood histories moved, they are put back, so a retried batch is not counted twice."""
        score, scores, nll, expected = self.views.score_windows(
            features.x, features.c, features.mask
        )
        likelihood, p_values, saved = None, None, None
        if self.likelihood is not None:
            saved = self.likelihood.save_entities(features.entities)
            likelihood = self.likelihood.update_many(features.entities, scores)
            p_values = p_values_of(self.likelihood.last_log10_tail)
        try:
            records = self._records(
                features, items, score, nll, expected, likelihood, p_values, top_k, bands, explain
            )
        except BaseException:
            if saved is not None:  # a retried batch must not count twice in the histories
                self.likelihood.put_back(saved)
            raise
        self.last_raw = scores
        # Online learning trains on the windows the histories learned: an incident judged
        # beyond the alert level is not learned as normal by the model either.
        learned = None if self.likelihood is None else self.likelihood.last_learned
        self.learning.observe(
            Windows(features.x, features.mask, features.c, *_affine(features)),
            self.n_live,
            keep=learned,
        )
        return records

    def _records(
        self, features, items, score, nll, expected, likelihood, p_values, top_k, bands, explain
    ):
        det = self.detector
        w = self.spec.window
        idx = self._channel_index  # the explained view's channels, metric-major
        scale = np.repeat(features.extra["scale"][:, idx], w, axis=1)
        center = np.repeat(features.extra["center"][:, idx], w, axis=1)
        alert = self._alert_level()
        if alert is not None and likelihood is not None:
            # the detector's output decides; the threshold (and severity bands) follow it
            decided, threshold = likelihood, alert
        else:
            decided, threshold = score, float(det.threshold_.value)
        expected = expected * scale + center
        if det.plausible_range_ is not None:  # never an expected value the training makes absurd
            expected = det.plausible_range_.clip(expected)
        contributions = metric_contributions(
            nll - det.baseline_,
            det.select(features.x).astype("float64") * scale + center,
            expected,
            det.select(features.mask) > 0,
            det.input_channels,
            self._metric_of,
            w,
            top_k,
            score_slots=det.score_slots,
            # an alert names the metric the detector found most surprising
            lead=self._lead(decided >= threshold),
            rows=None if explain == "all" else np.flatnonzero(decided >= threshold),
        )
        self._given_others(features, contributions, decided >= threshold)
        # the record's score stays view 0's raw score (nats) whatever decides
        return score_records(
            items,
            features.entities,
            features.timestamps,
            score,
            threshold,
            contributions,
            bands=bands,
            model_version=self.version,
            likelihood=likelihood,
            decision=decided,
            inclusive=decided is likelihood,
            p_values=p_values,
            alert_p=self._alert_p(),
        )

    def _given_others(self, features, contributions, alerted: np.ndarray) -> None:
        """Where a cross-section term names an alert's metric, its first contribution says what
        the other metrics at this moment predict for it: ``given_others`` holds the metric's
        value at this point (``observed``) and that prediction (``expected``), in its units."""
        terms = None if self.likelihood is None else self.likelihood.last_lead_term
        if terms is None or len(terms) != len(alerted) or not self.views.judges_cross_section:
            return
        first = self.views.cross_section_terms().start
        rows = [i for i, (t, hit) in enumerate(zip(terms, alerted.tolist(), strict=True))
                if hit and t >= first and contributions[i]]  # fmt: skip
        if not rows:
            return
        expected = self.views.cross_section_expected(
            features.x[rows], None if features.c is None else features.c[rows], features.mask[rows]
        )
        if expected is None:
            return
        w, channels = self.spec.window, self.spec.channels
        for r, i in enumerate(rows):
            j = terms[i] - first
            metric = self.spec.metrics[j]
            item = contributions[i][0]
            column = channels.index(metric)
            if item.get("metric") != metric or features.mask[i, column * w + w - 1] <= 0:
                continue
            scale = float(features.extra["scale"][i, column])
            center = float(features.extra["center"][i, column])
            observed = float(features.x[i, column * w + w - 1]) * scale + center
            predicted = float(expected[r, j]) * scale + center
            if math.isfinite(observed) and math.isfinite(predicted):
                item["given_others"] = {"observed": observed, "expected": predicted}

    def _lead(self, alerted: np.ndarray) -> list[str | None] | None:
        """Per row, the metric of the most surprised likelihood term where the row alerts."""
        names = None if self.likelihood is None else self.likelihood.last_metric
        if not names or len(names) != len(alerted):
            return None
        return [name if hit else None for name, hit in zip(names, alerted.tolist(), strict=True)]

    # -- online learning -----------------------------------------------------------------------

    def learn(self) -> dict[str, Any] | None:
        """After a batch is scored: refit the views warm when the schedule says so."""
        before = self.views.unlearned_channels()
        had_cross_section = self.views.cross_section_ is not None
        info = self.learning.refit_if_due(self.n_live)
        if info is not None and info["ok"]:
            # A view that now judges a channel it had masked scores on another scale: its
            # terms' histories restart (its other views keep judging meanwhile).
            after = self.views.unlearned_channels()
            changed = [
                t
                for k, (was, now) in enumerate(zip(before, after, strict=True))
                if was != now
                for t in self.views.terms_of(k)
            ]
            # Cross-section terms are 0 while there is no fit (too few rows with every metric
            # seen): once a refit has one, they measure something, and restart alike.
            if had_cross_section != (self.views.cross_section_ is not None):
                changed += list(self.views.cross_section_terms())
            if changed and self.likelihood is not None:
                self.likelihood.forget_terms(changed)
                self.restarted_terms = changed
            # Raw scores of the refitted model are judged against histories built with the
            # previous one, as the NAB runner does. The snapshot carries the refitted weights
            # (`_refit_snapshot`); a restart without them serves the bundle's model, whose id
            # no longer matches the snapshot's, so its likelihood histories restart.
            self._serving_refit(self.learning.refits)
        return info

    def _serving_refit(self, refits: int) -> None:
        """What follows from serving the bundle's model after ``refits`` refits."""
        self.learning.refits = refits
        self.model_id = f"{self._model_id}+refit{refits}"
        self.score_reference = getattr(self.detector, "score_reference_", None)
        self._refit_state = None  # encoded again at the next snapshot

    def _refit_snapshot(self) -> dict[str, Any] | None:
        if not self.learning.refits:
            return None
        if self._refit_state is None:  # once per refit, not at every save
            from vaeguard.timeseries.learning import refit_state

            self._refit_state = {
                "base_model_id": self._model_id,
                "refits": self.learning.refits,
                "views": refit_state(self.views),
            }
        return self._refit_state

    def _stage_refit(self, state: Any) -> tuple[int, list[dict[str, Any]]] | None:
        """The refitted model of a snapshot taken while serving this same bundle, decoded and
        checked but not applied (None: the snapshot has none for this bundle)."""
        from vaeguard.timeseries.learning import stage_refit_state

        if not isinstance(state, dict) or state.get("base_model_id") != self._model_id:
            return None
        refits = state.get("refits")
        if not is_count(refits, 1):
            raise DataError("refit.refits must be a count of refits (>= 1)")
        return refits, stage_refit_state(self.views, state.get("views"))

    def _alert_level(self) -> float | None:
        spec = self.views.likelihood_spec
        return None if spec is None else spec.alert

    def _alert_p(self) -> float | None:
        """The tail probability at which the likelihood alerts (what severity is relative to)."""
        spec = self.views.likelihood_spec
        if spec is None or spec.alert is None:
            return None
        if spec.output == "linear":
            return 1.0 - spec.alert
        return 10.0 ** (-spec.alert * spec.level_decades)

    # -- at-least-once bookkeeping --------------------------------------------------------------

    def covers(self, source: Source) -> bool:
        return source.offset < self.offsets.get(_partition(source.topic, source.partition), -1)

    def bound_offset(self, partition: str, committed: int | None, *, trusted: bool) -> bool:
        """Keep `covers` from skipping records the consumer group has not committed: the next
        offset held for ``partition`` ("topic:partition") is cut to the group's ``committed``
        offset (dropped when there is none), unless ``trusted`` (the checkpoint knows the state
        was saved just before a commit that did not happen, so it holds those records). Returns
        whether it was cut."""
        held = self.offsets.get(partition)
        if held is None or (trusted and committed is not None):
            return False
        if committed is None:
            del self.offsets[partition]
            return True
        if held > committed:
            self.offsets[partition] = committed
            return True
        return False

    def advance(self, next_offsets) -> None:
        for tp, offset in next_offsets.items():
            key = _partition(tp.topic, tp.partition)
            self.offsets[key] = max(int(offset), self.offsets.get(key, 0))

    # -- state --------------------------------------------------------------------------------

    @property
    def n_entities(self) -> int:
        return self.state.n_entities

    @property
    def n_live(self) -> int:
        """Entities the stream has fed, which the online-learning schedule counts (an entity
        the bundle carries counts once the stream continues it)."""
        return self.state.n_live

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "model_id": self.model_id,
            "offsets": dict(self.offsets),
            "featurizer": self.state.snapshot(),
            "likelihood": self.likelihood.snapshot() if self.likelihood is not None else None,
            "refit": self._refit_snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        """Continue from a snapshot; returns what was kept (for the log).

        Windows and scalers carry over when the window spec is compatible; online refits of
        this same bundle are resumed (`vaeguard.timeseries.learning`); likelihood histories only
        when they hold this same (refitted) model's raw scores with the same likelihood spec.
        A snapshot is a file from disk: everything is checked first and either all of it is
        taken or, with `DataError`, none of it (non-finite thresholds, statistics or weights,
        offsets that are not Kafka offsets, any malformed field).
        """
        from vaeguard.errors import ConfigError
        from vaeguard.timeseries.featurizer import WindowFeaturizer, WindowSpec
        from vaeguard.timeseries.learning import put_refit_state
        from vaeguard.timeseries.views import STATE_FORMAT as LIKELIHOOD_FORMAT

        check_header(state, STATE_FORMAT, STATE_VERSION, "daemon window-state file")
        try:
            offsets = _offsets(state["offsets"])
            snap = state["featurizer"]
            if not isinstance(snap, dict) or not isinstance(snap.get("spec"), dict):
                raise DataError("featurizer must be an object with a spec")
            snap = dict(snap)
            old_spec = WindowSpec.from_dict(snap["spec"])
            kept = {"windows": False, "likelihood": False, "entities": 0, "refits": 0}
            if not spec_compatible(old_spec, self.spec):
                # Fresh windows, but what was already produced stays produced (see `covers`).
                self.offsets = offsets
                return kept
            snap["spec"] = self.spec.to_dict()
            if not isinstance(snap.get("entities"), list):
                raise DataError("featurizer.entities must be a list")
            snap["entities"] = snap["entities"][-self.spec.max_entities :]
            featurizer = WindowFeaturizer.restore(snap)
            # refitted weights first: the likelihood histories hold their scores
            refit = self._stage_refit(state.get("refit"))
            model_id = self.model_id if refit is None else f"{self._model_id}+refit{refit[0]}"
            likelihood = self.likelihood
            lk_state = state.get("likelihood")
            if (
                self.likelihood is not None
                and isinstance(lk_state, dict)
                and lk_state.get("format") == LIKELIHOOD_FORMAT
                and state.get("model_id") == model_id
            ):
                restored = self.views.likelihood_from(lk_state)
                if restored is not None:
                    likelihood = restored
                    kept["likelihood"] = True
        except (
            DataError,
            ConfigError,
            LookupError,
            TypeError,
            ValueError,
            ArithmeticError,
            AttributeError,
            RecursionError,
        ) as exc:
            raise DataError(f"daemon window-state is corrupt: {_reason(exc)}") from None
        # all checked: nothing below can fail half-way
        if refit is not None:
            put_refit_state(self.views, refit[1])
            self._serving_refit(refit[0])
            kept["refits"] = refit[0]
        self.state, self.likelihood, self.offsets = featurizer, likelihood, offsets
        kept.update(windows=True, entities=featurizer.n_entities)
        return kept

    def adopt(self, previous) -> dict[str, Any]:
        """Take over the state of the model this one replaces (a hot swap)."""
        state = previous.snapshot()
        if state is None:
            return {}
        return self.restore(state)
