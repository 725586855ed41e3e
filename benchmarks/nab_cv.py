"""Leave-one-category-out cross-validation of the streaming detector on the shared NAB series.

Every choice is a candidate: a model configuration (a real run of every series through
`vaeguard.apps.online.run_online`, cached per model and series under ``runs/nab-cv/``)
crossed with the likelihood's post-processing (replayed exactly from the cached raw scores by
`vaeguard.apps.online.replay_likelihood`, the serving's own arithmetic). For each
category, the candidate with the best standard-profile NAB score on the *other three*
categories is chosen and scores the held-out one. The out-of-fold outputs of the four
categories are pooled and scored with NAB's scorer: that is the reported figure.

Two readings of the pooled out-of-fold outputs are printed:

* **alerts** — each output binarized at the configured alert level (what ``vaeguard run``
  flags as an anomaly), so even the threshold is fixed before seeing the held-out category;
* **NAB scorer** — the outputs as they are, NAB's scorer choosing its threshold on the pooled
  corpus (as NAB grades every detector).

The candidate chosen on all four categories is the product default; its score on all 25 series
is in-sample and printed as such, beside the out-of-fold one.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.nab_scoring import (
    PROFILES,
    Detections,
    _prepare,
    _prepare_corpus,
    _score_prepared_corpus,
    detections,
    load_results,
)

CATEGORIES = ("artificialNoAnomaly", "artificialWithAnomaly", "realKnownCause", "realTraffic")

#: Bump when the code changes what a model configuration's run produces (cached runs under
#: another version are not reused; the false-alarm and multi-metric caches key on it too).
#: 2: the featurizer's warm-up (no window before the entity's first W slots). 3: channels a
#: model has not learned are masked. 4: the likelihood histories restart at the first fit (no
#: score of a point the model trained on). 5: incidents that recur more often than the budget
#: allows join the histories.
RUN_VERSION = 5

#: Likelihood post-processing grid (replayed; every combination is a candidate): the alert
#: budget (false alerts per 1,000 points; at most 2, so that a fleet's pages stay rare), how
#: many of the newest raw scores are averaged before they are judged, and how many past
#: scores the tail is estimated from.
LIKELIHOOD_GRID: dict[str, list[Any]] = {
    "budget": [0.5, 1.0, 2.0],
    "short": [1, 10],
    "history": [1000, 2000],
}


#: The likelihood of the previous default (before the alert budget), for comparison.
PREVIOUS_LIKELIHOOD: dict[str, Any] = {
    "estimator": "gaussian",
    "budget": None,
    "decades": 5.0,
    "short": 1,
    "history": 1000,
    "min_std": 0.1,
    "suppress": 100,
}


@dataclass
class Candidate:
    model: str
    likelihood: dict[str, Any]

    @property
    def name(self) -> str:
        lk = ", ".join(f"{k} {v:g}" for k, v in self.likelihood.items())
        return f"{self.model} · {lk}"


def default_model_candidates(base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model configurations ``--models default`` runs: the base, the base with the other
    choice of ``predict_scored``, and, when the base judges each metric under a Student-t too
    (``student_t_dof``), the base with the Gaussian terms only."""
    from vaeguard.timeseries.views import merge_config

    predicting = all(v.get("predict_scored") for v in base["views"])
    toggled = merge_config(base, {"views": {"predict_scored": not predicting}})
    out = {
        "two views, time grid, warm retraining every 1000 rows": base,
        "the same, the scored slots "
        + ("seen by the encoder" if predicting else "predicted (hidden from the encoder)"): toggled,
    }
    if any(v.get("student_t_dof") is not None for v in base["views"]):
        out["the same, Gaussian terms only"] = merge_config(
            base, {"views": {"student_t_dof": None}}
        )
    return out


