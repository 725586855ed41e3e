"""The multi-metric benchmark (benchmarks/multimetric.py): its streams hold what it says it
planted, its decisions count what it says they count, and a quick run prints every table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import multimetric as mm
from vaeguard.apps.online import replay_likelihood

SHIFTED = ("shift", "multi_shift", "spike", "level_shift")


def _check_stream(s: mm.Stream) -> None:
    n, m = s.values.shape
    assert 2 <= m <= 8 and len(s.metrics) == m == len(set(s.metrics))
    assert np.all(np.isfinite(s.values)) and np.all(np.diff(s.t) == mm.STEP)
    assert np.all(s.sd > 0)
    changed = np.zeros((n, m), dtype=bool)
    starts = [a.start for a in s.anomalies]
    assert starts and min(starts) >= s.train and max(a.end for a in s.anomalies) <= n
    assert np.all(np.diff(starts) >= 200)  # each judged separately
    for j, grid in enumerate(s.grid):
        if grid:  # quantized metrics stay on their grid, counts non-negative
            assert np.allclose(s.values[:, j] / grid, np.round(s.values[:, j] / grid))
        if s.kinds[j] == "poisson":
            assert s.values[:, j].min() >= 0
    for a in s.anomalies:
        cols = [s.metrics.index(x) for x in a.metrics]
        rows = slice(a.start, a.end)
        changed[rows, cols] = True
        if a.kind in SHIFTED:
            # the planted change is k sd of the metric's noise around its load-driven mean
            for j in cols:
                moved = (s.values[rows, j] - s.clean[rows, j]) / s.sd[a.start, j]
                tolerance = 0.5 * s.grid[j] / s.sd[a.start, j] + 1e-9
                assert np.all(np.abs(np.abs(moved) - a.size) <= tolerance), (a, moved)
                assert len(set(np.sign(moved))) == 1
            assert len(cols) in ((2, 3) if a.kind == "multi_shift" else (1,))
        elif a.kind == "stuck":
            assert np.all(s.values[rows, cols[0]] == s.values[a.start - 1, cols[0]])
        else:
            assert a.kind == "correlation_break" and a.size is None
        assert a.duration == a.end - a.start
        assert a.judged_end == a.start + (
            mm.LEVEL_JUDGED if a.kind == "level_shift" else a.duration
        )
    # nothing else differs from the clean stream
    assert np.array_equal(s.values[~changed], s.clean[~changed])


@pytest.mark.parametrize("family", mm.FAMILIES)
def test_streams_hold_what_was_planted(family):
    s = mm.generate(family, 0, 600, 1800)
    again = mm.generate(family, 0, 600, 1800)
    assert np.array_equal(s.values, again.values) and s.anomalies == again.anomalies
    assert not np.array_equal(mm.generate(family, 1, 600, 1800).values[:, 0], s.values[:, 0])
    _check_stream(s)


def test_families_cover_two_to_eight_metrics_and_their_noise_kinds():
    for family in mm.FAMILIES:
        assert {mm.metric_count(family, seed) for seed in range(7)} == set(range(2, 9))
    kinds = {k for seed in range(3) for k in mm.generate("heavy", seed, 200, 300).kinds}
    assert {"t3", "lognormal"} <= kinds
    kinds = {k for seed in range(3) for k in mm.generate("quantized", seed, 200, 300).kinds}
    assert {"poisson", "rounded"} <= kinds


def test_the_schedule_has_every_kind_and_the_reference_case():
    assert {c[0] for c in mm.COMBOS} == set(mm.KINDS)
    assert mm.COMBOS.count(mm.REFERENCE) == 3


@settings(max_examples=20, deadline=None)
@given(
    family=st.sampled_from(mm.FAMILIES),
    seed=st.integers(0, 10_000),
    train=st.integers(100, 400),
    test=st.integers(mm.SPACING, 1500),
)
def test_any_settings_give_a_valid_stream(family, seed, train, test):
    _check_stream(mm.generate(family, seed, train, test))


@pytest.mark.parametrize("bad", [dict(family="nope"), dict(train=10), dict(test=10), dict(seed=-1)])
def test_bad_settings_are_refused(bad):
    args = {"family": "load", "seed": 0, "train": 200, "test": 400, **bad}
    with pytest.raises(ValueError):
        mm.generate(**args)


def test_judge_counts_detections_and_false_alerts():
    s = mm.generate("load", 0, 600, 1800)
    n, w = len(s.t), 16
    output = np.zeros(n)
    top: list[str | None] = [None] * n
    first, second = s.anomalies[0], s.anomalies[1]
    output[first.start + 3] = 1.0  # detected 3 points in, naming the right metric
    top[first.start + 3] = first.metrics[0]
    output[second.judged_end + w] = 1.0  # just after the judged span: missed
    output[second.judged_end + w + 10] = 1.0  # within the aftermath: not a false alert
    far = s.anomalies[2].start - 20  # a normal stretch: a false alert
    output[far] = 1.0
    output[10] = 1.0  # history rows are not counted
    run = {"raw": np.ones((2, n)), "top_metric": top}
    judged, fa = mm.judge(s, run, output, 1.0, w)
    assert judged[0].detected and judged[0].delay == 3 and judged[0].top_right
    assert not judged[1].detected and judged[1].delay is None
    assert sum(j.detected for j in judged) == 1
    excluded = set()
    for a in s.anomalies:
        excluded |= set(range(a.start, min(n, a.end + w + mm.AFTERMATH)))
    assert fa.alerts == 1 and fa.points == n - s.train - len(excluded)


def _evaluation(shares: dict[str, float], rates: dict[str, float]) -> mm.Evaluation:
    judged, fa = [], {}
    a = mm.Anomaly("shift", 0, 5, 8.0, 5, ("cpu",), 5)
    for family in mm.FAMILIES:
        hits = round(10 * shares[family])
        judged += [mm.Judged(family, 0, 2, a, i < hits, 0, "cpu", 0.0) for i in range(10)]
        fa[family] = mm.FalseAlerts(1000, round(rates[family]))
    return mm.Evaluation(judged, fa, 2.0)


def test_cross_validation_picks_on_the_other_families():
    even = dict.fromkeys(mm.FAMILIES, 1.0)
    evaluations = {
        "quiet": _evaluation(dict.fromkeys(mm.FAMILIES, 0.5), even),
        # detects more but breaks the budget on "load": chosen only when load is held out
        "loud": _evaluation(dict.fromkeys(mm.FAMILIES, 0.9), {**even, "load": 9.0}),
    }
    rows, pooled, _, picks = mm.cross_validate(evaluations, list(mm.FAMILIES))
    assert picks == {"load": "loud", "weekly": "quiet", "heavy": "quiet", "quantized": "quiet"}
    assert len(rows) == len(mm.FAMILIES) and len(pooled) == 10 * len(mm.FAMILIES)


def test_a_quick_run_prints_every_table_and_names_metrics(tmp_path, capsys):
    argv = ["--quick", "--families", "load,quantized", "--jobs", "1", "--cache", str(tmp_path)]
    assert mm.main(argv) == 0
    out = capsys.readouterr().out
    for heading in (
        "### Per kind, size and duration",
        "### The cases the issue names",
        "### Per family: false alerts",
        "### Normal-score calibration",
        "What drives the tail",
        "first 3 days",
    ):
        assert heading in out
    for column in (*mm.SUMMARY_COLUMNS, "per 1,000", "budget", "(p99 − median)/IQR, median"):
        assert column in out
    assert "shift +8 sd, 5 points" in out
    # every scored row of the runs names one of its entity's metrics first (run_online's
    # top_metric), and the rows without a score name none
    params = mm.resolve(mm.QUICK_CONFIG)
    folder = tmp_path / mm.model_key(params, mm.QUICK_TRAIN, mm.QUICK_TEST)
    for family in ("load", "quantized"):
        s = mm.generate(family, 0, mm.QUICK_TRAIN, mm.QUICK_TEST)
        run = mm._load(mm._cache_file(folder, family, 0), s.digest())
        assert run is not None
        scored = np.isfinite(run["raw"][0])
        assert scored[s.train :].all()
        assert {run["top_metric"][i] for i in np.flatnonzero(scored)} <= set(s.metrics)
        assert all(run["top_metric"][i] is None for i in np.flatnonzero(~scored))
        # a likelihood spec other than the run's replays the raw scores
        replayed = mm.outputs_for(run, {**run["likelihood"], "short": 2})
        assert replayed.shape == run["output"].shape
        assert np.array_equal(mm.outputs_for(run, run["likelihood"]), run["output"])
        # the cache keeps each term's metric, so a replay counts incidents per metric as the
        # serving did, and gives its outputs back
        # two views, each Gaussian then Student-t, then the cross-section
        assert run["term_metrics"] == list(s.metrics) * 5
        assert run["comparable"] == list(range(4 * len(s.metrics), 5 * len(s.metrics)))
        replayed = replay_likelihood(
            run["raw"],
            ["e"] * len(run["output"]),
            run["likelihood"],
            run["restarts"],
            run["term_metrics"],
            run["comparable"],
        )
        np.testing.assert_array_equal(replayed, run["output"])
