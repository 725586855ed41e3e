"""Records → model input: the seam between the stream and the model.

A `Featurizer` turns a batch of decoded JSON objects (with each record's entity and timestamp)
into the matrices the detector scores, and says which records it could not use (they become
dead letters). `TabularFeaturizer` scores each record on its own; the stateful per-entity window
featurizer (`vaeguard.daemon.window.WindowStreamFeaturizer`) fits the same interface: ``keep``
maps every scored row back to the record it reports on, and records it only buffers have no row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vaeguard.daemon.records import Reason


@dataclass
class Rejection:
    index: int  # into the records given to transform
    reason: str
    error_class: str
    detail: str


@dataclass
class FeatureBatch:
    """Model input for the scorable records of a batch.

    ``x`` (rows × features, user units), ``c`` (encoded conditions or None), ``mask`` (1 =
    observed, for models trained with missing values; None = all observed) and ``keep``: for
    each row, the index of the record it belongs to.
    """

    x: np.ndarray
    c: np.ndarray | None
    mask: np.ndarray | None
    keep: np.ndarray
    rejected: list[Rejection] = field(default_factory=list)


class Featurizer(Protocol):
    def transform(
        self,
        records: Sequence[dict[str, Any]],
        entities: Sequence[str | None],
        timestamps: Sequence[Any],
    ) -> FeatureBatch: ...


_NUMBER_TYPES = (int, float, bool)


class TabularFeaturizer:
    """One row per record: the model's features (and numeric conditions) by name.

    The fast path builds the whole matrix with one NumPy conversion; only a batch holding a
    bad record falls back to checking records one by one to name the culprit.
    """

    def __init__(self, feature_names: Sequence[str], conditions=None):
        self.feature_names = list(feature_names)
        self.conditions = conditions if conditions is not None and conditions.columns else None
        cols = self.conditions.columns if self.conditions else []
        self.numeric_conditions = [c.name for c in cols if c.kind == "numeric"]
        self.categorical_conditions = [c.name for c in cols if c.kind == "categorical"]
        self._numeric = self.feature_names + self.numeric_conditions

    @classmethod
    def for_detector(cls, detector) -> TabularFeaturizer:
        return cls(detector.feature_names_, detector.conditions_)

    def transform(
        self,
        records: Sequence[dict[str, Any]],
        entities: Sequence[str | None] = (),
        timestamps: Sequence[Any] = (),
    ) -> FeatureBatch:
        names = self._numeric
        try:
            matrix = np.array([[r[f] for f in names] for r in records], dtype="float64")
            if matrix.shape != (len(records), len(names)):
                raise ValueError("ragged")
            if self.categorical_conditions:
                for r in records:
                    for name in self.categorical_conditions:
                        if r[name] is None:
                            raise ValueError(name)
            good = np.isfinite(matrix).all(axis=1)
            if not good.all():
                raise ValueError("non-finite")
            rejected: list[Rejection] = []
            keep = np.arange(len(records))
        except (KeyError, TypeError, ValueError, OverflowError):
            keep, matrix, rejected = self._checked(records)
        n_features = len(self.feature_names)
        x = matrix[:, :n_features]
        c = None
        if self.conditions is not None:
            c = self.conditions.transform([records[i] for i in keep.tolist()])
        return FeatureBatch(x=x, c=c, mask=None, keep=keep, rejected=rejected)

    def _checked(self, records: Sequence[dict[str, Any]]):
        """Row-by-row validation: the good rows' matrix and a rejection for every bad record."""
        rows: list[list[float]] = []
        keep: list[int] = []
        rejected: list[Rejection] = []
        n_features = len(self.feature_names)
        for i, r in enumerate(records):
            problem = None
            row: list[float] = []
            for j, name in enumerate(self._numeric):
                what = "feature" if j < n_features else "condition"
                if name not in r or r[name] is None:
                    problem = (Reason.MISSING_FEATURE, "KeyError", f"{what} {name!r} is missing")
                    break
                value = r[name]
                try:
                    if isinstance(value, _NUMBER_TYPES):
                        number = float(value)
                    elif isinstance(value, str):
                        number = float(value.strip())
                    else:
                        raise TypeError
                except (TypeError, ValueError):
                    problem = (
                        Reason.NON_NUMERIC,
                        "TypeError",
                        f"{what} {name!r} is not a number: {_short(value)}",
                    )
                    break
                except OverflowError:
                    number = float("inf")
                if not np.isfinite(number):
                    problem = (
                        Reason.NON_FINITE,
                        "ValueError",
                        f"{what} {name!r} is {number} (NaN and ±inf are not allowed)",
                    )
                    break
                row.append(number)
            if problem is None:
                for name in self.categorical_conditions:
                    if r.get(name) is None:
                        problem = (
                            Reason.MISSING_FEATURE,
                            "KeyError",
                            f"condition {name!r} is missing",
                        )
                        break
            if problem is None:
                rows.append(row)
                keep.append(i)
            else:
                rejected.append(Rejection(i, *problem))
        matrix = np.array(rows, dtype="float64").reshape(len(rows), len(self._numeric))
        return np.asarray(keep, dtype="int64"), matrix, rejected


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def featurizer_for(detector, where: str = "bundle") -> Featurizer:
    """The featurizer a model needs (one place to dispatch on model kind: tabular or window)."""
    from vaeguard.timeseries.bundle import is_window_model

    if is_window_model(detector):
        from vaeguard.daemon.window import WindowStreamFeaturizer

        return WindowStreamFeaturizer.for_bundle(detector, where)
    return TabularFeaturizer.for_detector(detector)