def model_candidates(base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Model configurations tried (each one full run over the series): `default_model_candidates`
    (the first is the product default: the time grid inferred per series, every point scored,
    warm retraining every 1000 rows), and, with retraining only at the doublings of the stream
    (as before), the time grid as it was, the time grid that leaves points whose window is less
    than half observed unscored, the time grid with a shorter scale memory, and the row grid
    (every row the next slot, sparse windows unscored too) with one change at a time."""
    from vaeguard.timeseries.views import merge_config

    doublings = merge_config(base, {"schedule": {"retrain_max_gap": None}})
    gated = {"window": {"min_observed": 0.5}}
    rows = merge_config(doublings, {"window": {"interval": "rows", "min_observed": 0.5}})
    one_view = copy.deepcopy(rows)
    one_view["window"]["seasonal"] = None
    one_view["views"] = one_view["views"][:1]
    return {
        **default_model_candidates(base),
        "two views, time grid": doublings,
        "two views, time grid, sparse windows unscored": merge_config(doublings, gated),
        "two views, time grid, scale memory 1000 rows": merge_config(
            doublings, {"window": {"norm_memory": 1000}}
        ),
        "two views, row grid": rows,
        "one view (values), row grid": one_view,
        "two views, row grid, scale memory 1000 rows": merge_config(
            rows, {"window": {"norm_memory": 1000}}
        ),
        "two views, row grid, warm retraining every 1000 rows": merge_config(
            rows, {"schedule": {"retrain_max_gap": 1000}}
        ),
    }


def _key(params: dict[str, Any]) -> str:
    """The cache key of a model configuration: its resolved parameters, minus the likelihood
    (replayed, not run) and anything else that does not change the raw scores."""
    from vaeguard.timeseries.views import ViewSet

    resolved = ViewSet.from_params(params).get_params()
    resolved.pop("likelihood")
    # Every stream here is one metric, which the cross-section terms leave alone.
    resolved.pop("cross_section", None)
    resolved["run_version"] = RUN_VERSION
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def run_models(
    models: dict[str, dict[str, Any]],
    data_dir: Path,
    cache_dir: Path,
    jobs: int,
    log: Callable[[str], None],
) -> dict[str, dict[str, dict[str, Any]]]:
    """{model name: {series key: {"raw", "entities", "stamps", "seconds"}}}, cached on disk."""
    from vaeguard.apps.nab import run_nab
    from vaeguard.apps.online import restarts_array

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, params in models.items():
        folder = cache_dir / _key(params)
        index = folder / "index.json"
        if index.is_file():
            log(f"model {name!r}: cached in {folder}")
            meta = json.loads(index.read_text())
        else:
            log(f"model {name!r}: running every series ({jobs} jobs) …")
            run = run_nab(data_dir, None, "cv", params=params, jobs=jobs)
            folder.mkdir(parents=True, exist_ok=True)
            meta = {"params": params, "seconds": run.seconds, "series": {}}
            for r in run.results:
                key = r["series"].key
                file = key.replace("/", "__") + ".npz"
                np.savez_compressed(
                    folder / file,
                    raw=r["raw"],
                    entities=np.asarray([e or "" for e in r["entities"]]),
                    stamps=np.asarray(r["stamps"]),
                    restarts=restarts_array(r["restarts"], len(r["raw"])),
                )
                meta["series"][key] = {"file": file, "seconds": r["seconds"]}
            index.write_text(json.dumps(meta, indent=1))
            log(f"model {name!r}: {run.seconds:.0f} s")
        series = {}
        for key, item in meta["series"].items():
            z = np.load(folder / item["file"])
            series[key] = {
                "raw": z["raw"],
                "entities": z["entities"].tolist(),
                "stamps": z["stamps"].tolist(),
                "restarts": z.get("restarts", ()),
                "seconds": item["seconds"],
            }
        out[name] = series
    return out


class Scorer:
    """NAB scores of per-series outputs on any subset of the series, prepared once."""

    def __init__(self, stamps: dict[str, list[str]], windows: dict[str, Any]):
        import pandas as pd

        self.prepared = {}
        for key, ts in stamps.items():
            frame = pd.DataFrame({"timestamp": pd.to_datetime(ts), "anomaly_score": 0.0})
            self.prepared[key] = _prepare(key, frame, windows.get(key, []))

    def score(
        self, outputs: dict[str, np.ndarray], keys: list[str], profile: str = "standard"
    ) -> float:
        series = [replace(self.prepared[k], scores=outputs[k]) for k in sorted(keys)]
        return _score_prepared_corpus(series, PROFILES[profile]).score

    def detections(
        self, outputs: dict[str, np.ndarray], keys: list[str], threshold: float
    ) -> Detections:
        total = Detections(0, 0, 0, 0)
        for k in keys:
            total = total + detections(replace(self.prepared[k], scores=outputs[k]), threshold)
        return total


def peer_detections(
    references: Path, detector: str, windows: dict[str, Any]
) -> dict[str, Detections]:
    """A published detector's detections per category at its own standard-profile threshold
    (the one NAB's optimiser picks for it on these series)."""
    prepared = _prepare_corpus(load_results(references, detector), windows)
    threshold = _score_prepared_corpus(prepared, PROFILES["standard"]).threshold
    out = {c: Detections(0, 0, 0, 0) for c in CATEGORIES}
    for series in prepared:
        category = series.name.split("/")[0]
        out[category] = out[category] + detections(series, threshold)
    return out


def cross_validate(
    runs: dict[str, dict[str, dict[str, Any]]] | list[dict[str, dict[str, dict[str, Any]]]],
    base_likelihood: dict[str, Any],
    windows: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Leave-one-category-out selection over every candidate; the pooled out-of-fold result.

    ``runs`` is `run_models`' output, or a list of them, one per training seed (the same
    model names and series). With several seeds a candidate's score on a set of categories is
    its mean over the seeds, the choices are made on those means, and each seed's out-of-fold
    outputs are scored as one pooled corpus: the figures are the mean over the seeds, with
    each seed's beside them (``per_seed``). One training run's NAB figure moves by several
    points with its seed alone, which the mean damps."""
    from vaeguard.apps.online import replay_likelihood

    by_seed = [runs] if isinstance(runs, dict) else list(runs)
    if not by_seed:
        raise ValueError("cross_validate: no runs")
    first_model = next(iter(by_seed[0]))
    first = by_seed[0][first_model]
    keys = sorted(first)
    by_category = {c: [k for k in keys if k.split("/")[0] == c] for c in CATEGORIES}
    scorer = Scorer({k: first[k]["stamps"] for k in keys}, windows)
    alert = float(base_likelihood.get("alert") or 1.0)

    candidates = [
        Candidate(model, dict(zip(LIKELIHOOD_GRID, values, strict=True)))
        for model in by_seed[0]
        for values in itertools.product(*LIKELIHOOD_GRID.values())
    ]

    def replayed(seed_runs, model, spec) -> dict[str, np.ndarray]:
        return {
            k: replay_likelihood(
                seed_runs[model][k]["raw"],
                seed_runs[model][k]["entities"],
                spec,
                seed_runs[model][k]["restarts"],
            )
            for k in keys
        }

    # outputs[seed][candidate name][series]
    outputs: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in by_seed]
    alerts: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in by_seed]
    table = []
    started = time.perf_counter()
    subsets = {"all": keys}
    for held in CATEGORIES:
        subsets[f"without {held}"] = [k for k in keys if k.split("/")[0] != held]
    for cand in candidates:
        spec = {**base_likelihood, **cand.likelihood}
        per_seed = []
        for s, seed_runs in enumerate(by_seed):
            outs = replayed(seed_runs, cand.model, spec)
            outputs[s][cand.name] = outs
            alerts[s][cand.name] = {k: (v >= alert).astype("float64") for k, v in outs.items()}
            per_seed.append(
                {n: scorer.score(alerts[s][cand.name], sub) for n, sub in subsets.items()}
            )
        row = {"candidate": cand.name}
        row.update({n: float(np.mean([p[n] for p in per_seed])) for n in subsets})
        row["all per seed"] = [p["all"] for p in per_seed]
        table.append(row)
    log(
        f"{len(candidates)} candidates × {len(by_seed)} seed(s) replayed and scored in "
        f"{time.perf_counter() - started:.0f} s"
    )

    chosen = {}
    for held in CATEGORIES:
        chosen[held] = max(table, key=lambda r: r[f"without {held}"])["candidate"]
    final = max(table, key=lambda r: r["all"])
    # The previous default (a Gaussian tail of the last 1000 scores, alert at 1e-5, every
    # scored point learned), replayed on the same raw scores: chosen on all 25, so in-sample.
    previous = {**base_likelihood, **PREVIOUS_LIKELIHOOD}
    seeds_out = []
    for s, seed_runs in enumerate(by_seed):
        oof_outputs: dict[str, np.ndarray] = {}
        oof_alerts: dict[str, np.ndarray] = {}
        for held in CATEGORIES:
            for k in by_category[held]:
                oof_outputs[k] = outputs[s][chosen[held]][k]
                oof_alerts[k] = alerts[s][chosen[held]][k]
        prev_alerts = {
            k: (v >= alert).astype("float64")
            for k, v in replayed(seed_runs, first_model, previous).items()
        }
        final_alerts = alerts[s][final["candidate"]]
        seeds_out.append(
            {
                "previous_alerts": {p: scorer.score(prev_alerts, keys, p) for p in PROFILES},
                "previous_detections": {
                    c: scorer.detections(prev_alerts, by_category[c], 1.0) for c in CATEGORIES
                },
                "oof_alerts": {p: scorer.score(oof_alerts, keys, p) for p in PROFILES},
                "oof_nab": {p: scorer.score(oof_outputs, keys, p) for p in PROFILES},
                "in_sample_alerts": {p: scorer.score(final_alerts, keys, p) for p in PROFILES},
                "in_sample_nab": {
                    p: scorer.score(outputs[s][final["candidate"]], keys, p) for p in PROFILES
                },
                "oof_detections": {
                    c: scorer.detections(oof_alerts, by_category[c], 1.0) for c in CATEGORIES
                },
                "in_sample_detections": {
                    c: scorer.detections(final_alerts, by_category[c], 1.0) for c in CATEGORIES
                },
            }
        )
    result: dict[str, Any] = {
        "chosen_per_fold": chosen,
        "final": final["candidate"],
        "table": sorted(table, key=lambda r: -r["all"]),
        "candidates": len(candidates),
        "seeds": len(by_seed),
        "per_seed": seeds_out,
    }
    for name in ("previous_alerts", "oof_alerts", "oof_nab", "in_sample_alerts", "in_sample_nab"):
        result[name] = {p: float(np.mean([o[name][p] for o in seeds_out])) for p in PROFILES}
    for name in ("previous_detections", "oof_detections", "in_sample_detections"):
        # summed over the seeds: divide by ``seeds`` for one run's mean
        result[name] = {
            c: sum((o[name][c] for o in seeds_out), Detections(0, 0, 0, 0)) for c in CATEGORIES
        }
    return result
