"""Numenta Anomaly Benchmark (NAB) scoring, reimplemented to reproduce NAB's published numbers.

This follows NAB v1.x (Lavin & Ahmad 2015; ``nab/sweeper.py``, ``nab/optimizer.py``,
``nab/scorer.py`` and ``nab/runner.py`` of numenta/NAB) so that vaeguard's numbers are
comparable with the NAB scoreboard. In short, per cost profile:

1. Every row of a series gets a *sweep weight*, the value it would add if it were a detection:

   * inside an anomaly window, ``tp * S(p) / S(-1)`` with ``p = -(end - i + 1) / width``
     (``S`` the scaled sigmoid): 1.0 at the window's first row, falling towards 0 at its end;
   * outside every window, ``fp * S(d)`` with ``d = (i - end) / (width - 1)`` measured from the
     end of the closest *preceding* window (so an alert just after a window costs little), and
     ``-fp`` when no window precedes the row.

2. Rows of the probationary period, the first ``min(floor(0.15 * n), 0.15 * 5000)`` rows of a
   series, are not scored at all (neither as detections nor as misses).

3. At a threshold ``t`` a row is a detection when ``anomaly_score >= t``. A window contributes
   the weight of its *earliest* detection (later ones in the same window add nothing) or
   ``-fn`` when it has none; every detection outside windows adds its (negative) weight.

4. The threshold is chosen per detector and profile to maximise the raw score summed over the
   whole corpus; every distinct anomaly score is a candidate, plus "detect nothing" (NAB's
   1.1). Sorting all rows once by score and accumulating makes that one pass, not a grid.

5. ``score = 100 * (raw - null) / (perfect - null)``: ``perfect`` is ``tp`` times the number
   of labelled windows, ``null`` the optimised raw score of NAB's null detector (a constant
   0.5 on every row), computed here on the same series rather than read from a file.

Run ``python -m benchmarks.nab_scoring --help`` for the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "NO_DETECTION_THRESHOLD",
    "PROFILES",
    "CorpusScore",
    "CostProfile",
    "Detections",
    "SeriesScore",
    "detections",
    "load_results",
    "load_windows",
    "main",
    "probation_length",
    "row_weights",
    "scaled_sigmoid",
    "score_corpus",
    "score_detector",
    "score_detector_profiles",
    "score_series",
    "sweep_thresholds",
]

Window = tuple[pd.Timestamp, pd.Timestamp]
Windows = Mapping[str, Sequence[Window]]

PROBATION_PERCENT = 0.15
"""Share of each series (at its start) that detectors may learn from unscored."""
PROBATION_CAP_ROWS = 5000
"""NAB caps the probationary period at ``PROBATION_PERCENT * 5000`` = 750 rows."""
NO_DETECTION_THRESHOLD = 1.1
"""NAB's first sweep threshold: above every score in [0, 1], so nothing is detected."""
NULL_DETECTOR_SCORE = 0.5
"""The constant anomaly score NAB's null detector emits on every row."""


@dataclass(frozen=True)
class CostProfile:
    """Weights of one NAB application profile (``config/profiles.json``).

    ``tn`` is kept for completeness: NAB's scorer never rewards true negatives.
    """

    tp: float
    fn: float
    fp: float
    tn: float = 1.0


PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile(tp=1.0, fn=1.0, fp=0.11, tn=1.0),
    "reward_low_FP_rate": CostProfile(tp=1.0, fn=1.0, fp=0.22, tn=1.0),
    "reward_low_FN_rate": CostProfile(tp=1.0, fn=2.0, fp=0.11, tn=1.0),
}


def scaled_sigmoid(position: float | np.ndarray) -> float | np.ndarray:
    """NAB's weighting curve ``2 / (1 + exp(5 x)) - 1``, and exactly -1 beyond ``x > 3``.

    Relative positions in [-1, 0) lie inside a window (-1 at its left edge gives 0.98661,
    0 at its right edge gives 0); positive ones lie after a window, in units of its width,
    and tend to -1 (the full false-positive cost) with distance.
    """
    x = np.asarray(position, dtype="float64")
    # Clip before exp() so that far-away rows (whose value is -1 anyway) cannot overflow.
    value = 2.0 / (1.0 + np.exp(5.0 * np.minimum(x, 3.0))) - 1.0
    value = np.where(x > 3.0, -1.0, value)
    return float(value) if value.ndim == 0 else value


MAX_TP = float(scaled_sigmoid(-1.0))
"""``S(-1)``: TP weights are divided by it, so a detection on a window's first row earns ``tp``."""


