"""ODDS benchmark: vaeguard's VAEDetector against PyOD's IForest, KNN, AutoEncoder and VAE.

All detectors run side by side in one process on the same splits. Protocol (the reference
protocol of ``shared/datasets/README.md``): per seed, 60% of the normal rows train; the other
40% of the normal rows plus every anomaly form the test part; ROC-AUC and average precision
are computed on the test part. PyOD detectors use PyOD's defaults on inputs standardized with
the training part's mean and standard deviation; vaeguard gets the raw rows (it fits its own
scaler, as a user's would).

Besides accuracy it measures, for vaeguard:

* scoring throughput (rows/s) at batch sizes 1, 64 and 4096 in steady state, with PyOD VAE's
  ``decision_function`` beside it as the peer;
* the top-1 attribution hit rate on planted single-feature anomalies: a held-out normal test row
  gets one randomly chosen feature shifted by ±6 standard deviations (that feature's standard
  deviation in the training part, sign at random); a hit is ``explain()`` ranking that feature
  first. Features that are constant in the training part (standard deviation 0) are never
  chosen: a shift of 6 × 0 plants nothing.

Run ``python benchmarks/odds.py --help`` for the flags; with none it runs the full protocol
(11 sets × 2 seeds, all five detectors). Needs the ``bench`` extra (PyOD, torch, scipy,
scikit-learn).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SETS = (
    "arrhythmia", "cardio", "glass", "ionosphere", "letter", "lympho",
    "pima", "satellite", "vertebral", "vowels", "wbc",
)  # fmt: skip
DETECTORS = ("vaeguard", "iforest", "knn", "autoencoder", "pyod_vae")
LABELS = {
    "vaeguard": "vaeguard VAE",
    "iforest": "IForest",
    "knn": "KNN",
    "autoencoder": "AutoEncoder",
    "pyod_vae": "PyOD VAE",
}
TRAIN_SHARE = 0.6
SHIFT_SIGMAS = 6.0
BATCH_SIZES = (1, 64, 4096)


def datasets_dir() -> Path:
    """``$VAEGUARD_DATASETS``, else ``<repo root>/../shared/datasets``."""
    env = os.environ.get("VAEGUARD_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def load_set(name: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    path = datasets_dir() / "odds" / f"{name}.mat"
    if not path.is_file():
        sys.exit(f"odds.py: error: {path} not found (set VAEGUARD_DATASETS to the datasets folder)")
    mat = loadmat(path)
    return np.asarray(mat["X"], dtype="float64"), np.asarray(mat["y"]).ravel().astype(int)


def split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """60% of the normal rows train; the other normal rows and every anomaly test."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    n_train = round(TRAIN_SHARE * len(normal))
    train = np.sort(normal[:n_train])
    test = np.sort(np.concatenate([normal[n_train:], np.flatnonzero(y == 1)]))
    return train, test


# -- detectors ---------------------------------------------------------------------------------


class Standardized:
    """A PyOD detector behind a StandardScaler fitted on the training part (the reference setup)."""

    def __init__(self, detector):
        self.detector = detector

    def fit(self, x: np.ndarray) -> Standardized:
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler().fit(x)
        self.detector.fit(self.scaler.transform(x))
        return self

    def decision_function(self, x: np.ndarray, **kwargs) -> np.ndarray:
        return self.detector.decision_function(self.scaler.transform(x), **kwargs)


def make_detector(name: str, seed: int, vae_params: dict[str, Any]):
    """A fresh detector with its library defaults (only seeds and verbosity are set)."""
    if name == "vaeguard":
        from vaeguard import VAEDetector

        return VAEDetector(**{"seed": seed, **vae_params})
    if name == "iforest":
        from pyod.models.iforest import IForest

        return Standardized(IForest(random_state=seed))
    if name == "knn":
        from pyod.models.knn import KNN

        return Standardized(KNN())
    if name == "autoencoder":
        from pyod.models.auto_encoder import AutoEncoder

        return Standardized(AutoEncoder(random_state=seed, verbose=0))
    if name == "pyod_vae":
        from pyod.models.vae import VAE

        return Standardized(VAE(random_state=seed, verbose=0))
    raise ValueError(f"unknown detector {name!r}")


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Run:
    """One detector on one set and seed."""

    dataset: str
    seed: int
    detector: str
    roc_auc: float
    average_precision: float
    fit_s: float
    score_s: float
    train_rows: int
    test_rows: int


@dataclass
class Attribution:
    dataset: str
    seed: int
    rows: int
    hits: int
    zscore_hits: int
    skipped_constant_features: int


@dataclass
class Results:
    sets: list[str]
    seeds: list[int]
    detectors: list[str]
    vae_params: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    attribution: list[Attribution] = field(default_factory=list)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    throughput_set: str | None = None
    total_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)


