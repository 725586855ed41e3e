"""NAB benchmark: vaeguard's streaming window detector beside ARTime and Numenta HTM.

Runs the detector over the shared NAB series with the same code path as ``vaeguard nab``
(`vaeguard.timeseries.nab.run_nab` with `NAB_PARAMS`, or ``--params`` overrides), writes NAB
result files, then scores them in the same run with ``benchmarks/nab_scoring.py`` together with
the published result files of ARTime and numenta (HTM) from ``nab/reference_results``. Prints
one table: detector | standard | low-FP | low-FN | runtime.

The configuration was chosen on these same series (there is no held-out NAB data here), so the
score is an in-sample number; see benchmarks/RESULTS-nab.md.

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
    args = parser.parse_args(argv)

    from vaeguard.timeseries.nab import merged_params, run_nab

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


if __name__ == "__main__":
    sys.exit(main())
