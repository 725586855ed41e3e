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
of every candidate tried. ``--seeds N`` trains every model configuration N times (every view's
seed 0 … N − 1 above the configured one), makes each choice on the mean over the runs and
prints the mean figure with each run's: one training run's figure moves by several points with
its seed alone.

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
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="--cv: training runs per model configuration (every view's seed, then +1, …); "
        "choices are made on the mean over them",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds: at least 1")
    if args.seeds > 1 and not args.cv:
        parser.error("--seeds: only with --cv")
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

    pick = default_model_candidates if args.models == "default" else model_candidates
    runs = []
    for offset in range(args.seeds):
        seeded = reseeded(base, offset)
        if args.seeds > 1:
            log(f"training run {offset + 1} of {args.seeds} (view seeds +{offset}) …")
        runs.append(run_models(pick(seeded), args.data_dir, args.cache, args.jobs, log))
    cv = cross_validate(runs, base["likelihood"], windows, log)
    n = len(next(iter(runs[0].values())))
    print(f"NAB leave-one-category-out cross-validation, {n} series under {args.data_dir}")
    print(f"{cv['candidates']} candidates (model configuration × likelihood post-processing)")
    if args.seeds > 1:
        print(
            f"{args.seeds} training runs per model configuration; each choice made on the mean "
            "over them, each figure the mean with the runs' own in brackets"
        )
    print()

    def cell(name: str, profile: str) -> str:
        text = f"{cv[name][profile]:.1f}"
        if args.seeds > 1:
            each = ", ".join(f"{o[name][profile]:.1f}" for o in cv["per_seed"])
            text += f" ({each})"
        return text

    labels = [
        ("oof_alerts", "vaeguard, out-of-fold (alerts at the configured level)"),
        ("oof_nab", "vaeguard, out-of-fold (NAB scorer's threshold)"),
        ("in_sample_alerts", "vaeguard, in-sample (chosen on all 4 categories; alerts)"),
        ("in_sample_nab", "vaeguard, in-sample (chosen on all 4 categories; NAB scorer)"),
        ("previous_alerts", "vaeguard, previous default (Gaussian tail, 1e-5; in-sample; alerts)"),
    ]
    rows = [[label] + [cell(name, p) for p in PROFILE_LABELS] for name, label in labels]
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
    per_run = " (vaeguard: the mean over the training runs)" if args.seeds > 1 else ""
    print(
        "\nWhat an operator sees (after the probationary period): labelled windows with a "
        "detection, and detections outside every window; vaeguard out-of-fold at its alert "
        f"level, numenta at its standard-profile threshold{per_run}\n"
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
            k = args.seeds  # ours are summed over the runs
            print(
                f"| {c} ({label}) | {ours.windows // k} | {ours.detected / k:g} | "
                f"{peer.detected} | {ours.outside / k:g} | {peer.outside} | "
                f"{ours.outside_per_1000:.2f} | {peer.outside_per_1000:.2f} |"
            )
    print("\nEvery candidate (standard profile, alerts; best in-sample first):\n")
    cols = ["all", *(f"without {c}" for c in CATEGORIES)]
    extra = ["all, each run"] if args.seeds > 1 else []
    print("| candidate | " + " | ".join(cols + extra) + " |")
    print("|---|" + "|".join("---:" for _ in cols + extra) + "|")
    for row in cv["table"]:
        each = [", ".join(f"{v:.1f}" for v in row["all per seed"])] if extra else []
        print(
            f"| {row['candidate']} | "
            + " | ".join([*(f"{row[c]:.1f}" for c in cols), *each])
            + " |"
        )
    return 0


def reseeded(params: dict, offset: int) -> dict:
    """``params`` with every view's seed raised by ``offset`` (another training run of the same
    configuration: initial weights, training batches, Monte-Carlo draws)."""
    if offset == 0:
        return params
    out = dict(params)
    out["views"] = [{**v, "seed": int(v.get("seed", 0)) + offset} for v in params["views"]]
    return out


if __name__ == "__main__":
    sys.exit(main())