def planted_hit_rate(det, x_train: np.ndarray, x_normal: np.ndarray, seed: int) -> Attribution:
    """Plant ±6σ single-feature shifts in normal rows; count top-1 hits of ``explain``.

    The peer is the plainest attribution there is: the feature with the largest |z-score|
    against the training part (a feature constant in training counts as infinitely far off
    whenever it differs from its constant).
    """
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    constant = np.ptp(x_train, axis=0) == 0  # not std == 0: rounding leaves ~1e-17 there
    std[constant] = 0.0
    eligible = np.flatnonzero(~constant)
    rng = np.random.default_rng(10_000 + seed)
    chosen = rng.choice(eligible, size=len(x_normal))
    sign = rng.choice([-1.0, 1.0], size=len(x_normal))
    planted = x_normal.copy()
    rows = np.arange(len(x_normal))
    planted[rows, chosen] += sign * SHIFT_SIGMAS * std[chosen]
    contributions = det.explain(planted)
    hits = int(np.sum(np.argmax(contributions, axis=1) == chosen))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(planted - mean) / std
    z = np.where(std > 0, z, np.where(planted != mean, np.inf, 0.0))
    z_hits = int(np.sum(np.argmax(z, axis=1) == chosen))
    return Attribution("", seed, len(x_normal), hits, z_hits, int(x_train.shape[1] - len(eligible)))


