"""How many Monte-Carlo draws L should the reconstruction probability use by default?

For each ODDS set (protocol of ``odds.py``: 60% of the normal rows train, the rest plus every
anomaly test) one detector is fitted; its test part is then scored with L = 1 … 128 latent draws,
each L with several independent sets of draws. Reported per L:

* ROC-AUC (mean over sets, and over the draw sets);
* score noise: the standard deviation of a row's score across draw sets, divided by the spread
  (standard deviation) of scores across rows, averaged over rows and sets — how much of the
  ranking is Monte-Carlo noise rather than the row;
* rank agreement: mean Spearman correlation of the test scores between two draw sets;
* scoring cost: steady-state rows/s of the compiled scorer at batch size 4096 (one set's model).

Run: ``python benchmarks/mc_samples.py [--sets a,b] [--seed 0] [--draw-sets 5]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import odds

LS = (1, 2, 4, 8, 16, 32, 64, 128)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default=",".join(odds.SETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draw-sets", type=int, default=5, help="independent sets of draws per L")
    p.add_argument("--throughput-set", default="satellite")
    args = p.parse_args(argv)

    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from vaeguard import VAEDetector
    from vaeguard.model.scoring import Scorer

    sets = [s for s in args.sets.split(",") if s]
    roc = {L: [] for L in LS}
    noise = {L: [] for L in LS}
    rank = {L: [] for L in LS}
    speed = {}
    for name in sets:
        x, y = odds.load_set(name)
        train, test = odds.split(y, args.seed)
        det = VAEDetector(seed=args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det.fit(x[train])
        xs = det.scaler_.transform(x[test]).astype("float32")
        for L in LS:
            scores = np.stack(
                [Scorer(det.model_, L, seed=1000 + k)(xs).score for k in range(args.draw_sets)]
            )
            roc[L].append(np.mean([roc_auc_score(y[test], s) for s in scores]))
            noise[L].append(float(np.mean(scores.std(axis=0)) / scores.mean(axis=0).std()))
            rank[L].append(float(spearmanr(scores[0], scores[1]).statistic))
            if name == args.throughput_set:
                scorer = Scorer(det.model_, L, seed=0)
                batch = np.resize(xs, (4096, xs.shape[1]))
                speed[L] = odds.rows_per_second(scorer, batch, min_seconds=1.0)
        print(f"  {name}: " + " ".join(f"L={L}:{roc[L][-1]:.3f}" for L in LS), file=sys.stderr)

    print(f"Sets: {', '.join(sets)}; split seed {args.seed}; {args.draw_sets} draw sets per L.\n")
    print(
        "| L | mean ROC-AUC | score noise (σ across draws / σ across rows) | Spearman between draw sets | rows/s at batch 4096 |"
    )
    print("|---:|---:|---:|---:|---:|")
    for L in LS:
        rate = f"{speed[L]:,.0f}" if L in speed else ""
        print(
            f"| {L} | {np.mean(roc[L]):.4f} | {np.mean(noise[L]):.4f} | {np.mean(rank[L]):.4f} | {rate} |"
        )
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    raise SystemExit(rc)
