"""Does the threshold hold its false-alarm rate when normal behaviour drifts after training?

The protocol of a sensor benchmark: fit on the first rows of a stream, flag every later row,
count F1 and the false-alarm rate over those rows. The data are the shared NAB series (real
and artificial, with their level shifts and slow trends), each turned into tabular rows of the
last ``WINDOW`` values (so a row is a multivariate reading, as a sensor stream's is); a row is
anomalous when it falls in a NAB anomaly window. One `VAEDetector` is fitted per series and
seed; the candidates are the threshold rules `fit` offers, applied to its own held-out rows:
the 99 % quantile, or SPOT (a generalized Pareto tail) at risk 1e-3. A peer, PyOD's KNN with
its own 1 % contamination threshold, is fitted on the same rows.

The candidate is chosen leave-one-category-out: for each NAB category, the candidate with the
best pooled F1 on the other three is scored on it; the table reports those out-of-fold figures
(and, labelled, every candidate's in-sample figures).

    python benchmarks/drift.py [--seeds 0 1] [--train-rows 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.nab import datasets_dir
from benchmarks.nab_scoring import load_windows

#: Values per row (the "sensors" of one reading).
WINDOW = 8
#: Threshold rules (arguments of `vaeguard.thresholds.calibrate`; ``follow``: the threshold
#: is kept on the recent normal rows' scores as the daemon does, `FollowingThreshold`, the
#: rows judged in batches of `vaeguard.thresholds.FOLLOW_BATCH`).
CANDIDATES = {
    "quantile 1 %": {"method": "quantile", "target_fpr": 0.01},
    "SPOT 1e-3": {"method": "spot", "risk": 1e-3},
    **{
        f"budget {b:g}{', following' if follow else ''}": {
            "method": "budget",
            "budget": b,
            "follow": follow,
        }
        for b in (1.0, 2.0, 5.0, 10.0, 20.0)
        for follow in (False, True)
    },
}
#: What the daemon can run by default: a budget threshold kept on the recent normal rows, with a
#: budget an operator can live with (at most 10 false alerts per 1,000 rows).
DAEMON_RULES = [
    name for name, rule in CANDIDATES.items() if rule.get("follow") and rule.get("budget", 0) <= 10
]
PEER = "PyOD KNN (contamination 1 %)"


def load_series(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(category/name, rows of WINDOW values, row in an anomaly window) per shared series."""
    windows = load_windows(root / "nab" / "combined_windows.json")
    out = []
    for path in sorted((root / "nab" / "data").glob("*/*.csv")):
        key = f"{path.parent.name}/{path.name}"
        frame = pd.read_csv(path, parse_dates=["timestamp"])
        values = frame["value"].to_numpy("float64")
        ts = frame["timestamp"]
        label = np.zeros(len(frame), dtype=bool)
        for start, end in windows.get(key, []):
            label |= ((ts >= start) & (ts <= end)).to_numpy()
        rows = np.lib.stride_tricks.sliding_window_view(values, WINDOW)
        out.append((key, np.ascontiguousarray(rows), label[WINDOW - 1 :]))
    return out


def counts(flag: np.ndarray, label: np.ndarray) -> np.ndarray:
    """[TP, FP, FN, TN]."""
    return np.array(
        [(flag & label).sum(), (flag & ~label).sum(), (~flag & label).sum(), (~flag & ~label).sum()]
    )


def f1_far(c: np.ndarray) -> tuple[float, float]:
    tp, fp, fn, tn = (float(v) for v in c)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    far = fp / (fp + tn) if fp + tn else float("nan")
    return f1, far