def probation_length(n_rows: int) -> int:
    """Rows at the start of a series that are not scored: ``min(floor(0.15 n), 750)``."""
    # 0.15 * 5000 is exactly 750.0 in binary floating point, so int() loses nothing.
    return int(min(math.floor(PROBATION_PERCENT * n_rows), PROBATION_PERCENT * PROBATION_CAP_ROWS))


# ----------------------------------------------------------------------------------------------
# Loading


def load_windows(path: str | Path) -> dict[str, list[Window]]:
    """Read NAB's ``combined_windows.json``: ``{"<category>/<series>.csv": [[start, end], ...]}``."""
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    return {
        name: [(pd.Timestamp(start), pd.Timestamp(end)) for start, end in limits]
        for name, limits in raw.items()
    }


def load_results(results_dir: str | Path, detector_name: str) -> dict[str, pd.DataFrame]:
    """Read a detector's NAB result files, keyed like the windows (``category/series.csv``).

    The layout is NAB's: ``results_dir/<detector>/<category>/<detector>_<series>.csv`` with at
    least the columns ``timestamp`` and ``anomaly_score``; other columns are ignored. Only
    series that have a file are returned, so a partial run scores the series it covers.
    """
    root = Path(results_dir) / detector_name
    if not root.is_dir():
        raise FileNotFoundError(f"no results directory for detector {detector_name!r}: {root}")
    prefix = f"{detector_name}_"
    results: dict[str, pd.DataFrame] = {}
    for path in sorted(root.glob("*/*.csv")):
        if not path.name.startswith(prefix):
            continue
        frame = pd.read_csv(path, usecols=["timestamp", "anomaly_score"])
        frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        frame["anomaly_score"] = frame["anomaly_score"].astype("float64")
        results[f"{path.parent.name}/{path.name[len(prefix) :]}"] = frame
    if not results:
        raise FileNotFoundError(f"no result files of the form {root}/<category>/{prefix}*.csv")
    return results


# ----------------------------------------------------------------------------------------------
# Per-series preparation (profile independent)


@dataclass(frozen=True)
class _PreparedSeries:
    """One series reduced to what scoring needs; built once, reused for every profile."""

    name: str
    scores: np.ndarray  # anomaly score per row
    unweighted: np.ndarray  # S(position) per row, before profile weights and MAX_TP
    window_of_row: np.ndarray  # window number (0..) for rows inside a window, else -1
    n_windows: int  # labelled windows of the series (including any lying in probation)
    n_probation: int


def _window_spans(
    timestamps: np.ndarray, windows: Sequence[Window], name: str
) -> list[tuple[int, int]]:
    """Row positions (first, last) of each window; limits must be timestamps of the series.

    NAB enters a window on the row whose timestamp equals its start and leaves it after the
    row equal to its end, so limits that match no row are an error (NAB's labeler refuses
    them too) rather than something to round.
    """
    spans: list[tuple[int, int]] = []
    for start, end in sorted(windows, key=lambda limits: pd.Timestamp(limits[0])):
        positions = []
        for limit in (start, end):
            hits = np.flatnonzero(timestamps == np.datetime64(pd.Timestamp(limit), "ns"))
            if hits.size == 0:
                raise ValueError(f"{name}: window limit {limit} is not a timestamp of the series")
            positions.append(int(hits[0]))
        first, last = positions
        if last < first:
            raise ValueError(f"{name}: window ({start}, {end}) ends before it starts")
        if spans and first <= spans[-1][1]:
            raise ValueError(f"{name}: window ({start}, {end}) overlaps the previous window")
        spans.append((first, last))
    return spans


def _prepare(name: str, frame: pd.DataFrame, windows: Sequence[Window]) -> _PreparedSeries:
    """Compute each row's window membership and unweighted scaled-sigmoid value."""
    scores = frame["anomaly_score"].to_numpy(dtype="float64")
    if np.isnan(scores).any():
        raise ValueError(f"{name}: anomaly_score has missing values")
    timestamps = pd.to_datetime(frame["timestamp"]).to_numpy(dtype="datetime64[ns]")
    n = len(scores)
    spans = _window_spans(timestamps, windows, name)

    # Before the first window there is nothing to be "close" to: full FP cost (S = -1).
    unweighted = np.full(n, -1.0)
    window_of_row = np.full(n, -1, dtype=np.int64)
    for k, (first, last) in enumerate(spans):
        width = last - first + 1
        inside = np.arange(first, last + 1)
        unweighted[first : last + 1] = scaled_sigmoid(-(last - inside + 1) / width)
        window_of_row[first : last + 1] = k
        stop = spans[k + 1][0] if k + 1 < len(spans) else n
        after = np.arange(last + 1, stop)
        if after.size:
            # NAB divides by (width - 1), which is 0 for a one-row window (NAB would crash);
            # treat every row after such a window as far away.
            distance = (after - last) / (width - 1) if width > 1 else np.full(after.size, np.inf)
            unweighted[last + 1 : stop] = scaled_sigmoid(distance)
    return _PreparedSeries(
        name=name,
        scores=scores,
        unweighted=unweighted,
        window_of_row=window_of_row,
        n_windows=len(spans),
        n_probation=probation_length(n),
    )


