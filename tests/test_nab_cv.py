"""NAB cross-validation over several training runs: choices on the mean, figures per run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks import nab_cv
from vaeguard.apps.nab import merged_params

ROWS = 400


def _runs(rng: np.random.Generator, spikes: dict[str, int]) -> dict[str, dict]:
    """One model's raw scores on one hand-made series per category: noise, and a spike at
    the row ``spikes`` names (inside that series' window)."""
    stamps = [str(t) for t in pd.date_range("2024-01-01", periods=ROWS, freq="5min")]
    series = {}
    for category in nab_cv.CATEGORIES:
        raw = rng.normal(0.0, 1.0, ROWS)
        raw[:60] = np.nan  # unscored warm-up
        if category in spikes:
            raw[spikes[category]] = 40.0
        series[f"{category}/s.csv"] = {
            "raw": raw[None, :],
            "entities": [None] * ROWS,
            "stamps": stamps,
            "restarts": (),
        }
    return {"model": series}


def _windows() -> dict:
    t = pd.date_range("2024-01-01", periods=ROWS, freq="5min")
    return {f"{c}/s.csv": [(t[300], t[330])] for c in nab_cv.CATEGORIES}


@pytest.fixture
def grid(monkeypatch):
    monkeypatch.setattr(nab_cv, "LIKELIHOOD_GRID", {"budget": [1.0, 2.0]})
    return merged_params(None)["likelihood"]


def test_one_run_as_a_list_is_the_run_itself(grid):
    run = _runs(np.random.default_rng(0), {"realTraffic": 310, "realKnownCause": 305})
    alone = nab_cv.cross_validate(run, grid, _windows(), lambda line: None)
    listed = nab_cv.cross_validate([run], grid, _windows(), lambda line: None)
    twice = nab_cv.cross_validate([run, run], grid, _windows(), lambda line: None)
    for name in ("oof_alerts", "in_sample_alerts", "previous_alerts"):
        assert alone[name] == listed[name] == twice[name]
    assert alone["chosen_per_fold"] == twice["chosen_per_fold"]
    assert twice["seeds"] == 2 and len(twice["per_seed"]) == 2
    for c in nab_cv.CATEGORIES:  # counts are summed over the runs
        one, two = alone["oof_detections"][c], twice["oof_detections"][c]
        assert (two.detected, two.outside, two.rows) == (
            2 * one.detected,
            2 * one.outside,
            2 * one.rows,
        )


def test_figures_are_the_mean_over_the_runs(grid):
    hit = _runs(np.random.default_rng(1), {c: 310 for c in nab_cv.CATEGORIES})
    miss = _runs(np.random.default_rng(2), {})
    cv = nab_cv.cross_validate([hit, miss], grid, _windows(), lambda line: None)
    per_seed = [o["oof_alerts"]["standard"] for o in cv["per_seed"]]
    assert per_seed[0] > per_seed[1]  # the run that detects every window scores higher
    assert cv["oof_alerts"]["standard"] == pytest.approx(np.mean(per_seed))
    for row in cv["table"]:
        assert row["all"] == pytest.approx(np.mean(row["all per seed"]))
    detected = sum(cv["oof_detections"][c].detected for c in nab_cv.CATEGORIES)
    assert detected == sum(
        o["oof_detections"][c].detected for o in cv["per_seed"] for c in nab_cv.CATEGORIES
    )


def test_no_runs_is_refused(grid):
    with pytest.raises(ValueError, match="no runs"):
        nab_cv.cross_validate([], grid, _windows(), lambda line: None)
