"""The Numenta Anomaly Benchmark runner: every series, one causal pass, NAB's result files.

NAB's rules, as applied here: each ``<category>/<series>.csv`` (``timestamp,value``) is
replayed once in file order through `run_stream`; the model first trains at the end of the
probationary period (NAB's ``min(floor(0.15·n), 750)`` rows) on those rows only, and later
retrains only on rows already seen; no labels are read except to copy them into the ``label``
column; one configuration (`NAB_PARAMS`, overridable as a whole) serves every series.

Output: ``OUT/NAME/<category>/NAME_<series>.csv`` with ``timestamp,value,anomaly_score,label``
(score in [0, 1]; rows with no score yet get 0), which NAB's scorer (and
``benchmarks/nab_scoring.py``) reads.
"""

from __future__ import annotations

import copy
import csv
import inspect
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
from vaeguard.timeseries.conditions import to_epoch_seconds

#: NAB caps the probationary period at 15% of 5000 rows.
PROBATION_FRACTION = 0.15
PROBATION_CAP = 750
LABELS_FILE = "combined_labels.json"

#: The one configuration used for every series, chosen on the same 25 shared series it is
#: graded on (NAB has no held-out split here; see benchmarks/RESULTS-nab.md for what was tried):
#: a VAE over the last 32 rows conditioned on the hour of day, scored on the newest 16 slots
#: (a spike counts while it is recent, not for all 32 rows), plus a second VAE of the same shape
#: whose windows add the seasonal residual (value − median of the same time on the previous 3
#: days, `SeasonalResidual`), so a missing daily peak is visible. Each model's scores become a
#: Gaussian tail probability against its last 1000 scores; the smaller of the two wins
#: (saturating at 1e-6), and an output is kept only when it beats every output of the previous
#: 200 rows, so one incident reads as one alert. ``"seasonal": None`` runs the first model alone.
NAB_PARAMS: dict[str, Any] = {
    "detector": {
        "window": 32,
        "interval": "rows",
        "conditions": ["hour_of_day"],
        "latent_dim": 4,
        "hidden": [64, 32],
        "train_steps": 600,
        "retrain_steps": 300,
        "batch_size": 64,
        "mc_samples": 16,
        "score_slots": 16,
        "likelihood": {
            "estimator": "gaussian",
            "short": 1,
            "history": 1000,
            "min_history": 100,
            "decades": 6.0,
            "suppress": 200,
        },
    },
    "seasonal": {"period": 86_400.0, "periods": 3, "tolerance": 3_600.0},
    "stream": {
        "retrain_growth": 2.0,
        "retrain_max_gap": None,
        "max_train": 4000,
        "reseed": "first",
    },
}


def merged_params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`NAB_PARAMS` with ``overrides`` merged in (nested dicts key by key), checked up front."""
    from vaeguard.timeseries.detector import WindowDetector
    from vaeguard.timeseries.stream import model_scores

    params = copy.deepcopy(NAB_PARAMS)
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError("NAB params: expected a JSON object")
        unknown = set(overrides) - set(params)
        if unknown:
            raise ConfigError(
                f"NAB params: unknown section(s) {', '.join(sorted(unknown))}; "
                "use detector, seasonal, stream"
            )
        for section, values in overrides.items():
            if section == "seasonal" and (values is None or params[section] is None):
                params[section] = values
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"NAB params: {section} must be an object")
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(params[section].get(key), dict):
                    params[section][key].update(value)
                else:
                    params[section][key] = value
    try:
        WindowDetector(**params["detector"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"NAB params: detector: {exc}") from None
    if params["seasonal"] is not None:
        from vaeguard.timeseries.seasonal import SeasonalResidual

        try:
            SeasonalResidual(**params["seasonal"])
            WindowDetector(**seasonal_detector(params["detector"]))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"NAB params: seasonal: {exc}") from None
    allowed = set(inspect.signature(model_scores).parameters) - {"detector", "records", "first_fit"}
    unknown = set(params["stream"]) - allowed - {"reseed"}
    if unknown:
        raise ConfigError(f"NAB params: stream: unknown field(s) {', '.join(sorted(unknown))}")
    return params


def seasonal_detector(detector: dict[str, Any]) -> dict[str, Any]:
    """The second model's parameters: the first model's, with the seasonal residual as a metric."""
    metrics = list(detector.get("metrics", ["value"]))
    if SEASONAL_FIELD not in metrics:
        metrics.append(SEASONAL_FIELD)
    return {**detector, "metrics": metrics}


#: The record field `SeasonalResidual` fills in for the second model.
SEASONAL_FIELD = "seasonal"


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
    with open(path, newline="") as f:
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
                float(row[1])
            except (DataError, ValueError):
                raise DataError(
                    f"{path}: line {line}: bad timestamp or value {row[:2]!r}"
                ) from None
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
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        for row in zip(stamps, values, scores.tolist(), labels.tolist(), strict=True):
            writer.writerow([row[0], row[1], f"{row[2]:.12g}", row[3]])
    os.replace(tmp, path)


# -- one series (runs in a worker process) -------------------------------------------------------

_DETECTORS: dict[str, Any] = {}


def _detector(detector: dict[str, Any]):
    """One detector per worker and configuration: reusing it avoids rebuilding the graphs."""
    from vaeguard.timeseries.detector import WindowDetector

    key = json.dumps(detector, sort_keys=True)
    if key not in _DETECTORS:
        _DETECTORS[key] = WindowDetector(**detector)
    return _DETECTORS[key]


def score_series(series: Series, params: dict[str, Any]) -> dict[str, Any]:
    """Run the detector over one series; returns the scores and timings."""
    from vaeguard.timeseries.seasonal import SeasonalResidual
    from vaeguard.timeseries.stream import apply_likelihood_views, run_stream

    started = time.perf_counter()
    stamps, values = read_series(series.path)
    records = [{"ts": s, "value": float(v)} for s, v in zip(stamps, values, strict=True)]
    detector = _detector(params["detector"])
    stream = dict(params["stream"])
    reseed = stream.pop("reseed", "first")
    first_fit = probation_rows(len(records))
    result = run_stream(detector, records, first_fit=first_fit, reseed=reseed, **stream)
    output = result.output
    if params.get("seasonal") is not None:
        seasonal = SeasonalResidual(**params["seasonal"], field=SEASONAL_FIELD)
        second = _detector(seasonal_detector(params["detector"]))
        other = run_stream(
            second, seasonal.enrich(records), first_fit=first_fit, reseed=reseed, **stream
        )
        views = [result.model_scores, other.model_scores]
        output = apply_likelihood_views(views, detector.likelihood(), reseed)
    return {
        "series": series,
        "stamps": stamps,
        "values": values,
        "raw": result.raw,
        "scores": np.clip(output, 0.0, 1.0),
        "trained_at": result.trained_at,
        "model_scores": result.model_scores,
        "stats": result.stats,
        "seconds": time.perf_counter() - started,
    }


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

    if jobs <= 1:
        for s in order:
            finish(score_series(s, params))
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            futures = [pool.submit(score_series, s, params) for s in order]
            for future in as_completed(futures):
                finish(future.result())
    results.sort(key=lambda r: r["series"].key)
    return NabRun(results, time.perf_counter() - started, sum(len(r["stamps"]) for r in results))