def _weights(series: _PreparedSeries, profile: CostProfile) -> np.ndarray:
    """Per-row sweep weights: what each row adds to the score if it is a detection."""
    # Same operation order as NAB (u * w / MAX_TP, u * w) so the floats agree bit for bit.
    return np.where(
        series.window_of_row >= 0,
        series.unweighted * profile.tp / MAX_TP,
        series.unweighted * profile.fp,
    )


def row_weights(
    result: pd.DataFrame, windows: Sequence[Window], profile: CostProfile
) -> np.ndarray:
    """Per-row sweep weights of one series: NAB's ``S(t)_<profile>`` column of a results file.

    Rows of the probationary period get a weight too (as in NAB's files) but never count.
    """
    return _weights(_prepare("series", result, windows), profile)


# ----------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class SeriesScore:
    """Raw NAB score of one series at a fixed threshold, with NAB's row counts."""

    raw: float
    tp: int
    fp: int
    tn: int
    fn: int


@dataclass(frozen=True)
class CorpusScore:
    """A detector's NAB result for one profile: optimised threshold, raw and normalised score."""

    threshold: float
    raw: float
    null: float
    perfect: float
    score: float
    """Normalised: 0 for the null detector, 100 for a perfect one (NaN with no windows)."""
    tp: int
    fp: int
    tn: int
    fn: int
    per_series: Mapping[str, SeriesScore] = field(default_factory=dict)


def _score_prepared(series: _PreparedSeries, profile: CostProfile, threshold: float) -> SeriesScore:
    """Direct (non-sweep) scoring of one series, as NAB's final per-file scoring does."""
    scored = np.arange(len(series.scores)) >= series.n_probation
    weights = _weights(series, profile)
    detected = scored & (series.scores >= threshold)
    in_window = series.window_of_row >= 0

    raw = float(weights[detected & ~in_window].sum())
    for k in range(series.n_windows):
        rows = np.flatnonzero(scored & (series.window_of_row == k))
        if rows.size == 0:
            continue  # a window wholly inside the probationary period is neither hit nor missed
        hits = rows[detected[rows]]
        # Weights fall along a window, so the earliest detection is also the best one.
        raw += float(weights[hits[0]]) if hits.size else -profile.fn
    tp = int((detected & in_window).sum())
    fp = int((detected & ~in_window).sum())
    return SeriesScore(
        raw=raw,
        tp=tp,
        fp=fp,
        tn=int((scored & ~in_window).sum()) - fp,
        fn=int((scored & in_window).sum()) - tp,
    )


@dataclass(frozen=True)
class Detections:
    """What an operator sees at one alert level, counted after the probationary period:
    labelled windows with at least one detection, and detections outside every window."""

    windows: int  # labelled windows with scored rows
    detected: int  # of those, windows with a detection
    outside: int  # detections (rows) outside every window
    rows: int  # scored rows

    def __add__(self, other: Detections) -> Detections:
        return Detections(
            self.windows + other.windows,
            self.detected + other.detected,
            self.outside + other.outside,
            self.rows + other.rows,
        )

    @property
    def outside_per_1000(self) -> float:
        return 1000.0 * self.outside / self.rows if self.rows else math.nan


def detections(series: _PreparedSeries, threshold: float) -> Detections:
    """`Detections` of one prepared series at ``threshold``."""
    scored = np.arange(len(series.scores)) >= series.n_probation
    detected = scored & (series.scores >= threshold)
    windows = hit = 0
    for k in range(series.n_windows):
        rows = scored & (series.window_of_row == k)
        if rows.any():
            windows += 1
            hit += bool((detected & rows).any())
    outside = int((detected & (series.window_of_row < 0)).sum())
    return Detections(windows, hit, outside, int(scored.sum()))