def rows_per_second(fn, batch: np.ndarray, min_seconds: float = 1.0, warmup: int = 3) -> float:
    """Steady-state rows/s of ``fn(batch)``: warm-up calls first, then repeat for min_seconds."""
    for _ in range(warmup):
        fn(batch)
    calls, start = 0, time.perf_counter()
    while True:
        fn(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return calls * len(batch) / elapsed


def measure_throughput(ours, peer, x_pool: np.ndarray, min_seconds: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for size in BATCH_SIZES:
        batch = x_pool[rng.integers(0, len(x_pool), size=size)]
        row: dict[str, Any] = {"batch_size": size}
        row["vaeguard_decision_function"] = rows_per_second(
            ours.decision_function, batch, min_seconds
        )
        row["vaeguard_score_matrix"] = rows_per_second(
            lambda b: ours.score_matrix(b), batch, min_seconds
        )
        if peer is not None:
            row["pyod_vae_decision_function"] = rows_per_second(
                lambda b: peer.decision_function(b, batch_size=len(b)), batch, min_seconds
            )
        out.append(row)
    return out


def run(args) -> Results:
    from sklearn.metrics import average_precision_score, roc_auc_score

    results = Results(
        list(args.sets), list(args.seeds), list(args.detectors), dict(args.vae_params)
    )
    results.versions = versions()
    started = time.perf_counter()
    throughput_set = args.throughput_set or max(args.sets, key=lambda s: load_set(s)[0].shape[0])
    kept: dict[str, Any] = {}
    for name in args.sets:
        x, y = load_set(name)
        for seed in args.seeds:
            train, test = split(y, seed)
            for det_name in args.detectors:
                det = make_detector(det_name, seed, args.vae_params)
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    det.fit(x[train])
                t1 = time.perf_counter()
                scores = np.asarray(det.decision_function(x[test]), dtype="float64")
                t2 = time.perf_counter()
                r = Run(
                    name, seed, det_name,
                    float(roc_auc_score(y[test], scores)),
                    float(average_precision_score(y[test], scores)),
                    t1 - t0, t2 - t1, len(train), len(test),
                )  # fmt: skip
                results.runs.append(r)
                if args.verbose:
                    print(
                        f"  {name:<11} seed {seed} {det_name:<12} ROC {r.roc_auc:.3f} "
                        f"AP {r.average_precision:.3f} fit {r.fit_s:6.1f}s score {r.score_s:5.2f}s",
                        file=sys.stderr,
                        flush=True,
                    )
                if det_name == "vaeguard" and not args.no_attribution:
                    normal_test = test[y[test] == 0]
                    attribution = planted_hit_rate(det, x[train], x[normal_test], seed)
                    attribution.dataset = name
                    results.attribution.append(attribution)
                if (
                    name == throughput_set
                    and seed == args.seeds[0]
                    and det_name in ("vaeguard", "pyod_vae")
                ):
                    kept[det_name] = det
                    kept["x_test"] = x[test]
    if not args.no_throughput and "vaeguard" in kept:
        results.throughput_set = throughput_set
        results.throughput = measure_throughput(
            kept["vaeguard"], kept.get("pyod_vae"), kept["x_test"], args.throughput_seconds
        )
    results.total_s = time.perf_counter() - started
    return results


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("vaeguard", "keras", "tensorflow", "pyod", "torch", "scikit-learn", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


# -- report ------------------------------------------------------------------------------------


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def summary(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    """metric → detector → set (and "mean") → mean over seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric in ("roc_auc", "average_precision", "fit_s", "score_s"):
        out[metric] = {}
        for det in results.detectors:
            per_set = {
                s: _mean(
                    getattr(r, metric) for r in results.runs if r.detector == det and r.dataset == s
                )
                for s in results.sets
            }
            per_set["mean"] = _mean(per_set.values())
            per_set["total"] = float(
                sum(getattr(r, metric) for r in results.runs if r.detector == det)
            )
            out[metric][det] = per_set
    return out


def markdown(results: Results) -> str:
    s = summary(results)
    dets = results.detectors
    head = "| set | " + " | ".join(LABELS[d] for d in dets) + " |"
    rule = "|---|" + "---:|" * len(dets)
    lines = [
        f"ODDS, {len(results.sets)} sets × seeds {results.seeds}; mean over seeds. "
        f"Total run time {results.total_s:.0f} s.",
        "",
    ]
    for metric, title in (("roc_auc", "ROC-AUC"), ("average_precision", "Average precision")):
        lines += [f"### {title}", "", head, rule]
        for name in [*results.sets, "mean"]:
            values = [s[metric][d][name] for d in dets]
            best = max(values)
            cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in values]
            label = f"**{name}**" if name == "mean" else name
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "### Time (seconds per fit / per scoring of the test part, mean over seeds)",
        "",
        head,
        rule,
    ]
    for name in [*results.sets, "total"]:
        cells = []
        for d in dets:
            if name == "total":
                cells.append(f"{s['fit_s'][d]['total']:.1f} / {s['score_s'][d]['total']:.2f}")
            else:
                cells.append(f"{s['fit_s'][d][name]:.2f} / {s['score_s'][d][name]:.3f}")
        label = "**total (all runs)**" if name == "total" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    if results.throughput:
        lines += [
            f"### Scoring throughput (rows/s, steady state; model fitted on {results.throughput_set})",
            "",
            "| batch size | vaeguard `decision_function` | vaeguard `score_matrix` (hot path) | PyOD VAE `decision_function` |",
            "|---:|---:|---:|---:|",
        ]
        for row in results.throughput:
            peer = row.get("pyod_vae_decision_function")
            lines.append(
                f"| {row['batch_size']} | {row['vaeguard_decision_function']:,.0f} | "
                f"{row['vaeguard_score_matrix']:,.0f} | {'' if peer is None else f'{peer:,.0f}'} |"
            )
        lines.append("")
    if results.attribution:
        lines += [
            f"### Attribution: top-1 hit rate on planted ±{SHIFT_SIGMAS:g}σ single-feature shifts",
            "",
            "| set | rows | vaeguard `explain` | peer: largest \\|z-score\\| | constant features skipped |",
            "|---|---:|---:|---:|---:|",
        ]

        def rate(items, key):
            return sum(getattr(a, key) for a in items) / max(sum(a.rows for a in items), 1)

        for name in results.sets:
            items = [a for a in results.attribution if a.dataset == name]
            skipped = max((a.skipped_constant_features for a in items), default=0)
            lines.append(
                f"| {name} | {sum(a.rows for a in items)} | {rate(items, 'hits'):.1%} | "
                f"{rate(items, 'zscore_hits'):.1%} | {skipped} |"
            )
        every = results.attribution
        lines.append(
            f"| **all rows** | {sum(a.rows for a in every)} | **{rate(every, 'hits'):.1%}** | "
            f"{rate(every, 'zscore_hits'):.1%} | |"
        )
        means = [
            _mean(rate([a for a in every if a.dataset == n], key) for n in results.sets)
            for key in ("hits", "zscore_hits")
        ]
        lines.append(f"| **mean of sets** | | {means[0]:.1%} | {means[1]:.1%} | |")
        lines.append("")
    return "\n".join(lines)


def to_json(results: Results) -> dict[str, Any]:
    d = asdict(results)
    d["summary"] = summary(results)
    return d


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sets", default=",".join(SETS), help="comma-separated ODDS sets (default: all eleven)"
    )
    p.add_argument("--seeds", default="0,1", help="comma-separated split seeds (default: 0,1)")
    p.add_argument(
        "--detectors",
        default=",".join(DETECTORS),
        help=f"comma-separated, from {', '.join(DETECTORS)}",
    )
    p.add_argument(
        "--vae-params",
        default="{}",
        help="JSON overrides for VAEDetector, e.g. '{\"latent_dim\": 4}'",
    )
    p.add_argument("--json", dest="json_path", help="also write the results as JSON to this file")
    p.add_argument(
        "--throughput-set", help="set whose fitted models are timed (default: the largest selected)"
    )
    p.add_argument(
        "--throughput-seconds", type=float, default=2.0, help="timing per batch size and detector"
    )
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput measurement")
    p.add_argument(
        "--no-attribution", action="store_true", help="skip the planted-anomaly attribution test"
    )
    p.add_argument(
        "-q", "--quiet", dest="verbose", action="store_false", help="no per-run progress on stderr"
    )
    args = p.parse_args(argv)
    args.sets = [s for s in args.sets.split(",") if s]
    unknown = sorted(set(args.sets) - set(SETS))
    if unknown:
        p.error(f"unknown set(s): {', '.join(unknown)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.detectors = [d for d in args.detectors.split(",") if d]
    unknown = sorted(set(args.detectors) - set(DETECTORS))
    if unknown:
        p.error(f"unknown detector(s): {', '.join(unknown)}")
    args.vae_params = json.loads(args.vae_params)
    if isinstance(args.vae_params.get("hidden"), list):
        args.vae_params["hidden"] = tuple(args.vae_params["hidden"])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    print(markdown(results))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(to_json(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
