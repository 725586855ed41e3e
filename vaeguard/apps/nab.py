"""The Numenta Anomaly Benchmark runner: every series, one causal pass, NAB's result files.

NAB's rules, as applied here: each ``<category>/<series>.csv`` (``timestamp,value``) is
replayed once in file order through `vaeguard.apps.online.run_online`, i.e. through the
daemon's own batch step and window-mode serving object: the detector first trains at the end of
the probationary period (NAB's ``min(floor(0.15·n), 750)`` rows) on those rows only, and later
retrains only on rows already seen; no labels are read except to copy them into the ``label``
column; one configuration (`NAB_PARAMS`, a `ViewSet` configuration, overridable key by key)
serves every series, and is what ``vaeguard train-window`` trains by default.

Output: ``OUT/NAME/<category>/NAME_<series>.csv`` with ``timestamp,value,anomaly_score,label``
(score in [0, 1]; rows with no score yet get 0), which NAB's scorer (and
``benchmarks/nab_scoring.py``) reads.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from vaeguard.errors import ConfigError, DataError
from vaeguard.files import replacing
from vaeguard.ingest import to_number
from vaeguard.timeseries.conditions import to_epoch_seconds
from vaeguard.timeseries.views import DEFAULT_CONFIG

#: NAB caps the probationary period at 15% of 5000 rows.
PROBATION_FRACTION = 0.15
PROBATION_CAP = 750
LABELS_FILE = "combined_labels.json"

#: The one configuration used for every series: `vaeguard.timeseries.views.DEFAULT_CONFIG`
#: (see benchmarks/RESULTS-nab.md for how it was chosen, out-of-fold).
NAB_PARAMS: dict[str, Any] = DEFAULT_CONFIG


def merged_params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`NAB_PARAMS` with ``overrides`` merged in (nested objects key by key), checked up front.

    ``views`` may be given as a list (replaces the views) or as an object (merged into every
    view); ``window.seasonal`` and ``likelihood`` may be null.
    """
    from vaeguard.timeseries.views import ViewSet, merge_config

    params = merge_config(NAB_PARAMS, overrides)
    try:
        ViewSet.from_params(params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"NAB params: {exc}") from None
    return params


def probation_rows(n: int) -> int:
    """NAB's probationary period of a series of n rows."""
    return min(math.floor(PROBATION_FRACTION * n), PROBATION_CAP)


@dataclass(frozen=True)
class Series:
    category: str
    name: str  # file name without .csv
    path: Path

    @property
    def key(self) -> str:
        return f"{self.category}/{self.name}.csv"


