"""Turning user input (arrays, DataFrames, column mappings, record lists) into checked matrices.

Every rejection names the row and the column, because "could not convert string to float"
without a location is useless on a 10-million-row file.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vaeguard.errors import DataError
from vaeguard.ingest import Reason, Rejection, short_repr, to_number


def _is_dataframe(obj: Any) -> bool:
    return hasattr(obj, "columns") and hasattr(obj, "iloc")


def column_names(data: Any) -> list[str] | None:
    """The column names of named input, or None for a bare array."""
    if _is_dataframe(data):
        return [str(c) for c in data.columns]
    if isinstance(data, Mapping):
        return [str(k) for k in data]
    if (
        isinstance(data, Sequence)
        and not isinstance(data, str | bytes)
        and data
        and isinstance(data[0], Mapping)
    ):
        names: dict[str, None] = {}
        for row in data:
            names.update(dict.fromkeys(map(str, row)))
        return list(names)
    return None


def row_count(data: Any) -> int:
    if isinstance(data, Mapping):
        return len(next(iter(data.values()))) if data else 0
    return len(data)


def get_column(data: Any, name: str) -> np.ndarray:
    """One named column as an object or numeric array (rows lacking the key give None)."""
    if _is_dataframe(data):
        return data[name].to_numpy()
    if isinstance(data, Mapping):
        column = data[name]
        if isinstance(column, np.ndarray) and column.ndim == 1:
            return column
        return _cells(column)
    return _cells([row.get(name) for row in data])


def _cells(values: Any) -> np.ndarray:
    """One object per cell: a cell that is itself a list stays one (refused) cell instead of
    becoming a dimension of the array."""
    values = list(values)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _row_label(data: Any, i: int) -> str:
    if _is_dataframe(data):
        return f"row index {data.index[i]!r}"
    return f"row {i + 1}"


def _check_cell(value: Any, data: Any, i: int, name: str) -> float:
    """One cell as a finite float, by the rule every record path uses (`ingest.to_number`):
    text that the daemon would refuse when scoring ("1_000", "12,5", "nan") is refused here
    too, so a table never trains on what its model will not score."""
    where = f"{_row_label(data, i)}, column {name!r}"
    if isinstance(value, numbers.Number) and not isinstance(value, str):
        try:
            out = float(value)  # numpy scalars, Decimal, Fraction; bools count as 0/1
        except (OverflowError, TypeError, ValueError):
            raise DataError(f"{where}: {value!r} is not a finite number") from None
        if math.isnan(out):
            raise DataError(f"{where}: NaN is not allowed")
        if math.isinf(out):
            raise DataError(f"{where}: {out} is not allowed")
        return out
    result = to_number(value, f"column {name!r}")
    if result is None:
        raise DataError(f"{where}: value is missing")
    if isinstance(result, Rejection):
        if result.reason is Reason.NON_FINITE:
            raise DataError(f"{where}: {short_repr(value, 80)} is not a finite number")
        raise DataError(f"{where}: {short_repr(value, 80)} is not a number")
    return result


def _has_text(raw: np.ndarray) -> bool:
    """Whether cells may be text (read by the record rule, not by NumPy's own parser)."""
    if raw.dtype.kind in "US":
        return True
    return raw.dtype == object and any(isinstance(v, str | bytes) for v in raw.ravel().tolist())


def numeric_column(data: Any, name: str) -> np.ndarray:
    """A named column as float64, or a DataError naming the first bad row."""
    raw = get_column(data, name)
    if _has_text(raw):
        return np.asarray(
            [_check_cell(value, data, i, name) for i, value in enumerate(raw.tolist())],
            dtype="float64",
        )
    try:
        values = (
            raw.astype("float64")
            if raw.dtype != object
            else np.asarray(raw.tolist(), dtype="float64")
        )
    except (TypeError, ValueError):
        values = None
    if values is not None and values.shape == raw.shape and np.isfinite(values).all():
        return values
    for i, value in enumerate(raw):
        _check_cell(value, data, i, name)
    raise DataError(f"column {name!r} contains values that are not finite numbers")  # unreachable


def feature_matrix(
    data: Any, feature_names: Sequence[str] | None, *, what: str = "feature"
) -> tuple[np.ndarray, list[str]]:
    """Validated float64 matrix of the given features, in the given order.

    Named input (DataFrame, mapping, records) is matched by column name; a bare 2-D array is
    taken positionally. With feature_names None, all columns of named input are used.
    """
    names = column_names(data)
    if names is not None:
        if feature_names is None:
            feature_names = names
        missing = [f for f in feature_names if f not in names]
        if missing:
            raise DataError(f"missing {what} column(s): {', '.join(map(repr, missing))}")
        n = row_count(data)
        if n == 0:
            raise DataError("no rows in the input")
        matrix = np.empty((n, len(feature_names)), dtype="float64")
        for j, name in enumerate(feature_names):
            matrix[:, j] = numeric_column(data, name)
        return matrix, list(feature_names)

    array = np.asarray(data, dtype=object) if not isinstance(data, np.ndarray) else data
    if array.ndim == 1:
        array = (
            array.reshape(-1, 1)
            if feature_names is not None and len(feature_names) == 1
            else array.reshape(1, -1)
        )
    if array.ndim != 2:
        raise DataError(
            f"expected a 2-D table of rows × {what}s, got an array of shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise DataError("no rows in the input")
    if feature_names is None:
        feature_names = [f"x{j}" for j in range(array.shape[1])]
    if array.shape[1] != len(feature_names):
        raise DataError(f"expected {len(feature_names)} {what} column(s), got {array.shape[1]}")
    ok = False
    if not _has_text(array):  # text is read by the record rule, cell by cell, below
        try:
            matrix = np.asarray(array, dtype="float64")
            ok = bool(np.isfinite(matrix).all())
        except (TypeError, ValueError):
            pass
    if not ok:
        matrix = np.empty(array.shape, dtype="float64")
        for i in range(array.shape[0]):
            for j, name in enumerate(feature_names):
                matrix[i, j] = _check_cell(array[i, j], array, i, name)
    return matrix, list(feature_names)
