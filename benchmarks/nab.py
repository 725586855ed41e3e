"""NAB benchmark: vaeguard's streaming window detector beside ARTime and Numenta HTM.

``python benchmarks/nab.py`` runs the detector over the shared NAB series with the same code path
as ``vaeguard nab`` (`vaeguard.apps.nab.run_nab` with `NAB_PARAMS`, or ``--params``
overrides: every row goes through the daemon's batch step and window-mode serving), writes NAB
result files, then scores them in the same run with ``benchmarks/nab_scoring.py`` together with
the published result files of ARTime and numenta (HTM) from ``nab/reference_results``. Prints
one table: detector | standard | low-FP | low-FN | runtime. `NAB_PARAMS` was chosen on these
series, so that score is **in-sample**.

``python benchmarks/nab.py --cv`` is the honest protocol (`benchmarks/nab_cv.py`):
leave-one-category-out over the four shared categories, every choice made on three and scored
on the fourth; it prints the pooled out-of-fold scores beside the in-sample ones and the table
of every candidate tried.

Run ``python benchmarks/nab.py --help`` for the flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.nab_scoring import PROFILES, load_windows, score_detector_profiles

PEERS = ("ARTime", "numenta")
PROFILE_LABELS = {
    "standard": "standard",
    "reward_low_FP_rate": "low-FP",
    "reward_low_FN_rate": "low-FN",
}


def datasets_dir() -> Path:
    """``$VAEGUARD_DATASETS``, else ``<repo root>/../shared/datasets``."""
    env = os.environ.get("VAEGUARD_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def table(rows: list[list[str]]) -> str:
    header = ["detector", *PROFILE_LABELS.values(), "runtime"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/nab.py", description=__doc__.split("\n")[0]
    )
    nab_root = datasets_dir() / "nab"
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=nab_root / "data",
        help="NAB series (<category>/<series>.csv)",
    )
    parser.add_argument("--windows", type=Path, default=nab_root / "combined_windows.json")
    parser.add_argument("--references", type=Path, default=nab_root / "reference_results")
    parser.add_argument(
        "--out", type=Path, default=None, help="keep our result files here (default: a temp folder)"
    )
    parser.add_argument("--name", default="vaeguard", help="detector name in the results")
    parser.add_argument("--params", type=Path, default=None, help="JSON overrides of NAB_PARAMS")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--cv", action="store_true", help="leave-one-category-out cross-validation (nab_cv.py)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "runs" / "nab-cv",
        help="--cv: where each model configuration's raw scores are cached",
    )
    parser.add_argument(
        "--models",
        choices=("default", "all"),
        default="default",
        help="--cv: the default model configuration, the same with the other choice of "
        "predict_scored (whether the encoder sees the scored slots) and with Gaussian terms only "
        "(no Student-t terms), or every model candidate (about 4× the run time)",
    )
    args = parser.parse_args(argv)
    if args.cv:
        return cross_validation(args)

    from vaeguard.apps.nab import merged_params, run_nab

    overrides = json.loads(args.params.read_text()) if args.params else None
    params = merged_params(overrides)
    windows = load_windows(args.windows)
    with tempfile.TemporaryDirectory(prefix="vaeguard-nab-") as tmp:
        out = args.out or Path(tmp)
        run = run_nab(args.data_dir, out, args.name, params=params, jobs=args.jobs)
        ours = score_detector_profiles(out, args.name, windows)
    rows = [
        [
            f"vaeguard window VAE ({args.name})",
            *(f"{ours[p].score:.1f}" for p in PROFILE_LABELS),
            f"{run.seconds:.0f} s ({args.jobs} jobs)",
        ]
    ]
    for peer in PEERS:
        scores = score_detector_profiles(args.references, peer, windows)
        rows.append(
            [
                f"{peer} (published results)",
                *(f"{scores[p].score:.1f}" for p in PROFILE_LABELS),
                "—",
            ]
        )
    assert set(PROFILE_LABELS) == set(PROFILES)
    print(f"NAB, {len(run.results)} series ({run.rows} rows) under {args.data_dir}")
    print(table(rows))
    std = ours["standard"]
    print(
        f"\nvaeguard standard profile: threshold {std.threshold:.4g}, raw {std.raw:.2f} (null {std.null:.2f}, perfect {std.perfect:.0f})"
    )
    return 0


def cross_validation(args) -> int:
    from benchmarks.nab_cv import (
        CATEGORIES,
        Detections,
        cross_validate,
        default_model_candidates,
        model_candidates,
        peer_detections,
        run_models,
    )
    from vaeguard.apps.nab import merged_params

    overrides = json.loads(args.params.read_text()) if args.params else None
    base = merged_params(overrides)
    windows = load_windows(args.windows)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    models = default_model_candidates(base) if args.models == "default" else model_candidates(base)
    runs = run_models(models, args.data_dir, args.cache, args.jobs, log)
    cv = cross_validate(runs, base["likelihood"], windows, log)
    n = len(next(iter(runs.values())))
    print(f"NAB leave-one-category-out cross-validation, {n} series under {args.data_dir}")
    print(f"{cv['candidates']} candidates (model configuration × likelihood post-processing)\n")
    rows = [
        ["vaeguard, out-of-fold (alerts at the configured level)"]
        + [f"{cv['oof_alerts'][p]:.1f}" for p in PROFILE_LABELS],
        ["vaeguard, out-of-fold (NAB scorer's threshold)"]
        + [f"{cv['oof_nab'][p]:.1f}" for p in PROFILE_LABELS],
        ["vaeguard, in-sample (chosen on all 4 categories; alerts)"]
        + [f"{cv['in_sample_alerts'][p]:.1f}" for p in PROFILE_LABELS],
        ["vaeguard, in-sample (chosen on all 4 categories; NAB scorer)"]
        + [f"{cv['in_sample_nab'][p]:.1f}" for p in PROFILE_LABELS],
        ["vaeguard, previous default (Gaussian tail, 1e-5; in-sample; alerts)"]
        + [f"{cv['previous_alerts'][p]:.1f}" for p in PROFILE_LABELS],
    ]
    for peer in PEERS:
        scores = score_detector_profiles(args.references, peer, windows)
        rows.append(
            [f"{peer} (published results)"] + [f"{scores[p].score:.1f}" for p in PROFILE_LABELS]
        )
    header = ["detector", *PROFILE_LABELS.values()]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nChosen per held-out category (on the other three):")
    for held in CATEGORIES:
        print(f"- {held}: {cv['chosen_per_fold'][held]}")
    print(f"- product default (all four): {cv['final']}")
    numenta = peer_detections(args.references, "numenta", windows)
    print(
        "\nWhat an operator sees (after the probationary period): labelled windows with a "
        "detection, and detections outside every window; vaeguard out-of-fold at its alert "
        "level, numenta at its standard-profile threshold\n"
    )
    print(
        "| category | windows | detected: vaeguard | numenta | outside windows: vaeguard | "
        "numenta | per 1,000 points: vaeguard | numenta |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    nothing = Detections(0, 0, 0, 0)
    for label, ours_by in (
        ("out-of-fold", cv["oof_detections"]),
        ("previous default, in-sample", cv["previous_detections"]),
    ):
        rows = [(c, ours_by[c], numenta[c]) for c in CATEGORIES]
        rows.append(("all", sum((r[1] for r in rows), nothing), sum((r[2] for r in rows), nothing)))
        for c, ours, peer in rows:
            print(
                f"| {c} ({label}) | {ours.windows} | {ours.detected} | {peer.detected} | "
                f"{ours.outside} | {peer.outside} | {ours.outside_per_1000:.2f} | "
                f"{peer.outside_per_1000:.2f} |"
            )
    print("\nEvery candidate (standard profile, alerts; best in-sample first):\n")
    cols = ["all", *(f"without {c}" for c in CATEGORIES)]
    print("| candidate | " + " | ".join(cols) + " |")
    print("|---|" + "|".join("---:" for _ in cols) + "|")
    for row in cv["table"]:
        print(f"| {row['candidate']} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