def discover(data_dir: Path) -> list[Series]:
    """Every ``<category>/<series>.csv`` under data_dir, sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory")
    found = [
        Series(p.parent.name, p.stem, p) for p in sorted(data_dir.glob("*/*.csv")) if p.is_file()
    ]
    if not found:
        raise DataError(f"{data_dir}: no <category>/<series>.csv files")
    return found


def find_labels(data_dir: Path) -> dict[str, list[str]] | None:
    """``combined_labels.json`` in data_dir or the nearest folder above it, if any."""
    for folder in [Path(data_dir).resolve(), *Path(data_dir).resolve().parents]:
        candidate = folder / LABELS_FILE
        if candidate.is_file():
            try:
                labels = json.loads(candidate.read_text())
            except ValueError as exc:
                raise DataError(f"{candidate}: not valid JSON ({exc})") from None
            if not isinstance(labels, dict):
                raise DataError(f"{candidate}: expected an object of series → timestamps")
            return labels
    return None


def read_series(path: Path) -> tuple[list[str], list[str]]:
    """(timestamps, values) as written in the file; checks the header and the cells."""
    try:
        return _read_series(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a CSV file ({exc})") from None


def _read_series(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise DataError(f"{path}: expected the header 'timestamp,value'")
        stamps, values = [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{path}: line {line}: expected timestamp,value")
            try:
                to_epoch_seconds(row[0])
            except (DataError, ValueError):
                raise DataError(f"{path}: line {line}: bad timestamp {row[0]!r}") from None
            value = to_number(row[1], "value")  # the rule every record path uses
            if not isinstance(value, float):
                why = "value is missing" if value is None else value.detail
                raise DataError(f"{path}: line {line}: {why}")
            stamps.append(row[0])
            values.append(row[1])
    if not stamps:
        raise DataError(f"{path}: no rows")
    return stamps, values


def label_column(stamps: list[str], anomalies: list[str] | None) -> np.ndarray:
    out = np.zeros(len(stamps), dtype="int64")
    if anomalies:
        wanted = {to_epoch_seconds(a) for a in anomalies}
        for i, s in enumerate(stamps):
            if to_epoch_seconds(s) in wanted:
                out[i] = 1
    return out


def write_result(path: Path, stamps, values, scores: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, mode=0o644) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        for row in zip(stamps, values, scores.tolist(), labels.tolist(), strict=True):
            writer.writerow([row[0], row[1], f"{row[2]:.12g}", row[3]])


# -- one series (runs in a worker process) -------------------------------------------------------


def score_series(series: Series, params: dict[str, Any]) -> dict[str, Any]:
    """Run the detector over one series; returns the scores, each view's raw scores, timings."""
    from vaeguard.apps.online import run_online

    started = time.perf_counter()
    stamps, values = read_series(series.path)
    # (read_series has checked that every value reads as a number by the records' rule)
    records = [
        {"ts": s, "value": to_number(v, "value")} for s, v in zip(stamps, values, strict=True)
    ]
    result = run_online(params, records, first_fit=probation_rows(len(records)))
    return {
        "series": series,
        "stamps": stamps,
        "values": values,
        "raw": result.raw,
        "restarts": result.restarts,
        "entities": result.entities,
        "scores": np.clip(result.output, 0.0, 1.0),
        "trained_at": result.trained_at,
        "refused": result.refused,
        "seconds": time.perf_counter() - started,
    }


def run_jobs(
    fn: Callable[..., Any],
    calls: list[tuple],
    jobs: int,
    on_result: Callable[[Any], None],
) -> None:
    """``fn(*args)`` for each of ``calls``: in this process when ``jobs`` ≤ 1, else in
    ``jobs`` spawned processes sharing the cores' TensorFlow threads; ``on_result`` receives
    each result as it comes (in completion order with several jobs)."""
    if jobs <= 1 or len(calls) <= 1:
        for args in calls:
            on_result(fn(*args))
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    ) as pool:
        for future in as_completed([pool.submit(fn, *args) for args in calls]):
            on_result(future.result())


def _init_worker(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from vaeguard._quiet import import_keras

    import_keras()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


# -- the whole corpus ----------------------------------------------------------------------------


@dataclass
class NabRun:
    results: list[dict[str, Any]]
    seconds: float
    rows: int


def run_nab(
    data_dir: Path,
    out_dir: Path | None,
    detector_name: str,
    *,
    params: dict[str, Any] | None = None,
    jobs: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> NabRun:
    """Score every series under data_dir and write NAB result files under out_dir/detector_name."""
    if not detector_name or "/" in detector_name or detector_name.startswith("."):
        raise DataError(f"detector name {detector_name!r}: use a plain folder name")
    params = params or NAB_PARAMS
    series = discover(data_dir)
    labels = find_labels(data_dir) or {}
    started = time.perf_counter()
    # Longest series first, so the last worker to finish is not stuck with the biggest one.
    order = sorted(series, key=lambda s: -s.path.stat().st_size)
    results: list[dict[str, Any]] = []

    def finish(result: dict[str, Any]) -> None:
        s: Series = result["series"]
        result["labels"] = label_column(result["stamps"], labels.get(s.key))
        if out_dir is not None:
            path = Path(out_dir) / detector_name / s.category / f"{detector_name}_{s.name}.csv"
            write_result(
                path, result["stamps"], result["values"], result["scores"], result["labels"]
            )
        results.append(result)
        if progress is not None:
            progress(result)

    run_jobs(score_series, [(s, params) for s in order], jobs, finish)
    results.sort(key=lambda r: r["series"].key)
    return NabRun(results, time.perf_counter() - started, sum(len(r["stamps"]) for r in results))