def score_series(
    result: pd.DataFrame, windows: Sequence[Window], profile: CostProfile, threshold: float
) -> SeriesScore:
    """Raw NAB score of one series (columns ``timestamp``, ``anomaly_score``) at ``threshold``.

    A row is a detection when ``anomaly_score >= threshold``. Useful for inspecting a single
    series; corpus results come from :func:`score_corpus`.
    """
    return _score_prepared(_prepare("series", result, windows), profile, threshold)


@dataclass(frozen=True)
class _Sweep:
    """Corpus raw score and counts for every candidate threshold, highest threshold first."""

    thresholds: np.ndarray
    raw: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_in_window: int
    n_outside: int


def _sweep(prepared: Sequence[_PreparedSeries], profile: CostProfile) -> _Sweep:
    """Score every distinct anomaly score as a threshold in one sorted pass over the corpus.

    Rows are visited from the highest score down; each visited row is a detection for all
    thresholds at or below its score. False positives accumulate by a running sum; a
    window's value is the running maximum of its visited weights, starting from ``-fn``.
    The score for threshold ``t`` is read after the last row with score ``t``.
    """
    scores, weights, window_ids = [], [], []
    offset = 0
    for series in prepared:
        scored = slice(series.n_probation, None)
        ids = series.window_of_row[scored]
        scores.append(series.scores[scored])
        weights.append(_weights(series, profile)[scored])
        # Number windows corpus-wide; -1 (outside every window) stays -1.
        window_ids.append(np.where(ids >= 0, ids + offset, -1))
        offset += series.n_windows
    score = np.concatenate(scores) if scores else np.empty(0)
    weight = np.concatenate(weights) if weights else np.empty(0)
    window = np.concatenate(window_ids) if window_ids else np.empty(0, dtype=np.int64)

    order = np.argsort(-score, kind="stable")
    score, weight, window = score[order], weight[order], window[order]
    outside = window < 0

    # Only windows with at least one scorable row take part (as misses until detected).
    present = np.unique(window[~outside])
    change = np.zeros(score.size)
    for k in present:
        rows = np.flatnonzero(window == k)
        best = np.maximum.accumulate(np.concatenate(([-profile.fn], weight[rows])))
        change[rows] = np.diff(best)
    none_detected = -profile.fn * present.size
    running = np.cumsum(np.where(outside, weight, 0.0)) + none_detected + np.cumsum(change)
    tp = np.cumsum(~outside)
    fp = np.cumsum(outside)

    last_of_score = (
        np.flatnonzero(np.r_[score[1:] != score[:-1], True])
        if score.size
        else np.empty(0, dtype=np.int64)
    )
    top = NO_DETECTION_THRESHOLD if not score.size or score[0] < NO_DETECTION_THRESHOLD else np.inf
    return _Sweep(
        thresholds=np.r_[top, score[last_of_score]],
        raw=np.r_[none_detected, running[last_of_score]],
        tp=np.r_[0, tp[last_of_score]].astype(np.int64),
        fp=np.r_[0, fp[last_of_score]].astype(np.int64),
        n_in_window=int((~outside).sum()),
        n_outside=int(outside.sum()),
    )


def sweep_thresholds(
    results: Mapping[str, pd.DataFrame], windows: Windows, profile: CostProfile
) -> pd.DataFrame:
    """Corpus raw score at every candidate threshold (NAB's threshold sweep), highest first.

    Columns ``threshold, raw, tp, fp, tn, fn``; the first row is "detect nothing".
    """
    sweep = _sweep(_prepare_corpus(results, windows), profile)
    return pd.DataFrame(
        {
            "threshold": sweep.thresholds,
            "raw": sweep.raw,
            "tp": sweep.tp,
            "fp": sweep.fp,
            "tn": sweep.n_outside - sweep.fp,
            "fn": sweep.n_in_window - sweep.tp,
        }
    )


def _prepare_corpus(results: Mapping[str, pd.DataFrame], windows: Windows) -> list[_PreparedSeries]:
    """Prepare every series present in ``results``; each must have an entry in ``windows``."""
    missing = sorted(set(results) - set(windows))
    if missing:
        raise ValueError(f"no labelled windows for series: {', '.join(missing)}")
    return [_prepare(name, results[name], windows[name]) for name in sorted(results)]


def _null_raw(prepared: Sequence[_PreparedSeries], profile: CostProfile) -> float:
    """Optimised raw score of NAB's null detector (constant 0.5) on the same series."""
    constant = [
        _PreparedSeries(
            name=s.name,
            scores=np.full(s.scores.shape, NULL_DETECTOR_SCORE),
            unweighted=s.unweighted,
            window_of_row=s.window_of_row,
            n_windows=s.n_windows,
            n_probation=s.n_probation,
        )
        for s in prepared
    ]
    return float(_sweep(constant, profile).raw.max())