def run(args) -> dict:
    from pyod.models.knn import KNN

    from vaeguard import VAEDetector
    from vaeguard.model.training import validation_split
    from vaeguard.thresholds import calibrate

    series = load_series(datasets_dir())
    result: dict = {"series": {}, "train_rows": args.train_rows, "seeds": args.seeds}
    t0 = time.perf_counter()
    for key, rows, label in series:
        train, test, test_label = (
            rows[: args.train_rows],
            rows[args.train_rows :],
            label[args.train_rows :],
        )
        per = {name: np.zeros(4, dtype=int) for name in (*CANDIDATES, PEER)}
        for seed in args.seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                det = VAEDetector(seed=seed).fit(train)
            _, held_out = validation_split(len(train), det.validation_fraction, seed)
            calibration = det.decision_function(train[held_out])
            scores = det.decision_function(test)
            for name, rule in CANDIDATES.items():
                rule = dict(rule)
                follow = rule.pop("follow", False)
                threshold = calibrate(calibration, **rule)
                flags = following(threshold, scores) if follow else scores > threshold.value
                per[name] += counts(flags, test_label)
            peer = KNN(contamination=0.01).fit(train)
            per[PEER] += counts(peer.predict(test).astype(bool), test_label)
        per = {name: c.tolist() for name, c in per.items()}
        result["series"][key] = per
        print(
            f"{key}: false alarms "
            + ", ".join(f"{n} {f1_far(np.array(c))[1]:.1%}" for n, c in per.items()),
            flush=True,
        )
    result["seconds"] = time.perf_counter() - t0
    return result


def following(threshold, scores: np.ndarray) -> np.ndarray:
    """Flags of the rows in order, the threshold following the stream (the daemon's rule)."""
    from vaeguard.thresholds import FOLLOW_BATCH, FollowingThreshold

    return FollowingThreshold(threshold).replay(scores, FOLLOW_BATCH)


def pooled(result: dict, name: str, categories) -> np.ndarray:
    return sum(
        (
            np.array(per[name])
            for key, per in result["series"].items()
            if key.split("/")[0] in categories
        ),
        np.zeros(4, dtype=int),
    )


def markdown(result: dict) -> str:
    cats = sorted({k.split("/")[0] for k in result["series"]})
    lines = [
        f"Fit on the first {result['train_rows']} rows of each of the {len(result['series'])} shared NAB series "
        f"(rows = the last {WINDOW} values), every later row flagged; seeds {result['seeds']}; "
        f"{result['seconds']:.0f} s. Cells: F1 / false-alarm rate, pooled over the category's rows.",
        "",
        "| detector | " + " | ".join(cats) + " | all |",
        "|---|" + "---:|" * (len(cats) + 1),
    ]
    picks = []
    for label, pool in (
        ("vaeguard, out-of-fold, every rule", list(CANDIDATES)),
        (
            "vaeguard, out-of-fold, the daemon's rule (a followed budget of at most 10)",
            DAEMON_RULES,
        ),
    ):
        chosen_total = np.zeros(4, dtype=int)
        cells = []
        for cat in cats:
            others = [c for c in cats if c != cat]
            best = max(pool, key=lambda n: (f1_far(pooled(result, n, others))[0], n))
            c = pooled(result, best, [cat])
            chosen_total += c
            cells.append("{:.3f} / {:.1%}".format(*f1_far(c)))
            picks.append(f"- {label}, {cat}: {best}")
        lines.append(
            f"| **{label}** | "
            + " | ".join(cells)
            + " | **{:.3f} / {:.1%}** |".format(*f1_far(chosen_total))
        )
    for name in (*CANDIDATES, PEER):
        row = [("{:.3f} / {:.1%}".format(*f1_far(pooled(result, name, [c])))) for c in cats]
        label = name if name == PEER else f"{name} (in-sample)"
        lines.append(
            f"| {label} | "
            + " | ".join(row)
            + " | {:.3f} / {:.1%} |".format(*f1_far(pooled(result, name, cats)))
        )
    lines += ["", "Chosen on the other three categories:", *picks]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--train-rows", type=int, default=400)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--from-json", type=Path, help="print the tables of an earlier run's --json output"
    )
    args = ap.parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(args.from_json.read_text())))
        return 0
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
