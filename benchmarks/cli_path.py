"""Issue 27's plain case through the commands a user runs, beside the benchmark's runner.

A benchmark to design against, not a test. One host of four load-driven metrics at 1-minute
steps (a daily cycle plus a slow AR(1) wander shared by all, each metric with its own scale and
Gaussian noise), seeded numpy (nothing downloaded): ``TRAIN`` normal points, then ``TEST``
points in which one metric in turn is shifted by +``SIZE`` noise sd for ``DURATION`` points,
``SHIFTS`` times, ``SPACING`` points apart (the first ``FIRST`` points into the test part).

Each seed is run two ways:

* **commands**: ``vaeguard train-window`` on the normal points (default configuration), then
  ``vaeguard score`` on the test points, as separate processes: the bundle carries the entity's
  window state at the end of the normal points (windows, scalers, seasonal history) and its
  likelihood histories after the calibration tail, and scoring continues from both, judging
  from the first test point;
* **runner**: `vaeguard.apps.online.run_online` on both parts with the first fit at the end of
  the normal points, as `benchmarks/multimetric.py` runs every stream: the normal points build
  the entity's windows alike, and the histories restart there (its first ``min_history``
  scores have no opinion). The models differ: the commands' trains on the first 80 % of the
  windows and calibrates on the rest, the runner's on all.

A shift is detected when an alert falls in ``[start, start + DURATION + score_slots)``; the
top-1 metric is the one the first such alert's record names first; false alerts are the alerts
outside every ``[start, start + DURATION + score_slots + suppress)``, per 1,000 test points. A
shift that begins before the runner's likelihood warm-up ends is counted apart.

    python benchmarks/cli_path.py --seeds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TRAIN, TEST = 4000, 6000
SHIFTS, SPACING, FIRST, SIZE, DURATION = 30, 195, 100, 8.0, 5
METRICS = ("cpu", "mem", "net", "lat")
STEP = 60  # seconds
START = 1_700_000_000


@dataclass
class Case:
    ts: np.ndarray
    values: np.ndarray  # points × metrics
    shifts: list[tuple[int, int]]  # (test row, metric index)


def generate(seed: int) -> Case:
    """The plain case: every metric follows one load, with its own offset, gain and noise."""
    rng = np.random.default_rng(27_000 + seed)
    n = TRAIN + TEST
    ts = START + STEP * np.arange(n)
    hour = (ts / 3600.0) % 24
    wander = np.zeros(n)
    steps = rng.normal(0.0, 2.0, n)
    for i in range(1, n):
        wander[i] = 0.98 * wander[i - 1] + steps[i]
    load = 50 + 30 * np.sin(2 * np.pi * (hour - 6) / 24) + wander
    gain = rng.uniform(0.05, 2.5, len(METRICS))
    offset = rng.uniform(2.0, 20.0, len(METRICS))
    noise = gain * rng.uniform(1.5, 4.0, len(METRICS))
    values = offset + gain * load[:, None] + noise * rng.standard_normal((n, len(METRICS)))
    shifts = []
    for k in range(SHIFTS):
        row, j = FIRST + k * SPACING, k % len(METRICS)
        values[TRAIN + row : TRAIN + row + DURATION, j] += SIZE * noise[j]
        shifts.append((row, j))
    return Case(ts, values, shifts)


def _write(path: Path, case: Case, rows: slice) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ts", "key", *METRICS])
        for t, row in zip(case.ts[rows], case.values[rows], strict=True):
            out.writerow([int(t), "host-1", *(f"{v:.6g}" for v in row)])


def _vaeguard(*args: str) -> None:
    command = [sys.executable, "-m", "vaeguard.cli.main", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed: {done.stderr[-2000:]}")


def by_commands(case: Case, folder: Path) -> tuple[np.ndarray, list[str | None]]:
    """Per test row: whether it alerted, and the metric its record names first."""
    _write(folder / "train.csv", case, slice(0, TRAIN))
    _write(folder / "test.csv", case, slice(TRAIN, None))
    bundle = folder / "bundle"
    _vaeguard(
        "train-window",
        "--data",
        str(folder / "train.csv"),
        "--metrics",
        ",".join(METRICS),
        "--out",
        str(bundle),
    )
    _vaeguard(
        "score",
        "--model",
        str(bundle),
        "--data",
        str(folder / "test.csv"),
        "--out",
        str(folder / "scores.jsonl"),
        "--json",
    )
    alerts, named = np.zeros(TEST, dtype=bool), [None] * TEST
    for line in (folder / "scores.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "row" not in record:
            continue
        row = int(record["row"]) - 1  # the file's data rows, counted from 1
        alerts[row] = bool(record.get("is_anomaly"))
        contributions = record.get("contributions") or []
        named[row] = contributions[0].get("metric") if contributions else None
    return alerts, named


def by_runner(case: Case) -> tuple[np.ndarray, list[str | None]]:
    from vaeguard.apps.nab import merged_params
    from vaeguard.apps.online import run_online

    records = [
        {"ts": float(t), "key": "host-1", **dict(zip(METRICS, map(float, row), strict=True))}
        for t, row in zip(case.ts, case.values, strict=True)
    ]
    params = merged_params({"window": {"metrics": list(METRICS)}})
    result = run_online(params, records, first_fit=TRAIN)
    level = float(params["likelihood"].get("alert") or 1.0)
    return result.output[TRAIN:] >= level, list(result.top_metric[TRAIN:])


def defaults() -> tuple[int, int, int]:
    """The default configuration's scored slots, suppression and warm-up (the runner's
    ``min_history`` scores with no opinion; the window is full from the first test point on
    both paths), as the counting rules use them."""
    from vaeguard.timeseries.views import DEFAULT_CONFIG

    likelihood = DEFAULT_CONFIG["likelihood"]
    slots = int(DEFAULT_CONFIG["views"][0]["score_slots"])
    return slots, int(likelihood["suppress"]), int(likelihood["min_history"])


@dataclass
class Tally:
    shifts: int = 0
    detected: int = 0
    named: int = 0
    early: int = 0  # shifts starting in the runner's likelihood warm-up
    early_detected: int = 0
    false_alerts: int = 0
    normal_points: int = 0
    by_seed: list[str] = field(default_factory=list)  # "detected/shifts" of each `add`

    def add(self, case: Case, alerts: np.ndarray, named: list[str | None], warm_up: int) -> None:
        slots, suppress, _ = defaults()
        span = DURATION + slots
        before = (self.detected, self.shifts)
        quiet = np.ones(TEST, dtype=bool)
        for row, j in case.shifts:
            quiet[row : row + span + suppress] = False
            hits = np.flatnonzero(alerts[row : row + span])
            if row < warm_up:
                self.early += 1
                self.early_detected += bool(hits.size)
                continue
            self.shifts += 1
            if hits.size:
                self.detected += 1
                self.named += named[row + int(hits[0])] == METRICS[j]
        self.false_alerts += int(alerts[quiet].sum())
        self.normal_points += int(quiet.sum())
        self.by_seed.append(f"{self.detected - before[0]}/{self.shifts - before[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    warm_up = defaults()[2]
    tallies = {"commands": Tally(), "runner": Tally()}
    started = time.monotonic()
    for seed in range(args.seeds):
        case = generate(seed)
        with tempfile.TemporaryDirectory() as tmp:
            tallies["commands"].add(case, *by_commands(case, Path(tmp)), warm_up)
        tallies["runner"].add(case, *by_runner(case), warm_up)
        print(f"  seed {seed}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"## Issue 27's plain case, {args.seeds} seeds ({len(generate(0).shifts)} shifts each)\n")
    print(
        "| path | shifts after the warm-up detected | per seed | top-1 metric | in the warm-up "
        "| false alerts (per 1,000 points) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in tallies.items():
        rate = 1000.0 * t.false_alerts / max(t.normal_points, 1)
        print(
            f"| {name} | {t.detected}/{t.shifts} | {', '.join(t.by_seed)} | {t.named}/{t.detected} "
            f"| {t.early_detected}/{t.early} | {t.false_alerts} ({rate:.2f}) |"
        )
    print(f"\nTotal: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