def _score_prepared_corpus(
    prepared: Sequence[_PreparedSeries], profile: CostProfile
) -> CorpusScore:
    """Optimise the threshold over the prepared corpus, then normalise against null and perfect."""
    sweep = _sweep(prepared, profile)
    # argmax takes the first maximum, i.e. the highest threshold among ties, as NAB's
    # stable descending sort of the (threshold-ordered) sweep does.
    best = int(np.argmax(sweep.raw))
    threshold = float(sweep.thresholds[best])
    raw = float(sweep.raw[best])
    null = _null_raw(prepared, profile)
    perfect = profile.tp * sum(s.n_windows for s in prepared)
    score = 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan
    tp, fp = int(sweep.tp[best]), int(sweep.fp[best])
    return CorpusScore(
        threshold=threshold,
        raw=raw,
        null=null,
        perfect=perfect,
        score=score,
        tp=tp,
        fp=fp,
        tn=sweep.n_outside - fp,
        fn=sweep.n_in_window - tp,
        per_series={s.name: _score_prepared(s, profile, threshold) for s in prepared},
    )


def score_corpus(
    results: Mapping[str, pd.DataFrame], windows: Windows, profile: CostProfile
) -> CorpusScore:
    """Score a detector on the series in ``results`` for one profile, as NAB does.

    ``results`` maps ``category/series.csv`` to frames with ``timestamp`` and
    ``anomaly_score``; ``windows`` must label every one of them (it may label more: only the
    series present are scored, and normalisation uses the same subset).
    """
    return _score_prepared_corpus(_prepare_corpus(results, windows), profile)


def score_detector(
    results_dir: str | Path, detector_name: str, windows_path: str | Path
) -> dict[str, float]:
    """Normalised NAB score of a detector's result files for each profile in :data:`PROFILES`."""
    by_profile = score_detector_profiles(results_dir, detector_name, load_windows(windows_path))
    return {name: result.score for name, result in by_profile.items()}


def score_detector_profiles(
    results_dir: str | Path, detector_name: str, windows: Windows
) -> dict[str, CorpusScore]:
    """Full :class:`CorpusScore` of a detector's result files for every profile."""
    prepared = _prepare_corpus(load_results(results_dir, detector_name), windows)
    return {name: _score_prepared_corpus(prepared, p) for name, p in PROFILES.items()}


# ----------------------------------------------------------------------------------------------
# Command line


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable as plain text too)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print NAB scores (detector x profile) for result files in NAB's layout."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nab_scoring",
        description="Score anomaly detectors' NAB result files with NAB's scoring rules.",
    )
    parser.add_argument(
        "--results-dir",
        required=True,
        type=Path,
        help="folder holding <detector>/<category>/<detector>_<series>.csv",
    )
    parser.add_argument("--windows", required=True, type=Path, help="NAB combined_windows.json")
    parser.add_argument(
        "--detector",
        required=True,
        action="append",
        dest="detectors",
        help="detector name (a folder of --results-dir); repeat for several",
    )
    parser.add_argument(
        "--details",
        action="store_true",
        help="also print each optimised threshold, the raw/null/perfect scores and row counts",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    try:
        windows = load_windows(args.windows)
        results = {
            name: score_detector_profiles(args.results_dir, name, windows)
            for name in args.detectors
        }
    except (OSError, ValueError) as error:
        print(f"nab_scoring: error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started

    header = ["detector", *PROFILES, "series"]
    rows = [
        [
            name,
            *(f"{s.score:.2f}" for s in by_profile.values()),
            str(len(by_profile["standard"].per_series)),
        ]
        for name, by_profile in results.items()
    ]
    print(_table(header, rows))
    if args.details:
        header = [
            "detector",
            "profile",
            "threshold",
            "raw",
            "null",
            "perfect",
            "TP",
            "FP",
            "TN",
            "FN",
        ]
        rows = [
            [
                name,
                profile,
                f"{s.threshold:.6g}",
                f"{s.raw:.4f}",
                f"{s.null:.4f}",
                f"{s.perfect:.1f}",
                *(str(count) for count in (s.tp, s.fp, s.tn, s.fn)),
            ]
            for name, by_profile in results.items()
            for profile, s in by_profile.items()
        ]
        print()
        print(_table(header, rows))
        print("\nTP/FP/TN/FN count scored rows (NAB's counts), not windows.")
    print(f"\nScored in {elapsed:.2f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
