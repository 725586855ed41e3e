"""Serving a tabular model: one row per record, scored on its own (no state)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from vaeguard.contributions import top_contributions
from vaeguard.detector import CLIP_SIGMAS
from vaeguard.errors import BundleError
from vaeguard.ingest import Reason, Rejection, to_number, to_timestamp
from vaeguard.records.serving import Features, Inbound, Stateless, entity_of
from vaeguard.scored import ScoredRecord
from vaeguard.serving.explain import score_records
from vaeguard.thresholds import FollowingThreshold
from vaeguard.thresholds import p_values as tail_probabilities

#: Value types the fast path converts as they are (anything else is checked record by record).
_PLAIN_NUMBERS = {int, float, bool}


class TabularServing(Stateless):
    """A `VAEDetector` behind the `Serving` interface.

    A record needs every feature and condition of the model as a finite number (numeric
    strings count; see `vaeguard.ingest.to_number`) or, for a categorical condition, any
    non-null value; its optional ``ts`` must be a valid timestamp (it is echoed as sent). The
    fast path builds the whole matrix with one NumPy conversion; only a batch holding a bad
    record checks records one by one to name the culprit.
    """

    kind = "tabular"
    #: The record field naming the entity (else the message key): capped by the batch step.
    entity_field = "key"
    #: Explain anomalous rows by counterfactuals (off: every row gets the cheap explanation).
    counterfactuals = True

    def __init__(self, detector, version: str = "", *, follow: bool = True):
        """``follow``: keep the alert budget's threshold on the recent normal rows' scores
        (`FollowingThreshold`; a model calibrated by another rule keeps its fixed threshold)."""
        self.detector = detector
        self.version = version
        self.following = None
        threshold = getattr(detector, "threshold_rule_", None)
        if follow and threshold is not None and threshold.method == "budget":
            self.following = FollowingThreshold(threshold)
        #: What severity is measured against: fixed with the model, so read once.
        self.severity_reference = severity_reference(detector)
        self.feature_names = list(detector.feature_names_)
        conditions = detector.conditions_
        self.conditions = conditions if conditions is not None and conditions.columns else None
        cols = self.conditions.columns if self.conditions else []
        self.numeric_conditions = [c.name for c in cols if c.kind == "numeric"]
        self.categorical_conditions = [c.name for c in cols if c.kind == "categorical"]
        self._numeric = self.feature_names + self.numeric_conditions
        self.required_fields = self._numeric + self.categorical_conditions
        self.score_reference = getattr(detector, "score_reference_", None)

    def warm_up(self) -> None:
        from vaeguard.model.scoring import BUCKETS

        det = self.detector
        width = det.conditions_.width
        for size in BUCKETS:
            x = np.repeat(det.scaler_.center[None, :], size, axis=0)
            c = np.zeros((size, width), dtype="float32") if width else None
            if not np.isfinite(det.score_matrix(x, c).scores).all():
                raise BundleError("the model produces non-finite scores on its own median")

    # -- featurize --------------------------------------------------------------------------

    def featurize(self, items: Sequence[Inbound]) -> Features:
        records = [it.record for it in items]
        names = self._numeric
        try:
            values = [r[f] for r in records for f in names]
            if not set(map(type, values)) <= _PLAIN_NUMBERS:
                raise ValueError("strings or other types: check record by record")
            matrix = np.array(values, dtype="float64").reshape(len(records), len(names))
            if not np.isfinite(matrix).all():
                raise ValueError("non-finite")
            for r in records:
                ts = r.get("ts")
                if ts is not None and isinstance(to_timestamp(ts), Rejection):
                    raise ValueError("ts")
                for name in self.categorical_conditions:
                    if r[name] is None:
                        raise ValueError(name)
            rejected: list[Rejection] = []
            keep = np.arange(len(records), dtype="int64")
        except Exception:
            keep, matrix, rejected = self._checked(records)
        kept = [items[i] for i in keep.tolist()]
        c = None
        if self.conditions is not None:
            c = (
                self.conditions.transform([it.record for it in kept])
                if kept
                else np.zeros((0, self.conditions.width), dtype="float32")
            )
        return Features(
            x=matrix[:, : len(self.feature_names)],
            c=c,
            mask=None,
            keep=keep,
            entities=[entity_of(it) for it in kept],
            timestamps=[_timestamp(it) for it in kept],
            rejected=rejected,
        )

    def _checked(self, records: Sequence[dict[str, Any]]):
        """Record-by-record validation: the good rows' matrix and a rejection for each bad one."""
        rows: list[list[float]] = []
        keep: list[int] = []
        rejected: list[Rejection] = []
        for i, r in enumerate(records):
            try:
                row = self.check(r)
            except Exception as exc:  # a bug here must cost one record, not the stream
                row = Rejection(Reason.PROCESSING_ERROR, type(exc).__name__, str(exc)[:500])
            if isinstance(row, Rejection):
                rejected.append(row.at(i))
            else:
                rows.append(row)
                keep.append(i)
        matrix = np.array(rows, dtype="float64").reshape(len(rows), len(self._numeric))
        return np.asarray(keep, dtype="int64"), matrix, rejected

    def check(self, record: dict[str, Any]) -> list[float] | Rejection:
        """One record's numeric row (features, then numeric conditions), or why it is refused."""
        n_features = len(self.feature_names)
        row: list[float] = []
        for j, name in enumerate(self._numeric):
            what = f"{'feature' if j < n_features else 'condition'} {name!r}"
            number = to_number(record.get(name), what)
            if number is None:
                return Rejection(Reason.MISSING_FEATURE, "KeyError", f"{what} is missing")
            if isinstance(number, Rejection):
                return number
            row.append(number)
        for name in self.categorical_conditions:
            if record.get(name) is None:
                return Rejection(
                    Reason.MISSING_FEATURE, "KeyError", f"condition {name!r} is missing"
                )
        ts = record.get("ts")
        if ts is not None:
            t = to_timestamp(ts, "'ts'")
            if isinstance(t, Rejection):
                return t
        return row

    # -- score -------------------------------------------------------------------------------

    def score(
        self,
        features: Features,
        items: Sequence[Inbound],
        *,
        top_k: int,
        bands: Sequence[tuple[str, float]],
        explain: str = "all",
    ) -> list[ScoredRecord]:
        det = self.detector
        x = features.x
        center, scale = det.scaler_.center, det.scaler_.scale
        x_in = np.clip(x, center - CLIP_SIGMAS * scale, center + CLIP_SIGMAS * scale)
        result = det.score_matrix(x_in, features.c)
        following = self.following
        if following is not None:
            p_values = following.p_values(result.scores)
            result = dataclasses.replace(result, threshold=following.value)
        else:
            p_values = tail_probabilities(det.threshold_rule_, result.scores)
        if self.counterfactuals and result.is_anomaly.any():
            # Anomalous rows only: what their top features should have been, and how much each
            # correction explains (`VAEDetector.counterfactual_matrix`). Normal rows keep the
            # cheap path: the decoder's mean, clipped to the plausible range.
            from vaeguard.model.counterfactual import CANDIDATES

            result = det.counterfactual_matrix(
                x_in, features.c, base=result, k=top_k, candidates=max(CANDIDATES, top_k)
            )
        rows = None if explain == "all" else np.flatnonzero(result.scores > result.threshold)
        contributions = top_contributions(
            result.contributions,
            x,
            result.expected,
            self.feature_names,
            top_k,
            score_drop=result.score_drop,
            blame=result.blame,
            rows=rows,
        )
        records = score_records(
            items,
            features.entities,
            features.timestamps,
            result.scores,
            result.threshold,
            contributions,
            bands=bands,
            model_version=self.version,
            p_values=None if p_values is None else p_values.tolist(),
            **self.severity_reference,
        )
        if following is not None:  # the next batch is judged with these rows learned
            following.learn(result.scores, p_values)
        return records


def severity_reference(detector) -> dict[str, float | None]:
    """What severity is measured against (`vaeguard.severity.levels`): the tail probability
    at which a budget threshold alerts, and the median normal score (the calibration's)."""
    rule = getattr(detector, "threshold_rule_", None)
    budget = None if rule is None else rule.params.get("budget")
    reference = getattr(detector, "score_reference_", None)
    median = None
    if reference is not None and len(reference) > 1:
        median = float(np.interp(0.5, np.linspace(0.0, 1.0, len(reference)), reference))
    return {
        "alert_p": float(budget) / 1000.0 if budget and rule.method == "budget" else None,
        "median": median,
    }


def _timestamp(item: Inbound) -> Any:
    """What the score record reports as the time: the record's ``ts``, else the message's."""
    ts = item.record.get("ts")
    return ts if ts is not None else item.timestamp_ms
