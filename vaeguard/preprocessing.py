"""Preprocessing fitted on training data and saved in the bundle: robust scaling, condition encoding."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaeguard.data import column_names, feature_matrix, get_column, numeric_column, row_count
from vaeguard.errors import DataError

#: IQR of a standard normal; dividing by it makes "one unit" mean one σ for Gaussian features.
IQR_TO_SIGMA = 1.3489795


@dataclass
class RobustScaler:
    """(x − median) / (IQR / 1.349), robust to the outliers that may hide in "normal" data.

    A feature whose IQR is zero (mostly constant, e.g. a rarely non-zero counter) falls back to
    its standard deviation, and a constant feature to 1, so nothing is divided by zero.
    """

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> RobustScaler:
        center = np.median(x, axis=0)
        q75, q25 = np.percentile(x, [75, 25], axis=0)
        scale = (q75 - q25) / IQR_TO_SIGMA
        std = x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, std)
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(center.astype("float64"), scale.astype("float64"))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.center) / self.scale

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale + self.center

    def to_dict(self) -> dict[str, list[float]]:
        return {"center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobustScaler:
        return cls(
            np.asarray(d["center"], dtype="float64"), np.asarray(d["scale"], dtype="float64")
        )


@dataclass
class ConditionColumn:
    """One condition: categorical (one-hot over the training categories) or numeric (scaled).

    ``other``: a categorical condition fitted with a cap on its categories has one more column,
    last, shared by the rarer training values and by every value unseen in training. Without
    it (every bundle written before the cap, and any fitted under it) an unseen value encodes
    as all zeros, as it always did.
    """

    name: str
    kind: str  # "categorical" | "numeric"
    categories: list[str] = field(default_factory=list)
    center: float = 0.0
    scale: float = 1.0
    other: bool = False

    @property
    def width(self) -> int:
        return len(self.categories) + self.other if self.kind == "categorical" else 1

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            d = {"name": self.name, "kind": self.kind, "categories": self.categories}
            return {**d, "other": True} if self.other else d
        return {"name": self.name, "kind": self.kind, "center": self.center, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConditionColumn:
        return cls(
            name=d["name"],
            kind=d["kind"],
            categories=list(d.get("categories", [])),
            center=float(d.get("center", 0.0)),
            scale=float(d.get("scale", 1.0)),
            other=_flag(d.get("other", False)),
        )


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"'other' must be true or false, got {value!r}")
    return value


def _looks_categorical(values: np.ndarray) -> bool:
    if values.dtype.kind in "biuf":
        return values.dtype.kind == "b"
    try:
        np.asarray(values.tolist(), dtype="float64")
    except (TypeError, ValueError):
        return True
    return False


@dataclass
class ConditionEncoder:
    """Encodes the CVAE's condition columns (time of day, entity type, …) into one vector.

    A category never seen in training encodes as all zeros: the model then conditions on
    "none of the known categories" instead of failing the whole batch; under a cap on the
    categories (``max_categories``) it goes to the "other" column instead, with the rare ones.
    """

    columns: list[ConditionColumn] = field(default_factory=list)

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @classmethod
    def fit(
        cls, data: Any, categorical: set[str] | None = None, max_categories: int | None = None
    ) -> ConditionEncoder:
        """``max_categories``: at most this many columns per categorical condition (at least 2):
        beyond it, the most frequent values keep theirs and the rest share an "other" one."""
        if max_categories is not None and max_categories < 2:
            raise DataError(f"max_categories must be at least 2, got {max_categories}")
        categorical = set(categorical or ())
        names = column_names(data)
        if names is None:
            matrix, names = feature_matrix(data, None, what="condition")
            data = {n: matrix[:, j] for j, n in enumerate(names)}
        columns = []
        for name in names:
            raw = get_column(data, name)
            if name in categorical or _looks_categorical(raw):
                columns.append(_categorical(name, raw, max_categories))
            else:
                values = numeric_column(data, name)
                scaler = RobustScaler.fit(values.reshape(-1, 1))
                columns.append(
                    ConditionColumn(
                        name,
                        "numeric",
                        center=float(scaler.center[0]),
                        scale=float(scaler.scale[0]),
                    )
                )
        return cls(columns)

    def transform(self, data: Any) -> np.ndarray:
        names = column_names(data)
        if names is None:
            matrix, _ = feature_matrix(data, self.names, what="condition")
            data = {n: matrix[:, j] for j, n in enumerate(self.names)}
            names = self.names
        missing = [c.name for c in self.columns if c.name not in names]
        if missing:
            raise DataError(f"missing condition column(s): {', '.join(map(repr, missing))}")
        n = row_count(data)
        out = np.zeros((n, self.width), dtype="float32")
        offset = 0
        for col in self.columns:
            if col.kind == "categorical":
                index = {c: k for k, c in enumerate(col.categories)}
                unseen = len(col.categories) if col.other else None
                for i, value in enumerate(get_column(data, col.name)):
                    k = index.get(_category(value), unseen)
                    if k is not None:
                        out[i, offset + k] = 1.0
            else:
                scaled = (numeric_column(data, col.name) - col.center) / col.scale
                # ±1e6 robust σ: an absurd but finite value must not overflow float32 to inf
                out[:, offset] = np.clip(scaled, -1e6, 1e6)
            offset += col.width
        return out

    def to_dict(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.columns]

    @classmethod
    def from_dict(cls, items: list[dict[str, Any]]) -> ConditionEncoder:
        return cls([ConditionColumn.from_dict(d) for d in items])


def _categorical(name: str, raw: Any, max_categories: int | None) -> ConditionColumn:
    counts = Counter(_category(v) for v in raw)
    if max_categories is None or len(counts) <= max_categories:
        return ConditionColumn(name, "categorical", categories=sorted(counts))
    # the most frequent first, ties by name, so that the same data keeps the same columns
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    kept = sorted(ranked[: max_categories - 1])
    return ConditionColumn(name, "categorical", categories=kept, other=True)


def _category(value: Any) -> str:
    """Categories compare as strings, so 3, 3.0 and "3" from CSV or JSON are the same category."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
